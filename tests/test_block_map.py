"""Tests of the block map: cell aggregation, painting, zoom, cursor, polling, and snapshots."""

from __future__ import annotations

import itertools
import random
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.color import Color
from rich.style import Style
from textual import events
from textual.app import App, ComposeResult
from textual.widgets import Label

from blocksync_tui.engine.chunkmap import STATE_NAMES, ChunkMap, State
from blocksync_tui.engine.layout import Filesystem, Layout, Partition
from blocksync_tui.tui.widgets.block_cells import (
    EMPTY,
    PRIORITY,
    CellLayout,
    LinePainter,
    Scale,
    cell_scale,
    cell_state,
    cell_value,
    cell_states,
    chunks_per_cell,
    describe_range,
    format_range,
    format_size,
)
from blocksync_tui.tui.widgets.block_map import BlockMap
from blocksync_tui.tui.widgets.block_map_legend import LEGEND_ORDER, BlockMapLegend

MiB = 1 << 20


def naive_cell_states(data: bytes, per_cell: int) -> list[int]:
    """The reference: per cell, the most significant state present, chunk by chunk."""
    rank = {int(state): index for index, state in enumerate(PRIORITY)}
    return [
        min(data[start : start + per_cell], key=rank.__getitem__)
        for start in range(0, len(data), per_cell)
    ]


