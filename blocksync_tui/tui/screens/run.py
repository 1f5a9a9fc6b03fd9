"""Provides RunScreen: the live block map of a running compare or sync, with its figures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import ClassVar

from rich.text import Text
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
from blocksync_tui.tui.widgets.stats import RunProgress, StatsPanel

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
        # One key, one entry in the footer, which names what it does now (see check_action).
        Binding("space", "pause", "Pause", id="pause",
                tooltip="Stop asking for new work; what is in flight completes"),
        Binding("space", "resume", "Resume", id="resume", tooltip="Go on from where it paused"),
        Binding("escape,ctrl+c", "cancel", "Cancel", id="cancel", key_display="esc",
                tooltip="Stop the run"),
        Binding("escape", "cancelling", "Cancelling…", id="cancelling", key_display="esc",
                tooltip="The writes in flight are completed and flushed; then the review shows"),
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
        self.state = ""
        """"PAUSED" or "CANCELLING" while the run is so, else "": shown in the title and footer."""
        self.after_dialogs: Callable[[], object] | None = None
        """What to do once this screen is on top again (the app sets it when the run ends
        while a dialog is open over it)."""

    def compose(self) -> ComposeResult:
        engine = self.engine
        yield Static(self._title(), id="run-title")
        yield RunProgress(id="run-progress")
        with Horizontal(id="run-body"):
            with Vertical(id="map-column"):
                yield BlockMap(engine.chunk_map, engine.options.chunk_size, engine.size,
                               poll_interval=1 / MAP_HZ, id="block-map",
                               disk_layout=report_layout(engine.destination_layout, engine.source_layout))
                yield BlockMapLegend("#block-map", follow=False)  # in step with the figures
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
        """Show one snapshot (also used by tests with a fixed snapshot).

        The chunk counts are read from the shared map now, for the figures and the legend at
        once: the snapshot's own may be a poll older, and the two would disagree.
        """
        counts = self.engine.chunk_map.counts()
        progress = replace(progress, counts=counts)
        self.query_one(BlockMapLegend).update_counts(counts)
        self.query_one(StatsPanel).show(progress)
        scanning = progress.phase == "scanning" and progress.scanned < progress.size
        self.query_one(BlockMap).set_position(progress.scanned // progress.chunk_size if scanning else None)
        cancelling = self.engine.cancelled and not self.finished
        self.query_one(RunProgress).show(progress, cancelling)
        self._set_state("CANCELLING" if cancelling else "PAUSED" if progress.paused else "")

    def finish(self, report: Report) -> None:
        """The run is over: stop offering pause and cancel."""
        self.finished = True
        self.query_one(BlockMap).set_position(None)
        self._set_state("")

    def _title(self) -> Text:
        engine = self.engine
        verb = "Dry run" if engine.options.dry_run else "Sync"
        # As text: paths are the user's, never markup.
        title = Text(f"{verb}: {engine.source}  →  {engine.destination}")
        if self.state:
            title.append("  ")
            title.append(f" {self.state} ", style="bold reverse")
        return title

    def _set_state(self, state: str) -> None:
        """Show a new state in the title and the footer's keys."""
        if state != self.state:
            self.state = state
            self.query_one("#run-title", Static).update(self._title())
            self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Offer pause or resume, cancel or (dimmed) "Cancelling…", as the run stands."""
        over = self.finished or self.engine.cancelled
        if action == "pause":
            return not over and self.state != "PAUSED"
        if action == "resume":
            return not over and self.state == "PAUSED"
        if action == "cancel":
            return not over
        if action == "cancelling":
            return None if self.state == "CANCELLING" else False
        return True

    def on_screen_resume(self) -> None:
        """Back on top: if the run ended meanwhile, move on now."""
        then, self.after_dialogs = self.after_dialogs, None
        if then is not None:
            self.call_later(then)

    @on(BlockMap.CellHighlighted)
    def _cell(self, message: BlockMap.CellHighlighted) -> None:
        self.query_one("#cell-info", Static).update(message.description)

    def action_pause(self) -> None:
        """Pause the engine: what is in flight completes, nothing new starts."""
        self.engine.pause()
        self.show_progress(self.engine.progress())

    def action_resume(self) -> None:
        """Resume the engine."""
        self.engine.resume()
        self.show_progress(self.engine.progress())

    def action_cancelling(self) -> None:
        """Nothing: the cancel is under way (the footer says so)."""

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
                self.show_progress(self.engine.progress())

        self.app.push_screen(YesNoScreen("Cancel?", question, yes="Cancel the run", no="Keep going"), answer)
