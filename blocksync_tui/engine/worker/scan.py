"""Provides the reading side of a worker: the scan (HASH), the direct compare (PAIR), SUBHASH
and DELTA, with the sub-block digests the scan keeps so that a differing chunk is read once.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time

from . import protocol
from .protocol import SUB_DIGEST_SIZE, is_zero
from .output import WorkerError, os_error_text

READ_SIZE = 128 << 10
"""Bytes per read request, and the size of the scan's reused buffer."""
SUB_CACHE_BYTES = 16 << 20
"""Sub-block digests the scan keeps, in bytes: the last 8,192 chunks at 1 MiB, 2,048 at 4 MiB."""
BATCH_ENTRIES = 1024
"""A DIGESTS or PAIRED batch covers at most this many chunks... (not a number of bytes: holes
cost no time to scan, and a frame per 64 MiB chunk of them was most of a sparse scan's cost)"""
BATCH_SECONDS = 0.05
"""...and goes out at least this often, so a UI sees progress even on a slow disk."""
NO_DATA = 1 << 63
"""Where the hole finder puts the next data of a file that has none past the scan."""


class _NoHash:
    """Stands in for a hash object where no digest is wanted: the entry carries zeros."""

    def update(self, data) -> None:
        pass

    def digest(self) -> bytes:
        return b""


class HoleFinder:
    """Tells, for a file scanned front to back, whether a range lies wholly in a hole, from
    SEEK_DATA and SEEK_HOLE and without reading it (a 1 GiB image holding 16 MiB of data is
    scanned for the price of its data). Two lseeks per data extent crossed, not per chunk: what
    they say of the file from the scan's position on stays true, because nothing is written
    ahead of the scan. Block devices and file systems without SEEK_DATA always answer no."""

    def __init__(self, fd: int, enabled: bool) -> None:
        self.fd = fd
        self.enabled = enabled and hasattr(os, "SEEK_DATA")
        self.checked_from = -1
        self.data_at = -1
        """No data in [checked_from, data_at)..."""
        self.hole_at = -1
        """...and data all through [data_at, hole_at)."""

    def covers(self, offset: int, length: int) -> bool:
        """Whether [offset, offset + length) holds no data at all."""
        if not self.enabled:
            return False
        if not self.checked_from <= offset < self.hole_at:
            try:
                self.data_at = os.lseek(self.fd, offset, os.SEEK_DATA)
                self.hole_at = os.lseek(self.fd, self.data_at, os.SEEK_HOLE)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no data at all past offset
                    self.enabled = False
                    return False
                self.data_at = self.hole_at = NO_DATA
            self.checked_from = offset
        return self.data_at >= offset + length


class SubDigestCache:
    """Sub-block digests computed by the scan, by chunk offset, with the (length, sub-block
    size, algorithm) they were taken with: SUBHASH and DELTA then need no second read of the
    chunk. Bounded, oldest dropped first; a chunk's entry is dropped when it is written."""

    def __init__(self, limit: int = SUB_CACHE_BYTES) -> None:
        self.limit = limit
        self.entries: "dict[int, tuple]" = {}
        self.size = 0
        self.lock = threading.Lock()

    def put(self, offset: int, kind: tuple, digests: bytes) -> None:
        """Keep the digests of the chunk at `offset`, as the newest entry."""
        with self.lock:
            self._drop(offset)  # re-inserted as the newest
            self.entries[offset] = (kind, digests)
            self.size += len(digests)
            while self.size > self.limit:
                self._drop(next(iter(self.entries)))  # dicts keep order: the oldest

    def get(self, offset: int, length: int, sub: int, algo: str) -> "bytes | None":
        """The kept digests of a chunk, if taken with that geometry and algorithm."""
        with self.lock:
            kept = self.entries.get(offset)
        return kept[1] if kept is not None and kept[0] == (length, sub, algo) else None

    def forget(self, offset: int) -> None:
        """A write at `offset` makes the cached digests of that chunk stale."""
        with self.lock:
            self._drop(offset)

    def _drop(self, offset: int) -> None:
        old = self.entries.pop(offset, None)
        self.size -= len(old[1]) if old else 0


