"""Provides SshServer: a private OpenSSH sshd on 127.0.0.1 for the SSH tests and benchmarks.

Everything lives in one temporary directory: the sshd_config, a fresh ed25519 host key, client
keys, the authorized_keys file, a known_hosts file that lists the host key, and an empty
ssh_config, so that nothing here ever reads or writes the real ~/.ssh. Usable outside pytest:

    with SshServer.running(Path(tempfile.mkdtemp())) as server:
        print(server.endpoint("/tmp/disk.img"), server.cli_args())
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from blocksync_tui.engine.options import SshOptions

SSHD = "/usr/sbin/sshd"
"""Debian's sshd; `shutil.which` would miss it when /usr/sbin is not on PATH."""


def sshd_path() -> str | None:
    """The sshd binary, or None if OpenSSH's server is not installed."""
    if os.access(SSHD, os.X_OK):
        return SSHD
    return shutil.which("sshd")


def _keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key pair without passphrase; return the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Direct children of a process, from /proc."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _descendants(pid: int) -> list[int]:
    found, todo = [], _children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(_children(child))
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


class SshServer:
    """A private sshd: its keys, its files, and helpers to reach and to break it."""

    def __init__(self, directory: Path, extra_config: str = "") -> None:
        """Prepare keys and files under `directory`; `start()` runs sshd.

        Args:
            directory: A directory that belongs to this server alone (created if missing).
            extra_config: More sshd_config lines, e.g. "RekeyLimit 256M\n".
        """
        self.directory = directory
        self.extra_config = extra_config
        self.host = "127.0.0.1"
        self.port = 0
        self.user = getpass.getuser()
        self.key = directory / "client_ed25519"
        """The client key that authorized_keys accepts."""
        self.other_key = directory / "stranger_ed25519"
        """A valid key that authorized_keys does not list."""
        self.fake_sudo_key = directory / "fakesudo_ed25519"
        """Accepted, but its sessions find a `sudo` that always wants a password first on PATH."""
        self.host_key = directory / "host_ed25519"
        self.known_hosts = directory / "known_hosts"
        self.ssh_config = directory / "ssh_config"
        """An empty client ssh_config, so that tests never read ~/.ssh/config."""
        self.config = directory / "sshd_config"
        self.log = directory / "sshd.log"
        self.process: subprocess.Popen[bytes] | None = None

    # -- life cycle

    @classmethod
    @contextlib.contextmanager
    def running(cls, directory: Path, extra_config: str = "") -> Iterator[SshServer]:
        """Start a server in `directory` and stop it on exit."""
        server = cls(directory, extra_config)
        server.start()
        try:
            yield server
        finally:
            server.stop()

    def start(self) -> None:
        """Generate keys and files, start `sshd -D -e` and wait until it answers.

        Raises:
            RuntimeError: sshd is missing or did not start (its log is in the message).
        """
        binary = sshd_path()
        if binary is None:
            raise RuntimeError("OpenSSH sshd is not installed")
        # sshd refuses to start without its privilege separation directory.
        with contextlib.suppress(OSError):  # not root: sshd itself will say what it misses
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self._make_files()
        for _attempt in range(5):  # the free port may be taken between probe and bind
            self.port = _free_port()
            self._write_config()
            with open(self.log, "ab") as log:  # sshd keeps its own copy of the descriptor
                self.process = subprocess.Popen(
                    [binary, "-D", "-e", "-f", str(self.config)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                )
            if self._wait_ready(10.0):
                self._write_known_hosts()
                return
            self.stop()
        raise RuntimeError(f"sshd did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop sshd and every session it still serves."""
        if self.process is None:
            return
        for pid in _descendants(self.process.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def _make_files(self) -> None:
        if self.host_key.exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        _keygen(self.host_key, "blocksync-test-host")
        accepted = _keygen(self.key, "blocksync-test-client")
        _keygen(self.other_key, "blocksync-test-stranger")
        fake_sudo = _keygen(self.fake_sudo_key, "blocksync-test-fakesudo")
        fakebin = self.directory / "fakebin"
        fakebin.mkdir()
        sudo = fakebin / "sudo"
        sudo.write_text("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
        sudo.chmod(0o755)
        # A forced command for that key only: after the login shell's own start-up files (which
        # may set PATH), put the fake sudo first and run what the client asked for.
        forced = f'PATH={fakebin}:$PATH; eval \\"$SSH_ORIGINAL_COMMAND\\"'
        (self.directory / "authorized_keys").write_text(
            f'{accepted}\ncommand="{forced}" {fake_sudo}\n'
        )
        self.ssh_config.write_text("")

    def _write_config(self) -> None:
        d = self.directory
        self.config.write_text(
            f"Port {self.port}\n"
            f"ListenAddress {self.host}\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {d / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\n"
            "StrictModes no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "PermitRootLogin prohibit-password\n"
            "MaxStartups 64\n"
            "MaxSessions 64\n"
            "LogLevel INFO\n"
            f"{self.extra_config}"
        )

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as probe:
                    if probe.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def _write_known_hosts(self) -> None:
        self.known_hosts.write_text(self.known_hosts_line() + "\n")

    def known_hosts_line(self, key_file: Path | None = None) -> str:
        """A known_hosts line for this server, with its host key or the key in `key_file`."""
        key_type, blob = (key_file or self.host_key).with_suffix(".pub").read_text().split()[:2]
        return f"[{self.host}]:{self.port} {key_type} {blob}"

    # -- how to reach it

    def endpoint(self, path: str | os.PathLike[str]) -> str:
        """The endpoint text of `path` on this server: "user@127.0.0.1:PORT:/path"."""
        return f"{self.user}@{self.host}:{self.port}:{path}"

    def ssh_options(self, **overrides: object) -> SshOptions:
        """SshOptions that reach this server with the accepted key and its known_hosts."""
        values: dict[str, object] = {
            "identity_files": [str(self.key)],
            "config_file": str(self.ssh_config),
            "known_hosts": str(self.known_hosts),
        }
        values.update(overrides)
        return SshOptions(**values)  # type: ignore[arg-type]

    def cli_args(self) -> list[str]:
        """The `blocksync-tui sync|compare` flags that reach this server."""
        return [
            "-i", str(self.key),
            "--ssh-config", str(self.ssh_config),
            "--known-hosts", str(self.known_hosts),
        ]

    def openssh_argv(
        self, *command: str, cipher: str | None = None, known_hosts: Path | None = None,
        options: tuple[str, ...] = (),
    ) -> list[str]:
        """An OpenSSH `ssh` command line that runs `command` on this server.

        Args:
            known_hosts: The only known_hosts file it reads (default: this server's).
            options: More `-o` options, e.g. ("HostKeyAlias=name",).
        """
        argv = [
            "ssh", "-F", str(self.ssh_config), "-i", str(self.key), "-p", str(self.port),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
        ]
        for option in options:
            argv += ["-o", option]
        if cipher:
            argv += ["-c", cipher]
        return [*argv, f"{self.user}@{self.host}", *command]

    # -- what runs on it, and how to break it

    def connection_pids(self) -> list[int]:
        """The per-connection sshd processes: children of the listener."""
        if self.process is None:
            return []
        return [p for p in _children(self.process.pid) if _comm(p) == "sshd"]

    def kill_connections(self) -> list[int]:
        """SIGKILL every sshd process serving a connection, as a crash or a cut cable would.

        Returns:
            The pids of the session processes (workers, shells) that were running; they are
            orphaned now and must exit on their own.
        """
        if self.process is None:
            return []
        tree = _descendants(self.process.pid)
        sessions = [p for p in tree if _comm(p) != "sshd"]
        for pid in tree:
            if _comm(pid) == "sshd":
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return sessions

    def session_pids(self) -> list[int]:
        """Processes started for clients of this server: below it, or orphans with its port."""
        found = set()
        if self.process is not None:
            found.update(p for p in _descendants(self.process.pid) if _comm(p) != "sshd")
        # SSH_CONNECTION="client_ip client_port server_ip server_port" survives reparenting.
        suffix = f" {self.host} {self.port}".encode()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                env = _environ(int(entry))
                start = env.find(b"SSH_CONNECTION=")
                if start >= 0 and env[start:].split(b"\0", 1)[0].endswith(suffix):
                    found.add(int(entry))
        return sorted(found)

    def worker_pids(self) -> list[int]:
        """The session processes that run a blocksync worker (not shells on their way to it)."""
        return [p for p in self.session_pids() if b"blocksync_worker" in _cmdline(p)]

    def wait_sessions_gone(self, pids: list[int] | None = None, timeout: float = 10.0) -> list[int]:
        """Wait until the given (default: all) session processes have exited; return survivors."""
        deadline = time.monotonic() + timeout
        while True:
            alive = [p for p in (self.session_pids() if pids is None else pids) if _alive(p)]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
