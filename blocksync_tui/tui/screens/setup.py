"""Provides SetupScreen: pick the source and the destination, set options, start a run."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Footer, Header, Label, Select

from blocksync_tui.engine.errors import UsageError
from blocksync_tui.engine.options import MAX_CHUNK, MIN_CHUNK, SyncOptions
from blocksync_tui.tui.messages import DevicesListed, DevicesRequested, RunRequested
from blocksync_tui.tui.request import RunRequest
from blocksync_tui.tui.widgets.endpoint_panel import EndpointPanel

CHUNK_SIZES = [(f"{size >> 10} KiB" if size < 1 << 20 else f"{size >> 20} MiB", size)
               for size in (1 << n for n in range(MIN_CHUNK.bit_length() - 1, MAX_CHUNK.bit_length()))]
"""Every chunk size the engine takes, as the command line's --chunk-size: 64 MiB chunks keep the
state of a 16 TiB device at 256 Ki chunks."""
HASHES = [("automatic", ""), ("xxh128", "xxh128"), ("sha256", "sha256"), ("sha1", "sha1"),
          ("blake2b", "blake2b"), ("md5", "md5")]
COMPRESSION = [("automatic", "auto"), ("none", "none"), ("zlib", "zlib"), ("lz4", "lz4"), ("zstd", "zstd")]


class SetupScreen(Screen[None]):
    """The first screen: both endpoints side by side, the options, and the two ways to start."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+d", "dry_run", "Dry run", id="dry-run", tooltip="Compare only: write nothing",
                priority=True),
        Binding("ctrl+s", "sync", "Sync", id="sync", tooltip="Write what differs (asks first)",
                priority=True),
    ]

    def __init__(self, request: RunRequest, list_devices: bool = True) -> None:
        super().__init__()
        self.request = request
        self.list_devices = list_devices
        """List both hosts' block devices on mount."""

    def compose(self) -> ComposeResult:
        ssh_keys = self.request.ssh.identity_files
        key = ssh_keys[0] if ssh_keys else ""
        yield Header()
        with Horizontal(id="panels"):
            yield EndpointPanel("source", "Source (read only)", self.request.source, key,
                                list_devices=self.list_devices, ssh=self.request.ssh)
            yield EndpointPanel("destination", "Destination", self.request.destination, key,
                                list_devices=self.list_devices, ssh=self.request.ssh)
        opts = self.request.options
        with Horizontal(id="options"):
            yield Label("Chunk")
            yield Select(CHUNK_SIZES, value=opts.chunk_size if opts.chunk_size in dict(CHUNK_SIZES).values()
                         else 1 << 20, allow_blank=False, id="chunk-size", compact=True)
            yield Label("Hash")
            yield Select(HASHES, value=opts.algorithm or "", allow_blank=False, id="hash", compact=True)
            yield Label("Compress")
            yield Select(COMPRESSION, value=opts.compress, allow_blank=False, id="compress", compact=True)
            verify = Checkbox("Verify", opts.verify, id="verify", compact=True)
            verify.tooltip = "After a sync, re-read every written chunk from disk"
            yield verify
        with Horizontal(id="actions"):
            yield Button("Dry run", id="dry-run", variant="primary")
            yield Button("Sync…", id="sync", variant="error")
            yield Label("A dry run compares both sides and writes nothing.", id="hint")
        yield Footer(compact=True)

    # -- actions

    def action_dry_run(self) -> None:
        """Start a compare."""
        self._start(dry_run=True)

    def action_sync(self) -> None:
        """Start a sync (the app asks for confirmation before writing)."""
        self._start(dry_run=False)

    @on(Button.Pressed, "#dry-run")
    def _dry_run_pressed(self) -> None:
        self.action_dry_run()

    @on(Button.Pressed, "#sync")
    def _sync_pressed(self) -> None:
        self.action_sync()

    def _start(self, dry_run: bool) -> None:
        request = self.build_request(dry_run)
        if request is not None:
            self.post_message(RunRequested(request))

    def build_request(self, dry_run: bool) -> RunRequest | None:
        """Validate the form; show errors beside their fields and return None if any."""
        endpoints = {}
        for panel in self.query(EndpointPanel):
            try:
                endpoints[panel.side] = panel.endpoint_text()
                panel.show_error("")
            except UsageError as exc:
                panel.show_error(str(exc))
        if len(endpoints) < 2:
            return None
        keys = [panel.key for panel in self.query(EndpointPanel) if panel.key]
        options = SyncOptions(
            chunk_size=int(self.query_one("#chunk-size", Select).value),  # type: ignore[arg-type]
            algorithm=str(self.query_one("#hash", Select).value) or None,
            compress=str(self.query_one("#compress", Select).value),
            verify=self.query_one("#verify", Checkbox).value,
            dry_run=dry_run,
        )
        ssh = replace(self.request.ssh, identity_files=list(dict.fromkeys([*keys, *self.request.ssh.identity_files])))
        self.request = RunRequest(endpoints["source"], endpoints["destination"], options, ssh)
        return self.request

    def show_error(self, text: str, side: str | None) -> None:
        """Show an engine error beside the panel it belongs to (if it belongs to one)."""
        if side in ("source", "destination"):
            self.query_one(f"#{side}", EndpointPanel).show_error(text)

    # -- devices

    @on(EndpointPanel.DevicesWanted)
    def _devices_wanted(self, event: EndpointPanel.DevicesWanted) -> None:
        self.post_message(DevicesRequested(event.panel.side, event.session))

    def show_devices(self, message: DevicesListed) -> None:
        """Fill a panel's device table with what its host's worker listed."""
        # A listing can arrive after the panel is gone (the app is closing): then it is dropped.
        for panel in self.query(f"#{message.side}").results(EndpointPanel):
            panel.show_devices(message.devices, message.error)
