"""Provides OwnersPanel: the files and file-system structures that own the differing bytes,
largest first, with each one's share drawn as a bar (as WinDirStat lists what fills a disk)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Label, Static

from blocksync_tui.engine.owners import FREE, UNATTRIBUTED, Owner, Owners
from blocksync_tui.engine.units import human_bytes

MAX_ROWS = 500
"""Owners listed at most (the largest: the rest are a row of their own)."""
BAR = 8
"""Columns of the share bar."""
_KINDS = {FREE: "free", UNATTRIBUTED: "?", "structure": "fs", "file": "file", "inode": "inode"}
"""The kind column: a path, an inode without one, a file-system structure, unused blocks, unknown."""


def share_bar(part: int, whole: int, width: int = BAR) -> str:
    """`part` of `whole` as a bar of eighths: "███▍    "."""
    if whole <= 0:
        return " " * width
    eighths = round(8 * width * part / whole)
    full, rest = divmod(eighths, 8)
    return ("█" * full + ("" if not rest else " ▏▎▍▌▋▊▉"[rest])).ljust(width)


class OwnersPanel(Vertical):
    """The owners of one side's differing bytes, or why they are not known (yet)."""

    @dataclass
    class Selected(Message):
        """An owner was highlighted in the list (None: the list was emptied)."""

        owner: Owner | None

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.owners: Owners | None = None
        """What is listed (None: nothing yet)."""

    def compose(self) -> ComposeResult:
        yield Label("Owners of the differing bytes", id="owners-title", classes="section-title")
        yield Static("", id="owners-status")
        table: DataTable[str | Text] = DataTable(id="owners-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("bytes", "share", "kind", "owner")
        yield table

    def loading(self, side: str) -> None:
        """Say that the owners of `side` are being looked up."""
        self.owners = None
        self._title(side)
        self.query_one("#owners-status", Static).update(Text(f"finding owners on the {side}…"))
        self.query_one(DataTable).clear()
        self.query_one(DataTable).display = True
        self.remove_class("-unavailable")
        self.post_message(self.Selected(None))

    def show(self, owners: Owners) -> None:
        """List the owners of one side, or say why there are none."""
        self.owners = owners
        self._title(owners.side)
        table = self.query_one(DataTable)
        table.clear()
        status = self.query_one("#owners-status", Static)
        table.display = not owners.unavailable
        self.set_class(bool(owners.unavailable), "-unavailable")
        if owners.unavailable:
            status.update(Text(f"unavailable: {owners.unavailable}"))
            return
        total = owners.bytes_total
        status.update(Text(
            f"{100 * owners.fraction:.1f}% attributed to files and structures"
            + (f", {human_bytes(owners.bytes_of(FREE))} free space" if owners.bytes_of(FREE) else "")
            + (f", {human_bytes(owners.bytes_of(UNATTRIBUTED))} unattributed" if owners.bytes_of(UNATTRIBUTED) else "")
            + "".join(f"; {note}" for note in owners.notes)
        ))
        for index, owner in enumerate(owners.owners[:MAX_ROWS]):
            # As Text: a path is the user's data, never markup ("[v1]" stays "[v1]").
            table.add_row(human_bytes(owner.bytes), share_bar(owner.bytes, total),
                          _KINDS.get(owner.kind, owner.kind), Text(owner.label), key=str(index))
        rest = owners.owners[MAX_ROWS:]
        if rest:
            table.add_row(human_bytes(sum(o.bytes for o in rest)), "", "", Text(f"{len(rest):,} more owners"))

    def _title(self, side: str) -> None:
        self.query_one("#owners-title", Label).update(f"Owners on the {side} (o: the other side)")

    @on(DataTable.RowHighlighted, "#owners-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.data_table.has_focus:  # a list that just loaded marks nothing by itself
            self.post_message(self.Selected(self._owner_at(event.data_table)))

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """The list took the focus: its highlighted owner is the selected one."""
        self.post_message(self.Selected(self._owner_at(self.query_one(DataTable))))

    def on_descendant_blur(self, event: events.DescendantBlur) -> None:
        """The list lost the focus: nothing is selected (the map shows everything again)."""
        self.post_message(self.Selected(None))

    def _owner_at(self, table: DataTable) -> Owner | None:
        """The owner of the table's cursor row (None: none, or the row of the rest)."""
        owners = self.owners
        if owners is None or not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return owners.owners[int(key)] if key is not None and key.isdigit() else None
