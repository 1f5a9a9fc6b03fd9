"""Provides Differences: where inside each differing chunk the bytes differ, as a run finds out
(at sub-block granularity, 4 KiB), kept within a bound; and `differing_ranges`, the byte ranges
of a device that differ, which the owners of the differences are looked up from, and
`split_by`, which cuts them by who owns what.

Recording costs the run nothing it does not already know: the sub-digests of a dry run, the
pieces a sync sends, the runs a direct compare reports. Past the bound, a differing chunk is
known only whole: the ranges then say so, and owners of such a chunk are its whole contents'.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

from blocksync_tui.engine.chunkmap import ChunkView

MAX_CHUNKS = 65536
"""Differing chunks whose runs are kept, at most..."""
MAX_RUNS = 1 << 18
"""...and runs in all (2 MiB of them), so a device that differs everywhere costs a bounded
record, not one per chunk."""
MAX_RANGES = 1 << 18
"""Byte ranges handed to an owners lookup at most."""


class Differences:
    """The differing runs of each differing chunk, as (start, end) byte offsets in the chunk."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.runs: dict[int, bytes] = {}
        """Packed (start, end) pairs of each recorded chunk, by chunk index."""
        self.count = 0
        """Runs kept in all."""
        self.dropped = 0
        """Differing chunks seen after the bound: known only whole."""

    def add(self, index: int, runs: Iterable[tuple[int, int]]) -> None:
        """Record where chunk `index` differs (replacing what was recorded of it)."""
        flat = array("I")
        for start, end in runs:
            if flat and flat[-1] == start:
                flat[-1] = end  # adjacent: one run
            else:
                flat.extend((start, end))
        old = self.runs.pop(index, None)
        if old is not None:
            self.count -= len(old) // 8
        if len(self.runs) >= MAX_CHUNKS or self.count + len(flat) // 2 > MAX_RUNS:
            self.dropped += 1
            return
        self.runs[index] = flat.tobytes()
        self.count += len(flat) // 2

    def of(self, index: int) -> list[tuple[int, int]] | None:
        """The recorded runs of a chunk, or None."""
        packed = self.runs.get(index)
        return None if packed is None else self._pairs(packed)

    def merge(self, other: Differences) -> None:
        """Take in the record of another lane of the same run (other chunks)."""
        for index, packed in other.runs.items():
            self.add(index, self._pairs(packed))
        self.dropped += other.dropped

    @staticmethod
    def _pairs(packed: bytes) -> list[tuple[int, int]]:
        flat = array("I", packed)
        return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def differing_ranges(
    chunk_map: ChunkView, differences: Differences | None, chunk_size: int, size: int
) -> tuple[list[tuple[int, int]], int, bool]:
    """The byte ranges (offset, length) of the device that differ, in order, adjacent ones
    merged; the number of differing chunks known only whole (their ranges are the whole chunk);
    and whether the ranges were cut at MAX_RANGES."""
    ranges: list[list[int]] = []
    whole = 0

    def add(start: int, end: int) -> None:
        if ranges and ranges[-1][1] == start:
            ranges[-1][1] = end
        else:
            ranges.append([start, end])

    for run in chunk_map.changed_runs():
        for index in range(run.first, run.first + run.count):
            base = index * chunk_size
            recorded = differences.of(index) if differences is not None else None
            if recorded is None:
                whole += 1
                add(base, min(size, base + chunk_size))
            else:
                for start, end in recorded:
                    add(base + start, min(size, base + end))
            if len(ranges) > MAX_RANGES:
                return [(s, e - s) for s, e in ranges[:MAX_RANGES]], whole, True
    return [(s, e - s) for s, e in ranges], whole, False


def split_by(pieces: list[tuple[int, int]], extents: Sequence[tuple[int, int, object]]):
    """Split sorted, disjoint byte pieces (start, end) by sorted, disjoint labelled extents
    (start, end, label): yields (start, end, label) for the parts inside one, (start, end,
    None) for the others."""
    k = 0
    for start, end in pieces:
        pos = start
        while k < len(extents) and extents[k][1] <= pos:
            k += 1
        j = k
        while pos < end:
            if j < len(extents) and extents[j][0] < end:
                lo, hi, label = extents[j]
                if lo > pos:
                    yield pos, lo, None
                    pos = lo
                cut = min(hi, end)
                if cut > pos:
                    yield pos, cut, label
                    pos = cut
                if hi <= end:
                    j += 1
                else:
                    break
            else:
                yield pos, end, None
                pos = end
