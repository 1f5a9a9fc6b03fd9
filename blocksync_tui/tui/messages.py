"""Provides the messages the app acts on: from its engine threads (post_message is thread-safe)
and from its screens, which ask for work this way and never call the app's methods."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from blocksync_tui.engine.api import Engine
from blocksync_tui.engine.host_session import HostSession
from blocksync_tui.engine.inventory import Device
from blocksync_tui.engine.report import Report
from blocksync_tui.tui.request import RunRequest


@dataclass
class RunPrepared(Message):
    """Both workers are up and both ends opened read-only; nothing written yet."""

    engine: Engine
    ticket: int = 0
    """Which preparation this answers (see `BlocksyncApp.start_run`)."""


@dataclass
class RunFinished(Message):
    """The engine ended: with a report, or cancelled or failed (then `error` says why)."""

    engine: Engine
    report: Report
    error: str = ""
    cancelled: bool = False


@dataclass
class RunFailed(Message):
    """The run could not start (bad endpoint, unreachable host...): nothing was written."""

    error: str
    side: str | None = None
    """The endpoint the error belongs to, to show it beside that panel's fields."""
    ticket: int = 0
    """Which preparation this answers (see `BlocksyncApp.start_run`)."""


@dataclass
class DevicesListed(Message):
    """The block devices of one panel's host, or why they could not be listed."""

    side: str
    devices: list[Device]
    error: str = ""


# -- from the screens


@dataclass
class RunRequested(Message):
    """The setup screen asks for a dry run or a sync (a sync is confirmed before writing)."""

    request: RunRequest


@dataclass
class SyncRequested(Message):
    """The review screen asks to sync what the reviewed dry run found."""


@dataclass
class DevicesRequested(Message):
    """A panel of the setup screen wants its host's block devices listed."""

    side: str
    session: HostSession
    """The panel's host's session, which lists them."""