def read_into(fd: int, view: memoryview, offset: int, path: str = "") -> None:
    """Fill `view` from `offset`; past the end of the file reads as zeros. A failed read
    names `path`, if given.

    Read in READ_SIZE requests, like `cat`: on the virtual disks measured here, 1 MiB requests
    from two files at once were erratic (0.8-2.3 s per GiB pair) where 128 KiB ones were not.
    A view larger than that is filled through one small buffer per thread: the kernel's copy
    into a buffer that fits the CPU's cache, then ours into the view, cost 0.12 CPU-s per GiB
    here, where the kernel's copy straight into a 1 MiB chunk buffer cost 0.41.
    """
    pos, length = 0, len(view)
    bounce = _bounce() if length > READ_SIZE else None
    while pos < length:
        try:
            if bounce is None:
                n = os.preadv(fd, [view[pos : pos + READ_SIZE]], offset + pos)
            else:
                n = os.preadv(fd, [bounce[: min(READ_SIZE, length - pos)]], offset + pos)
                view[pos : pos + n] = bounce[:n]
        except OSError as exc:
            if not path:
                raise
            raise OSError(exc.errno, exc.strerror, path) from None
        if n == 0:
            view[pos:] = bytes(length - pos)
            return
        pos += n


_bounces = threading.local()


def _bounce() -> memoryview:
    """This thread's READ_SIZE buffer for read_into."""
    buf = getattr(_bounces, "buf", None)
    if buf is None:
        buf = _bounces.buf = memoryview(bytearray(READ_SIZE))
    return buf


def read(fd: int, offset: int, length: int) -> bytearray:
    """Read `length` bytes into a new buffer (see read_into)."""
    buf = bytearray(length)
    read_into(fd, memoryview(buf), offset)
    return buf


def pieces(fd: int, offset: int, length: int, buf: bytearray, path: str):
    """Yield the successive pieces of [offset, offset + length), read in order into `buf`.

    The buffer is reused: a piece that stays in the CPU cache costs a third of the kernel
    time of a read into a fresh chunk-sized buffer (measured: 0.4 against 1.35 s per GiB
    pair). A full piece is `buf` itself, a short last one a copy; past the end of the file
    reads as zeros. Pieces are bytearrays, never memoryviews, which compare slowly.
    """
    view = memoryview(buf)
    size = len(buf)
    end = offset + length
    while offset < end:
        n = min(size, end - offset)
        got = 0
        while got < n:
            try:
                k = os.preadv(fd, [view[got:n]], offset + got)
            except OSError as exc:  # say which file: a direct compare reads two
                raise OSError(exc.errno, exc.strerror, path) from None
            if k == 0:
                view[got:n] = bytes(n - got)
                break
            got += k
        yield buf if n == size else bytearray(view[:n])
        offset += n


def differing_runs(a, b, sub_size: int, base: int = 0) -> "list[tuple[int, int]]":
    """Byte ranges (start, end), shifted by `base`, of the sub-blocks where two equal-length
    buffers differ; adjacent ones merged. Give bytes or bytearrays: memoryviews compare slowly."""
    runs: "list[tuple[int, int]]" = []
    length = len(a)
    for start in range(0, length, sub_size):
        end = min(length, start + sub_size)
        if a[start:end] != b[start:end]:
            if runs and runs[-1][1] == base + start:
                runs[-1] = (runs[-1][0], base + end)
            else:
                runs.append((base + start, base + end))
    return runs


def stretches(data, sub: int, length: "int | None" = None) -> "list[tuple[int, int, bool]]":
    """Cut data[:length] where its sub-blocks turn from zeros to data or back: (start, end, all
    zeros) stretches, in order, covering it. On bytes or a bytearray, `startswith` compares in
    place, at memory speed, without a copy."""
    buf = data if isinstance(data, (bytes, bytearray)) else bytes(data)
    length = len(buf) if length is None else length
    zeros = bytes(sub)
    cuts: "list[tuple[int, int, bool]]" = []
    for start in range(0, length, sub):
        end = min(length, start + sub)
        zero = buf.startswith(zeros[: end - start], start, end)
        if cuts and cuts[-1][2] == zero:
            cuts[-1] = (cuts[-1][0], end, zero)
        else:
            cuts.append((start, end, zero))
    return cuts


def spans(flags: "list[bool]") -> "list[tuple[int, int]]":
    """Runs (first, count) of consecutive true flags."""
    runs: "list[tuple[int, int]]" = []
    for i, flag in enumerate(flags):
        if flag:
            if runs and runs[-1][0] + runs[-1][1] == i:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((i, 1))
    return runs


