"""Provides BlocksyncApp: the full-screen app, and the thread workers that drive the engine.

The engine runs in its own process (engine.process.EngineProcess: in a thread of ours it would
share our GIL and run 1.6-1.8x slower). Thread workers owned by the app (not by a screen, so
switching screens never cancels a run) wait for it and talk to the UI only through `post_message`;
the run screen polls `progress()` and the shared chunk map on a timer: the engine never waits for
the UI.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App
from textual.binding import Binding, BindingType

from blocksync_tui.engine.api import Engine
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import BlocksyncError, Cancelled, UnknownHostKey
from blocksync_tui.engine.host_session import HostSession
from blocksync_tui.engine.parallel import engine_for
from blocksync_tui.engine.prior import Prior
from blocksync_tui.tui.commands import ActionsProvider
from blocksync_tui.tui.messages import (
    DevicesListed,
    DevicesRequested,
    RunFailed,
    RunFinished,
    RunPrepared,
    RunRequested,
    SyncRequested,
)
from blocksync_tui.tui.request import RunRequest
from blocksync_tui.tui.screens.confirm import ConfirmSyncScreen
from blocksync_tui.tui.screens.dialogs import BusyScreen, ErrorScreen, YesNoScreen
from blocksync_tui.tui.screens.help import HelpScreen
from blocksync_tui.tui.screens.hostkey import HostKeyScreen, HostKeyUnknown, can_ask, trust
from blocksync_tui.tui.screens.review import ReviewScreen
from blocksync_tui.tui.screens.run import RunScreen
from blocksync_tui.tui.screens.setup import SetupScreen


class BlocksyncApp(App[int]):
    """Pick a source and a destination, dry-run, review, confirm, sync."""

    TITLE = "blocksync-tui"
    COMMANDS = App.COMMANDS | {ActionsProvider}
    CSS_PATH = Path(__file__).with_name("app.tcss")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1", "help", "Help", id="help", tooltip="Keys and what the colours mean"),
        # Not in the footer (an 80-column one holds no more): in F1's help and the palette.
        Binding("ctrl+t", "toggle_theme", "Light/dark", id="toggle-theme", show=False,
                tooltip="Switch between the light and the dark theme"),
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
    ]

    def __init__(
        self, request: RunRequest | None = None, *, autostart: bool = False, list_devices: bool = True,
        scratch: Path | None = None,
    ) -> None:
        """Create the app.

        Args:
            request: Endpoints and options to fill the setup screen with.
            autostart: Start the dry run at once (used by `--demo`).
            list_devices: List each host's block devices when the setup screen opens.
            scratch: A directory of the app's own (the demo's images), removed when it quits.
        """
        super().__init__()
        self.request = request or RunRequest("", "")
        """The last request made from the setup screen."""
        self.autostart = autostart
        self.list_devices_on_start = list_devices
        self.engine: Engine | None = None
        """The engine of the current run, once prepared."""
        self._pending_sync: RunRequest | None = None
        self.scratch = scratch
        """The app's own directory (the demo's images), removed when it quits."""
        self._quit_after_run = False
        self._ticket = 0
        self.farewell = ""
        """The line printed on the terminal after quitting mid-run: what the quit left behind."""
        self.crashed: Exception | None = None
        """A bug of the app that ended it: the command line says it in one line, and shows its
        traceback only when asked (cli._guarded), as for any command."""

    def _handle_exception(self, error: Exception) -> None:
        # Textual prints the traceback of an unhandled exception once the terminal is back;
        # the app ends as ever, but the command line tells it in one line instead.
        self.crashed = error
        super()._handle_exception(error)
        renderables = getattr(self, "_exit_renderables", None)
        if isinstance(renderables, list):
            renderables.clear()

    def on_mount(self) -> None:
        self.push_screen(SetupScreen(self.request, list_devices=self.list_devices_on_start))
        if self.autostart and self.request.source and self.request.destination:
            # A guided start is always a dry run: nothing is written without a confirmed sync.
            self.start_run(replace(self.request, options=replace(self.request.options, dry_run=True)))

    def on_unmount(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)  # gigabytes of demo images

    # -- actions

    def action_help(self) -> None:
        """Show the help screen."""
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        """Quit; during a sync, ask first and say what quitting leaves behind.

        What a quit interrupted is said on the terminal once the app is gone, in the line the
        command line prints: a cancelled sync waits for the writes in flight to be flushed.
        """
        run = next((s for s in self.screen_stack if isinstance(s, RunScreen)), None)
        if run is None or run.finished:
            self.exit()
            return
        if run.engine.options.dry_run:
            run.engine.cancel()  # a dry run writes nothing: stop it without asking
            self._leave("dry run stopped before its end: nothing was written")
            return
        if self._quit_after_run:  # asked twice: go now, the engine's process finishes alone
            self._leave("quit while cancelling: the writes in flight are completed and flushed; "
                        "the destination is partly updated; run the sync again to finish it")
            return

        def answer(yes: bool | None) -> None:
            if not yes:
                return
            if run.finished:
                self.exit()
                return
            run.engine.cancel()  # the engine completes and flushes what is in flight
            self._quit_after_run = True
            self.notify("Cancelling: the app quits once the writes in flight are flushed "
                        "(Ctrl+Q again quits at once).", timeout=30)

        await self.push_screen(
            YesNoScreen(
                "Quit during a sync?",
                "The sync is cancelled: chunks already written stay written and the ones in "
                "flight are completed and flushed, so the destination is left partly updated. "
                "Running the sync again finishes it.",
                yes="Cancel and quit",
                no="Keep syncing",
            ),
            answer,
        )

    def _leave(self, outcome: str) -> None:
        """Quit, and say `outcome` on the terminal once the app is gone."""
        self.farewell = f"blocksync-tui: {outcome}"
        self.exit(message=Text(self.farewell))

    def action_toggle_theme(self) -> None:
        """Switch between the light and the dark theme."""
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    # -- starting runs

    def start_run(self, request: RunRequest) -> None:
        """Prepare a dry run or a sync in a thread; a sync is confirmed before anything is written.

        Reaching both ends takes seconds over SSH: a dialog says so at once. Each preparation
        has a ticket; an answer whose ticket is not the one awaited (the user gave up on it,
        by Escape on that dialog) is dropped, and what it opened is closed.
        """
        self.request = request
        self._ticket += 1
        ticket = self._ticket

        def gave_up(_: None) -> None:
            if self._ticket == ticket:
                self._ticket += 1
                self.notify("Not started: nothing was written.")

        read_only = " read-only" if request.options.dry_run else ""
        self.push_screen(BusyScreen(f"Connecting, opening both ends{read_only}…"), gave_up)
        self.prepare_engine(request, ticket)

    def _awaited(self, ticket: int) -> bool:
        """Whether a preparation's answer is the one awaited; if so, its dialog goes."""
        if ticket != self._ticket:
            return False
        if isinstance(self.screen, BusyScreen):
            self.screen.dismiss(None)
        self._ticket += 1  # answered: a later Escape on nothing gives up nothing
        return True

    @work(thread=True, group="engine", exit_on_error=False, description="Preparing")
    def prepare_engine(self, request: RunRequest, ticket: int = 0) -> None:
        """Connect both workers and open both ends read-only (blocking: in a thread)."""
        try:
            engine = engine_for(
                Endpoint.parse(request.source),
                Endpoint.parse(request.destination),
                request.options,
                request.ssh,
                own_process=True,
            )
            engine.prepare()
        except UnknownHostKey as exc:  # the app's "ask": a dialog offers to trust the key
            if can_ask(exc):
                self.post_message(HostKeyUnknown(exc, request, ticket))
            else:
                self.post_message(RunFailed(str(exc), exc.side, ticket))
            return
        except BlocksyncError as exc:
            self.post_message(RunFailed(str(exc), exc.side, ticket))
            return
        except Exception as exc:  # a dialog, never a worker that dies unseen
            self.post_message(RunFailed(f"unexpected error: {type(exc).__name__}: {exc}", None, ticket))
            return
        self.post_message(RunPrepared(engine, ticket))

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False, description="Running")
    def run_engine(self, engine: Engine) -> None:
        """Run a prepared engine to its end (blocking: in a thread)."""
        error, cancelled = "", False
        try:
            engine.run()
        except Cancelled as exc:
            error, cancelled = str(exc), True
        except BlocksyncError as exc:
            error = str(exc)
        except Exception as exc:  # shown as a dialog, never as a traceback over the screen
            error = f"unexpected error: {type(exc).__name__}: {exc}"
        report = engine.report()
        if error:
            report.outcome = "cancelled" if cancelled else "failed"
            report.message = error
        self.post_message(RunFinished(engine, report, error, cancelled))

    @work(thread=True, group="devices", exit_on_error=False, description="Listing devices")
    def list_devices(self, side: str, session: HostSession) -> None:
        """Read the block devices of a host, through its setup session's worker."""
        try:
            devices = session.devices()
        except BlocksyncError as exc:
            self.post_message(DevicesListed(side, [], str(exc)))
            return
        self.post_message(DevicesListed(side, devices))

    # -- what the screens ask for

    @on(RunRequested)
    def _run_requested(self, message: RunRequested) -> None:
        self.start_run(message.request)

    @on(SyncRequested)
    def _sync_requested(self, message: SyncRequested) -> None:
        self.sync_after_review()

    @on(DevicesRequested)
    def _devices_requested(self, message: DevicesRequested) -> None:
        self.list_devices(message.side, message.session)

    # -- engine events

    @on(RunFailed)
    def _run_failed(self, message: RunFailed) -> None:
        if not self._awaited(message.ticket):
            return
        screen = self._setup_screen()
        if screen is not None:
            screen.show_error(message.error, message.side)
        self.push_screen(ErrorScreen("Cannot start", message.error))

    @on(HostKeyUnknown)
    def _host_key_unknown(self, message: HostKeyUnknown) -> None:
        """Show the fingerprint; trusted, the key is saved and the same run starts again."""
        if not self._awaited(message.ticket):
            return
        error = message.error

        def answer(trusted: bool | None) -> None:
            if not trusted:
                screen = self._setup_screen()
                if screen is not None:
                    screen.show_error(str(error), error.side)
                self.notify("Not connected: the host key was not trusted.", severity="warning")
                return
            try:
                trust(error)
            except (OSError, BlocksyncError) as exc:
                self.push_screen(ErrorScreen("Cannot trust the host key", str(exc)))
                return
            self.notify(f"Added {error.host} to {error.known_hosts}.", markup=False)
            self.start_run(message.request)

        self.push_screen(HostKeyScreen(error), answer)

    @on(RunPrepared)
    def _run_prepared(self, message: RunPrepared) -> None:
        engine = message.engine
        if not self._awaited(message.ticket):
            engine.close()  # given up on: nothing was written, nothing stays open
            return
        self.engine = engine
        for note in engine.notes:  # "resuming at 40%", what a list of changes settles
            self.notify(note, title="Known before the run", timeout=10, markup=False)
        if engine.options.dry_run:
            self._show_run(engine)
            return

        def confirmed(ok: bool | None) -> None:
            if ok:
                self._show_run(engine)
            else:
                engine.close()
                self.engine = None
                self.notify("Sync not started: nothing was written.")

        self.push_screen(ConfirmSyncScreen(engine), confirmed)

    def _show_run(self, engine: Engine) -> None:
        self._pop_to_setup()
        # The engine starts once the run screen has drawn itself: building a screen costs the
        # UI a burst of CPU that would otherwise be taken from the sync's first second.
        self.push_screen(RunScreen(engine, on_ready=lambda: self.run_engine(engine)))

    @on(RunFinished)
    def _run_finished(self, message: RunFinished) -> None:
        if self._quit_after_run:
            report = message.report
            self._leave(message.error or f"the sync ended ({report.outcome}) before the cancel")
            return
        run = next((s for s in self.screen_stack if isinstance(s, RunScreen)), None)
        if run is not None:
            run.finish(message.report)
            if self.screen is not run:
                # A dialog over the run (cancel? quit?) stays until it is answered: keys meant
                # for it must not land on the review. The review comes once the run is shown again.
                run.after_dialogs = lambda: self._show_review(message)
                self.notify("The run has ended.", timeout=5)
                return
        self._show_review(message)

    def _show_review(self, message: RunFinished) -> None:
        self._pop_to_setup()
        self.push_screen(ReviewScreen(message.engine, message.report, self.request))
        if message.error and not message.cancelled:
            self.push_screen(ErrorScreen("The run failed", message.error))
        elif message.cancelled:
            self.notify(message.error, title="Cancelled", severity="warning", timeout=10, markup=False)

    @on(DevicesListed)
    def _devices_listed(self, message: DevicesListed) -> None:
        screen = self._setup_screen()
        if screen is not None:
            screen.show_devices(message)

    def _setup_screen(self) -> SetupScreen | None:
        for screen in self.screen_stack:
            if isinstance(screen, SetupScreen):
                return screen
        return None

    def _pop_to_setup(self) -> None:
        while len(self.screen_stack) > 1 and not isinstance(self.screen, SetupScreen):
            self.pop_screen()

    def sync_after_review(self) -> None:
        """Turn the reviewed dry run into a sync of the same endpoints and options. What the
        dry run found equal is not compared again, but for a sample of it; what it found
        differing is compared again, then written (engine.prior)."""
        review = next((s for s in reversed(self.screen_stack) if isinstance(s, ReviewScreen)), None)
        prior = None
        if review is not None and review.report.mode == "compare":
            prior = Prior.of(review.engine.chunk_map.snapshot(), review.report.chunk_size, "dry run")
        options = replace(self.request.options, dry_run=False, prior=prior)
        self.start_run(replace(self.request, options=options))
