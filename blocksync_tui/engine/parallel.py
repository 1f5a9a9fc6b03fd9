"""Provides ParallelEngine: one run split into lanes, each an engine process of its own.

`--streams N` cuts the device into N contiguous shares of chunks. Each lane is an
`EngineProcess` (its own interpreter, its own pair of workers and, over SSH, its own
connections), so one run uses every core of the controller and several TCP streams: one
paramiko connection is bound to one core by its packetizer. The lanes write their chunk states
into one shared map; progress and the report are summed here. Nothing here knows the wire.

Writing starts only once every lane has opened the destination for writing: the first lane
opens it (creates it if absent, truncates a file to the source's size), and the others open
the very object it reports, so no lane's write changes what another has yet to check.

Each lane uses the destination's digest cache for its share (and re-reads its own sample of
it); each keeps its share of a new one, which is merged here once every lane is done.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

from blocksync_tui.engine import chunkmap, digest_cache, resume
from blocksync_tui.engine.api import Engine
from blocksync_tui.engine.chunkmap import State
from blocksync_tui.engine.differences import Differences
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import BlocksyncError, Cancelled, ProtocolError
from blocksync_tui.engine.layout import Layout
from blocksync_tui.engine.options import SshOptions, SyncOptions, auto_streams
from blocksync_tui.engine.process import (
    EngineProcess,
    SharedChunkView,
    open_shared_map,
    remove_shared_map,
    shared_map_file,
)
from blocksync_tui.engine.regions import summed_rows
from blocksync_tui.engine.report import Progress, Report, outcome_of
from blocksync_tui.engine.sync import SyncEngine, cancel_message
from blocksync_tui.engine.transports import transport_factory

POLL_SECONDS = 0.05
_PHASES = ("connecting", "scanning", "flushing", "verifying", "done")
"""A run's phases in order: the run as a whole is where its slowest lane is."""


def engine_for(
    source: Endpoint, destination: Endpoint, options: SyncOptions, ssh: SshOptions,
    own_process: bool = False,
) -> Engine:
    """The engine of a run: in lanes with `options.streams` > 1 (None: as `auto_streams` says),
    else one SyncEngine, here or (`own_process`: for a UI, whose threads would slow it) in an
    EngineProcess."""
    if options.streams is None:
        cached = options.cache == "auto" and digest_cache.cache_path(str(destination)).exists()
        streams = auto_streams(source.is_remote or destination.is_remote, cached=cached)
        if streams == 1 and (source.is_remote or destination.is_remote) and not cached:
            return AutoLanes(source, destination, options, ssh, own_process)
        options = replace(options, streams=streams)
    if options.streams > 1:
        return ParallelEngine(source, destination, options, ssh)
    if own_process:
        return EngineProcess(source, destination, options, ssh)
    return SyncEngine(source, destination, options, transport_factory(ssh))


class AutoLanes:
    """The `api.Engine` of a run with a remote side whose lanes were left to decide: one lane,
    unless its prepare finds a first copy that one connection's window would hold back over a
    long link (SyncEngine.lanes_wanted). Then that one is closed (prepare writes nothing) and
    the run is prepared afresh in that many lanes, each with its own connection; a note says
    why. Everything else is the engine's that runs."""

    def __init__(
        self, source: Endpoint, destination: Endpoint, options: SyncOptions, ssh: SshOptions,
        own_process: bool = False,
    ) -> None:
        self._make = lambda streams: engine_for(source, destination, replace(options, streams=streams), ssh, own_process)
        self._engine: Engine = (
            EngineProcess(source, destination, options, ssh) if own_process
            else SyncEngine(source, destination, options, transport_factory(ssh))
        )
        self.streams = 1
        """The lanes the run takes, once prepared."""
        self._prepared = False

    def prepare(self) -> None:
        self._engine.prepare()
        self._prepared = True
        lanes, link = getattr(self._engine, "lanes_wanted", 1), getattr(self._engine, "long_link", "")
        if lanes <= 1:
            return
        self._engine.close()
        self._engine = self._make(lanes)
        self._engine.prepare()
        self.streams = lanes
        self._engine.notes.append(f"{link}: {lanes} lanes, each with its own connection (--streams 1 keeps one)")

    def run(self) -> Report:
        if not self._prepared:
            self.prepare()
        return self._engine.run()

    def __getattr__(self, name: str):
        return getattr(self._engine, name)


