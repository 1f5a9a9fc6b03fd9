#!/usr/bin/env python3
"""Provides the shading benchmark: the cost of a block map rebuild, this tree against another
revision, side by side in one run.

A rebuild is what a resize, a zoom or a poll with too many dirty chunks costs: `CellLayout.build`
(every cell's shaded value) and the painting of every line with an empty strip cache. It is
timed in a headless Textual app at each terminal size, on maps where every cell is mixed (the
worst case for shading by share) and on one where cells are of one state:
- scattered: 1,000,000 chunks, 20,000 of them differing at random, the rest the same;
- three: the same with 20,000 zero chunks as well (cells of three states);
- random: a random state per chunk (every cell holds most states);
- runs: 20 runs of differing chunks (nearly every cell of one state).

Each revision runs in a child process of its own (its tree extracted with `git archive`), and
the children take turns, round after round, so that both see the same load. Times are the best
and the median wall time of the rounds and the best CPU time (which waits for no other
process), in ms.

    python3 bench/bench_shading.py                      # this tree against main
    python3 bench/bench_shading.py --against HEAD~3 --rounds 30 --size 120x40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIXES = ("scattered", "three", "random", "runs")
SIZES = ("80x24", "120x40", "200x60")


def states_of(mix: str, chunks: int) -> bytes:
    """The chunk states of a mix (see the module docstring)."""
    from blocksync_tui.engine.chunkmap import State

    rng = random.Random(1)
    if mix == "random":
        return rng.randbytes(chunks).translate(bytes(b % 8 for b in range(256)))
    states = bytearray([State.SAME]) * chunks
    if mix == "runs":
        for start in rng.sample(range(chunks - 5000), 20):
            run = rng.randrange(100, 5000)
            states[start : start + run] = bytes([State.DIFFERS]) * run
        return bytes(states)
    for index in rng.sample(range(chunks), 20_000):
        states[index] = State.DIFFERS
    if mix == "three":
        for index in rng.sample(range(chunks), 20_000):
            states[index] = State.ZERO
    return bytes(states)


async def measure(size: str, mix: str, chunks: int, rounds: int) -> list[tuple[float, float]]:
    """Rebuild times (wall and CPU, ms) of a map of this mix at this size, in the tree on
    sys.path."""
    from textual.app import App, ComposeResult

    from blocksync_tui.engine.chunkmap import ChunkMap
    from blocksync_tui.tui.widgets.block_map import BlockMap

    class BenchApp(App[None]):
        CSS = "BlockMap { height: 1fr; }"

        def compose(self) -> ComposeResult:
            yield BlockMap(chunk_map, poll_interval=None)

    chunk_map = ChunkMap(chunks)
    chunk_map.states[:] = states_of(mix, chunks)
    width, height = (int(part) for part in size.split("x"))
    times = []
    async with BenchApp().run_test(size=(width, height)) as pilot:
        await pilot.pause()
        block_map = pilot.app.query_one(BlockMap)
        lines = block_map.size.height
        for _ in range(rounds):
            start, cpu = time.perf_counter(), time.process_time()
            block_map._rebuild()
            for y in range(lines):
                block_map.render_line(y)
            times.append(((time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000))
    return times


def child(args: argparse.Namespace) -> None:
    """Measure one round of every case in this process's tree; print the times as JSON."""
    results = {}
    for size in args.size:
        for mix in args.mix:
            results[f"{size} {mix}"] = asyncio.run(measure(size, mix, args.chunks, args.per_round))
    print(json.dumps(results))


def extract(revision: str, into: Path) -> Path:
    """The package of `revision`, extracted into a directory."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "blocksync_tui"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    """Run both trees in turn and print a Markdown table of best and median times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="main", help="the revision to compare with (default main)")
    parser.add_argument("--size", nargs="+", default=list(SIZES), help="terminal WIDTHxHEIGHT")
    parser.add_argument("--mix", nargs="+", default=list(MIXES), choices=MIXES)
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5, help="turns of each tree (default 5)")
    parser.add_argument("--per-round", type=int, default=5, help="rebuilds per case and turn")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    times: dict[str, dict[str, list[list[float]]]] = {args.against: {}, "this tree": {}}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {args.against: extract(args.against, Path(tmp)), "this tree": REPO}
        argv = [sys.executable, __file__, "--child", "--chunks", str(args.chunks),
                "--per-round", str(args.per_round), "--size", *args.size, "--mix", *args.mix]
        for _ in range(args.rounds):
            for name, tree in trees.items():
                done = subprocess.run(argv, check=True, capture_output=True, text=True,
                                      env={**os.environ, "PYTHONPATH": str(tree)})
                for case, values in json.loads(done.stdout).items():
                    times[name].setdefault(case, []).extend(values)
    rounds = args.rounds * args.per_round
    print(f"Block map rebuild (aggregate + paint every line), {args.chunks:,} chunks, in ms: best "
          f"and median wall time of {rounds}, and the best CPU time (steadier on a loaded machine)\n")
    print(f"| size | mix | {args.against}: best / median / CPU | this tree: best / median / CPU | ratio (best CPU) |")
    print("|---|---|---:|---:|---:|")
    for case, before in times[args.against].items():
        after = times["this tree"][case]
        size, mix = case.split()
        cells = [_figures(before), _figures(after)]
        ratio = min(t[1] for t in after) / min(t[1] for t in before)
        print(f"| {size} | {mix} | {cells[0]} | {cells[1]} | {ratio:.2f}x |")


def _figures(times: list[list[float]]) -> str:
    wall = [t[0] for t in times]
    return f"{min(wall):.2f} / {statistics.median(wall):.2f} / {min(t[1] for t in times):.2f}"


if __name__ == "__main__":
    main()
