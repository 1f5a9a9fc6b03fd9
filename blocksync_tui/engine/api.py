"""Provides Engine: the one API a front end drives, whether the engine runs here or in a child.

`sync.SyncEngine` (in the caller's process: the CLI) and `process.EngineProcess` (in a process of
its own: the app) both satisfy it; front ends type against this protocol, never against either
class, and `tests/test_layering.py` checks that both keep satisfying it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from blocksync_tui.engine.chunkmap import ChunkView
from blocksync_tui.engine.differences import Differences
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.layout import Layout
from blocksync_tui.engine.options import SyncOptions
from blocksync_tui.engine.report import Progress, Report


@runtime_checkable
class Engine(Protocol):
    """Compare or sync one source with one destination.

    `prepare()` connects and opens both ends read-only, then `run()` compares or syncs. While
    `run()` blocks, another thread may call `progress()`, `pause()`, `resume()` and `cancel()`,
    and read `chunk_map`. The attributes are read-only here (properties) so that each
    implementation may keep them as plain attributes of its own, narrower types.
    """

    @property
    def source(self) -> Endpoint: ...

    @property
    def destination(self) -> Endpoint: ...

    @property
    def options(self) -> SyncOptions: ...

    @property
    def size(self) -> int:
        """The source's size in bytes, once prepared."""
        ...

    @property
    def warnings(self) -> list[str]:
        """What a user should know before the run (a larger destination...), once prepared."""
        ...

    @property
    def notes(self) -> list[str]:
        """What a user should know before the run that is no warning ("resuming at 40%")."""
        ...

    @property
    def source_info(self) -> dict:
        """What the source's worker said of it (kind, size, mounted...), once prepared."""
        ...

    @property
    def destination_info(self) -> dict:
        """What the destination's worker said of it, once prepared."""
        ...

    @property
    def source_layout(self) -> Layout | None:
        """The source's partition table and file systems, once prepared (None: not read)."""
        ...

    @property
    def destination_layout(self) -> Layout | None:
        """The destination's (None: it does not exist yet, or its layout was not read)."""
        ...

    @property
    def algorithm(self) -> str:
        """The chunk digest both workers agreed on."""
        ...

    @property
    def compression(self) -> str:
        """The codec chunk data travels in."""
        ...

    @property
    def chunk_map(self) -> ChunkView:
        """The per-chunk states, readable at any time from any thread."""
        ...

    @property
    def cancelled(self) -> bool:
        """True once `cancel()` was called."""
        ...

    @property
    def differences(self) -> Differences | None:
        """Where the differing chunks differ, at sub-block granularity, as far as the run found
        out (bounded: see engine.differences); None before a run."""
        ...

    def prepare(self) -> None:
        """Start both workers, open both ends read-only and check that the run can go ahead.

        Raises:
            BlocksyncError: with a message for the user; nothing has been written.
        """
        ...

    def run(self) -> Report:
        """Compare or sync to the end (preparing first if need be).

        Raises:
            Cancelled: `cancel()` was called; the report still says what was done.
            BlocksyncError: the run failed.
        """
        ...

    def cancel(self) -> None:
        """Stop at the next chunk boundary; writes already sent are completed and flushed."""
        ...

    def pause(self) -> None:
        """Stop issuing new work until `resume()`; work in flight completes."""
        ...

    def resume(self) -> None:
        """Continue after `pause()`."""
        ...

    def progress(self) -> Progress:
        """A snapshot of where the run is (cheap: many times a second)."""
        ...

    def report(self) -> Report:
        """The result of the run."""
        ...

    def close(self) -> None:
        """Stop both workers (the destination finishes and flushes its writes first)."""
        ...
