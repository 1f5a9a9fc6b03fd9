"""Provides small helpers shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

from blocksync_tui.endpoint import Endpoint
from blocksync_tui.engine.report import Report
from blocksync_tui.engine.sync import SyncEngine, SyncOptions


def run_engine(source: Path | str, destination: Path | str, **options: object) -> Report:
    """Prepare and run one compare or sync with local workers."""
    engine = SyncEngine(
        Endpoint.parse(str(source)), Endpoint.parse(str(destination)), SyncOptions(**options)
    )
    engine.prepare()
    return engine.run()


def expected_states(src: bytes, dst: bytes | None, chunk: int) -> list[str]:
    """What a compare must say per chunk: the destination read as zero-padded to the source size."""
    size = len(src)
    padded = bytes(size) if dst is None else (dst[:size] + bytes(max(0, size - len(dst))))
    states = []
    for off in range(0, size, chunk):
        a, b = src[off : off + chunk], padded[off : off + chunk]
        if a != b:
            states.append("differs")
        elif a.count(0) == len(a):
            states.append("zero")
        else:
            states.append("same")
    return states
