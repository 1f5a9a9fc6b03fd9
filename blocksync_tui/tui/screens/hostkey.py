"""Provides HostKeyScreen: a host's unknown key, its fingerprint, and the choice to trust it.

This is the app's StrictHostKeyChecking "ask": where `ssh` asks on the terminal, the app shows
the fingerprint in a dialog. Trusting saves the key the way --accept-new-host-key would (once,
appended, hashed under HashKnownHosts), and the run is started again; the key is then checked
like any known key, so a server that shows another key on the retry is refused as CHANGED.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from blocksync_tui.engine import known_hosts
from blocksync_tui.engine.errors import ConnectError, UnknownHostKey
from blocksync_tui.tui.request import RunRequest


@dataclass
class HostKeyUnknown(Message):
    """A run could not start because a host's key is unknown, and the user may trust it."""

    error: UnknownHostKey
    request: RunRequest
    """The request to start again once the key is trusted."""
    ticket: int = 0
    """Which preparation this answers (see `BlocksyncApp.start_run`)."""


def can_ask(error: UnknownHostKey) -> bool:
    """Whether to offer trusting the key: not under StrictHostKeyChecking yes (which forbids
    adding keys but by hand), and only if there is a file to save it to."""
    return error.strict != "yes" and bool(error.known_hosts and error.key)


def trust(error: UnknownHostKey) -> None:
    """Save the key the dialog showed to the file the engine named, as a new key is saved.

    Raises:
        ConnectError: the file now lists another key for the host, or cannot hold one.
        OSError: the file cannot be written.
    """
    key = base64.b64decode(error.key)
    verdict = known_hosts.add(error.known_hosts, error.host, key, error.hashed)
    if verdict.status is known_hosts.Status.KNOWN:
        return
    if verdict.entry is not None:
        raise ConnectError(
            f"{verdict.entry.where} now lists another key for {error.host} (or revokes this "
            "one): not trusted; check that file"
        )
    raise ConnectError(f"{error.known_hosts} is not a file a key can be saved to")


class HostKeyScreen(ModalScreen[bool]):
    """Shows an unknown host key's fingerprint; answers True to trust it, False to cancel."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", id="cancel-key")]
    AUTO_FOCUS = "#cancel"
    """Never the button that trusts: Enter on a dialog that just appeared must not say yes."""
    DEFAULT_CSS = """
    HostKeyScreen #fingerprint {
        margin: 1 0;
        text-style: bold;
    }
    """

    def __init__(self, error: UnknownHostKey) -> None:
        super().__init__(classes="dialog-screen")
        self.error = error

    def compose(self) -> ComposeResult:
        error = self.error
        kind = error.key_type.removeprefix("ssh-").split("-")[0].upper()
        saved = f"{error.known_hosts}" + (" (hashed)" if error.hashed else "")
        with Vertical(classes="dialog"):
            yield Label("Unknown host key", classes="dialog-title")
            yield Static(
                f"The authenticity of host {error.host} can't be established: no known_hosts "
                f"file lists its key. The {kind} key fingerprint is:",
                classes="dialog-body", markup=False,
            )
            yield Static(error.fingerprint, id="fingerprint", markup=False)
            yield Static(
                "Compare it with the host's own (on the host: ssh-keygen -lf "
                f"/etc/ssh/ssh_host_{kind.lower()}_key.pub). Trusting it adds it to {saved} "
                "and starts the run again; a different key later is refused as changed.",
                classes="dialog-body", markup=False,
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Trust and continue", id="trust", variant="warning")
                yield Button("Cancel", id="cancel", variant="primary")

    def action_cancel(self) -> None:
        """Do not trust the key."""
        self.dismiss(False)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "trust")
