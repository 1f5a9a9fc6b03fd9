"""SSH endpoints against a real OpenSSH sshd on 127.0.0.1 (see sshd.py): sync, errors, breakage."""

from __future__ import annotations

import contextlib
import dataclasses
import filecmp
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import paramiko
import pytest
from helpers import expected_states
from sshd import SshServer

from blocksync_tui.cli import main
from blocksync_tui.demo import RandomStream
from blocksync_tui.engine import known_hosts
from blocksync_tui.engine import ssh as ssh_module
from blocksync_tui.engine.chunkmap import State
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import (
    ConnectError,
    ConnectionLost,
    EndpointError,
    UnknownHostKey,
    UsageError,
)
from blocksync_tui.engine.options import SshOptions
from blocksync_tui.engine.parallel import engine_for
from blocksync_tui.engine.process import EngineProcess
from blocksync_tui.engine.report import Report
from blocksync_tui.engine.sync import SyncEngine, SyncOptions
from blocksync_tui.engine.transports import transport_factory

pytestmark = pytest.mark.ssh

REPO = Path(__file__).resolve().parent.parent
CHUNK = 64 * 1024
SIZE = 40 * CHUNK + 12345
"""Not a multiple of the chunk size (nor of the 4 KiB sub-block)."""


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sshd: SshServer):
    """Never read the real ~/.ssh, /etc/ssh or agent; after each test, nothing may run on the
    'remote'."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setattr(ssh_module, "GLOBAL_KNOWN_HOSTS", (), raising=False)
    yield
    assert sshd.wait_sessions_gone(timeout=10) == [], "a remote worker outlived its connection"


def make_pair(directory: Path, size: int = SIZE, seed: int = 1) -> tuple[Path, Path]:
    """A random source and a destination with scattered changes, a zero run and a changed tail."""
    data = bytearray(RandomStream(seed, 1 << 20).read(size))
    data[5 * CHUNK : 8 * CHUNK] = bytes(3 * CHUNK)
    src = directory / "src.img"
    src.write_bytes(data)
    for offset in (0, 3 * CHUNK + 100, 6 * CHUNK, 17 * CHUNK + 4095, size - 7):
        data[offset : offset + 5] = b"XXXXX"
    dst = directory / "dst.img"
    dst.write_bytes(data)
    return src, dst


def settle() -> None:
    """Wait for the reader threads of finished runs to end before the next run starts.

    Works around a race in LocalTransport: close() closes the stdout fd that the connection's
    reader thread may be about to read again by number; a new worker's pipe can get that number
    and the old thread then steals its banner (the next run hangs in the handshake).
    """
    for thread in threading.enumerate():
        if thread.name.startswith(("reader-", "stderr-")):
            thread.join(5)


def sync(src: str, dst: str, options: SshOptions, **sync_options: object) -> Report:
    """One run; by digests unless `direct=True`: the sshd is on this machine, where the engine
    would otherwise compare on the host and send nothing over SSH."""
    sync_options.setdefault("direct", False)
    engine = SyncEngine(
        Endpoint.parse(src), Endpoint.parse(dst),
        SyncOptions(chunk_size=CHUNK, **sync_options), transport_factory(options),  # type: ignore[arg-type]
    )
    try:
        engine.prepare()
        return engine.run()
    finally:
        settle()


# -- moving data


def test_push_local_to_remote(sshd: SshServer, tmp_path: Path) -> None:
    src, dst = make_pair(tmp_path)
    report = sync(str(src), sshd.endpoint(dst), sshd.ssh_options(), verify=True)
    assert report.outcome == "synced" and report.verified and not report.errors
    assert report.method == "digests" and report.wire_bytes > report.bytes_sent > 0
    assert dst.read_bytes() == src.read_bytes()


def test_pull_remote_to_local(sshd: SshServer, tmp_path: Path) -> None:
    src, dst = make_pair(tmp_path, seed=2)
    report = sync(sshd.endpoint(src), str(dst), sshd.ssh_options())
    assert report.outcome == "synced"
    assert dst.read_bytes() == src.read_bytes()


def test_pull_into_a_new_file(sshd: SshServer, tmp_path: Path) -> None:
    src, _ = make_pair(tmp_path, seed=3)
    new = tmp_path / "new.img"
    report = sync(sshd.endpoint(src), str(new), sshd.ssh_options())
    assert report.method == "stream" and new.read_bytes() == src.read_bytes()


def test_push_into_a_new_file_streams_and_stays_sparse(sshd: SshServer, tmp_path: Path) -> None:
    """A first copy over SSH: the remote file is created, the source read once, its zero run
    left a hole there; verify reads every written chunk back."""
    src, _ = make_pair(tmp_path, seed=4)
    new = tmp_path / "remote" / "new.img"
    new.parent.mkdir()
    report = sync(str(src), sshd.endpoint(new), sshd.ssh_options(), verify=True)
    assert report.method == "stream" and report.verified and report.outcome == "synced"
    assert new.read_bytes() == src.read_bytes()
    assert report.chunks["zero"] == 3  # the zero run of make_pair: never sent, never written
    assert report.bytes_sent < src.stat().st_size - 3 * CHUNK + 4096
    assert new.stat().st_blocks * 512 <= src.stat().st_size - 3 * CHUNK + 64 * 1024


@pytest.mark.parametrize("direct", [False, True])
def test_remote_to_remote_on_one_host(sshd: SshServer, tmp_path: Path, direct: bool) -> None:
    """Both ends on one remote host: by digests through this machine, or compared there."""
    src, dst = make_pair(tmp_path, seed=4)
    report = sync(sshd.endpoint(src), sshd.endpoint(dst), sshd.ssh_options(), direct=direct, verify=True)
    assert report.outcome == "synced" and report.chunks_differing > 0 and report.verified
    assert report.method == ("direct" if direct else "digests")
    if direct:  # only requests, digests for --verify and the digest cache, and states crossed
        # SSH, no chunk data; the cache's sub-block digests are 8 bytes per 4 KiB
        assert report.wire_bytes - report.size // 512 < report.bytes_sent / 4
    assert dst.read_bytes() == src.read_bytes()


def test_direct_compare_needs_the_very_same_source(sshd: SshServer, tmp_path: Path) -> None:
    """A path that names another file on the destination's side (another mount namespace,
    another user's view) must not be read as the source: identities are compared."""
    src, dst = make_pair(tmp_path, seed=6)
    engine = SyncEngine(
        Endpoint.parse(str(src)), Endpoint.parse(sshd.endpoint(dst)),
        SyncOptions(chunk_size=CHUNK), transport_factory(sshd.ssh_options()),
    )
    engine.prepare()
    seen = engine._opened["source"]  # as if the source's worker saw another file
    engine._opened["source"] = dataclasses.replace(seen, identity=(0, 0, 0))
    try:
        report = engine.run()
    finally:
        settle()
    assert report.method == "digests" and dst.read_bytes() == src.read_bytes()


