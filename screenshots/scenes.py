"""Provides deterministic scenes of the app: the SVG snapshot tests and make_screenshots.py use them.

Each scene runs the real engine on generated demo images in the current directory (paths are
relative, so the pictures hold no temp paths) and then shows one screen with fixed figures
where the live ones would vary (elapsed time, throughput, the host's device list).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
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
    Device("/dev/sda", 4_000_787_030_016, "WDC WD40EFRX-68N"),
    Device("/dev/loop0", 268_435_456, "loop: /srv/images/vm-web01.img"),
]
"""A plausible host, so that the setup picture is the same on every machine."""

Scene = Callable[[object], Awaitable[None]]


EXT4_NEW, EXT4_OLD = "ext4-new.img", "ext4-old.img"


def make_images(directory: Path) -> None:
    """The demo pair, small enough for tests: 64 MiB in 1,025 chunks of 64 KiB, with the
    demo's GPT (p3 a swap area on the source, an ext4 'data' on the destination); and an ext4
    pair (see `make_ext4_pair`)."""
    if not (directory / SOURCE).exists():
        stamp_layout(*make_pair(directory, size=64 << 20, seed=7, chunk_hint=CHUNK))
    if not (directory / EXT4_NEW).exists():
        make_ext4_pair(directory)


def make_ext4_pair(directory: Path) -> None:
    """Two 48 MiB ext4 images made the same way on every machine (fixed UUID, hash seed and
    clock; files written by debugfs in a fixed order): the new one has two files rewritten in
    part, one added and one removed."""
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"}
    old, new = directory / EXT4_OLD, directory / EXT4_NEW
    with open(old, "wb") as f:
        f.truncate(48 << 20)
    uuid = "6b1e6f3c-2f43-4d8a-9a55-0b7d3f0c9e11"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "root", "-U", uuid, "-E", f"hash_seed={uuid}",
                    str(old)], check=True, env=env, capture_output=True)
    rnd = random.Random(13)
    files = {"/etc/passwd": 2_100, "/etc/fstab": 600, "/var/lib/db/main.db": 6 << 20,
             "/var/log/syslog": 900_000, "/home/ana/photo.jpg": 2_400_000, "/home/ana/notes.md": 30_000}
    commands = ["mkdir /etc", "mkdir /var", "mkdir /var/lib", "mkdir /var/lib/db", "mkdir /var/log",
                "mkdir /home", "mkdir /home/ana"]
    for name, size in files.items():
        host = directory / ("blob" + name.replace("/", "_"))
        host.write_bytes(rnd.randbytes(size))
        commands.append(f"write {host} {name}")
    _debugfs(old, commands, env)
    shutil.copyfile(old, new)
    added = directory / "blob_report.pdf"
    added.write_bytes(rnd.randbytes(3 << 20))
    _debugfs(new, [f"write {added} /home/ana/report.pdf", "rm /home/ana/notes.md"], env)
    for name, count in (("/var/lib/db/main.db", 300), ("/var/log/syslog", 40)):
        blocks = subprocess.run(["debugfs", "-R", f"blocks {name}", str(new)], check=True, env=env,
                                capture_output=True, text=True).stdout.split()
        with open(new, "r+b") as f:
            for block in blocks[:count:2]:
                f.seek(int(block) * 4096)
                f.write(rnd.randbytes(4096))


def _debugfs(image: Path, commands: list[str], env: dict) -> None:
    script = image.with_suffix(".cmds")
    script.write_text("\n".join(commands) + "\n")
    subprocess.run(["debugfs", "-w", "-f", str(script), str(image)], check=True, env=env, capture_output=True)


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
    bold numbers 1, 2, 3 on the map where the destination's partitions begin, "]" where each
    ends (right before the next number, and near the end of the last line: the last MiB is
    unpartitioned)."""
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
    """You should see a finished dry run: the map with partition numbers 1-3 and a "]" where
    each partition ends, the figures, the differing bytes of each partition and unpartitioned
    gap, the largest runs of changes; the info line starts "unpartitioned ·" (the cursor is on
    the first cell)."""
    engine = _engine(dry_run=True)
    report = engine.run()
    report.seconds = 0.4
    report.wire_bytes = 137_900  # digests are batched by time too: the count varies with load
    request = RunRequest(SOURCE, DESTINATION, engine.options)
    review = ReviewScreen(engine, report, request)
    await pilot.app.push_screen(review)
    for _ in range(600):  # the owners lookup ends in a thread: "not an ext2/3/4 file system"
        await pilot.pause(0.05)
        if review.owners:
            break
    await pilot.pause()


async def owners(pilot) -> None:
    """You should see the review of two ext4 images: the owners of the differing bytes on the
    source, largest first (the new report, the rewritten database and log, a directory and the
    structures), the first selected in the list and its chunks alone bright on the dimmed map."""
    engine = SyncEngine(Endpoint(EXT4_NEW), Endpoint(EXT4_OLD), SyncOptions(chunk_size=CHUNK, dry_run=True))
    engine.prepare()
    report = engine.run()
    report.seconds = 0.3
    report.wire_bytes = 96_500
    review = ReviewScreen(engine, report, RunRequest(EXT4_NEW, EXT4_OLD, engine.options))
    await pilot.app.push_screen(review)
    for _ in range(600):  # the lookup runs in a thread, as in the app
        await pilot.pause(0.05)
        if "source" in review.owners:
            break
    await pilot.pause()
    review.query_one("#owners-table").focus()
    await pilot.pause()


async def confirm(pilot) -> None:
    """You should see the confirmation naming the destination file, over the setup screen: its
    GPT with three partitions (vfat 'EFI', ext4 'root', ext4 'data'), "In use: no", and a ⚠ line:
    the destination's p3 holds ext4 'data' where the source has swap 'swap'."""
    engine = _engine(dry_run=False)
    await pilot.app.push_screen(ConfirmSyncScreen(engine))
    await pilot.pause()
    engine.close()


SCENES: dict[str, Scene] = {"setup": setup, "run": run, "review": review, "owners": owners, "confirm": confirm}
