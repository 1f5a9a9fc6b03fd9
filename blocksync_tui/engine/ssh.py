"""Provides SshTransport: a worker started on an SSH host through paramiko.

The host is resolved through ssh_config (HostName, User, Port, IdentityFile, IdentitiesOnly,
ConnectTimeout, ProxyJump, ProxyCommand) the way OpenSSH would. Host keys are checked by us
(known_hosts.py) as OpenSSH checks them: UserKnownHostsFile, GlobalKnownHostsFile,
StrictHostKeyChecking, HostKeyAlias, HashKnownHosts. Only keys authenticate (ssh-agent and key
files): there is never a password prompt. Tuning follows the measurements in
PARAMIKO-FACTS.md: AES-GCM first, TCP_NODELAY, no SSH compression, Channel.recv for bulk data,
no client-initiated re-key (paramiko#822), and outgoing data in batches of packets (ssh_send.py).
"""

from __future__ import annotations

import base64
import functools
import getpass
import logging
import os
import re
import shlex
import socket
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field

from blocksync_tui.engine import deferred_invoke  # noqa: F401, I001  (before paramiko: see there)
import paramiko
from paramiko.auth_strategy import AuthFailure, AuthStrategy, InMemoryPrivateKey, OnDiskPrivateKey
from paramiko.common import cMSG_CHANNEL_WINDOW_ADJUST
from paramiko.message import Message

from blocksync_tui.engine import bootstrap, known_hosts
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import ConnectError, UnknownHostKey
from blocksync_tui.engine.known_hosts import Status, Verdict
from blocksync_tui.engine.options import SshOptions
from blocksync_tui.engine.ssh_receive import GcmReceiver
from blocksync_tui.engine.ssh_send import GcmSender
from blocksync_tui.engine.transport import Transport

SSH_PORT = 22
GCM_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
"""Tried first: ~35% less client CPU than paramiko's default aes128-ctr + hmac-sha2-256."""
LINK_BANDWIDTH = 400_000_000
"""Bytes per second a channel's receive window is sized for, once the link's round trip is
known: a channel carries at most one window per round trip, so paramiko's 2 MiB held a pull
to 40 MB/s at 50 ms. (sshd grants 2 MiB the other way, which we cannot change: lanes help.)"""
MAX_RECEIVE_WINDOW = 32 << 20
"""The most a server may have sent and we not yet read, per channel (ssh_receive.py refuses
more)."""
NO_CLIENT_REKEY = 1 << 40
"""paramiko's own re-key limit, raised so that only the server re-keys (see `_tuned_transport`)."""
DEFAULT_KEYS = ("id_rsa", "id_ecdsa", "id_ed25519")
"""What OpenSSH (and paramiko's look_for_keys) offer from ~/.ssh when no key file is named."""
DEFAULT_CONNECT_TIMEOUT = 15.0
"""Seconds, when neither SshOptions nor ssh_config's ConnectTimeout says."""
USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
"""OpenSSH's defaults for UserKnownHostsFile and GlobalKnownHostsFile."""
STRICTNESS = {"yes": "yes", "true": "yes", "ask": "ask", "accept-new": "accept-new",
              "no": "no", "off": "no", "false": "no"}
"""StrictHostKeyChecking's spellings, as OpenSSH reads them. We never prompt in the engine, so
"ask" refuses like "yes", but with an UnknownHostKey that the app turns into a question."""
RSA_SIGNATURES = ("rsa-sha2-512", "rsa-sha2-256")
"""What to ask for when known_hosts lists an "ssh-rsa" key (the key type is not an algorithm)."""


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
    timeout: float = DEFAULT_CONNECT_TIMEOUT
    """Seconds for each step of connecting to this host (ConnectTimeout)."""

    @property
    def label(self) -> str:
        """"user@host", with ":port" when it is not 22."""
        return f"{self.user}@{self.alias}" + (f":{self.port}" if self.port != SSH_PORT else "")

    @property
    def key_name(self) -> str:
        """The name known_hosts lists this host under, as OpenSSH writes and looks it up:
        HostKeyAlias as it is (no port added), else "host", or "[host]:port" off port 22."""
        alias = self.config.get("hostkeyalias")
        return alias.lower() if alias else known_hosts.host_name(self.hostname, self.port)

    @property
    def bare_key_name(self) -> str | None:
        """The port-less name OpenSSH also accepts a listed key under, off port 22."""
        if self.config.get("hostkeyalias") or self.port == SSH_PORT:
            return None
        return self.hostname.lower()


