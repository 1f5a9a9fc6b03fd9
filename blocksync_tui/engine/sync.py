"""Provides SyncEngine: make a destination equal to a source by rewriting only what differs.

One loop on the calling thread drives two workers. Both hash ahead in windows and stream digest
batches; chunks are compared as soon as both digests are in; a differing chunk goes through a
pipeline (destination sub-block digests, then the source's differing pieces, then a write) with
many chunks in flight at once. Nothing waits for one chunk before asking for the next.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from blocksync_tui.endpoint import Endpoint
from blocksync_tui.engine import worker as wire
from blocksync_tui.engine.chunkmap import ChunkMap, State
from blocksync_tui.engine.connection import EOF_OP, Connection, Frame
from blocksync_tui.engine.errors import (
    BlocksyncError,
    Cancelled,
    ConnectionLost,
    EndpointError,
    RemoteError,
    UsageError,
)
from blocksync_tui.engine.report import Progress, Report
from blocksync_tui.engine.transport import LocalTransport, Transport

MIN_CHUNK = 4096
MAX_CHUNK = wire.MAX_CHUNK_SIZE
SUB_BLOCK = 4096
HASH_WINDOW_BYTES = 32 << 20
"""Chunks are requested for hashing in windows of this size..."""
WINDOWS_AHEAD = 4
"""...and one side may run this many windows ahead of the other (bounds memory)."""
PAIR_WINDOW_BYTES = 8 << 20
"""A direct compare writes as it goes: smaller windows, fewer ahead, so a cancel or a pause
takes effect within 16 MiB."""
PAIR_WINDOWS_AHEAD = 2
PREFETCH_BYTES = 256 << 20
"""Each worker asks its kernel to read this much ahead as soon as its end is open: the side up
first (a local one, while an SSH handshake and a remote Python start take 0.5 s or more) then
has its first chunks in memory when the scan begins."""
INFLIGHT_BYTES = 32 << 20
"""At most this much chunk data is between the source and a completed write."""
FAST_CODECS = ("zstd", "lz4")

SOURCE = "source"
DESTINATION = "destination"


@dataclass
class SyncOptions:
    """How to run a compare or a sync."""

    chunk_size: int = 1 << 20
    algorithm: str | None = None
    """Chunk digest; None picks the fastest collision-safe one both workers have."""
    compress: str = "auto"
    """auto (a fast codec if both ends have one), none, zlib, lz4, zstd."""
    verify: bool = False
    dry_run: bool = False
    sub_block: int = SUB_BLOCK
    direct: bool = True
    """When both ends are on one machine, the destination's worker reads the source itself and
    compares bytes: no digests, no data through the controller. False forces digests."""

    def check(self) -> None:
        """Raises UsageError for options that cannot work."""
        size = self.chunk_size
        if size & (size - 1) or not MIN_CHUNK <= size <= MAX_CHUNK:
            raise UsageError(
                f"chunk size {size} must be a power of two from {MIN_CHUNK} to {MAX_CHUNK} bytes"
            )
        if self.compress not in ("auto", "none", "zlib", "lz4", "zstd"):
            raise UsageError(f"unknown compression {self.compress!r}")


TransportFactory = Callable[[Endpoint], Transport]


def local_only(endpoint: Endpoint) -> Transport:
    """The default transport factory: workers on this machine."""
    if endpoint.is_remote:
        raise UsageError(f"{endpoint}: remote endpoints need an SSH transport")
    return LocalTransport()


@dataclass
class _Side:
    """What the engine tracks per worker."""

    conn: Connection
    info: dict
    next_window: int = 0
    windows_done: int = 0
    scanned: int = 0


class SyncEngine:
    """Compare or sync one source with one destination.

    Use `prepare()` (connect, open, check: nothing is written), then `run()`. Another thread may
    call `progress()`, `cancel()`, `pause()` and `resume()` at any time, and read `chunk_map`.
    """

    def __init__(
        self,
        source: Endpoint,
        destination: Endpoint,
        options: SyncOptions | None = None,
        transport_factory: TransportFactory = local_only,
    ) -> None:
        self.source = source
        self.destination = destination
        self.options = options or SyncOptions()
        self.options.check()
        self._factory = transport_factory
        self.chunk_map = ChunkMap(0)
        """Per-chunk states; replaced by the real map in `prepare()`."""
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.algorithm = ""
        self.sub_algorithm = ""
        """Digest of 4 KiB sub-blocks (truncated): xxh3-64 when both ends have xxhash."""
        self.compression = "none"
        self.method = "digests"
        """How chunks are compared: "digests", or "direct" (bytes, both ends on one machine)."""
        self.size = 0
        self.phase = "connecting"
        self._events: queue.Queue[Frame] = queue.Queue()
        self._sides: dict[str, _Side] = {}
        self._cancel = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._started = time.monotonic()
        self._finished: float | None = None
        self._bytes_sent = 0
        self._bytes_differing = 0
        self._dest_absent = False
        self._same_host = False
        self._prepared = False
        self._prepare_seconds = 0.0

    # -- control from other threads

    def cancel(self) -> None:
        """Stop at the next chunk boundary; writes already sent are completed and flushed."""
        self._cancel.set()
        self._resume.set()

    def pause(self) -> None:
        """Stop issuing new work until `resume()`; work in flight completes."""
        self._resume.clear()

    def resume(self) -> None:
        """Continue after `pause()`."""
        self._resume.set()

    @property
    def cancelled(self) -> bool:
        """True once `cancel()` was called."""
        return self._cancel.is_set()

    def progress(self) -> Progress:
        """A snapshot of where the run is."""
        src = self._sides.get(SOURCE)
        dst = self._sides.get(DESTINATION)
        end = self._finished or time.monotonic()
        return Progress(
            phase=self.phase,
            dry_run=self.options.dry_run,
            elapsed=end - self._started,
            size=self.size,
            chunk_size=self.options.chunk_size,
            total_chunks=self.chunk_map.total,
            scanned_source=src.scanned if src else 0,
            scanned_destination=dst.scanned if dst else 0,
            bytes_sent=self._bytes_sent,
            bytes_differing=self._bytes_differing,
            wire_bytes=sum(s.conn.bytes_in + s.conn.bytes_out for s in self._sides.values()),
            counts=self.chunk_map.counts(),
            paused=not self._resume.is_set(),
            method=self.method,
        )

    @property
    def destination_info(self) -> dict:
        """What OPEN said of the destination (kind, size, mounted...), once prepared."""
        side = self._sides.get(DESTINATION)
        return side.info if side else {}

    @property
    def source_info(self) -> dict:
        """What OPEN said of the source, once prepared."""
        side = self._sides.get(SOURCE)
        return side.info if side else {}

    # -- prepare

    def prepare(self) -> None:
        """Start both workers, open both ends read-only and check that the run can go ahead.

        Raises:
            BlocksyncError: with a message for the user; nothing has been written.
        """
        self._started = time.monotonic()
        self._prepare_seconds = 0.0
        try:
            self._start_workers()
            src, dst = self._sides[SOURCE].info, self._sides[DESTINATION].info
            self._check(src, dst)
            self._negotiate()
        except BaseException:
            self.close()
            raise
        self.size = src["size"]
        self.chunk_map = ChunkMap(-(-self.size // self.options.chunk_size))
        self._prepared = True
        self._prepare_seconds = time.monotonic() - self._started

    def _start_workers(self) -> None:
        """Start both workers and open both ends (read-only) at once, side by side: two
        interpreters, or two SSH handshakes. A side that is up first starts reading ahead."""
        failures: dict[str, BaseException] = {}
        endpoints = {SOURCE: self.source, DESTINATION: self.destination}

        def start(side: str) -> None:
            try:
                # The transport is made here too: an SSH one imports paramiko (0.15 s), which
                # then overlaps the other side's start.
                conn = Connection(self._factory(endpoints[side]), side, self._events)
                self._sides[side] = _Side(conn, {})
                conn.start()
                info = self._open(side, {"path": endpoints[side].path, "prefetch": PREFETCH_BYTES})
                if side == SOURCE and not info.get("exists"):
                    raise EndpointError(f"{self.source}: no such file or device")
            except BaseException as exc:  # handed to the calling thread below
                failures[side] = exc

        threads = [threading.Thread(target=start, args=(side,), daemon=True) for side in endpoints]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for side in (SOURCE, DESTINATION):  # the source's error first, as a user reads left to right
            exc = failures.get(side)
            if isinstance(exc, BlocksyncError):
                raise exc.on(side)
            if exc is not None:
                raise exc

    def _open(self, side: str, request: dict) -> dict:
        conn = self._sides[side].conn
        try:
            info = conn.call_json(wire.OP_OPEN, request)
        except RemoteError as exc:
            raise EndpointError(_where(conn, str(exc))).on(side) from None
        self._sides[side].info = info
        return info

    def _check(self, src: dict, dst: dict) -> None:
        """Refuse what would be unsafe or pointless; collect warnings for the rest."""
        src_conn = self._sides[SOURCE].conn
        dst_conn = self._sides[DESTINATION].conn
        boot = src_conn.hello.get("boot_id")
        same_host = src_conn.transport.host_key == dst_conn.transport.host_key or bool(
            boot and boot == dst_conn.hello.get("boot_id")
        )
        self._same_host = same_host
        if same_host and dst.get("exists") and _same_object(src, dst):
            raise UsageError(f"{self.source} and {self.destination} are the same file or device")
        in_use = dst.get("mounted") or dst.get("holders") or dst.get("swap")
        if in_use:
            usage = wire.usage_text(dst)
            if not self.options.dry_run:
                raise EndpointError(f"{self.destination} is in use ({usage}): refusing to write").on(
                    DESTINATION
                )
            self.warnings.append(f"{self.destination} is in use ({usage}): its contents may change")
        if src.get("mounted"):
            self.warnings.append(
                f"{self.source} is mounted: a file system in use can change while it is copied"
            )
        if not dst.get("exists"):
            self._dest_absent = True
            return
        if dst["kind"] == "block":
            if dst["size"] < src["size"]:
                raise EndpointError(
                    f"{self.destination} is too small: {dst['size']} bytes, "
                    f"the source has {src['size']}"
                ).on(DESTINATION)
            if dst["size"] > src["size"]:
                self.warnings.append(
                    f"{self.destination} is larger than the source; "
                    f"its last {dst['size'] - src['size']} bytes are left as they are"
                )
            if dst.get("readonly") and not self.options.dry_run:
                raise EndpointError(f"{self.destination} is a read-only device").on(DESTINATION)
        elif dst["size"] != src["size"]:
            verb = "grown" if dst["size"] < src["size"] else "truncated"
            self.warnings.append(
                f"{self.destination} is {dst['size']} bytes; it will be {verb} to {src['size']}"
            )

    def _negotiate(self) -> None:
        src = self._sides[SOURCE].conn.hello
        dst = self._sides[DESTINATION].conn.hello
        both = [a for a in src["algorithms"] if a in dst["algorithms"]]
        wanted = self.options.algorithm
        if wanted:
            if wanted not in both:
                raise UsageError(
                    f"hash {wanted!r} is not available on both ends (both have: {', '.join(both)})"
                )
            self.algorithm = wanted
        else:
            self.algorithm = both[0]
        self.sub_algorithm = "xxh64" if "xxh128" in both else self.algorithm
        codecs = [c for c in src["compressors"] if c in dst["compressors"]]
        choice = self.options.compress
        if choice == "auto":
            self.compression = next((c for c in FAST_CODECS if c in codecs), "none")
        elif choice != "none" and choice not in codecs:
            raise UsageError(f"compression {choice!r} is not available on both ends")
        else:
            self.compression = choice

    # -- run

    def run(self) -> Report:
        """Compare, and unless this is a dry run, write what differs; then flush and verify.

        Raises:
            Cancelled: after `cancel()`; every write sent before was completed and flushed.
            BlocksyncError: on a lost connection or a fatal I/O error.
        """
        if not self._prepared:
            self.prepare()
        # The clock covers connecting and running, not the wait for a confirmation between.
        self._started = time.monotonic() - self._prepare_seconds
        try:
            if not self.options.dry_run:
                self._open_for_writing()
            self.phase = "scanning"
            if self._can_compare_directly():
                self.method = "direct"
            self._loop()
            if not self.options.dry_run:
                self.phase = "flushing"
                self._flush()
                if self.options.verify and not self.cancelled:
                    self.phase = "verifying"
                    self._verify()
            if self.cancelled:
                raise Cancelled(self._cancel_message())
            self.phase = "done"
            return self.report()
        except Cancelled:
            self.phase = "cancelled"
            raise
        except BaseException:
            self.phase = "failed"
            raise
        finally:
            self._finished = time.monotonic()
            self.close()

    def _open_for_writing(self) -> None:
        dst = self._sides[DESTINATION].info
        request = {"path": self.destination.path, "write": True, "create": True}
        if dst.get("kind") != "block":
            request["truncate"] = self.size
        info = self._open(DESTINATION, request)
        if info["kind"] == "block" and info["size"] < self.size:
            raise EndpointError(f"{self.destination} is too small")

    def _can_compare_directly(self) -> bool:
        """Whether the destination's worker can read the source itself: same machine, and the
        path it opens there is the very file or device the source's worker opened."""
        if not (self.options.direct and self._same_host):
            return False
        if self._dest_absent and self.options.dry_run:
            return False  # nothing to open on the destination: the digest path reads one side
        try:
            peer = self._sides[DESTINATION].conn.call_json(
                wire.OP_OPEN, {"path": self.source.path, "peer": True}
            )
        except RemoteError:
            return False  # another user on that host, say: digests still work
        src = self._sides[SOURCE].info
        return bool(peer.get("exists")) and all(
            peer.get(key) == src.get(key) for key in ("identity", "size")
        )

    def _loop(self) -> None:
        """The scan/compare/transfer loop: runs until every chunk is settled."""
        opts = self.options
        total = self.chunk_map.total
        window_bytes = PAIR_WINDOW_BYTES if self.method == "direct" else HASH_WINDOW_BYTES
        window = max(1, window_bytes // opts.chunk_size)
        self._windows = -(-total // window) if total else 0
        self._window = window
        self._digests: dict[str, dict[int, tuple[int, bytes]]] = {SOURCE: {}, DESTINATION: {}}
        self._hash_rids: set[tuple[str, int]] = set()
        """(side, request id) of the HASH windows in flight: ids are per connection."""
        self._requests: dict[tuple[str, int], int] = {}
        self._todo: deque[int] = deque()
        self._inflight = 0
        self._max_inflight = max(2, INFLIGHT_BYTES // opts.chunk_size)
        self._settled = 0
        self._src_digest: dict[int, bytes] = {}
        """The source digest of every differing chunk, for --verify."""
        self._kind: dict[int, tuple[int, int]] = {}
        """Source and destination flags of a differing chunk until its pipeline starts."""
        self._pending_sub: dict[int, dict[str, bytes]] = {}
        """Dry run: the sub-block digests received so far per chunk."""
        self._whole: set[int] = set()
        """Chunks to send whole (re-sent after their source changed during the run)."""
        if self.method == "direct":
            self._sides[SOURCE].next_window = self._sides[SOURCE].windows_done = self._windows
        elif self._dest_absent:
            self._sides[DESTINATION].windows_done = self._windows  # nothing to hash: all zero
        self._pump()

    def _pump(self) -> None:
        """Issue work and handle replies until every chunk is settled and nothing is in flight."""
        total = self.chunk_map.total
        while True:
            if self._resume.is_set() and not self.cancelled:
                self._issue_hashes()
                self._issue_chunks()
            if self._settled >= total and self._inflight == 0:
                return
            if self.cancelled and self._inflight == 0:
                return
            try:
                frame = self._events.get(timeout=0.2)
            except queue.Empty:
                continue
            self._handle(frame)

    def _issue_hashes(self) -> None:
        if self.method == "direct":
            self._issue_pairs()
            return
        low = min(s.windows_done for s in self._sides.values())
        request = {"chunk_size": self.options.chunk_size, "size": self.size, "algo": self.algorithm}
        if self.sub_algorithm == "xxh64" and self.options.chunk_size > self.options.sub_block:
            # Cheap enough to take during the scan, for every chunk: a differing chunk is then
            # never read twice (SUBHASH answers from them, DELTA reads only differing pieces).
            request.update(sub_block=self.options.sub_block, sub_algo=self.sub_algorithm)
        for name, side in self._sides.items():
            if name == DESTINATION and self._dest_absent:
                continue
            while side.next_window < min(self._windows, low + WINDOWS_AHEAD):
                self._post_window(name, wire.OP_HASH, request)

    def _issue_pairs(self) -> None:
        """Direct mode: ask the destination's worker to compare (and fix) windows of chunks.
        A window in flight counts as in flight: a cancel waits for its writes."""
        side = self._sides[DESTINATION]
        request = {
            "chunk_size": self.options.chunk_size,
            "size": self.size,
            "sub_block": self.options.sub_block,
            "algo": self.algorithm,
            "write": not self.options.dry_run,
            "digests": self.options.verify,
        }
        while side.next_window < min(self._windows, side.windows_done + PAIR_WINDOWS_AHEAD):
            self._post_window(DESTINATION, wire.OP_PAIR, request)
            self._inflight += 1

    def _post_window(self, name: str, op: int, request: dict) -> None:
        """Send one side the request for its next window of chunks."""
        side = self._sides[name]
        first = side.next_window * self._window
        count = min(self._window, self.chunk_map.total - first)
        rid = side.conn.post(op, {**request, "ranges": [[first, count]]})
        self._hash_rids.add((name, rid))
        side.next_window += 1

    def _handle(self, frame: Frame) -> None:
        op = frame.op
        if op == EOF_OP:
            raise ConnectionLost(frame.payload.decode())
        if op == wire.OP_DIGESTS:
            self._on_digests(frame)
        elif op == wire.OP_DONE:
            if (frame.side, frame.rid) in self._hash_rids:
                self._hash_rids.discard((frame.side, frame.rid))
                self._sides[frame.side].windows_done += 1
                if self.method == "direct":
                    self._inflight -= 1
        elif op == wire.OP_PAIRED:
            self._on_paired(frame)
        elif op == wire.OP_SUBDIGESTS:
            self._on_subdigests(frame)
        elif op == wire.OP_DATA:
            self._on_data(frame)
        elif op == wire.OP_WRITTEN:
            for pos in range(0, len(frame.payload), wire.ACK_ITEM.size):
                index, status = wire.ACK_ITEM.unpack_from(frame.payload, pos)
                self._finish_chunk(index, State.WRITTEN if status == 0 else State.ERROR)
        elif op == wire.OP_ERROR:
            self._on_error(frame)

    def _on_digests(self, frame: Frame) -> None:
        first, count, dsize = wire.DIGESTS_HEAD.unpack_from(frame.payload)
        entry = 1 + dsize
        pos = wire.DIGESTS_HEAD.size
        mine = self._digests[frame.side]
        other = self._digests[DESTINATION if frame.side == SOURCE else SOURCE]
        side = self._sides[frame.side]
        chunk = self.options.chunk_size
        for index in range(first, first + count):
            flag = frame.payload[pos]
            # Only data chunks carry a digest; the field of a zero or failed chunk is padding.
            item = (flag, frame.payload[pos + 1 : pos + entry] if flag == wire.FLAG_DATA else b"")
            pos += entry
            side.scanned += min(chunk, self.size - index * chunk)
            if self._dest_absent:
                self._resolve(index, item, (wire.FLAG_ZERO, b""))
            elif index in other:
                theirs = other.pop(index)
                pair = (item, theirs) if frame.side == SOURCE else (theirs, item)
                self._resolve(index, *pair)
            else:
                mine[index] = item
        if self._dest_absent:
            self._sides[DESTINATION].scanned = side.scanned

    def _on_paired(self, frame: Frame) -> None:
        first, count, dsize = wire.DIGESTS_HEAD.unpack_from(frame.payload)
        pos = wire.DIGESTS_HEAD.size
        wrote = not self.options.dry_run
        states = {wire.PAIR_SAME: State.SAME, wire.PAIR_ZERO: State.ZERO, wire.PAIR_ERROR: State.ERROR}
        for index in range(first, first + count):
            outcome, flag, differing = wire.PAIRED_ITEM.unpack_from(frame.payload, pos)
            pos += wire.PAIRED_ITEM.size
            _, length = self._chunk_geometry(index)
            for side in self._sides.values():
                side.scanned += length
            if outcome == wire.PAIR_DIFFERS:
                self._bytes_differing += differing
                if wrote:
                    self._bytes_sent += differing
                    self._src_digest[index] = (
                        bytes(frame.payload[pos : pos + dsize]) if flag == wire.FLAG_DATA else b""
                    )
                self.chunk_map.set(index, State.WRITTEN if wrote else State.DIFFERS)
            else:
                self.chunk_map.set(index, states[outcome])
            pos += dsize
            self._settled += 1

    def _resolve(self, index: int, src: tuple[int, bytes], dst: tuple[int, bytes]) -> None:
        """Compare one chunk's two digests and decide what it needs."""
        if src[0] == wire.FLAG_ERROR or dst[0] == wire.FLAG_ERROR:
            which = self.source if src[0] == wire.FLAG_ERROR else self.destination
            self.errors.append(f"{which}: cannot read chunk {index}")
            self.chunk_map.set(index, State.ERROR)
            self._settled += 1
            return
        if src == dst:
            self.chunk_map.set(index, State.ZERO if src[0] == wire.FLAG_ZERO else State.SAME)
            self._settled += 1
            return
        self.chunk_map.set(index, State.DIFFERS)
        self._src_digest[index] = src[1] if src[0] == wire.FLAG_DATA else b""
        self._todo.append(index)
        self._kind[index] = (src[0], dst[0])

    def _issue_chunks(self) -> None:
        while self._todo and self._inflight < self._max_inflight:
            self._start_chunk(self._todo.popleft())

    def _chunk_geometry(self, index: int) -> tuple[int, int]:
        offset = index * self.options.chunk_size
        return offset, min(self.options.chunk_size, self.size - offset)

    def _chunk_request(self, index: int, mode: int, tail: bytes = b"") -> bytes:
        offset, length = self._chunk_geometry(index)
        codec = "" if self.compression == "none" else self.compression
        return wire.pack_chunk_request(
            index, offset, length, self.options.sub_block, mode, self.sub_algorithm, codec, tail
        )

    def _start_chunk(self, index: int) -> None:
        """Send the first request of a differing chunk's pipeline."""
        self._inflight += 1
        src_flag, dst_flag = self._kind.pop(index)
        src, dst = self._sides[SOURCE].conn, self._sides[DESTINATION].conn
        offset, length = self._chunk_geometry(index)
        if self.options.dry_run:
            # Both sides' sub-block digests tell how many bytes really differ.
            for side, conn in ((SOURCE, src), (DESTINATION, dst)):
                if side == DESTINATION and self._dest_absent:
                    continue
                rid = conn.post(wire.OP_SUBHASH, self._chunk_request(index, 0))
                self._requests[(side, rid)] = index
            self._pending_sub[index] = {}
            return
        if index in self._whole:
            rid = src.post(wire.OP_DELTA, self._chunk_request(index, wire.DELTA_WHOLE))
            self._requests[(SOURCE, rid)] = index
        elif src_flag == wire.FLAG_ZERO:
            self._bytes_differing += length  # at chunk granularity: it costs no wire bytes
            dst.post(wire.OP_ZERO, wire.ZERO_REQ.pack(index, length, offset))
        elif dst_flag == wire.FLAG_ZERO or length <= self.options.sub_block:
            mode = wire.DELTA_DEST_ZERO if dst_flag == wire.FLAG_ZERO else wire.DELTA_WHOLE
            rid = src.post(wire.OP_DELTA, self._chunk_request(index, mode))
            self._requests[(SOURCE, rid)] = index
        else:
            rid = dst.post(wire.OP_SUBHASH, self._chunk_request(index, 0))
            self._requests[(DESTINATION, rid)] = index

    def _on_subdigests(self, frame: Frame) -> None:
        index = self._requests.pop((frame.side, frame.rid))
        digests = frame.payload[wire.CHUNK_HEAD.size :]
        if not self.options.dry_run:
            rid = self._sides[SOURCE].conn.post(
                wire.OP_DELTA, self._chunk_request(index, wire.DELTA_SUBDIGESTS, digests)
            )
            self._requests[(SOURCE, rid)] = index
            return
        got = self._pending_sub[index]
        got[frame.side] = digests
        if self._dest_absent:
            got[DESTINATION] = b""
        if len(got) == 2:
            del self._pending_sub[index]
            self._bytes_differing += self._differing_bytes(index, got[SOURCE], got[DESTINATION])
            self._finish_chunk(index, State.DIFFERS)

    def _differing_bytes(self, index: int, src: bytes, dst: bytes) -> int:
        _, length = self._chunk_geometry(index)
        sub = self.options.sub_block
        starts = range(0, length, sub)
        differs = wire.differing_sub_blocks(src, dst, len(starts))
        return sum(min(sub, length - start) for start, flag in zip(starts, differs) if flag)

    def _on_data(self, frame: Frame) -> None:
        index = self._requests.pop((frame.side, frame.rid))
        offset, length = self._chunk_geometry(index)
        view = memoryview(frame.payload)
        _, _, count = wire.PIECES_HEAD.unpack_from(view)
        pos = wire.PIECES_HEAD.size
        for _ in range(count):
            _, _, raw_len, enc_len = wire.PIECE_HEAD.unpack_from(view, pos)
            pos += wire.PIECE_HEAD.size + enc_len
            self._bytes_differing += raw_len
        # Writes are acknowledged in batches (OP_WRITTEN), never one round trip each.
        self._sides[DESTINATION].conn.post(wire.OP_WRITE, wire.WRITE_HEAD.pack(offset) + frame.payload)
        self._bytes_sent += len(frame.payload)

    def _on_error(self, frame: Frame) -> None:
        error = wire.decode_json(frame.payload)
        message = _where(self._sides[frame.side].conn, error["message"])
        if (frame.side, frame.rid) in self._hash_rids:
            if error.get("chunk", -1) < 0:
                raise RemoteError(message)
            self.errors.append(message)  # one chunk of a direct compare: its entry settles it
            return
        index = self._requests.pop((frame.side, frame.rid), error.get("chunk", -1))
        self.errors.append(message)
        if frame.side == DESTINATION and error.get("chunk", -1) >= 0:
            return  # a failed write is also acknowledged with its errno: settled there
        if index >= 0:
            self._pending_sub.pop(index, None)
            self._finish_chunk(index, State.ERROR)

    def _finish_chunk(self, index: int, state: State) -> None:
        self.chunk_map.set(index, state)
        self._inflight -= 1
        self._settled += 1

    def _flush(self) -> None:
        try:
            self._sides[DESTINATION].conn.call(wire.OP_FLUSH, b"", timeout=600)
        except RemoteError as exc:
            raise RemoteError(_where(self._sides[DESTINATION].conn, f"flush failed: {exc}"))

    def _digests_now(self, side: str, indexes: list[int], drop_cache: bool) -> dict[int, bytes]:
        """Hash chunks on one side now (nothing else is in flight); a zero chunk's digest is b""."""
        conn = self._sides[side].conn
        ranges = [list(r) for r in wire.spans(_flags(indexes))]
        rid = conn.post(
            wire.OP_HASH,
            {
                "ranges": ranges,
                "chunk_size": self.options.chunk_size,
                "size": self.size,
                "algo": self.algorithm,
                "drop_cache": drop_cache,
            },
        )
        digests: dict[int, bytes] = {}
        while True:
            frame = self._events.get(timeout=600)
            if frame.op == EOF_OP:
                raise ConnectionLost(frame.payload.decode())
            if (frame.side, frame.rid) != (side, rid):
                continue
            if frame.op == wire.OP_DONE:
                return digests
            if frame.op == wire.OP_ERROR:
                raise RemoteError(_where(conn, wire.decode_json(frame.payload)["message"]))
            first, count, dsize = wire.DIGESTS_HEAD.unpack_from(frame.payload)
            pos = wire.DIGESTS_HEAD.size
            for index in range(first, first + count):
                flag = frame.payload[pos]
                digests[index] = frame.payload[pos + 1 : pos + 1 + dsize] if flag == wire.FLAG_DATA else b""
                pos += 1 + dsize

    def _verify(self) -> None:
        """Re-read every written chunk from the destination's disk and compare digests.

        A chunk that does not match is hashed again on the source: if the source changed while
        the sync ran, the chunk is sent again, whole, and checked once more (state UPDATED);
        otherwise the write itself failed (state ERROR).
        """
        written = [i for i in self._src_digest if self.chunk_map.get(i) == State.WRITTEN]
        on_disk = self._digests_now(DESTINATION, written, drop_cache=True) if written else {}
        bad = [i for i in written if on_disk.get(i) != self._src_digest[i]]
        source_now = self._digests_now(SOURCE, bad, drop_cache=False) if bad else {}
        moved = [i for i in bad if source_now[i] != self._src_digest[i]]
        for index in sorted(set(bad) - set(moved)):
            self.chunk_map.set(index, State.ERROR)
            self.errors.append(f"{self.destination}: chunk {index} failed verification")
        if moved:
            self._resend(moved, source_now)
        self._verified = not any("failed verification" in e for e in self.errors)

    def _resend(self, indexes: list[int], digests: dict[int, bytes]) -> None:
        """Send chunks whose source changed during the run again, whole, then verify them."""
        for index in indexes:
            self._src_digest[index] = digests[index]
            self._whole.add(index)
            self._kind[index] = (wire.FLAG_DATA, wire.FLAG_DATA)
            self.chunk_map.set(index, State.DIFFERS)
            self._todo.append(index)
        self._settled -= len(indexes)
        self._pump()
        self._flush()
        on_disk = self._digests_now(DESTINATION, indexes, drop_cache=True)
        for index in indexes:
            if on_disk[index] == self._src_digest[index]:
                self.chunk_map.set(index, State.UPDATED)
            else:  # the source keeps changing: it must be quiesced to be copied
                self.chunk_map.set(index, State.ERROR)
                self.errors.append(
                    f"{self.source}: chunk {index} changed during the sync and again while it was "
                    "sent again (failed verification)"
                )

    # -- results

    def _cancel_message(self) -> str:
        written = self.chunk_map.count(State.WRITTEN)
        if self.options.dry_run:
            return "compare cancelled: the destination was not touched"
        return (
            f"sync cancelled after writing {written} chunks: the destination is partly updated "
            "(every write sent was completed and flushed); run the sync again to finish it"
        )

    def report(self) -> Report:
        """The result of the run so far."""
        p = self.progress()
        differing = sum(
            p.counts[s] for s in (State.DIFFERS, State.WRITTEN, State.ERROR, State.UPDATED)
        )
        if self.errors or self.phase == "failed":
            outcome = "failed"
        elif self.phase == "cancelled":
            outcome = "cancelled"
        elif self.options.dry_run:
            outcome = "differs" if differing else "identical"
        else:
            outcome = "synced" if differing else "identical"
        run_count, largest = Report.runs_of(self.chunk_map, self.options.chunk_size, self.size)
        return Report(
            source=str(self.source),
            destination=str(self.destination),
            mode="compare" if self.options.dry_run else "sync",
            outcome=outcome,
            size=self.size,
            chunk_size=self.options.chunk_size,
            sub_block_size=self.options.sub_block,
            method=self.method,
            algorithm=self.algorithm,
            compression=self.compression,
            total_chunks=self.chunk_map.total,
            chunks=Report.state_counts(self.chunk_map),
            chunks_differing=differing,
            bytes_differing=p.bytes_differing,
            bytes_sent=p.bytes_sent,
            wire_bytes=p.wire_bytes,
            seconds=round(p.elapsed, 3),
            verified=getattr(self, "_verified", None) if self.options.verify else None,
            change_runs=run_count,
            largest_runs=largest,
            errors=list(self.errors),
            warnings=list(self.warnings),
        )

    def close(self) -> None:
        """Stop both workers (the destination finishes and flushes its writes first)."""
        for side in list(self._sides.values()):
            try:
                side.conn.close()
            except BlocksyncError:
                pass


def _where(conn: Connection, message: str) -> str:
    label = conn.transport.label
    return message if label == "local" or message.startswith(label) else f"{label}: {message}"


def _same_object(a: dict, b: dict) -> bool:
    """Whether two opened endpoints are the same file (inode) or the same device (rdev)."""
    ia, ib = a.get("identity"), b.get("identity")
    if not ia or not ib:
        return False
    if a["kind"] == "block" and b["kind"] == "block":
        return ia[2] == ib[2]
    return ia[0] == ib[0] and ia[1] == ib[1]


def _flags(indexes: list[int]) -> list[bool]:
    """A flag per chunk up to the last of `indexes`, true for those in it (for wire.spans)."""
    flags = [False] * (max(indexes) + 1 if indexes else 0)
    for index in indexes:
        flags[index] = True
    return flags
