"""Provides Endpoint: where a source or destination lives, parsed from "[user@]host[:port]:/path"."""

from __future__ import annotations

import re
from dataclasses import dataclass

from blocksync_tui.engine.errors import UsageError

_REMOTE = re.compile(
    r"^(?:(?P<user>[^@/\[\]:]+)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.%a-zA-Z]+\]|[A-Za-z0-9_.-]+)"
    r"(?::(?P<port>\d+))?"
    r":(?P<path>.+)$"
)


@dataclass(frozen=True)
class Endpoint:
    """A file or block device, on this machine (host None) or on an SSH host."""

    path: str
    host: str | None = None
    user: str | None = None
    port: int | None = None

    @property
    def is_remote(self) -> bool:
        """True if the path lives on an SSH host."""
        return self.host is not None

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse "/path", "host:/path", "user@host:2222:/path" or "user@[::1]:/path".

        A text that starts with "/" or "." or contains no ":" is a local path.

        Raises:
            UsageError: empty text, a bad port, or an empty remote path.
        """
        if not text:
            raise UsageError("an endpoint cannot be empty")
        if text.startswith(("/", ".", "~")) or ":" not in text:
            return cls(path=text)
        match = _REMOTE.match(text)
        if match is None:
            return cls(path=text)
        port = match["port"]
        if port is not None and not 0 < int(port) < 65536:
            raise UsageError(f"{text}: port {port} is out of range")
        host = match["host"]
        if host.startswith("["):
            host = host[1:-1]
        return cls(path=match["path"], host=host, user=match["user"], port=int(port) if port else None)

    def __str__(self) -> str:
        if self.host is None:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{host}{port}:{self.path}"
