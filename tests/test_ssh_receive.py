"""GcmReceiver (engine/ssh_receive.py) against a real sshd: what the server sends is what
Channel.recv returns, in order, through re-keys and beside stderr and the exit status; a packet
that does not decrypt ends the connection; paramiko reads on its own where it must."""

from __future__ import annotations

import hashlib
import os
import random
import shlex
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sshd import SshServer
from test_ssh_send import CommandTransport, count_calls, echo, writes

from blocksync_tui.engine import ssh_receive
from blocksync_tui.engine.ssh_receive import ChannelInput, GcmReceiver

pytestmark = pytest.mark.ssh
MIB = 1 << 20


def _read_all(transport: CommandTransport, size: int = 1 << 20) -> bytes:
    received = bytearray()
    while data := transport.recv(size):
        received += data
    return bytes(received)


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(random.Random(7).randbytes(24 * MIB + 12345))
    return path


def test_a_download_arrives_whole_and_in_order(sshd: SshServer, big_file: Path) -> None:
    transport = CommandTransport(sshd, f"cat {shlex.quote(str(big_file))}; echo done >&2")
    transport.start()
    assert isinstance(transport._receiver, GcmReceiver), "this paramiko should read through GcmReceiver"
    assert transport._channel.in_buffer is transport._receiver.input
    try:
        assert _read_all(transport) == big_file.read_bytes()
        assert transport.exit_status(10) == 0  # the exit status and EOF took paramiko's paths
        assert "done" in transport.stderr_tail()  # and so did stderr
    finally:
        transport.close()


def test_the_echo_of_awkward_sizes_comes_back_intact(sshd: SshServer) -> None:
    transport = CommandTransport(sshd, "cat")
    transport.start()
    assert transport._receiver is not None
    chunks = writes(4)
    assert echo(transport, chunks) == b"".join(bytes(chunk) for chunk in chunks)


def test_server_rekeys_in_the_middle_of_a_download(tmp_path: Path, big_file: Path) -> None:
    """sshd re-keys every 1 MiB: every packet after a NEWKEYS is read under the new keys."""
    with SshServer.running(tmp_path / "sshd", extra_config="RekeyLimit 1M\n") as server:
        transport = CommandTransport(server, f"cat {shlex.quote(str(big_file))}")
        transport.start()
        assert transport._receiver is not None
        keyed = count_calls(transport._ssh.packetizer, "set_inbound_cipher")
        try:
            data = _read_all(transport, 65536)
        finally:
            transport.close()
        assert hashlib.sha256(data).digest() == hashlib.sha256(big_file.read_bytes()).digest()
        assert len(keyed) >= 10, "the server did not re-key: the test shows nothing"


def test_a_rekey_to_another_cipher_hands_the_bytes_read_ahead_back_to_paramiko(tmp_path: Path, big_file: Path) -> None:
    """After the first re-key the client offers only aes128-ctr: paramiko reads on, from the
    bytes this receiver had already read past the NEWKEYS."""
    with SshServer.running(tmp_path / "sshd", extra_config="RekeyLimit 1M\n") as server:
        transport = CommandTransport(server, f"cat {shlex.quote(str(big_file))}")
        transport.start()
        assert transport._receiver is not None
        transport._ssh.get_security_options().ciphers = ("aes128-ctr",)
        try:
            data = _read_all(transport, 65536)
            assert transport._ssh.remote_cipher == "aes128-ctr", "no re-key happened: the test shows nothing"
        finally:
            transport.close()
        assert hashlib.sha256(data).digest() == hashlib.sha256(big_file.read_bytes()).digest()


def test_a_packet_that_does_not_decrypt_ends_the_connection(sshd: SshServer, big_file: Path) -> None:
    """One bit flipped on the way in: never data, always the end of the connection."""
    transport = CommandTransport(sshd, f"cat {shlex.quote(str(big_file))}")
    transport.start()
    receiver = transport._receiver
    assert receiver is not None
    sock = getattr(transport._ssh.packetizer, "_Packetizer__socket")
    flipped = threading.Event()

    class Flipping:
        """The socket, with one bit of the stream flipped after the first MiB."""

        def __init__(self) -> None:
            self.seen = 0

        def recv_into(self, view, *args):
            got = sock.recv_into(view, *args)
            if not flipped.is_set() and self.seen + got > MIB:
                view[MIB - self.seen if MIB > self.seen else 0] ^= 0x10
                flipped.set()
            self.seen += max(got, 0)
            return got

        def __getattr__(self, name):
            return getattr(sock, name)

    setattr(transport._ssh.packetizer, "_Packetizer__socket", Flipping())
    received = bytearray()
    with pytest.raises(ConnectionResetError, match="broke: Mismatched MAC"):
        while data := transport.recv(1 << 20):
            received += data
    transport.close()
    assert flipped.is_set()
    assert len(received) < big_file.stat().st_size
    assert big_file.read_bytes().startswith(received)  # what came before the flip, and only that


