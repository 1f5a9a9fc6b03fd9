"""Provides GcmSender: a paramiko channel's outgoing data, written in batches of AES-GCM packets.

Why: paramiko sends each CHANNEL_DATA packet (at most 32 KiB, what sshd allows) through five
layers of Python that copy the data four times and make one send() call per packet, so one
thread at a full core bounds an upload at ~400 MB/s (PARAMIKO-FACTS.md, sections 2b and 7).
Here a batch of packets takes the channel's window once, each packet is encrypted straight into
one buffer with the packetizer's own cipher state, and the batch is written with one call:
about twice the throughput for half the CPU (bench/bench_ssh_throughput.py).

It follows paramiko's own send path step for step: the channel lock for the window, the
transport's clear-to-send gate (closed during a key exchange, so no packet goes out under old
keys after NEWKEYS), then the packetizer's write lock, under which it reads the cipher state
and writes back the IV, sequence number and counters. paramiko's own packets (window adjusts,
keepalives, EOF) therefore interleave with ours as with its own.

This reaches into paramiko's private state. `GcmSender.attach` checks every attribute it uses
and returns None if one is missing, or if the outbound cipher is not AES-GCM; the caller then
sends with `Channel.sendall`. A batch that finds another cipher after a re-key goes through
paramiko's own packetizer.
"""

from __future__ import annotations

import os
import struct
import time

import paramiko
from paramiko.common import cMSG_CHANNEL_DATA
from paramiko.message import Message

BATCH = 8
"""Packets per write: 256 KiB per system call instead of 32 KiB (sshd's window is 2 MiB)."""
_GCM_TAG = 16
_GCM_BLOCK = 16
_HEADER = struct.Struct(">BBII")  # padding length, message type, recipient channel, data length
_P = "_Packetizer__"
_PACKETIZER_STATE = (
    "write_lock", "block_engine_out", "aead_out", "etm_out", "compress_engine_out",
    "block_size_out", "iv_out", "sequence_number_out", "sent_bytes", "sent_packets",
)
_PACKETIZER_API = ("write_all", "send_message", "need_rekey", "_trigger_rekey", "REKEY_BYTES", "REKEY_PACKETS")
_CHANNEL_API = (
    "lock", "_wait_for_send_window", "out_window_size", "out_max_packet_size", "remote_chanid",
    "closed", "eof_sent",
)
_TRANSPORT_API = ("clear_to_send", "clear_to_send_lock", "clear_to_send_timeout", "active", "packetizer")


