"""Provides the messages that engine threads post to the app (post_message is thread-safe)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from blocksync_tui.engine.api import Engine
from blocksync_tui.engine.inventory import Device
from blocksync_tui.engine.report import Report


@dataclass
class RunPrepared(Message):
    """Both workers are up and both ends opened read-only; nothing written yet."""

    engine: Engine


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


@dataclass
class DevicesListed(Message):
    """The block devices of one panel's host, or why they could not be listed."""

    side: str
    devices: list[Device]
    error: str = ""
