"""Provides GcmReceiver: a paramiko channel's incoming data, read in large pieces and handed on
without paramiko's copies.

Why: paramiko's transport thread reads each CHANNEL_DATA packet (at most 32 KiB, sshd's size)
with two or more recv calls and copies it six times on its way out of Channel.recv: a growing
bytes, a concatenation before the decryption, two slices after it, the message's string, and
the channel's array buffer (in, then out, which also moves the rest of that buffer down). Its
thread then spends about 2 CPU-s per GiB, and that bounds a pull (bench/bench_first_copy.py
--pull). Here the transport thread reads up to 1 MiB per recv_into, decrypts each packet, and
queues the channel's data as a view of the decrypted packet; Channel.recv joins what it takes.

It takes the place of the packetizer's read_message (an instance attribute of this transport
only) and of the channel's input buffer. A packet that is not data for this channel goes back
to paramiko's loop as the Message its own read_message would have made, with the sequence
number, IV and counters moved on as it would have, so key exchanges, EOF, exit status and
stderr take paramiko's own paths. So does every packet while a re-key is due, or under another
cipher than AES-GCM: the bytes read ahead are handed back to the packetizer's own remainder,
which it reads first. Nothing beyond the packet returned is decrypted, so a NEWKEYS is always
followed by packets read under the keys it set up.

Like GcmSender, this reaches into paramiko's private state: `attach` checks every attribute it
uses and returns None if one is missing, or if the inbound cipher is not AES-GCM.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from collections import deque

import paramiko
from cryptography.exceptions import InvalidTag
from paramiko.buffered_pipe import PipeTimeout
from paramiko.common import MSG_CHANNEL_DATA
from paramiko.message import Message
from paramiko.packet import NeedRekeyException

READ_SIZE = 1 << 20
"""Bytes asked of the socket at once."""
MAX_PACKET = 256 << 10
"""The largest packet accepted (OpenSSH's limit); a longer length field ends the connection."""
_GCM_TAG = 16
_GCM_BLOCK = 16
_LENGTH = struct.Struct(">I")
_DATA_HEAD = struct.Struct(">BII")  # message type, recipient channel, data length
_P = "_Packetizer__"
_PACKETIZER_STATE = (
    "socket", "remainder", "closed", "need_rekey", "block_engine_in", "block_size_in", "aead_in",
    "etm_in", "mac_size_in", "compress_engine_in", "iv_in", "sequence_number_in",
    "received_bytes", "received_packets", "received_bytes_overflow", "received_packets_overflow",
)
_PACKETIZER_API = (
    "read_message", "handshake_timed_out", "_check_keepalive", "_trigger_rekey", "REKEY_BYTES",
    "REKEY_PACKETS", "REKEY_BYTES_OVERFLOW_MAX", "REKEY_PACKETS_OVERFLOW_MAX",
)
_CHANNEL_API = ("in_buffer", "chanid", "recv", "in_window_size", "in_window_sofar")


class ChannelInput:
    """The channel's input buffer, as paramiko's BufferedPipe behaves, holding views of the
    decrypted packets instead of one array that every read shifts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._pieces: deque[memoryview] = deque()
        self._size = 0
        self._closed = False
        self._event: threading.Event | None = None

    def set_event(self, event: threading.Event) -> None:
        with self._lock:
            self._event = event
            if self._closed or self._size:
                event.set()
            else:
                event.clear()

    def feed(self, data: bytes | memoryview) -> None:
        """Queue `data` (paramiko's own path gives bytes, ours a view of a packet)."""
        with self._lock:
            if data:
                self._pieces.append(memoryview(data))
                self._size += len(data)
            if self._event is not None:
                self._event.set()
            self._cv.notify_all()

    def read_ready(self) -> bool:
        with self._lock:
            return self._size > 0

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        """Up to `nbytes` bytes, waiting for the first; b"" once closed and drained.

        Raises:
            PipeTimeout: nothing came within `timeout` seconds.
        """
        with self._lock:
            if not self._size:
                if self._closed:
                    return b""
                if timeout == 0.0:
                    raise PipeTimeout()
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._size and not self._closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise PipeTimeout()
                    self._cv.wait(left)
                if not self._size:
                    return b""
            parts = []
            taken = 0
            while self._pieces and taken < nbytes:
                piece = self._pieces[0]
                if len(piece) > nbytes - taken:
                    parts.append(piece[: nbytes - taken])
                    self._pieces[0] = piece[nbytes - taken :]
                else:
                    parts.append(self._pieces.popleft())
                taken += len(parts[-1])
            self._size -= taken
            if not self._size and self._event is not None and not self._closed:
                self._event.clear()
        return b"".join(parts)

    def empty(self) -> bytes:
        with self._lock:
            out = b"".join(self._pieces)
            self._pieces.clear()
            self._size = 0
            if self._event is not None and not self._closed:
                self._event.clear()
        return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._event is not None:
                self._event.set()
            self._cv.notify_all()

    def __len__(self) -> int:
        with self._lock:
            return self._size


class GcmReceiver:
    """Reads a transport's packets for paramiko, the channel's data straight to its buffer."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self.packetizer = channel.transport.packetizer
        self._original = self.packetizer.read_message
        self._buffer = bytearray(READ_SIZE + MAX_PACKET)
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0
        self.input = ChannelInput()

    @classmethod
    def attach(cls, channel: paramiko.Channel) -> GcmReceiver | None:
        """Take over reading for `channel`'s transport before the channel carries data (between
        opening it and starting its command); None where paramiko must read on its own."""
        transport = getattr(channel, "transport", None)
        packetizer = getattr(transport, "packetizer", None)
        if packetizer is None or not all(hasattr(channel, name) for name in _CHANNEL_API):
            return None
        if not (
            all(hasattr(packetizer, name) for name in _PACKETIZER_API)
            and all(hasattr(packetizer, _P + name) for name in _PACKETIZER_STATE)
            and isinstance(getattr(packetizer, _P + "socket"), socket.socket)
        ):
            return None
        receiver = cls(channel)
        if not receiver._gcm_now() or len(channel.in_buffer):
            return None
        channel.in_buffer = receiver.input
        packetizer.read_message = receiver.read_message
        return receiver

    def _get(self, name: str):
        return getattr(self.packetizer, _P + name)

    def _set(self, name: str, value) -> None:
        setattr(self.packetizer, _P + name, value)

    def _gcm_now(self) -> bool:
        return (
            self._get("aead_in") is True
            and not self._get("etm_in")
            and self._get("compress_engine_in") is None
            and self._get("block_size_in") == _GCM_BLOCK
            and self._get("mac_size_in") == _GCM_TAG
            and self._get("block_engine_in") is not None
        )

    def read_message(self) -> tuple[int, Message]:
        """What paramiko's Packetizer.read_message returns, for every packet but our data.

        Raises:
            EOFError, socket.error: the connection ended or broke.
            NeedRekeyException: a re-key is due and no packet has begun (the loop starts it).
            paramiko.SSHException: a packet that does not decrypt or does not parse.
        """
        remainder = self._get("remainder")
        if remainder:  # left by paramiko's own reads (the banner, or under another cipher)
            self._append(remainder)
            self._set("remainder", b"")
        while True:
            if not self._gcm_now() or self._get("need_rekey"):
                if self._end > self._start:  # hand back what was read ahead, to be read first
                    self._set("remainder", bytes(self._view[self._start : self._end]))
                    self._start = self._end = 0
                return self._original()
            payload, seqno = self._next_packet()
            if payload[0] == MSG_CHANNEL_DATA and len(payload) >= _DATA_HEAD.size:
                _, chanid, length = _DATA_HEAD.unpack_from(payload)
                if chanid == self.channel.chanid and not self._get("need_rekey"):
                    if length != len(payload) - _DATA_HEAD.size:
                        raise paramiko.SSHException("channel data of the wrong length")
                    self._check_window(length)
                    self.input.feed(payload[_DATA_HEAD.size :])
                    continue
            message = Message(bytes(payload[1:]))
            message.seqno = seqno
            return payload[0], message

    def _check_window(self, length: int) -> None:
        """What the server may send is what our window grants: what came and was not given back
        yet (queued, or read and not yet acknowledged) never exceeds it. A server that sends
        more would fill our memory: that ends the connection, as OpenSSH ends it."""
        channel = self.channel
        if len(self.input) + channel.in_window_sofar + length > channel.in_window_size:
            raise paramiko.SSHException(
                "the server sent more than the channel's window allows (%d bytes)" % channel.in_window_size)

    def _next_packet(self) -> tuple[memoryview, int]:
        """Read and decrypt one packet (RFC 5647); moves the IV, sequence number and counters
        on as paramiko would, and asks for a re-key at its limits."""
        self._fill(4, boundary=True)
        size = _LENGTH.unpack_from(self._buffer, self._start)[0]
        if not _GCM_BLOCK <= size <= MAX_PACKET or size % _GCM_BLOCK:
            raise paramiko.SSHException("Invalid packet length %d" % size)
        self._fill(4 + size + _GCM_TAG, boundary=False)
        at = self._start
        self._start += 4 + size + _GCM_TAG
        iv = self._get("iv_in")
        try:
            plain = self._get("block_engine_in").decrypt(
                iv, self._view[at + 4 : self._start], self._view[at : at + 4]
            )
        except InvalidTag:
            raise paramiko.SSHException("Mismatched MAC") from None
        self._set("iv_in", iv[:4] + ((int.from_bytes(iv[4:], "big") + 1) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big"))
        padding = plain[0]
        if not 4 <= padding < size - 1:
            raise paramiko.SSHException("Invalid packet padding")
        seqno = self._get("sequence_number_in")
        self._set("sequence_number_in", (seqno + 1) & 0xFFFFFFFF)
        self._count(size + _GCM_TAG + 4)
        return memoryview(plain)[1 : size - padding], seqno

    def _count(self, raw: int) -> None:
        """paramiko's received-bytes bookkeeping, step for step (packet.py, read_message)."""
        received_bytes = self._get("received_bytes") + raw
        received_packets = self._get("received_packets") + 1
        self._set("received_bytes", received_bytes)
        self._set("received_packets", received_packets)
        packetizer = self.packetizer
        if self._get("need_rekey"):
            overflow_bytes = self._get("received_bytes_overflow") + raw
            overflow_packets = self._get("received_packets_overflow") + 1
            self._set("received_bytes_overflow", overflow_bytes)
            self._set("received_packets_overflow", overflow_packets)
            if (overflow_packets >= packetizer.REKEY_PACKETS_OVERFLOW_MAX
                    or overflow_bytes >= packetizer.REKEY_BYTES_OVERFLOW_MAX):
                raise paramiko.SSHException("Remote transport is ignoring rekey requests")
        elif received_packets >= packetizer.REKEY_PACKETS or received_bytes >= packetizer.REKEY_BYTES:
            self._set("received_bytes_overflow", 0)
            self._set("received_packets_overflow", 0)
            packetizer._trigger_rekey()

    def _append(self, data: bytes) -> None:
        self._make_room(len(data))
        self._view[self._end : self._end + len(data)] = data
        self._end += len(data)

    def _make_room(self, need: int) -> None:
        """Move what is unread (at most a packet) to the front once the free end is smaller
        than `need` or than a quarter of a read."""
        if len(self._buffer) - self._end >= max(need, READ_SIZE // 4):
            return
        unread = self._end - self._start
        if unread + need > len(self._buffer):
            self._buffer.extend(bytes(unread + need - len(self._buffer)))
            self._view = memoryview(self._buffer)
        self._view[:unread] = self._view[self._start : self._end]
        self._start, self._end = 0, unread

    def _fill(self, count: int, boundary: bool) -> None:
        """Have `count` unread bytes, reading as much as the socket has. `boundary`: nothing of
        the packet has arrived yet, where paramiko lets a due re-key interrupt the wait."""
        packetizer = self.packetizer
        sock = self._get("socket")
        while self._end - self._start < count:
            self._make_room(count - (self._end - self._start))
            if packetizer.handshake_timed_out():
                raise EOFError()
            try:
                got = sock.recv_into(self._view[self._end : self._end + READ_SIZE])
            except socket.timeout:
                got = -1
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    if self._get("closed"):
                        raise EOFError() from None
                    raise
                got = -1
            if got == 0:
                raise EOFError()
            if got > 0:
                self._end += got
                continue
            if self._get("closed"):
                raise EOFError()
            if boundary and self._end == self._start and self._get("need_rekey"):
                raise NeedRekeyException()
            packetizer._check_keepalive()
