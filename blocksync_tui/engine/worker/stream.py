"""Provides the first copy's source side: STREAM sends every chunk that holds data, read once.

A destination that was just created is all holes: there is nothing to compare, so the source
is not scanned and then read again for each differing chunk (two reads, two digests per chunk,
a round trip each). Instead it reads each chunk of a window once, in order, and sends its
non-zero sub-blocks at once in one DATA frame (the zero ones stay holes on the other side);
the chunks' states follow in DIGESTS batches, as a scan's do, then DONE. No chunk's entry
comes before its data, so the controller can tell a chunk that was sent from one that was not.
"""

from __future__ import annotations

import os
import struct
import time

from . import protocol
from .scan import BATCH_ENTRIES, BATCH_SECONDS, READ_SIZE, HoleFinder, geometry

BAIL_OUT_CHUNKS = 16
"""A chunk that did not compress makes the next this many go raw, untried: random data (or
encrypted, or already compressed) then costs no compression at all, mixed data little."""


def read_into(fd: int, view: memoryview, offset: int, path: str) -> None:
    """Fill `view` from `offset`, in READ_SIZE requests (see scan.read); past the end of the
    file reads as zeros."""
    pos, length = 0, len(view)
    while pos < length:
        try:
            n = os.preadv(fd, [view[pos : pos + READ_SIZE]], offset + pos)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, path) from None
        if n == 0:
            view[pos:] = bytes(length - pos)
            return
        pos += n


class Streamer:
    """Serves STREAM on the scan thread."""

    def __init__(self, files, out) -> None:
        self.files = files
        self.out = out

    def stream(self, rid: int, req: dict) -> None:
        target = self.files.need_target()
        chunk_size, size, sub = geometry(req)
        sub = sub or chunk_size
        codec = req.get("codec") or ""
        code, compress = protocol.compressor(codec) if codec else (protocol.CODEC_RAW, None)
        algo = req.get("algo") or ""
        make_hash = protocol.new_hash(algo) if algo else None
        dsize = protocol.digest_size(algo) if algo else 0
        entry = struct.Struct("!B%ds" % dsize)
        buf = bytearray(chunk_size)
        zeros = bytes(sub)
        overwrite = bool(req.get("overwrite"))
        """The destination holds other data: zero stretches of a data chunk go as zero pieces
        (made zeros there), not left out."""
        holes = HoleFinder(target.scan_fd, not target.is_block)
        state = {"raw_for": 0}

        def encode(start: int, data: memoryview) -> "list":
            raw_len = len(data)
            if compress is not None and raw_len >= protocol.COMPRESS_MIN_BYTES:
                if state["raw_for"] > 0:
                    state["raw_for"] -= 1
                else:
                    packed = compress(data)
                    if len(packed) <= raw_len - raw_len // protocol.COMPRESS_MIN_SAVING:
                        return [protocol.PIECE_HEAD.pack(start, code, raw_len, len(packed)), packed]
                    state["raw_for"] = BAIL_OUT_CHUNKS
            return [protocol.PIECE_HEAD.pack(start, protocol.CODEC_RAW, raw_len, raw_len), data]

        def send(index: int) -> bytes:
            offset = index * chunk_size
            length = min(chunk_size, size - offset)
            if holes.covers(offset, length):
                return entry.pack(protocol.FLAG_ZERO, b"")  # nothing allocated: unread
            view = memoryview(buf)[:length]
            try:
                read_into(target.scan_fd, view, offset, target.path)
            except OSError as exc:
                return entry.pack(protocol.FLAG_ERROR, (exc.strerror or "").encode()[:dsize])
            runs = _data_runs(buf, length, sub, zeros)
            if not runs:
                return entry.pack(protocol.FLAG_ZERO, b"")
            pieces = _with_zero_stretches(runs, length) if overwrite else [(a, b, False) for a, b in runs]
            parts = [protocol.PIECES_HEAD.pack(index, length, len(pieces))]
            for start, end, zero in pieces:
                if zero:  # made zeros there: a hole in a file, BLKZEROOUT on a device
                    parts.append(protocol.PIECE_HEAD.pack(start, protocol.CODEC_ZERO, end - start, 0))
                else:
                    parts.extend(encode(start, view[start:end]))
            # Sent before the next read reuses the buffer: the frame goes out whole, now.
            self.out.send_parts(protocol.OP_DATA, rid, parts)
            digest = make_hash(view).digest() if make_hash else b""
            return entry.pack(protocol.FLAG_DATA, digest)

        batch_chunks = BATCH_ENTRIES
        for first, count in req["ranges"]:
            batch: "list[bytes]" = []
            last_sent = time.monotonic()
            for index in range(first, first + count):
                batch.append(send(index))
                now = time.monotonic()
                if len(batch) >= batch_chunks or now - last_sent > BATCH_SECONDS:
                    self._entries(rid, index + 1 - len(batch), batch, dsize)
                    batch, last_sent = [], now
            if batch:
                self._entries(rid, first + count - len(batch), batch, dsize)
        self.out.send(protocol.OP_DONE, rid)

    def _entries(self, rid: int, first: int, batch: "list[bytes]", dsize: int) -> None:
        head = protocol.DIGESTS_HEAD.pack(first, len(batch), dsize)
        self.out.send(protocol.OP_DIGESTS, rid, head + b"".join(batch))


def _with_zero_stretches(runs: "list[tuple[int, int]]", length: int) -> "list[tuple[int, int, bool]]":
    """(start, end, all zeros) of the whole chunk: its data runs and, put back in between
    them, the zero stretches they leave out."""
    whole: "list[tuple[int, int, bool]]" = []
    pos = 0
    for start, end in runs:
        if start > pos:
            whole.append((pos, start, True))
        whole.append((start, end, False))
        pos = end
    if pos < length:
        whole.append((pos, length, True))
    return whole


def _data_runs(buf: bytearray, length: int, sub: int, zeros: bytes) -> "list[tuple[int, int]]":
    """Byte ranges (start, end) of the sub-blocks of buf[:length] that are not all zeros,
    adjacent ones merged. `startswith` compares in place, at memory speed, with no copy."""
    runs: "list[tuple[int, int]]" = []
    for start in range(0, length, sub):
        end = min(length, start + sub)
        block = zeros if end - start == sub else zeros[: end - start]
        if buf.startswith(block, start, end):
            continue
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs
