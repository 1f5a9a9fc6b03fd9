"""Tests of the block map: cell aggregation, painting, zoom, cursor, polling, and snapshots."""

from __future__ import annotations

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

from blocksync_tui.engine.chunkmap import ChunkMap, State
from blocksync_tui.tui.widgets.block_cells import (
    EMPTY,
    PRIORITY,
    CellLayout,
    LinePainter,
    cell_state,
    cell_states,
    chunks_per_cell,
    describe_range,
    format_range,
    format_size,
)
from blocksync_tui.tui.widgets.block_map import BlockMap
from blocksync_tui.tui.widgets.block_map_legend import BlockMapLegend

MiB = 1 << 20


def naive_cell_states(data: bytes, per_cell: int) -> list[int]:
    """The reference: per cell, the most significant state present, chunk by chunk."""
    rank = {int(state): index for index, state in enumerate(PRIORITY)}
    return [
        min(data[start : start + per_cell], key=rank.__getitem__)
        for start in range(0, len(data), per_cell)
    ]


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


@pytest.mark.parametrize(
    ("total", "cells", "zoom", "expected"),
    [(1000, 100, 0, 10), (1001, 100, 0, 11), (99, 100, 0, 1), (1_000_000, 9600, 0, 105),
     (1_000_000, 9600, 1, 53), (1_000_000, 9600, 30, 1), (0, 10, 0, 1)],
)  # fmt: skip
def test_chunks_per_cell(total: int, cells: int, zoom: int, expected: int) -> None:
    assert chunks_per_cell(total, cells, zoom) == expected


def test_layout_of_a_non_divisible_total_has_a_partial_last_cell() -> None:
    states = bytes([State.SAME]) * 1000 + bytes([State.ERROR])
    layout = CellLayout.build(states, 1001, width=10, rows=10)
    assert layout.per_cell == 11
    assert layout.used == 91  # 1001 = 91 * 11: all cells full
    states = bytes([State.SAME]) * 1002 + bytes([State.ERROR])
    layout = CellLayout.build(states, 1003, width=10, rows=10)
    assert (layout.per_cell, layout.used) == (11, 92)
    assert layout.chunks(91) == (1001, 1003)  # the last cell holds only 2 chunks
    assert layout.cells[91] == State.ERROR
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
    colors = [Color.parse(f"color({index})") for index in range(8)]
    white = Color.parse("white")
    painter = LinePainter(colors, [white] * 8)
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


async def test_zoom_stops_at_one_chunk_per_cell_and_at_the_whole_device() -> None:
    app = MapApp(ChunkMap(5000), poll_interval=None)
    async with app.run_test(size=(40, 12)):
        block_map = app.query_one(BlockMap)
        block_map.action_zoom_out()
        assert block_map.zoom == 0
        for _ in range(20):
            block_map.action_zoom_in()
        assert block_map.cell_layout.per_cell == 1
        assert block_map.zoom <= 4


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
        assert layout.cells[layout.cell_of(chunk)] == State.ERROR
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
        chunk_map.set_range(0, 70_000, State.SAME)  # over the ChunkMap's dirty limit
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
        assert app.query_one(BlockMap).cell_layout.cells[0] == State.DIFFERS


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
        styles = {segment.style for segment in light_line}
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


def test_snapshot_zoomed_with_cursor(snap_compare: Any) -> None:
    """Zoomed 4x (two `+`) around a cursor moved onto the bright-green written band.

    You should see: the same features drawn larger (one chunk per cell), the cursor as a pale
    mark inside the written band at the screen place it had before zooming, and the info line
    describing the single chunk under it: a 1 MiB range at 1,770 MiB, "1 written".
    """
    keys = ["down"] * 7 + ["right"] * 30 + ["plus", "plus"]
    assert snap_compare(snapshot_app("textual-dark"), terminal_size=SNAPSHOT_SIZE, press=keys)