@dataclass
class _HostKeyRules:
    """How one host's key is checked: SshOptions first, then that host's ssh_config."""

    name: str
    """The name known_hosts lists the host under (see `_Hop.key_name`)."""
    bare_name: str | None
    files: list[str]
    """Every known_hosts file to read: the user's, then the system's."""
    save_to: str
    """Where a new key is written: the first user file ("" if UserKnownHostsFile is none)."""
    strict: str
    """StrictHostKeyChecking: "yes", "ask", "accept-new" or "no"."""
    hashed: bool
    """HashKnownHosts: write new names hashed."""


class _HostKeyCheck(paramiko.MissingHostKeyPolicy):
    """Decide about every host key ourselves, after the key exchange and before any login.

    paramiko is given no known hosts at all, so every key comes to this "missing key" hook;
    whatever it does not accept raises, and the connection ends there (RejectPolicy's
    semantics: an unverified key is used only when accepting new keys was asked for).
    """

    def __init__(self, rules: _HostKeyRules, entries: list[known_hosts.Entry], where: str,
                 warn) -> None:
        self.rules, self.entries, self.where, self.warn = rules, entries, where, warn

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        """Accept `key` or raise the ConnectError that says why not."""
        blob = key.asbytes()
        rules = self.rules
        verdict = known_hosts.lookup(self.entries, rules.name, blob, rules.bare_name)
        if verdict.status is Status.UNKNOWN and rules.strict in ("accept-new", "no"):
            verdict = self._remember(blob)
        if verdict.status is not Status.KNOWN:
            raise self._refusal(verdict, blob)

    def _remember(self, blob: bytes) -> Verdict:
        """Save a new key (accept-new, no); a key that cannot be saved is still accepted, as
        OpenSSH does, with a warning."""
        rules, fp = self.rules, known_hosts.fingerprint(blob)
        described = f"the host key of {rules.name} ({known_hosts.key_type(blob)} {fp})"
        if rules.strict == "no":
            self.warn(f"{self.where}: {described} was NOT verified (StrictHostKeyChecking no)")
        if not rules.save_to:
            self.warn(f"{self.where}: {described} is not saved: UserKnownHostsFile is none")
            return Verdict(Status.KNOWN)
        try:
            verdict = known_hosts.add(rules.save_to, rules.name, blob, rules.hashed)
        except OSError as exc:
            reason = exc.strerror or exc
            self.warn(f"{self.where}: cannot save {described} to {rules.save_to}: {reason}")
            return Verdict(Status.KNOWN)
        # UNKNOWN: not a regular file (/dev/null); CHANGED/REVOKED: written meanwhile, refused.
        return Verdict(Status.KNOWN) if verdict.status is Status.UNKNOWN else verdict

    def _refusal(self, verdict: Verdict, blob: bytes) -> ConnectError:
        """The one line that says why this key is refused, and what to do about it."""
        rules, where, entry = self.rules, self.where, verdict.entry
        offered = f"{known_hosts.key_type(blob)} {known_hosts.fingerprint(blob)}"
        if verdict.status is Status.REVOKED and entry is not None:
            return ConnectError(
                f"{where}: the host key of {rules.name} ({offered}) is marked @revoked in "
                f"{entry.where}; refusing to connect"
            )
        if verdict.status is Status.CHANGED and entry is not None:
            return ConnectError(
                f"{where}: the host key for {rules.name} has CHANGED: the server now offers "
                f"{offered}, {entry.where} has {entry.key_type} "
                f"{known_hosts.fingerprint(entry.key)}. Someone may be intercepting the "
                f"connection; if the host was reinstalled, verify the new key, then run: "
                f"ssh-keygen -R '{rules.name}' -f {entry.path}"
            )
        files = [rules.save_to] if rules.save_to else []
        files += [f for f in rules.files if f not in files and os.path.exists(f)]
        listed = ", ".join(files) or "any known_hosts file"
        if rules.strict == "yes":
            advice = (f"StrictHostKeyChecking is yes: verify it, then add it to "
                      f"{rules.save_to or 'known_hosts'} (or pass --accept-new-host-key)")
        else:
            advice = "verify it and connect once with ssh, or pass --accept-new-host-key"
        return UnknownHostKey(
            f"{where}: host key for {rules.name} ({offered}) is not in {listed}; {advice}",
            host=rules.name, key_type=known_hosts.key_type(blob),
            fingerprint=known_hosts.fingerprint(blob), known_hosts=rules.save_to,
            key=base64.b64encode(blob).decode(), hashed=rules.hashed, strict=rules.strict,
        )


