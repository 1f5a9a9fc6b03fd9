"""Provides the engine's exceptions: each message is one line a user can act on."""

from __future__ import annotations


class BlocksyncError(Exception):
    """Base of every error the engine reports to a user."""

    side: str | None = None
    """"source" or "destination" when the error belongs to one endpoint (set by the engine)."""

    def on(self, side: str) -> BlocksyncError:
        """Tag the error with the endpoint it belongs to; returns self."""
        self.side = side
        return self


class UsageError(BlocksyncError):
    """The request itself is wrong (bad option, same source and destination)."""


class EndpointError(BlocksyncError):
    """A path cannot be used: missing, not permitted, mounted, too small."""


class ConnectError(BlocksyncError):
    """A worker could not be started or reached (SSH, no Python, refused key)."""


class ProtocolError(BlocksyncError):
    """The worker spoke something we do not understand: version skew or corruption."""


class ConnectionLost(BlocksyncError):
    """A worker went away in the middle of a run."""


class RemoteError(BlocksyncError):
    """The worker reported an error while doing I/O (errno text included)."""


class Cancelled(BlocksyncError):
    """The run was cancelled by the user."""