def test_the_same_remote_file_twice_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    src, _ = make_pair(tmp_path)
    with pytest.raises(UsageError, match="same file"):
        sync(sshd.endpoint(src), sshd.endpoint(src), sshd.ssh_options())


def test_the_same_file_by_path_and_over_ssh_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    """ssh to this very machine reaches the same file: the workers' boot ids tell."""
    src, _ = make_pair(tmp_path)
    before = src.read_bytes()
    with pytest.raises(UsageError, match="same file"):
        sync(str(src), sshd.endpoint(src), sshd.ssh_options())
    assert src.read_bytes() == before


def test_cli_compare_then_sync_over_ssh(sshd: SshServer, tmp_path: Path, capsys) -> None:
    src, dst = make_pair(tmp_path, seed=5)
    expected = expected_states(src.read_bytes(), dst.read_bytes(), CHUNK)
    report_path = tmp_path / "report.json"
    args = [*sshd.cli_args(), "-q", "--no-direct", "--chunk-size", "64K", sshd.endpoint(src), sshd.endpoint(dst)]
    before = dst.read_bytes()
    assert main(["compare", "--json", str(report_path), *args]) == 1
    settle()
    assert dst.read_bytes() == before  # a dry run writes nothing
    chunks = json.loads(report_path.read_text())["chunks"]
    for state in ("differs", "same", "zero"):
        assert chunks.get(state, 0) == expected.count(state), state
    assert main(["sync", *args]) == 0
    settle()
    assert dst.read_bytes() == src.read_bytes()
    assert main(["compare", *args]) == 0
    assert "Traceback" not in capsys.readouterr().err


# -- where the host is: ssh_config, ports, jumps


def write_config(sshd: SshServer, tmp_path: Path, body: str) -> SshOptions:
    config = tmp_path / "ssh_config"
    config.write_text(body)
    return sshd.ssh_options(config_file=str(config), identity_files=[])


def test_host_user_port_and_key_from_ssh_config(sshd: SshServer, tmp_path: Path) -> None:
    options = write_config(
        sshd, tmp_path,
        f"Host blocktest\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.key}\n",
    )
    src, dst = make_pair(tmp_path, seed=6)
    sync(str(src), f"blocktest:{dst}", options)
    assert dst.read_bytes() == src.read_bytes()
    # The endpoint's own port wins over the config's.
    with pytest.raises(ConnectError, match="connection refused"):
        sync(str(src), f"blocktest:1:{dst}", options)


def test_proxy_jump_through_a_direct_tcpip_channel(sshd: SshServer, tmp_path: Path) -> None:
    options = write_config(
        sshd, tmp_path,
        f"Host target\n  HostName {sshd.host}\n  Port {sshd.port}\n"
        f"  ProxyJump {sshd.user}@{sshd.host}:{sshd.port}\n"
        f"Host *\n  IdentityFile {sshd.key}\n",
    )
    src, dst = make_pair(tmp_path, seed=7)
    sync(str(src), f"target:{dst}", options)
    assert dst.read_bytes() == src.read_bytes()


