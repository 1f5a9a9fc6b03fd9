#!/usr/bin/env python3
"""Provides OtherHost: a private sshd on 127.0.0.1 that looks like another machine to the tool.

blocksync-tui decides that both workers are on one host, and then lets the destination's worker
read the source itself ("direct"), when the workers report the same
/proc/sys/kernel/random/boot_id in their HELLO (or the transports share a host key). To measure
the network path without `--no-direct`, this sshd runs in a mount namespace of its own
(`unshare --mount --propagation private`) with a fresh boot id bind-mounted over that file, so
every session it serves sees another boot id. Needs root (unshare and mount).

Everything lives in one directory: sshd_config, host key, client key, authorized_keys, a
known_hosts file for it, an empty ssh_config (so ~/.ssh is never read), the boot id file and the
sshd log (LogLevel DEBUG1, so the negotiated cipher of every connection can be read back).
With `delay_ms`, a delaying TCP proxy (delay_proxy.py) sits in front of the sshd and the public
port is the proxy's; known_hosts lists the host key for both ports.

    with OtherHost.running(delay_ms=0) as host:
        subprocess.run([*host.ssh_argv("cat", "/proc/sys/kernel/random/boot_id")])
        subprocess.run(["python3", "-m", "blocksync_tui", "sync", SRC, host.endpoint(DST),
                        *host.cli_args()])

    python3 bench/other_host.py [--delay-ms 25] [--check]    # until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

from sshd import _children, _descendants, _free_port, _keygen  # noqa: E402  (the test sshd's helpers)

BOOT_ID = "/proc/sys/kernel/random/boot_id"
SSHD = "/usr/sbin/sshd"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _wait_banner(host: str, port: int, alive, timeout: float) -> bool:
    """Wait until host:port answers with an SSH banner (through the proxy: end to end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with socket.create_connection((host, port), timeout=2) as probe:
                if probe.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def local_boot_id() -> str:
    """This machine's boot id as the tool's local worker sees it."""
    return Path(BOOT_ID).read_text().strip()


class OtherHost:
    """A private sshd whose sessions see another boot id, optionally behind a delaying proxy."""

    def __init__(self, directory: Path, delay_ms: float = 0.0) -> None:
        self.directory = directory
        self.delay_ms = delay_ms
        self.host = "127.0.0.1"
        self.sshd_port = 0
        """The port sshd listens on."""
        self.port = 0
        """The port clients use: sshd's, or the delay proxy's."""
        self.user = getpass.getuser()
        self.key = directory / "client_ed25519"
        self.host_key = directory / "host_ed25519"
        self.known_hosts = directory / "known_hosts"
        self.ssh_config = directory / "ssh_config"
        self.config = directory / "sshd_config"
        self.boot_id_file = directory / "boot_id"
        self.log = directory / "sshd.log"
        self.boot_id = str(uuid.uuid4())
        self.process: subprocess.Popen[bytes] | None = None
        self.proxy: subprocess.Popen[str] | None = None

    # -- life cycle

    @classmethod
    @contextlib.contextmanager
    def running(cls, directory: Path | None = None, delay_ms: float = 0.0) -> Iterator[OtherHost]:
        """Start a server (in a temp dir unless `directory` is given) and stop it on exit."""
        with contextlib.ExitStack() as stack:
            if directory is None:
                directory = Path(stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="blocksync-other-host-")
                ))
            server = cls(directory, delay_ms)
            stack.callback(server.stop)
            server.start()
            yield server

    def start(self) -> None:
        """Make keys and files, start sshd in its own mount namespace, then the proxy if any.

        Raises:
            RuntimeError: not root, sshd or unshare missing, or sshd did not come up.
        """
        if os.geteuid() != 0:
            raise RuntimeError("other_host needs root: it runs unshare --mount and mount --bind")
        for tool in ("unshare", "mount", "ssh-keygen"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not on PATH")
        if not os.access(SSHD, os.X_OK):
            raise RuntimeError(f"{SSHD} is missing (apt-get install openssh-server)")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        self._make_files()
        for _attempt in range(5):  # the free port may be taken between probe and bind
            self.sshd_port = self.port = _free_port()
            self._write_config()
            # -E, not -e: with -e the session processes' debug lines would go to the session's
            # stderr (the client would see "debug1: ..." on the channel).
            script = f'mount --bind "$1" {BOOT_ID} && exec "$2" -D -E "$4" -f "$3"'
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(
                    ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                     str(self.boot_id_file), SSHD, str(self.config), str(self.log)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                    start_new_session=True,  # Ctrl-C in a terminal reaches us, not sshd
                )
            if _wait_banner(self.host, self.sshd_port, self._sshd_alive, 10.0):
                break
            self.stop()
        else:
            raise RuntimeError(f"sshd did not start: {self.log.read_text()[-2000:]}")
        if self.delay_ms > 0:
            self._start_proxy()
        self.known_hosts.write_text(
            "".join(f"{self.known_hosts_line(port)}\n" for port in {self.sshd_port, self.port})
        )

    def _sshd_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _start_proxy(self) -> None:
        self.proxy = subprocess.Popen(
            [sys.executable, str(BENCH / "delay_proxy.py"), "--target",
             f"{self.host}:{self.sshd_port}", "--delay-ms", str(self.delay_ms)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, start_new_session=True,
        )
        assert self.proxy.stdout is not None
        line = self.proxy.stdout.readline()
        match = re.search(r":(\d+)$", line.strip())
        if not match:
            raise RuntimeError(f"delay proxy did not start: {line!r}")
        self.port = int(match[1])
        if not _wait_banner(self.host, self.port, lambda: self.proxy.poll() is None, 10.0):
            raise RuntimeError("delay proxy does not relay the ssh banner")

    def stop(self) -> None:
        """Stop the proxy, sshd and every session it still serves."""
        if self.proxy is not None:
            self.proxy.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proxy.wait(5)
            if self.proxy.poll() is None:
                self.proxy.kill()
                self.proxy.wait()
            self.proxy = None
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
        self.directory.mkdir(parents=True, exist_ok=True)
        self.boot_id_file.write_text(self.boot_id + "\n")
        if self.host_key.exists():
            return
        _keygen(self.host_key, "blocksync-bench-other-host")
        accepted = _keygen(self.key, "blocksync-bench-client")
        (self.directory / "authorized_keys").write_text(accepted + "\n")
        self.ssh_config.write_text("")

    def _write_config(self) -> None:
        d = self.directory
        self.config.write_text(
            f"Port {self.sshd_port}\n"
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
            "LogLevel DEBUG1\n"  # logs "kex: client->server cipher: ..." per connection
        )

    def known_hosts_line(self, port: int | None = None) -> str:
        """The known_hosts line for this server's host key at `port` (default: the public one)."""
        key_type, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[{self.host}]:{port or self.port} {key_type} {blob}"

    # -- how to reach it

    @property
    def remote(self) -> str:
        """user@host."""
        return f"{self.user}@{self.host}"

    def endpoint(self, path: str | os.PathLike[str]) -> str:
        """blocksync-tui's endpoint text for `path` on this host: "user@127.0.0.1:PORT:/path"."""
        return f"{self.user}@{self.host}:{self.port}:{path}"

    def cli_args(self) -> list[str]:
        """The `blocksync-tui sync|compare` flags that reach this host (and nothing in ~/.ssh)."""
        return [
            "-i", str(self.key), "--ssh-config", str(self.ssh_config),
            "--known-hosts", str(self.known_hosts),
        ]

    def ssh_o_options(self) -> list[str]:
        """The `-o` values OpenSSH needs for this host: batch mode, its known_hosts only."""
        return [
            "BatchMode=yes", "IdentitiesOnly=yes", f"UserKnownHostsFile={self.known_hosts}",
            "GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=yes",
        ]

    def ssh_args(self, cipher: str | None = None) -> list[str]:
        """OpenSSH arguments up to (not including) the host: -F, -i, -p and the -o options."""
        args = ["-F", str(self.ssh_config), "-i", str(self.key), "-p", str(self.port)]
        for option in self.ssh_o_options():
            args += ["-o", option]
        return args + (["-c", cipher] if cipher else [])

    def ssh_argv(self, *command: str, cipher: str | None = None) -> list[str]:
        """An OpenSSH command line that runs `command` (one shell string or words) there."""
        return ["ssh", *self.ssh_args(cipher), self.remote, *command]

    # -- what happened on it

    def remote_cpu(self) -> float:
        """CPU seconds (user+system) of every finished session so far: sshd's children and theirs.

        Each connection's sshd reaps its shell and worker, and the listener reaps it, so the
        listener's cutime+cstime grows by the whole remote side of a connection once it closed.
        """
        if self.process is None:
            return 0.0
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / CLK_TCK  # cutime, cstime

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no connection is being served (so remote_cpu() counts all of them)."""
        deadline = time.monotonic() + timeout
        while self.process is not None and _children(self.process.pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def log_size(self) -> int:
        """The log's size now; pass it to negotiated() to see only later connections."""
        return self.log.stat().st_size if self.log.exists() else 0

    def negotiated(self, since: int = 0) -> list[str]:
        """The ciphers (with MAC and compression unless implicit/none) sshd logged for connections after log offset `since`, deduped."""
        with open(self.log, "rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
        found = re.findall(r"kex: client->server cipher: (\S+) MAC: (\S+) compression: (\S+)", text)
        return sorted({c + ("" if m == "<implicit>" else f" MAC {m}")
                       + ("" if z == "none" else f" compression {z}") for c, m, z in found})


def check(host: OtherHost) -> dict:
    """Show that the tool takes the network path to this host; raise AssertionError if not."""
    result: dict = {"local_boot_id": local_boot_id(), "configured_boot_id": host.boot_id}
    proc = subprocess.run(host.ssh_argv(f"cat {BOOT_ID}"), capture_output=True, text=True,
                          check=True, timeout=30)
    result["session_boot_id"] = proc.stdout.strip()
    assert result["session_boot_id"] == host.boot_id != result["local_boot_id"], result
    with tempfile.TemporaryDirectory(prefix="blocksync-other-host-check-") as work:
        src, dst, report = Path(work, "src"), Path(work, "dst"), Path(work, "report.json")
        src.write_bytes(os.urandom(3 << 20))
        since = host.log_size()
        proc = subprocess.run(
            [sys.executable, "-m", "blocksync_tui", "sync", str(src), host.endpoint(dst), "-q",
             "--yes", "--json", str(report), *host.cli_args()],
            cwd=BENCH.parent, capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        data = json.loads(report.read_text())
        result["method"] = data["method"]
        result["sync_ok"] = src.read_bytes() == dst.read_bytes()
        host.wait_idle()
        result["negotiated"] = host.negotiated(since)
    assert result["method"] == "digests" and result["sync_ok"], result
    return result


def main(argv: list[str] | None = None) -> int:
    """Start the host, print how to reach it, and wait for Ctrl-C (or just --check it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="add this latency each way through a TCP proxy (default none)")
    parser.add_argument("--dir", type=Path, help="keep keys and files here (default: temp dir)")
    parser.add_argument("--check", action="store_true",
                        help="verify boot id and the tool's method, print the result, and exit")
    args = parser.parse_args(argv)
    with OtherHost.running(args.dir, args.delay_ms) as host:
        print(f"sshd on {host.host}:{host.sshd_port}, boot id {host.boot_id} "
              f"(this machine: {local_boot_id()})")
        if host.proxy:
            print(f"delay proxy on {host.host}:{host.port}: +{args.delay_ms:g} ms each way")
        print(f"files in {host.directory}\n")
        print("OpenSSH:\n  " + shlex.join(host.ssh_argv("cat", BOOT_ID)))
        print("blocksync-tui (from a checkout):\n  " + shlex.join(
            ["python3", "-m", "blocksync_tui", "sync", "SRC", host.endpoint("/path/to/DST"),
             *host.cli_args()]))
        print("bench_sync.py:\n  " + shlex.join(
            ["python3", "bench/bench_sync.py", "--ssh", "--ssh-port", str(host.port),
             "--ssh-user", host.user, "--ssh-key", str(host.key),
             "--ssh-known-hosts", str(host.known_hosts)]))
        if args.check:
            print("\ncheck: " + json.dumps(check(host), indent=2))
            return 0
        print("\nCtrl-C to stop.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