class ParallelEngine:
    """The `api.Engine` of a run in `streams` lanes (see the module's docstring)."""

    def __init__(
        self, source: Endpoint, destination: Endpoint, options: SyncOptions,
        ssh: SshOptions | None = None,
    ) -> None:
        self.source = source
        self.destination = destination
        self.options = options
        self.options.check()
        streams = options.streams or 1
        self._map_file = shared_map_file(0)
        self.lanes = [
            EngineProcess(source, destination, replace(options, streams=1, lane=(k, streams)), ssh,
                          map_file=self._map_file)
            for k in range(streams)
        ]
        self.chunk_map = SharedChunkView(bytearray(), 0)
        self._errors: list[BaseException | None] = [None] * streams
        self._cancelled = False
        self._paused = False
        self._report: Report | None = None
        self._prepared = False
        self._cache_kept = False

    # -- what the first lane found (every lane opened the same pair)

    @property
    def size(self) -> int:
        return self.lanes[0].size

    @property
    def warnings(self) -> list[str]:
        return self.lanes[0].warnings

    @property
    def notes(self) -> list[str]:
        return self.lanes[0].notes

    @property
    def source_info(self) -> dict:
        return self.lanes[0].source_info

    @property
    def destination_info(self) -> dict:
        return self.lanes[0].destination_info

    @property
    def source_layout(self) -> Layout | None:
        return self.lanes[0].source_layout

    @property
    def destination_layout(self) -> Layout | None:
        return self.lanes[0].destination_layout

    @property
    def algorithm(self) -> str:
        return self.lanes[0].algorithm

    @property
    def compression(self) -> str:
        return self.lanes[0].compression

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    # -- prepare and run

    def prepare(self) -> None:
        """Prepare every lane at once (connections side by side); the first error wins."""
        self._each(lambda lane: lane.prepare())
        first = self.lanes[0]
        for lane in self.lanes[1:]:
            if (lane.size, lane.algorithm, lane.compression) != (first.size, first.algorithm, first.compression):
                self.close()
                raise ProtocolError("the lanes of the run found different devices or settings: run again")
        total = first.chunk_map.total
        self.chunk_map = SharedChunkView(open_shared_map(self._map_file, total), total)
        self._prepared = True

    def _each(self, step) -> None:
        """Run `step` on every lane in threads of its own; raise the first lane's error."""
        errors: list[BaseException | None] = [None] * len(self.lanes)

        def run(k: int) -> None:
            try:
                step(self.lanes[k])
            except BaseException as exc:  # handed to the calling thread
                errors[k] = exc

        threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(len(self.lanes))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for exc in errors:
            if exc is not None:
                self.close()
                raise exc

    def run(self) -> Report:
        """Run every lane; the first failure cancels the others, and is what is raised."""
        if not self._prepared:
            self.prepare()
        try:
            self._run_lanes()
        finally:
            self.close()  # lanes that never started wait for a Run or a Close
        return self._finish()

    def _run_lanes(self) -> None:
        writing = not self.options.dry_run
        threads: list[threading.Thread] = []

        def start(k: int, adopt: dict | None = None) -> None:
            def lane_run() -> None:
                try:
                    # The first lane's open claims a device (O_EXCL) for every lane: it keeps
                    # it until the others are done.
                    self.lanes[k].run(adopt=adopt, hold=writing, linger=writing and k == 0)
                except BaseException as exc:  # kept for the caller; the others are stopped
                    self._errors[k] = exc
                    if not isinstance(exc, Cancelled):
                        self.cancel()

            thread = threading.Thread(target=lane_run, daemon=True)
            thread.start()
            threads.append(thread)

        start(0)
        if writing:
            # The first lane opens (creates, truncates) the destination; the others then open
            # that very object, and nobody writes before all are open.
            if self._writable([0], threads):
                for k in range(1, len(self.lanes)):
                    start(k, adopt=self.lanes[0].writable)
                if self._writable(range(len(self.lanes)), threads):
                    for lane in self.lanes:
                        lane.start_writing()
        else:
            for k in range(1, len(self.lanes)):
                start(k)
        for thread in threads[1:]:
            thread.join()
        self.lanes[0].release_claim()
        threads[0].join()

    def _writable(self, lanes, threads: list[threading.Thread]) -> bool:
        """Wait until these lanes are open for writing; False if the run ended meanwhile."""
        for k in lanes:
            while not self.lanes[k].wait_writable(POLL_SECONDS):
                if self._cancelled or not threads[k].is_alive():
                    self.cancel()  # the lanes waiting to write are told to stop
                    return False
        return not self._cancelled

    def _finish(self) -> Report:
        """The lanes' reports as one; raise the first failure, else a cancel."""
        reports = [lane.last_report for lane in self.lanes]
        path = digest_cache.cache_path(str(self.destination))
        shares = len(self.lanes)
        if all(r is not None and "kept" in r.cache for r in reports) and not any(self._errors):
            self._cache_kept = digest_cache.merge(path, shares)
        else:  # whatever shares some lanes kept: no cache of part of a run
            for k in range(shares):
                digest_cache.part_path(path, (k, shares)).unlink(missing_ok=True)
        self._report = report = self.report()
        failures = [e for e in self._errors if e is not None and not isinstance(e, Cancelled)]
        if report.outcome in ("synced", "identical") and not self.options.dry_run and not report.errors:
            self._forget_state()  # every lane finished its share: nothing is left to resume
        if failures:
            raise failures[0]
        if report.outcome == "cancelled":
            written = self.chunk_map.count(State.WRITTEN)
            raise Cancelled(cancel_message(self.options.dry_run, written))
        return report

    def _forget_state(self) -> None:
        state = self.lanes[0].state_file
        if state and self.options.resume:
            resume.forget(Path(state))

    # -- control

    def cancel(self) -> None:
        self._cancelled = True
        for lane in self.lanes:
            lane.cancel()

    def pause(self) -> None:
        self._paused = True
        for lane in self.lanes:
            lane.pause()

    def resume(self) -> None:
        self._paused = False
        for lane in self.lanes:
            lane.resume()

    # -- results

    def progress(self) -> Progress:
        """The lanes' snapshots summed; the chunk counts from the one shared map."""
        parts = [lane.progress() for lane in self.lanes]
        phases = [p.phase for p in parts]
        if "failed" in phases:
            phase = "failed"
        elif "cancelled" in phases:
            phase = "cancelled"
        else:
            phase = min(phases, key=lambda ph: _PHASES.index(ph) if ph in _PHASES else 0)
        first = parts[0]
        return replace(
            first,
            phase=phase,
            elapsed=max(p.elapsed for p in parts),
            total_chunks=self.chunk_map.total,
            scanned_source=sum(p.scanned_source for p in parts),
            scanned_destination=sum(p.scanned_destination for p in parts),
            bytes_sent=sum(p.bytes_sent for p in parts),
            bytes_differing=sum(p.bytes_differing for p in parts),
            skipped=sum(p.skipped for p in parts),
            wire_bytes=sum(p.wire_bytes for p in parts),
            counts=self.chunk_map.counts(),
            paused=self._paused or any(p.paused for p in parts),
        )

    @property
    def differences(self) -> Differences | None:
        """Every lane's record of where its chunks differ, as one (None before a run)."""
        recorded = [lane.differences for lane in self.lanes if lane.differences is not None]
        if not recorded:
            return None
        merged = Differences(self.options.chunk_size)
        for part in recorded:
            merged.merge(part)
        return merged

    def report(self) -> Report:
        """The lanes' reports as one: sums, the first lane's settings, the shared map's states."""
        if self._report is not None:
            return self._report
        reports = [lane.last_report for lane in self.lanes]
        if not any(reports):
            raise BlocksyncError("the run has not finished")
        base = next(r for r in reports if r is not None)
        done = [r for r in reports if r is not None]
        errors = [e for r in done for e in r.errors]
        lost = [str(e) for e, r in zip(self._errors, reports) if e is not None and r is None]
        counts = self.chunk_map.counts()
        size_difference = base.size_difference
        outcomes = {r.outcome for r in done}
        if lost or "failed" in outcomes:
            phase = "failed"
        elif "cancelled" in outcomes or len(done) < len(reports):
            phase = "cancelled"
        else:
            phase = "done"
        outcome = outcome_of(
            failed=bool(errors or lost) or phase == "failed", cancelled=phase == "cancelled",
            dry_run=self.options.dry_run,
            changed=bool(chunkmap.differing(counts) or size_difference),
        )
        verified = None
        if base.verified is not None:
            verified = all(r.verified for r in done) and len(done) == len(reports) and outcome in ("synced", "identical")
        run_count, largest = Report.runs_of(self.chunk_map, self.options.chunk_size, base.size)
        warnings = list(dict.fromkeys(w for r in done for w in r.warnings))
        cache = [word for word in ("forgotten", "dropped") if any(word in r.cache for r in done)]
        if done and all("used" in r.cache for r in done):
            cache.append("used")
        if self._cache_kept:
            cache.append("kept")
        return replace(
            base,
            outcome=outcome,
            chunks=Report.state_counts(self.chunk_map),
            chunks_differing=chunkmap.differing(counts),
            bytes_differing=sum(r.bytes_differing for r in done),
            bytes_sent=sum(r.bytes_sent for r in done),
            wire_bytes=sum(r.wire_bytes for r in done),
            seconds=max(r.seconds for r in done),
            streams=len(self.lanes),
            verified=verified,
            change_runs=run_count,
            largest_runs=largest,
            errors=errors + lost,
            warnings=warnings,
            chunks_settled=sum(r.chunks_settled for r in done),
            chunks_sampled=sum(r.chunks_sampled for r in done),
            sample_differed=sum(r.sample_differed for r in done),
            partitions=summed_rows([r.partitions for r in done]),
            scanned_source=sum(r.scanned_source for r in done),
            scanned_destination=sum(r.scanned_destination for r in done),
            cache=", ".join(cache),
        )

    def close(self) -> None:
        for lane in self.lanes:
            lane.close()
        remove_shared_map(self._map_file)
