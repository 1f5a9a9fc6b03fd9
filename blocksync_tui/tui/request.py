"""Provides RunRequest: what the setup screen asks the engine to do."""

from __future__ import annotations

from dataclasses import dataclass, field

from blocksync_tui.engine.options import SshOptions, SyncOptions


@dataclass
class RunRequest:
    """A source, a destination, and how to compare or sync them."""

    source: str
    destination: str
    options: SyncOptions = field(default_factory=SyncOptions)
    ssh: SshOptions = field(default_factory=SshOptions)
