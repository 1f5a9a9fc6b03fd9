"""Provides SshTransport: a worker started on an SSH host through paramiko.

The host is resolved through ssh_config (HostName, User, Port, IdentityFile, IdentitiesOnly,
HostKeyAlias, ProxyJump, ProxyCommand) the way OpenSSH would, host keys are checked against
known_hosts, and only keys authenticate (ssh-agent and key files): there is never a password
prompt. Tuning follows the measurements in PARAMIKO-FACTS.md: AES-GCM first, TCP_NODELAY, no SSH
compression, Channel.recv for bulk data, and no client-initiated re-key (paramiko#822).
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
from contextlib import suppress
from dataclasses import dataclass, field

import paramiko
from paramiko.auth_strategy import AuthFailure, AuthStrategy, InMemoryPrivateKey, OnDiskPrivateKey

from blocksync_tui.endpoint import Endpoint
from blocksync_tui.engine import bootstrap
from blocksync_tui.engine.errors import ConnectError
from blocksync_tui.engine.transport import Transport
from blocksync_tui.engine.transports import SshOptions

SSH_PORT = 22
GCM_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
"""Tried first: ~35% less client CPU than paramiko's default aes128-ctr + hmac-sha2-256."""
NO_CLIENT_REKEY = 1 << 40
"""paramiko's own re-key limit, raised so that only the server re-keys (see `_tuned_transport`)."""
DEFAULT_KEYS = ("id_rsa", "id_ecdsa", "id_ed25519")
"""What OpenSSH (and paramiko's look_for_keys) offer from ~/.ssh when nothing else works."""


