"""Provides listing: the start of a directory's entries, for path completion (LIST)."""

from __future__ import annotations

import heapq
import itertools
import os

MAX_ENTRIES = 1000
MAX_SCAN = 100000


def listing(req: dict) -> dict:
    """The first `max` entries (by name) of directory `path` whose names start with `prefix`,
    as [name, is dir]; dot-files only for a prefix that starts with a dot, as shells do. Not
    `complete` if more matched, or if the directory holds more than MAX_SCAN entries."""
    prefix, limit = req["prefix"], min(int(req["max"]), MAX_ENTRIES)
    with os.scandir(os.path.expanduser(req["path"])) as it:
        found = heapq.nsmallest(limit + 1, (e for e in itertools.islice(it, MAX_SCAN) if e.name.startswith(prefix)
                                            and (prefix[:1] == "." or e.name[:1] != ".")), key=lambda e: e.name)
        return {"entries": [[e.name, e.is_dir()] for e in found[:limit]],
                "complete": len(found) <= limit and next(it, None) is None}
