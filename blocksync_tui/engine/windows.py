"""Provides Geometry, Window and Side: how a device is cut into chunks, and the windows of
chunks asked of a worker.

A window's answers must come in device order, each batch inside one of its runs: Window keeps
that check O(1) however many runs it has, so a worker cannot answer for a chunk nobody asked
for, twice, or out of order.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from blocksync_tui.engine.connection import Connection


def runs_of(indexes: list[int]) -> list[list[int]]:
    """[first, count] runs of consecutive numbers in a sorted list."""
    runs: list[list[int]] = []
    for index in indexes:
        if runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1][1] += 1
        else:
            runs.append([index, 1])
    return runs


@dataclass(frozen=True)
class Geometry:
    """How a device of `size` bytes is cut into chunks."""

    size: int
    chunk_size: int

    @property
    def total(self) -> int:
        """The number of chunks: the last one may be short."""
        return -(-self.size // self.chunk_size)

    def chunk(self, index: int) -> tuple[int, int]:
        """(offset, length) of a chunk."""
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)


class Window:
    """One window of chunks asked of a worker: runs (first, count) in device order, and how
    many of its chunks have been answered. Its entries must come in that order, each batch
    inside one run: a cursor keeps that check O(1) however many runs a window has."""

    def __init__(self, runs: list[tuple[int, int]]) -> None:
        self.runs = runs
        self.total = sum(count for _, count in runs)
        self.got = 0
        self._run = 0
        """The run the next entry belongs to..."""
        self._into = 0
        """...and how far into it."""
        self._starts = [first for first, _ in runs]

    @property
    def due(self) -> int:
        """The index of the next chunk to be answered (past the end once all are)."""
        if self._run >= len(self.runs):
            first, count = self.runs[-1]
            return first + count
        return self.runs[self._run][0] + self._into

    def take(self, first: int, count: int) -> bool:
        """Accept a batch of `count` entries from chunk `first`, if it is the next one and
        stays inside its run."""
        if self._run >= len(self.runs) or first != self.due:
            return False
        if self._into + count > self.runs[self._run][1]:
            return False
        self._into += count
        self.got += count
        if self._into == self.runs[self._run][1]:
            self._run, self._into = self._run + 1, 0
        return True

    def ahead(self, index: int) -> bool:
        """Whether chunk `index` belongs to the window and is not answered yet."""
        if index < self.due:
            return False
        k = bisect.bisect_right(self._starts, index) - 1
        return k >= 0 and index < self.runs[k][0] + self.runs[k][1]


@dataclass
class Side:
    """The pipeline's view of one worker: its connection and how far its scan is."""

    conn: Connection
    next_window: int = 0
    windows_done: int = 0
    scanned: int = 0
    windows: dict[int, Window] = field(default_factory=dict)
    """The windows in flight, by request id (ids are per connection)."""