def naive_cell_value(data: bytes) -> int:
    """The reference of shading by share: the most significant state, the most common other
    one (the more significant of equal counts) and the significant state's share in thirds."""
    counts = {state: data.count(state) for state in PRIORITY if data.count(state)}
    significant = next(iter(counts))
    others = [state for state in counts if state != significant]
    if not others:
        return significant
    base = max(others, key=counts.__getitem__)  # the first of the largest, in priority order
    return (1 + 3 * counts[significant] // len(data)) << 6 | base << 3 | significant


def pattern_map() -> ChunkMap:
    """A deterministic map of 6000 chunks with every state: bulk areas, runs and lone chunks."""
    total = 6000
    states = bytearray([State.SAME]) * total
    states[0:300] = bytes([State.ZERO]) * 300  # an unused area at the start
    states[2400:3100] = bytes([State.ZERO]) * 700
    states[4500:] = bytes([State.PENDING]) * (total - 4500)  # not hashed yet
    for index in range(50, 4500, 173):
        states[index] = State.DIFFERS  # lone differing chunks: each must show
    states[1000:1090] = bytes([State.DIFFERS]) * 90
    states[1600:1900] = bytes([State.WRITTEN]) * 300
    states[3300:3360] = bytes([State.UPDATED]) * 60
    states[2000] = State.ERROR
    states[2777] = State.ERROR
    chunk_map = ChunkMap(total)
    for index, value in enumerate(states):
        chunk_map.set(index, State(value))
    chunk_map.take_dirty()
    return chunk_map


def small_pattern_map() -> ChunkMap:
    """A deterministic map of 360 chunks with every state: fewer chunks than a map has cells."""
    states = bytearray([State.SAME]) * 360
    states[0:20] = bytes([State.ZERO]) * 20
    for index in (37, 52, 99, 262):
        states[index] = State.DIFFERS  # lone differing chunks
    states[120:150] = bytes([State.DIFFERS]) * 30
    states[150:180] = bytes([State.WRITTEN]) * 30
    states[180:195] = bytes([State.UPDATED]) * 15
    states[210:240] = bytes([State.ZERO]) * 30
    states[200] = State.ERROR
    states[251] = State.ERROR
    states[270:] = bytes([State.PENDING]) * 90
    chunk_map = ChunkMap(len(states))
    for index, value in enumerate(states):
        chunk_map.set(index, State(value))
    chunk_map.take_dirty()
    return chunk_map


# -- aggregation -------------------------------------------------------------------------


def test_priority_covers_every_state_once() -> None:
    assert sorted(PRIORITY) == sorted(State)


@pytest.mark.parametrize("high", PRIORITY)
def test_cell_state_takes_the_most_significant(high: State) -> None:
    lower = PRIORITY[PRIORITY.index(high) :]
    data = bytes(lower) * 50
    assert cell_state(data) == high
    assert cell_state(b"") == EMPTY


@pytest.mark.parametrize("per_cell", [1, 2, 7, 40, 41, 1000, 4096])
@pytest.mark.parametrize("bulk", [State.SAME, State.ZERO, State.PENDING])
def test_single_differing_chunk_among_many_shows(per_cell: int, bulk: State) -> None:
    data = bytearray([bulk]) * 1_000_000
    lone = random.Random(per_cell).randrange(len(data))
    data[lone] = State.DIFFERS
    cells = cell_states(bytes(data), per_cell)
    assert len(cells) == -(-len(data) // per_cell)
    assert cells[lone // per_cell] == State.DIFFERS
    assert cells.count(State.DIFFERS) == 1
    assert cells.count(bulk) == len(cells) - 1


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=3000).map(lambda b: bytes(x % 7 for x in b)),
    per_cell=st.integers(min_value=1, max_value=120),
)
def test_cell_states_match_the_naive_reference(data: bytes, per_cell: int) -> None:
    # Covers both code paths: the strided OR (small cells) and the per-cell scan (large).
    assert list(cell_states(data, per_cell)) == naive_cell_states(data, per_cell)


@settings(max_examples=300, deadline=None)
@given(
    states=st.lists(st.sampled_from(PRIORITY), min_size=1, max_size=8, unique=True),
    picks=st.lists(st.integers(min_value=0, max_value=255), min_size=1, max_size=4000),
    per_cell=st.integers(min_value=1, max_value=300),
)
def test_shaded_cell_states_match_the_naive_reference(states: list[State], picks: list[int], per_cell: int) -> None:
    # Two states alone (strided sums up to 80 chunks a cell, counts beyond), and more (the OR
    # of flags up to 40, the scan beyond): every path against the reference.
    data = bytes(states[pick % len(states)] for pick in picks)
    expected = [naive_cell_value(data[start : start + per_cell]) for start in range(0, len(data), per_cell)]
    assert list(cell_states(data, per_cell, shaded=True)) == expected
    assert cell_value(data) == naive_cell_value(data)


@pytest.mark.parametrize(
    ("total", "cells", "zoom", "expected"),
    [(1000, 100, 0, 10), (1001, 100, 0, 11), (99, 100, 0, 1), (1_000_000, 9600, 0, 105),
     (1_000_000, 9600, 1, 53), (1_000_000, 9600, 30, 1), (0, 10, 0, 1)],
)  # fmt: skip
def test_chunks_per_cell(total: int, cells: int, zoom: int, expected: int) -> None:
    assert chunks_per_cell(total, cells, zoom) == expected


@pytest.mark.parametrize(
    ("total", "cells", "zoom", "expected"),
    [(1000, 100, 0, (10, 1, 1000)), (100, 100, 0, (1, 1, 100)), (150, 100, 1, (1, 1, 100)),
     (10, 37, 0, (1, 3, 10)), (10, 37, 1, (1, 7, 5)), (10, 37, 2, (1, 18, 2)),
     (10, 37, 3, (1, 37, 1)), (10, 37, 9, (1, 37, 1)), (1025, 8000, 0, (1, 7, 1025)),
     (1, 8000, 0, (1, 8000, 1)), (0, 10, 0, (1, 1, 0)), (5, 0, 0, (1, 1, 0))],
)  # fmt: skip
def test_cell_scale(total: int, cells: int, zoom: int, expected: tuple[int, int, int]) -> None:
    # With fewer chunks than cells, each chunk gets the most cells that fit; each zoom level
    # halves the window, down to one chunk on every cell.
    assert cell_scale(total, cells, zoom) == Scale(*expected)


def test_layout_of_fewer_chunks_than_cells_stretches_each_chunk() -> None:
    states = bytes([State.SAME, State.DIFFERS, State.ZERO, State.SAME, State.ERROR]) * 2
    layout = CellLayout.build(states, 10, width=37, rows=1)
    assert (layout.per_cell, layout.cells_per_chunk, layout.used) == (1, 3, 30)
    assert (layout.first, layout.last, layout.row_chunks) == (0, 10, 12)
    assert (
        layout.cells
        == bytearray(value for value in states for _ in range(3)) + bytearray([EMPTY]) * 7
    )
    for chunk in range(10):
        first_cell = layout.cell_of(chunk)
        assert first_cell == 3 * chunk
        assert layout.group(first_cell + 2) == range(first_cell, first_cell + 3)
        for cell in layout.group(first_cell):
            assert layout.chunks(cell) == (chunk, chunk + 1)
    assert layout.chunk_at(-1) == -1 and layout.chunk_at(31) == 10  # off the window
    assert layout.groups_of([1, 4, 1, 10, -1]) == {3, 12}  # changed chunks -> their cells
    zoomed = CellLayout.build(states, 10, width=37, rows=1, zoom=1, first=4)
    assert (zoomed.first, zoomed.last, zoomed.cells_per_chunk, zoomed.used) == (4, 9, 7, 35)
    assert zoomed.cells[:7] == bytes([State.ERROR]) * 7


def test_refresh_recomputes_every_cell_of_a_changed_chunk() -> None:
    states = bytearray([State.SAME]) * 3
    layout = CellLayout.build(states, 3, width=5, rows=8)  # 4 lines of 10 cells
    assert (layout.cells_per_chunk, layout.used) == (13, 39)
    states[1] = State.ERROR
    touched, lines = layout.refresh(states, [1, 7, -1])
    assert touched == {13}  # chunk 1: cells 13 .. 25, on lines 1 and 2
    assert lines == {1, 2}
    assert layout.cells[12:27] == bytes([State.SAME, *[State.ERROR] * 13, State.SAME])
    assert layout.refresh(states, [1]) == ({13}, set())  # nothing new to paint


@settings(max_examples=150, deadline=None)
@given(
    total=st.integers(min_value=1, max_value=3000),
    width=st.integers(min_value=1, max_value=50),
    rows=st.integers(min_value=1, max_value=40),
    zoom=st.integers(min_value=0, max_value=14),
    first=st.integers(min_value=-100, max_value=3000),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_layout_groups_cover_the_window_in_order(
    total: int, width: int, rows: int, zoom: int, first: int, seed: int
) -> None:
    # Both regimes: cells of `per_cell` chunks, or chunks of `cells_per_chunk` cells.
    states = random.Random(seed).randbytes(total).translate(bytes(b % 7 for b in range(256)))
    layout = CellLayout.build(states, total, width, rows, zoom, first)
    assert min(layout.per_cell, layout.cells_per_chunk) == 1
    assert 0 <= layout.first < layout.last <= total
    assert layout.used <= width * rows
    if zoom == 0:
        assert layout.last - layout.first == total  # the whole device...
    if total < width * rows and zoom == 0:
        assert layout.used + total > width * rows  # ...filling the cells: k is the most
    expected = layout.first
    for cell in range(0, layout.used, layout.cells_per_chunk):
        start, end = layout.chunks(cell)
        assert start == expected < end  # consecutive, gapless, in order
        assert layout.cell_of(start) == cell and layout.cell_of(end - 1) == cell
        group = layout.group(cell)
        assert all(layout.chunks(other) == (start, end) for other in group)
        assert set(layout.cells[group.start : group.stop]) == {cell_value(states[start:end])}
        expected = end
    assert expected == layout.last
    assert set(layout.cells[layout.used :]) <= {EMPTY}


def test_layout_of_a_non_divisible_total_has_a_partial_last_cell() -> None:
    states = bytes([State.SAME]) * 1000 + bytes([State.ERROR])
    layout = CellLayout.build(states, 1001, width=10, rows=10)
    assert layout.per_cell == 11
    assert layout.used == 91  # 1001 = 91 * 11: all cells full
    states = bytes([State.SAME]) * 1002 + bytes([State.ERROR])
    layout = CellLayout.build(states, 1003, width=10, rows=10)
    assert (layout.per_cell, layout.used) == (11, 92)
    assert layout.chunks(91) == (1001, 1003)  # the last cell holds only 2 chunks
    assert layout.cells[91] & 7 == State.ERROR  # its most significant state, shaded by share
    assert layout.cells[92:] == bytearray([EMPTY]) * 8  # past the end: background


def test_zoomed_layout_window_is_clamped_to_the_device() -> None:
    states = bytes(range(7)) * 1000
    layout = CellLayout.build(states, 7000, width=10, rows=10, zoom=2, first=6900)
    assert layout.per_cell == 18
    assert (layout.first, layout.last) == (7000 - 1800, 7000)
    layout = CellLayout.build(states, 7000, width=10, rows=10, zoom=2, first=-5)
    assert layout.first == 0


def test_describe_range_and_sizes() -> None:
    counts = {State.DIFFERS: 3, State.SAME: 1}
    text = describe_range(12 * MiB, 13 * MiB, counts, device_bytes=(1 << 32) - 512)
    assert text == "offset 0x00C00000 – 0x00D00000 (12.0 MiB – 13.0 MiB): 3 differs, 1 same"
    assert [format_size(n) for n in (0, 1023, 1024, 1536 * MiB)] == [
        "0 B",
        "1,023 B",
        "1.0 KiB",
        "1.5 GiB",
    ]
    # One unit for both ends, fine enough to tell them apart.
    assert format_range(0, 3 * MiB) == "0.0 MiB – 3.0 MiB"
    assert format_range(1817 * MiB, 1818 * MiB) == "1,817.0 MiB – 1,818.0 MiB"
    assert format_range(500 << 30, (500 << 30) + 105 * MiB) == "500.0 GiB – 500.1 GiB"
    assert format_range(0, 512) == "0 B – 512 B"


def test_painter_merges_runs_and_marks_the_cursor() -> None:
    colors = [Color.parse(f"color({index})") for index in range(EMPTY + 1)]
    white = Color.parse("white")
    painter = LinePainter(colors, [white] * (EMPTY + 1))
    layout = CellLayout.build(bytes([State.SAME]) * 40, 40, width=20, rows=2)
    styles = [Style(bgcolor=colors[State.SAME])]
    assert [(s.text, s.style) for s in painter.paint(layout, 0)] == [(" " * 20, styles[0])]
    layout.cells[5] = State.DIFFERS  # top half of column 5
    segments = painter.paint(layout, 0, cursor=20 + 7)  # bottom half of column 7
    assert [(s.text, s.style) for s in segments] == [
        (" " * 5, styles[0]),
        ("▀", Style(color=colors[State.DIFFERS], bgcolor=colors[State.SAME])),
        (" ", styles[0]),
        ("▀", Style(color=colors[State.SAME], bgcolor=white)),  # the cursor
        (" " * 12, styles[0]),
    ]


def test_painter_draws_marks_on_the_marked_cells_colour() -> None:
    colors = [Color.parse(f"color({index})") for index in range(EMPTY + 1)]
    white, mark = Color.parse("white"), Color.parse("black")
    painter = LinePainter(colors, [white] * (EMPTY + 1), mark)
    layout = CellLayout.build(bytes([State.SAME]) * 40, 40, width=20, rows=2)
    layout.cells[23] = State.DIFFERS  # bottom half of column 3
    segments = painter.paint(layout, 0, cursor=9, marks={23: "2", 20 + 9: "3"})
    assert [(s.text, s.style) for s in segments] == [
        (" " * 3, Style(bgcolor=colors[State.SAME])),
        ("2", Style(color=mark, bgcolor=colors[State.DIFFERS], bold=True)),  # on its own cell's colour
        (" " * 5, Style(bgcolor=colors[State.SAME])),
        ("3", Style(color=mark, bgcolor=white, bold=True)),  # a mark under the cursor is tinted
        (" " * 10, Style(bgcolor=colors[State.SAME])),
    ]


# -- the widget --------------------------------------------------------------------------


class MapApp(App[None]):
    """A block map, its legend and a label showing the highlighted cell."""

    CSS = "BlockMap { height: 1fr; } #info { height: 1; }"

    def __init__(self, chunk_map: ChunkMap, theme: str = "textual-dark", **kwargs: Any) -> None:
        super().__init__()
        self.chunk_map = chunk_map
        self.map_kwargs = kwargs
        self.theme_name = theme
        self.highlights: list[BlockMap.CellHighlighted] = []

    def compose(self) -> ComposeResult:
        yield BlockMap(self.chunk_map, id="map", **self.map_kwargs)
        yield BlockMapLegend("#map")
        yield Label(id="info")

    def on_mount(self) -> None:
        self.theme = self.theme_name

    def on_block_map_cell_highlighted(self, message: BlockMap.CellHighlighted) -> None:
        self.highlights.append(message)
        self.query_one("#info", Label).update(message.description)


async def test_keys_zoom_in_out_and_reset_around_the_cursor() -> None:
    app = MapApp(ChunkMap(100_000), poll_interval=None)
    async with app.run_test(size=(40, 12)) as pilot:
        block_map = app.query_one(BlockMap)
        layout = block_map.cell_layout
        assert (layout.width, layout.rows) == (40, 2 * block_map.size.height)
        whole = layout.per_cell
        assert whole == chunks_per_cell(100_000, layout.width * layout.rows)
        await pilot.press(*["right"] * 5, "down", "down")
        cell = block_map.cursor_cell
        assert cell == 2 * 40 + 5
        chunk = block_map.cell_layout.chunks(cell)[0]
        await pilot.press("plus")
        assert block_map.zoom == 1
        assert block_map.cell_layout.per_cell == chunks_per_cell(100_000, len(layout.cells), 1)
        assert block_map.cursor_cell == cell  # the cursor stays put on screen...
        assert block_map.cell_layout.chunks(cell)[0] == chunk  # ...on the same chunk
        await pilot.press("equals_sign", "equals_sign")
        assert block_map.zoom == 3
        await pilot.press("minus")
        assert block_map.zoom == 2
        await pilot.press("0")
        assert (block_map.zoom, block_map.cell_layout.first, block_map.cell_layout.last) == (
            0,
            0,
            100_000,
        )
        assert block_map.cell_layout.per_cell == whole


async def test_zoom_goes_past_one_chunk_per_cell_down_to_one_chunk_and_back() -> None:
    app = MapApp(ChunkMap(5000), poll_interval=None)
    async with app.run_test(size=(40, 12)) as pilot:
        block_map = app.query_one(BlockMap)
        block_map.action_zoom_out()
        assert block_map.zoom == 0
        await pilot.press(*["right"] * 7, "down")
        cell = block_map.cursor_cell
        chunk = block_map.cell_layout.chunks(cell)[0]
        cells = len(block_map.cell_layout.cells)
        spans, stretches = [], []
        for _ in range(20):
            block_map.action_zoom_in()
            layout = block_map.cell_layout
            spans.append(layout.last - layout.first)
            stretches.append(layout.cells_per_chunk)
            assert layout.first <= chunk < layout.last  # the cursor's chunk stays in view...
            assert block_map.cursor_cell == layout.cell_of(chunk)  # ...under the cursor
            assert layout.used > cells // 2  # the window fills the map at every level
        assert spans[-1] == 1 and stretches[-1] == cells  # one chunk on every cell
        deepest = spans.index(1)
        assert block_map.zoom == deepest + 1  # zooming in further did nothing
        for before, after in itertools.pairwise(spans[: deepest + 1]):
            assert after <= before // 2 + 1  # each level halves the window...
        stretched = [k for k in stretches[: deepest + 1] if k > 1]
        assert len(stretched) >= 4  # ...well past one chunk per cell
        assert all(b >= 2 * a for a, b in itertools.pairwise(stretched))
        block_map.action_zoom_out()
        assert block_map.cell_layout.last - block_map.cell_layout.first == spans[deepest - 1]
        await pilot.press("0")
        layout = block_map.cell_layout
        assert (block_map.zoom, layout.first, layout.last, layout.cells_per_chunk) == (
            0,
            0,
            5000,
            1,
        )
        assert (
            layout.chunks(block_map.cursor_cell)[0]
            <= chunk
            < layout.chunks(block_map.cursor_cell)[1]
        )


async def test_small_device_fills_the_map_and_each_cell_describes_its_chunk() -> None:
    chunk_map = ChunkMap(1025)  # the report: it used to fill a seventh of the map
    chunk_map.set(520, State.DIFFERS)
    app = MapApp(chunk_map, chunk_size=MiB, poll_interval=None)
    async with app.run_test(size=(100, 42)) as pilot:
        block_map = app.query_one(BlockMap)
        layout = block_map.cell_layout
        assert (layout.width, layout.rows) == (100, 78)  # the legend takes two lines of 100
        assert (layout.per_cell, layout.cells_per_chunk, layout.used) == (1, 7, 1025 * 7)
        cell = layout.cell_of(520) + 3  # the middle cell of chunk 520
        assert layout.cells[cell] == State.DIFFERS
        assert block_map.cell_facts(cell) == (520, 521, 520 * MiB, 521 * MiB, {State.DIFFERS: 1})
        expected = "offset 0x20800000 – 0x20900000 (520.0 MiB – 521.0 MiB): 1 differs"
        assert block_map.describe_cell(cell) == expected
        x, y = cell % 100, cell // 200  # cell 3643: line 18, top half
        await pilot.hover(block_map, offset=(x, y))
        assert (app.highlights[-1].cell, app.highlights[-1].description) == (cell, expected)
        await pilot.click(block_map, offset=(x, y))
        assert block_map.cursor_cell == layout.cell_of(520)  # the chunk's first cell
        assert app.highlights[-1].description == expected
        await pilot.click(block_map, offset=(x, y))  # the cursor's chunk again: the half below
        assert block_map.cursor_cell == layout.cell_of(layout.chunks(cell + 100)[0])
        assert block_map.cursor_cell == 534 * 7
        assert block_map.describe_cell(layout.used) == ""


async def test_poll_repaints_every_line_of_a_chunk_spanning_several() -> None:
    chunk_map = ChunkMap(3)
    app = MapApp(chunk_map, poll_interval=None)
    async with app.run_test(size=(40, 12)):
        block_map = app.query_one(BlockMap)
        layout = block_map.cell_layout
        assert (layout.width, layout.rows, layout.cells_per_chunk) == (40, 16, 213)
        refreshed: list[int] = []
        original = block_map.refresh_lines

        def spy(y_start: int, line_count: int = 1) -> None:
            refreshed.extend(range(y_start, y_start + line_count))
            original(y_start, line_count)

        block_map.refresh_lines = spy  # type: ignore[method-assign]
        before = [block_map.render_line(y) for y in range(8)]
        chunk_map.set(1, State.ERROR)  # cells 213 .. 425: lines 2 (bottom half) .. 5
        block_map.poll()
        assert refreshed == [2, 3, 4, 5]
        assert layout.cells[213:426] == bytes([State.ERROR]) * 213
        assert layout.cells[212] == layout.cells[426] == State.PENDING
        after = [block_map.render_line(y) for y in range(8)]
        assert [a is b for a, b in zip(before, after, strict=True)] == [True] * 2 + [False] * 4 + [
            True
        ] * 2


async def test_cursor_moves_chunk_by_chunk_when_chunks_span_cells() -> None:
    app = MapApp(small_pattern_map(), poll_interval=None)
    async with app.run_test(size=(60, 15)) as pilot:
        block_map = app.query_one(BlockMap)
        layout = block_map.cell_layout
        assert (layout.width, layout.cells_per_chunk, layout.used) == (60, 4, 1440)

        def chunk() -> int:
            return block_map.cell_layout.chunks(block_map.cursor_cell)[0]

        await pilot.press("right")
        assert (chunk(), block_map.cursor_cell) == (1, 4)  # the next chunk, not the next cell
        await pilot.press("right", "right", "left")
        assert (chunk(), block_map.cursor_cell) == (2, 8)
        await pilot.press("down")  # 15 chunks to a row: the chunk right below
        assert (chunk(), block_map.cursor_cell) == (17, 68)
        await pilot.press("up", "left", "left", "left")
        assert chunk() == 0
        await pilot.press("left", "up")  # at the start of the device: nowhere to go
        assert chunk() == 0
        assert app.highlights[-1].first_chunk == 0 and app.highlights[-1].last_chunk == 1

    app = MapApp(ChunkMap(3), poll_interval=None)
    async with app.run_test(size=(40, 12)) as pilot:
        block_map = app.query_one(BlockMap)
        assert block_map.cell_layout.cells_per_chunk == 213  # over five cell rows
        await pilot.press("down")  # the cell below is still chunk 0: go to chunk 1
        assert block_map.cursor_cell == 213
        await pilot.press("down", "down")
        assert block_map.cursor_cell == 426  # the last chunk: it stays
        await pilot.press("up")
        assert block_map.cursor_cell == 213


async def test_cursor_pans_a_zoomed_window_of_chunks_spanning_cells() -> None:
    app = MapApp(ChunkMap(5000), poll_interval=None)
    async with app.run_test(size=(40, 12)) as pilot:
        block_map = app.query_one(BlockMap)
        for _ in range(7):
            block_map.action_zoom_in()
        layout = block_map.cell_layout
        # 40 chunks of 16 cells: 2.5 chunks to a cell row, so chunks wrap across rows.
        assert (layout.first, layout.last, layout.cells_per_chunk) == (0, 40, 16)

        def chunk() -> int:
            return block_map.cell_layout.chunks(block_map.cursor_cell)[0]

        await pilot.press(*["down"] * 19)  # each cell row down is two chunks on
        assert (chunk(), block_map.cursor_cell) == (38, 608)
        await pilot.press("down")  # past the end: the window pans by (about) a cell row
        assert (block_map.cell_layout.first, block_map.cell_layout.last) == (2, 42)
        assert (chunk(), block_map.cursor_cell) == (40, 608)
        await pilot.press("right", "right")
        assert (block_map.cell_layout.first, block_map.cell_layout.last) == (4, 44)
        assert (chunk(), block_map.cursor_cell) == (42, 608)
        await pilot.press(*["up"] * 30)
        assert (block_map.cell_layout.first, chunk(), block_map.cursor_cell) == (0, 0, 0)


async def test_zoom_to_in_both_regimes() -> None:
    app = MapApp(ChunkMap(100_000), poll_interval=None)
    async with app.run_test(size=(40, 12)):
        block_map = app.query_one(BlockMap)
        block_map.zoom_to(50_000, 2000)  # many chunks per cell: zooms in with context
        layout = block_map.cell_layout
        assert block_map.zoom > 0 and layout.first < 50_000 and 52_000 + 500 <= layout.last
        assert (
            layout.chunks(block_map.cursor_cell)[0]
            <= 50_000
            < layout.chunks(block_map.cursor_cell)[1]
        )
        block_map.zoom_to(70_000, 1)  # one chunk: no further than a chunk per cell
        layout = block_map.cell_layout
        assert (layout.per_cell, layout.cells_per_chunk) == (1, 1)
        assert layout.chunks(block_map.cursor_cell) == (70_000, 70_001)

    app = MapApp(ChunkMap(300), poll_interval=None)
    async with app.run_test(size=(40, 12)):
        block_map = app.query_one(BlockMap)
        for _ in range(4):
            block_map.action_zoom_in()  # far in at the start of the device
        assert block_map.cell_layout.last < 250
        block_map.zoom_to(250, 10)  # fewer chunks than cells: the whole device, cursor on 250
        layout = block_map.cell_layout
        assert (block_map.zoom, layout.first, layout.last) == (0, 0, 300)
        assert layout.cells_per_chunk == 2
        assert layout.chunks(block_map.cursor_cell) == (250, 251)


def scroll_event(block_map: BlockMap, up: bool, x: int, y: int) -> events.MouseEvent:
    """A wheel event over the map at widget offset (x, y), as the screen would forward it."""
    region = block_map.region
    kind = events.MouseScrollUp if up else events.MouseScrollDown
    return kind(block_map, x, y, 0, 0, 0, False, False, False,
                screen_x=region.x + x, screen_y=region.y + y)  # fmt: skip


async def test_mouse_wheel_zooms_around_the_mouse_and_click_moves_the_cursor() -> None:
    app = MapApp(ChunkMap(100_000), poll_interval=None)
    async with app.run_test(size=(40, 12)) as pilot:
        block_map = app.query_one(BlockMap)
        x, y = 30, 3
        cell = 2 * y * 40 + x
        start, end = block_map.cell_layout.chunks(cell)
        middle = (start + end) // 2
        block_map.post_message(scroll_event(block_map, True, x, y))
        await pilot.pause()
        assert block_map.zoom == 1
        start, end = block_map.cell_layout.chunks(cell)
        assert start <= middle < end  # the chunk under the mouse stays under the mouse
        assert block_map.cell_layout.per_cell < block_map.cell_layout.first
        block_map.post_message(scroll_event(block_map, False, x, y))
        await pilot.pause()
        assert block_map.zoom == 0
        assert block_map.cell_layout.first == 0
        await pilot.click(block_map, offset=(7, 2))
        assert block_map.cursor_cell == 4 * 40 + 7
        await pilot.click(block_map, offset=(7, 2))  # again: the bottom half
        assert block_map.cursor_cell == 5 * 40 + 7
        await pilot.hover(block_map, offset=(9, 1))
        assert app.highlights[-1].cell == 2 * 40 + 9 and not app.highlights[-1].is_cursor


async def test_cursor_describes_its_cell() -> None:
    chunk_map = pattern_map()
    device = 6000 * MiB - 12345  # the last chunk is short
    app = MapApp(chunk_map, chunk_size=MiB, device_size=device, poll_interval=None)
    async with app.run_test(size=(40, 12)) as pilot:
        block_map = app.query_one(BlockMap)
        per_cell = block_map.cell_layout.per_cell
        lone = 50 + 173 * 3  # a lone differing chunk in the "same" bulk
        cell = lone // per_cell
        await pilot.click(block_map, offset=(cell % 40, cell // 80))
        if block_map.cursor_cell != cell:
            await pilot.click(block_map, offset=(cell % 40, cell // 80))
        await pilot.pause()
        first = cell * per_cell
        message = app.highlights[-1]
        assert (message.first_chunk, message.last_chunk) == (first, first + per_cell)
        assert (message.byte_start, message.byte_end) == (first * MiB, (first + per_cell) * MiB)
        assert message.counts == {State.DIFFERS: 1, State.SAME: per_cell - 1}
        expected = (
            f"offset 0x{first * MiB:09X} – 0x{(first + per_cell) * MiB:09X} "
            f"({first:,.1f} MiB – {first + per_cell:,.1f} MiB): 1 differs, {per_cell - 1} same"
        )
        assert block_map.describe_cell(cell) == expected == message.description
        assert str(app.query_one("#info", Label).render()) == expected
        last = block_map.cell_layout.used - 1
        assert block_map.cell_facts(last)[3] == device  # type: ignore[index]
        assert block_map.describe_cell(last + 1) == ""


async def test_poll_repaints_only_changed_lines_and_is_cheap_when_idle() -> None:
    chunk_map = ChunkMap(20_000)
    app = MapApp(chunk_map, poll_interval=None)
    async with app.run_test(size=(40, 12)) as pilot:
        block_map = app.query_one(BlockMap)
        refreshed: list[tuple[int, int]] = []
        original = block_map.refresh_lines

        def spy(y_start: int, line_count: int = 1) -> None:
            refreshed.append((y_start, line_count))
            original(y_start, line_count)

        block_map.refresh_lines = spy  # type: ignore[method-assign]
        taken = 0
        take_dirty = chunk_map.take_dirty

        def counting_take_dirty() -> set[int] | None:
            nonlocal taken
            taken += 1
            return take_dirty()

        chunk_map.take_dirty = counting_take_dirty  # type: ignore[method-assign]
        block_map.poll()
        assert taken == 0  # generation unchanged: no work at all
        layout = block_map.cell_layout
        chunk = (7 * 40 + 3) * layout.per_cell  # cell row 7 = line 3 (bottom half), column 3
        before = block_map.render_line(3)
        assert block_map.render_line(3) is before  # cached
        chunk_map.set(chunk, State.ERROR)
        block_map.poll()
        assert taken == 1
        assert refreshed == [(3, 1)]
        assert layout.cells[layout.cell_of(chunk)] & 7 == State.ERROR
        after = block_map.render_line(3)
        assert after is not before and after.text != before.text
        assert block_map.render_line(2) is block_map.render_line(2)
        await pilot.pause()
        legend = app.query_one(BlockMapLegend)
        assert legend.counts[State.ERROR] == 1
        assert "error 1" in legend.render().plain.replace("\u00a0", " ")


async def test_poll_after_too_many_changes_redraws_everything() -> None:
    chunk_map = ChunkMap(200_000)
    app = MapApp(chunk_map, poll_interval=None)
    async with app.run_test(size=(40, 12)):
        block_map = app.query_one(BlockMap)
        for index in range(70_000):  # over the ChunkMap's dirty limit
            chunk_map.set(index, State.SAME)
        assert chunk_map.generation
        block_map.poll()
        layout = block_map.cell_layout
        assert layout.cells[: layout.cell_of(69_999)] == bytearray([State.SAME]) * (
            layout.cell_of(69_999)
        )


async def test_polling_while_another_thread_writes_misses_nothing() -> None:
    chunk_map = ChunkMap(100_000)
    app = MapApp(chunk_map, poll_interval=0.005)
    async with app.run_test(size=(40, 12)) as pilot:

        def engine() -> None:
            rng = random.Random(3)
            for _ in range(30_000):
                chunk_map.set(rng.randrange(100_000), State(rng.randrange(7)))

        writer = threading.Thread(target=engine)
        writer.start()
        while writer.is_alive():
            await pilot.pause(0.01)
        writer.join()
        await pilot.pause(0.05)
        block_map = app.query_one(BlockMap)
        layout = block_map.cell_layout
        fresh = CellLayout.build(chunk_map.states, chunk_map.total, layout.width, layout.rows)
        assert layout.cells == fresh.cells


async def test_widget_polls_by_itself_when_mounted_with_a_map() -> None:
    chunk_map = ChunkMap(1000)
    app = MapApp(chunk_map, poll_interval=0.01)
    async with app.run_test(size=(40, 12)) as pilot:
        chunk_map.set(0, State.DIFFERS)
        await pilot.pause(0.1)
        assert app.query_one(BlockMap).cell_layout.cells[0] & 7 == State.DIFFERS


async def test_theme_change_repaints_in_the_new_colours() -> None:
    app = MapApp(pattern_map(), poll_interval=None)
    async with app.run_test(size=(40, 12)) as pilot:
        block_map = app.query_one(BlockMap)
        dark_same = block_map.state_color(State.SAME)
        dark_line = block_map.render_line(5)
        app.theme = "textual-light"
        await pilot.pause()
        assert block_map.state_color(State.SAME) != dark_same
        light_line = block_map.render_line(5)
        assert light_line is not dark_line
        styles = {segment.style for y in range(block_map.size.height) for segment in block_map.render_line(y)}
        assert any(style and style.bgcolor == block_map.state_color(State.SAME).rich_color
                   for style in styles)  # fmt: skip
        legend_styles = {span.style for span in app.query_one(BlockMapLegend).render().spans}
        assert any(getattr(style, "color", None) == block_map.state_color(State.SAME).rich_color
                   for style in legend_styles)  # fmt: skip


async def test_set_map_replaces_the_map_and_resets_zoom() -> None:
    app = MapApp(ChunkMap(100_000), poll_interval=None)
    async with app.run_test(size=(40, 12)) as pilot:
        block_map = app.query_one(BlockMap)
        await pilot.press("plus")
        block_map.set_map(pattern_map(), chunk_size=4096)
        assert block_map.zoom == 0
        assert block_map.cell_layout.last == 6000
        assert block_map.describe_cell(0).startswith("offset 0x0000000 – ")


def disk_layout() -> Layout:
    """Three partitions on the 6000 MiB device of `pattern_map`: p1 1-512 MiB (vfat), p2 to
    4000 MiB (ext4 'root'), p3 to 5999 MiB (no file system found)."""
    return Layout(size=6000 * MiB - 12345, table="gpt", partitions=(
        Partition(1, MiB, 511 * MiB, "c12a", "EFI System", fs=Filesystem("vfat", "EFI")),
        Partition(2, 512 * MiB, 3488 * MiB, "0fc6", "Linux filesystem", fs=Filesystem("ext4", "root")),
        Partition(3, 4000 * MiB, 1999 * MiB, "0fc6", "Linux filesystem"),
    ))


def partitioned_app(layout: Layout) -> MapApp:
    """The 6000 MiB device of `pattern_map` with these partitions, polled by the test."""
    return MapApp(pattern_map(), chunk_size=MiB, device_size=6000 * MiB - 12345, poll_interval=None,
                  disk_layout=layout)


async def test_partitions_are_marked_where_they_begin_and_named_by_the_cursor() -> None:
    app = partitioned_app(disk_layout())
    async with app.run_test(size=(40, 12)) as pilot:
        block_map = app.query_one(BlockMap)
        layout = block_map.cell_layout
        # p1 ends in the cell where p2 begins, p2 where p3 does: their numbers win.
        assert block_map.marks == {layout.cell_of(1): "1", layout.cell_of(512): "2", layout.cell_of(4000): "3",
                                   layout.cell_of(5998): "]"}
        assert app.highlights[-1].description.startswith("unpartitioned · offset 0x")
        cell = layout.cell_of(600)
        await pilot.click(block_map, offset=(cell % 40, cell // 80))
        if block_map.cursor_cell != cell:
            await pilot.click(block_map, offset=(cell % 40, cell // 80))
        await pilot.pause()
        start = app.highlights[-1].byte_start
        assert app.highlights[-1].description.startswith(
            f"p2 ext4 'root' +{(start - 512 * MiB) / MiB:.1f} MiB · offset 0x")
        assert "".join(segment.text for segment in block_map.render_line(0)).count("1") == 1  # drawn
        await pilot.press("plus", "plus", "plus")  # zoomed in around p2's start: p1's end, p2's start
        assert sorted(block_map.marks.values()) == ["2", "]"]
        block_map.set_layout(None)
        assert block_map.marks == {}


def gapped_layout() -> Layout:
    """Three partitions with unpartitioned space between and after them on the 6000 MiB device
    of `pattern_map`: p1 1-1500 MiB, a gap, p2 2500-4000 MiB, p3 right after it to 5000 MiB,
    nothing after that."""
    return Layout(size=6000 * MiB - 12345, table="gpt", partitions=(
        Partition(1, MiB, 1499 * MiB, "c12a", "EFI System", fs=Filesystem("vfat", "EFI")),
        Partition(2, 2500 * MiB, 1500 * MiB, "0fc6", "Linux filesystem", fs=Filesystem("ext4", "root")),
        Partition(3, 4000 * MiB, 1000 * MiB, "0fc6", "Linux filesystem", fs=Filesystem("ext4", "data")),
    ))


async def test_partitions_are_marked_where_they_end_so_gaps_show() -> None:
    app = partitioned_app(gapped_layout())
    async with app.run_test(size=(40, 12)) as pilot:
        block_map = app.query_one(BlockMap)
        layout = block_map.cell_layout
        # p2 ends in the cell where p3 begins: the number wins.
        assert layout.cell_of(3999) == layout.cell_of(4000)
        assert block_map.marks == {layout.cell_of(1): "1", layout.cell_of(1499): "]",
                                   layout.cell_of(2500): "2", layout.cell_of(4000): "3",
                                   layout.cell_of(4999): "]"}
        line = layout.cell_of(1499) // (2 * layout.width)
        assert "]" in "".join(segment.text for segment in block_map.render_line(line))
        for chunk, where in ((1499, "p1 vfat 'EFI' +"), (1500 + layout.per_cell, "unpartitioned ·"),
                             (2500 + layout.per_cell, "p2 ext4 'root' +"), (5000 + layout.per_cell, "unpartitioned ·")):
            assert block_map.describe_cell(layout.cell_of(chunk)).startswith(where), chunk
        # Zoomed in until a chunk spans cells: the end is the last cell of p1's last chunk.
        block_map.zoom_to(1499, 1)
        for _ in range(4):
            await pilot.press("plus")
        layout = block_map.cell_layout
        assert layout.cells_per_chunk > 1
        assert block_map.marks == {layout.cell_of(1499) + layout.cells_per_chunk - 1: "]"}


# -- snapshots ---------------------------------------------------------------------------

SNAPSHOT_SIZE = (80, 20)


def snapshot_app(theme: str) -> MapApp:
    """6000 chunks of a 6000 MiB device with every state, drawn at 3 chunks per cell."""
    return MapApp(pattern_map(), theme, chunk_size=MiB, device_size=6000 * MiB - 12345)


def test_snapshot_dark(snap_compare: Any) -> None:
    """The whole device on the dark theme, 3 chunks per cell.

    You should see, top to bottom: a near-black (all-zero) band, the bulk in dim green (same)
    with a long amber run and a bright-green written band, a second near-black zero band, a
    violet updated run at the right just below it, more dim green, then a mid-grey pending
    area. Amber dots are spread evenly over everything hashed (each is ONE differing chunk
    among the three of its cell); two red error dots, one in the green just under the written
    band and one in the second zero band. After the pending
    area the background shows: cells are kept uniform (3 chunks each), so the last third of the
    widget is past the end of the device. A pale cursor cell sits at the top left; below the
    map, the legend with swatches and counts, and the cursor cell's offsets ("3 zero").
    """
    assert snap_compare(snapshot_app("textual-dark"), terminal_size=SNAPSHOT_SIZE)


def test_snapshot_light(snap_compare: Any) -> None:
    """The same map on the light theme: every state must stay distinct and readable.

    You should see the picture of `test_snapshot_dark` on a light background: light grey for
    zero, mid grey for pending, pale green for same, a dark cursor cell at the top left, and
    the same amber, bright green, violet and red marks.
    """
    assert snap_compare(snapshot_app("textual-light"), terminal_size=SNAPSHOT_SIZE)


def test_snapshot_small_device_fills_the_map(snap_compare: Any) -> None:
    """360 chunks on a 60x12 map (1440 cells): each chunk is four cells wide, 15 to a cell row.

    You should see the map fill all 12 lines, with no background below it: near-black (zero)
    over the first line except the right two thirds of its bottom half, with the pale cursor in
    it (column 12, bottom half: chunk 18, after three `right` and one `down`); dim green (same)
    with four amber dashes four cells wide (lone differing chunks); a whole amber line (a run of
    differing chunks), a bright green line (written), a violet half line (updated) with a red
    dot just below it, a near-black zero line, a red dot and an amber dash in more dim green,
    then three mid-grey lines of pending chunks. The info line describes the cursor's one
    chunk: "offset 0x01200000 – 0x01300000 (18.0 MiB – 19.0 MiB): 1 zero".
    """

    async def run_before(pilot: Any) -> None:
        await pilot.pause()
        block_map = pilot.app.query_one(BlockMap)
        assert block_map.size == (60, 12) and block_map.cell_layout.cells_per_chunk == 4

    app = MapApp(small_pattern_map(), chunk_size=MiB)
    keys = ["right"] * 3 + ["down"]
    assert snap_compare(app, terminal_size=(60, 15), press=keys, run_before=run_before)


def test_snapshot_partitions(snap_compare: Any) -> None:
    """The dark map of `test_snapshot_dark` with three partitions and gaps (see `gapped_layout`).

    You should see bold marks on the map, each on its own cell's colour: "1" in the
    near-black zero band at the top left (at 1 MiB, cell 0) and "]" where p1 ends (1500 MiB,
    a quarter of the way down); the unpartitioned gap, then "2" where p2 begins (2500 MiB, in
    the second zero band), "3" where p2 ends and p3 begins (4000 MiB, no gap between them: the
    number wins), "]" where p3 ends (5000 MiB, in the pending area), and no mark over the
    unpartitioned rest. The info line describes the cursor cell, the first three chunks, which
    begin before p1: "unpartitioned · offset 0x000000000 – 0x000300000 (…): 3 zero".
    """
    app = MapApp(pattern_map(), "textual-dark", chunk_size=MiB, device_size=6000 * MiB - 12345,
                 disk_layout=gapped_layout())
    assert snap_compare(app, terminal_size=SNAPSHOT_SIZE)


def test_snapshot_zoomed_with_cursor(snap_compare: Any) -> None:
    """Zoomed 4x (two `+`) around a cursor moved onto the bright-green written band.

    You should see: the same features drawn larger (one chunk per cell), the cursor as a pale
    mark inside the written band at the screen place it had before zooming, and the info line
    describing the single chunk under it: a 1 MiB range at 1,770 MiB, "1 written".
    """
    keys = ["down"] * 7 + ["right"] * 30 + ["plus", "plus"]
    assert snap_compare(snapshot_app("textual-dark"), terminal_size=SNAPSHOT_SIZE, press=keys)


@pytest.mark.parametrize("width", [30, 44, 80, 120])
async def test_legend_never_splits_a_name_from_its_count(width: int) -> None:
    """At any width, each line of the legend holds whole items ("██ differs 800"), none cut."""
    chunk_map = ChunkMap(10_000)
    for index in range(800):
        chunk_map.set(index, State.DIFFERS)
    app = MapApp(chunk_map, poll_interval=None)
    async with app.run_test(size=(width, 12)) as pilot:
        await pilot.pause()
        legend = app.query_one(BlockMapLegend)
        lines = [strip.text.strip() for strip in (legend.render_line(y) for y in range(legend.size.height))]
        items = [item for line in lines for item in line.split("  ") if item]
        assert items == [f"██ {name} {legend.counts.get(state, 0):,}"
                         for state, name in ((s, STATE_NAMES[s]) for s in LEGEND_ORDER)], lines
        assert all(len(line) <= legend.content_size.width for line in lines)


async def test_the_border_says_the_zoom_and_the_range_shown() -> None:
    app = MapApp(ChunkMap(4096), poll_interval=None, chunk_size=1 << 20)
    async with app.run_test(size=(40, 12)) as pilot:
        block_map = app.query_one(BlockMap)
        await pilot.pause()
        per_cell = block_map.cell_layout.per_cell
        assert block_map.border_subtitle == f"whole device, {per_cell}.0 MiB a cell"
        block_map.zoom_to(1024, 16)
        await pilot.pause()
        layout = block_map.cell_layout
        assert layout.first <= 1024 and layout.last < 4096
        shown = format_range(layout.first << 20, layout.last << 20)
        assert block_map.border_subtitle == (
            f"zoom ×{round(4096 / (layout.last - layout.first))}: {shown} of 4.0 GiB, 1 chunk a cell")
        await pilot.press("0")
        assert block_map.border_subtitle.startswith("whole device")


async def test_the_scan_position_is_marked_and_follows() -> None:
    app = MapApp(ChunkMap(10_000), poll_interval=None)
    async with app.run_test(size=(40, 12)) as pilot:
        block_map = app.query_one(BlockMap)
        await pilot.pause()

        def lines_with_mark() -> list[int]:
            return [y for y in range(block_map.size.height) if "▶" in block_map.render_line(y).text]

        assert lines_with_mark() == []
        layout = block_map.cell_layout
        block_map.set_position(0)
        assert lines_with_mark() == [0]
        far = layout.chunks(2 * layout.width * 3)[0]  # the first cell of line 3
        block_map.set_position(far)
        assert lines_with_mark() == [3] and block_map.render_line(3).text.startswith("▶")
        block_map.set_position(None)
        assert lines_with_mark() == []

