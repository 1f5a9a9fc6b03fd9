"""Provides SyncEngine: make a destination equal to a source by rewriting only what differs.

The engine is the run's order of business; each step has its own module:
`preflight` (typed HELLO and OPEN answers, the checks and the negotiation), `pipeline` (the
scan, compare and write of every chunk), `verify` (reading written chunks back), `report`.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from blocksync_tui.engine import changelist, chunkmap, digest_cache, resume, units
from blocksync_tui.engine.worker import protocol as wire
from blocksync_tui.engine.chunkmap import ChunkMap, State
from blocksync_tui.engine.connection import Connection, Frame, where
from blocksync_tui.engine.digest_cache import CacheError, CacheLayout, DigestCache, Record
from blocksync_tui.engine.differences import Differences
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import (
    BlocksyncError, Cancelled, DestinationAppeared, EndpointError, ProtocolError, RemoteError,
)
from blocksync_tui.engine.layout import Layout, overwritten_file_systems
from blocksync_tui.engine.options import MAX_CHUNK, MIN_CHUNK, SyncOptions
from blocksync_tui.engine.pipeline import CHECKPOINT_SECONDS, Control, Transfer
from blocksync_tui.engine.preflight import (
    DESTINATION,
    SOURCE,
    Flushed,
    Hello,
    Negotiated,
    Opened,
    check_pair,
    negotiate,
    same_host,
)
from blocksync_tui.engine.prior import Prior
from blocksync_tui.engine.regions import DiffTally, Region, regions_of, report_layout
from blocksync_tui.engine.report import Progress, Report, outcome_of
from blocksync_tui.engine.transports import TransportFactory, local_only
from blocksync_tui.engine.verify import Verified, verify
from blocksync_tui.engine.windows import Geometry

__all__ = ["MAX_CHUNK", "MIN_CHUNK", "SyncEngine", "SyncOptions"]

LONG_LINK_SECONDS = 0.02
LONG_LINK_BYTES = 1 << 30
LONG_LINK_RATE = 200_000_000
"""A first copy of at least LONG_LINK_BYTES over a link of LONG_LINK_SECONDS a round trip or
more, whose server's window allows less than LONG_LINK_RATE bytes a second on one
connection, takes LONG_LINK_LANES lanes under `--streams auto`, or notes that they would help
(`_note_a_long_link`)."""
LONG_LINK_LANES = 4
"""Measured through 25 ms each way on 2 cores: a first copy in four lanes took 0.52x the time
of `dd | ssh dd`, in two 0.66x, in one 1.02x."""
PREFETCH_BYTES = 1 << 30
"""Each worker asks its kernel to read this much ahead as soon as its end is open (a lane, its
share of it, from where its share begins): the side up first (a local one, while an SSH
handshake and a remote Python start take 0.5-1.5 s) then has its first chunks in memory when
the scan begins. At the 0.5-1 GB/s of a disk, a second of reading."""
FLUSH_TIMEOUT = 600.0
"""An fsync of a slow disk full of dirty pages can take minutes."""
CHECKPOINT_ENV = "BLOCKSYNC_CHECKPOINT_SECONDS"
"""Seconds between two records of the resume state (default CHECKPOINT_SECONDS)."""


def _checkpoint_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(CHECKPOINT_ENV, CHECKPOINT_SECONDS)))
    except ValueError:
        return CHECKPOINT_SECONDS


def cancel_message(dry_run: bool, written: int) -> str:
    """What a cancelled run says it left behind."""
    if dry_run:
        return "compare cancelled: the destination was not touched"
    return (
        f"sync cancelled after writing {written} chunks: the destination is partly updated "
        "(every write sent was completed and flushed); run the sync again to finish it"
    )


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
        self.method = "digests"
        """How chunks are settled: "digests", "direct" (bytes, both ends on one machine) or
        "stream" (a new destination: the source sends every chunk that holds data)."""
        self.size = 0
        self.phase = "connecting"
        self.size_difference = 0
        """How much longer (or, negative, shorter) a destination file was than the source: a
        difference in itself, which a sync removes by truncating or growing the file."""
        self._events: queue.Queue[Frame] = queue.Queue()
        self._conns: dict[str, Connection] = {}
        self._opened: dict[str, Opened] = {}
        self._layouts: dict[str, Layout] = {}
        self.regions: list[Region] = []
        """The regions the report counts differing bytes by (see engine.regions), once prepared."""
        self._hellos: dict[str, Hello] = {}
        self._started_at = ""
        self._negotiated: Negotiated | None = None
        self._control = Control()
        self._transfer: Transfer | None = None
        self._verified: Verified | None = None
        self._started = time.monotonic()
        self._finished: float | None = None
        self._dest_absent = False
        self._same_host = False
        self._prepared = False
        self._prepare_seconds = 0.0
        self.adopt: dict | None = None
        """Set by a parallel run (engine.parallel) for all lanes but the first: the destination
        as the first lane opened it for writing (created or truncated); this lane must find
        that very object, and treats it as what prepare saw (absent: all holes)."""
        self.notes: list[str] = []
        """What a user should know before the run that is no warning ("resuming at 40%")."""
        self.lanes_wanted = 1
        """The lanes prepare found this run would go faster in: a first copy over a long link
        (`_note_a_long_link`), when its lanes were left to decide (`options.streams` None)."""
        self.long_link = ""
        """Why, in words, once prepare found such a link."""
        self.prior: Prior | None = None
        """What is known before the run (resume state, --changed-from, a dry run), once
        prepared: the run reads the chunks it does not settle, and a sample of those it does."""
        self.state_file: Path | None = None
        """The resume state file of this pair (a sync with `resume`), once prepared."""
        self._checkpoints: resume.Checkpoints | None = None
        self.on_writable: Callable[[dict], None] | None = None
        """Called once the destination is open for writing, before anything is written, with
        what a later open must expect; it may block (a parallel run waits there until every
        lane is open, so that no lane's write changes what another still has to find)."""
        self.on_finished: Callable[[], None] | None = None
        """Called when the run is over, before the workers are stopped; it may block (the
        first lane of a parallel run keeps the destination's exclusive claim, and so the
        device safe from a mount, until every other lane is done)."""
        self._cache_path = digest_cache.cache_path(str(destination))
        self._cached: DigestCache | None = None
        """The destination's kept digests, if they apply to it as it is now."""
        self._host_id = ""
        self._dest_boot = ""
        self._flushed: Flushed | None = None
        self._writing: Opened | None = None
        """The destination as opened for writing (a file created, if it was absent)."""
        self.cache_outcome: list[str] = []
        """What became of the digest cache: used, kept, dropped, forgotten."""

    # -- control from other threads

    def cancel(self) -> None:
        """Stop at the next chunk boundary; writes already sent are completed and flushed."""
        self._control.cancel()

    def pause(self) -> None:
        """Stop issuing new work until `resume()`; work in flight completes."""
        self._control.pause()

    def resume(self) -> None:
        """Continue after `pause()`."""
        self._control.resume()

    @property
    def cancelled(self) -> bool:
        """True once `cancel()` was called."""
        return self._control.cancelled

    @property
    def algorithm(self) -> str:
        """The chunk digest both workers use, once prepared."""
        return self._negotiated.algorithm if self._negotiated else ""

    @property
    def sub_algorithm(self) -> str:
        """Digest of 4 KiB sub-blocks (truncated): xxh64 when both ends have xxhash."""
        return self._negotiated.sub_algorithm if self._negotiated else ""

    @property
    def compression(self) -> str:
        """The codec of chunk data on the wire, once prepared."""
        return self._negotiated.compression if self._negotiated else "none"

    def progress(self) -> Progress:
        """A snapshot of where the run is."""
        transfer = self._transfer
        end = self._finished or time.monotonic()
        return Progress(
            phase=self.phase,
            dry_run=self.options.dry_run,
            elapsed=end - self._started,
            size=self.size,
            chunk_size=self.options.chunk_size,
            total_chunks=self.chunk_map.total,
            scanned_source=transfer.sides[SOURCE].scanned if transfer else 0,
            scanned_destination=transfer.sides[DESTINATION].scanned if transfer else 0,
            skipped=transfer.skipped_bytes if transfer else 0,
            bytes_sent=transfer.bytes_sent if transfer else 0,
            bytes_differing=transfer.bytes_differing if transfer else 0,
            wire_bytes=sum(c.bytes_in + c.bytes_out for c in list(self._conns.values())),
            counts=self.chunk_map.counts(),
            paused=self._control.paused,
            method=self.method,
        )

    @property
    def differences(self) -> Differences | None:
        """Where the differing chunks differ, as far as the run found out (None before a run)."""
        return self._transfer.differences if self._transfer else None

    @property
    def destination_info(self) -> dict:
        """What OPEN said of the destination (kind, size, mounted...), once prepared."""
        opened = self._opened.get(DESTINATION)
        return opened.raw if opened else {}

    @property
    def source_info(self) -> dict:
        """What OPEN said of the source, once prepared."""
        opened = self._opened.get(SOURCE)
        return opened.raw if opened else {}

    @property
    def source_layout(self) -> Layout | None:
        """The source's partition table and file systems, once prepared (None: not read)."""
        return self._layouts.get(SOURCE)

    @property
    def destination_layout(self) -> Layout | None:
        """The destination's, once prepared (None: absent, or not read)."""
        return self._layouts.get(DESTINATION)

    # -- prepare

    def prepare(self) -> None:
        """Start both workers, open both ends read-only and check that the run can go ahead.

        Raises:
            BlocksyncError: with a message for the user; nothing has been written.
        """
        self._started = time.monotonic()
        self._started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._prepare_seconds = 0.0
        try:
            self._start_workers()
            for conn in self._conns.values():  # e.g. a host key accepted under StrictHostKeyChecking no
                self.warnings.extend(getattr(conn.transport, "warnings", ()))
            src, dst = self._conns[SOURCE], self._conns[DESTINATION]
            self._hellos = hellos = {side: self._hello(side) for side in (SOURCE, DESTINATION)}
            self._same_host = same_host(
                hellos[SOURCE], hellos[DESTINATION], src.transport.host_key, dst.transport.host_key
            )
            checked = check_pair(
                self.source, self.destination, self._opened[SOURCE], self._opened[DESTINATION],
                self._same_host, self.options.dry_run,
            )
            self.warnings.extend(checked.warnings)
            self._dest_absent = checked.dest_absent
            self.size_difference = checked.size_difference
            self._negotiated = negotiate(hellos[SOURCE], hellos[DESTINATION], self.options)
        except BaseException:
            self.close()
            raise
        self.size = self._opened[SOURCE].size
        if not self.options.dry_run:  # said before anything is written, and in the report
            self.warnings.extend(overwritten_file_systems(self.destination_layout, self.source_layout))
        self.regions = regions_of(report_layout(self.destination_layout, self.source_layout), self.size)
        self.chunk_map = ChunkMap(Geometry(self.size, self.options.chunk_size).total)
        try:
            self.prior = self._known_before()
        except BaseException:
            self.close()
            raise
        self._host_id = f"{dst.transport.host_identity} machine {hellos[DESTINATION].machine_id}"
        self._dest_boot = hellos[DESTINATION].boot_id
        self._plan_cache()
        self._note_a_long_link()
        self._prepared = True
        self._prepare_seconds = time.monotonic() - self._started

    def _note_a_long_link(self) -> None:
        """A first copy that one connection's window would hold back: an SSH server lets each
        connection have one window in flight per round trip (OpenSSH: 2 MiB, 40 MB/s at 50 ms),
        and lanes each have their own. With `--streams auto` the run then takes LONG_LINK_LANES
        lanes (`lanes_wanted`, see parallel.AutoLanes); with one lane asked for, a note says so."""
        transport = self._conns[DESTINATION].transport
        window, round_trip = transport.send_window, transport.round_trip
        if self.options.lane is not None or self.options.dry_run or not self._dest_absent:
            return
        if not window or round_trip < LONG_LINK_SECONDS or self.size < LONG_LINK_BYTES:
            return
        rate = window / round_trip
        if rate >= LONG_LINK_RATE:
            return
        self.long_link = (
            f"{transport.label} is {round_trip * 1000:.0f} ms away a round trip, and its server takes "
            f"{units.human_bytes(window)} a round trip per connection: about {units.human_rate(rate)}"
        )
        if self.options.streams is None:
            self.lanes_wanted = LONG_LINK_LANES
        else:
            self.notes.append(f"{self.long_link}; --streams {LONG_LINK_LANES} sends through {LONG_LINK_LANES} connections")

    def _known_before(self) -> Prior | None:
        """The prior of this run: what a dry run, a list of changes and a resume state settle
        (each on its own is evidence enough; the sample checks them all)."""
        options, size = self.options, self.size
        geometry = Geometry(size, options.chunk_size)
        priors: list[Prior] = []
        if options.prior is not None:
            if options.prior.fits(geometry.total, options.chunk_size):
                priors.append(options.prior)
            else:
                self.warnings.append(f"the {options.prior.source} was of another size or chunk size: "
                                     "every chunk is compared")
        if options.changed_from:
            listed = changelist.load(options.changed_from, options.chunk_size, size)
            priors.append(listed)
            self.notes.append(
                f"--changed-from {options.changed_from}: {geometry.total - listed.settled:,} of "
                f"{geometry.total:,} chunks changed; the others are not compared, but for a sample"
            )
        if options.resume and not options.dry_run:
            priors.extend(self._resume_state())
        if priors and self._dest_absent:  # a first copy: nothing there to settle
            if options.changed_from:
                self.warnings.append("the destination does not exist yet: the list of changes does not "
                                     "apply, and every chunk is copied")
            return None
        prior = None
        for each in priors:
            prior = each if prior is None else prior.combine(each)
        return prior

    def _resume_state(self) -> list[Prior]:
        """The resume state of this pair, if one was left and is still this pair's."""
        if self._dest_absent:
            return []  # a first copy: its state file is named once the file exists (run)
        src, dst = self._identity(SOURCE, self._opened[SOURCE]), self._identity(DESTINATION, self._opened[DESTINATION])
        self.state_file = self._state_path(src, dst)
        prior, why = resume.load(self.state_file, src, dst, self.options.chunk_size, self.size)
        if why:
            self.warnings.append(why + "; every chunk is compared")
        if prior is None:
            return []
        done = prior.settled_bytes(self.size)
        self.notes.append(f"resuming at {100 * done // max(1, self.size)}% ({self.state_file})")
        return [prior]

    def _identity(self, side: str, opened: Opened) -> dict:
        conn = self._conns[side]
        return resume.identity(conn.transport.host_key, str(conn.hello.get("host", "")), opened)

    def _state_path(self, src: dict, dst: dict) -> Path:
        return Path(self.options.state_file) if self.options.state_file else resume.state_path(src, dst)

    def _hello(self, side: str) -> Hello:
        return self._parsed(side, Hello.parse, self._conns[side].hello)

    def _parsed(self, side: str, parse, answer: dict):
        """A worker's answer as a typed value; one that does not parse is that side's
        protocol error, naming it."""
        try:
            return parse(answer)
        except ProtocolError as exc:
            raise ProtocolError(where(self._conns[side], f"the {side}'s worker sent {exc}")).on(side) from None

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
                self._conns[side] = conn
                request = {"path": endpoints[side].path, "prefetch": PREFETCH_BYTES}
                if self.options.lane:  # each lane reads ahead where its share begins
                    k, n = self.options.lane
                    request.update(prefetch=PREFETCH_BYTES // n, prefetch_share=[k, n])
                if side == DESTINATION and self.options.cache == "auto" and self._cache_path.exists():
                    request["prefetch"] = 0  # its cache may spare reading it at all
                # The read-only OPEN (and LAYOUT) go right behind HELLO: one round trip less.
                asked: list = []
                conn.start(then=lambda: asked.append(self._ask_open(side, request, self.options.layout)))
                opened = self._opened_by(side, request, *asked[0])
                if side == SOURCE and not opened.exists:
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

    def _open(self, side: str, request: dict, layout: bool = False) -> Opened:
        """OPEN, and with `layout` a LAYOUT of what was opened, asked at once (one round trip)."""
        return self._opened_by(side, request, *self._ask_open(side, request, layout))

    def _ask_open(self, side: str, request: dict, layout: bool) -> tuple:
        """Send OPEN (and LAYOUT): what waits for their answers."""
        conn = self._conns[side]
        opening = conn.ask(wire.OP_OPEN, request)
        return opening, conn.ask(wire.OP_LAYOUT, {}) if layout else None

    def _opened_by(self, side: str, request: dict, opening, reading) -> Opened:
        """What an OPEN (and LAYOUT) asked by `_ask_open` answered."""
        conn = self._conns[side]
        try:
            answer = wire.decode_json(opening(self.options.peer_timeout))
        except RemoteError as exc:
            if request.get("create") and exc.errno == errno.EEXIST:
                raise DestinationAppeared(where(conn, f"{exc}: nothing was written")).on(side) from None
            raise EndpointError(where(conn, str(exc))).on(side) from None
        opened = self._parsed(side, Opened.parse, answer)
        if not request.get("peer"):
            self._opened[side] = opened
        if reading is not None:
            self._read_layout(side, reading, opened)
        return opened

    def _read_layout(self, side: str, reading, opened: Opened) -> None:
        """Keep a side's layout; one that cannot be read or parsed is a warning, never a
        failure: the run does not need it."""
        try:
            answer = wire.decode_json(reading(self.options.peer_timeout))
            if opened.exists:
                self._layouts[side] = Layout.parse(answer, opened.size)
        except RemoteError as exc:
            if opened.exists:
                self.warnings.append(f"the {side}'s partition table was not read: {exc}")
        except (ProtocolError, ValueError) as exc:
            self.warnings.append(f"the {side}'s worker sent {exc}: its partitions are not shown")
    # -- the digest cache

    def _cache_layout(self) -> CacheLayout:
        """What a cache of this run's destination holds: its geometry, hashes, sub-digests
        (those only where the scan takes them anyway, and while they fit the cache's bound)."""
        n, o = self._negotiated, self.options
        assert n is not None
        subs = (
            n.subs_during_scan and o.chunk_size > o.sub_block
            and digest_cache.subs_fit(self.chunk_map.total, o.chunk_size, o.sub_block)
        )
        return CacheLayout(self.size, o.chunk_size, n.algorithm, n.digest_size,
                      n.sub_algorithm if subs else "", o.sub_block if subs else 0)

    def _plan_cache(self) -> None:
        """Find the destination's kept digests and decide whether they apply to it as it is
        now (its identity, this run's chunks and hash); say why in one line if not."""
        path = self._cache_path
        if self.options.cache == "forget":
            if digest_cache.forget([str(self.destination)], path.parent):
                self.cache_outcome.append("forgotten")
            return
        if self.options.cache != "auto" or self._dest_absent:
            return
        try:
            cache = digest_cache.load(path)
        except FileNotFoundError:
            return
        except (OSError, CacheError) as exc:
            self.warnings.append(f"cache: {path}: {exc}: ignored, comparing in full")
            return
        now = digest_cache.identity(self._host_id, self._opened[DESTINATION], boot_id=self._dest_boot)
        why = digest_cache.change(cache.identity, now)
        layout, kept = self._cache_layout(), cache.layout
        if why:
            self.warnings.append(f"cache: destination changed since last run ({why}), comparing in full")
        elif (kept.size, kept.chunk_size, kept.algorithm, kept.digest_size) != (
            layout.size, layout.chunk_size, layout.algorithm, layout.digest_size
        ):
            self.warnings.append(f"cache: kept for {kept.describe()}; this run has {layout.describe()}: comparing in full")
        elif (kept.sub_algorithm, kept.sub_block) != (layout.sub_algorithm, layout.sub_block):
            # Its chunk digests still hold; sub-digests of another kind are of no use.
            bare = CacheLayout(kept.size, kept.chunk_size, kept.algorithm, kept.digest_size)
            self._cached = DigestCache(cache.destination, cache.identity, bare, cache.states, cache.digests)
        else:
            self._cached = cache

    def _new_record(self, method: str) -> Record | None:
        """Where this run writes down the destination's digests for the next one, if it can
        know them all: not a compare against a cache (the cache stays as it is) or against
        nothing, not a source that is mounted (it may change while read)."""
        if self.options.cache == "forget" or (self._dest_absent and self.options.dry_run):
            return None
        if method == "cache" and self.options.dry_run:
            return None
        if self._opened[SOURCE].mounted:
            return None
        return Record(self._cache_layout())

    def _cache_verdict(self, transfer: Transfer) -> None:
        """What the sample of the cache found (the transfer re-read it before comparing)."""
        wrong = transfer.sample_wrong
        if not transfer.cache_sampled:
            return  # cancelled before the sample was in
        if not wrong:
            self.cache_outcome.insert(0, "used")
            return
        self.method = transfer.method
        self._cache_path.unlink(missing_ok=True)
        self.cache_outcome.insert(0, "dropped")
        self.warnings.append(
            f"cache: {len(wrong)} of {transfer.sample_size} chunks re-read on the destination differ from "
            "its cache (it was written behind our back): dropped it, comparing in full"
        )

    def _keep_cache(self, record: Record | None) -> None:
        """After a run that settled every chunk: keep the destination's digests, keyed by its
        identity after our writes (the last flush's fstat). A lane of a parallel run keeps its
        share, for the run to merge (engine.parallel)."""
        first, end = self.options.chunk_range(self.chunk_map.total)
        if record is None or record.broken or record.unknown(first, end) or self.errors or self.cancelled:
            return
        opened = self._writing or self._opened[DESTINATION]  # a file just created: as opened
        ident = digest_cache.identity(self._host_id, opened, self._flushed, self._dest_boot)
        lane = self.options.lane
        path = digest_cache.part_path(self._cache_path, lane) if lane else self._cache_path
        try:
            digest_cache.save(path, record.cache(str(self.destination), ident, first, end))
        except OSError as exc:
            self.warnings.append(f"cache: cannot write {self._cache_path}: {exc.strerror or exc}")
            return
        self.cache_outcome.append("kept")

    def _transfer_for(self, method: str, cached: DigestCache | None, record: Record | None) -> Transfer:
        return Transfer(
            self._conns,
            {SOURCE: str(self.source), DESTINATION: str(self.destination)},
            self._events,
            self.chunk_map,
            Geometry(self.size, self.options.chunk_size),
            self._negotiated,  # type: ignore[arg-type]  (set by prepare)
            self.options,
            self._control,
            method,
            self._dest_absent,
            round_trip=max(conn.transport.round_trip for conn in self._conns.values()),
            prior=self.prior,
            tally=DiffTally(self.regions),
            cached=cached,
            record=record,
        )

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
            self.phase = "scanning"
            cached = self._cached
            if not self.options.dry_run and not self.options.compare:
                self.method = "stream"  # asked not to compare: every chunk sent once
            elif cached is not None:
                self.method = "cache"  # only the source is read (even on one host: half the reads)
            elif self._can_compare_directly():
                self.method = "direct"  # one host: cheaper than any data through us
            elif self._dest_absent and not self.options.dry_run:
                self.method = "stream"  # a new file: nothing to compare, every chunk sent once
            record = self._new_record(self.method)
            self._transfer = self._transfer_for(self.method, cached, record)
            self.errors = self._transfer.errors  # one list: the report reads it as it grows
            if not self.options.dry_run:
                # The destination is about to change: a run that fails now leaves no cache.
                self._cache_path.unlink(missing_ok=True)
                writable = self._ask_for_writing()
                if self.options.lane is None:
                    # The scan starts while the writable OPEN travels (its worker answers it
                    # first, in order); the transfer checks that answer before its first write.
                    self._transfer.before_writing = writable
                else:
                    writable()  # a lane is open before any lane writes (parallel.py)
            self._transfer.run()  # against a cache: re-reads a sample of it before any write
            self._transfer.open_for_writing()  # if nothing was written: the answer is still checked
            if cached is not None:
                self._cache_verdict(self._transfer)
            if not self.options.dry_run:
                self.phase = "flushing"
                verifying = self.options.verify and not self.cancelled
                # A lane's worker stays until the run ends: the first one holds the device's claim.
                flushed = [self._flush(last=not verifying and self.options.lane is None)]
                if verifying:
                    self.phase = "verifying"
                    self._verified = verify(self._transfer, lambda: flushed.append(self._flush()))
                self._end_checkpoints(flushed[-1])
            if self.cancelled:
                raise Cancelled(cancel_message(self.options.dry_run, self.chunk_map.count(State.WRITTEN)))
            self._keep_cache(record)
            self.phase = "done"
            return self.report()
        except Cancelled:
            self.phase = "cancelled"
            raise
        except BaseException:
            self.phase = "failed"
            self._last_checkpoint()
            raise
        finally:
            self._finished = time.monotonic()
            if self.on_finished is not None:
                self.on_finished()
            self.close()

    def _start_checkpoints(self, writable: Opened) -> None:
        """Record the resume state of this sync as it goes (see engine.resume)."""
        src, dst = self._identity(SOURCE, self._opened[SOURCE]), self._identity(DESTINATION, writable)
        self.state_file = self._state_path(src, dst)
        first, end = self.options.chunk_range(self.chunk_map.total)
        options = {"chunk_size": self.options.chunk_size, "hash": self.algorithm}
        self._checkpoints = resume.Checkpoints(self.state_file, src, dst, options, self.options.chunk_size,
                                               self.size, first, end)

    def _end_checkpoints(self, flushed: dict) -> None:
        """After the last flush: a complete sync leaves nothing to resume (a lane leaves its
        share done, for the parallel run to remove the file once every lane is); any other
        records where it stopped."""
        checkpoints, transfer = self._checkpoints, self._transfer
        if checkpoints is None or transfer is None:
            return
        first, end = checkpoints.first, checkpoints.end
        complete = not self.cancelled and not self.errors and not self.chunk_map.states[first:end].count(State.ERROR)
        if complete and self.options.lane is None:
            checkpoints.remove()
        else:
            checkpoints.write(bytes(self.chunk_map.states[first:end]), flushed or {}, ended=True)
        if checkpoints.failed:
            self.warnings.append(checkpoints.failed)

    def _last_checkpoint(self) -> None:
        """A failed sync: if the destination still answers, record what it has on disk."""
        if self._checkpoints is None or self._transfer is None or DESTINATION not in self._conns:
            return
        states = bytes(self.chunk_map.states[self._checkpoints.first : self._checkpoints.end])
        try:
            flushed = self._flush_within(30.0)
        except BlocksyncError:
            return  # the last checkpoint stands
        self._checkpoints.write(states, flushed, ended=True)

    def _ask_for_writing(self) -> Callable[[], None]:
        """Ask to reopen the destination for writing: the very object that was checked, or, if
        it was absent, a new file that must still be absent (what appeared meanwhile was never
        compared). Returns what checks the answer, once: it keeps the writable destination and
        starts the checkpoints of a resumable run."""
        checked = self._opened[DESTINATION]
        request: dict = {
            "path": self.destination.path,
            "write": True,
            "chunk_size": self.options.chunk_size,
            "sync_size": self.size,
        }
        if self.adopt is not None:
            request["expect"] = self.adopt
            request["shared"] = True  # the first lane holds the device's exclusive claim
        elif self._dest_absent:
            request["create"] = True
        else:
            request["expect"] = checked.expectation()
        if checked.kind != "block" and self.adopt is None:  # the first lane truncated it
            request["truncate"] = self.size
        asked = self._ask_open(DESTINATION, request, False)

        def check() -> None:
            opened = self._opened_by(DESTINATION, request, *asked)
            if opened.kind == "block" and opened.size < self.size:
                raise EndpointError(f"{self.destination} is too small")
            self._writing = opened
            if self.on_writable is not None:
                self.on_writable(opened.expectation())
            if self.options.resume:
                self._start_checkpoints(opened)
                assert self._transfer is not None and self._checkpoints is not None
                self._transfer.on_checkpoint = self._checkpoints.write
                self._transfer.checkpoint_seconds = _checkpoint_seconds()

        return check

    def _can_compare_directly(self) -> bool:
        """Whether the destination's worker can read the source itself: same machine, and the
        path it opens there is the very file or device the source's worker opened."""
        if not (self.options.direct and self._same_host):
            return False
        if self._dest_absent and self.options.dry_run:
            return False  # nothing to open on the destination: the digest path reads one side
        try:
            peer = self._open(DESTINATION, {"path": self.source.path, "peer": True})
        except EndpointError:
            return False  # another user on that host, say: digests still work
        src = self._opened[SOURCE]
        return peer.exists and (peer.identity, peer.size) == (src.identity, src.size)

    def _flush(self, last: bool = False) -> dict:
        """fsync the destination; its answer (bytes written, and a file's modification time).
        The `last` request of the run: EXIT goes right behind it, so closing waits one round
        trip less."""
        return self._flush_within(FLUSH_TIMEOUT, last)

    def _flush_within(self, timeout: float, last: bool = False) -> dict:
        conn = self._conns[DESTINATION]
        flushing = conn.ask(wire.OP_FLUSH, b"")
        if last:
            conn.ask_exit()
        try:
            answer = wire.decode_json(flushing(timeout))
        except RemoteError as exc:
            raise RemoteError(where(conn, f"flush failed: {exc}")).on(DESTINATION)
        self._flushed = self._parsed(DESTINATION, Flushed.parse, answer)
        return answer

    # -- results

    def report(self) -> Report:
        """The result of the run so far."""
        p = self.progress()
        differing = chunkmap.differing(p.counts)
        changed = bool(differing or self.size_difference)
        outcome = outcome_of(bool(self.errors) or self.phase == "failed", self.phase == "cancelled",
                             self.options.dry_run, changed)
        verified = None
        if self.options.verify and not self.options.dry_run:
            verified = (
                bool(self._verified and self._verified.ok)
                and not p.counts[State.ERROR]
                and outcome in ("synced", "identical")
            )
        run_count, largest = Report.runs_of(self.chunk_map, self.options.chunk_size, self.size)
        transfer = self._transfer
        scope = transfer.scope if transfer else None
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
            warnings=list(self.warnings) + (transfer.warnings if transfer else []),
            destination_size=self.size + self.size_difference,
            size_difference=self.size_difference,
            settled_by=scope.source if scope else "",
            chunks_settled=scope.settled if scope and not transfer.widened else 0,
            chunks_sampled=len(scope.sample) if scope else 0,
            sample_differed=transfer.sample_differed if transfer else 0,
            partitions=(self._transfer.tally if self._transfer else DiffTally(self.regions)).rows(),
            scanned_source=p.scanned_source,
            scanned_destination=p.scanned_destination,
            cache=", ".join(self.cache_outcome),
            started=self._started_at,
            source_host=self._hellos[SOURCE].host if self._hellos else "",
            destination_host=self._hellos[DESTINATION].host if self._hellos else "",
            source_path=self._resolved(SOURCE),
            destination_path=self._resolved(DESTINATION),
        )

    def _resolved(self, side: str) -> str:
        """A side's absolute path as its worker resolved it ("" before it opened)."""
        opened = self._opened.get(side)
        return (opened.realpath or opened.path) if opened is not None else ""

    def close(self) -> None:
        """Stop both workers (the destination finishes and flushes its writes first), side by
        side: with both remote, each one's EXIT costs a round trip, and they overlap."""

        def close(conn: Connection) -> None:
            try:
                conn.close()
            except BlocksyncError:
                pass

        threads = [threading.Thread(target=close, args=(conn,), daemon=True) for conn in self._conns.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