def test_a_server_that_overruns_the_window_is_cut_off(sshd: SshServer, big_file: Path) -> None:
    """Data beyond the window granted would only pile up in memory: the connection ends."""
    transport = CommandTransport(sshd, f"cat {shlex.quote(str(big_file))}")
    transport.start()
    assert transport._receiver is not None
    transport._channel.in_window_size = 100_000  # what the server is now believed to have been given
    with pytest.raises(ConnectionResetError, match="more than the channel's window allows"):
        while transport.recv(1 << 20):
            pass
    transport.close()


def test_another_cipher_is_read_by_paramiko(tmp_path: Path, big_file: Path) -> None:
    with SshServer.running(tmp_path / "sshd", extra_config="Ciphers aes128-ctr\n") as server:
        transport = CommandTransport(server, f"cat {shlex.quote(str(big_file))}")
        transport.start()
        try:
            assert transport._ssh.remote_cipher == "aes128-ctr"
            assert transport._receiver is None
            assert _read_all(transport) == big_file.read_bytes()
        finally:
            transport.close()


@pytest.mark.parametrize("missing", ["_PACKETIZER_STATE", "_PACKETIZER_API", "_CHANNEL_API", "_trigger_rekey"])
def test_a_paramiko_without_the_state_it_uses_is_left_to_itself(
    sshd: SshServer, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    """A paramiko that lacks something the receiver uses reads on its own, and works."""
    if missing == "_trigger_rekey":
        import paramiko

        monkeypatch.delattr(paramiko.Packetizer, missing)
    else:  # a name this paramiko does not have, as a later one may not have one of ours
        monkeypatch.setattr(ssh_receive, missing, (*getattr(ssh_receive, missing), "no_such_thing"))
    transport = CommandTransport(sshd, "cat")
    transport.start()
    assert transport._receiver is None
    chunks = writes(5)[:4]
    assert echo(transport, chunks) == b"".join(bytes(chunk) for chunk in chunks)


def test_a_long_length_field_is_refused_before_it_is_read(sshd: SshServer) -> None:
    """A length beyond OpenSSH's limit is not waited for (nor its memory given): it ends there."""
    transport = CommandTransport(sshd, "cat")
    transport.start()
    try:
        receiver = GcmReceiver(transport._channel)  # its own buffer, not the transport's reader
        receiver._buffer[:4] = (ssh_receive.MAX_PACKET + 16).to_bytes(4, "big")
        receiver._end = 4
        with pytest.raises(Exception, match="Invalid packet length"):
            receiver._next_packet()
    finally:
        transport.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(st.binary(min_size=0, max_size=300), max_size=12), reads=st.lists(st.integers(1, 700), min_size=1, max_size=40))
def test_channel_input_returns_what_was_fed_in_order(pieces: list[bytes], reads: list[int]) -> None:
    pipe = ChannelInput()
    for piece in pieces:
        pipe.feed(memoryview(piece) if len(piece) % 2 else piece)
    pipe.close()
    out = bytearray()
    for size in reads * 20:
        data = pipe.read(size, 1.0)
        assert len(data) <= size
        if not data:
            break
        out += data
    out += pipe.empty()
    assert bytes(out) == b"".join(pieces)
    assert pipe.read(10, 0.0) == b""


def test_channel_input_waits_for_data_and_times_out() -> None:
    pipe = ChannelInput()
    with pytest.raises(ssh_receive.PipeTimeout):
        pipe.read(10, 0.05)
    threading.Timer(0.05, pipe.feed, args=(b"late",)).start()
    assert pipe.read(10, 5.0) == b"late"
    event = threading.Event()
    pipe.set_event(event)
    assert not event.is_set()
    pipe.feed(os.urandom(3))
    assert event.is_set() and pipe.read_ready() and len(pipe) == 3
