#!/usr/bin/env python3
"""Provides the block map benchmark: full-frame render and poll cost for large chunk maps.

Mounts a BlockMap in a headless Textual app at a given terminal size and measures, per state
mix and device size:
- aggregate: laying out the cells and computing every cell's state (`CellLayout.build`), what
  a resize, a zoom or a "redraw everything" poll costs;
- render: `render_line` for every line with an empty strip cache (a theme change), per frame
  and per line; and with a warm cache (a repaint with nothing new);
- full frame: both of the above back to back;
- poll: `poll()` after 1000 random chunks changed, and `poll()` when nothing changed.
Mixes: random (uniform per chunk), worst (a random state per cell: the most segments), sparse
(1 chunk in 1000 differs), in-progress (runs of states, the second half pending). Times are the
median of the rounds. A device with fewer chunks than cells shows "1/k": k cells per chunk.

    python3 bench/bench_blockmap.py
    python3 bench/bench_blockmap.py --size 240x70 --chunks 10000000 --rounds 20
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from textual.app import App, ComposeResult

from blocksync_tui.engine.chunkmap import ChunkMap, State
from blocksync_tui.tui.widgets.block_cells import CellLayout, chunks_per_cell
from blocksync_tui.tui.widgets.block_map import BlockMap


def fill(chunk_map: ChunkMap, mix: str, per_cell: int, seed: int = 1) -> None:
    """Write a state mix straight into the map's bytes (counters are irrelevant here)."""
    total = chunk_map.total
    rng = random.Random(seed)
    if mix == "random":  # uniform per chunk: nearly every cell holds an error, so it is uniform
        chunk_map.states[:] = rng.randbytes(total).translate(bytes(b % 7 for b in range(256)))
        return
    if mix == "worst":  # one random state per cell: no two neighbours merge into one segment
        cells = rng.randbytes(-(-total // per_cell)).translate(bytes(b % 7 for b in range(256)))
        chunk_map.states[:] = b"".join(bytes([value]) * per_cell for value in cells)[:total]
        return
    states = bytearray([State.SAME]) * total
    if mix == "sparse":  # a typical compare: one chunk in 1000 differs, scattered
        for index in rng.sample(range(total), total // 1000):
            states[index] = State.DIFFERS
    elif mix == "in-progress":  # a sync half way: runs of every state, pending at the end
        position = 0
        while position < total:
            run = min(rng.randrange(1, 5000), total - position)
            state = rng.choice([State.SAME, State.ZERO, State.WRITTEN, State.DIFFERS])
            states[position : position + run] = bytes([state]) * run
            position += run
        states[total // 2 :] = bytes([State.PENDING]) * (total - total // 2)
    chunk_map.states[:] = states


def median_ms(action: Callable[[], object], rounds: int) -> float:
    """The median wall time of `action` in milliseconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


class BenchApp(App[None]):
    """Nothing but a block map filling the screen."""

    CSS = "BlockMap { height: 1fr; }"

    def __init__(self, chunk_map: ChunkMap) -> None:
        super().__init__()
        self.chunk_map = chunk_map

    def compose(self) -> ComposeResult:
        yield BlockMap(self.chunk_map, poll_interval=None)


async def bench_one(chunks: int, mix: str, size: tuple[int, int], rounds: int) -> dict[str, float]:
    """Measure one device size and mix; returns milliseconds by measure."""
    chunk_map = ChunkMap(chunks)
    fill(chunk_map, mix, chunks_per_cell(chunks, size[0] * 2 * size[1]))
    app = BenchApp(chunk_map)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        block_map = app.query_one(BlockMap)
        layout = block_map.cell_layout
        lines = block_map.size.height
        states = chunk_map.states

        def aggregate() -> None:
            CellLayout.build(states, chunks, layout.width, layout.rows)

        def render_cold() -> None:
            block_map.notify_style_update()  # drops the strip cache and the painter
            for y in range(lines):
                block_map.render_line(y)

        def render_warm() -> None:
            for y in range(lines):
                block_map.render_line(y)

        rng = random.Random(2)
        poll_times = []
        for _ in range(rounds):
            for index in rng.sample(range(chunks), min(1000, chunks)):
                chunk_map.set(index, State(rng.choice([State.WRITTEN, State.ERROR, State.SAME])))
            start = time.perf_counter()
            block_map.poll()
            poll_times.append(time.perf_counter() - start)
        result = {
            "per_cell": layout.per_cell,
            "cells_per_chunk": layout.cells_per_chunk,
            "aggregate": median_ms(aggregate, rounds),
            "render": median_ms(render_cold, rounds),
            "render_warm": median_ms(render_warm, rounds),
            "poll_1000": statistics.median(poll_times) * 1000,
            "poll_idle": median_ms(block_map.poll, rounds * 100),
            "lines": lines,
        }
        result["frame"] = result["aggregate"] + result["render"]
    return result


def main() -> None:
    """Parse arguments, run every mix, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--size", default="120x40", help="terminal WIDTHxHEIGHT")
    parser.add_argument("--mix", nargs="+", default=["random", "worst", "sparse", "in-progress"])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    width, height = (int(part) for part in args.size.split("x"))
    print(f"BlockMap at {width}x{height}; median of {args.rounds} rounds; times in ms\n")
    print("| chunks | mix | chunks/cell | aggregate | render (cold) | per line | render (warm) "
          "| full frame | poll, 1000 dirty | poll, idle |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for chunks in args.chunks:
        for mix in args.mix:
            r = asyncio.run(bench_one(chunks, mix, (width, height), args.rounds))
            ratio = (
                f"{r['per_cell']:.0f}"
                if r["cells_per_chunk"] == 1
                else f"1/{r['cells_per_chunk']:.0f}"
            )
            print(
                f"| {chunks:,} | {mix} | {ratio} | {r['aggregate']:.2f} "
                f"| {r['render']:.2f} | {r['render'] / r['lines']:.3f} | {r['render_warm']:.3f} "
                f"| {r['frame']:.2f} | {r['poll_1000']:.2f} | {r['poll_idle'] * 1000:.1f} us |"
            )


if __name__ == "__main__":
    main()
