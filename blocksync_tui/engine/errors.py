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


class DestinationAppeared(EndpointError):
    """The destination was absent when it was checked and exists now: what it holds was never
    compared, so nothing was written, and the run may be prepared again."""


class ConnectError(BlocksyncError):
    """A worker could not be started or reached (SSH, no Python, refused key)."""


class UnknownHostKey(ConnectError):
    """A host offered a key that no known_hosts file lists: trusting it is the user's call.

    It carries what a user needs to decide (the fingerprint) and what trusting takes (the key
    and where it would be saved), as plain values, so that it crosses processes intact.
    """

    def __init__(
        self, message: str, host: str = "", key_type: str = "", fingerprint: str = "",
        known_hosts: str = "", key: str = "", hashed: bool = False, strict: str = "ask",
    ) -> None:
        super().__init__(message)
        self.host = host
        """The name known_hosts would list: "host", "[host]:port", or the HostKeyAlias."""
        self.key_type = key_type
        self.fingerprint = fingerprint
        """As OpenSSH prints it: "SHA256:" and unpadded base64."""
        self.known_hosts = known_hosts
        """The file the key would be saved to ("" if there is none: UserKnownHostsFile none)."""
        self.key = key
        """The public key blob, base64, as a known_hosts line holds it."""
        self.hashed = hashed
        """Save the name hashed (HashKnownHosts yes)."""
        self.strict = strict
        """StrictHostKeyChecking in effect: "ask" lets a user trust the key, "yes" does not."""


class ProtocolError(BlocksyncError):
    """The worker spoke something we do not understand: version skew or corruption."""


class ConnectionLost(BlocksyncError):
    """A worker went away in the middle of a run."""


class RemoteError(BlocksyncError):
    """The worker reported an error while doing I/O (errno text included)."""

    errno: int = 0
    """The errno the worker gave, where the engine acts on it (EEXIST)."""


class Cancelled(BlocksyncError):
    """The run was cancelled by the user."""
