"""Provides the block map's cell arithmetic and painting: chunks -> cell states -> segments.

Pure code over the engine's state bytes (Rich, but no Textual), so that it is unit tested and
benchmarked on its own. Every loop here runs per *cell* or per *run of equal cells* (a few
thousand per frame), never per *chunk* (millions): the per-chunk work is done in C by
`bytes.translate`, `in`, slicing, `re` and big-int operations.

A map has two regimes (see `Scale`): with more chunks than cells, each cell covers several
chunks; with fewer (a small device, or zoomed in far), each chunk spans several consecutive
cells, so that the device still fills the map. `CellLayout` hides which one applies: go
through its methods (`chunks`, `cell_of`, `group`, `refresh`...) rather than dividing by
`per_cell`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from mmap import mmap
from typing import NamedTuple

from rich.color import Color, blend_rgb
from rich.segment import Segment
from rich.style import Style

from blocksync_tui.engine.chunkmap import STATE_NAMES, State

PRIORITY: tuple[State, ...] = (
    State.ERROR,
    State.UPDATED,
    State.DIFFERS,
    State.WRITTEN,
    State.PENDING,
    State.SAME,
    State.ZERO,
    State.HOLE,
)
"""States from the most to the least significant: a cell shows the first one it contains.

One error or one differing chunk among a thousand identical ones is what a user must see, so
the rare, actionable states outrank the bulk ones; PENDING outranks SAME/ZERO/HOLE so that a cell
only looks settled once every chunk in it is.
"""

EMPTY = 8
"""Pseudo-state of a cell past the end of the shown range (not a `State`: drawn as background)."""

_PRIORITY_INTS = tuple(int(state) for state in PRIORITY)

# Each state byte -> a one-bit flag; OR-ing flags over a cell gives the set of states in it.
_ONE_HOT = bytes((1 << value) if value < EMPTY else 0 for value in range(256))


def _mask_table() -> bytes:
    """Map every set-of-states bitmask to the most significant state in it (EMPTY for none)."""
    table = bytearray([EMPTY]) * 256
    for mask in range(256):
        for value in _PRIORITY_INTS:
            if mask & (1 << value):
                table[mask] = value
                break
    return bytes(table)


_MASK_TO_STATE = _mask_table()

_OR_MAX_PER_CELL = 40
"""Up to this many chunks per cell, the strided OR beats one `in` scan per cell (measured)."""


class Scale(NamedTuple):
    """How the chunks of a window map to cells: one of the two ratios is always 1."""

    per_cell: int
    """Chunks per cell (the last cell of the window may cover fewer)."""
    cells_per_chunk: int
    """Consecutive cells each chunk spans (a chunk may wrap onto the next cell row)."""
    span: int
    """Chunks in the window (the whole device at zoom 0)."""

    def offset(self, cell: int) -> int:
        """Chunks before the first chunk of `cell` in the window (for any cell, even off it)."""
        return cell // self.cells_per_chunk * self.per_cell


def cell_scale(total: int, cells: int, zoom: int = 0) -> Scale:
    """The scale at which a window of `total` chunks fits `cells` cells.

    Zoom level 0 shows the whole device, and each level halves the window: first by halving
    the chunks per cell, then, once a cell is one chunk, by about doubling the cells per chunk,
    down to a window of one chunk filling every cell. Cells per chunk are the most that fit,
    so a device with fewer chunks than cells still fills the map.

    Args:
        total: Chunks of the whole device.
        cells: Cells available on screen (width x 2 x height).
        zoom: Zoom level.

    Returns:
        The scale.
    """
    if total <= 0 or cells <= 0:
        return Scale(1, 1, 0)
    room = cells << max(0, zoom)  # the cells the whole device gets at this zoom
    if room < total:
        per_cell = -(-total // room)
        return Scale(per_cell, 1, min(total, per_cell * cells))
    span = min(total, cells // min(cells, room // total))
    return Scale(1, cells // span, span)


def chunks_per_cell(total: int, cells: int, zoom: int = 0) -> int:
    """How many chunks each cell covers so that `total` chunks fit in `cells` cells.

    Args:
        total: Chunks of the whole device.
        cells: Cells available on screen (width x 2 x height).
        zoom: Zoom level; each level halves the chunks per cell.

    Returns:
        The chunks per cell, at least 1 (see `cell_scale` for the cells per chunk). Every cell
        covers this many, except the last, which covers what is left.
    """
    return cell_scale(total, cells, zoom).per_cell


def cell_state(data: bytes | bytearray) -> int:
    """The state a cell shows: the most significant state present in its chunk states.

    Args:
        data: The state bytes of the chunks the cell covers.

    Returns:
        A `State` value, or `EMPTY` for no chunks.
    """
    for value in _PRIORITY_INTS:
        if value in data:  # memchr in C: ~free even for thousands of chunks
            return value
    return EMPTY


SHARE_TINT = (0.0, 0.45, 0.7, 0.88)
"""How far a mixed cell's colour goes from its base state's towards its significant state's,
by share level (1: under a third of its chunks, 2: under two thirds, 3: more). Even one
differing chunk among a thousand tints its cell by 45%: it stays visible, but 10% differing
no longer looks like all of it."""


def cell_value(data: bytes | bytearray) -> int:
    """What a cell shows, shaded by share (as ddrescueview does).

    A cell whose chunks are all in one state shows that `State` (a value below 8). A mixed
    cell is `level << 6 | base << 3 | significant`: its most significant state (see
    `PRIORITY`), the most common of its other states, and the significant state's share level
    (see `SHARE_TINT`); `value & 7` is always the significant state.

    Args:
        data: The state bytes of the chunks the cell covers.

    Returns:
        The value, or `EMPTY` for no chunks.
    """
    return _value_of(data, _ALL_STATES)


Candidates = tuple[tuple[int, tuple[int, ...]], ...]
"""States a cell may hold, most significant first, each with the less significant ones."""


def _candidates(states: Sequence[int]) -> Candidates:
    """`states` (most significant first) as candidates, made once per rebuild, not per cell."""
    return tuple((state, tuple(states[at + 1 :])) for at, state in enumerate(states))


_ALL_STATES = _candidates(_PRIORITY_INTS)


def _value_of(data: bytes | bytearray, candidates: Candidates) -> int:
    """`cell_value` of `data`, whose states are all among `candidates`.

    It runs once per mixed cell, thousands of times a rebuild: each state is looked for with
    `in` (a memchr, stopping at the first hit) before it is counted, and the counting stops
    once the chunks left uncounted could not outnumber the most common other state.
    """
    for significant, others in candidates:
        if significant in data:
            break
    else:
        return EMPTY
    size, count = len(data), data.count(significant)
    if count == size:
        return significant
    base, most, left = EMPTY, 0, size - count
    for value in others:
        if value in data:
            n = data.count(value)
            if n > most:  # the first of equal counts wins, as in priority order
                base, most = value, n
            left -= n
            if left <= most:
                break
    if base == EMPTY:  # the rest are no states (not a map's bytes): as if one state
        return significant
    return (1 + 3 * count // size) << 6 | base << 3 | significant


_MIXED_MASK = bytes(1 if bin(mask).count("1") > 1 else 0 for mask in range(256))
_NONZERO = re.compile(rb"[^\x00]")
_MASK_CANDIDATES = [_candidates([v for v in _PRIORITY_INTS if mask & (1 << v)]) for mask in range(256)]
"""The candidates of every set-of-states bitmask: exactly the states it holds."""


def _shade(data: bytes, per_cell: int, states: bytearray, masks: bytes, cells: Iterable[int]) -> bytearray:
    """Replace the states of the mixed `cells` by their shaded values (see `cell_value`); their
    masks say which states each holds."""
    for cell in cells:
        chunk_states = data[cell * per_cell : (cell + 1) * per_cell]
        states[cell] = _value_of(chunk_states, _MASK_CANDIDATES[masks[cell]])
    return states


_SUM_MAX_PER_CELL = 80
"""Up to this many chunks per cell, summing strided strips beats one count per cell (measured:
the strips cost about 2 ms per million chunks whatever the cells, a count 0.13 µs a cell)."""


def _two_states(data: bytes, per_cell: int, count: int, significant: int, base: int) -> bytearray:
    """Shaded cells of a range that holds two states alone (the usual map: `same` with some
    `differs`, or `pending` after the scan): a cell's value follows from how many of its
    chunks are in the significant state, read from a table.

    The counts come from one C count a cell, without a slice; or, for small cells, from the
    strided sum of 0/1 flags, byte lanes that never carry (a count is at most `per_cell`)."""
    mixed = base << 3 | significant
    values = [(1 + 3 * n // per_cell) << 6 | mixed for n in range(per_cell + 1)]
    values[0], values[per_cell] = base, significant
    whole = len(data) // per_cell
    if per_cell <= _SUM_MAX_PER_CELL:
        flags = data[: whole * per_cell].translate(_FLAGS[significant])
        total = 0
        for k in range(per_cell):
            total += int.from_bytes(flags[k::per_cell], "little")
        out = bytearray(total.to_bytes(whole, "little").translate(bytes(values + [0] * (255 - per_cell))))
        out += bytes(count - whole)
    else:
        out = bytearray(count)
        for cell in range(whole):
            start = cell * per_cell
            out[cell] = values[data.count(significant, start, start + per_cell)]
    if whole < count:  # a shorter last cell
        out[whole] = _value_of(data[whole * per_cell :], _candidates((significant, base)))
    return out


_FLAGS = [bytes(1 if value == state else 0 for value in range(256)) for state in range(EMPTY)]
"""By state: the table that turns state bytes into 1 for that state, 0 for any other."""


def _cell_states_or(data: bytes, per_cell: int, count: int, shaded: bool = False) -> bytearray:
    """Aggregate small cells: OR the one-hot flags of the k-th chunk of every cell at once.

    `flags[k::per_cell]` picks the k-th chunk of every cell; OR-ing those strips as big
    integers merges them byte by byte in C, so the Python loop runs `per_cell` times.
    """
    flags = data.translate(_ONE_HOT) + bytes(count * per_cell - len(data))
    merged = 0
    for k in range(per_cell):
        merged |= int.from_bytes(flags[k::per_cell], "little")
    masks = merged.to_bytes(count, "little")
    states = bytearray(masks.translate(_MASK_TO_STATE))
    if not shaded:
        return states
    mixed = (match.start() for match in _NONZERO.finditer(masks.translate(_MIXED_MASK)))
    return _shade(data, per_cell, states, masks, mixed)


def _cell_states_scan(
    data: bytes, per_cell: int, count: int, shaded: bool = False, present: Sequence[int] | None = None
) -> bytearray:
    """Aggregate large cells: per cell, `in` tests in priority order (each a C memchr).

    `present` are the states in `data`, if known (most significant first)."""
    # States absent from the whole range need no per-cell test; and once the others are ruled
    # out, a cell must hold the least significant state that is present.
    if present is None:
        present = [value for value in _PRIORITY_INTS if value in data]
    if not present:
        return bytearray([EMPTY]) * count
    out = bytearray(count)
    if shaded:
        # A cell of one state is told by one memcmp with a run of that state; only a mixed
        # one counts (`_value_of`).
        whole = {value: bytes((value,)) * per_cell for value in present}
        candidates = _candidates(present)
        for cell, start in enumerate(range(0, len(data), per_cell)):
            chunk_states = data[start : start + per_cell]
            first = chunk_states[0]
            if chunk_states == whole.get(first):
                out[cell] = first
            else:
                out[cell] = _value_of(chunk_states, candidates)
        return out
    tested, fallback = present[:-1], present[-1]
    for cell, start in enumerate(range(0, len(data), per_cell)):
        chunk_states = data[start : start + per_cell]
        for value in tested:
            if value in chunk_states:
                out[cell] = value
                break
        else:
            out[cell] = fallback
    return out


def cell_states(data: bytes | bytearray, per_cell: int, shaded: bool = False) -> bytearray:
    """The state of every cell over consecutive chunk states, `per_cell` chunks each.

    Args:
        data: State bytes of the shown range of chunks.
        per_cell: Chunks per cell (the last cell may be partial).
        shaded: Give mixed cells their shaded value (see `cell_value`), not just their most
            significant state.

    Returns:
        One byte per cell: `ceil(len(data) / per_cell)` bytes.
    """
    data = bytes(data)
    count = -(-len(data) // per_cell)
    if per_cell == 1:
        return bytearray(data)
    present = None
    if shaded:
        present = [value for value in _PRIORITY_INTS if value in data]
        if len(present) == 2:
            return _two_states(data, per_cell, count, *present)
    if per_cell <= _OR_MAX_PER_CELL:
        return _cell_states_or(data, per_cell, count, shaded)
    return _cell_states_scan(data, per_cell, count, shaded, present)


def _stretch(states: bytearray, times: int) -> bytearray:
    """Repeat each state `times` times: the cells of chunks that span several cells each."""
    if times == 1:
        return states
    out = bytearray(len(states) * times)
    if times <= len(states):
        for k in range(times):  # the k-th cell of every chunk at once, in C
            out[k::times] = states
    else:
        for index, value in enumerate(states):
            out[index * times : (index + 1) * times] = bytes((value,)) * times
    return out


@dataclass
class CellLayout:
    """Where each chunk of the shown range lands on screen, and the state of every cell.

    Cells run left to right, then top to bottom; a terminal line holds two cell rows. A *group*
    is the cells showing the same chunks: one cell of `per_cell` chunks, or the
    `cells_per_chunk` cells of one chunk.
    """

    width: int
    """Cells per cell row (terminal columns)."""
    rows: int
    """Cell rows (twice the terminal lines)."""
    first: int
    """First chunk shown."""
    last: int
    """One past the last chunk shown."""
    per_cell: int
    """Chunks per cell (1 when a chunk spans several cells)."""
    cells_per_chunk: int
    """Cells per chunk (1 when a cell covers several chunks)."""
    cells: bytearray
    """One state byte per cell (`width * rows` of them), EMPTY past the last chunk."""

    @classmethod
    def empty(cls) -> CellLayout:
        """A layout with nothing to show (no map, or no room)."""
        return cls(0, 0, 0, 0, 1, 1, bytearray())

    @classmethod
    def build(
        cls,
        states: bytes | bytearray | mmap,
        total: int,
        width: int,
        rows: int,
        zoom: int = 0,
        first: int = 0,
    ) -> CellLayout:
        """Lay out a window of `total` chunks on `width` x `rows` cells and aggregate their states.

        Args:
            states: One state byte per chunk of the device.
            total: Chunks of the device.
            width: Cells per row.
            rows: Cell rows.
            zoom: Zoom level (0 shows the whole device).
            first: Wanted first chunk of the window; clamped so the window stays on the device.

        Returns:
            The layout.
        """
        if total <= 0 or width <= 0 or rows <= 0:
            return cls.empty()
        scale = cell_scale(total, width * rows, zoom)
        first = min(max(0, first), total - scale.span)
        cells = bytearray([EMPTY]) * (width * rows)
        shown = cell_states(states[first : first + scale.span], scale.per_cell, shaded=True)
        shown = _stretch(shown, scale.cells_per_chunk)
        cells[: len(shown)] = shown
        last, per_cell, cells_per_chunk = first + scale.span, scale.per_cell, scale.cells_per_chunk
        return cls(width, rows, first, last, per_cell, cells_per_chunk, cells)

    @property
    def scale(self) -> Scale:
        """The scale of the layout."""
        return Scale(self.per_cell, self.cells_per_chunk, self.last - self.first)

    @property
    def used(self) -> int:
        """How many cells hold chunks (the rest, at the end, are EMPTY)."""
        return -(-(self.last - self.first) // self.per_cell) * self.cells_per_chunk

    @property
    def row_chunks(self) -> int:
        """Chunks in about one cell row (at least one chunk): how far the window pans."""
        return max(1, self.width // self.cells_per_chunk) * self.per_cell

    def chunk_at(self, cell: int) -> int:
        """The first chunk of a cell; off the window (even negative), where it would be."""
        return self.first + cell // self.cells_per_chunk * self.per_cell  # see Scale.offset

    def chunks(self, cell: int) -> tuple[int, int]:
        """The chunk range `[first, last)` of one cell."""
        start = self.chunk_at(cell)
        return start, min(start + self.per_cell, self.last)

    def cell_of(self, chunk: int) -> int:
        """The (first) cell that shows `chunk` (which must be in the window)."""
        return (chunk - self.first) // self.per_cell * self.cells_per_chunk

    def groups_of(self, chunks: Iterable[int]) -> set[int]:
        """The first cell of every group showing one of `chunks` (those in the window)."""
        first, last = self.first, self.last
        per_cell, cells_per_chunk = self.per_cell, self.cells_per_chunk
        return {
            (chunk - first) // per_cell * cells_per_chunk
            for chunk in chunks
            if first <= chunk < last
        }

    def group(self, cell: int) -> range:
        """The cells showing the same chunks as `cell` (just `cell`, unless chunks span cells)."""
        start = cell - cell % self.cells_per_chunk
        return range(start, start + self.cells_per_chunk)

    def refresh(
        self, states: bytes | bytearray | mmap, chunks: Iterable[int]
    ) -> tuple[set[int], set[int]]:
        """Recompute the cells showing `chunks` (changed chunks of the device) from `states`.

        Args:
            states: One state byte per chunk of the device.
            chunks: The changed chunks; those outside the window are ignored.

        Returns:
            The first cell of every group showing a changed chunk, and the terminal lines whose
            cells changed state.
        """
        touched = self.groups_of(chunks)
        first, last, per_cell, size = self.first, self.last, self.per_cell, self.cells_per_chunk
        cells, line_cells, lines = self.cells, 2 * self.width, set()
        for cell in touched:  # `chunks(cell)` and `group(cell)`, inlined: this loop is hot
            start = first + cell // size * per_cell
            value = cell_value(states[start : min(start + per_cell, last)])
            if value == cells[cell]:
                continue
            if size == 1:
                cells[cell] = value
                lines.add(cell // line_cells)
            else:
                cells[cell : cell + size] = bytes((value,)) * size
                lines.update(range(cell // line_cells, (cell + size - 1) // line_cells + 1))
        return touched, lines


UPPER_HALF = "▀"
"""The glyph of a terminal cell showing two map cells: foreground on top, background below."""

_RUNS = re.compile(rb"(..)\1*", re.DOTALL)
"""Runs of equal two-byte column codes (top cell, bottom cell), matched from an even offset."""


def shade_palette(colors: Sequence[Color]) -> list[Color]:
    """The colour of every cell value (see `cell_value`) from the colour of each state."""
    palette = [colors[value] if value < len(colors) else colors[value & 7] for value in range(256)]
    for value in range(64, 256):  # mixed cells (EMPTY, 8, is never part of one)
        base, top = colors[value >> 3 & 7].triplet, colors[value & 7].triplet
        if base is not None and top is not None:
            palette[value] = Color.from_triplet(blend_rgb(base, top, SHARE_TINT[value >> 6]))
    return palette


class LinePainter:
    """Paints terminal lines of a `CellLayout` as Rich segments, in given colours."""

    def __init__(
        self, colors: Sequence[Color], cursor_colors: Sequence[Color], mark_color: Color | None = None
    ) -> None:
        """Prepare the (top, bottom) styles.

        Args:
            colors: Colour by cell state value, including EMPTY (the background).
            cursor_colors: The same colours as tinted for the cursor cell.
            mark_color: The colour of a mark's character (a partition's number or end).
        """
        self._colors = colors = shade_palette(colors)
        self._cursor_colors = shade_palette(cursor_colors)
        self._mark_color = mark_color
        self._segments: dict[int, Segment] = {}
        self._styles: dict[int, tuple[str, Style]] = {}
        """By column code `top << 8 | bottom`, made when first needed."""

    def paint(
        self, layout: CellLayout, line: int, cursor: int = -1, marks: dict[int, str] | None = None
    ) -> list[Segment]:
        """Segments of one terminal line: cell rows `2 * line` and `2 * line + 1`.

        Args:
            layout: The cells.
            line: The terminal line.
            cursor: Where the cursor is in this line's two cell rows (`0 .. 2 * width`), or -1.
            marks: A character to draw on cells of this line (same positions as `cursor`), on
                the marked cell's colour: where a partition begins or ends, where the scan is.
                The other half of that character's cell pair gives way to it.

        Returns:
            Segments covering exactly `layout.width` columns.
        """
        width, cells = layout.width, layout.cells
        top = cells[2 * line * width : (2 * line + 1) * width]
        bottom = cells[(2 * line + 1) * width : (2 * line + 2) * width]
        # Two bytes per column, top then bottom: interleaved by slice assignment, in C.
        codes = bytearray(2 * width)
        codes[0::2], codes[1::2] = top, bottom
        special: dict[int, Segment] = {}
        for at, char in (marks or {}).items():
            column, row = at % width, top if at < width else bottom
            colors = self._cursor_colors if cursor >= 0 and cursor % width == column else self._colors
            special[column] = Segment(char, Style(color=self._mark_color, bgcolor=colors[row[column]], bold=True))
        if 0 <= cursor < 2 * width and cursor % width not in special:
            column = cursor % width
            upper, lower = self._colors[top[column]], self._colors[bottom[column]]
            if cursor < width:
                upper = self._cursor_colors[top[column]]
            else:
                lower = self._cursor_colors[bottom[column]]
            special[column] = Segment(UPPER_HALF, Style(color=upper, bgcolor=lower))
        if not special:
            return self._runs(codes, 0, width)
        segments, start = [], 0
        for column in sorted(special):
            segments += self._runs(codes, start, column)
            segments.append(special[column])
            start = column + 1
        return segments + self._runs(codes, start, width)

    def _style(self, code: int) -> tuple[str, Style]:
        """The text and style of a column code. Equal halves are a space: some terminals
        leave a seam between stacked half blocks of one colour."""
        style = self._styles.get(code)
        if style is None:
            top, bottom = self._colors[code >> 8], self._colors[code & 0xFF]
            style = self._styles[code] = (
                (" ", Style(bgcolor=top)) if top == bottom
                else (UPPER_HALF, Style(color=top, bgcolor=bottom))
            )
        return style

    def _runs(self, codes: bytes | bytearray, start: int, end: int) -> list[Segment]:
        """One segment per run of equal codes in columns `start` to `end`."""
        # Segments are immutable and repeat a lot (same colour, same length): reusing them
        # spares the allocations that otherwise trigger the garbage collector mid-frame.
        cache = self._segments
        if len(cache) > 16384:
            cache.clear()
        segments = []
        for match in _RUNS.finditer(codes, 2 * start, 2 * end):
            at = match.start()
            key = (codes[at] << 8 | codes[at + 1]) << 16 | (match.end() - at) >> 1
            segment = cache.get(key)
            if segment is None:
                text, style = self._style(key >> 16)
                segment = cache[key] = Segment(text * (key & 0xFFFF), style)
            segments.append(segment)
        return segments


def describe_range(start: int, end: int, counts: dict[State, int], device_bytes: int) -> str:
    """One line about a byte range and its chunk states.

    Args:
        start: First byte.
        end: One past the last byte.
        counts: Chunks per state, in the order to show them.
        device_bytes: Size of the device (fixes the width of the hex offsets).

    Returns:
        E.g. `offset 0x00C00000 – 0x00D00000 (12.0 MiB – 13.0 MiB): 3 differs, 1 same`.
    """
    digits = len(f"{device_bytes:X}")
    states = ", ".join(f"{n:,} {STATE_NAMES[state]}" for state, n in counts.items())
    return (
        f"offset 0x{start:0{digits}X} – 0x{end:0{digits}X} ({format_range(start, end)}): {states}"
    )


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def _exponent(size: int) -> int:
    """The power of 1024 of the largest unit not above `size`."""
    exponent = 0
    while exponent < len(_UNITS) - 1 and size >= 1024 ** (exponent + 1):
        exponent += 1
    return exponent


def format_size(size: int, exponent: int | None = None) -> str:
    """Format a byte count with a binary unit and one decimal: `12.0 MiB`.

    Args:
        size: Bytes.
        exponent: Force the unit (a power of 1024); None picks the largest that fits.

    Returns:
        The text.
    """
    exponent = _exponent(size) if exponent is None else exponent
    if exponent == 0:
        return f"{size:,} B"
    return f"{size / 1024**exponent:,.1f} {_UNITS[exponent]}"


def format_range(start: int, end: int) -> str:
    """Format a byte range in one unit fine enough to tell its ends apart: `12.0 MiB – 13.0 MiB`.

    A 1 MiB cell at 1.8 GiB reads `1,817.0 MiB – 1,818.0 MiB`, not `1.8 GiB – 1.8 GiB`.
    """
    exponent = _exponent(max(start, end))
    while exponent and (end - start) * 10 < 1024**exponent:
        exponent -= 1
    return f"{format_size(start, exponent)} – {format_size(end, exponent)}"
