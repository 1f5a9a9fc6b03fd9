"""Provides RunScreen: the live block map of a running compare or sync, with its figures."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static

from blocksync_tui.engine.api import Engine
from blocksync_tui.engine.regions import report_layout
from blocksync_tui.engine.report import Progress, Report
from blocksync_tui.tui.screens.dialogs import YesNoScreen
from blocksync_tui.tui.widgets.block_map import BlockMap
from blocksync_tui.tui.widgets.block_map_legend import BlockMapLegend
from blocksync_tui.tui.widgets.stats import StatsPanel

MAP_HZ = 10
"""How often the map looks for changed chunks and repaints the lines that hold them."""
REFRESH_HZ = 4
"""How often the figures are redrawn (the map polls its chunk states on its own, faster timer).
Redrawing them is what the app's cost to a sync came from: at 10 Hz it slowed a sync by a third."""


class RunScreen(Screen[None]):
    """Shows a run as it happens; this screen only polls the engine, it never waits for it.

    The engine runs in a process of its own (`engine.process.EngineProcess`), which an app thread
    worker waits on; its chunk states are read from shared memory, its figures from `progress()`.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "toggle_pause", "Pause/resume", id="pause",
                tooltip="Stop asking for new work; what is in flight completes"),
        Binding("escape,ctrl+c", "cancel", "Cancel", id="cancel", tooltip="Stop the run"),
    ]

    def __init__(self, engine: Engine, poll: bool = True, on_ready: Callable[[], object] | None = None) -> None:
        """Create the screen.

        Args:
            engine: The engine to watch.
            poll: Poll it on a timer (off only to show a fixed snapshot).
            on_ready: Called once the screen has been drawn (the app starts the engine there).
        """
        super().__init__()
        self._on_ready = on_ready
        self.engine = engine
        """The engine being watched (in its own process, waited on by a thread worker of the app)."""
        self.poll = poll
        """Poll the engine on a timer (off only to show a fixed snapshot)."""
        self.finished = False
        self.after_dialogs: Callable[[], object] | None = None
        """What to do once this screen is on top again (the app sets it when the run ends
        while a dialog is open over it)."""

    def compose(self) -> ComposeResult:
        engine = self.engine
        verb = "Dry run" if engine.options.dry_run else "Sync"
        yield Static(f"{verb}: {engine.source}  →  {engine.destination}", id="run-title", markup=False)
        with Horizontal(id="run-body"):
            with Vertical(id="map-column"):
                yield BlockMap(engine.chunk_map, engine.options.chunk_size, engine.size,
                               poll_interval=1 / MAP_HZ, id="block-map",
                               disk_layout=report_layout(engine.destination_layout, engine.source_layout))
                yield BlockMapLegend("#block-map")
                yield Static("Move the cursor or the mouse over the map to see what a cell holds.",
                             id="cell-info")
            yield StatsPanel(str(engine.source), str(engine.destination), id="stats")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(BlockMap).focus()
        if self.poll:
            self.set_interval(1 / REFRESH_HZ, self.refresh_figures)
            self.refresh_figures()
        if self._on_ready is not None:
            self.call_after_refresh(self._on_ready)
        for warning in self.engine.warnings:
            self.notify(warning, title="Warning", severity="warning", timeout=8, markup=False)

    def refresh_figures(self) -> None:
        """Poll the engine (cheap, thread-safe) and show its figures."""
        self.show_progress(self.engine.progress())

    def show_progress(self, progress: Progress) -> None:
        """Show one snapshot (also used by tests with a fixed snapshot)."""
        self.query_one(StatsPanel).show(progress)

    def finish(self, report: Report) -> None:
        """The run is over: stop offering pause and cancel."""
        self.finished = True

    def on_screen_resume(self) -> None:
        """Back on top: if the run ended meanwhile, move on now."""
        then, self.after_dialogs = self.after_dialogs, None
        if then is not None:
            self.call_later(then)

    @on(BlockMap.CellHighlighted)
    def _cell(self, message: BlockMap.CellHighlighted) -> None:
        self.query_one("#cell-info", Static).update(message.description)

    def action_toggle_pause(self) -> None:
        """Pause or resume the engine."""
        if self.engine.progress().paused:
            self.engine.resume()
            self.notify("Resumed")
        else:
            self.engine.pause()
            self.notify("Paused: work in flight completes, nothing new starts.")

    def action_cancel(self) -> None:
        """Ask, then cancel: say what a cancel leaves behind."""
        if self.finished or self.engine.cancelled:
            return
        if self.engine.options.dry_run:
            question = "Stop the dry run? Nothing has been or will be written."
        else:
            question = (
                "Cancel the sync?\n\nChunks already written stay written, and the ones in flight "
                "are completed and flushed: the destination will be partly updated, neither its "
                "old contents nor a copy of the source. Running the sync again finishes it."
            )

        def answer(yes: bool | None) -> None:
            if yes and not self.finished:
                self.engine.cancel()

        self.app.push_screen(YesNoScreen("Cancel?", question, yes="Cancel the run", no="Keep going"), answer)