def pack_runs(index: int, runs: "list[tuple[int, int]]") -> bytes:
    if len(runs) > protocol.MAX_RUNS:
        runs = runs[: protocol.MAX_RUNS - 1] + [(runs[protocol.MAX_RUNS - 1][0], runs[-1][1])]
    return protocol.RUNS_HEAD.pack(index, len(runs)) + b"".join(protocol.RUN_ITEM.pack(*r) for r in runs)


def send_entries(out, rid: int, op: int, first: int, entries, dsize: int, tails=None) -> None:
    """Send per-chunk entries (DIGESTS, PAIRED), from chunk `first` on, as they are made, in
    batches of at most BATCH_ENTRIES and at least every BATCH_SECONDS. `tails` (a list the
    entries' maker appends each data chunk's sub-digests to) follows each batch's entries, and
    is emptied."""
    batch: "list[bytes]" = []
    last_send = time.monotonic()

    def flush() -> None:
        tail = b"".join(tails) if tails else b""
        out.send(op, rid, protocol.DIGESTS_HEAD.pack(first, len(batch), dsize) + b"".join(batch) + tail)
        if tails:
            del tails[:]

    for item in entries:
        batch.append(item)
        now = time.monotonic()
        if len(batch) >= BATCH_ENTRIES or now - last_send > BATCH_SECONDS:
            flush()
            first += len(batch)
            batch = []
            last_send = now
    if batch:
        flush()


