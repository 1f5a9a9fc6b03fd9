"""Provides HelpScreen: the keys, what each colour of the map means, and how a sync works."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# blocksync-tui

Makes a **destination** identical to a **source** (files or block devices, here or on SSH
hosts) by rewriting only the chunks that differ.

1. **Setup**: pick both ends. *Host* empty means this machine; otherwise `user@host` or
   `user@host:port` (your `~/.ssh/config`, agent and keys apply). Pick a device from the list
   or type an image file path. `Ctrl+R` lists the host's block devices again.
2. **Dry run** (`Ctrl+D`) compares both sides and writes nothing.
3. **Review** shows where they differ: select a run of changes to zoom to it, export a JSON
   report and an SVG of the map.
4. **Sync** (`Ctrl+S`) asks first; for a block device you type its name. Pause with `Space`,
   cancel with `Esc`: a cancelled sync leaves the destination partly updated; run it again.

## The block map

Each cell stands for one or more chunks. A cell of several states is shaded by their
share: its most significant one (error, updated, differs...) tints the colour of the most
common other one, a little for a few chunks, mostly for most, never not at all.

| colour | state |
| --- | --- |
| grey | pending: not compared yet |
| faint grey | hole: identical, a hole in both files (no block allocated, not read) |
| dim grey | zero: identical, all zero bytes (allocated on at least one side) |
| green | same: identical |
| amber | differs: will be written by a sync |
| bright green | written by this sync |
| violet | updated: synced again |
| red | error: could not be read, written or verified |

On a partitioned disk, a partition's number marks the cell where it begins and `]` the
cell where it ends: the cells between a `]` and the next number, or after the last `]`, are
unpartitioned. `▶` marks where the scan is.

Keys on the map: arrows move the cursor, `+` / `-` zoom around it, `0` shows the whole
device; the mouse wheel zooms, a click moves the cursor.

## Other keys

`F1` this help · `Ctrl+T` light/dark theme · `Ctrl+P` command palette · `Ctrl+Q` quit
"""


class HelpScreen(ModalScreen[None]):
    """Help, over whatever screen is showing."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,f1,q", "dismiss", "Close", id="close-help")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Markdown(HELP)
