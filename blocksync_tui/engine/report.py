"""Provides Progress (a live snapshot for UIs) and Report (the result of a run, also as JSON)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from blocksync_tui import __version__
from blocksync_tui.engine.chunkmap import STATE_NAMES, ChunkView, State, differing
from blocksync_tui.engine.units import rate

MAX_RUNS_IN_REPORT = 1000
"""The report lists the largest runs of changes, not all of them (a disk can have millions)."""


@dataclass(frozen=True)
class Progress:
    """What a UI shows while a run goes on; cheap to take many times a second."""

    phase: str
    """connecting, scanning, flushing, verifying, done, failed, cancelled."""
    dry_run: bool
    elapsed: float
    size: int
    chunk_size: int
    total_chunks: int
    scanned_source: int
    scanned_destination: int
    bytes_sent: int
    """Chunk data (after zero markers and compression) sent to the destination."""
    bytes_differing: int
    """Bytes that differ, at sub-block granularity, as far as known."""
    wire_bytes: int
    """Everything that crossed both connections, digests and frames included."""
    counts: dict[State, int]
    paused: bool = False
    method: str = "digests"
    """"direct" once the destination's worker compares bytes on one host, "cache" when the
    destination's digests come from its cache."""
    skipped: int = 0
    """Bytes that a prior (resume, --changed-from, a dry run) settled: not read in this run."""

    @property
    def differing(self) -> int:
        """Chunks that differ(ed), by the one rule of `chunkmap.DIFFERING`."""
        return differing(self.counts)

    @property
    def scanned(self) -> int:
        """Bytes compared so far (the slower side; the source's, against a digest cache)."""
        if self.method == "cache":
            return self.scanned_source
        return min(self.scanned_source, self.scanned_destination)

    @property
    def fraction(self) -> float:
        """How far the scan has come, 0..1."""
        return 1.0 if self.size == 0 else min(1.0, (self.scanned + self.skipped) / self.size)

    @property
    def rate(self) -> float:
        """Scan throughput so far, bytes per second."""
        return rate(self.scanned, self.elapsed)

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, if it can be told."""
        if self.phase != "scanning" or self.rate <= 0:
            return None
        return max(0, self.size - self.scanned - self.skipped) / self.rate


def outcome_of(failed: bool, cancelled: bool, dry_run: bool, changed: bool) -> str:
    """A run's outcome: failed, cancelled, or what the comparison found (and a sync did)."""
    if failed:
        return "failed"
    if cancelled:
        return "cancelled"
    if dry_run:
        return "differs" if changed else "identical"
    return "synced" if changed else "identical"


@dataclass
class Report:
    """The result of a compare or sync."""

    source: str
    destination: str
    mode: str
    """"compare" or "sync"."""
    outcome: str
    """identical, differs, synced, failed, cancelled."""
    size: int
    chunk_size: int
    sub_block_size: int
    method: str
    """"digests", "direct" (both ends on one machine: bytes compared there), "stream" (a new
    destination: every chunk with data sent once) or "cache" (source digests against the
    destination's kept ones)."""
    algorithm: str
    compression: str
    total_chunks: int
    chunks: dict[str, int]
    """Chunk count per state name."""
    chunks_differing: int
    bytes_differing: int
    bytes_sent: int
    wire_bytes: int
    seconds: float
    verified: bool | None = None
    change_runs: int = 0
    largest_runs: list[dict[str, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    message: str = ""
    destination_size: int = 0
    """The destination's size before the run."""
    scanned_source: int = 0
    """Bytes of the source this run scanned (hashed, compared or streamed; holes count,
    though they cost no read)."""
    scanned_destination: int = 0
    """The same of the destination: against a digest cache, only the sample re-read and the
    chunks read for their sub-block digests."""
    cache: str = ""
    """What became of the destination's digest cache: "" (none), "used", "kept" (written for
    the next run), "used, kept", "dropped" (the sample found it wrong) or "forgotten"."""
    size_difference: int = 0
    """Destination size minus source size, for a destination file (a device keeps its tail):
    a difference of its own, which a sync removes by truncating or growing the file."""
    settled_by: str = ""
    """What settled chunks before the run, if anything: "resume", "list" (--changed-from),
    "dry run", or two of them ("resume and list")."""
    chunks_settled: int = 0
    """Chunks that prior knowledge settled and this run did not read: their states in
    `chunks` are the ones it gave them."""
    chunks_sampled: int = 0
    """Chunks that prior knowledge settled and this run read again, to check it."""
    sample_differed: int = 0
    """Of those, how many differed: not 0 means the prior was wrong, and the run compared
    every chunk (then chunks_settled is 0)."""
    partitions: list[dict] = field(default_factory=list)
    """Differing bytes and chunks per partition of the destination's layout (else the
    source's), the unpartitioned gaps named "unpartitioned" (engine.regions.DiffTally.rows);
    empty when neither layout was read."""
    owners: list[dict] = field(default_factory=list)
    """What owns the differing bytes, one entry per side looked up (`owners.Owners.to_dict`):
    filled in after the run by whoever asked (`--owners`, the review screen)."""
    tool_version: str = __version__
    """The version of blocksync-tui that made the report."""
    started: str = ""
    """When the run started: ISO 8601 in UTC to the second, e.g. "2025-12-03T07:10:00Z"."""
    source_host: str = ""
    """The host name of the source's machine, as its worker reported it (`uname -n`)."""
    destination_host: str = ""
    """The host name of the destination's machine, as its worker reported it."""
    source_path: str = ""
    """The source's absolute path on its host, symbolic links resolved (`/dev/disk/by-id/...`
    named in `source` is the `/dev/sdX` here)."""
    destination_path: str = ""
    """The destination's absolute path on its host, symbolic links resolved."""
    streams: int = 1
    """The lanes the run took: `--streams`, or what `auto` chose (which may be more than it
    said before connecting: a first copy over a long link, parallel.AutoLanes)."""

    @classmethod
    def runs_of(cls, chunk_map: ChunkView, chunk_size: int, size: int) -> tuple[int, list[dict]]:
        """The number of change runs and the largest ones, with byte offsets."""
        runs = chunk_map.changed_runs()
        largest = sorted(runs, key=lambda r: (-r.count, r.first))[:MAX_RUNS_IN_REPORT]
        return len(runs), [
            {
                "first_chunk": r.first,
                "chunks": r.count,
                "offset": r.first * chunk_size,
                "length": min(size, (r.first + r.count) * chunk_size) - r.first * chunk_size,
            }
            for r in largest
        ]

    @staticmethod
    def state_counts(chunk_map: ChunkView) -> dict[str, int]:
        """Chunk counts keyed by state name."""
        return {STATE_NAMES[s]: n for s, n in chunk_map.counts().items()}

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        """Write the JSON report to a file; the string "-" means stdout (a Path is always a file)."""
        text = self.to_json() + "\n"
        if isinstance(path, str) and path == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            Path(path).write_text(text)
