"""Provides LocalPathSuggester: completes a path field from this machine's directories."""

from __future__ import annotations

import os
from collections.abc import Callable

from textual.suggester import Suggester


class LocalPathSuggester(Suggester):
    """Suggests the first entry of the typed path's directory that starts with its last part
    (a directory with a trailing "/", so that completion goes on into it).

    Only for this machine: `is_local()` says whether the field's panel names no host. A remote
    host's paths would cost a connection per keystroke, so none are suggested there.
    """

    def __init__(self, is_local: Callable[[], bool]) -> None:
        super().__init__(use_cache=False, case_sensitive=True)  # directories change
        self._is_local = is_local

    async def get_suggestion(self, value: str) -> str | None:
        """The completed path, or None."""
        if not value.startswith(("/", "~", ".")) or not self._is_local():
            return None
        folder, stem = os.path.split(value)
        where = os.path.expanduser(folder or "/")
        try:
            with os.scandir(where) as entries:
                names = sorted((e.name, e.is_dir()) for e in entries
                               if e.name.startswith(stem) and (stem.startswith(".") or not e.name.startswith(".")))
        except OSError:
            return None
        for name, is_dir in names:
            if name != stem or is_dir:
                return os.path.join(folder, name) + ("/" if is_dir else "")
        return None