# paramiko logs a broken connection at ERROR level; with no handler anywhere, Python's last resort
# prints it on the terminal beside our one-line error. Applications' own handlers still see it.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass
class _Hop:
    """One SSH server on the way: a ProxyJump host, or the target itself."""

    alias: str
    """The name as written (endpoint or ProxyJump), which ssh_config was looked up with."""
    hostname: str
    port: int
    user: str
    config: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """"user@host", with ":port" when it is not 22."""
        return f"{self.user}@{self.alias}" + (f":{self.port}" if self.port != SSH_PORT else "")

    @property
    def key_name(self) -> str:
        """The name known_hosts lists this host under (HostKeyAlias wins, as with OpenSSH)."""
        return self.config.get("hostkeyalias") or self.hostname


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, name: str, key: paramiko.PKey) -> None:
        super().__init__(name)
        self.name, self.key = name, key  # for the message: which host, which fingerprint


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse hosts missing from known_hosts, or (accept_new) append their key to it.

    Only *missing* hosts get here: paramiko raises BadHostKeyException for a changed key before
    any policy runs, so accepting new keys can never accept a changed one.
    """

    def __init__(self, known_hosts: str, accept_new: bool) -> None:
        self.known_hosts, self.accept_new = known_hosts, accept_new

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if not self.accept_new:
            raise _UnknownHostKey(hostname, key)
        # Append one line, as ssh does, instead of rewriting a file that may hold hashed entries.
        os.makedirs(os.path.dirname(self.known_hosts) or ".", mode=0o700, exist_ok=True)
        fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as known:
            known.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


class _KeysOnly(AuthStrategy):
    """Offer key files and agent keys, in OpenSSH's order; never a password or a prompt.

    paramiko's default flow falls back to keyboard-interactive after a partial success, which
    prompts on the terminal; an explicit strategy cannot.
    """

    def __init__(self, user: str, files: list[str], agent: paramiko.Agent | None,
                 defaults: list[str]) -> None:
        super().__init__(ssh_config=None)
        self.user, self.files, self.agent, self.defaults = user, files, agent, defaults
        self.unusable: list[str] = []
        """Key files that could not be offered, with the reason."""

    def get_sources(self):
        for path in self.files:
            yield from self._from_file(path)
        for key in self.agent.get_keys() if self.agent else ():
            yield InMemoryPrivateKey(self.user, key)
        for path in self.defaults:
            yield from self._from_file(path)

    def _from_file(self, path: str):
        if not os.path.isfile(path):
            return
        try:
            yield OnDiskPrivateKey(self.user, "python-config", path, paramiko.PKey.from_path(path))
        except paramiko.PasswordRequiredException:
            self.unusable.append(f"{path} (encrypted: load it with ssh-add)")
        except (paramiko.SSHException, OSError, ValueError) as exc:
            self.unusable.append(f"{path} ({exc})")


def _tuned_transport(sock, **kwargs) -> paramiko.Transport:
    """A paramiko Transport with GCM preferred and no client-initiated re-key."""
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    # Reorder, don't disable: a server without GCM still negotiates paramiko's next choice.
    options.ciphers = tuple(sorted(options.ciphers, key=lambda name: name not in GCM_CIPHERS))
    # paramiko re-keys every 512 MiB each way, and a re-key that meets the server's channel close
    # livelocks the transport thread (paramiko#822: 2 of 5 1 GiB downloads died here). sshd still
    # re-keys on its own RekeyLimit. An instance attribute, so other paramiko users are untouched.
    transport.packetizer.REKEY_BYTES = transport.packetizer.REKEY_PACKETS = NO_CLIENT_REKEY
    return transport


class SshTransport(Transport):
    """A worker on an SSH host: `python3 -c STUB` in an exec channel, bytes over Channel I/O."""

    def __init__(self, endpoint: Endpoint, options: SshOptions) -> None:
        """Resolve the host through ssh_config; nothing connects until `start()`."""
        assert endpoint.host is not None
        self.options = options
        self.python = options.python
        config_file = options.config_file or os.path.expanduser("~/.ssh/config")
        self._config = (
            paramiko.SSHConfig.from_path(config_file) if os.path.isfile(config_file) else None
        )
        self.target = self._hop(endpoint.host, endpoint.user, endpoint.port)
        self.label = self.target.label
        self.host_key = f"{self.target.hostname.lower()}:{self.target.port}"
        self.known_hosts = options.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        self._clients: list[paramiko.SSHClient] = []
        self._agent: paramiko.Agent | None = None
        self._channel: paramiko.Channel | None = None
        self._ssh: paramiko.Transport | None = None
        self._strategy: _KeysOnly | None = None
        self._stderr_done = threading.Event()
        self._closing = False

    def _hop(self, alias: str, user: str | None = None, port: int | None = None) -> _Hop:
        """Look `alias` up in ssh_config; what the endpoint itself says wins."""
        config = dict(self._config.lookup(alias)) if self._config else {}
        port = port or int(config.get("port", SSH_PORT))
        user = user or config.get("user") or getpass.getuser()
        return _Hop(alias, config.get("hostname", alias), port, user, config)

    def _jump_hops(self) -> list[_Hop]:
        """The ProxyJump chain, "[user@]host[:port],..." (each hop looked up in ssh_config)."""
        jumps = self.target.config.get("proxyjump", "none")
        hops = []
        for spec in [] if jumps.lower() == "none" else jumps.split(","):
            user, _, hostport = spec.strip().rpartition("@")
            if hostport.startswith("["):  # [v6 address]:port
                host, _, port = hostport[1:].partition("]")
                port = port[1:]
            else:
                host, _, port = hostport.rpartition(":") if hostport.count(":") == 1 else (hostport, "", "")
            hops.append(self._hop(host, user or None, int(port) if port else None))
        return hops

    # -- start

    def start(self) -> None:
        """Connect (through the jump hosts), log in and start the worker's interpreter.

        Raises:
            ConnectError: one line that says what failed and what to do about it.
        """
        for path in self.options.identity_files:
            if not os.path.isfile(os.path.expanduser(path)):
                raise ConnectError(f"identity file {path} does not exist")
        hop = self.target
        try:
            hops = [*self._jump_hops(), self.target]
            hop = hops[0]
            sock = self._first_socket(hop)
            for index, hop in enumerate(hops):
                client = self._login(hop, sock)
                if index + 1 < len(hops):
                    hop = hops[index + 1]  # a failure from here on is about reaching this one
                    sock = client.get_transport().open_channel(
                        "direct-tcpip", (hop.hostname, hop.port), ("", 0),
                        timeout=self.options.connect_timeout,
                    )
            self._ssh = client.get_transport()
            channel = self._ssh.open_session(timeout=self.options.connect_timeout)
            channel.exec_command(self.remote_command())
        except Exception as exc:  # every failure becomes one line a user can act on
            self._teardown()
            if isinstance(exc, ConnectError):
                raise
            raise ConnectError(self._explain(exc, hop)) from None
        self._channel = channel
        self._drain_stderr(self._read_stderr)

    def remote_command(self) -> str:
        """The command the channel runs: the worker's bootstrap (a benchmark runs `cat`)."""
        return bootstrap.remote_command(self.python, self.options.sudo)

    def _first_socket(self, hop: _Hop):
        """A ProxyCommand's pipes, or our own TCP socket with TCP_NODELAY and keepalives."""
        command = hop.config.get("proxycommand")
        if command:
            return paramiko.ProxyCommand(command)
        sock = socket.create_connection((hop.hostname, hop.port), self.options.connect_timeout)
        # paramiko never sets TCP_NODELAY; without it request/answer exchanges stall 40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Keepalives turn a host that vanished (no RST) into an error instead of a hang.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
            with suppress(AttributeError, OSError):  # Linux names; other systems keep defaults
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
        return sock

    def _login(self, hop: _Hop, sock) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        self._clients.append(client)  # closed by _teardown, whatever happens below
        if os.path.isfile(self.known_hosts):
            client.load_system_host_keys(self.known_hosts)
        if self.options.known_hosts is None and os.path.isfile("/etc/ssh/ssh_known_hosts"):
            client.load_system_host_keys("/etc/ssh/ssh_known_hosts")
        client.set_missing_host_key_policy(
            _HostKeyPolicy(self.known_hosts, self.options.accept_new_host_key)
        )
        self._strategy = self._keys_for(hop)
        timeout = self.options.connect_timeout
        try:
            # The whole handshake gets longer than its banner step: when both time out together,
            # paramiko hides the banner error behind "No existing session".
            client.connect(
                hop.key_name, hop.port, username=hop.user, sock=sock, compress=False,
                timeout=2 * timeout, banner_timeout=timeout, auth_timeout=timeout,
                channel_timeout=timeout, transport_factory=_tuned_transport,
                auth_strategy=self._strategy,
            )
        except BaseException:
            sock.close()  # the client's transport closes it too, if it got that far
            raise
        if not client.get_transport().is_authenticated():
            raise ConnectError(
                f"{hop.label}: the server wants more than a key (password or one-time code); "
                "blocksync-tui logs in with keys only"
            )
        return client

    def _keys_for(self, hop: _Hop) -> _KeysOnly:
        """Explicit -i keys, then ssh_config's IdentityFile, the agent, then ~/.ssh/id_*."""
        files = [*self.options.identity_files, *hop.config.get("identityfile", [])]
        files = list(dict.fromkeys(os.path.expanduser(path) for path in files))
        only = hop.config.get("identitiesonly", "no").lower() == "yes"
        if self._agent is None and not only and os.environ.get("SSH_AUTH_SOCK"):
            self._agent = paramiko.Agent()
        home = os.path.expanduser("~/.ssh")
        defaults = [] if only else [os.path.join(home, name) for name in DEFAULT_KEYS]
        agent = None if only else self._agent
        return _KeysOnly(hop.user, files, agent, defaults)

    def _explain(self, exc: Exception, hop: _Hop) -> str:
        """The one line a user reads when connecting failed."""
        where, address = hop.label, f"{hop.hostname} port {hop.port}"
        if isinstance(exc, socket.gaierror):
            return f"{where}: cannot resolve host name {hop.hostname!r} ({exc.strerror})"
        if isinstance(exc, ConnectionRefusedError):
            return f"{where}: connection refused by {address}: is sshd running there, on that port?"
        if isinstance(exc, (TimeoutError, socket.timeout)):
            return f"{where}: no answer from {address} within {self.options.connect_timeout:g} s"
        if isinstance(exc, _UnknownHostKey):
            return (
                f"{where}: host key for {exc.name} ({exc.key.get_name()} {exc.key.fingerprint}) "
                f"is not in {self.known_hosts}; verify it and connect once with ssh, "
                "or pass --accept-new-host-key"
            )
        if isinstance(exc, paramiko.BadHostKeyException):
            name = hop.key_name if hop.port == SSH_PORT else f"[{hop.key_name}]:{hop.port}"
            return (
                f"{where}: the host key for {name} has CHANGED: the server now offers "
                f"{exc.key.get_name()} {exc.key.fingerprint}, {self.known_hosts} has "
                f"{exc.expected_key.fingerprint}. Someone may be intercepting the connection; if "
                f"the host was reinstalled, verify the new key, then run: "
                f"ssh-keygen -R '{name}' -f {self.known_hosts}"
            )
        if isinstance(exc, AuthFailure) and self._strategy is not None:
            tried = [
                str(r.source.path) if isinstance(r.source, OnDiskPrivateKey)
                else f"agent key {r.source.pkey.fingerprint}" for r in exc.result
            ] + self._strategy.unusable
            return (
                f"{where}: authentication refused (tried keys: {', '.join(tried) or 'none'}); "
                "pass -i KEY, load a key into ssh-agent, or add your public key to "
                "~/.ssh/authorized_keys there"
            )
        if isinstance(exc, paramiko.ChannelException):
            return f"{where}: the jump host cannot reach {address}: {exc.text}"
        if isinstance(exc, paramiko.ProxyCommandFailure):
            return f"{where}: ProxyCommand failed: {exc.error}"
        if isinstance(exc, paramiko.SSHException) and "protocol banner" in str(exc):
            return f"{where}: {address} does not answer like an SSH server"
        if isinstance(exc, paramiko.SSHException) and "No existing session" in str(exc):
            return f"{where}: the SSH handshake with {address} did not finish in time"
        if isinstance(exc, OSError) and not isinstance(exc, paramiko.SSHException):
            return f"{where}: cannot connect to {address}: {exc.strerror or exc}"
        return f"{where}: SSH failed: {exc or type(exc).__name__}"

    # -- bytes

    def send(self, data: bytes | memoryview) -> None:
        assert self._channel is not None
        try:
            self._channel.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            # paramiko says EOFError or "Socket is closed"; the transport's own error says why.
            if self._channel.eof_received:
                raise
            raise self._broken((self._ssh and self._ssh.saved_exception) or exc) from exc

    def recv(self, size: int) -> bytes:
        assert self._channel is not None
        try:
            data = self._channel.recv(size)  # may send a window adjust: it can fail like a send
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._broken((self._ssh and self._ssh.saved_exception) or exc) from exc
        if not data and not self._channel.eof_received and not self._closing:
            # Closed without the server's EOF: the connection broke (the worker may still run).
            raise self._broken(self._ssh.saved_exception if self._ssh else None)
        return data

    def _broken(self, cause: BaseException | None) -> ConnectionResetError:
        detail = f": {cause}" if cause and str(cause) else ""
        return ConnectionResetError(f"the SSH connection to {self.target.alias} broke{detail}")

    def _read_stderr(self, size: int) -> bytes:
        assert self._channel is not None
        data = self._channel.recv_stderr(size)
        if not data:
            self._stderr_done.set()
        return data

    def stderr_tail(self) -> str:
        tail = super().stderr_tail()
        if self.options.sudo and "a password is required" in tail:
            tail += (
                f"\nsudo on {self.target.alias} needs a password: allow NOPASSWD for "
                f"{self.target.user} to run {self.python} there (sudoers), or connect as root"
            )
        return tail

    def exit_status(self, timeout: float) -> int | None:
        """The worker's exit status; -1 if the channel closed without one (signal, lost link)."""
        channel = self._channel
        if channel is None or not channel.status_event.wait(timeout):
            return None
        self._stderr_done.wait(1.0)  # the last stderr lines explain a failed start
        return channel.exit_status

    # -- end

    def close(self) -> None:
        """Send EOF (the worker exits on it), give it a moment, then close channel and client."""
        self._closing = True
        if self._channel is not None:
            with suppress(Exception):
                self._channel.shutdown_write()
                self._channel.status_event.wait(2.0)
                self._channel.close()
        self._teardown()

    def _teardown(self) -> None:
        for client in reversed(self._clients):  # the target first, then its jump hosts
            with suppress(Exception):
                client.close()
        self._clients.clear()
        if self._agent is not None:
            self._agent.close()
            self._agent = None

