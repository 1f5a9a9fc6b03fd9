"""Provides Listing: a worker's LIST answer (the start of a directory), checked, and the path
completion it offers."""

from __future__ import annotations

import re
from dataclasses import dataclass

from blocksync_tui.engine.errors import ProtocolError

NAME_MAX = 255
"""The longest file name Linux allows, in bytes."""
UNSHOWN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""What a name never suggested holds: a control character (Unicode's Cc: a terminal would act
on it) or a lone surrogate (Cs: a byte that is not UTF-8; shown, it would not be the name)."""


def hides(prefix: str, name: str) -> bool:
    """Whether a listing for `prefix` leaves `name` out: a dot-file, unless the prefix starts
    with a dot (as shells complete)."""
    return name.startswith(".") and not prefix.startswith(".")


@dataclass(frozen=True)
class Listing:
    """The first entries, by name, of one directory whose names start with `prefix`."""

    prefix: str
    entries: tuple[tuple[str, bool], ...]
    """(name, is a directory), sorted by name; names that are never shown are left out."""
    complete: bool
    """Every entry that matches `prefix` is here (else only the first ones, by name)."""

    @classmethod
    def parse(cls, answer: dict, prefix: str, limit: int) -> Listing:
        """A worker's LIST answer for `prefix`, checked field by field.

        Raises:
            ProtocolError: more entries than asked for, or a name no directory can hold or
                that the request did not ask for.
        """
        try:
            entries, complete = answer["entries"], answer["complete"]
            if not isinstance(entries, list) or len(entries) > limit or not isinstance(complete, bool):
                raise ValueError(f"{len(entries)} entries, complete {complete!r}")
            kept = []
            for name, is_dir in entries:
                if not isinstance(name, str) or not isinstance(is_dir, bool):
                    raise ValueError(f"entry {str(name)[:40]!r}")
                if (name in ("", ".", "..") or "/" in name or "\0" in name or not name.startswith(prefix)
                        or hides(prefix, name) or len(name.encode("utf-8", "surrogatepass")) > NAME_MAX):
                    raise ValueError(f"name {name[:40]!r}")
                if not UNSHOWN.search(name):
                    kept.append((name, is_dir))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"a malformed LIST answer ({exc})") from None
        return cls(prefix, tuple(sorted(kept)), complete)

    def covers(self, stem: str) -> bool:
        """Whether this listing knows what completes `stem`: all of its names, or the first
        ones by name and among them one that does."""
        if not stem.startswith(self.prefix) or hides(self.prefix, stem):
            return False
        return self.complete or self.completion(stem) is not None

    def completion(self, stem: str) -> tuple[str, bool] | None:
        """The first entry that completes `stem` (a file of that very name does not)."""
        return completion(stem, self.entries)


def completion(stem: str, entries: tuple[tuple[str, bool], ...] | list[tuple[str, bool]]) -> tuple[str, bool] | None:
    """The first of sorted (name, is a directory) entries that completes `stem`: starts with
    it, is no dot-file unless `stem` starts with a dot, and is longer, or a directory (to
    which completion adds a "/")."""
    for name, is_dir in entries:
        if name.startswith(stem) and not hides(stem, name) and (name != stem or is_dir):
            return name, is_dir
    return None
