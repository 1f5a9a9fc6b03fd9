"""Provides Prior and Scope: what a run is told before it starts, and which chunks it then reads.

A prior says, per chunk, that it is already *settled* (equal on both sides, or written) or
*suspect*. It comes from a resume state file (engine.resume), from a list of changed ranges
(`--changed-from`, engine.changelist) or from a dry run the app just reviewed. A run then reads
only the suspect chunks, plus a random sample of the settled ones; if the sample finds one
that differs, the prior was wrong and the run compares everything else too (Transfer does
that). A shortcut is never trusted blindly.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from blocksync_tui.engine.chunkmap import State

SETTLED_STATES = (State.SAME, State.ZERO, State.WRITTEN, State.UPDATED)
"""The states in which a chunk needs nothing more: equal, or written (and not failed)."""
SAMPLE_SHARE = 0.001
"""The share of the settled chunks that a run reads again..."""
SAMPLE_MIN = 64
"""...and at least this many (all of them, if there are fewer)."""

_NORMAL = bytes(i if i in SETTLED_STATES else State.PENDING for i in range(256))
"""A translation table: a settled state stays, anything else becomes PENDING (suspect)."""
_SUSPECT_RUNS = re.compile(b"\\x00+")
_SETTLED_RUNS = re.compile(b"[^\\x00]+")


def settled_only(states: bytes) -> bytes:
    """The states with every unsettled one (pending, differs, error...) made PENDING."""
    return bytes(states).translate(_NORMAL)


@dataclass(frozen=True)
class Prior:
    """What is known of a pair before a run: one State byte per chunk of `chunk_size` bytes;
    a settled state (SETTLED_STATES) for a chunk that needs nothing, PENDING for a suspect one."""

    states: bytes
    chunk_size: int
    source: str
    """What settled the chunks, for messages and the report: "resume", "list", "dry run"."""

    @classmethod
    def of(cls, states: bytes, chunk_size: int, source: str) -> Prior:
        """A prior from any chunk states (a dry run's map): only the settled ones count."""
        return cls(settled_only(states), chunk_size, source)

    @property
    def settled(self) -> int:
        """How many chunks it settles."""
        return len(self.states) - self.states.count(State.PENDING)

    def settled_bytes(self, size: int) -> int:
        """How many bytes of a `size`-byte device it settles (the last chunk may be short)."""
        total = self.settled * self.chunk_size
        last = len(self.states) - 1
        if last >= 0 and self.states[last] != State.PENDING:
            total -= last * self.chunk_size + self.chunk_size - size
        return total

    def fits(self, total: int, chunk_size: int) -> bool:
        """Whether it describes a device of `total` chunks of `chunk_size`."""
        return self.chunk_size == chunk_size and len(self.states) == total

    def combine(self, other: Prior) -> Prior:
        """Both priors' knowledge: a chunk is settled if either settles it (each is evidence
        of its own that the chunk needs nothing; the sample checks both)."""
        mine = self.states
        out = bytearray(mine)
        for theirs in _SETTLED_RUNS.finditer(other.states):
            for gap in _SUSPECT_RUNS.finditer(mine, theirs.start(), theirs.end()):
                out[gap.start() : gap.end()] = other.states[gap.start() : gap.end()]
        return Prior(bytes(out), self.chunk_size, f"{self.source} and {other.source}")


def sample_size(settled: int) -> int:
    """How many of `settled` chunks a run reads again: SAMPLE_SHARE, at least SAMPLE_MIN."""
    return min(settled, max(SAMPLE_MIN, math.ceil(settled * SAMPLE_SHARE)))


class Scope:
    """The chunks first..end-1 that one transfer settles, split by a prior.

    `initial` holds the state each chunk starts in: PENDING for the chunks to read (the suspect
    ones and the sample), the prior's state for the others. Without a prior every chunk is read.
    """

    def __init__(self, first: int, end: int, prior: Prior | None, rng: random.Random | None = None) -> None:
        self.first = first
        self.end = end
        self.sample: frozenset[int] = frozenset()
        """The settled chunks read again, by index."""
        self.initial: bytes | None = None
        """One State per chunk of first..end-1, or None: no prior, every chunk is read."""
        self.source = prior.source if prior else ""
        if prior is None:
            return
        states = bytearray(prior.states[first:end])
        settled = len(states) - states.count(State.PENDING)
        picks = sorted((rng or random.SystemRandom()).sample(range(settled), sample_size(settled)))
        chosen: list[int] = []
        seen = 0  # settled chunks before the current run
        it = iter(picks)
        pick = next(it, None)
        for run in _SETTLED_RUNS.finditer(states):
            length = run.end() - run.start()
            while pick is not None and pick < seen + length:
                chosen.append(first + run.start() + pick - seen)
                pick = next(it, None)
            seen += length
        for index in chosen:
            states[index - first] = State.PENDING
        self.sample = frozenset(chosen)
        self.initial = bytes(states)

    @property
    def settled(self) -> int:
        """How many chunks start settled (and are not read, unless the sample finds a lie)."""
        if self.initial is None:
            return 0
        return len(self.initial) - self.initial.count(State.PENDING)

    def to_read(self, widened: bool = False) -> int:
        """How many chunks a pass reads: the scoped ones, or (`widened`) the settled ones."""
        if self.initial is None:
            return 0 if widened else self.end - self.first
        return self.settled if widened else len(self.initial) - self.settled

    def windows(self, size: int, widened: bool = False) -> Iterator[list[tuple[int, int]]]:
        """The chunks of a pass as windows of `size` chunks each (the last may be short), each
        a list of (first, count) runs in device order: the scoped chunks, or (`widened`, after
        the sample found a difference) the settled ones, which are then read too."""
        if self.initial is None:
            runs: Iterator[tuple[int, int]] = iter([] if widened else [(self.first, self.end - self.first)])
        else:
            pattern = _SETTLED_RUNS if widened else _SUSPECT_RUNS
            runs = ((self.first + m.start(), m.end() - m.start()) for m in pattern.finditer(self.initial))
        window: list[tuple[int, int]] = []
        room = size
        for start, count in runs:
            while count:
                take = min(count, room)
                window.append((start, take))
                start, count, room = start + take, count - take, room - take
                if not room:
                    yield window
                    window, room = [], size
        if window:
            yield window
