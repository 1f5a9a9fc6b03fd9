"""Provides ChunkMap: one byte of state per chunk, counters, dirty tracking and change runs;
and ChunkView, the read side that every reader of chunk states uses.

The engine thread writes states; a UI thread polls `counts()` and `take_dirty()` at its own
rate. A single byte store into a bytearray is atomic under the GIL, so readers never see a torn
state; the dirty set is swapped under a lock.
"""

from __future__ import annotations

import mmap
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum


class State(IntEnum):
    """What is known about one chunk. Values are stored in a bytearray: never renumber."""

    PENDING = 0
    """Not yet hashed on both sides."""
    SAME = 1
    """Identical on both sides (and not all zero)."""
    ZERO = 2
    """Identical on both sides, all zero bytes, allocated on at least one side (zeros written,
    or any zero chunk of a block device)."""
    DIFFERS = 3
    """Differs; a dry run stops here, a sync will write it."""
    WRITTEN = 4
    """Differed and has been written to the destination."""
    ERROR = 5
    """Could not be read, written or verified."""
    UPDATED = 6
    """The source changed while the sync ran; the chunk was synced again."""
    HOLE = 7
    """Identical, all zeros, and a hole on both sides: no block of either file holds it
    (SEEK_DATA/SEEK_HOLE), so neither was read."""


STATE_NAMES: dict[State, str] = {s: s.name.lower() for s in State}

DIFFERING: tuple[State, ...] = (State.DIFFERS, State.WRITTEN, State.ERROR, State.UPDATED)
"""The states of a chunk that differed between source and destination before the run: the one
rule every count of "differing" chunks follows (report, progress bar, stats, review). An UPDATED
chunk differed and was written, then rewritten because the source changed under it: it counts."""

EQUAL: tuple[State, ...] = (State.SAME, State.ZERO, State.HOLE)
"""The states of a chunk found equal on both sides."""

_CHANGED = bytes(DIFFERING)


def differing(counts: Mapping[State, int]) -> int:
    """How many chunks differ(ed), from a chunk count per state."""
    return sum(counts.get(state, 0) for state in DIFFERING)

# Past this many dirty chunks between two polls, the reader simply repaints everything.
_DIRTY_LIMIT = 1 << 16


@dataclass(frozen=True)
class Run:
    """A run of consecutive changed chunks."""

    first: int
    count: int


class ChunkView(ABC):
    """The read side of per-chunk states: what a map, a legend or a report reads.

    `ChunkMap` (the engine's own, written in this process) and `process.SharedChunkView` (states
    in shared memory, written by the engine's process) both are one, so a reader cannot tell
    them apart. Readers poll: `generation` says whether anything changed, `take_dirty` what.
    """

    total: int
    """How many chunks the device has."""
    states: bytearray | mmap.mmap
    """One State byte per chunk."""

    def get(self, index: int) -> State:
        """The state of one chunk."""
        return State(self.states[index])

    def snapshot(self) -> bytes:
        """An immutable copy of all states (for rendering or reports)."""
        return bytes(self.states[: self.total])

    def changed_runs(self) -> list[Run]:
        """Runs of consecutive chunks that differed before the run, in device order."""
        return self.runs(_CHANGED)

    def runs(self, states: Iterable[int]) -> list[Run]:
        """Runs of consecutive chunks whose state is one of `states`, in device order."""
        pattern = re.compile(b"[" + re.escape(bytes(states)) + b"]+")
        return [Run(m.start(), m.end() - m.start()) for m in pattern.finditer(self.snapshot())]

    @abstractmethod
    def count(self, state: State) -> int:
        """How many chunks are in `state` now."""

    @abstractmethod
    def counts(self) -> dict[State, int]:
        """A consistent copy of the chunk count per state."""

    @property
    @abstractmethod
    def generation(self) -> int:
        """Changes whenever a state changed: a cheap "did anything change" test for pollers."""

    @abstractmethod
    def take_dirty(self) -> set[int] | None:
        """The chunks changed since the last call, or None when everything should be redrawn."""


class ChunkMap(ChunkView):
    """Per-chunk states of one device, readable from another thread while being written."""

    def __init__(self, total_chunks: int, buffer: bytearray | mmap.mmap | None = None) -> None:
        """Create a map of `total_chunks` PENDING chunks.

        Args:
            total_chunks: How many chunks the device has.
            buffer: Where to keep the states (zero-filled, at least `total_chunks` bytes): shared
                memory lets another process read them (see engine.process). Default: private.
        """
        self.total = total_chunks
        """How many chunks the device has."""
        self.states = buffer if buffer is not None else bytearray(total_chunks)
        """One State per chunk (all PENDING at first)."""
        self._counts = [0] * len(State)
        self._counts[State.PENDING] = total_chunks
        self._dirty: set[int] = set()
        self._all_dirty = False
        self._lock = threading.Lock()
        self._generation = 0

    def set(self, index: int, state: State) -> None:
        """Set the state of one chunk."""
        old = self.states[index]
        if old == state:
            return
        self.states[index] = state
        with self._lock:
            self._counts[old] -= 1
            self._counts[state] += 1
            self._generation += 1
            if not self._all_dirty:
                self._dirty.add(index)
                if len(self._dirty) > _DIRTY_LIMIT:
                    self._all_dirty = True
                    self._dirty.clear()

    def load(self, first: int, states: bytes) -> None:
        """Set the states of chunks first.. at once (a prior's), counted, all redrawn."""
        end = first + len(states)
        old = bytes(self.states[first:end])
        self.states[first:end] = states
        with self._lock:
            for state in State:
                self._counts[state] += states.count(state) - old.count(state)
            self._generation += 1
            self._all_dirty = True
            self._dirty.clear()

    def count(self, state: State) -> int:
        """How many chunks are in `state` now."""
        return self._counts[state]

    def counts(self) -> dict[State, int]:
        """A consistent copy of all counters."""
        with self._lock:
            return {s: self._counts[s] for s in State}

    @property
    def generation(self) -> int:
        """Bumped on every change."""
        return self._generation

    def take_dirty(self) -> set[int] | None:
        """The chunks changed since the last call, or None when everything should be redrawn."""
        with self._lock:
            if self._all_dirty:
                self._all_dirty = False
                return None
            dirty, self._dirty = self._dirty, set()
            return dirty
