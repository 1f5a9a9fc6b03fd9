"""Write-behind on the destination (worker/writeback.py): written pages go to disk and leave the
cache as the run goes, and a write the kernel lost in writeback is never reported as done."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blocksync_tui.engine.worker import writeback
from blocksync_tui.engine.worker.writeback import STEP, WriteBehind
from blocksync_tui.engine.errors import EndpointError
from helpers import drop_from_cache, resident, run_engine

MIB = 1 << 20


@pytest.fixture
def droppable(tmp_path: Path) -> Path:
    """A directory whose files' clean pages can be dropped from the cache (not tmpfs)."""
    probe = tmp_path / "probe"
    probe.write_bytes(os.urandom(MIB))
    if not drop_from_cache(probe):
        pytest.skip("this file system keeps its pages in memory (tmpfs?)")
    return tmp_path


def _write(fd: int, data: bytes, offset: int, behind: WriteBehind | None) -> None:
    os.pwrite(fd, data, offset)
    if behind is not None:
        behind.wrote(fd, offset, len(data))


@pytest.mark.parametrize("behind", [True, False], ids=["write-behind", "plain"])
def test_written_pages_leave_the_cache_two_steps_behind(droppable: Path, behind: bool) -> None:
    path = droppable / "out.img"
    data = os.urandom(MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        tracker = WriteBehind() if behind else None
        for i in range(6 * STEP // MIB):
            _write(fd, data, i * MIB, tracker)
        cached = resident(path) * os.path.getsize(path)
        if behind:
            # The last step's writeback has started, every step before it is on disk and dropped.
            assert cached <= 2 * STEP
            assert tracker is not None
            tracker.sync(fd)
            assert resident(path) * os.path.getsize(path) <= MIB
        else:  # the control: without it the whole file stays cached (and mostly dirty)
            assert cached >= 5 * STEP
    finally:
        os.close(fd)


def test_a_copy_leaves_the_destination_uncached(droppable: Path) -> None:
    src = droppable / "src.img"
    src.write_bytes(os.urandom(3 * STEP + 12345))
    dst = droppable / "dst.img"
    report = run_engine(src, dst)
    assert report.outcome == "synced"
    assert resident(dst) * os.path.getsize(dst) <= MIB  # before reading it back, which caches it again
    assert dst.read_bytes() == src.read_bytes()


def test_a_write_lost_in_writeback_is_never_reported_done(thin_device) -> None:
    """sync_file_range moves the descriptor's error cursor: a later fsync alone would say all
    is well. The error is kept, and sync raises it."""
    data = os.urandom(MIB)
    fd = os.open(thin_device(20 * MIB, 64 * MIB), os.O_RDWR)
    try:
        behind = WriteBehind()
        errors = []
        # 16 MiB fit, the next 16 do not; then rewrites of the first 16 (allocated: they succeed).
        for base in (0, STEP, 0, 0):
            for i in range(STEP // MIB):
                try:
                    _write(fd, data, base + i * MIB, behind)
                except OSError as exc:
                    errors.append(exc)
        assert errors, "the thin device did not run out of space in writeback"
        with pytest.raises(OSError) as caught:
            behind.sync(fd)
        assert "writing back to disk" in str(caught.value)
    finally:
        os.close(fd)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "digests"])
def test_a_sync_to_a_thin_device_that_fills_up_fails_in_one_line(tmp_path: Path, thin_device, direct: bool) -> None:
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(48 * MIB))
    with pytest.raises(EndpointError) as caught:
        run_engine(src, thin_device(20 * MIB, 64 * MIB), direct=direct)
    message = str(caught.value)
    assert "writing back to disk" in message and "\n" not in message
    assert "after 0 bytes" not in message  # it says how far it got


def test_without_ctypes_advice_alone_still_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where libc's sync_file_range cannot be had, writes still land and sync fsyncs them."""
    monkeypatch.setattr(writeback.libc, "function", lambda name, argtypes: None)
    path = tmp_path / "out.img"
    data = os.urandom(MIB)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        behind = WriteBehind()
        for i in range(2 * STEP // MIB + 3):
            _write(fd, data, i * MIB, behind)
        behind.sync(fd)
    finally:
        os.close(fd)
    assert path.stat().st_size == (2 * STEP // MIB + 3) * MIB
    assert path.read_bytes()[-MIB:] == data
