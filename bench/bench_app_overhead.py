"""Benchmark: what the app costs a sync. The same sync runs headless and inside the app.

    python3 bench/bench_app_overhead.py [--size 1G] [--rounds 5] [--change 0.05]

Each round restores the destination, warms the page cache (so the disk's noise does not hide the
app's CPU cost), then syncs once with the bare engine (what `blocksync-tui sync` runs) and once
through the app: setup, confirmation, the run screen with its block map and figures repainting,
then the review. The figure compared is the engine's own run time (`Report.seconds`), interleaved,
median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blocksync_tui.cli import parse_size  # noqa: E402
from blocksync_tui.demo import make_changed_pair  # noqa: E402
from blocksync_tui.engine.endpoint import Endpoint  # noqa: E402
from blocksync_tui.engine.sync import SyncEngine, SyncOptions  # noqa: E402
from blocksync_tui.tui.app import BlocksyncApp  # noqa: E402
from blocksync_tui.tui.request import RunRequest  # noqa: E402
from blocksync_tui.tui.screens.confirm import ConfirmSyncScreen  # noqa: E402
from blocksync_tui.tui.screens.review import ReviewScreen  # noqa: E402


def warm(*paths: Path) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(8 << 20):
                pass


def headless(src: Path, dst: Path, chunk: int) -> float:
    engine = SyncEngine(Endpoint(str(src)), Endpoint(str(dst)), SyncOptions(chunk_size=chunk))
    engine.prepare()
    return engine.run().seconds


async def in_app(src: Path, dst: Path, chunk: int) -> float:
    app = BlocksyncApp(RunRequest(str(src), str(dst), SyncOptions(chunk_size=chunk)), list_devices=False)
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("ctrl+s")
        while not isinstance(app.screen, ConfirmSyncScreen):
            await pilot.pause(0.02)
        await pilot.pause(0.1)
        await pilot.click("#go")
        while not (isinstance(app.screen, ReviewScreen) and app.screen.report.mode == "sync"):
            # Not pilot.pause(): that waits for the app to go idle and repaint, 50 times a second,
            # which is the harness's cost, not the app's.
            await asyncio.sleep(0.02)
        return app.screen.report.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=1 << 30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--change", type=float, default=0.05, help="fraction of 4 KiB pages changed")
    parser.add_argument("--chunk-size", type=parse_size, default=64 << 10,
                        help="small chunks mean many map updates (default 64K)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="blocksync-appbench-") as work:
        src, pristine, dst = Path(work, "src"), Path(work, "pristine"), Path(work, "dst")
        changed = make_changed_pair(src, pristine, args.size, change_fraction=args.change)
        times: dict[str, list[float]] = {"headless": [], "app": []}
        for round_ in range(args.rounds):
            for name in times:
                shutil.copyfile(pristine, dst)
                os.sync()  # else the sync's own flush would also write back this copy
                warm(src, dst)
                if name == "headless":
                    seconds = headless(src, dst, args.chunk_size)
                else:
                    seconds = asyncio.run(in_app(src, dst, args.chunk_size))
                if src.read_bytes() != dst.read_bytes():
                    raise SystemExit(f"{name}: destination differs from source")
                times[name].append(seconds)
                print(f"round {round_ + 1}: {name}: {seconds:.2f} s", flush=True)
    h, a = statistics.median(times["headless"]), statistics.median(times["app"])
    print(f"\n{args.size / 2**30:.1f} GiB, {changed / 2**20:.1f} MiB changed, chunks of "
          f"{args.chunk_size >> 10} KiB, warm cache, median of {args.rounds}\n")
    print("| run | median s | x headless |\n|---|---:|---:|")
    print(f"| headless engine | {h:.2f} | 1.00 |\n| in the app | {a:.2f} | {a / h:.2f} |")
    print(f"\napp overhead: {100 * (a / h - 1):+.1f}%")


if __name__ == "__main__":
    main()
