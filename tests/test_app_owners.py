"""The review's owners, driven with Pilot on real ext4 images: found in the background, listed
largest first, an owner's chunks marked on the map, a run's owners named, the other side."""

from __future__ import annotations

from pathlib import Path

from blocksync_tui.engine.options import SyncOptions
from blocksync_tui.tui.app import BlocksyncApp
from blocksync_tui.tui.request import RunRequest
from blocksync_tui.tui.screens.review import ReviewScreen
from blocksync_tui.tui.widgets.block_map import BlockMap
from blocksync_tui.tui.widgets.owners_panel import OwnersPanel, share_bar
from test_app import SIZE, _on, _wait_for
from test_owners import _migration


def _status(review: ReviewScreen) -> str:
    return str(review.query_one("#owners-status").render())


async def test_the_review_lists_owners_and_marks_their_chunks(tmp_path: Path) -> None:
    case = _migration(tmp_path, 64 * (1 << 20))
    request = RunRequest(str(case["new"]), str(case["old"]), SyncOptions(chunk_size=64 << 10))
    app = BlocksyncApp(request, autostart=True, list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        review = app.screen
        assert isinstance(review, ReviewScreen)
        await _wait_for(pilot, lambda: "source" in review.owners)
        await pilot.pause()
        owners = review.owners["source"]
        assert "attributed to files and structures" in _status(review)
        table = review.query_one("#owners-table")
        assert table.row_count == len(owners.owners)
        labels = [str(table.get_row_at(row)[3]) for row in range(table.row_count)]
        assert labels == [o.label for o in owners.owners]  # largest first
        assert labels[0].startswith("/home/user/") and set(case["rewritten"]) <= set(labels)
        # Selecting an owner marks exactly its chunks on the map.
        table.focus()
        await pilot.press("down")
        await pilot.pause()
        block_map = review.query_one(BlockMap)
        assert block_map.spotlight == owners.owners[1].runs
        assert f"{owners.owners[1].label}: " in str(review.query_one("#cell-info").render())
        # Selecting a run names its owners.
        runs = review.query_one("#runs")
        runs.focus()
        await pilot.press("down")
        await pilot.pause()
        first = review.report.largest_runs[1]
        named = owners.of_run(first["first_chunk"], first["chunks"])
        assert named and str(review.query_one("#run-owners").render()).startswith(f"In this run: {named[0].label}")
        # The other side: looked up on demand, what will be overwritten.
        review.action_owners_side()  # what "o" does; said at once, before the lookup can end
        assert _status(review) == "finding owners on the destination…"
        await _wait_for(pilot, lambda: "destination" in review.owners)
        await pilot.pause()
        # Switching sides selects no owner: the map lights the selected run again, not nothing.
        assert "free space" in _status(review)
        assert block_map.spotlight == ((first["first_chunk"], first["chunks"]),)
        assert [o["side"] for o in review.report.owners] == ["source", "destination"]


async def test_without_a_file_system_the_review_says_why(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.img", tmp_path / "b.img"
    src.write_bytes(bytes(1 << 20))
    dst.write_bytes(b"[v1]" * 1024 + bytes((1 << 20) - 4096))
    app = BlocksyncApp(RunRequest(str(src), str(dst)), autostart=True, list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        review = app.screen
        await _wait_for(pilot, lambda: "source" in review.owners)
        await pilot.pause()
        assert _status(review) == "unavailable: not an ext2/3/4 file system"
        assert review.query_one("#owners-table").row_count == 0


async def test_an_identical_pair_has_no_owners_to_find(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.img", tmp_path / "b.img"
    src.write_bytes(bytes(1 << 20))
    dst.write_bytes(bytes(1 << 20))
    app = BlocksyncApp(RunRequest(str(src), str(dst)), autostart=True, list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        await pilot.pause()
        assert not app.screen.query_one(OwnersPanel).display and not app.screen.owners


def test_share_bars() -> None:
    assert share_bar(1, 2) == "████    "
    assert share_bar(1, 64) == "▏       " and share_bar(0, 5) == " " * 8 and share_bar(5, 5) == "█" * 8
