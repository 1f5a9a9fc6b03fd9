"""Provides the block map's marks: the cells of some chunks (an owner's, picked in the review)
drawn in their colours while every other cell is dimmed.

Pure code over a `CellLayout`, like block_cells: which cells a set of chunk runs lands on, and
how a terminal line holding marked cells is painted (per column: only lines with marks pay).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.color import Color
from rich.segment import Segment
from rich.style import Style

from blocksync_tui.tui.widgets.block_cells import UPPER_HALF, CellLayout

DIM = 0.7
"""How far an unmarked cell's colour moves towards the background while marks are shown."""


def mark_cells(layout: CellLayout, runs: Sequence[tuple[int, int]]) -> bytearray:
    """One byte per cell of the layout: 1 where a cell shows a chunk of `runs` ((first, count)).

    The work is per run, not per chunk: a run becomes one slice of cells.
    """
    marks = bytearray(len(layout.cells))
    for first, count in runs:
        lo, hi = max(first, layout.first), min(first + count, layout.last)
        if lo >= hi:
            continue
        start = layout.cell_of(lo)
        end = layout.cell_of(hi - 1) + layout.cells_per_chunk
        marks[start:end] = b"\1" * (end - start)
    return marks


def paint_marked(
    layout: CellLayout,
    line: int,
    cursor: int,
    marks: bytearray,
    palettes: tuple[Sequence[Color], Sequence[Color], Sequence[Color], Sequence[Color]],
) -> list[Segment]:
    """Segments of one terminal line with marked cells, column by column.

    Args:
        layout: The cells.
        line: The terminal line (cell rows `2 * line` and `2 * line + 1`).
        cursor: The cursor's position in the line's two cell rows, or -1.
        marks: From `mark_cells`.
        palettes: Colours by state: (marked, marked under the cursor, dimmed, dimmed under the
            cursor).
    """
    width, cells = layout.width, layout.cells
    top_row, bottom_row = 2 * line * width, (2 * line + 1) * width
    segments: list[Segment] = []
    last: tuple[str, Style] | None = None
    run = 0
    for column in range(width):
        halves = []
        for row, at in ((0, top_row + column), (1, bottom_row + column)):
            under_cursor = cursor == row * width + column
            palette = palettes[(0 if marks[at] else 2) + (1 if under_cursor else 0)]
            halves.append(palette[cells[at]])
        upper, lower = halves
        cell = (" ", Style(bgcolor=upper)) if upper == lower else (UPPER_HALF, Style(color=upper, bgcolor=lower))
        if cell == last:
            run += 1
            continue
        if last is not None:
            segments.append(Segment(last[0] * run, last[1]))
        last, run = cell, 1
    if last is not None:
        segments.append(Segment(last[0] * run, last[1]))
    return segments
