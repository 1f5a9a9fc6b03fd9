"""Provides Transfer: the scan, compare and write pipeline between two started workers.

Both workers hash ahead in windows and stream digest batches; a chunk is compared as soon as
both digests are in; a differing chunk becomes a `_Job` that goes through its own pipeline
(destination sub-block digests, then the source's differing pieces, then a write) with many
jobs in flight at once. Nothing waits for one chunk before asking for the next. Every frame a
worker sends is checked against what was asked of it and against our own chunk geometry; what
does not fit ends the run as a protocol error, never a guess.
"""

from __future__ import annotations

import queue
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from blocksync_tui.engine.worker import protocol as wire
from blocksync_tui.engine.cache_sample import ZEROS, CacheSample
from blocksync_tui.engine.chunkmap import ChunkMap, State
from blocksync_tui.engine.differences import Differences
from blocksync_tui.engine.connection import EOF_OP, Connection, Frame, end_if_silent, protocol_error, where
from blocksync_tui.engine.digest_cache import DigestCache, Record
from blocksync_tui.engine.errors import BlocksyncError, ConnectionLost, EndpointError, ProtocolError, RemoteError
from blocksync_tui.engine.options import SyncOptions
from blocksync_tui.engine.preflight import DESTINATION, SOURCE, Negotiated
from blocksync_tui.engine.prior import Prior, Scope
from blocksync_tui.engine.regions import DiffTally
from blocksync_tui.engine.windows import Geometry, Side, Window


HASH_WINDOW_BYTES = 32 << 20
"""Chunks are requested for hashing in windows of this size..."""
HASH_WINDOW_CHUNKS = 256
"""...and at least this many chunks: a window costs a request, a round trip and the two sides
meeting, which a scan of holes (no read at all) would otherwise pay every 32 chunks."""
WINDOWS_AHEAD = 4
"""...and one side may run this many windows ahead of the other (bounds memory)."""
BACKLOG_WINDOWS = 8
"""No new window is scanned while this many windows of differing chunks wait for the transfer:
a full copy of a huge device keeps a bounded backlog (and the source's kept sub-digests of
what waits stay in its bounded cache), not a record per chunk of the whole device."""
PAIR_WINDOW_BYTES = 8 << 20
"""A direct compare writes as it goes: smaller windows, fewer ahead, so a cancel or a pause
takes effect soon."""
PAIR_WINDOWS_AHEAD = 2
PAIR_WINDOW_CHUNKS = 32
"""At least this many chunks a window, for the same reason as HASH_WINDOW_CHUNKS; a cancel
then waits for at most 64 chunks' writes (64 MiB at the default chunk size)."""
STREAM_WINDOW_BYTES = 16 << 20
"""A stream sends whole chunks: windows small enough that a cancel or pause acts soon..."""
STREAM_WINDOWS_AHEAD = 2
"""...and two in flight, so the source reads the next while the last one's frames travel."""
STREAM_UNACKED_BYTES = 64 << 20
"""No new window is streamed while this much data awaits the destination's acknowledgement:
the controller's queues stay bounded however slow the destination's disk or link."""
INFLIGHT_BYTES = 32 << 20
"""At most this much chunk data is between the source and a completed write."""
JOB_SECONDS = 0.0002
"""About what one differing chunk's delta costs the source's worker: a link's round trip over
this is how many chunks it takes to keep the worker busy while answers travel..."""
MAX_JOBS = 1024
"""...up to this many (at 50 ms, 250)."""
CANCEL_TIMEOUT = 30.0
"""After a cancel, the writes in flight get this long to be acknowledged."""
POLL_SECONDS = 0.2
"""How often a wait for frames wakes to check for silence, a pause or a cancel."""
CHECKPOINT_SECONDS = 5.0
"""How often a sync asks the destination to flush, so that what it settled so far can be
recorded as done (engine.resume): only chunks on disk may be called done."""
MAX_DIGEST_SIZE = 64


def content(flag: int) -> int:
    """A chunk's flag as its bytes go: a hole is zeros."""
    return wire.FLAG_ZERO if flag == wire.FLAG_HOLE else flag


class Control:
    """Cancel and pause, set from any thread, obeyed at chunk boundaries."""

    def __init__(self) -> None:
        self._cancel = threading.Event()
        self._resume = threading.Event()
        self._resume.set()

    def cancel(self) -> None:
        self._cancel.set()
        self._resume.set()

    def pause(self) -> None:
        self._resume.clear()

    def resume(self) -> None:
        self._resume.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()


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
    sent: int = 0
    """Bytes of its data relayed to the destination, until the write is acknowledged."""
    dst_subs: bytes | None = None
    """The destination's sub-block digests as a digest cache kept them: no SUBHASH needed."""