class _KeysOnly(AuthStrategy):
    """Offer key files and agent keys, in OpenSSH's order; never a password or a prompt.

    The order is OpenSSH's (pubkey_prepare): first the key files whose key the agent holds,
    signed by the agent (an encrypted file then needs no passphrase, and IdentityFile may name
    just a .pub); then the agent's other keys, unless IdentitiesOnly; then the other files.
    paramiko's default flow falls back to keyboard-interactive after a partial success, which
    prompts on the terminal; an explicit strategy cannot.
    """

    def __init__(self, user: str, files: list[str], agent: paramiko.Agent | None,
                 identities_only: bool) -> None:
        super().__init__(ssh_config=None)
        self.user, self.files, self.agent = user, files, agent
        self.identities_only = identities_only
        self.unusable: list[str] = []
        """Key files that could not be offered, with the reason."""

    def get_sources(self):
        publics = {path: _public_blob(path) for path in self.files}
        files, by_agent, agent_only = list(self.files), [], []
        for key in self.agent.get_keys() if self.agent else ():
            path = next((p for p in files if publics[p] == key.asbytes()), None)
            if path is not None:
                files.remove(path)
                by_agent.append(key)
            elif not self.identities_only:
                agent_only.append(key)
        for key in [*by_agent, *agent_only]:
            yield InMemoryPrivateKey(self.user, key)
        for path in files:
            yield from self._from_file(path)

    def _from_file(self, path: str):
        if not os.path.isfile(path) or path.endswith(".pub"):
            return  # a public key alone signs nothing: it only selects an agent key
        try:
            yield OnDiskPrivateKey(self.user, "python-config", path, paramiko.PKey.from_path(path))
        except paramiko.PasswordRequiredException:
            self.unusable.append(f"{path} (encrypted: load it with ssh-add)")
        except (paramiko.SSHException, OSError, ValueError) as exc:
            self.unusable.append(f"{path} ({exc})")


def _public_blob(path: str) -> bytes | None:
    """The public key of an identity file: from its .pub (or itself, if it is one), else from
    the private key if that is not encrypted; None if neither can be read."""
    public = path if path.endswith(".pub") else path + ".pub"
    try:
        with open(public) as f:
            return base64.b64decode(f.read().split()[1], validate=True)
    except (OSError, IndexError, ValueError):
        pass
    if public != path:
        with suppress(Exception):  # encrypted, missing, or not a key: then it is not matched
            return paramiko.PKey.from_path(path).asbytes()
    return None


