"""Provides map_svg: a picture of a chunk map as a standalone SVG file (for reports)."""

from __future__ import annotations

from html import escape

from blocksync_tui.engine.chunkmap import STATE_NAMES, State
from blocksync_tui.engine.units import human_bytes
from blocksync_tui.tui.widgets.block_cells import cell_states, chunks_per_cell

CELL = 6
"""Pixels per cell side."""


def map_svg(
    states: bytes, colors: dict[State, str], title: str, chunk_size: int, columns: int = 128, rows: int = 64
) -> str:
    """Draw every chunk state of a device on a grid of at most `columns` x `rows` cells.

    Args:
        states: One State byte per chunk (`ChunkMap.snapshot()`).
        colors: A CSS colour per state.
        title: A line of text above the map.
        chunk_size: Bytes per chunk (for the caption).
        columns: Cells per row.
        rows: The most rows; a cell covers as many chunks as that requires.
    """
    total = len(states)
    per_cell = chunks_per_cell(total, columns * rows) if total else 1
    cells = cell_states(states, per_cell) if total else bytearray()
    used_rows = max(1, -(-len(cells) // columns))
    width = columns * CELL + 20
    map_top = 40
    legend_top = map_top + used_rows * CELL + 20
    height = legend_top + 20 * ((len(State) + 3) // 4) + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#1e1e1e"/>',
        f'<text x="10" y="18" fill="#e0e0e0">{escape(title)}</text>',
        f'<text x="10" y="32" fill="#a0a0a0">{total:,} chunks of {human_bytes(chunk_size)}, '
        f"{per_cell:,} chunk(s) per cell</text>",
    ]
    # Neighbouring cells of one state on a row become one rectangle: a small file for big maps.
    for row in range(used_rows):
        start = row * columns
        line = cells[start : start + columns]
        col = 0
        while col < len(line):
            end = col
            while end < len(line) and line[end] == line[col]:
                end += 1
            state = line[col]
            if state < len(State):
                out.append(
                    f'<rect x="{10 + col * CELL}" y="{map_top + row * CELL}" width="{(end - col) * CELL}" '
                    f'height="{CELL}" fill="{colors[State(state)]}"/>'
                )
            col = end
    counts = {s: states.count(bytes([s])) for s in State}
    for i, state in enumerate(State):
        x, y = 10 + (i % 4) * 190, legend_top + (i // 4) * 20
        out.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{colors[state]}"/>')
        out.append(f'<text x="{x + 18}" y="{y}" fill="#e0e0e0">{STATE_NAMES[state]}: {counts[state]:,}</text>')
    out.append("</svg>")
    return "\n".join(out)
