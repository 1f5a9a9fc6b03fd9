"""Provides SyncEngine: make a destination equal to a source by rewriting only what differs.

One loop on the calling thread drives two workers. Both hash ahead in windows and stream digest
batches; chunks are compared as soon as both digests are in; a differing chunk goes through a
pipeline (destination sub-block digests, then the source's differing pieces, then a write) with
many chunks in flight at once. Nothing waits for one chunk before asking for the next.
"""

from __future__ import annotations

import queue
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from blocksync_tui.endpoint import Endpoint
from blocksync_tui.engine import worker as wire
from blocksync_tui.engine.chunkmap import ChunkMap, State
from blocksync_tui.engine.connection import EOF_OP, Connection, Frame
from blocksync_tui.engine.errors import (
    BlocksyncError,
    Cancelled,
    ConnectionLost,
    EndpointError,
    ProtocolError,
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
BACKLOG_WINDOWS = 8
"""No new window is scanned while this many windows of differing chunks wait for the transfer:
a full copy of a huge device keeps a bounded backlog (and the source's kept sub-digests of
what waits stay in its bounded cache), not a record per chunk of the whole device."""
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
PEER_TIMEOUT = 120.0
"""A worker that owes an answer and says nothing for this long ends the run. A scan reports at
least every 50 ms while it reads, so only a hung disk or a dead link stays this quiet."""
CANCEL_TIMEOUT = 30.0
"""After a cancel, the writes in flight get this long to be acknowledged."""
FLUSH_TIMEOUT = 600.0
"""An fsync of a slow disk full of dirty pages can take minutes."""
VERIFY_RUNS_PER_REQUEST = 4096
"""Runs of chunks per verify request: keeps each request far below the frame limit."""

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
    peer_timeout: float = PEER_TIMEOUT
    """Seconds a worker that owes an answer may stay silent before the run ends."""

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
    window_first: dict[int, int] = field(default_factory=dict)
    """The first chunk of each window in flight, by request id."""
    window_got: dict[int, int] = field(default_factory=dict)
    """How many chunks of each window in flight have been answered, by request id."""


@dataclass
class _Job:
    """One differing chunk on its way through the pipeline: sub-digests, pieces, write."""

    index: int
    src_flag: int
    dst_flag: int
    whole: bool = False
    """Send it whole (its source changed during the run)."""
    writing: bool = False
    """Its write (or zeroing) was sent: the destination's acknowledgement settles it."""
    subs: dict[str, bytes] = field(default_factory=dict)
    """Dry run: each side's sub-block digests, as they arrive."""


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
        self.size_difference = 0
        """How much longer (or, negative, shorter) a destination file was than the source: a
        difference in itself, which a sync removes by truncating or growing the file."""
        self._digest_size = 0
        self._verified: bool | None = None
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
            for side in self._sides.values():  # e.g. a host key accepted under StrictHostKeyChecking no
                self.warnings.extend(getattr(side.conn.transport, "warnings", ()))
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
            info = conn.call_json(wire.OP_OPEN, request, timeout=self.options.peer_timeout)
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
        if same_host and dst.get("exists") and _overlap(src, dst):
            raise UsageError(
                f"{self.source} and {self.destination} overlap (one is a partition, holder or "
                "backing file of the other): refusing"
            )
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
            self.size_difference = dst["size"] - src["size"]
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
        self._digest_size = len(wire.new_hash(self.algorithm)().digest())
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
        """Reopen the destination for writing: the very object that was checked, or, if it was
        absent, a new file that must still be absent (what appeared meanwhile was never
        compared)."""
        checked = self._sides[DESTINATION].info
        request: dict = {
            "path": self.destination.path,
            "write": True,
            "chunk_size": self.options.chunk_size,
            "sync_size": self.size,
        }
        if self._dest_absent:
            request["create"] = True
        else:
            request["expect"] = {k: checked.get(k) for k in ("kind", "size", "identity", "mtime_ns")}
        if checked.get("kind") != "block":
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
        """(side, request id) of the HASH or PAIR windows in flight: ids are per connection."""
        self._todo: deque[_Job] = deque()
        self._jobs: dict[int, _Job] = {}
        """The differing chunks in flight, by index: one record each."""
        self._by_request: dict[tuple[str, int], _Job] = {}
        """The job each outstanding SUBHASH or DELTA answers to, by (side, request id)."""
        self._max_inflight = max(2, INFLIGHT_BYTES // opts.chunk_size)
        self._settled = 0
        self._verify_digests: dict[int, bytes] = {}
        """With --verify only: the source digest of each chunk written (b"" for zeros)."""
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
            if self.cancelled:  # a direct compare's window writes as it goes: wait for it
                if not self._jobs and not (self.method == "direct" and self._hash_rids):
                    return
            elif self._settled >= total and not self._jobs and not self._hash_rids:
                return
            try:
                frame = self._events.get(timeout=0.2)
            except queue.Empty:
                self._check_silence()
                continue
            self._handle(frame)

    def _check_silence(self) -> None:
        """End the run, naming the side, when a worker that owes an answer has said nothing for
        `peer_timeout` seconds (after a cancel, for at most CANCEL_TIMEOUT)."""
        limit = self.options.peer_timeout
        if self.cancelled:
            limit = min(limit, CANCEL_TIMEOUT)
        for name in self._sides:
            if self._owes(name):
                self._end_if_silent(name, limit)

    def _end_if_silent(self, name: str, limit: float) -> None:
        """Give up on a side that has said nothing for `limit` seconds, in one line."""
        conn = self._sides[name].conn
        if time.monotonic() - conn.last_heard > limit:
            reason = _where(conn, f"the {name} stopped answering ({limit:.0f} s without a reply)")
            conn.abandon(reason)
            raise ConnectionLost(reason).on(name)

    def _owes(self, name: str) -> bool:
        """Whether a side has a request outstanding."""
        if not self._resume.is_set() and not self.cancelled:
            return False  # paused: nothing new was asked, and answers may trickle in slowly
        if any(side == name for side, _ in self._hash_rids):
            return True
        if any(side == name for side, _ in self._by_request):
            return True
        return name == DESTINATION and any(job.writing for job in self._jobs.values())

    def _issue_hashes(self) -> None:
        if self.method == "direct":
            self._issue_pairs()
            return
        if len(self._todo) >= BACKLOG_WINDOWS * self._window:
            return  # the transfer lags: scan no further until it catches up
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

    def _post_window(self, name: str, op: int, request: dict) -> None:
        """Send one side the request for its next window of chunks."""
        side = self._sides[name]
        first = side.next_window * self._window
        count = min(self._window, self.chunk_map.total - first)
        rid = side.conn.post(op, {**request, "ranges": [[first, count]]})
        self._hash_rids.add((name, rid))
        side.window_first[rid] = first
        side.next_window += 1

    def _handle(self, frame: Frame) -> None:
        """Act on one frame. Anything a worker sends that we did not ask for, or that does not
        parse, ends the run as a protocol error: it is never guessed at."""
        op = frame.op
        if op == EOF_OP:
            raise ConnectionLost(frame.payload.decode()).on(frame.side)
        handler = self._handlers.get(op)
        if handler is None:
            raise self._protocol_error(frame, "an unexpected frame")
        try:
            handler(self, frame)
        except BlocksyncError:
            raise
        except (ValueError, KeyError, IndexError, TypeError, struct.error) as exc:
            raise self._protocol_error(frame, f"a malformed frame ({exc})") from None

    def _protocol_error(self, frame: Frame, what: str) -> ProtocolError:
        name = wire.OP_NAMES.get(frame.op, str(frame.op))
        conn = self._sides[frame.side].conn
        return ProtocolError(
            _where(conn, f"the {frame.side}'s worker sent {what}: {name} for request {frame.rid}")
        ).on(frame.side)

    def _on_done(self, frame: Frame) -> None:
        key = (frame.side, frame.rid)
        if key not in self._hash_rids:
            raise self._protocol_error(frame, "an unexpected end of a request")
        self._hash_rids.discard(key)
        side = self._sides[frame.side]
        first = side.window_first.pop(frame.rid)
        count = min(self._window, self.chunk_map.total - first)
        if side.window_got.pop(frame.rid, 0) != count:
            raise self._protocol_error(frame, "an incomplete window of chunks")
        side.windows_done += 1

    def _window_entries(self, frame: Frame, entry_size: int) -> tuple[int, int, int]:
        """(first, count, digest size) of a DIGESTS or PAIRED batch, checked: it belongs to a
        window in flight, continues it where the last batch ended, and has its stated length."""
        first, count, dsize = wire.DIGESTS_HEAD.unpack_from(frame.payload)
        side = self._sides[frame.side]
        key = (frame.side, frame.rid)
        if key not in self._hash_rids:
            raise self._protocol_error(frame, "chunk states nobody asked for")
        expected = side.window_first[frame.rid] + side.window_got.get(frame.rid, 0)
        window_end = side.window_first[frame.rid] + self._window
        size = wire.DIGESTS_HEAD.size + count * (entry_size + dsize)
        if first != expected or first + count > min(window_end, self.chunk_map.total):
            raise self._protocol_error(frame, f"chunks {first}..{first + count} out of order")
        if len(frame.payload) != size or dsize > 64:
            raise self._protocol_error(frame, "a batch of the wrong length")
        side.window_got[frame.rid] = side.window_got.get(frame.rid, 0) + count
        return first, count, dsize

    def _on_digests(self, frame: Frame) -> None:
        first, count, dsize = self._window_entries(frame, 1)
        if dsize != self._digest_size:
            raise self._protocol_error(frame, f"{dsize}-byte digests for {self.algorithm}")
        entry = 1 + dsize
        pos = wire.DIGESTS_HEAD.size
        mine = self._digests[frame.side]
        other = self._digests[DESTINATION if frame.side == SOURCE else SOURCE]
        side = self._sides[frame.side]
        for index in range(first, first + count):
            flag = frame.payload[pos]
            if flag not in (wire.FLAG_DATA, wire.FLAG_ZERO, wire.FLAG_ERROR):
                raise self._protocol_error(frame, f"an unknown chunk flag {flag}")
            # Only data chunks carry a digest; the field of a zero or failed chunk is padding.
            item = (flag, frame.payload[pos + 1 : pos + entry] if flag == wire.FLAG_DATA else b"")
            pos += entry
            side.scanned += self._chunk_geometry(index)[1]
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
        if frame.side != DESTINATION:
            raise self._protocol_error(frame, "a direct compare from the source")
        first, count, dsize = self._window_entries(frame, wire.PAIRED_ITEM.size)
        pos = wire.DIGESTS_HEAD.size
        wrote = not self.options.dry_run
        states = {wire.PAIR_SAME: State.SAME, wire.PAIR_ZERO: State.ZERO, wire.PAIR_ERROR: State.ERROR}
        for index in range(first, first + count):
            outcome, flag, differing = wire.PAIRED_ITEM.unpack_from(frame.payload, pos)
            pos += wire.PAIRED_ITEM.size
            _, length = self._chunk_geometry(index)
            if differing > length or (outcome != wire.PAIR_DIFFERS and outcome not in states):
                raise self._protocol_error(frame, f"an impossible outcome for chunk {index}")
            for side in self._sides.values():
                side.scanned += length
            if outcome == wire.PAIR_DIFFERS:
                self._bytes_differing += differing
                if wrote:
                    self._bytes_sent += differing
                    if self.options.verify:
                        digest = bytes(frame.payload[pos : pos + dsize])
                        self._verify_digests[index] = digest if flag == wire.FLAG_DATA else b""
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
        if self.options.verify and not self.options.dry_run:
            self._verify_digests[index] = src[1] if src[0] == wire.FLAG_DATA else b""
        self._todo.append(_Job(index, src[0], dst[0]))

    def _issue_chunks(self) -> None:
        while self._todo and len(self._jobs) < self._max_inflight:
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

    def _ask(self, side: str, op: int, job: _Job, payload: bytes) -> None:
        """Send one request of a job's pipeline and remember whose answer it awaits."""
        rid = self._sides[side].conn.post(op, payload)
        self._by_request[(side, rid)] = job

    def _start_chunk(self, job: _Job) -> None:
        """Send the first request of a differing chunk's pipeline."""
        self._jobs[job.index] = job
        index = job.index
        offset, length = self._chunk_geometry(index)
        if self.options.dry_run:
            # Both sides' sub-block digests tell how many bytes really differ.
            for side in (SOURCE, DESTINATION):
                if side == DESTINATION and self._dest_absent:
                    job.subs[DESTINATION] = b""
                    continue
                self._ask(side, wire.OP_SUBHASH, job, self._chunk_request(index, 0))
        elif job.whole:
            self._ask(SOURCE, wire.OP_DELTA, job, self._chunk_request(index, wire.DELTA_WHOLE))
        elif job.src_flag == wire.FLAG_ZERO:
            self._bytes_differing += length  # at chunk granularity: it costs no wire bytes
            job.writing = True
            self._sides[DESTINATION].conn.post(wire.OP_ZERO, wire.ZERO_REQ.pack(index, length, offset))
        elif job.dst_flag == wire.FLAG_ZERO or length <= self.options.sub_block:
            mode = wire.DELTA_DEST_ZERO if job.dst_flag == wire.FLAG_ZERO else wire.DELTA_WHOLE
            self._ask(SOURCE, wire.OP_DELTA, job, self._chunk_request(index, mode))
        else:
            self._ask(DESTINATION, wire.OP_SUBHASH, job, self._chunk_request(index, 0))

    def _answering(self, frame: Frame) -> _Job:
        """The job a SUBDIGESTS or DATA frame answers; a stray one is a protocol error."""
        job = self._by_request.pop((frame.side, frame.rid), None)
        if job is None:
            raise self._protocol_error(frame, "an answer to no request")
        return job

    def _on_subdigests(self, frame: Frame) -> None:
        job = self._answering(frame)
        index, length = wire.CHUNK_HEAD.unpack_from(frame.payload)
        digests = frame.payload[wire.CHUNK_HEAD.size :]
        blocks = -(-self._chunk_geometry(job.index)[1] // self.options.sub_block)
        if (index, length) != (job.index, self._chunk_geometry(job.index)[1]) or len(
            digests
        ) != blocks * wire.SUB_DIGEST_SIZE:
            raise self._protocol_error(frame, f"sub-digests that are not those of chunk {job.index}")
        if not self.options.dry_run:
            request = self._chunk_request(job.index, wire.DELTA_SUBDIGESTS, digests)
            self._ask(SOURCE, wire.OP_DELTA, job, request)
            return
        job.subs[frame.side] = digests
        if len(job.subs) == 2:
            self._bytes_differing += self._differing_bytes(
                job.index, job.subs[SOURCE], job.subs[DESTINATION]
            )
            self._finish_chunk(job, State.DIFFERS)

    def _differing_bytes(self, index: int, src: bytes, dst: bytes) -> int:
        _, length = self._chunk_geometry(index)
        sub = self.options.sub_block
        starts = range(0, length, sub)
        differs = wire.differing_sub_blocks(src, dst, len(starts))
        return sum(min(sub, length - start) for start, flag in zip(starts, differs) if flag)

    def _on_data(self, frame: Frame) -> None:
        """Check the source's pieces against our own geometry of the chunk asked for, then
        relay them to the destination unchanged (it checks them again against its own)."""
        if frame.side != SOURCE:
            raise self._protocol_error(frame, "chunk data from the destination")
        job = self._answering(frame)
        _, length = self._chunk_geometry(job.index)
        try:
            self._bytes_differing += wire.raw_bytes(frame.payload, job.index, length)
        except ValueError as exc:
            raise self._protocol_error(frame, f"pieces that do not fit chunk {job.index} ({exc})") from None
        # Writes are acknowledged in batches (OP_WRITTEN), never one round trip each.
        job.writing = True
        self._sides[DESTINATION].conn.post(wire.OP_WRITE, frame.payload)
        self._bytes_sent += len(frame.payload)

    def _on_written(self, frame: Frame) -> None:
        if frame.side != DESTINATION or len(frame.payload) % wire.ACK_ITEM.size:
            raise self._protocol_error(frame, "a malformed acknowledgement")
        for pos in range(0, len(frame.payload), wire.ACK_ITEM.size):
            index, status = wire.ACK_ITEM.unpack_from(frame.payload, pos)
            job = self._jobs.get(index)
            if job is None or not job.writing:
                raise self._protocol_error(frame, f"an acknowledgement of chunk {index}, never sent")
            self._finish_chunk(job, State.WRITTEN if status == 0 else State.ERROR)

    def _on_error(self, frame: Frame) -> None:
        error = wire.decode_json(frame.payload)
        conn = self._sides[frame.side].conn
        message = _where(conn, str(error["message"]))
        chunk, code = int(error.get("chunk", -1)), int(error.get("errno", 0))
        if frame.side == DESTINATION and code in wire.FATAL_ERRNOS and not self.options.dry_run:
            written = int(error.get("written", 0))
            raise EndpointError(
                f"{message} after {written:,} bytes were written: the sync stopped "
                "(the destination is partly updated; run it again once this is fixed)"
            ).on(DESTINATION)
        if (frame.side, frame.rid) in self._hash_rids:
            if chunk < 0:
                raise RemoteError(message).on(frame.side)
            self.errors.append(message)  # one chunk of a direct compare: its entry settles it
            return
        job = self._by_request.pop((frame.side, frame.rid), None)
        if job is not None:
            self.errors.append(message)
            self._finish_chunk(job, State.ERROR)
            return
        writing = self._jobs.get(chunk)
        if frame.side == DESTINATION and writing is not None and writing.writing:
            self.errors.append(message)  # the write's acknowledgement carries its errno
            return
        raise self._protocol_error(frame, f"an error for no request ({message})")

    _handlers: dict[int, Callable[[SyncEngine, Frame], None]] = {
        wire.OP_DIGESTS: _on_digests,
        wire.OP_DONE: _on_done,
        wire.OP_PAIRED: _on_paired,
        wire.OP_SUBDIGESTS: _on_subdigests,
        wire.OP_DATA: _on_data,
        wire.OP_WRITTEN: _on_written,
        wire.OP_ERROR: _on_error,
    }

    def _finish_chunk(self, job: _Job, state: State) -> None:
        self.chunk_map.set(job.index, state)
        del self._jobs[job.index]
        self._settled += 1

    def _flush(self) -> None:
        conn = self._sides[DESTINATION].conn
        try:
            conn.call(wire.OP_FLUSH, b"", timeout=FLUSH_TIMEOUT)
        except RemoteError as exc:
            raise RemoteError(_where(conn, f"flush failed: {exc}")).on(DESTINATION)

    def _digests_now(self, side: str, indexes: list[int], drop_cache: bool) -> dict[int, bytes]:
        """Hash chunks on one side now (nothing else is in flight); a zero chunk's digest is b"".
        Requests go in batches of runs, so no frame outgrows the limit however many chunks."""
        conn = self._sides[side].conn
        runs = _runs(sorted(indexes))
        digests: dict[int, bytes] = {}
        for start in range(0, len(runs), VERIFY_RUNS_PER_REQUEST):
            batch = runs[start : start + VERIFY_RUNS_PER_REQUEST]
            request = {
                "ranges": batch,
                "chunk_size": self.options.chunk_size,
                "size": self.size,
                "algo": self.algorithm,
                "drop_cache": drop_cache and start == 0,
            }
            self._collect_digests(side, conn.post(wire.OP_HASH, request), digests)
        return digests

    def _collect_digests(self, side: str, rid: int, digests: dict[int, bytes]) -> None:
        conn = self._sides[side].conn
        while True:
            try:
                frame = self._events.get(timeout=0.2)
            except queue.Empty:
                self._end_if_silent(side, self.options.peer_timeout)
                continue
            if frame.op == EOF_OP:
                raise ConnectionLost(frame.payload.decode()).on(frame.side)
            if (frame.side, frame.rid) != (side, rid):
                if frame.op == wire.OP_WRITTEN:
                    continue  # acknowledgements of the flushed writes, already counted
                raise self._protocol_error(frame, "a frame while verifying")
            if frame.op == wire.OP_DONE:
                return
            if frame.op == wire.OP_ERROR:
                raise RemoteError(_where(conn, wire.decode_json(frame.payload)["message"])).on(side)
            first, count, dsize = wire.DIGESTS_HEAD.unpack_from(frame.payload)
            pos = wire.DIGESTS_HEAD.size
            for index in range(first, first + count):
                flag = frame.payload[pos]
                digest = frame.payload[pos + 1 : pos + 1 + dsize]
                digests[index] = digest if flag == wire.FLAG_DATA else b"" if flag == wire.FLAG_ZERO else None
                pos += 1 + dsize

    def _verify(self) -> None:
        """Re-read every written chunk from the destination's disk and compare digests.

        A chunk that does not match is hashed again on the source: if the source changed while
        the sync ran, the chunk is sent again, whole, and checked once more (state UPDATED);
        otherwise the write itself failed (state ERROR). Verified means: every chunk written
        was read back equal, and no chunk failed.
        """
        written = [i for i in self._verify_digests if self.chunk_map.get(i) == State.WRITTEN]
        on_disk = self._digests_now(DESTINATION, written, drop_cache=True) if written else {}
        bad = [i for i in written if on_disk.get(i) != self._verify_digests[i]]
        source_now = self._digests_now(SOURCE, bad, drop_cache=False) if bad else {}
        moved = [i for i in bad if source_now.get(i) not in (None, self._verify_digests[i])]
        for index in sorted(set(bad) - set(moved)):
            self.chunk_map.set(index, State.ERROR)
            self.errors.append(f"{self.destination}: chunk {index} failed verification")
        if moved:
            self._resend(moved, source_now)
        self._verified = not self.errors and self.chunk_map.count(State.ERROR) == 0

    def _resend(self, indexes: list[int], digests: dict[int, bytes | None]) -> None:
        """Send chunks whose source changed during the run again, whole, then verify them."""
        for index in indexes:
            self._verify_digests[index] = digests[index] or b""
            self.chunk_map.set(index, State.DIFFERS)
            self._todo.append(_Job(index, wire.FLAG_DATA, wire.FLAG_DATA, whole=True))
        self._settled -= len(indexes)
        self._pump()
        self._flush()
        on_disk = self._digests_now(DESTINATION, indexes, drop_cache=True)
        for index in indexes:
            if self.chunk_map.get(index) == State.ERROR:
                continue  # the resend itself failed: its error is recorded
            if on_disk.get(index) == self._verify_digests[index]:
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
        changed = bool(differing or self.size_difference)
        if self.errors or self.phase == "failed":
            outcome = "failed"
        elif self.phase == "cancelled":
            outcome = "cancelled"
        elif self.options.dry_run:
            outcome = "differs" if changed else "identical"
        else:
            outcome = "synced" if changed else "identical"
        verified = None
        if self.options.verify and not self.options.dry_run:
            verified = bool(self._verified) and outcome in ("synced", "identical")
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
            verified=verified,
            change_runs=run_count,
            largest_runs=largest,
            errors=list(self.errors),
            warnings=list(self.warnings),
            destination_size=self.size + self.size_difference,
            size_difference=self.size_difference,
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


def _overlap(a: dict, b: dict) -> bool:
    """Whether two opened endpoints on one host share storage without being the same object:
    a partition and its disk, a device-mapper device and what it is built on (each worker
    lists its device's stack, by "major:minor"), or a loop device and its backing file."""
    if a.get("kind") == b.get("kind") == "block":
        return a.get("devnum") in (b.get("stack") or []) or b.get("devnum") in (a.get("stack") or [])
    if {a.get("kind"), b.get("kind")} == {"file", "block"}:
        file, device = (a, b) if a.get("kind") == "file" else (b, a)
        ident = file.get("identity") or [None, None]
        return [ident[0], ident[1]] in (device.get("backing") or [])
    return False


def _same_object(a: dict, b: dict) -> bool:
    """Whether two opened endpoints are the same file (inode) or the same device (rdev)."""
    ia, ib = a.get("identity"), b.get("identity")
    if not ia or not ib:
        return False
    if a["kind"] == "block" and b["kind"] == "block":
        return ia[2] == ib[2]
    return ia[0] == ib[0] and ia[1] == ib[1]


def _runs(indexes: list[int]) -> list[list[int]]:
    """[first, count] runs of consecutive numbers in a sorted list."""
    runs: list[list[int]] = []
    for index in indexes:
        if runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1][1] += 1
        else:
            runs.append([index, 1])
    return runs
