"""The app shows each side's partitions: on the map and its cursor line, per partition in the
review, and in the confirm dialog before a sync, with a warning for a file system at stake."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from disk_images import MiB, gpt_image
from rich.console import Console
from test_app import SIZE, _on, _wait_for

from blocksync_tui.demo import make_pair
from blocksync_tui.demo_layout import stamp_layout
from blocksync_tui.engine.options import SyncOptions
from blocksync_tui.tui.app import BlocksyncApp
from blocksync_tui.tui.request import RunRequest
from blocksync_tui.tui.screens.confirm import ConfirmSyncScreen
from blocksync_tui.tui.screens.review import ReviewScreen, partition_table
from blocksync_tui.tui.widgets.block_map import BlockMap


def _text(widget) -> str:
    return str(widget.render())


async def test_the_review_shows_partitions_on_the_map_and_lists_their_bytes(tmp_path: Path) -> None:
    src = gpt_image(tmp_path / "src.img")
    dst = tmp_path / "dst.img"
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(30 * MiB)
        f.write(b"\xee" * 8192)  # two pages in p2
    request = RunRequest(str(src), str(dst), SyncOptions(chunk_size=1 << 16))
    app = BlocksyncApp(request, list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+d")
        await _wait_for(pilot, lambda: _on(app, ReviewScreen) and bool(app.screen.query("#partitions")))
        review = app.screen
        rows = {row["region"]: row["bytes_differing"] for row in review.report.partitions if row["region"] != "unpartitioned"}
        assert rows == {"p1": 0, "p2": 8192}
        console = Console(width=60, file=io.StringIO())
        console.print(partition_table(review.report))
        listed = console.file.getvalue()
        assert "p2" in listed and "ext4 'root'" in listed and "8.0 KiB" in listed
        block_map = review.query_one(BlockMap)
        await _wait_for(pilot, lambda: block_map.cell_layout.used > 0)  # laid out on its first resize
        # Each partition's number where it begins and "]" where it ends (p2 ends by the backup
        # GPT, in the last chunk).
        layout, chunk = block_map.cell_layout, 1 << 16
        p1, p2 = review.engine.destination_layout.partitions
        assert (p1.start, p1.end, p2.start) == (MiB, 21 * MiB, 21 * MiB)
        ends = [layout.cell_of((p.end - 1) // chunk) + layout.cells_per_chunk - 1 for p in (p1, p2)]
        assert block_map.marks == {layout.cell_of(MiB // chunk): "1", ends[0]: "]",
                                   layout.cell_of(21 * MiB // chunk): "2", ends[1]: "]"}
        assert ends[1] == layout.used - 1
        block_map.zoom_to(30 * MiB // (1 << 16), 1)  # the run of changes, as selecting it does
        await pilot.pause()
        info = _text(review.query_one("#cell-info"))
        assert info.startswith("p2 ext4 'root' +9.0 MiB · offset "), info


async def test_the_confirm_dialog_names_what_is_on_the_destination_and_warns(tmp_path: Path) -> None:
    """The demo pair: the destination's p3 holds ext4 'data' where the source has swap."""
    src, dst = make_pair(tmp_path, size=16 * MiB, seed=3, chunk_hint=1 << 16)
    stamp_layout(src, dst)
    before = dst.read_bytes()
    request = RunRequest(str(src), str(dst), SyncOptions(chunk_size=1 << 16, dry_run=False))
    app = BlocksyncApp(request, list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+s")
        await _wait_for(pilot, lambda: _on(app, ConfirmSyncScreen) and bool(app.screen.query(".dialog-body")))
        body = _text(app.screen.query_one(".dialog-body"))
        assert "Partition table: GPT, 3 partitions:" in body
        for line in ("  p1      1.0 MiB  EFI System        vfat 'EFI'",
                     "  p2     10.0 MiB  Linux filesystem  ext4 'root'",
                     "  p3      3.0 MiB  Linux swap        ext4 'data'"):
            assert line in body.splitlines(), line
        assert "In use: no (nothing mounted, no holders, no swap)." in body
        assert ("⚠ the destination's p3 holds ext4 'data' where the source has swap 'swap': it will be "
                "overwritten") in " ".join(body.split())
        await pilot.press("escape")
        await _wait_for(pilot, lambda: not isinstance(app.screen, ConfirmSyncScreen))
    assert dst.read_bytes() == before, "a cancelled confirmation wrote"
