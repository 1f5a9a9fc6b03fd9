"""Provides ConfirmSyncScreen: name what will be overwritten (the destination's partitions and
file systems, and whether anything uses it); a device's name must be typed."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from blocksync_tui.engine.api import Engine
from blocksync_tui.engine.layout import Layout
from blocksync_tui.engine.preflight import Opened
from blocksync_tui.engine.units import human_bytes

TABLES = {"gpt": "GPT", "dos": "MBR (DOS)"}


def layout_lines(layout: Layout | None) -> list[str]:
    """What is on a destination, one line each: its table, then each partition's number, size,
    type, file system and label (or the whole device's file system)."""
    if layout is None:
        return ["Partitions: not read."]
    if not layout.partitions:
        fs = layout.fs.describe() if layout.fs else "no file system or partition table found"
        return [f"Holds: {fs}."]
    lines = [f"Partition table: {TABLES.get(layout.table, layout.table)}, "
             f"{len(layout.partitions)} partition{'s' if len(layout.partitions) != 1 else ''}:"]
    for part in layout.partitions:
        fs = part.fs.describe() if part.fs else "no file system found"
        lines.append(f"  {part.label:<4} {human_bytes(part.length):>10}  {part.type_name:<17.17} {fs}")
    lines += [f"  (not believed: {problem})" for problem in layout.problems]
    return lines


def usage_line(info: dict) -> str:
    """Whether anything uses the destination, as its worker saw it."""
    usage = Opened.parse(info).usage
    return f"In use: {usage}." if usage else "In use: no (nothing mounted, no holders, no swap)."


class ConfirmSyncScreen(ModalScreen[bool]):
    """Asks before the first write. For a block device, its name must be typed to go ahead."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", id="cancel-sync")]
    AUTO_FOCUS = "#confirm-name, #cancel"
    """The name field for a device, else Cancel: never the button that writes."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(classes="dialog-screen")
        self.engine = engine
        info = engine.destination_info
        self.is_device = info.get("kind") == "block"
        """True when the destination is a block device: then typing its name is required."""
        self.expected = engine.destination.path

    def compose(self) -> ComposeResult:
        engine = self.engine
        info = engine.destination_info
        where = f" on {engine.destination.host}" if engine.destination.is_remote else ""
        if not info.get("exists"):
            what = f"a new file {engine.destination.path}{where}"
        elif self.is_device:
            what = f"the block device {engine.destination.path}{where} ({human_bytes(info['size'])})"
        else:
            what = f"the file {engine.destination.path}{where} ({human_bytes(info['size'])})"
        lines = [
            f"Write to {what}?",
            "",
            f"Source: {engine.source} ({human_bytes(engine.size)}).",
            "Every chunk that differs from the source will be overwritten. This cannot be undone.",
        ]
        if info.get("exists"):
            lines += ["", *layout_lines(engine.destination_layout), usage_line(info)]
        # The sync's warnings: each file system at stake among them (the engine names them,
        # for the command line and the report too), a larger destination...
        lines += [f"⚠ {warning}" for warning in engine.warnings]
        with Vertical(classes="dialog confirm-dialog"):
            yield Label("Confirm sync", classes="dialog-title")
            yield Static("\n".join(lines), classes="dialog-body", markup=False)
            if self.is_device:
                yield Label(Text.assemble("Type ", (self.expected, "bold"), " to confirm:"))
                yield Input(placeholder=self.expected, id="confirm-name")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Sync", id="go", variant="error", disabled=self.is_device)
                yield Button("Cancel", id="cancel", variant="primary")

    @on(Input.Changed, "#confirm-name")
    def _typed(self, event: Input.Changed) -> None:
        self.query_one("#go", Button).disabled = event.value.strip() != self.expected

    @on(Input.Submitted, "#confirm-name")
    def _submitted(self, event: Input.Submitted) -> None:
        if event.value.strip() == self.expected:
            self.dismiss(True)

    def action_cancel(self) -> None:
        """Do not sync."""
        self.dismiss(False)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "go" and not event.button.disabled)
