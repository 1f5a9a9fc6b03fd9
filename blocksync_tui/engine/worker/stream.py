"""Provides the first copy's source side: STREAM sends every chunk that holds data, read once.

A destination that was just created is all holes: there is nothing to compare, so the source
is not scanned and then read again for each differing chunk (two reads, two digests per chunk,
a round trip each). Instead it reads each chunk of a window once, in order, and sends its
non-zero sub-blocks at once in one DATA frame (the zero ones stay holes on the other side);
the chunks' states follow in DIGESTS batches, as a scan's do, then DONE. No chunk's entry
comes before its data, so the controller can tell a chunk that was sent from one that was not.
"""

from __future__ import annotations

import struct

from . import protocol
from .scan import HoleFinder, geometry, read_into, send_entries, stretches

BAIL_OUT_CHUNKS = 16
"""A chunk that did not compress makes the next this many go raw, untried: random data (or
encrypted, or already compressed) then costs no compression at all, mixed data little."""


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
        # With sub_algo, each data chunk's sub-digests follow its batch (as HASH's subs_out).
        sub_fn = protocol.hasher(req["sub_algo"]) if req.get("sub_algo") else None
        tails = [] if sub_fn else None
        dsize = protocol.digest_size(algo) if algo else 0
        entry = struct.Struct("!B%ds" % dsize)
        buf = bytearray(chunk_size)
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
                return entry.pack(protocol.FLAG_HOLE, b"")  # nothing allocated: unread
            view = memoryview(buf)[:length]
            try:
                read_into(target.scan_fd, view, offset, target.path)
            except OSError as exc:
                return entry.pack(protocol.FLAG_ERROR, (exc.strerror or "").encode()[:dsize])
            cut = stretches(buf, sub, length)
            if all(zero for _, _, zero in cut):
                return entry.pack(protocol.FLAG_ZERO, b"")
            pieces = cut if overwrite else [piece for piece in cut if not piece[2]]
            parts = [protocol.PIECES_HEAD.pack(index, length, len(pieces))]
            for start, end, zero in pieces:
                if zero:  # made zeros there: a hole in a file, BLKZEROOUT on a device
                    parts.append(protocol.PIECE_HEAD.pack(start, protocol.CODEC_ZERO, end - start, 0))
                else:
                    parts.extend(encode(start, view[start:end]))
            # Sent before the next read reuses the buffer: the frame goes out whole, now.
            self.out.send_parts(protocol.OP_DATA, rid, parts)
            digest = b""
            if make_hash:
                h = make_hash()
                h.update(view)
                digest = h.digest()
            if tails is not None:
                tails.append(protocol.sub_digests(sub_fn, view, sub))
            return entry.pack(protocol.FLAG_DATA, digest)

        for first, count in req["ranges"]:
            # Each chunk's DATA goes out as it is read, so its entry always comes after it.
            send_entries(self.out, rid, protocol.OP_DIGESTS, first, map(send, range(first, first + count)), dsize, tails)
        self.out.send(protocol.OP_DONE, rid)
