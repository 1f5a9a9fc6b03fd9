"""The one engine API: both engines satisfy it, the child's messages, one rule for "differing"."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
from rich.console import Console

from blocksync_tui.engine import process
from blocksync_tui.engine.api import Engine
from blocksync_tui.engine.chunkmap import DIFFERING, ChunkMap, ChunkView, State, differing
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import EndpointError
from blocksync_tui.engine.process import EngineProcess, SharedChunkView
from blocksync_tui.engine.report import Progress
from blocksync_tui.engine.sync import SyncEngine, SyncOptions


def _pair(tmp_path: Path) -> tuple[Endpoint, Endpoint]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"a" * 8192 + b"b" * 8192)
    dst.write_bytes(b"a" * 8192 + b"c" * 8192)
    return Endpoint(str(src)), Endpoint(str(dst))


def test_both_engines_satisfy_the_protocol(tmp_path: Path) -> None:
    source, destination = _pair(tmp_path)
    for engine in (SyncEngine(source, destination), EngineProcess(source, destination)):
        assert isinstance(engine, Engine), type(engine).__name__
        assert isinstance(engine.chunk_map, ChunkView)
    members = {name for name in vars(Engine) if not name.startswith("_")}
    assert {"prepare", "run", "progress", "chunk_map", "cancelled"} <= members


def test_engine_process_runs_and_reports(tmp_path: Path) -> None:
    source, destination = _pair(tmp_path)
    engine = EngineProcess(source, destination, SyncOptions(chunk_size=4096, dry_run=True))
    engine.prepare()
    assert engine.size == 16384 and engine.chunk_map.total == 4
    report = engine.run()
    assert report.outcome == "differs" and report.chunks_differing == 2
    assert engine.chunk_map.snapshot() == bytes([State.SAME] * 2 + [State.DIFFERS] * 2)
    assert engine.chunk_map.changed_runs()[0].first == 2


def test_engine_process_rebuilds_a_prepare_error(tmp_path: Path) -> None:
    engine = EngineProcess(Endpoint(str(tmp_path / "nope")), Endpoint(str(tmp_path / "d")))
    with pytest.raises(EndpointError) as info:
        engine.prepare()
    assert info.value.side == "source"


def test_messages_are_frozen_and_pickle() -> None:
    for message in (process.Pause(), process.Run("/dev/shm/x"), process.Failed("UsageError", "m", None)):
        assert pickle.loads(pickle.dumps(message)) == message
    with pytest.raises(AttributeError):
        process.Run("a").map_file = "b"  # type: ignore[misc]


def test_shared_view_reads_like_the_chunk_map() -> None:
    chunk_map = ChunkMap(5)
    for index, state in enumerate((State.SAME, State.DIFFERS, State.UPDATED, State.ZERO, State.ERROR)):
        chunk_map.set(index, state)
    view = SharedChunkView(bytearray(chunk_map.states), 5)
    for reader in (chunk_map, view):
        assert reader.get(2) == State.UPDATED
        assert reader.counts() == chunk_map.counts()
        assert reader.changed_runs() == chunk_map.changed_runs()
        assert reader.snapshot() == chunk_map.snapshot()


def test_an_updated_chunk_counts_as_differing_everywhere(tmp_path: Path) -> None:
    """UPDATED: differed, was written, and was rewritten because the source changed meanwhile."""
    from blocksync_tui.progress import ProgressDisplay
    from blocksync_tui.tui.widgets.stats import StatsPanel

    assert State.UPDATED in DIFFERING
    counts = {s: 0 for s in State} | {State.DIFFERS: 1, State.WRITTEN: 2, State.UPDATED: 3, State.ERROR: 4}
    assert differing(counts) == 10
    progress = Progress("scanning", False, 1.0, 1 << 20, 4096, 256, 0, 0, 0, 0, 0, counts)
    assert progress.differing == 10

    console = Console(file=io.StringIO(), width=120)
    console.print(StatsPanel("s", "d").table(progress))
    assert "Differing   10 chunks" in console.file.getvalue()  # type: ignore[attr-defined]
    shown: dict = {}
    display = ProgressDisplay(enabled=False)
    display.enabled, display._task = True, 0  # type: ignore[assignment]
    display._progress = type("P", (), {"update": lambda self, task, **kw: shown.update(kw)})()
    display.update(progress)
    assert shown["detail"].startswith("10 chunks differ")

    source, destination = _pair(tmp_path)
    engine = SyncEngine(source, destination)
    engine.chunk_map = ChunkMap(4)
    engine.chunk_map.set(0, State.UPDATED)
    engine.chunk_map.set(1, State.WRITTEN)
    report = engine.report()
    assert report.chunks_differing == 2 and report.change_runs == 1


def test_a_run_prepared_again_shows_one_progress_bar() -> None:
    """The command line prepares a run again when its new destination appeared meanwhile:
    the progress shown the second time is one bar, not the first run's and the second's."""
    from blocksync_tui.progress import ProgressDisplay

    display = ProgressDisplay(enabled=True)
    display._progress.live.console.file = io.StringIO()  # type: ignore[misc]
    for _ in range(2):
        with display:
            pass
    assert len(display._progress.tasks) == 1
