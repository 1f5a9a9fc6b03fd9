"""Provides deterministic scenes of the app: the SVG snapshot tests and make_screenshots.py use them.

Each scene runs the real engine on generated demo images in the current directory (paths are
relative, so the pictures hold no temp paths) and then shows one screen with fixed figures
where the live ones would vary (elapsed time, throughput, the host's device list).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from blocksync_tui.demo import make_pair
from blocksync_tui.demo_layout import stamp_layout
from blocksync_tui.engine.chunkmap import State
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.inventory import Device
from blocksync_tui.engine.report import Progress
from blocksync_tui.engine.sync import SyncEngine, SyncOptions
from blocksync_tui.tui.app import BlocksyncApp
from blocksync_tui.tui.request import RunRequest
from blocksync_tui.tui.screens.confirm import ConfirmSyncScreen
from blocksync_tui.tui.screens.review import ReviewScreen
from blocksync_tui.tui.screens.run import RunScreen
from textual.widgets import Input

from blocksync_tui.tui.widgets.endpoint_panel import EndpointPanel

SIZE = (140, 42)
"""Terminal size of every scene."""
CHUNK = 64 << 10
SOURCE, DESTINATION = "source.img", "destination.img"

DEVICES = [
    Device("/dev/nvme0n1", 1_000_204_886_016, "Samsung SSD 980 PRO 1TB",
           partitions=(Device("/dev/nvme0n1p1", 536_870_912, mounted=("/boot/efi",)),
                       Device("/dev/nvme0n1p2", 999_666_221_056, mounted=("/",)))),
    Device("/dev/sda", 4_000_787_030_016, "ATA WDC WD40EFRX-68N"),
    Device("/dev/loop0", 268_435_456, "loop: /srv/images/vm-web01.img"),
]
"""A plausible host, so that the setup picture is the same on every machine."""

Scene = Callable[[object], Awaitable[None]]


def make_images(directory: Path) -> None:
    """The demo pair, small enough for tests: 64 MiB in 1,025 chunks of 64 KiB, with the
    demo's GPT (p3 a swap area on the source, an ext4 'data' on the destination)."""
    if not (directory / SOURCE).exists():
        stamp_layout(*make_pair(directory, size=64 << 20, seed=7, chunk_hint=CHUNK))


def _engine(dry_run: bool) -> SyncEngine:
    engine = SyncEngine(Endpoint(SOURCE), Endpoint(DESTINATION), SyncOptions(chunk_size=CHUNK, dry_run=dry_run))
    engine.prepare()
    return engine


def app() -> BlocksyncApp:
    """The app as the scenes use it: both endpoints filled in, no live device listing."""
    request = RunRequest(SOURCE, DESTINATION, SyncOptions(chunk_size=CHUNK))
    return BlocksyncApp(request, list_devices=False)


async def setup(pilot) -> None:
    """You should see both panels filled in, each listing the same three devices."""
    for panel in pilot.app.screen.query(EndpointPanel):
        panel.show_devices(DEVICES)
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False  # a blinking cursor would make every picture different
    await pilot.pause()


async def run(pilot) -> None:
    """You should see a sync in progress: the first 40% written or unchanged, the rest pending;
    bold numbers 1, 2, 3 on the map where the destination's partitions begin."""
    engine = _engine(dry_run=True)
    engine.run()
    chunk_map = engine.chunk_map
    cut = chunk_map.total * 2 // 5
    for index in range(chunk_map.total):
        state = chunk_map.get(index)
        if index >= cut:
            chunk_map.set(index, State.PENDING)
        elif state == State.DIFFERS:
            chunk_map.set(index, State.WRITTEN)
    engine.options.dry_run = False
    screen = RunScreen(engine, poll=False)
    await pilot.app.push_screen(screen)
    counts = chunk_map.counts()
    progress = Progress(
        phase="scanning", dry_run=False, elapsed=1.5, size=engine.size, chunk_size=CHUNK,
        total_chunks=chunk_map.total, scanned_source=cut * CHUNK, scanned_destination=cut * CHUNK,
        bytes_sent=3_407_872, bytes_differing=3_407_872, wire_bytes=3_602_000, counts=counts,
    )
    screen.query_one("#stats").rates.extend([120e6, 180e6, 210e6, 190e6, 230e6, 220e6])
    screen.show_progress(progress)
    await pilot.pause()


async def review(pilot) -> None:
    """You should see a finished dry run: the map with partition numbers 1-3, the figures, the
    differing bytes of each partition and unpartitioned gap, the largest runs of changes; the
    info line starts "unpartitioned ·" (the cursor is on the first cell)."""
    engine = _engine(dry_run=True)
    report = engine.run()
    report.seconds = 0.4
    report.wire_bytes = 137_900  # digests are batched by time too: the count varies with load
    request = RunRequest(SOURCE, DESTINATION, engine.options)
    await pilot.app.push_screen(ReviewScreen(engine, report, request))
    await pilot.pause()


async def confirm(pilot) -> None:
    """You should see the confirmation naming the destination file, over the setup screen: its
    GPT with three partitions (vfat 'EFI', ext4 'root', ext4 'data'), "In use: no", and a ⚠ line:
    the destination's p3 holds ext4 'data' where the source has swap 'swap'."""
    engine = _engine(dry_run=False)
    await pilot.app.push_screen(ConfirmSyncScreen(engine))
    await pilot.pause()
    engine.close()


SCENES: dict[str, Scene] = {"setup": setup, "run": run, "review": review, "confirm": confirm}