class Transfer:
    """Settles every chunk of a prepared pair: compares it and, unless a dry run, fixes it.

    `method` is "digests" (both workers hash; differing pieces go through the controller),
    "direct" (both ends on one machine: the destination's worker reads the source itself),
    "stream" (a destination just created: nothing to compare, the source sends every chunk that
    is not zeros, read once, and the destination writes it) or "cache" (the destination's
    digests are `cached`, checked by a sample: only the source is scanned).

    Against a cache, a random sample of its chunks is re-read on the destination first, while
    the source's scan starts: no source digest is compared, and so nothing is written, before
    the sample agrees with the cache. If it does not, the run goes on by digests (the source's
    digests so far still hold) and `sample_wrong` names the chunks that differed.

    `record`, if given, is filled with the destination's digests as the run leaves them, for
    the next run: the source's for a sync (what the destination becomes), the destination's
    for a compare; the side that knows them sends each data chunk's sub-digests as it scans.
    """

    def __init__(
        self,
        conns: dict[str, Connection],
        names: dict[str, str],
        events: queue.Queue[Frame],
        chunk_map: ChunkMap,
        geometry: Geometry,
        negotiated: Negotiated,
        options: SyncOptions,
        control: Control,
        method: str,
        dest_absent: bool,
        round_trip: float = 0.0,
        prior: Prior | None = None,
        tally: DiffTally | None = None,
        cached: DigestCache | None = None,
        record: Record | None = None,
    ) -> None:
        self.sides = {name: Side(conn) for name, conn in conns.items()}
        self.names = names
        """Each side's endpoint as the user wrote it, for messages."""
        self.events = events
        self.chunk_map = chunk_map
        self.geometry = geometry
        self.negotiated = negotiated
        self.options = options
        self.control = control
        self.method = method
        self.dest_absent = dest_absent
        self.cached = cached if method == "cache" else None
        self.record = record
        self._sample: CacheSample | None = None
        """Against a cache: its chunks that the destination reads again before any is believed."""
        self._held: list[Frame] = []
        """The source's scan frames that arrived during the sample, handled after it."""
        # Which side's frames carry sub-digests for the record: the one that scans what the
        # destination holds after the run (a direct compare's PAIRED come from the destination).
        self._subs_from: str | None = None
        if record is not None and record.layout.stride:
            self._subs_from = DESTINATION if method == "direct" or options.dry_run else SOURCE
        self.errors: list[str] = []
        self.bytes_sent = 0
        """Encoded chunk data relayed to the destination (or, direct, bytes it rewrote)."""
        self.bytes_differing = 0
        self.tally = tally or DiffTally(())
        """The same differing bytes, per region of the device (the report's partitions)."""
        self.verify_digests: dict[int, bytes] = {}
        """With --verify only: the source digest of each chunk written (b"" for zeros)."""
        self.differences = Differences(options.chunk_size)
        """Where each differing chunk differs, as far as the run learns it (for owners)."""
        window_bytes = {"direct": PAIR_WINDOW_BYTES, "stream": STREAM_WINDOW_BYTES}.get(
            method, HASH_WINDOW_BYTES
        )
        self._window = max(1, window_bytes // options.chunk_size)
        if method in ("digests", "cache"):
            self._window = max(self._window, HASH_WINDOW_CHUNKS)
        elif method == "direct":
            self._window = max(self._window, PAIR_WINDOW_CHUNKS)
        self._first, self._end = options.chunk_range(geometry.total)
        """The chunks this transfer settles: all of them, or one lane's share of a parallel run."""
        self.scope = Scope(self._first, self._end, prior)
        """What a prior settles of those chunks, and the sample of them read again."""
        if method == "stream":  # a stream compares nothing, so a sample could prove nothing
            self.scope.sample = frozenset()
        if record is not None and self.cached is not None and self.scope.settled and record.layout == self.cached.layout:
            record.take(self.cached, self._first, self._end)  # what the prior spares reading
        self.warnings: list[str] = []
        self.sample_differed = 0
        """Chunks of the sample that differed: the prior was wrong, and everything is read."""
        self.widened = False
        """True once the sample found a difference and the settled chunks are read too."""
        self.skipped_bytes = 0
        """Bytes of the chunks that the prior settles and nobody reads (unless widened)."""
        if self.scope.initial is not None:
            chunk_map.load(self._first, self.scope.initial)
            self.skipped_bytes = self._skipped()
        self._plan = self.scope.windows(self._window)
        self._windows = -(-self.scope.to_read() // self._window)
        self._made: dict[int, list[tuple[int, int]]] = {}
        """Windows of the current pass made and not yet asked of every side, by number."""
        self._made_count = 0
        self.before_writing: Callable[[], None] | None = None
        """Checks the answer to the destination's writable OPEN (raises if it failed): called
        once, before the first request that writes is sent (`open_for_writing`)."""
        self.on_checkpoint: Callable[[bytes, dict], None] | None = None
        """Called with the states of chunks first..end-1 once the destination flushed every
        write settled before they were taken (and with its flush answer): what is on disk."""
        self._checkpoint: tuple[int, bytes] | None = None
        """The flush in flight for a checkpoint: its request id and the states it covers."""
        self._last_checkpoint = time.monotonic()
        self._digests: dict[str, dict[int, tuple[int, bytes]]] = {SOURCE: {}, DESTINATION: {}}
        self._todo: deque[_Job] = deque()
        self._jobs: dict[int, _Job] = {}
        """The differing chunks in flight, by index: one record each."""
        self._by_request: dict[tuple[str, int], _Job] = {}
        """The job each outstanding SUBHASH or DELTA answers to, by (side, request id)."""
        # Enough differing chunks in flight to cover the link's round trip (a delta is a few
        # KiB, its pipeline two round trips), and never more data unacknowledged than
        # INFLIGHT_BYTES: a long link keeps many small deltas moving, a fast one few whole chunks.
        by_link = int(round_trip / JOB_SECONDS)
        self._max_inflight = max(2, INFLIGHT_BYTES // options.chunk_size, min(MAX_JOBS, by_link))
        self._unacked = 0
        """Bytes of chunk data relayed to the destination and not yet acknowledged."""
        self._settled = self.scope.settled
        self._streamed: set[int] = set()
        """Stream: chunks whose data was relayed and whose entry in the window is still due."""
        self._idle_sides()

    def _idle_sides(self) -> None:
        """Mark the sides that scan nothing in this method as done with every window."""
        if self.method == "direct":
            self.sides[SOURCE].next_window = self.sides[SOURCE].windows_done = self._windows
        elif self.dest_absent or self.method in ("stream", "cache"):  # all zero, or known from its cache
            self.sides[DESTINATION].next_window = self.sides[DESTINATION].windows_done = self._windows

    def _skipped(self) -> int:
        """Bytes the prior settles: whole chunks, less what the short last chunk lacks."""
        initial = self.scope.initial or b""
        skipped = self.scope.settled * self.geometry.chunk_size
        last = self._end - 1
        if initial and initial[-1] != State.PENDING:
            skipped -= self.geometry.chunk_size - self.geometry.chunk(last)[1]
        return skipped

    @property
    def _record_digests(self) -> bool:
        return self.options.verify and not self.options.dry_run

    # -- the loop

    def run(self) -> None:
        """Issue work and handle replies until every chunk is settled and nothing is in flight
        (after a cancel: until the writes in flight are acknowledged)."""
        total = self._end - self._first
        control = self.control
        if self.cached is not None and self._sample is None:
            self._sample = CacheSample(self.cached, self._first, self._end)
            self._sample.ask(self.sides[DESTINATION].conn, self.geometry, self.negotiated.algorithm)
        while True:
            if not control.cancelled:
                self._widen_if_due()
            if not control.paused and not control.cancelled:
                self._issue_windows()
                self._issue_chunks()
                self._checkpoint_if_due()
            idle = not self._jobs and self._checkpoint is None
            if control.cancelled:  # a direct compare's window writes as it goes: wait for it
                if idle and not (self.method == "direct" and self._windows_in_flight()):
                    return
            elif self._settled >= total and idle and not self._windows_in_flight():
                return
            try:
                frame = self.events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                self._check_silence()
                continue
            self._handle(frame)

    # -- what a prior settles, the sample that checks it, and checkpoints of what is on disk

    def _sampled(self, index: int, differs: bool) -> None:
        """A chunk was compared: if the prior called it settled, and it differs, the prior was
        wrong somewhere. Say so once; the chunks it settled are then read too (`_widen_if_due`)."""
        if not differs or index not in self.scope.sample:
            return
        self.sample_differed += 1
        if self.sample_differed == 1:
            self.warnings.append(
                f"chunk {index}, settled by the {self.scope.source}, differs: the {self.scope.source} "
                "is wrong, so every chunk is compared"
            )

    def _widen_if_due(self) -> None:
        """Once the scoped pass is done and the sample found a difference, read the chunks the
        prior settled, in a second pass of the same run."""
        if not self.sample_differed or self.widened:
            return
        if any(side.windows_done < self._windows for side in self.sides.values()):
            return
        self.widened = True
        self._settled -= self.scope.settled
        self.skipped_bytes = 0
        self._plan = self.scope.windows(self._window, widened=True)
        self._windows = -(-self.scope.to_read(widened=True) // self._window)
        self._made.clear()
        self._made_count = 0
        for side in self.sides.values():
            side.next_window = side.windows_done = 0
        self._idle_sides()

    def _checkpoint_if_due(self) -> None:
        """Every CHECKPOINT_SECONDS, ask the destination to flush; what was settled before the
        request is on disk once it answers (writes are applied in order, and a direct compare
        reports a chunk only after writing it)."""
        if self.on_checkpoint is None or self._checkpoint is not None:
            return
        if time.monotonic() - self._last_checkpoint < self.checkpoint_seconds:
            return
        states = bytes(self.chunk_map.states[self._first : self._end])
        rid = self.sides[DESTINATION].conn.post(wire.OP_FLUSH, b"")
        self._checkpoint = (rid, states)

    checkpoint_seconds = CHECKPOINT_SECONDS

    def _on_reply(self, frame: Frame) -> None:
        """The destination's answer to a checkpoint's flush."""
        if frame.side != DESTINATION or self._checkpoint is None or frame.rid != self._checkpoint[0]:
            raise self._protocol_error(frame, "an answer to no request")
        states = self._checkpoint[1]
        self._checkpoint = None
        answer = wire.decode_json(frame.payload)
        if self.on_checkpoint is not None:
            self.on_checkpoint(states, answer)
        self._last_checkpoint = time.monotonic()

    def resend(self, indexes: list[int], digests: dict[int, bytes | None]) -> None:
        """Send chunks again, whole (their source changed during the run), and wait for the
        writes; `digests` are their source digests now, for the verify that follows."""
        if self.record is not None:
            self.record.broken = "chunks were sent again (their source changed during the run)"
        for index in indexes:
            self.verify_digests[index] = digests[index] or b""
            self.chunk_map.set(index, State.DIFFERS)
            self._todo.append(_Job(index, wire.FLAG_DATA, wire.FLAG_DATA, whole=True))
        self._settled -= len(indexes)
        self.run()

    def _windows_in_flight(self) -> bool:
        return any(side.windows for side in self.sides.values())

    def _check_silence(self) -> None:
        """End the run, naming the side, when a worker that owes an answer has said nothing for
        `peer_timeout` seconds (after a cancel, for at most CANCEL_TIMEOUT)."""
        limit = self.options.peer_timeout
        if self.control.cancelled:
            limit = min(limit, CANCEL_TIMEOUT)
        for name, side in self.sides.items():
            if self._owes(name):
                end_if_silent(side.conn, limit)

    def _owes(self, name: str) -> bool:
        """Whether a side has a request outstanding."""
        if self.control.paused:
            return False  # nothing new was asked, and answers may trickle in slowly
        if self.sides[name].windows or (name == DESTINATION and self._sampling):
            return True
        if any(side == name for side, _ in self._by_request):
            return True
        return name == DESTINATION and any(job.writing for job in self._jobs.values())

    # -- the sample of a digest cache

    @property
    def sample_wrong(self) -> list[int]:
        """The sampled chunks the destination no longer holds as its cache says."""
        return self._sample.wrong if self._sample is not None else []

    @property
    def sample_size(self) -> int:
        return len(self._sample.indexes) if self._sample is not None else 0

    @property
    def cache_sampled(self) -> bool:
        """Whether the sample is in (and `sample_wrong` final)."""
        return self._sample is not None and self._sample.done

    @property
    def _sampling(self) -> bool:
        """Whether the sample is out: no source digest is compared before it is in."""
        return self._sample is not None and self._sample.out

    def _on_sample(self, frame: Frame) -> None:
        """A frame of the destination's answer to the sample; at its end, the verdict."""
        assert self._sample is not None

        def read(index: int) -> None:
            self.sides[DESTINATION].scanned += self.geometry.chunk(index)[1]

        self._sample.take(frame, self.sides[DESTINATION].conn, self.negotiated.digest_size,
                          self._protocol_error, read)
        if self._sample.done:
            self._verdict()

    def _verdict(self) -> None:
        """The sample is in: go on against the cache, or, if it lied, by the destination's own
        digests from its first chunk on; then the source frames that waited."""
        if self.sample_wrong:
            self.cached = None
            self.method = "digests"
            self.sides[DESTINATION].next_window = self.sides[DESTINATION].windows_done = 0
            if self.record is not None and self.scope.settled:
                self.record.broken = "the chunks a prior settles were known from a cache that lied"
        held, self._held = self._held, []
        for frame in held:
            self._handle(frame)

    # -- windows of chunks to scan

    def _issue_windows(self) -> None:
        if self.method == "direct":
            self._issue_pairs()
            return
        if self.method == "stream":
            self._issue_streams()
            return
        if len(self._todo) >= BACKLOG_WINDOWS * self._window:
            return  # the transfer lags: scan no further until it catches up
        low = min(s.windows_done for s in self.sides.values())
        request = {"chunk_size": self.geometry.chunk_size, "size": self.geometry.size,
                   "algo": self.negotiated.algorithm}
        if self.negotiated.subs_during_scan and self.options.chunk_size > self.options.sub_block:
            # Cheap enough to take during the scan, for every chunk: a differing chunk is then
            # never read twice (SUBHASH answers from them, DELTA reads only differing pieces).
            request.update(sub_block=self.options.sub_block, sub_algo=self.negotiated.sub_algorithm)
        for name, side in self.sides.items():
            if name == DESTINATION and (self.dest_absent or self.cached is not None):
                continue
            mine = {**request, "subs_out": True} if name == self._subs_from else request
            while side.next_window < min(self._windows, low + WINDOWS_AHEAD):
                self._post_window(name, wire.OP_HASH, mine)

    def _issue_pairs(self) -> None:
        """Direct mode: ask the destination's worker to compare (and fix) windows of chunks.
        A window in flight counts as in flight: a cancel waits for its writes."""
        side = self.sides[DESTINATION]
        request = {
            "chunk_size": self.geometry.chunk_size,
            "size": self.geometry.size,
            "sub_block": self.options.sub_block,
            "algo": self.negotiated.algorithm,
            "write": not self.options.dry_run,
            "digests": self.options.verify,
            "runs": True,
        }
        if self.record is not None:  # every chunk's digest, and the sub-digests, for the record
            request["keep"] = True
            if self._subs_from:
                request["sub_algo"] = self.record.layout.sub_algorithm
        if request["write"]:
            self.open_for_writing()
        while side.next_window < min(self._windows, side.windows_done + PAIR_WINDOWS_AHEAD):
            self._post_window(DESTINATION, wire.OP_PAIR, request)

    def _issue_streams(self) -> None:
        """Stream mode: ask the source to send windows of chunks, a bounded amount ahead."""
        side = self.sides[SOURCE]
        compression = self.negotiated.compression
        request = {
            "chunk_size": self.geometry.chunk_size,
            "size": self.geometry.size,
            "sub_block": self.options.sub_block,
            "codec": "" if compression == "none" else compression,
        }
        if self._record_digests or self.record is not None:
            request["algo"] = self.negotiated.algorithm
        if self._subs_from:
            request["sub_algo"] = self.record.layout.sub_algorithm  # type: ignore[union-attr]
        if not self.dest_absent:  # what the destination holds is overwritten, zeros included
            request["overwrite"] = True
        while (
            side.next_window < self._windows
            and len(side.windows) < STREAM_WINDOWS_AHEAD
            and self._unacked < STREAM_UNACKED_BYTES
        ):
            self._post_window(SOURCE, wire.OP_STREAM, request)

    def _post_window(self, name: str, op: int, request: dict) -> None:
        """Send one side the request for its next window of chunks."""
        side = self.sides[name]
        number = side.next_window
        while self._made_count <= number:  # made once, in order, for every side alike
            self._made[self._made_count] = next(self._plan)
            self._made_count += 1
        runs = self._made[number]
        rid = side.conn.post(op, {**request, "ranges": [list(run) for run in runs]})
        side.windows[rid] = Window(runs)
        side.next_window += 1
        behind = min(s.next_window for s in self.sides.values())
        if self._sampling:
            behind = 0  # a cache that lies sets the destination scanning from the start
        for old in [k for k in self._made if k < behind]:
            del self._made[old]  # every side has asked for it

    # -- frames

    def _handle(self, frame: Frame) -> None:
        """Act on one frame. Anything a worker sends that we did not ask for, or that does not
        parse, ends the run as a protocol error: it is never guessed at."""
        if frame.op == EOF_OP:
            raise ConnectionLost(frame.payload.decode()).on(frame.side)
        if self._sampling:  # no source digest is compared before the sample is in
            if frame.side == SOURCE and frame.op in (wire.OP_DIGESTS, wire.OP_DONE):
                self._held.append(frame)
                return
            if frame.side == DESTINATION and frame.rid == self._sample.rid:  # type: ignore[union-attr]
                self._guarded(Transfer._on_sample, frame)
                return
        self._guarded(self._handlers.get(frame.op), frame)

    def _guarded(self, handler: Callable[[Transfer, Frame], None] | None, frame: Frame) -> None:
        """Run a frame's handler; what does not parse is that side's protocol error."""
        if handler is None:
            raise self._protocol_error(frame, "an unexpected frame")
        try:
            handler(self, frame)
        except BlocksyncError:
            raise
        except (ValueError, KeyError, IndexError, TypeError, struct.error) as exc:
            raise self._protocol_error(frame, f"a malformed frame ({exc})") from None

    def _protocol_error(self, frame: Frame, what: str) -> ProtocolError:
        return protocol_error(self.sides[frame.side].conn, frame, what)

    def _on_done(self, frame: Frame) -> None:
        side = self.sides[frame.side]
        window = side.windows.pop(frame.rid, None)
        if window is None:
            raise self._protocol_error(frame, "an unexpected end of a request")
        if window.got != window.total:
            raise self._protocol_error(frame, "an incomplete window of chunks")
        side.windows_done += 1

    def _window_entries(self, frame: Frame, entry_size: int) -> tuple[int, int, int]:
        """(first, count, digest size) of a DIGESTS or PAIRED batch, checked: it belongs to a
        window in flight, continues it where the last batch ended, and has its stated length
        (the side that sends sub-digests for the record: at least that; `_take_subs` checks
        the rest)."""
        first, count, dsize = wire.DIGESTS_HEAD.unpack_from(frame.payload)
        window = self.sides[frame.side].windows.get(frame.rid)
        if window is None:
            raise self._protocol_error(frame, "chunk states nobody asked for")
        size = wire.DIGESTS_HEAD.size + count * (entry_size + dsize)
        tail = frame.side == self._subs_from
        if (len(frame.payload) < size if tail else len(frame.payload) != size) or dsize > MAX_DIGEST_SIZE:
            raise self._protocol_error(frame, "a batch of the wrong length")
        if not window.take(first, count):
            raise self._protocol_error(frame, f"chunks {first}..{first + count} out of order")
        return first, count, dsize

    def _on_digests(self, frame: Frame) -> None:
        if self.method == "stream":
            self._on_streamed_entries(frame)
            return
        first, count, dsize = self._window_entries(frame, 1)
        if dsize != self.negotiated.digest_size:
            raise self._protocol_error(frame, f"{dsize}-byte digests for {self.negotiated.algorithm}")
        entry = 1 + dsize
        pos = wire.DIGESTS_HEAD.size
        mine = self._digests[frame.side]
        other = self._digests[DESTINATION if frame.side == SOURCE else SOURCE]
        side = self.sides[frame.side]
        subs = pos + count * entry
        for index in range(first, first + count):
            flag = frame.payload[pos]
            if flag not in (wire.FLAG_DATA, wire.FLAG_ERROR, *ZEROS):
                raise self._protocol_error(frame, f"an unknown chunk flag {flag}")
            # Only data chunks carry a digest; the field of a zero or failed chunk is padding.
            item = (flag, frame.payload[pos + 1 : pos + entry] if flag == wire.FLAG_DATA else b"")
            pos += entry
            side.scanned += self.geometry.chunk(index)[1]
            if flag == wire.FLAG_DATA and frame.side == self._subs_from:
                subs = self._take_subs(frame, index, subs)
            if self.cached is not None:  # the destination as its cache says it is
                self._resolve(index, item, self.cached.entry(index))
            elif self.dest_absent:
                self._resolve(index, item, (wire.FLAG_HOLE, b""))
            elif index in other:
                theirs = other.pop(index)
                pair = (item, theirs) if frame.side == SOURCE else (theirs, item)
                self._resolve(index, *pair)
            else:
                mine[index] = item
        if subs != len(frame.payload):
            raise self._protocol_error(frame, "sub-digests of the wrong length")
        if self.dest_absent:
            self.sides[DESTINATION].scanned = side.scanned

    def _take_subs(self, frame: Frame, index: int, pos: int) -> int:
        """Record the sub-digests of data chunk `index` from a batch's tail, at `pos`; where
        the next chunk's start. Their length is our geometry's, never the frame's word."""
        assert self.record is not None
        _, length = self.geometry.chunk(index)
        end = pos + -(-length // self.options.sub_block) * wire.SUB_DIGEST_SIZE
        if end > len(frame.payload):
            raise self._protocol_error(frame, "sub-digests of the wrong length")
        self.record.sub_digests(index, bytes(frame.payload[pos:end]))
        return end

    def _on_streamed_entries(self, frame: Frame) -> None:
        """A stream's chunk states, in order: a data chunk's DATA frame came before its entry
        (and may be written already); a zero one needs nothing (the new file is all holes)."""
        if frame.side != SOURCE:
            raise self._protocol_error(frame, "chunk states from the destination")
        first, count, dsize = self._window_entries(frame, 1)
        hashed = self._record_digests or self.record is not None
        if dsize != (self.negotiated.digest_size if hashed else 0):
            raise self._protocol_error(frame, f"{dsize}-byte digests in a stream")
        pos = wire.DIGESTS_HEAD.size
        entry = 1 + dsize
        subs = pos + count * entry
        source, destination = self.sides[SOURCE], self.sides[DESTINATION]
        for index in range(first, first + count):
            flag = frame.payload[pos]
            length = self.geometry.chunk(index)[1]
            if self.record is not None and flag != wire.FLAG_ERROR:
                # A new file's zero chunks stay holes; zeros made over old data may not be.
                hole = self.dest_absent and flag in ZEROS
                self.record.chunk(index, wire.FLAG_HOLE if hole else content(flag), bytes(frame.payload[pos + 1 : pos + entry]))
            if flag == wire.FLAG_DATA and frame.side == self._subs_from:
                subs = self._take_subs(frame, index, subs)
            if flag == wire.FLAG_DATA:
                if index in self._streamed:
                    self._streamed.discard(index)
                    if self._record_digests:
                        self.verify_digests[index] = bytes(frame.payload[pos + 1 : pos + entry])
                elif not self.control.cancelled:  # after a cancel, its data was not relayed
                    raise self._protocol_error(frame, f"a data chunk {index} it never sent")
            elif flag in ZEROS:
                if index in self._streamed:
                    raise self._protocol_error(frame, f"data for chunk {index}, then called it zeros")
                if self.dest_absent:  # a new file is all holes already
                    self.chunk_map.set(index, State.HOLE if flag == wire.FLAG_HOLE else State.ZERO)
                    self._settled += 1
                elif not self.control.cancelled:  # overwriting: zero it there (hole, BLKZEROOUT)
                    offset = self.geometry.chunk(index)[0]
                    self._jobs[index] = _Job(index, wire.FLAG_ZERO, wire.FLAG_DATA, writing=True)
                    self.chunk_map.set(index, State.DIFFERS)
                    self._differs(index, length)
                    self._write(wire.OP_ZERO, wire.ZERO_REQ.pack(index, length, offset))
            elif flag == wire.FLAG_ERROR:
                if index in self._streamed:
                    raise self._protocol_error(frame, f"data for chunk {index}, then called it unreadable")
                self.errors.append(f"{self.names[SOURCE]}: cannot read chunk {index}")
                self.chunk_map.set(index, State.ERROR)
                self._settled += 1
            else:
                raise self._protocol_error(frame, f"an unknown chunk flag {flag}")
            pos += entry
            source.scanned += length
            destination.scanned += length
        if subs != len(frame.payload):
            raise self._protocol_error(frame, "sub-digests of the wrong length")

    def _on_streamed_data(self, frame: Frame) -> None:
        """One whole chunk of a stream: it must be the window's next chunk not yet settled
        (entries lag behind data, never run ahead) and its pieces must fit our geometry."""
        side = self.sides[SOURCE]
        index, _, _ = wire.PIECES_HEAD.unpack_from(frame.payload)
        if not side.windows[frame.rid].ahead(index) or index in self._streamed or index in self._jobs:
            raise self._protocol_error(frame, f"data for chunk {index} out of order")
        _, length = self.geometry.chunk(index)
        try:
            pieces = wire.piece_layout(frame.payload, index, length)
        except ValueError as exc:
            raise self._protocol_error(frame, f"pieces that do not fit chunk {index} ({exc})") from None
        if self.control.cancelled:
            return  # stop writing at once: this chunk stays as it was (a hole)
        self._streamed.add(index)
        job = self._jobs[index] = _Job(index, wire.FLAG_DATA, wire.FLAG_ZERO, writing=True)
        self.chunk_map.set(index, State.DIFFERS)
        self._differs_in_pieces(index, pieces)
        self._relay(job, frame.payload)

    def _on_paired(self, frame: Frame) -> None:
        if frame.side != DESTINATION:
            raise self._protocol_error(frame, "a direct compare from the source")
        first, count, dsize = self._window_entries(frame, wire.PAIRED_ITEM.size)
        pos = wire.DIGESTS_HEAD.size
        wrote = not self.options.dry_run
        states = {wire.PAIR_SAME: State.SAME, wire.PAIR_ZERO: State.ZERO, wire.PAIR_HOLE: State.HOLE,
                  wire.PAIR_ERROR: State.ERROR}
        flags = {wire.PAIR_SAME: (wire.FLAG_DATA,), wire.PAIR_ZERO: (wire.FLAG_ZERO,), wire.PAIR_HOLE: (wire.FLAG_HOLE,),
                 wire.PAIR_ERROR: (wire.FLAG_ERROR,), wire.PAIR_DIFFERS: (wire.FLAG_DATA, wire.FLAG_ZERO)}
        subs = pos + count * (wire.PAIRED_ITEM.size + dsize)
        for index in range(first, first + count):
            outcome, flag, differing = wire.PAIRED_ITEM.unpack_from(frame.payload, pos)
            pos += wire.PAIRED_ITEM.size
            _, length = self.geometry.chunk(index)
            if differing > length or flag not in flags.get(outcome, ()):
                raise self._protocol_error(frame, f"an impossible outcome for chunk {index}")
            for side in self.sides.values():
                side.scanned += length
            self._sampled(index, outcome == wire.PAIR_DIFFERS)
            if flag == wire.FLAG_DATA and frame.side == self._subs_from:
                subs = self._take_subs(frame, index, subs)
            if self.record is not None:
                self._record_paired(index, outcome, flag, bytes(frame.payload[pos : pos + dsize]), wrote)
            if outcome == wire.PAIR_DIFFERS:
                self._differs(index, differing)
                if wrote:
                    self.bytes_sent += differing
                    if self.options.verify:
                        digest = bytes(frame.payload[pos : pos + dsize])
                        self.verify_digests[index] = digest if flag == wire.FLAG_DATA else b""
                self.chunk_map.set(index, State.WRITTEN if wrote else State.DIFFERS)
            else:
                self.chunk_map.set(index, states[outcome])
            pos += dsize
            self._settled += 1
        if subs != len(frame.payload):
            raise self._protocol_error(frame, "sub-digests of the wrong length")

    def _record_paired(self, index: int, outcome: int, flag: int, digest: bytes, wrote: bool) -> None:
        """A direct compare's chunk in the record: the source's digest is the destination's
        wherever they were equal or the chunk was written."""
        assert self.record is not None
        if outcome == wire.PAIR_ERROR or (outcome == wire.PAIR_DIFFERS and not wrote):
            self.record.broken = "the destination's digest of a differing chunk is not known"
            return
        self.record.chunk(index, flag, digest[: self.negotiated.digest_size])

    def _resolve(self, index: int, src: tuple[int, bytes], dst: tuple[int, bytes]) -> None:
        """Compare one chunk's two digests and decide what it needs. Zeros are zeros, read or
        not; a chunk that is a hole on both sides is a hole."""
        if src[0] == wire.FLAG_ERROR or dst[0] == wire.FLAG_ERROR:
            which = SOURCE if src[0] == wire.FLAG_ERROR else DESTINATION
            self.errors.append(f"{self.names[which]}: cannot read chunk {index}")
            self.chunk_map.set(index, State.ERROR)
            self._settled += 1
            return
        same = (src[0] in ZEROS and dst[0] in ZEROS) or src == dst
        self._sampled(index, not same)
        if src[0] in ZEROS and dst[0] in ZEROS:
            hole = src[0] == dst[0] == wire.FLAG_HOLE
            self.chunk_map.set(index, State.HOLE if hole else State.ZERO)
        elif src == dst:
            self.chunk_map.set(index, State.SAME)
        else:
            self.chunk_map.set(index, State.DIFFERS)
            if self._record_digests:
                self.verify_digests[index] = src[1] if src[0] == wire.FLAG_DATA else b""
            if self.record is not None and not self.options.dry_run:  # as it will be written
                self.record.chunk(index, content(src[0]), src[1])
            elif self.record is not None:
                self.record.chunk(index, dst[0], dst[1])
            dst_subs = self.cached.sub_digests(index) if self.cached is not None else None
            self._todo.append(_Job(index, content(src[0]), content(dst[0]), dst_subs=dst_subs))
            return
        if self.record is not None:
            self.record.chunk(index, dst[0], dst[1])
        self._settled += 1

    # -- differing chunks

    def _issue_chunks(self) -> None:
        while self._todo and len(self._jobs) < self._max_inflight and self._unacked < INFLIGHT_BYTES:
            self._start_chunk(self._todo.popleft())

    def _chunk_request(self, index: int, mode: int, tail: bytes = b"") -> bytes:
        offset, length = self.geometry.chunk(index)
        compression = self.negotiated.compression
        codec = "" if compression == "none" else compression
        return wire.pack_chunk_request(
            index, offset, length, self.options.sub_block, mode, self.negotiated.sub_algorithm,
            codec, tail,
        )

    def _ask(self, side: str, op: int, job: _Job, payload: bytes) -> None:
        """Send one request of a job's pipeline and remember whose answer it awaits."""
        rid = self.sides[side].conn.post(op, payload)
        self._by_request[(side, rid)] = job

    def _start_chunk(self, job: _Job) -> None:
        """Send the first request of a differing chunk's pipeline."""
        self._jobs[job.index] = job
        index = job.index
        offset, length = self.geometry.chunk(index)
        if self.options.dry_run:
            # Both sides' sub-block digests tell how many bytes really differ.
            for side in (SOURCE, DESTINATION):
                if side == DESTINATION and self.dest_absent:
                    job.subs[DESTINATION] = b""
                    continue
                if side == DESTINATION and job.dst_subs is not None:
                    job.subs[DESTINATION] = job.dst_subs
                    continue
                self._ask_subhash(side, job)
        elif job.whole:
            self._ask(SOURCE, wire.OP_DELTA, job, self._chunk_request(index, wire.DELTA_WHOLE))
        elif job.src_flag == wire.FLAG_ZERO:
            self._differs(index, length)  # at chunk granularity: it costs no wire bytes
            job.writing = True
            self._write(wire.OP_ZERO, wire.ZERO_REQ.pack(index, length, offset))
        elif job.dst_flag == wire.FLAG_ZERO or length <= self.options.sub_block:
            mode = wire.DELTA_DEST_ZERO if job.dst_flag == wire.FLAG_ZERO else wire.DELTA_WHOLE
            self._ask(SOURCE, wire.OP_DELTA, job, self._chunk_request(index, mode))
        elif job.dst_subs is not None:  # kept by the cache: only the source reads
            self._ask(SOURCE, wire.OP_DELTA, job, self._chunk_request(index, wire.DELTA_SUBDIGESTS, job.dst_subs))
        else:
            self._ask_subhash(DESTINATION, job)

    def _ask_subhash(self, side: str, job: _Job) -> None:
        """Ask for a chunk's sub-digests. A destination known from its cache was not scanned,
        so it reads the chunk for them: counted as scanned."""
        if side == DESTINATION and self.cached is not None:
            self.sides[DESTINATION].scanned += self.geometry.chunk(job.index)[1]
        self._ask(side, wire.OP_SUBHASH, job, self._chunk_request(job.index, 0))

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
        _, expected = self.geometry.chunk(job.index)
        blocks = -(-expected // self.options.sub_block)
        if (index, length) != (job.index, expected) or len(digests) != blocks * wire.SUB_DIGEST_SIZE:
            raise self._protocol_error(frame, f"sub-digests that are not those of chunk {job.index}")
        if not self.options.dry_run:
            request = self._chunk_request(job.index, wire.DELTA_SUBDIGESTS, digests)
            self._ask(SOURCE, wire.OP_DELTA, job, request)
            return
        job.subs[frame.side] = digests
        if len(job.subs) == 2:
            self._differing_sub_blocks(job.index, job.subs[SOURCE], job.subs[DESTINATION])
            self._finish_chunk(job, State.DIFFERS)

    def _differing_sub_blocks(self, index: int, src: bytes, dst: bytes) -> None:
        _, length = self.geometry.chunk(index)
        sub = self.options.sub_block
        starts = range(0, length, sub)
        differs = wire.differing_sub_blocks(src, dst, len(starts))
        spans = [(start, min(sub, length - start)) for start, flag in zip(starts, differs) if flag]
        self._differs(index, sum(n for _, n in spans), spans)

    def _differs_in_pieces(self, index: int, pieces: list[tuple[int, int, int, int, int]]) -> None:
        """Count the bytes a checked DATA payload (see wire.piece_layout) rewrites."""
        spans = [(offset, raw_len) for offset, _code, raw_len, _start, _end in pieces]
        self._differs(index, sum(n for _, n in spans), spans)

    def _differs(self, index: int, count: int, spans: list[tuple[int, int]] | None = None) -> None:
        """Count `count` differing bytes of a chunk, in all and in the region(s) they lie in."""
        self.bytes_differing += count
        offset, length = self.geometry.chunk(index)
        self.tally.add(offset, length, count, spans)
        if spans is not None:  # where, for the owners of the differences
            self.differences.add(index, [(start, start + n) for start, n in spans])
        elif count == length:
            self.differences.add(index, [(0, length)])

    def _on_runs(self, frame: Frame) -> None:
        """Where a chunk of a direct compare differs: it must be a chunk of a window in flight
        whose entry is still due, with sorted runs inside the chunk."""
        index, count = wire.RUNS_HEAD.unpack_from(frame.payload)
        window = self.sides[frame.side].windows.get(frame.rid) if frame.side == DESTINATION else None
        if window is None or not window.ahead(index):
            raise self._protocol_error(frame, f"differing runs of chunk {index} nobody asked for")
        _, length = self.geometry.chunk(index)
        if count > wire.MAX_RUNS or len(frame.payload) != wire.RUNS_HEAD.size + count * wire.RUN_ITEM.size:
            raise self._protocol_error(frame, "a list of runs of the wrong length")
        runs = list(wire.RUN_ITEM.iter_unpack(frame.payload[wire.RUNS_HEAD.size :]))
        end = 0
        for start, stop in runs:
            if not end <= start < stop <= length:
                raise self._protocol_error(frame, f"runs outside chunk {index} or out of order")
            end = stop
        self.differences.add(index, runs)

    def _on_data(self, frame: Frame) -> None:
        """Check the source's pieces against our own geometry of the chunk asked for, then
        relay them to the destination unchanged (it checks them again against its own)."""
        if frame.side != SOURCE:
            raise self._protocol_error(frame, "chunk data from the destination")
        if frame.rid in self.sides[SOURCE].windows:
            self._on_streamed_data(frame)
            return
        job = self._answering(frame)
        _, length = self.geometry.chunk(job.index)
        try:
            pieces = wire.piece_layout(frame.payload, job.index, length)
        except ValueError as exc:
            raise self._protocol_error(frame, f"pieces that do not fit chunk {job.index} ({exc})") from None
        self._differs_in_pieces(job.index, pieces)
        # Writes are acknowledged in batches (OP_WRITTEN), never one round trip each.
        job.writing = True
        self._relay(job, frame.payload)

    def open_for_writing(self) -> None:
        """Make sure the destination is open for writing: its OPEN's answer checked (once)."""
        check, self.before_writing = self.before_writing, None
        if check is not None:
            check()

    def _write(self, op: int, payload: bytes) -> None:
        """Send the destination a request that writes (WRITE, ZERO), once it is open for it."""
        self.open_for_writing()
        self.sides[DESTINATION].conn.post(op, payload)

    def _relay(self, job: _Job, payload: bytes) -> None:
        """Send a chunk's checked pieces on to the destination, counted until acknowledged."""
        self._write(wire.OP_WRITE, payload)
        job.sent = len(payload)
        self._unacked += job.sent
        self.bytes_sent += job.sent

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
        conn = self.sides[frame.side].conn
        message = where(conn, str(error["message"]))
        chunk, code = int(error.get("chunk", -1)), int(error.get("errno", 0))
        if frame.side == DESTINATION and code in wire.FATAL_ERRNOS and not self.options.dry_run:
            written = int(error.get("written", 0))
            raise EndpointError(
                f"{message} after {written:,} bytes were written: the sync stopped "
                "(the destination is partly updated; run it again once this is fixed)"
            ).on(DESTINATION)
        if self._checkpoint is not None and frame.side == DESTINATION and frame.rid == self._checkpoint[0]:
            raise RemoteError(f"flush failed: {message}").on(DESTINATION)
        if frame.rid in self.sides[frame.side].windows:
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

    _handlers: dict[int, Callable[[Transfer, Frame], None]] = {
        wire.OP_DIGESTS: _on_digests,
        wire.OP_DONE: _on_done,
        wire.OP_PAIRED: _on_paired,
        wire.OP_RUNS: _on_runs,
        wire.OP_SUBDIGESTS: _on_subdigests,
        wire.OP_DATA: _on_data,
        wire.OP_WRITTEN: _on_written,
        wire.OP_ERROR: _on_error,
        wire.OP_REPLY: _on_reply,
    }

    def _finish_chunk(self, job: _Job, state: State) -> None:
        self.chunk_map.set(job.index, state)
        self._unacked -= job.sent
        del self._jobs[job.index]
        self._settled += 1