def _tuned_transport(sock, prefer: tuple[str, ...] = (), **kwargs) -> paramiko.Transport:
    """A paramiko Transport with GCM preferred and no client-initiated re-key.

    `prefer`: the host key types known_hosts lists for this host, asked for first (as OpenSSH
    orders its HostKeyAlgorithms), so that a server with several keys shows the one we know.
    """
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    # Reorder, don't disable: a server without GCM still negotiates paramiko's next choice.
    options.ciphers = tuple(sorted(options.ciphers, key=lambda name: name not in GCM_CIPHERS))
    wanted = {a for t in prefer for a in (RSA_SIGNATURES if t == "ssh-rsa" else (t,))}
    options.key_types = tuple(sorted(options.key_types, key=lambda name: name not in wanted))
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
        self.warnings: list[str] = []
        """What was accepted with a warning (a key not verified, a key that was not saved)."""
        self._clients: list[paramiko.SSHClient] = []
        self._agent: paramiko.Agent | None = None
        self._channel: paramiko.Channel | None = None
        self._sender: GcmSender | None = None
        """Sends the channel's data in batches of GCM packets; None: paramiko's own sendall."""
        self._receiver: GcmReceiver | None = None
        """Reads the channel's data in large pieces; None: paramiko's own read path."""
        self._ssh: paramiko.Transport | None = None
        self._strategy: _KeysOnly | None = None
        self._stderr_done = threading.Event()
        self._closing = False

    @property
    def host_identity(self) -> str:
        """The SSH host key of the host the worker runs on, by fingerprint, once connected."""
        key = self._ssh.get_remote_server_key() if self._ssh is not None else None
        return f"ssh {known_hosts.fingerprint(key.asbytes())}" if key is not None else f"ssh {self.host_key}"

    def _hop(self, alias: str, user: str | None = None, port: int | None = None) -> _Hop:
        """Look `alias` up in ssh_config; what the endpoint itself says wins."""
        config = dict(self._config.lookup(alias)) if self._config else {}
        port = port or int(config.get("port", SSH_PORT))
        user = user or config.get("user") or getpass.getuser()
        timeout = self.options.connect_timeout
        if timeout is None:
            try:
                timeout = float(config.get("connecttimeout", DEFAULT_CONNECT_TIMEOUT))
            except ValueError:
                raise ConnectError(
                    f"{alias}: ConnectTimeout {config['connecttimeout']!r} in ssh_config is not "
                    "a number of seconds"
                ) from None
        return _Hop(alias, config.get("hostname", alias), port, user, config, timeout)

    def _host_key_rules(self, hop: _Hop) -> _HostKeyRules:
        """Which files, which strictness, hashed or not: --known-hosts and
        --accept-new-host-key first, then the host's ssh_config, then OpenSSH's defaults."""
        if self.options.known_hosts:
            user, system = [self.options.known_hosts], []
        else:
            user = self._paths(hop, "userknownhostsfile", USER_KNOWN_HOSTS)
            system = self._paths(hop, "globalknownhostsfile", GLOBAL_KNOWN_HOSTS)
        if self.options.accept_new_host_key:
            strict = "accept-new"
        else:
            value = hop.config.get("stricthostkeychecking", "ask").lower()
            if value not in STRICTNESS:
                raise ConnectError(f"{hop.label}: StrictHostKeyChecking {value!r} in ssh_config "
                                   "is not yes, ask, accept-new or no")
            strict = STRICTNESS[value]
        hashed = hop.config.get("hashknownhosts", "no").lower() in ("yes", "true")
        return _HostKeyRules(hop.key_name, hop.bare_key_name, [*user, *system],
                             user[0] if user else "", strict, hashed)

    def _paths(self, hop: _Hop, option: str, default: tuple[str, ...]) -> list[str]:
        """A known_hosts option's files (quoted, ~ and %-tokens expanded); "none" is none."""
        value = hop.config.get(option)
        if value is None:
            names = list(default)
        elif value.strip().lower() == "none":
            return []
        else:
            names = shlex.split(value)
        return [_expand(name, hop) for name in names]

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
        tunnels: list[paramiko.Channel] = []
        try:
            hops = [*self._jump_hops(), self.target]
            hop = hops[0]
            sock = self._first_socket(hop)
            for index, hop in enumerate(hops):
                client = self._login(hop, sock)
                if index + 1 < len(hops):
                    hop = hops[index + 1]  # a failure from here on is about reaching this one
                    sock = client.get_transport().open_channel(
                        "direct-tcpip", (hop.hostname, hop.port), ("", 0), timeout=hop.timeout,
                    )
                    tunnels.append(sock)
            self._ssh = client.get_transport()
            asked = time.monotonic()
            channel = self._ssh.open_session(timeout=hop.timeout)
            opening = time.monotonic() - asked
            # Before the command starts, while the channel has carried no data yet.
            self._receiver = GcmReceiver.attach(channel)
            asked = time.monotonic()
            channel.exec_command(self.remote_command())
            # Two requests and their answers: the quicker is the link's round trip (the exec
            # also waits for sshd to start the session, 1-10 ms on a busy machine).
            self.round_trip = min(opening, time.monotonic() - asked)
            self.send_window = getattr(channel, "out_window_size", 0)  # what the server granted
            for carrier in (*tunnels, channel):  # a jump host's tunnel carries it all, too
                widen_window(carrier, int(self.round_trip * LINK_BANDWIDTH))
        except Exception as exc:  # every failure becomes one line a user can act on
            self._teardown()
            if isinstance(exc, ConnectError):
                raise
            raise ConnectError(self._explain(exc, hop)) from None
        self._channel = channel
        self._sender = GcmSender.attach(channel)
        self._drain_stderr(self._read_stderr)

    def remote_command(self) -> str:
        """The command the channel runs: the worker's bootstrap (a benchmark runs `cat`)."""
        return bootstrap.remote_command(self.python, self.options.sudo)

    def _first_socket(self, hop: _Hop):
        """A ProxyCommand's pipes, or our own TCP socket with TCP_NODELAY and keepalives."""
        command = hop.config.get("proxycommand")
        if command:
            return paramiko.ProxyCommand(command)
        sock = socket.create_connection((hop.hostname, hop.port), hop.timeout)
        # paramiko never sets TCP_NODELAY; without it request/answer exchanges stall 40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Keepalives turn a host that vanished (no RST) into an error instead of a hang.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
            with suppress(AttributeError, OSError):  # Linux names; other systems keep defaults
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
        return sock

    def _login(self, hop: _Hop, sock) -> paramiko.SSHClient:
        """Log in to one hop over `sock`: its host key is checked first, then keys only."""
        client = paramiko.SSHClient()
        self._clients.append(client)  # closed by _teardown, whatever happens below
        try:
            policy, prefer = self._host_key_check(hop)
            client.set_missing_host_key_policy(policy)
            self._strategy = self._keys_for(hop)
            timeout = hop.timeout
            # The whole handshake gets longer than its banner step: when both time out together,
            # paramiko hides the banner error behind "No existing session".
            client.connect(
                hop.hostname, hop.port, username=hop.user, sock=sock, compress=False,
                timeout=2 * timeout, banner_timeout=timeout, auth_timeout=timeout,
                channel_timeout=timeout,
                transport_factory=functools.partial(_tuned_transport, prefer=prefer),
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

    def _host_key_check(self, hop: _Hop) -> tuple[_HostKeyCheck, tuple[str, ...]]:
        """The hook that decides about the hop's host key, and the key types to ask for first.

        paramiko gets no host keys (its parser fails on lines it does not know), so every key
        goes to the hook, which reads known_hosts itself.
        """
        rules = self._host_key_rules(hop)
        entries = known_hosts.read(rules.files)
        prefer = known_hosts.known_types(entries, rules.name)
        if not prefer and rules.bare_name:
            prefer = known_hosts.known_types(entries, rules.bare_name)
        return _HostKeyCheck(rules, entries, hop.label, self._warn), tuple(prefer)

    def _keys_for(self, hop: _Hop) -> _KeysOnly:
        """-i keys and ssh_config's IdentityFile, or ~/.ssh/id_* when neither names one (as
        OpenSSH does), with the agent's keys; IdentitiesOnly keeps only the named ones."""
        files = [*self.options.identity_files, *hop.config.get("identityfile", [])]
        if not files:
            files = [os.path.join("~/.ssh", name) for name in DEFAULT_KEYS]
        files = list(dict.fromkeys(os.path.expanduser(path) for path in files))
        only = hop.config.get("identitiesonly", "no").lower() in ("yes", "true")
        if self._agent is None and os.environ.get("SSH_AUTH_SOCK"):
            self._agent = paramiko.Agent()
        return _KeysOnly(hop.user, files, self._agent, only)

    def _warn(self, text: str) -> None:
        """A key accepted without the usual checks: kept for the engine's warnings, which the
        CLI prints, the app shows and the report lists."""
        self.warnings.append(text)

    def _explain(self, exc: Exception, hop: _Hop) -> str:
        """The one line a user reads when connecting failed."""
        where, address = hop.label, f"{hop.hostname} port {hop.port}"
        if isinstance(exc, socket.gaierror):
            return f"{where}: cannot resolve host name {hop.hostname!r} ({exc.strerror})"
        if isinstance(exc, ConnectionRefusedError):
            return f"{where}: connection refused by {address}: is sshd running there, on that port?"
        if isinstance(exc, (TimeoutError, socket.timeout)):
            return f"{where}: no answer from {address} within {hop.timeout:g} s"
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
            if self._sender is not None:
                self._sender.sendall(data)
            else:
                self._channel.sendall(memoryview(data))  # a view: sendall's slicing copies no rest
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


_WINDOW_API = ("lock", "in_window_size", "in_window_threshold", "closed", "remote_chanid", "transport")
"""The channel internals `widen_window` uses: checked, never assumed (as ssh_send.py does)."""


def widen_window(channel: paramiko.Channel, size: int) -> bool:
    """Grant the server a receive window of `size` bytes (at most MAX_RECEIVE_WINDOW) on this
    channel, if that is at least twice the window it has: a long link's. SSH lets a receiver
    widen its window at any time, by adjusting it for more than was consumed. Not on a short
    link: there a wide window made sshd send smaller packets (a pull over loopback took 1.25x
    the time, with 1.5x the remote CPU)."""
    size = min(size, MAX_RECEIVE_WINDOW)
    if not all(hasattr(channel, name) for name in _WINDOW_API):
        return False  # another paramiko: its own window, and a slower long link
    with channel.lock:
        extra = size - channel.in_window_size
        if size < 2 * channel.in_window_size or channel.closed:
            return False
        channel.in_window_size = size  # first: data the server sends under it is ours to take
        channel.in_window_threshold = size // 10
    adjust = Message()
    adjust.add_byte(cMSG_CHANNEL_WINDOW_ADJUST)
    adjust.add_int(channel.remote_chanid)
    adjust.add_int(extra)
    channel.transport._send_user_message(adjust)
    return True


def _expand(path: str, hop: _Hop) -> str:
    """~ and the %-tokens OpenSSH expands in known_hosts paths (%d %u %h %p %r %n %k %i %l)."""
    tokens = {
        "%": "%", "d": os.path.expanduser("~"), "u": getpass.getuser(), "h": hop.hostname,
        "p": str(hop.port), "r": hop.user, "n": hop.alias,
        "k": hop.config.get("hostkeyalias") or hop.alias,
        "i": str(os.getuid()), "l": socket.gethostname().split(".")[0],
    }
    expanded = re.sub(r"%(.)", lambda m: tokens.get(m.group(1), m.group(0)), path)
    return os.path.expanduser(expanded)