def geometry(req: dict) -> "tuple[int, int, int]":
    """(chunk size, device size, sub-block size) of a HASH or PAIR request, bounded, with its
    ranges checked against them: no request can make a worker allocate or read without limit."""
    chunk_size, size, sub = int(req["chunk_size"]), int(req["size"]), int(req.get("sub_block") or 0)
    if chunk_size & (chunk_size - 1) or not 0 < chunk_size <= protocol.MAX_CHUNK_SIZE or size < 0:
        raise WorkerError("bad chunk size %d" % chunk_size)
    if sub and (sub & (sub - 1) or sub > chunk_size):
        raise WorkerError("bad sub-block size %d" % sub)
    total = -(-size // chunk_size)
    for first, count in req["ranges"]:
        if first < 0 or count < 0 or first + count > total:
            raise WorkerError("chunk range [%d, +%d) outside the %d chunks" % (first, count, total))
    return chunk_size, size, sub


class Scanner:
    """Serves the requests that read: HASH and PAIR on the scan thread, SUBHASH and DELTA on
    the service threads."""

    def __init__(self, files, out, cache: SubDigestCache, writer) -> None:
        self.files = files
        """The worker's `opening.Files`: what is open, read at each request."""
        self.out = out
        self.cache = cache
        self.writer = writer
        """A direct compare with `write` writes through it, so its byte count stays whole."""
        self._runs: "list[tuple[int, int]]" = []

    def hash_chunks(self, rid: int, req: dict) -> None:
        """Stream the digests of chunk ranges, in order, in batches; then DONE.

        One thread reads strictly in order (interleaved reads defeat the kernel's readahead:
        2.5x slower from a cold disk, measured) and hashes each piece while it is in the CPU
        cache. With `sub_block`, it also keeps the sub-block digests of each data chunk.
        """
        target = self.files.need_target()
        chunk_size, size, sub = geometry(req)
        make_hash = protocol.new_hash(req["algo"])
        sub_algo = req.get("sub_algo", "")
        sub_fn = protocol.hasher(sub_algo) if sub else None
        if req.get("drop_cache"):
            target.drop_cache()
        if req.get("scattered"):  # a sample: ask for every range at once, the disk sorts them out
            for first, count in req["ranges"]:
                target.prefetch(count * chunk_size, first * chunk_size)
        dsize = protocol.digest_size(req["algo"])
        entry = struct.Struct("!B%ds" % dsize)
        buf = bytearray(min(READ_SIZE, chunk_size))
        d = SUB_DIGEST_SIZE
        holes = HoleFinder(target.scan_fd, not target.is_block)
        # With subs_out, each data chunk's sub-digests also go to the controller (after its
        # batch's entries): what it keeps of a destination for the next run.
        tails = [] if req.get("subs_out") and sub_fn else None

        def scan(index: int) -> bytes:
            offset = index * chunk_size
            length = min(chunk_size, size - offset)
            if holes.covers(offset, length):
                return entry.pack(protocol.FLAG_HOLE, b"")  # nothing allocated there: zeros, unread
            h = make_hash()
            zero = True
            subs: "list[bytes]" = []
            try:
                for piece in pieces(target.scan_fd, offset, length, buf, target.path):
                    h.update(piece)
                    zero = zero and is_zero(piece)
                    if sub_fn:
                        view = memoryview(piece)
                        subs.extend([sub_fn(view[o : o + sub])[:d] for o in range(0, len(piece), sub)])
            except OSError as exc:
                return entry.pack(protocol.FLAG_ERROR, (exc.strerror or "").encode()[:dsize])
            if zero:
                return entry.pack(protocol.FLAG_ZERO, b"")
            if sub_fn:
                joined = b"".join(subs)
                self.cache.put(offset, (length, sub, sub_algo), joined)
                if tails is not None:
                    tails.append(joined)
            return entry.pack(protocol.FLAG_DATA, h.digest())

        for first, count in req["ranges"]:
            chunks = map(scan, range(first, first + count))
            send_entries(self.out, rid, protocol.OP_DIGESTS, first, chunks, dsize, tails)
        self.out.send(protocol.OP_DONE, rid)

    def pair(self, rid: int, req: dict) -> None:
        """Compare the peer (the source) with this file chunk by chunk, in order; with `write`,
        copy each chunk's differing sub-blocks over at once. Streams PAIRED batches, then DONE.

        One thread reads both files piece by piece into two small buffers and compares the
        bytes: exact, and cheaper than hashing them. With `digests` (for --verify), a differing
        chunk's entry carries the digest of the source bytes it was given; with `keep`, every
        data chunk's entry does, and its sub-digests follow its batch (as HASH's subs_out).
        """
        target = self.files.need_target()
        peer = self.files.need_peer()
        write = bool(req.get("write"))
        chunk_size, size, sub = geometry(req)
        if write and not target.writable:
            raise WorkerError("the destination was not opened for writing")
        if write and (chunk_size != target.chunk_size or size != target.sync_size):
            raise WorkerError("direct compare with a geometry the destination was not opened with")
        keep = bool(req.get("keep"))
        make_hash = protocol.new_hash(req["algo"]) if req.get("digests") or keep else _NoHash
        sub_fn = protocol.hasher(req["sub_algo"]) if keep and req.get("sub_algo") else None
        tails = [] if sub_fn else None
        dsize = protocol.digest_size(req["algo"])
        piece_size = min(READ_SIZE, chunk_size)
        bufs = (bytearray(piece_size), bytearray(piece_size))

        # Holes on both sides are equal without a read: a sparse pair costs its data only.
        runs_wanted = bool(req.get("runs"))
        holes = (HoleFinder(peer.scan_fd, not peer.is_block), HoleFinder(target.scan_fd, not target.is_block))
        both_holes = protocol.PAIRED_ITEM.pack(protocol.PAIR_HOLE, protocol.FLAG_HOLE, 0) + bytes(dsize)

        def compare(index: int) -> bytes:
            offset = index * chunk_size
            length = min(chunk_size, size - offset)
            if holes[0].covers(offset, length) and holes[1].covers(offset, length):
                return both_holes
            entry = self._pair_chunk(rid, (peer, target), index, offset, length, bufs, sub, write, make_hash, dsize, sub_fn, tails)
            if runs_wanted and self._runs:
                self.out.send(protocol.OP_RUNS, rid, pack_runs(index, self._runs))
            return entry

        for first, count in req["ranges"]:
            chunks = map(compare, range(first, first + count))
            send_entries(self.out, rid, protocol.OP_PAIRED, first, chunks, dsize, tails)
        self.out.send(protocol.OP_DONE, rid)

    def _pair_chunk(self, rid, ends, index, offset, length, bufs, sub, write, make_hash, dsize, sub_fn, tails) -> bytes:
        """Compare (and with `write`, fix) one chunk; return its PAIRED entry."""
        peer, target = ends
        h = make_hash()
        zero = True
        runs: "list[tuple[int, int]]" = []
        subs: "list[bytes]" = []
        self._runs = runs
        sources = pieces(peer.scan_fd, offset, length, bufs[0], peer.path)
        destinations = pieces(target.scan_fd, offset, length, bufs[1], target.path)
        pos = 0
        try:
            for src, dst in zip(sources, destinations):
                h.update(src)
                zero = zero and is_zero(src)
                if sub_fn:
                    view = memoryview(src)
                    subs.extend([sub_fn(view[o : o + sub])[:SUB_DIGEST_SIZE] for o in range(0, len(src), sub)])
                if src != dst:
                    piece_runs = differing_runs(src, dst, sub, pos)
                    if write:
                        for start, end in piece_runs:
                            run = src[start - pos : end - pos]
                            for begin, stop, blank in stretches(run, sub):
                                at = offset + start + begin
                                if blank:  # a hole, not zeros written
                                    self.writer.zero_range(target, at, stop - begin)
                                else:
                                    self.writer.pwrite_all(target, memoryview(run)[begin:stop], at)
                    runs.extend(piece_runs)
                pos += len(src)
        except OSError as exc:
            self._runs = []
            text = os_error_text(exc, exc.filename or target.path)
            self.out.error(rid, text, chunk=index, code=exc.errno or 0, written=self.writer.bytes_written)
            return protocol.PAIRED_ITEM.pack(protocol.PAIR_ERROR, protocol.FLAG_ERROR, 0) + bytes(dsize)
        flag = protocol.FLAG_ZERO if zero else protocol.FLAG_DATA
        digest = (b"" if zero else h.digest()).ljust(dsize, b"\0")
        if tails is not None and not zero:
            tails.append(b"".join(subs))
        if not runs:
            same = protocol.PAIR_ZERO if zero else protocol.PAIR_SAME
            return protocol.PAIRED_ITEM.pack(same, flag, 0) + digest
        if write:
            self.cache.forget(offset)
        differing = sum(end - start for start, end in runs)
        return protocol.PAIRED_ITEM.pack(protocol.PAIR_DIFFERS, flag, differing) + digest

    def subhash(self, rid: int, payload: bytes) -> None:
        """Digests of the sub-blocks of one chunk."""
        target = self.files.need_target()
        index, offset, length, sub_size, _mode, algo, _codec, _ = protocol.unpack_chunk_request(payload)
        digests = self.cache.get(offset, length, sub_size, algo)
        if digests is None:
            digests = protocol.sub_digests(protocol.hasher(algo), read(target.fd, offset, length), sub_size)
        self.out.send(protocol.OP_SUBDIGESTS, rid, protocol.CHUNK_HEAD.pack(index, length) + digests)

    def delta(self, rid: int, payload: bytes) -> None:
        """The pieces of one chunk that the destination lacks, encoded for the wire."""
        fd = self.files.need_target().fd
        index, offset, length, sub_size, mode, algo, codec, theirs = protocol.unpack_chunk_request(payload)
        blocks = -(-length // sub_size)
        mine = self.cache.get(offset, length, sub_size, algo) if mode == protocol.DELTA_SUBDIGESTS else None
        if mine is not None:  # the scan kept them: read only the differing sub-blocks
            runs = spans(protocol.differing_sub_blocks(mine, theirs, blocks))

            def piece(start: int, end: int):
                return read(fd, offset + start, end - start)

        else:
            view = memoryview(read(fd, offset, length))

            def piece(start: int, end: int):
                return view[start:end]

            if mode == protocol.DELTA_WHOLE:
                runs = [(0, blocks)] if blocks else []
            elif mode == protocol.DELTA_DEST_ZERO:
                runs = spans([not is_zero(view[o : o + sub_size]) for o in range(0, length, sub_size)])
            else:
                mine = protocol.sub_digests(protocol.hasher(algo), view, sub_size)
                runs = spans(protocol.differing_sub_blocks(mine, theirs, blocks))
        encoded: "list[bytes]" = []
        count_pieces = 0
        for first, count in runs:
            start = first * sub_size
            data = piece(start, min(length, start + count * sub_size))
            for begin, end, zero in stretches(data, sub_size):
                # A zero stretch goes as a marker (the destination punches a hole), never as
                # bytes inside a data piece.
                if zero:
                    encoded.append(protocol.PIECE_HEAD.pack(start + begin, protocol.CODEC_ZERO, end - begin, 0))
                else:
                    encoded.extend(protocol.encode_piece(start + begin, memoryview(data)[begin:end], codec or None))
                count_pieces += 1
        head = protocol.PIECES_HEAD.pack(index, length, count_pieces)
        self.out.send(protocol.OP_DATA, rid, head + b"".join(encoded))
