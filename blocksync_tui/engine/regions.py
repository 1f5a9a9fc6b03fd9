"""Provides Region and DiffTally: a device cut into its partitions and the unpartitioned rest,
and the differing bytes of a run counted per region as the transfer finds them.

The report's per-partition figures come from here. A chunk inside one region (nearly all of
them: partitions start on MiB boundaries) counts whole there; a chunk across a boundary is
split by where its differing bytes lie when the transfer knows (sub-block digests, the pieces
of a delta), else in proportion to its overlap (a direct compare says only how many bytes).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from blocksync_tui.engine.layout import Filesystem, Layout, Partition

UNPARTITIONED = "unpartitioned"
WHOLE = "whole device"


@dataclass(frozen=True)
class Region:
    """A stretch of the device: a partition, an unpartitioned gap, or the whole device."""

    name: str
    """"p2", "unpartitioned" or "whole device"."""
    start: int
    end: int
    partition: Partition | None = None
    fs: Filesystem | None = None


def report_layout(destination: Layout | None, source: Layout | None) -> Layout | None:
    """The layout a report counts by: the destination's (what is overwritten), or the source's
    when the destination has no partition table."""
    if destination is not None and destination.partitions:
        return destination
    if source is not None and source.partitions:
        return source
    return destination or source


def regions_of(layout: Layout | None, size: int) -> list[Region]:
    """The regions that cover `[0, size)` in order; none without a layout. Partitions that
    overlap an earlier one are cut to what is left (a table may lie)."""
    if layout is None or size <= 0:
        return []
    if not layout.partitions:
        return [Region(WHOLE, 0, size, fs=layout.fs)]
    regions: list[Region] = []
    at = 0
    # An extended partition holds the logical ones: they are the regions, not it.
    parts = [p for p in layout.partitions if not p.is_extended]
    for part in sorted(parts, key=lambda p: p.start):
        start, end = max(part.start, at), min(part.end, size)
        if start >= end:
            continue
        if start > at:
            regions.append(Region(UNPARTITIONED, at, start))
        regions.append(Region(part.label, start, end, part, part.fs))
        at = end
    if at < size:
        regions.append(Region(UNPARTITIONED, at, size))
    return regions


class DiffTally:
    """Differing bytes and chunks per region (all zero when there are no regions)."""

    def __init__(self, regions: Sequence[Region]) -> None:
        self.regions = list(regions)
        self._starts = [r.start for r in self.regions]
        self.bytes = [0] * len(self.regions)
        self.chunks = [0] * len(self.regions)

    def add(self, offset: int, length: int, differing: int, spans: Iterable[tuple[int, int]] | None = None) -> None:
        """Count `differing` bytes of the chunk at `offset` of `length` bytes; `spans` are
        (offset in chunk, length) of where they lie, if known."""
        if not self.regions or differing <= 0:
            return
        i = bisect_right(self._starts, offset) - 1
        if i >= 0 and offset + length <= self.regions[i].end:
            self.bytes[i] += differing
            self.chunks[i] += 1
            return
        touched: set[int] = set()
        if spans is None:
            self._split(offset, length, differing, touched)
        else:
            for start, size in spans:
                self._split(offset + start, size, size, touched)
        for k in touched:
            self.chunks[k] += 1

    def _split(self, start: int, length: int, differing: int, touched: set[int]) -> None:
        """Share `differing` bytes of `[start, start + length)` among the regions it overlaps,
        in proportion to each overlap (the last one gets the remainder)."""
        end, left = start + length, differing
        k = max(0, bisect_right(self._starts, start) - 1)
        while k < len(self.regions) and self.regions[k].start < end and left > 0:
            region = self.regions[k]
            overlap = min(end, region.end) - max(start, region.start)
            if overlap > 0:
                share = left if min(end, region.end) >= end else differing * overlap // length
                self.bytes[k] += share
                left -= share
                touched.add(k)
            k += 1

    def rows(self) -> list[dict]:
        """The report's `partitions`: one entry per region, in device order."""
        return [
            {
                "region": r.name,
                "number": r.partition.number if r.partition else None,
                "type": r.partition.type_name if r.partition else "",
                "name": r.partition.name if r.partition else "",
                "fs": r.fs.type if r.fs else "",
                "label": r.fs.label if r.fs else "",
                "uuid": r.fs.uuid if r.fs else "",
                "offset": r.start,
                "length": r.end - r.start,
                "bytes_differing": self.bytes[k],
                "chunks_differing": self.chunks[k],
            }
            for k, r in enumerate(self.regions)
        ]


def summed_rows(parts: Sequence[list[dict]]) -> list[dict]:
    """The rows of lanes that counted the same regions, summed (a parallel run's report)."""
    parts = [p for p in parts if p]
    if not parts:
        return []
    rows = [dict(row) for row in parts[0]]
    for other in parts[1:]:
        if [r["offset"] for r in other] != [r["offset"] for r in rows]:
            continue  # a lane that saw another layout: its counts cannot be placed
        for row, add in zip(rows, other):
            row["bytes_differing"] += add["bytes_differing"]
            row["chunks_differing"] += add["chunks_differing"]
    return rows
