"""Provides ActionsProvider: the command palette's entries for what the current screen can do.

The entries are the screen's own key bindings (dry run, sync, export, zoom, pause, cancel,
help, theme...), as enabled at the moment, so the palette never offers what a key would not
do, and a new binding is in the palette without being listed twice.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.dom import DOMNode

from blocksync_tui.tui.widgets.block_map import BlockMap

_LEFT_OUT = {"quit", "command_palette", "move_cursor"}
"""Actions the palette offers already (Textual's own entries) or that make no sense from it
(a cursor moved one cell)."""


class ActionsProvider(Provider):
    """The enabled bindings of the screen under the palette, by description."""

    def _commands(self) -> list[tuple[str, str, Callable[[], object]]]:
        found: dict[str, tuple[str, str, Callable[[], object]]] = {}

        def add(binding: Binding, node: DOMNode) -> None:
            if not binding.id or binding.action.split("(")[0] in _LEFT_OUT:
                return
            keys = binding.key_display or self.app.get_key_display(binding)
            run = partial(self.app.run_action, binding.action, node)
            found.setdefault(binding.description, (
                binding.description, f"{binding.tooltip or binding.description} ({keys})", run))

        for active in self.screen.active_bindings.values():
            if active.enabled:
                add(active.binding, active.node)
        # The map's keys (zoom) are offered while another widget has the focus too.
        for block_map in self.screen.query(BlockMap):
            for binding in block_map.BINDINGS:
                if isinstance(binding, Binding):
                    add(binding, block_map)
        return sorted(found.values())

    async def discover(self) -> Hits:
        """Every entry, when nothing is typed yet."""
        for name, help_text, run in self._commands():
            yield DiscoveryHit(name, run, help=help_text)

    async def search(self, query: str) -> Hits:
        """The entries whose name matches what is typed."""
        matcher = self.matcher(query)
        for name, help_text, run in self._commands():
            if (score := matcher.match(name)) > 0:
                yield Hit(score, matcher.highlight(name), run, help=help_text)