@contextlib.contextmanager
def delayed(sshd: SshServer, tmp_path: Path, delay_ms: int) -> Iterator[tuple[int, SshOptions]]:
    """The sshd behind bench/delay_proxy.py (`delay_ms` each way): its port, and options with a
    known_hosts that lists the host key there."""
    proxy = subprocess.Popen(
        [sys.executable, str(Path(__file__).parents[1] / "bench" / "delay_proxy.py"),
         "--target", f"{sshd.host}:{sshd.port}", "--delay-ms", str(delay_ms)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        port = int(proxy.stdout.readline().rsplit(":", 1)[1])  # "listening on HOST:PORT"
        known = tmp_path / "known_hosts.delayed"
        known.write_text(sshd.known_hosts_line().replace(f":{sshd.port} ", f":{port} ") + "\n")
        yield port, sshd.ssh_options(known_hosts=str(known))
    finally:
        proxy.kill()
        proxy.wait()


def test_the_link_round_trip_is_measured_and_widens_the_receive_window(sshd: SshServer, tmp_path: Path) -> None:
    """The transport measures the link's round trip on the exec request: the windows of
    differing chunks are sized from it (pipeline.py), and so is the channel's receive window,
    which paramiko's 2 MiB would leave at one window per round trip. Over loopback it stays."""
    with delayed(sshd, tmp_path, 40) as (port, options):
        transport = ssh_module.SshTransport(Endpoint.parse(f"{sshd.user}@{sshd.host}:{port}:/x"), options)
        transport.start()
        try:
            assert 0.08 <= transport.round_trip < 2.0
            window = transport._channel.in_window_size
            assert window == min(int(transport.round_trip * ssh_module.LINK_BANDWIDTH), ssh_module.MAX_RECEIVE_WINDOW)
        finally:
            transport.close()
    transport = ssh_module.SshTransport(Endpoint.parse(sshd.endpoint("/x")), sshd.ssh_options())
    transport.start()
    try:
        assert transport._channel.in_window_size == 2 << 20  # paramiko's own
    finally:
        transport.close()
    assert not ssh_module.widen_window(object(), 16 << 20)  # internals missing: left as it is


def test_a_first_copy_over_a_long_link_notes_that_lanes_would_help(sshd: SshServer, tmp_path: Path) -> None:
    """sshd lets one connection have 2 MiB in flight a round trip: a large first copy over a
    long link says so before it starts, and what helps. Not over loopback, nor in lanes."""
    src = tmp_path / "src.img"
    with open(src, "wb") as f:  # 2 GiB, nearly all holes: the copy itself is quick
        f.write(random.Random(2).randbytes(1 << 20))
        f.truncate(2 << 30)

    def prepared(endpoint: str, options: SshOptions, **more: object) -> tuple[list[str], int]:
        dst = tmp_path / f"dst-{len(list(tmp_path.iterdir()))}.img"
        more.setdefault("streams", 1)
        engine = SyncEngine(Endpoint.parse(str(src)), Endpoint.parse(endpoint.format(dst)),
                            SyncOptions(direct=False, **more), transport_factory(options))  # type: ignore[arg-type]
        try:
            engine.prepare()
            return engine.notes, engine.lanes_wanted
        finally:
            engine.close()

    with delayed(sshd, tmp_path, 20) as (port, options):
        far = f"{sshd.user}@{sshd.host}:{port}:{{}}"
        said, lanes = prepared(far, options)
        assert len(said) == 1 and "a round trip per connection" in said[0] and "--streams 4" in said[0]
        assert "2.0 MiB a round trip" in said[0] and lanes == 1
        assert prepared(far, options, streams=None) == ([], 4)  # auto: the lanes, not a note
        assert prepared(far, options, lane=(0, 2), streams=None) == ([], 1)
    assert prepared(sshd.endpoint("{}"), sshd.ssh_options(), streams=None) == ([], 1)


@pytest.mark.parametrize("own_process", [False, True], ids=["here", "engine process"])
def test_auto_lanes_take_four_for_a_first_copy_over_a_long_link(sshd: SshServer, tmp_path: Path, own_process: bool) -> None:
    """--streams auto cannot know the link before it connects: its one lane's prepare finds a
    first copy that one connection's window would hold back, and the run is prepared afresh
    in four lanes, which copy it whole. Over loopback it stays one lane."""
    src = tmp_path / "src.img"
    with open(src, "wb") as f:  # 2 GiB, nearly all holes: the copy itself is quick
        f.write(random.Random(3).randbytes(3 << 20 | 777))
        f.truncate(2 << 30)
    options = SyncOptions(direct=False, streams=None)
    with delayed(sshd, tmp_path, 20) as (port, ssh):
        dst = tmp_path / "far.img"
        engine = engine_for(Endpoint.parse(str(src)), Endpoint.parse(f"{sshd.user}@{sshd.host}:{port}:{dst}"),
                            options, ssh, own_process=own_process)
        try:
            engine.prepare()
            assert engine.streams == 4
            assert any("4 lanes, each with its own connection" in note for note in engine.notes)
            report = engine.run()
        finally:
            engine.close()
        assert report.outcome == "synced" and report.streams == 4 and filecmp.cmp(src, dst, shallow=False)
    near = tmp_path / "near.img"
    engine = engine_for(Endpoint.parse(str(src)), Endpoint.parse(sshd.endpoint(near)), options, sshd.ssh_options(),
                        own_process=own_process)
    try:
        engine.prepare()
        assert engine.streams == 1 and engine.notes == []
    finally:
        engine.close()


def test_a_jump_hosts_tunnel_is_widened_too(sshd: SshServer, tmp_path: Path) -> None:
    """Through a jump host, the target's whole connection rides one direct-tcpip channel of the
    jump's: its window bounds the pull as much as the session's."""
    with delayed(sshd, tmp_path, 40) as (port, options):
        config = tmp_path / "ssh_config"
        config.write_text(
            f"Host target\n  HostName {sshd.host}\n  Port {sshd.port}\n"
            f"  ProxyJump {sshd.user}@{sshd.host}:{port}\n"
            f"Host *\n  IdentityFile {sshd.key}\n"
        )
        known = tmp_path / "known_hosts.both"
        known.write_text(Path(options.known_hosts).read_text() + sshd.known_hosts_line() + "\n")
        transport = ssh_module.SshTransport(
            Endpoint.parse("target:/x"), replace(options, config_file=str(config), known_hosts=str(known)),
        )
        transport.start()
        try:
            tunnel = transport._ssh.sock
            assert isinstance(tunnel, paramiko.Channel) and tunnel.in_window_size > 8 << 20
            assert transport._channel.in_window_size > 8 << 20
        finally:
            transport.close()


def test_a_pull_through_a_long_link_uses_the_wider_window(sshd: SshServer, tmp_path: Path) -> None:
    """The server sends up to the wider window at once, and the receiver (which refuses data
    beyond the window) takes it: the pulled copy is whole."""
    src = tmp_path / "src.img"
    src.write_bytes(random.Random(9).randbytes(24 << 20 | 12345))
    dst = tmp_path / "dst.img"
    with delayed(sshd, tmp_path, 20) as (port, options):
        report = sync(f"{sshd.user}@{sshd.host}:{port}:{src}", str(dst), options)
    assert report.method == "stream" and dst.read_bytes() == src.read_bytes()


def test_match_exec_still_runs_though_invoke_loads_only_then(tmp_path: Path) -> None:
    """paramiko runs ssh_config's `Match exec` through invoke, which we load only when one runs
    (engine/deferred_invoke.py): importing the SSH transport must not load it, a Match exec must."""
    config = tmp_path / "ssh_config"
    config.write_text('Match exec "test -d /"\n  HostName 127.0.0.9\nMatch exec "false"\n  Port 2222\n')
    script = f"""
import sys
from blocksync_tui.engine.ssh import SshTransport
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.options import SshOptions
before = 'invoke.tasks' in sys.modules
transport = SshTransport(Endpoint.parse('somehost:/x'), SshOptions(config_file={str(config)!r}))
print(before, 'invoke.tasks' in sys.modules, transport.target.hostname, transport.target.port)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "127.0.0.9", "22"]


@pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed")
def test_proxy_command(sshd: SshServer, tmp_path: Path) -> None:
    ssh = " ".join(sshd.openssh_argv()[:-1])  # everything but user@host
    options = write_config(
        sshd, tmp_path,
        f"Host viaproxy\n  HostName {sshd.host}\n  Port {sshd.port}\n  IdentityFile {sshd.key}\n"
        f"  ProxyCommand {ssh} -W %h:%p {sshd.user}@{sshd.host}\n",
    )
    src, dst = make_pair(tmp_path, seed=8)
    sync(sshd.endpoint(src).replace(f"{sshd.host}:{sshd.port}", "viaproxy"), str(dst), options)
    assert dst.read_bytes() == src.read_bytes()


# -- refusals: each a one-line ConnectError that says what to do


def connect_error(sshd: SshServer, tmp_path: Path, options: SshOptions) -> str:
    src = tmp_path / "src.img"
    src.write_bytes(b"x" * 5000)
    with pytest.raises(ConnectError) as info:
        sync(str(src), sshd.endpoint(tmp_path / "dst.img"), options)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert not (tmp_path / "dst.img").exists()
    return message


def test_refused_key(sshd: SshServer, tmp_path: Path) -> None:
    message = connect_error(sshd, tmp_path, sshd.ssh_options(identity_files=[str(sshd.other_key)]))
    assert f"{sshd.user}@{sshd.host}:{sshd.port}: authentication refused" in message
    assert f"tried keys: {sshd.other_key}" in message


def test_missing_identity_file(sshd: SshServer, tmp_path: Path) -> None:
    message = connect_error(sshd, tmp_path, sshd.ssh_options(identity_files=["/nonexistent/key"]))
    assert "identity file /nonexistent/key does not exist" in message


def test_unknown_host_key_is_refused_then_accepted_on_request(sshd: SshServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    message = connect_error(sshd, tmp_path, sshd.ssh_options(known_hosts=str(known)))
    assert f"host key for [{sshd.host}]:{sshd.port}" in message
    assert "is not in" in message and "--accept-new-host-key" in message and "SHA256:" in message
    assert known.read_text() == ""

    src, dst = make_pair(tmp_path)
    sync(str(src), sshd.endpoint(dst), sshd.ssh_options(known_hosts=str(known), accept_new_host_key=True))
    assert dst.read_bytes() == src.read_bytes()
    assert known.read_text() == sshd.known_hosts_line() + "\n"
    # Remembered: the next run needs no flag.
    sync(str(src), sshd.endpoint(dst), sshd.ssh_options(known_hosts=str(known)))


def test_accept_new_host_key_creates_the_default_known_hosts(sshd: SshServer, tmp_path: Path) -> None:
    src, dst = make_pair(tmp_path)
    sync(str(src), sshd.endpoint(dst), sshd.ssh_options(known_hosts=None, accept_new_host_key=True))
    saved = Path(os.environ["HOME"]) / ".ssh" / "known_hosts"
    assert saved.read_text() == sshd.known_hosts_line() + "\n"
    assert saved.stat().st_mode & 0o077 == 0


def test_changed_host_key_is_refused_even_with_accept_new(sshd: SshServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line(key_file=sshd.other_key) + "\n")  # an impostor's key
    before = known.read_text()
    for accept in (False, True):
        options = sshd.ssh_options(known_hosts=str(known), accept_new_host_key=accept)
        message = connect_error(sshd, tmp_path, options)
        assert "has CHANGED" in message and "ssh-keygen -R" in message and "SHA256:" in message
    assert known.read_text() == before


# -- host keys: known_hosts and ssh_config, as OpenSSH reads and writes them


def open_ssh(sshd: SshServer, options: SshOptions, host: str | None = None) -> ssh_module.SshTransport:
    """Connect and log in, start the worker's interpreter and close again (it exits on EOF)."""
    where = host or f"{sshd.user}@{sshd.host}:{sshd.port}"
    transport = ssh_module.SshTransport(Endpoint.parse(f"{where}:/unused"), options)
    transport.start()
    transport.close()
    return transport


def refusal(sshd: SshServer, options: SshOptions, host: str | None = None) -> ConnectError:
    """The one-line ConnectError that connecting ends with."""
    with pytest.raises(ConnectError) as info:
        open_ssh(sshd, options, host)
    assert "\n" not in str(info.value)
    return info.value


def host_config(sshd: SshServer, tmp_path: Path, body: str) -> SshOptions:
    """Options that leave host keys to an ssh_config (`body`, before a `Host *` with our key)."""
    config = tmp_path / "ssh_config"
    config.write_text(f"{body}Host *\n  IdentityFile {sshd.key}\n")
    return sshd.ssh_options(config_file=str(config), known_hosts=None, identity_files=[])


def host_line(sshd: SshServer, name: str, key_file: Path | None = None) -> str:
    """A known_hosts line for the server's key (or `key_file`'s) under any name."""
    return f"{name} {sshd.known_hosts_line(key_file).split(' ', 1)[1]}"


def ssh_keygen_fingerprint(public_key: Path) -> str:
    listed = subprocess.run(["ssh-keygen", "-lf", str(public_key)], capture_output=True, text=True, check=True)
    return listed.stdout.split()[1]


def openssh_accepts(sshd: SshServer, known: Path, *options: str) -> bool:
    """Whether OpenSSH's own client, with StrictHostKeyChecking=yes, trusts the host by `known`."""
    result = subprocess.run(sshd.openssh_argv("true", known_hosts=known, options=options),
                            capture_output=True, timeout=30)
    return result.returncode == 0


needs_openssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed")


def test_user_known_hosts_file_from_ssh_config(sshd: SshServer, tmp_path: Path) -> None:
    open_ssh(sshd, host_config(sshd, tmp_path, f"UserKnownHostsFile {sshd.known_hosts}\n"))
    # Several files, quoted, the key in the second; --known-hosts wins over them all.
    empty = tmp_path / "empty known_hosts"
    empty.write_text("")
    options = host_config(sshd, tmp_path, f'UserKnownHostsFile "{empty}" {sshd.known_hosts}\n')
    open_ssh(sshd, options)
    assert isinstance(refusal(sshd, replace(options, known_hosts=str(empty))), UnknownHostKey)


def test_global_known_hosts_file_from_ssh_config_and_by_default(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    open_ssh(sshd, host_config(
        sshd, tmp_path, f"UserKnownHostsFile {empty}\nGlobalKnownHostsFile {sshd.known_hosts}\n"
    ))
    # By default the system's files are read (here a stand-in for /etc/ssh/ssh_known_hosts)...
    options = host_config(sshd, tmp_path, "")
    assert isinstance(refusal(sshd, options), UnknownHostKey)
    monkeypatch.setattr(ssh_module, "GLOBAL_KNOWN_HOSTS", (str(sshd.known_hosts),))
    open_ssh(sshd, options)
    # ...but not with --known-hosts: that file alone decides.
    assert isinstance(refusal(sshd, replace(options, known_hosts=str(empty))), UnknownHostKey)


def test_strict_host_key_checking_yes(sshd: SshServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    options = host_config(sshd, tmp_path, f"UserKnownHostsFile {known}\nStrictHostKeyChecking yes\n")
    error = refusal(sshd, options)
    assert isinstance(error, UnknownHostKey) and error.strict == "yes"
    assert "StrictHostKeyChecking is yes" in str(error) and known.read_text() == ""
    # --accept-new-host-key wins over the config.
    open_ssh(sshd, replace(options, accept_new_host_key=True))
    assert known.read_text() == sshd.known_hosts_line() + "\n"


def test_strict_host_key_checking_accept_new(sshd: SshServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    options = host_config(sshd, tmp_path, f"UserKnownHostsFile {known}\nStrictHostKeyChecking accept-new\n")
    open_ssh(sshd, options)
    open_ssh(sshd, options)
    assert known.read_text() == sshd.known_hosts_line() + "\n"
    known.write_text(sshd.known_hosts_line(key_file=sshd.other_key) + "\n")
    message = str(refusal(sshd, options))
    assert "has CHANGED" in message and f"{known}:1 has ssh-ed25519" in message
    assert known.read_text() == sshd.known_hosts_line(key_file=sshd.other_key) + "\n"


def test_strict_host_key_checking_no_warns_and_still_refuses_a_changed_key(
    sshd: SshServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    known = tmp_path / "known_hosts"
    options = host_config(sshd, tmp_path, f"UserKnownHostsFile {known}\nStrictHostKeyChecking no\n")
    transport = open_ssh(sshd, options)
    fingerprint = ssh_keygen_fingerprint(sshd.host_key.with_suffix(".pub"))
    [warning] = transport.warnings
    assert "NOT verified (StrictHostKeyChecking no)" in warning and fingerprint in warning
    assert "\n" not in warning
    assert known.read_text() == sshd.known_hosts_line() + "\n"  # remembered, as OpenSSH does
    # Safer than OpenSSH here: a changed key is refused even so.
    known.write_text(sshd.known_hosts_line(key_file=sshd.other_key) + "\n")
    assert "has CHANGED" in str(refusal(sshd, options))
    # UserKnownHostsFile /dev/null: accepted with the warning, nothing written anywhere.
    again = open_ssh(sshd, host_config(sshd, tmp_path, "UserKnownHostsFile /dev/null\nStrictHostKeyChecking no\n"))
    assert "NOT verified" in again.warnings[0]


def test_an_unverified_host_key_is_in_the_runs_warnings(sshd: SshServer, tmp_path: Path) -> None:
    """StrictHostKeyChecking no: the report and the app see the warning, not only a terminal."""
    src, dst = make_pair(tmp_path)
    options = host_config(sshd, tmp_path, f"UserKnownHostsFile {tmp_path / 'kh'}\nStrictHostKeyChecking no\n")
    report = sync(str(src), sshd.endpoint(dst), options, dry_run=True)
    assert any("NOT verified (StrictHostKeyChecking no)" in w for w in report.warnings)


@needs_openssh
def test_host_key_alias_is_written_and_looked_up_as_openssh_does(sshd: SshServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    options = host_config(
        sshd, tmp_path,
        f"Host aliased\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  HostKeyAlias MyServer\n  UserKnownHostsFile {known}\n",
    )
    open_ssh(sshd, replace(options, accept_new_host_key=True), host="aliased")
    assert known.read_text() == host_line(sshd, "myserver") + "\n"  # no port with an alias
    assert openssh_accepts(sshd, known, "HostKeyAlias=MyServer")
    open_ssh(sshd, options, host="aliased")
    # The alias's line is the one that counts, not the host's own.
    known.write_text(sshd.known_hosts_line() + "\n")
    error = refusal(sshd, options, host="aliased")
    assert isinstance(error, UnknownHostKey) and error.host == "myserver"


@needs_openssh
def test_a_new_key_on_another_port_is_saved_as_host_and_port(sshd: SshServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    open_ssh(sshd, sshd.ssh_options(known_hosts=str(known), accept_new_host_key=True))
    assert known.read_text() == f"[{sshd.host}]:{sshd.port} " + host_line(sshd, "").lstrip() + "\n"
    assert openssh_accepts(sshd, known)


@needs_openssh
def test_hash_known_hosts(sshd: SshServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    options = host_config(
        sshd, tmp_path,
        f"UserKnownHostsFile {known}\nStrictHostKeyChecking accept-new\nHashKnownHosts yes\n",
    )
    open_ssh(sshd, options)
    text = known.read_text()
    assert text.startswith("|1|") and sshd.host not in text and text.count("\n") == 1
    assert openssh_accepts(sshd, known)
    open_ssh(sshd, replace(options, accept_new_host_key=False))  # found again, not added again
    assert known.read_text() == text


def test_the_key_type_known_hosts_lists_is_asked_for_first(tmp_path: Path) -> None:
    """A server with an ed25519 and an RSA key, known by its RSA key only: it must show that one
    (as OpenSSH orders HostKeyAlgorithms), not be refused as CHANGED for its ed25519 key."""
    rsa = tmp_path / "host_rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)], check=True)
    with SshServer.running(tmp_path / "sshd", extra_config=f"HostKey {rsa}\n") as server:
        known = tmp_path / "known_hosts"
        known.write_text(server.known_hosts_line(key_file=rsa) + "\n")
        open_ssh(server, server.ssh_options(known_hosts=str(known)))
        known.write_text(server.known_hosts_line() + "\n")
        open_ssh(server, server.ssh_options(known_hosts=str(known)))


def test_a_key_listed_under_the_bare_host_name_counts_for_its_port(sshd: SshServer, tmp_path: Path) -> None:
    """OpenSSH's "checking without port identifier", for hosts listed before they moved port."""
    known = tmp_path / "known_hosts"
    known.write_text(host_line(sshd, sshd.host) + "\n")
    open_ssh(sshd, sshd.ssh_options(known_hosts=str(known)))


@pytest.mark.parametrize("form", ["wildcard", "star", "list", "hashed", "hashed by ssh-keygen"])
def test_known_hosts_lines_paramiko_could_not_read(sshd: SshServer, tmp_path: Path, form: str) -> None:
    """@cert-authority lines made paramiko fail on every host ("Incorrect padding"); wildcard
    patterns never matched."""
    names = {
        "wildcard": f"[127.0.0.?]:{sshd.port}",
        "star": "*",
        "list": f"other.example,[{sshd.host}]:{sshd.port},!secret.example",
        "hashed": known_hosts.format_line(f"[{sshd.host}]:{sshd.port}", b"", hashed=True).split()[0],
        "hashed by ssh-keygen": f"[{sshd.host}]:{sshd.port}",
    }
    known = tmp_path / "known_hosts"
    known.write_text(
        "# made by hand\n"
        f"@cert-authority *.example.com {sshd.known_hosts_line(key_file=sshd.other_key).split(' ', 1)[1]}\n"
        f"{host_line(sshd, names[form])}\n"
    )
    if form == "hashed by ssh-keygen":
        subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True, capture_output=True)
    open_ssh(sshd, sshd.ssh_options(known_hosts=str(known)))


def test_a_negated_host_pattern_does_not_list_it(sshd: SshServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(host_line(sshd, f"*,![{sshd.host}]:{sshd.port},!{sshd.host}") + "\n")
    assert isinstance(refusal(sshd, sshd.ssh_options(known_hosts=str(known))), UnknownHostKey)


def test_a_revoked_host_key_is_refused_even_with_accept_new(sshd: SshServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line() + "\n" + host_line(sshd, "@revoked *") + "\n")
    before = known.read_text()
    for accept in (False, True):
        message = str(refusal(sshd, sshd.ssh_options(known_hosts=str(known), accept_new_host_key=accept)))
        assert f"the host key of [{sshd.host}]:{sshd.port} (ssh-ed25519 SHA256:" in message
        assert f"is marked @revoked in {known}:2" in message
    assert known.read_text() == before


def test_two_workers_meeting_a_new_host_at_once_save_its_key_once(sshd: SshServer, tmp_path: Path) -> None:
    """Both ends on one new host: both workers connect side by side and both accept its key."""
    known = tmp_path / "known_hosts"
    src, dst = make_pair(tmp_path, seed=9)
    options = sshd.ssh_options(known_hosts=str(known), accept_new_host_key=True)
    sync(sshd.endpoint(src), sshd.endpoint(dst), options)
    assert dst.read_bytes() == src.read_bytes()
    assert known.read_text() == sshd.known_hosts_line() + "\n"


def test_unknown_host_key_crosses_the_engine_process(sshd: SshServer, tmp_path: Path) -> None:
    """The app runs the engine in a child process: the error must arrive with all it carries."""
    known = tmp_path / "known_hosts"
    src, dst = make_pair(tmp_path)
    engine = EngineProcess(
        Endpoint.parse(str(src)), Endpoint.parse(sshd.endpoint(dst)),
        SyncOptions(chunk_size=CHUNK, dry_run=True), sshd.ssh_options(known_hosts=str(known)),
    )
    with pytest.raises(UnknownHostKey) as info:
        engine.prepare()
    error = info.value
    assert error.side == "destination" and error.strict == "ask" and not error.hashed
    assert error.host == f"[{sshd.host}]:{sshd.port}" and error.key_type == "ssh-ed25519"
    assert error.fingerprint == ssh_keygen_fingerprint(sshd.host_key.with_suffix(".pub"))
    assert error.known_hosts == str(known)
    assert f"{error.host} {error.key_type} {error.key}" == sshd.known_hosts_line()
    assert not known.exists()


# -- which keys log in: IdentityFile, IdentitiesOnly, the agent, as OpenSSH offers them


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """A private ssh-agent (SSH_AUTH_SOCK points to it); yields a function that loads a key."""
    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.skip("ssh-agent is not installed")
    directory = Path(tempfile.mkdtemp(prefix="agent-"))  # short: a socket path has 108 bytes
    sock = directory / "sock"
    process = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))

    def add(key: Path) -> None:
        subprocess.run(["ssh-add", "-q", str(key)], check=True, capture_output=True,
                       env={**os.environ, "SSH_AUTH_SOCK": str(sock)})

    try:
        yield add
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def test_identities_only_offers_the_agent_key_a_public_key_names(
    sshd: SshServer, tmp_path: Path, agent: Callable[[Path], None]
) -> None:
    agent(sshd.other_key)
    agent(sshd.key)
    chosen, stranger = tmp_path / "chosen.pub", tmp_path / "stranger.pub"
    shutil.copy(sshd.key.with_suffix(".pub"), chosen)
    shutil.copy(sshd.other_key.with_suffix(".pub"), stranger)
    # IdentityFile names a public key only: the agent signs with its copy of the private key.
    open_ssh(sshd, write_config(sshd, tmp_path, f"Host *\n  IdentitiesOnly yes\n  IdentityFile {chosen}\n"))
    # IdentitiesOnly: the agent's other keys are not offered.
    options = write_config(sshd, tmp_path, f"Host *\n  IdentitiesOnly yes\n  IdentityFile {stranger}\n")
    message = str(refusal(sshd, options))
    assert f"tried keys: agent key {ssh_keygen_fingerprint(stranger)})" in message
    # Without it they are.
    open_ssh(sshd, write_config(sshd, tmp_path, f"Host *\n  IdentityFile {stranger}\n"))


def test_default_keys_are_offered_only_when_no_key_is_named(sshd: SshServer, tmp_path: Path) -> None:
    home_ssh = Path(os.environ["HOME"]) / ".ssh"
    home_ssh.mkdir(parents=True)
    shutil.copy(sshd.key, home_ssh / "id_ed25519")
    (home_ssh / "id_ed25519").chmod(0o600)
    # Nothing named: ~/.ssh/id_* are offered, with IdentitiesOnly too (as OpenSSH does).
    open_ssh(sshd, write_config(sshd, tmp_path, "Host *\n  IdentitiesOnly yes\n"))
    # A named key replaces them.
    message = str(refusal(sshd, write_config(sshd, tmp_path, f"Host *\n  IdentityFile {sshd.other_key}\n")))
    assert f"(tried keys: {sshd.other_key})" in message


def test_connect_timeout_from_ssh_config(sshd: SshServer, tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections, never sends a banner
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        options = write_config(sshd, tmp_path, "Host *\n  ConnectTimeout 1\n")
        for given, most in ((options, 4.0), (replace(options, connect_timeout=0.2), 1.0)):
            started = time.monotonic()  # SshOptions.connect_timeout, when given, wins
            error = refusal(sshd, given, host=f"root@127.0.0.1:{port}")
            assert "does not answer like an SSH server" in str(error)
            assert time.monotonic() - started < most


def test_connection_refused_and_unknown_host(sshd: SshServer, tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    src.write_bytes(b"x" * 100)
    with pytest.raises(ConnectError, match=r"root@127\.0\.0\.1:1: connection refused by 127\.0\.0\.1 port 1"):
        sync(str(src), f"root@127.0.0.1:1:{tmp_path}/d", sshd.ssh_options())
    with pytest.raises(ConnectError, match="cannot resolve host name 'no-such-host.invalid'"):
        sync(str(src), f"no-such-host.invalid:{tmp_path}/d", sshd.ssh_options())


def test_a_port_that_never_speaks_ssh(sshd: SshServer, tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections, never sends a banner
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        src = tmp_path / "src.img"
        src.write_bytes(b"x" * 100)
        with pytest.raises(ConnectError) as info:
            sync(str(src), f"root@127.0.0.1:{port}:/d", sshd.ssh_options(connect_timeout=0.5))
        message = str(info.value)
    assert message == f"root@127.0.0.1:{port}: 127.0.0.1 port {port} does not answer like an SSH server"


def test_missing_remote_python(sshd: SshServer, tmp_path: Path, capsys) -> None:
    src, dst = make_pair(tmp_path)
    code = main(["sync", *sshd.cli_args(), "-q", "--remote-python", "/nonexistent/python3",
                 str(src), sshd.endpoint(dst)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{sshd.user}@{sshd.host}:{sshd.port}: /nonexistent/python3 not found" in err


def test_missing_remote_paths(sshd: SshServer, tmp_path: Path) -> None:
    src, dst = make_pair(tmp_path)
    with pytest.raises(EndpointError, match="no such file"):
        sync(sshd.endpoint(tmp_path / "absent.img"), str(dst), sshd.ssh_options())
    target = tmp_path / "no-such-dir" / "dst.img"
    with pytest.raises(EndpointError, match="no-such-dir"):
        sync(str(src), sshd.endpoint(target), sshd.ssh_options())
    assert not target.parent.exists()


@pytest.mark.skipif(shutil.which("sudo") is None, reason="sudo is not installed")
def test_sudo_as_root(sshd: SshServer, tmp_path: Path) -> None:
    if sshd.user != "root":
        pytest.skip("sudo -n needs a password for a non-root user")
    src, dst = make_pair(tmp_path)
    report = sync(str(src), sshd.endpoint(dst), sshd.ssh_options(sudo=True))
    assert report.outcome == "synced" and dst.read_bytes() == src.read_bytes()


def test_sudo_that_wants_a_password(sshd: SshServer, tmp_path: Path) -> None:
    # This key's sessions have a `sudo` first on PATH that answers like sudo -n without NOPASSWD.
    options = sshd.ssh_options(sudo=True, identity_files=[str(sshd.fake_sudo_key)])
    message = connect_error(sshd, tmp_path, options)
    assert f"sudo on {sshd.host} needs a password: allow NOPASSWD" in message


# -- breakage


def big_pair(directory: Path, size: int) -> tuple[Path, Path]:
    """Two unrelated random files: every chunk differs, so the sync writes all along.

    Larger than the engine's 32 MiB in flight, so that a paused run cannot finish.
    """
    src, dst = directory / "big-src.img", directory / "big-dst.img"
    src.write_bytes(RandomStream(11).read(size))
    dst.write_bytes(RandomStream(12).read(size))
    return src, dst


def test_connection_killed_mid_sync_then_rerun(
    sshd: SshServer, tmp_path: Path, kill_ssh_connections, capfd
) -> None:
    src, dst = big_pair(tmp_path, 48 * 1024 * 1024 + 777)
    engine = SyncEngine(
        Endpoint.parse(str(src)), Endpoint.parse(sshd.endpoint(dst)),
        SyncOptions(chunk_size=CHUNK, direct=False), transport_factory(sshd.ssh_options()),
    )
    engine.prepare()
    orphans: list[int] = []

    def cut_when_writing() -> None:
        deadline = time.monotonic() + 30
        while engine.chunk_map.count(State.WRITTEN) == 0 and time.monotonic() < deadline:
            time.sleep(0.002)
        engine.pause()  # so the run cannot finish before the cut
        orphans.extend(kill_ssh_connections())

    cutter = threading.Thread(target=cut_when_writing)
    cutter.start()
    with pytest.raises(ConnectionLost) as info:
        engine.run()
    cutter.join()
    settle()
    message = str(info.value)
    assert message.startswith(f"{sshd.user}@{sshd.host}:{sshd.port}: ")
    assert "connection" in message and "Traceback" not in message and "\n" not in message
    noise = capfd.readouterr().err  # paramiko's log and dying reader threads must stay quiet
    assert "Traceback" not in noise and "Socket exception" not in noise, noise
    assert orphans, "no remote worker was running when the connection was cut"
    assert sshd.wait_sessions_gone(orphans) == [], "the orphaned remote worker did not exit"

    report = sync(str(src), sshd.endpoint(dst), sshd.ssh_options())
    assert report.outcome == "synced"
    assert dst.read_bytes() == src.read_bytes()


def test_killed_client_leaves_no_remote_worker(sshd: SshServer, tmp_path: Path) -> None:
    src, dst = big_pair(tmp_path, 64 * 1024 * 1024)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    client = subprocess.Popen(
        [sys.executable, "-m", "blocksync_tui", "sync", *sshd.cli_args(), "-q", "--no-direct",
         "--chunk-size", "64K", str(src), sshd.endpoint(dst)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not sshd.worker_pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        workers = sshd.worker_pids()
        assert workers, "the remote worker never started"
        time.sleep(0.2)  # let the sync get going
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    assert sshd.wait_sessions_gone(workers) == [], "a remote worker outlived its killed client"