class GcmSender:
    """Sends a channel's data as paramiko would, in batches (see the module's docstring)."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self.transport = channel.transport
        self.packetizer = channel.transport.packetizer
        self._write_lock = getattr(self.packetizer, _P + "write_lock")

    @classmethod
    def attach(cls, channel: paramiko.Channel) -> GcmSender | None:
        """A sender for `channel`, or None where paramiko's own sendall must be used."""
        transport = getattr(channel, "transport", None)
        packetizer = getattr(transport, "packetizer", None)
        if packetizer is None:
            return None
        if not (
            all(hasattr(transport, name) for name in _TRANSPORT_API)
            and all(hasattr(channel, name) for name in _CHANNEL_API)
            and all(hasattr(packetizer, name) for name in _PACKETIZER_API)
            and all(hasattr(packetizer, _P + name) for name in _PACKETIZER_STATE)
        ):
            return None
        sender = cls(channel)
        with sender._write_lock:
            if not sender._gcm_now():
                return None
            engine = getattr(packetizer, _P + "block_engine_out")
        if not hasattr(engine, "encrypt_into") and not hasattr(engine, "encrypt"):
            return None
        return sender

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of `data` on the channel.

        Raises:
            OSError: the channel is closed ("Socket is closed", as paramiko says).
            EOFError: the channel or the connection ended before all was sent.
            socket.timeout: the window stayed shut for the channel's timeout.
            paramiko.SSHException: a key exchange did not finish in time.
        """
        view = memoryview(data).cast("B")
        while view:
            pieces = self._take_window(view)
            view = view[sum(len(piece) for piece in pieces) :]
            self._send_packets(pieces)

    def _take_window(self, view: memoryview) -> list[memoryview]:
        """Up to BATCH packet-sized pieces of `view` that the window allows; waits for the first."""
        channel = self.channel
        with channel.lock:
            if channel.closed:
                raise OSError("Socket is closed")
            size = channel._wait_for_send_window(len(view))
            if size == 0:
                raise EOFError("the channel was closed")
            pieces = [view[:size]]
            at = size
            while len(pieces) < BATCH and at < len(view):
                size = min(len(view) - at, channel.out_window_size, channel.out_max_packet_size - 64)
                if size <= 0:
                    break
                channel.out_window_size -= size
                pieces.append(view[at : at + size])
                at += size
        return pieces

    def _send_packets(self, pieces: list[memoryview]) -> None:
        transport = self.transport
        start = time.monotonic()
        while True:  # as Transport._send_user_message: no user data during a key exchange
            transport.clear_to_send.wait(0.1)
            if not transport.active:
                raise EOFError("the SSH connection is closed")
            transport.clear_to_send_lock.acquire()
            if transport.clear_to_send.is_set():
                break
            transport.clear_to_send_lock.release()
            if time.monotonic() > start + transport.clear_to_send_timeout:
                raise paramiko.SSHException("Key-exchange timed out waiting for key negotiation")
        try:
            with self._write_lock:
                if self._gcm_now():
                    self._write_gcm(pieces)
                else:  # a re-key chose another cipher: paramiko builds these packets itself
                    for piece in pieces:
                        message = Message()
                        message.add_byte(cMSG_CHANNEL_DATA)
                        message.add_int(self.channel.remote_chanid)
                        message.add_string(piece)
                        self.packetizer.send_message(message)
        finally:
            transport.clear_to_send_lock.release()

    def _gcm_now(self) -> bool:
        """Whether the outbound cipher is AES-GCM without compression (under the write lock)."""
        state = self.packetizer
        return (
            getattr(state, _P + "aead_out") is True
            and not getattr(state, _P + "etm_out")
            and getattr(state, _P + "compress_engine_out") is None
            and getattr(state, _P + "block_size_out") == _GCM_BLOCK
            and getattr(state, _P + "block_engine_out") is not None
        )

    def _write_gcm(self, pieces: list[memoryview]) -> None:
        """Encrypt `pieces` as CHANNEL_DATA packets into one buffer and write it (RFC 5647)."""
        packetizer = self.packetizer
        engine = getattr(packetizer, _P + "block_engine_out")
        iv = getattr(packetizer, _P + "iv_out")
        fixed, counter = iv[:4], int.from_bytes(iv[4:], "big")
        sequence = getattr(packetizer, _P + "sequence_number_out")
        chanid = self.channel.remote_chanid
        layout = []
        total = 0
        for piece in pieces:
            payload = _HEADER.size - 1 + len(piece)  # message type, channel, length, data
            # Padding: at least 4 bytes, so that padding-length byte + payload + padding is a
            # multiple of the block size; the 4-byte length field is not encrypted under GCM.
            padding = 3 + _GCM_BLOCK - ((payload + 4) % _GCM_BLOCK)
            length = 1 + payload + padding
            layout.append((piece, padding, length))
            total += 4 + length + _GCM_TAG
        out = bytearray(total)
        outview = memoryview(out)
        plain = bytearray(max(length for _, _, length in layout))
        plainview = memoryview(plain)
        random = os.urandom(_GCM_BLOCK * 2 * len(layout))
        encrypt_into = getattr(engine, "encrypt_into", None)
        at = 0
        for index, (piece, padding, length) in enumerate(layout):
            _HEADER.pack_into(plain, 0, padding, cMSG_CHANNEL_DATA[0], chanid, len(piece))
            end = _HEADER.size + len(piece)
            plain[_HEADER.size : end] = piece
            plain[end : end + padding] = random[index * 2 * _GCM_BLOCK : index * 2 * _GCM_BLOCK + padding]
            nonce = fixed + counter.to_bytes(8, "big")
            counter = (counter + 1) & 0xFFFFFFFFFFFFFFFF
            aad = length.to_bytes(4, "big")
            out[at : at + 4] = aad
            if encrypt_into is not None:
                encrypt_into(nonce, plainview[:length], aad, outview[at + 4 : at + 4 + length + _GCM_TAG])
            else:
                out[at + 4 : at + 4 + length + _GCM_TAG] = engine.encrypt(nonce, bytes(plainview[:length]), aad)
            at += 4 + length + _GCM_TAG
            sequence = (sequence + 1) & 0xFFFFFFFF
        # The state moves on before the write: a failed write ends the connection anyway, and
        # a packet must never be encrypted twice under one nonce.
        setattr(packetizer, _P + "iv_out", fixed + counter.to_bytes(8, "big"))
        setattr(packetizer, _P + "sequence_number_out", sequence)
        sent_bytes = getattr(packetizer, _P + "sent_bytes") + total
        sent_packets = getattr(packetizer, _P + "sent_packets") + len(layout)
        setattr(packetizer, _P + "sent_bytes", sent_bytes)
        setattr(packetizer, _P + "sent_packets", sent_packets)
        packetizer.write_all(outview)
        if (
            sent_packets >= packetizer.REKEY_PACKETS or sent_bytes >= packetizer.REKEY_BYTES
        ) and not packetizer.need_rekey():
            packetizer._trigger_rekey()
