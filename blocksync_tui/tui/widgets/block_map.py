"""Provides BlockMap: a Line-API map of every chunk of a device, coloured by its sync state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual import events
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.color import Color
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.signal import Signal
from textual.strip import Strip
from textual.timer import Timer

from blocksync_tui.engine.chunkmap import STATE_NAMES, ChunkView, State
from blocksync_tui.engine.layout import Layout
from blocksync_tui.tui.widgets.block_cells import (
    EMPTY,
    PRIORITY,
    CellLayout,
    LinePainter,
    cell_scale,
    describe_range,
    format_range,
    format_size,
    shade_palette,
)
from blocksync_tui.tui.widgets.block_marks import DIM, mark_cells, paint_marked

StripKey = tuple[int, int, int, int, int, int, int, int, int]
"""(line, line stamp, width, first chunk, last chunk, chunks per cell, cells per chunk, cursor
position in line, position marker in line)."""

_CURSOR_BLEND = 0.7
"""How far the cursor cell moves from its state colour towards the cursor colour."""
POSITION_MARK = "▶"
"""Drawn on the cell where the scan is: how far it has come."""
PARTITION_END = "]"
"""Drawn on the cell where a partition ends (its number marks where it begins)."""

_MOVES = (("left", -1, 0, "cell"), ("right", 1, 0, "cell"), ("up", 0, -1, "cell row"),
          ("down", 0, 1, "cell row"))  # fmt: skip
"""(key, columns, cell rows, unit) of each cursor key."""


class BlockMap(ScrollView, can_focus=True, inherit_bindings=False):
    """The whole device (or a zoomed window of it) as a grid of coloured half-block cells.

    Each terminal character shows two cells ("▀": foreground = top cell, background = bottom
    cell). With a disk layout, the cell where a partition begins shows its number, the cell
    where it ends `PARTITION_END` (so an unpartitioned gap is the cells between an end and the
    next number, or after the last end), and the cursor's description starts with the
    partition it is in. Each cell covers
    `layout.per_cell` consecutive chunks and is shaded by the share of their states: the most
    significant (see `PRIORITY`) tints the most common other one (`block_cells.cell_value`),
    so one differing chunk among thousands still shows, and 10% differing does not look like
    all of it. With
    fewer chunks than cells (a small device, or zoomed in far), each chunk spans
    `layout.cells_per_chunk` consecutive cells instead, so the device always fills the map; the
    cursor is then on the chunk's first cell and moves chunk by chunk. Terminals report the mouse
    per character, not per half: clicking the cursor's own character again moves the cursor to
    the other half.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        *(f"block-map--{name}" for name in STATE_NAMES.values()),
        "block-map--cursor",
        "block-map--mark",
    }
    """One class per `State` (its `background` is the cell colour), plus the cursor tint and the
    colour of a partition's marks (its number, its end)."""

    DEFAULT_CSS = """
    BlockMap {
        height: 1fr;
        min-height: 2;
        overflow: hidden hidden;
        background: $background;
        & > .block-map--pending { background: $foreground 30%; }
        & > .block-map--zero { background: $foreground 12%; }
        & > .block-map--hole { background: $foreground 5%; }
        & > .block-map--same { background: $success 40%; }
        & > .block-map--differs { background: $warning; }
        & > .block-map--written { background: $success; }
        & > .block-map--updated { background: #A66BE0; }
        & > .block-map--error { background: $error; }
        & > .block-map--cursor { background: $foreground; }
        & > .block-map--mark { color: $foreground; }
    }
    """
    """Greys for unknown/all-zero chunks (faintest: holes, which hold no block), greens for in sync (bright: written by this run), amber
    for to-be-written, violet for synced again, red for errors: theme variables where a theme has
    the meaning (light and dark both work), a fixed violet where no theme variable is distinct."""

    BINDINGS: ClassVar[list[BindingType]] = [
        # One footer entry for the three zoom keys: an 80-column footer holds no more.
        Binding("plus,equals_sign", "zoom_in", "Zoom", id="block-map.zoom-in", key_display="+-0",
                tooltip="Zoom in 2x around the cursor (- out, 0 the whole device)"),
        Binding("minus", "zoom_out", "Zoom out", id="block-map.zoom-out", show=False,
                tooltip="Zoom out 2x around the cursor"),
        Binding("0", "zoom_reset", "Whole device", id="block-map.zoom-reset", show=False,
                tooltip="Show the whole device again"),
        *(Binding(key, f"move_cursor({dx}, {dy})", key.title(), show=False,
                  id=f"block-map.cursor-{key}", tooltip=f"Move the cursor one {unit} {key}")
          for key, dx, dy, unit in _MOVES),
    ]  # fmt: skip
    """Zoom and cursor keys; the ids let a user keymap rebind them."""

    @dataclass(eq=False)
    class CellHighlighted(Message):
        """The cell under the cursor or the mouse, and what it covers."""

        first_chunk: int
        """First chunk of the cell."""
        last_chunk: int
        """One past the last chunk of the cell."""
        byte_start: int
        """Device offset of the first byte of the cell."""
        byte_end: int
        """Device offset one past the last byte of the cell."""
        counts: dict[State, int]
        """Chunks per state in the cell, most significant first (states with none left out)."""
        block_map: BlockMap
        """The map that posted it."""
        cell: int
        """Index of the cell on screen."""
        description: str
        """One line saying the above, ready for a label (see `BlockMap.describe_cell`)."""
        is_cursor: bool = True
        """True for the keyboard cursor, False for the cell under the mouse."""

        @property
        def control(self) -> BlockMap:
            """The map that posted it (for `@on(..., "#id")` selectors)."""
            return self.block_map

        def can_replace(self, message: Message) -> bool:
            """A newer highlight from the same map supersedes a queued older one."""
            return (
                isinstance(message, BlockMap.CellHighlighted)
                and message.block_map is self.block_map
            )

    def __init__(
        self,
        chunk_map: ChunkView | None = None,
        chunk_size: int = 1 << 20,
        device_size: int = 0,
        *,
        poll_interval: float | None = 1 / 15,
        disk_layout: Layout | None = None,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        """Create a block map.

        Args:
            chunk_map: The states to show (None: nothing yet, see `set_map`).
            chunk_size: Bytes per chunk.
            device_size: Bytes of the device (0: `total * chunk_size`); the last chunk may be short.
            poll_interval: Seconds between the map's own polls once mounted with a map; None
                leaves polling to the owner.
            disk_layout: The partitions to mark and name (None: none).
            name: The name of the widget.
            id: The ID of the widget in the DOM.
            classes: The CSS classes of the widget.
        """
        super().__init__(name=name, id=id, classes=classes)
        self._chunk_map = chunk_map
        self.chunk_size = chunk_size
        """Bytes per chunk."""
        self.device_size = device_size
        """Bytes of the device (0: a whole number of chunks)."""
        self.poll_interval = poll_interval
        """Seconds between automatic polls (None: the owner calls `poll`)."""
        self.disk_layout = disk_layout
        """The partitions marked on the map and named by the cursor's description."""
        self._marks: dict[int, str] = {}
        """The characters drawn where each partition shown begins and ends, by cell."""
        self._position: int | None = None
        self.counts_changed: Signal[dict[State, int]] = Signal(self, "counts-changed")
        """Published with `ChunkView.counts()` by each poll that saw a change (the legend's feed)."""
        self._zoom = 0
        self._first = 0  # wanted first chunk of the window; the layout clamps it
        self._cursor = 0  # a chunk, not a cell, so that it survives zooms and resizes
        self._layout = CellLayout.empty()
        self._seen_generation = -1
        self._stamp = 0  # bumped to invalidate cached strips of the lines it is given to
        self._line_stamps: list[int] = []
        self._strip_cache: LRUCache[StripKey, Strip] = LRUCache(1024)
        self._painter: LinePainter | None = None
        self._dim_painter: LinePainter | None = None
        self._palettes: tuple | None = None
        self._spotlight: tuple[tuple[int, int], ...] = ()
        self._spotlit: bytearray | None = None
        """Per cell, 1 where a marked chunk shows (None: no marks, nothing dimmed)."""
        self._highlighted: tuple[int, bool] | None = None
        self._hover: int | None = None
        self._timer: Timer | None = None

    # -- public API ------------------------------------------------------------------------

    @property
    def chunk_map(self) -> ChunkView | None:
        """The states shown."""
        return self._chunk_map

    @property
    def cell_layout(self) -> CellLayout:
        """The current cell layout (window, chunks per cell, cell states)."""
        return self._layout

    @property
    def zoom(self) -> int:
        """Zoom level: 0 shows the whole device, each level halves the chunks shown."""
        return self._zoom

    @property
    def cursor_cell(self) -> int:
        """The cell under the keyboard cursor (the first cell of its chunk)."""
        return self._layout.cell_of(self._cursor) if self._layout.used else 0

    @property
    def device_bytes(self) -> int:
        """Size of the device in bytes."""
        total = self._chunk_map.total if self._chunk_map is not None else 0
        return self.device_size or total * self.chunk_size

    def set_map(
        self, chunk_map: ChunkView | None, chunk_size: int = 1 << 20, device_size: int = 0
    ) -> None:
        """Show another map (or none); resets zoom and cursor.

        Args:
            chunk_map: The states to show.
            chunk_size: Bytes per chunk.
            device_size: Bytes of the device (0: `total * chunk_size`).
        """
        self._chunk_map, self.chunk_size, self.device_size = chunk_map, chunk_size, device_size
        self._zoom = self._first = self._cursor = 0
        self._seen_generation = -1
        if chunk_map is not None:
            self.counts_changed.publish(chunk_map.counts())
        if self.is_mounted:
            self._rebuild()
            self._start_polling()

    def poll(self) -> None:
        """Repaint the lines whose cells changed since the last poll; cheap when nothing did."""
        chunk_map = self._chunk_map
        if chunk_map is None or chunk_map.generation == self._seen_generation:
            return
        # Read the generation before taking the dirty set: a change made in between bumps it
        # past what we store, so the next poll still sees it.
        self._seen_generation = chunk_map.generation
        dirty = chunk_map.take_dirty()
        self.counts_changed.publish(chunk_map.counts())
        layout = self._layout
        if dirty is None or len(dirty) > min(len(layout.cells), layout.last - layout.first):
            self._rebuild()  # one aggregation pass beats a slice per dirty chunk
            return
        touched, lines = layout.refresh(chunk_map.states, dirty)
        self._refresh_map_lines(lines)
        highlighted = self._highlighted
        if highlighted is not None and layout.group(highlighted[0]).start in touched:
            self._post_highlight(*highlighted)  # its counts changed, if not its colour

    def cell_facts(self, cell: int) -> tuple[int, int, int, int, dict[State, int]] | None:
        """What one cell covers: `(first_chunk, last_chunk, byte_start, byte_end, counts)`.

        Args:
            cell: Index of the cell on screen.

        Returns:
            The facts (counts most significant first), or None for a cell showing no chunk.
        """
        layout, chunk_map = self._layout, self._chunk_map
        if chunk_map is None or not 0 <= cell < layout.used:
            return None
        first, last = layout.chunks(cell)
        data = chunk_map.states[first:last]
        counts = {state: n for state in PRIORITY if (n := data.count(state))}
        byte_end = min(last * self.chunk_size, self.device_bytes)
        return first, last, first * self.chunk_size, byte_end, counts

    def describe_cell(self, cell: int) -> str:
        """One line about a cell: `offset 0x… – 0x… (12.0 MiB – 13.0 MiB): 3 differs, 1 same`.

        Args:
            cell: Index of the cell on screen.

        Returns:
            The text, or "" for a cell showing no chunk.
        """
        facts = self.cell_facts(cell)
        if facts is None:
            return ""
        return self._describe(facts[2], facts[3], facts[4])

    def set_layout(self, disk_layout: Layout | None) -> None:
        """Mark and name these partitions (None: none)."""
        self.disk_layout = disk_layout
        if self.is_mounted:
            self._rebuild()

    @property
    def marks(self) -> dict[int, str]:
        """The marks drawn for the partitions, by cell: each one's number where it begins,
        `PARTITION_END` where it ends."""
        return dict(self._marks)

    def _describe(self, start: int, end: int, counts: dict[State, int]) -> str:
        """`p2 ext4 'root' +1.2 MiB · offset 0x… – 0x… (…): 3 differs`: where, then what."""
        text = describe_range(start, end, counts, self.device_bytes)
        where = self.disk_layout.describe_at(start) if self.disk_layout else ""
        return f"{where} · {text}" if where else text

    @property
    def spotlight(self) -> tuple[tuple[int, int], ...]:
        """The chunks in the spotlight, as (first, count) runs."""
        return self._spotlight

    def set_spotlight(self, runs: tuple[tuple[int, int], ...] | None) -> None:
        """Show the cells of these chunk runs in their colours and dim every other cell (the
        chunks of one owner, say); None or () shows the whole map as usual again.

        Args:
            runs: (first chunk, count) runs.
        """
        self._spotlight = tuple(runs or ())
        self._spotlit = mark_cells(self._layout, self._spotlight) if self._spotlight else None
        self._stamp += 1
        self._line_stamps = [self._stamp] * len(self._line_stamps)
        self.refresh()
    def describe_window(self) -> str:
        """The zoom and the range shown: `whole device, 64.0 KiB a cell` or
        `zoom ×8: 16.0 MiB – 24.0 MiB of 64.0 MiB, 1 chunk a cell` (for the map's border)."""
        layout, chunk_map = self._layout, self._chunk_map
        if chunk_map is None or not layout.used:
            return ""
        if layout.cells_per_chunk > 1:
            grain = f"1 chunk in {layout.cells_per_chunk} cells"
        elif layout.per_cell == 1:
            grain = "1 chunk a cell"
        else:
            grain = f"{format_size(layout.per_cell * self.chunk_size)} a cell"
        span = layout.last - layout.first
        if span >= chunk_map.total:
            return f"whole device, {grain}"
        start, end = layout.first * self.chunk_size, min(layout.last * self.chunk_size, self.device_bytes)
        return (f"zoom ×{round(chunk_map.total / span):,}: {format_range(start, end)} "
                f"of {format_size(self.device_bytes)}, {grain}")

    def set_position(self, chunk: int | None) -> None:
        """Mark the chunk the scan has come to (None: no mark), repainting the lines involved."""
        if chunk == self._position:
            return
        lines = {self._line_of(c) for c in (self._position, chunk)}
        self._position = chunk
        for line in lines - {None}:
            self.refresh_lines(line)

    @property
    def position(self) -> int | None:
        """The chunk marked as where the scan is, if any."""
        return self._position

    def _line_of(self, chunk: int | None) -> int | None:
        """The terminal line showing `chunk`, if it is in the window."""
        layout = self._layout
        if chunk is None or not layout.used or not layout.first <= chunk < layout.last:
            return None
        return layout.cell_of(chunk) // (2 * layout.width)

    def _in_line(self, chunk: int | None, first_cell: int) -> int:
        """Where `chunk` is in the line starting at `first_cell` (-1: not in it)."""
        layout = self._layout
        if chunk is None or not layout.used or not layout.first <= chunk < layout.last:
            return -1
        at = layout.cell_of(chunk) - first_cell
        return at if 0 <= at < 2 * layout.width else -1

    def state_color(self, state: int) -> Color:
        """The colour of a cell in `state` (from the component classes), e.g. for a legend."""
        return self._state_colors()[state]

    # -- actions ---------------------------------------------------------------------------

    def action_zoom_in(self) -> None:
        """Zoom in 2x around the cursor."""
        self._zoom_around(self._zoom + 1, self.cursor_cell, self._cursor, centre=False)

    def action_zoom_out(self) -> None:
        """Zoom out 2x around the cursor."""
        self._zoom_around(self._zoom - 1, self.cursor_cell, self._cursor, centre=False)

    def action_zoom_reset(self) -> None:
        """Show the whole device."""
        self._zoom_around(0, self.cursor_cell, self._cursor, centre=False)

    def zoom_to(self, first: int, count: int) -> None:
        """Zoom in as far as chunks `[first, first + count)` still fit, with the cursor on `first`.

        It zooms no deeper than one chunk per cell, where every chunk of the region shows on
        its own: a device with fewer chunks than cells shows whole (zoom 0).

        Args:
            first: The first chunk of the region (e.g. a run of changes).
            count: How many chunks it spans.
        """
        layout, chunk_map = self._layout, self._chunk_map
        if chunk_map is None or not layout.cells or not 0 <= first < chunk_map.total:
            return
        total, cells = chunk_map.total, len(layout.cells)
        zoom = 0
        # Deepest level whose window still holds the region with a quarter of context around it.
        while (
            cell_scale(total, cells, zoom).per_cell > 1
            and cell_scale(total, cells, zoom + 1).span >= count + count // 2
        ):
            zoom += 1
        self._zoom = zoom
        self._cursor = first
        self._first = first - max(0, (cell_scale(total, cells, zoom).span - count) // 4)
        self._rebuild()
        if self._layout.used:
            self._move_cursor_to(self._layout.cell_of(first))

    def action_move_cursor(self, columns: int, rows: int) -> None:
        """Move the cursor by cells; past the edge of a zoomed window, pan it by a cell row.

        A move that would stay within the cursor's chunk (one spanning several cells) goes to
        the next (or previous) chunk instead.

        Args:
            columns: Cells to the right (negative: left).
            rows: Cell rows down (negative: up).
        """
        layout, chunk_map = self._layout, self._chunk_map
        if chunk_map is None or not layout.used:
            return
        step = columns + rows * layout.width
        cell, group = self.cursor_cell + step, layout.group(self.cursor_cell)
        if step and cell in group:
            cell = group.stop if step > 0 else group.start - 1
        target = layout.chunk_at(cell)
        if target < 0 and layout.first > 0:
            target = 0
        if not 0 <= target < chunk_map.total:
            return
        if layout.first <= target < layout.last:
            self._move_cursor_to(layout.cell_of(target))
            return
        # Pan by about a cell row (whole rows but when a chunk spans cells of two rows), so
        # that the picture scrolls instead of re-binning.
        self._cursor = target
        row = layout.row_chunks
        if target >= layout.last:
            self._first = layout.first + max(row, target + 1 - layout.last)
        else:
            self._first = layout.first - max(row, layout.first - target)
        self._rebuild()

    # -- events ----------------------------------------------------------------------------

    def on_mount(self) -> None:
        """Lay out the map and start polling it."""
        self._rebuild()
        self._start_polling()

    def on_resize(self, event: events.Resize) -> None:
        """Re-lay out the cells: chunks per cell follow the size."""
        self._rebuild(follow_cursor=True)

    def notify_style_update(self) -> None:
        """Forget colours and strips: the theme or the CSS changed."""
        super().notify_style_update()
        self._painter = None
        self._dim_painter = None
        self._strip_cache.clear()

    def on_click(self, event: events.Click) -> None:
        """Move the cursor to the clicked cell."""
        cell = self._cell_at(event)
        if cell is None:
            return
        layout = self._layout
        on_cursor = layout.chunks(cell) == layout.chunks(self.cursor_cell)
        if on_cursor and event.pointer_y == int(event.pointer_y):
            # No sub-character mouse position: a second click flips to the bottom half.
            below = cell + layout.width
            cell = below if below < layout.used else cell
        self._move_cursor_to(cell)

    def on_mouse_move(self, event: events.MouseMove) -> None:
        """Describe the cell under the mouse when it changes."""
        cell = self._cell_at(event)
        if cell != self._hover:
            self._hover = cell
            if cell is not None:
                self._post_highlight(cell, is_cursor=False)

    def on_leave(self, event: events.Leave) -> None:
        """Go back to describing the cursor cell."""
        self._hover = None
        if self._layout.used:
            self._post_highlight(self.cursor_cell, is_cursor=True)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        """Zoom in around the mouse (the map always fits, so there is nothing to scroll)."""
        event.prevent_default()
        event.stop()
        self._zoom_at_mouse(event, +1)

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        """Zoom out around the mouse."""
        event.prevent_default()
        event.stop()
        self._zoom_at_mouse(event, -1)

    # -- rendering -------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        """Render one terminal line (two cell rows), from the strip cache when possible."""
        layout = self._layout
        line = y + self.scroll_offset.y
        if line >= len(self._line_stamps) or not layout.width:
            return Strip.blank(self.size.width, self.rich_style)
        cursor = self.cursor_cell - 2 * line * layout.width if layout.used else -1
        if not 0 <= cursor < 2 * layout.width:
            cursor = -1
        first = 2 * line * layout.width
        position = self._in_line(self._position, first)
        key = (line, self._line_stamps[line], layout.width, layout.first, layout.last,
               layout.per_cell, layout.cells_per_chunk, cursor, position)  # fmt: skip
        strip = self._strip_cache.get(key)
        if strip is None:
            # Partition marks only change with a rebuild, which restamps.
            marks = {c - first: m for c, m in self._marks.items() if first <= c < first + 2 * layout.width}
            if position >= 0:
                marks[position] = POSITION_MARK
            strip = Strip(self._paint(layout, line, cursor, marks), layout.width)
            self._strip_cache.set(key, strip)
        return strip

    def _paint(self, layout: CellLayout, line: int, cursor: int, marks: dict[int, str]) -> list:
        """One line's segments: as usual, or, with a spotlight, dimmed but for the cells in it
        (which are painted per column, without the partitions' marks)."""
        marked = self._spotlit
        if marked is None:
            return self._get_painter().paint(layout, line, cursor, marks)
        self._get_painter()  # builds the dimmed painter and the palettes too
        row = 2 * line * layout.width
        if b"\1" not in marked[row : row + 2 * layout.width]:
            assert self._dim_painter is not None
            return self._dim_painter.paint(layout, line, cursor, marks)
        assert self._palettes is not None
        return paint_marked(layout, line, cursor, marked, self._palettes)

    def _state_colors(self) -> list[Color]:
        """Colours by cell state value; EMPTY is the widget background."""
        background = Color.from_rich_color(self.rich_style.bgcolor)
        colors = [background] * (EMPTY + 1)
        for state in State:
            style = self.get_component_rich_style(f"block-map--{STATE_NAMES[state]}")
            color = style.bgcolor or style.color
            colors[state] = background if color is None else Color.from_rich_color(color)
        return colors

    def _get_painter(self) -> LinePainter:
        """The painter in the current colours (rebuilt after a style change)."""
        if self._painter is None:
            colors = self._state_colors()
            cursor = self.get_component_rich_style("block-map--cursor")
            tint_color = cursor.bgcolor or cursor.color
            tint = colors[EMPTY] if tint_color is None else Color.from_rich_color(tint_color)
            mark = self.get_component_rich_style("block-map--mark").color
            cursor_colors = [color.blend(tint, _CURSOR_BLEND) for color in colors]
            dim = [color.blend(colors[EMPTY], DIM) for color in colors]
            dim_cursor = [color.blend(tint, _CURSOR_BLEND) for color in dim]
            rich = [[color.rich_color for color in palette] for palette in (colors, cursor_colors, dim, dim_cursor)]
            self._painter = LinePainter(rich[0], rich[1], mark)
            self._dim_painter = LinePainter(rich[2], rich[3], mark)
            self._palettes = tuple(shade_palette(palette) for palette in rich)  # by cell value
        return self._painter

    # -- internals -------------------------------------------------------------------------

    def _rebuild(self, follow_cursor: bool = False) -> None:
        """Recompute the layout and every cell state, then repaint everything.

        Args:
            follow_cursor: If the cursor is outside a zoomed window (after a resize), centre the
                window on it; otherwise (zooming at the mouse) the cursor moves into the window.
        """
        chunk_map = self._chunk_map
        size = self.scrollable_content_region.size
        layout = CellLayout.empty()
        if chunk_map is not None:
            # Everything is drawn from the states read below: the changes so far are moot.
            self._seen_generation = chunk_map.generation
            chunk_map.take_dirty()
        if chunk_map is not None and size.width and size.height:
            args = (chunk_map.states, chunk_map.total, size.width, 2 * size.height, self._zoom)
            layout = CellLayout.build(*args, self._first)
            if follow_cursor and self._zoom and not layout.first <= self._cursor < layout.last:
                layout = CellLayout.build(*args, self._cursor - (layout.last - layout.first) // 2)
        self._layout = layout
        self._marks = self._partition_marks(layout)
        self._spotlit = mark_cells(layout, self._spotlight) if self._spotlight else None
        self._first = layout.first
        if layout.used and self._cursor < layout.first:
            self._cursor = layout.first
        elif layout.used and self._cursor >= layout.last:
            self._cursor = layout.chunks(layout.used - 1)[0]
        self.border_subtitle = self.describe_window()
        self._stamp += 1
        self._line_stamps = [self._stamp] * size.height
        self._strip_cache.clear()  # every old key is stale now; free the memory
        self.refresh()
        if layout.used:
            self._post_highlight(self.cursor_cell, is_cursor=True)

    def _partition_marks(self, layout: CellLayout) -> dict[int, str]:
        """The cell where each partition in the window begins, with its number (1-9, then a-z,
        then +), and the cell where it ends, with `PARTITION_END`: one character each, so that
        a mark never spills over the next cell. Cells between an end and the next number are
        unpartitioned. Where an end and a start share a cell, the number wins."""
        if self.disk_layout is None or not layout.used:
            return {}
        starts: dict[int, str] = {}
        ends: dict[int, str] = {}
        for part in self.disk_layout.partitions:
            if part.is_extended:
                continue  # its logical partitions are marked instead
            first, last = part.start // self.chunk_size, (part.end - 1) // self.chunk_size
            if layout.first <= first < layout.last:
                n = part.number
                starts.setdefault(layout.cell_of(first), str(n) if n < 10 else chr(87 + n) if n < 36 else "+")
            if layout.first <= last < layout.last:  # the last cell of a chunk spanning several
                ends[layout.cell_of(last) + layout.cells_per_chunk - 1] = PARTITION_END
        return ends | starts

    def _refresh_map_lines(self, lines: set[int]) -> None:
        """Give `lines` a new stamp (so their cached strips are not reused) and repaint them."""
        self._stamp += 1
        for line in sorted(lines):
            if line < len(self._line_stamps):
                self._line_stamps[line] = self._stamp
                self.refresh_lines(line)

    def _move_cursor_to(self, cell: int) -> None:
        """Put the cursor on the chunks of a cell of the window; repaint the two lines involved."""
        line_cells = 2 * self._layout.width
        old_line = self.cursor_cell // line_cells
        self._cursor = self._layout.chunks(cell)[0]
        # The cursor position is part of the strip key: no restamp needed, only a repaint.
        self.refresh_lines(old_line)
        self.refresh_lines(self.cursor_cell // line_cells)
        self._post_highlight(self.cursor_cell, is_cursor=True)

    def _zoom_around(self, zoom: int, cell: int, anchor: int, centre: bool) -> None:
        """Change the zoom level, keeping chunk `anchor` in screen cell `cell`.

        Args:
            zoom: The new level (clamped at 0).
            cell: The screen cell to keep the anchor in.
            anchor: The chunk to keep there.
            centre: Put the anchor mid-cell (mouse) rather than at the cell start (cursor).
        """
        layout, chunk_map = self._layout, self._chunk_map
        zoom = max(0, zoom)
        if chunk_map is None or not layout.used or zoom == self._zoom:
            return
        scale = cell_scale(chunk_map.total, len(layout.cells), zoom)
        if zoom > self._zoom and scale == layout.scale:
            return  # one chunk fills the map already
        self._zoom = zoom
        self._first = anchor - scale.offset(cell) - (scale.per_cell // 2 if centre else 0)
        self._rebuild()

    def _zoom_at_mouse(self, event: events.MouseEvent, direction: int) -> None:
        """Zoom one level in (`+1`) or out (`-1`), keeping the chunk under the mouse in place."""
        cell = self._cell_at(event)
        if cell is not None:
            start, end = self._layout.chunks(cell)
            self._zoom_around(self._zoom + direction, cell, (start + end) // 2, centre=True)

    def _cell_at(self, event: events.MouseEvent) -> int | None:
        """The cell under the mouse, or None off the map (pixel mouse modes pick the half)."""
        offset = event.get_content_offset(self)
        layout = self._layout
        if offset is None or not layout.used or not 0 <= offset.x < layout.width:
            return None
        half = 1 if event.pointer_y % 1 >= 0.5 else 0
        cell = (2 * offset.y + half) * layout.width + offset.x
        return cell if cell < layout.used else None

    def _post_highlight(self, cell: int, is_cursor: bool) -> None:
        """Post `CellHighlighted` for a cell (nothing for a cell showing no chunk)."""
        facts = self.cell_facts(cell)
        if facts is None:
            return
        self._highlighted = (cell, is_cursor)
        description = self._describe(facts[2], facts[3], facts[4])
        self.post_message(self.CellHighlighted(*facts, self, cell, description, is_cursor))

    def _start_polling(self) -> None:
        """Start the map's own poll timer, once, when there is a map to poll."""
        if self._timer is None and self.poll_interval and self._chunk_map is not None:
            self._timer = self.set_interval(self.poll_interval, self.poll)
