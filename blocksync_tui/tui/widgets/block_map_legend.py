"""Provides BlockMapLegend: each chunk state's colour, name and count, beside a BlockMap."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

from blocksync_tui.engine.chunkmap import STATE_NAMES, State
from blocksync_tui.tui.widgets.block_map import BlockMap

LEGEND_ORDER: tuple[State, ...] = (
    State.PENDING,
    State.HOLE,
    State.ZERO,
    State.SAME,
    State.DIFFERS,
    State.WRITTEN,
    State.UPDATED,
    State.ERROR,
)
"""Reading order: from not yet known, through in sync, to what needed (or needs) attention."""


class BlockMapLegend(Widget):
    """A swatch, name and chunk count per state, in the colours of a given BlockMap.

    It follows the map's `counts_changed` signal, so it repaints exactly when the map's poll
    saw a change, and takes its colours from the map, so that a theme styles both at once.
    """

    DEFAULT_CSS = """
    BlockMapLegend {
        height: auto;
        padding: 0 1;
    }
    """
    """One line when there is room; items wrap as whole words when there is not."""

    def __init__(
        self,
        block_map: BlockMap | str,
        *,
        follow: bool = True,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        """Create a legend.

        Args:
            block_map: The map (or a selector for it, resolved on mount in this screen).
            follow: Take the map's counts after each of its polls; False leaves it to the
                owner (`update_counts`), to show them in step with other figures.
            name: The name of the widget.
            id: The ID of the widget in the DOM.
            classes: The CSS classes of the widget.
        """
        super().__init__(name=name, id=id, classes=classes)
        self._map_or_selector = block_map
        self._follow = follow
        self._block_map: BlockMap | None = block_map if isinstance(block_map, BlockMap) else None
        self.counts: dict[State, int] = {}
        """The counts shown."""
        self._length = 0

    @property
    def block_map(self) -> BlockMap | None:
        """The map this legend describes (None before mount when given a selector)."""
        return self._block_map

    def on_mount(self) -> None:
        """Find the map, take its current counts and follow its changes."""
        if self._block_map is None:
            assert isinstance(self._map_or_selector, str)
            self._block_map = self.screen.query_one(self._map_or_selector, BlockMap)
        chunk_map = self._block_map.chunk_map
        if chunk_map is not None:
            self.counts = chunk_map.counts()
        if self._follow:
            self._block_map.counts_changed.subscribe(self, self.update_counts)

    def update_counts(self, counts: dict[State, int]) -> None:
        """Show new counts (the map's `counts_changed` callback).

        Args:
            counts: Chunks per state.
        """
        if counts == self.counts:
            return
        self.counts = counts
        # A relayout only when the line count may change: counting up at 15 Hz must not
        # relayout the screen each time.
        length = sum(len(item) for item in self._items())
        self.refresh(layout=length != self._length)
        self._length = length

    def _items(self) -> list[Text]:
        """One swatch, name and count per state: each item is kept whole on one line."""
        items = []
        for state in LEGEND_ORDER:
            item = Text()
            if self._block_map is not None:
                item.append("██", Style(color=self._block_map.state_color(state).rich_color))
            item.append(f" {STATE_NAMES[state]} {self.counts.get(state, 0):,}")
            items.append(item)
        return items

    def _lines(self, width: int) -> list[Text]:
        """The items packed into lines of `width` cells, two spaces apart, never split.

        Rich would wrap at any space (its word splitter takes a no-break space for one too), so
        a name could end a line and its count start the next.
        """
        lines: list[Text] = []
        for item in self._items():
            if lines and lines[-1].cell_len + 2 + item.cell_len <= width:
                lines[-1].append("  ")
                lines[-1].append_text(item)
            else:
                lines.append(item)
        return lines

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        """As many lines as the items need at this width."""
        return len(self._lines(width))

    def render(self) -> Text:
        """The items, whole, on as many lines as the width needs."""
        width = self.content_size.width or 1 << 16
        return Text("\n").join(self._lines(width))
