"""GcmSender (engine/ssh_send.py) against a real sshd: what it writes is what arrives, through
re-keys, beside paramiko's own packets, and paramiko's sendall takes over where it cannot."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from sshd import SshServer

from blocksync_tui.engine import ssh as ssh_module
from blocksync_tui.engine import ssh_send
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.options import SshOptions

pytestmark = pytest.mark.ssh

PIECE = 32768 - 64
"""What one packet carries at most: sshd's 32 KiB maximum less paramiko's margin."""


class CommandTransport(ssh_module.SshTransport):
    """The SSH transport of a worker, running a plain command instead of the worker."""

    def __init__(self, server: SshServer, command: str, options: SshOptions | None = None) -> None:
        super().__init__(Endpoint.parse(server.endpoint("/unused")), options or server.ssh_options())
        self.command = command

    def remote_command(self) -> str:
        return self.command


def count_calls(obj, name: str) -> list:
    """Wrap `obj.name` to note each call (a re-key's new cipher, say); returns the list noted in."""
    calls: list = []
    original = getattr(obj, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    setattr(obj, name, counted)
    return calls


def writes(seed: int) -> list[bytes | bytearray | memoryview]:
    """Writes of every awkward size around a packet and a batch, in each buffer type."""
    rng = __import__("random").Random(seed)
    sizes = [1, PIECE - 1, PIECE, PIECE + 1, ssh_send.BATCH * PIECE, ssh_send.BATCH * PIECE + 7, 1 << 20]
    sizes += [rng.randrange(1, 3 << 20) for _ in range(6)]
    out: list[bytes | bytearray | memoryview] = []
    for index, size in enumerate(sizes):
        data = rng.randbytes(size)
        out.append((bytes, bytearray, memoryview)[index % 3](data))
    return out


def echo(transport: CommandTransport, chunks: list) -> bytes:
    """Send `chunks` while another thread reads the echo back (its window adjusts are paramiko's
    own packets, written between our batches); return what came back."""
    received = bytearray()

    def read() -> None:
        while data := transport.recv(1 << 20):
            received.extend(data)

    reader = threading.Thread(target=read)
    reader.start()
    for chunk in chunks:
        transport.send(chunk)
    transport._channel.shutdown_write()
    reader.join(60)
    assert not reader.is_alive()
    transport.close()
    return bytes(received)


def test_gcm_batches_arrive_intact_beside_paramikos_own_packets(sshd: SshServer) -> None:
    transport = CommandTransport(sshd, "cat")
    transport.start()
    assert transport._ssh.local_cipher in ssh_module.GCM_CIPHERS
    assert transport._sender is not None, "this paramiko should send through GcmSender"
    packetizer = transport._ssh.packetizer
    write_lock = getattr(packetizer, "_Packetizer__write_lock")
    held = []
    write_all = packetizer.write_all

    def checked_write_all(out):
        # paramiko's discipline: the clear-to-send gate (shut during a key exchange) and the
        # write lock (the IV and sequence number are read and moved on under it)
        if threading.current_thread() is threading.main_thread():  # ours, not paramiko's threads
            held.append((write_lock._is_owned(), transport._ssh.clear_to_send_lock.locked()))
        return write_all(out)

    packetizer.write_all = checked_write_all
    chunks = writes(1)
    assert echo(transport, chunks) == b"".join(bytes(chunk) for chunk in chunks)
    assert held and all(lock and gate for lock, gate in held)


def test_server_rekeys_in_the_middle_of_batches(tmp_path: Path) -> None:
    """sshd re-keys every 1 MiB: no batch may go out under the old keys after NEWKEYS."""
    with SshServer.running(tmp_path / "sshd", extra_config="RekeyLimit 1M\n") as server:
        transport = CommandTransport(server, "sha256sum")
        transport.start()
        assert transport._sender is not None
        keyed = count_calls(transport._ssh.packetizer, "set_outbound_cipher")
        chunks = writes(2) * 2
        answer = echo(transport, chunks)
        expected = hashlib.sha256(b"".join(bytes(chunk) for chunk in chunks)).hexdigest()
        assert answer.split()[0].decode() == expected
        assert len(keyed) >= 5, "the server did not re-key: the test shows nothing"


def test_another_cipher_is_sent_by_paramiko(tmp_path: Path) -> None:
    with SshServer.running(tmp_path / "sshd", extra_config="Ciphers aes128-ctr\n") as server:
        transport = CommandTransport(server, "cat")
        transport.start()
        assert transport._ssh.local_cipher == "aes128-ctr"
        assert transport._sender is None
        chunks = writes(3)[:5]
        assert echo(transport, chunks) == b"".join(bytes(chunk) for chunk in chunks)


@pytest.mark.parametrize("missing", ["_Packetizer__iv_out", "_Packetizer__write_lock", "write_all"])
def test_a_paramiko_without_the_state_it_uses_is_left_to_itself(
    sshd: SshServer, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    transport = CommandTransport(sshd, "cat")
    transport.start()
    try:
        packetizer = transport._ssh.packetizer
        assert ssh_send.GcmSender.attach(transport._channel) is not None
        if hasattr(type(packetizer), missing):
            monkeypatch.delattr(type(packetizer), missing)
        else:
            monkeypatch.delattr(packetizer, missing)
        assert ssh_send.GcmSender.attach(transport._channel) is None
    finally:
        monkeypatch.undo()
        transport.close()


def test_a_closed_channel_is_an_error_not_a_hang(sshd: SshServer) -> None:
    transport = CommandTransport(sshd, "head -c 1")  # reads one byte, then exits
    transport.start()
    sender = transport._sender
    assert sender is not None
    with pytest.raises((OSError, EOFError)):
        for _ in range(64):  # the window runs out and the channel closes: never blocks for ever
            sender.sendall(os.urandom(1 << 20))
    transport.close()
