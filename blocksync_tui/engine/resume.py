"""Provides the resume state of a sync: a GNU ddrescue-style mapfile of what is done, kept
while the sync runs and read back by the next run of the same pair.

A sync records, every few seconds, the chunks it settled (equal, or written) that the
destination has flushed to disk: `+` lines (with a "# state ..." comment where the chunks are
zeros or written), `?` for what is not done, `-` for chunks that differed and were not written
or failed. Its comment lines carry the pair's identities, so that a state is never applied to
another pair:

    # blocksync-tui resume state 1
    # source: {"host": ..., "name": ..., "path": ..., "kind": "file", "size": ..., "dev": ...,
    #          "ino": ..., "rdev": ..., "mtime_ns": ...}
    # destination: {... the same fields, as opened for writing ...}
    # options: {"chunk_size": 1048576, "hash": "xxh128"}
    # ended: false

`ended` is true once the controller flushed and recorded the end itself (a cancel); false
while the run goes on, so after a kill -9 or a lost connection: the destination's worker then
completes the writes it received, which changes a file's modification time after the last
record. The state is kept in bytes, so a rerun with another chunk size still uses it (a chunk
counts as settled only if it lies wholly in `+` lines).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path

from blocksync_tui.engine.mapfile import MapError, map_states, map_text
from blocksync_tui.engine.preflight import Opened
from blocksync_tui.engine.prior import Prior

MAGIC = "# blocksync-tui resume state 1"
STATE_DIR_ENV = "XDG_CACHE_HOME"
MAX_LINES_PER_CHUNK = 4
"""A state file of ours has at most two lines per chunk: more is not ours."""


def state_dir() -> Path:
    """Where state files live by default: ~/.cache/blocksync-tui/resume (XDG_CACHE_HOME)."""
    base = os.environ.get(STATE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "blocksync-tui" / "resume"


def identity(host: str, name: str, opened: Opened) -> dict:
    """What names one end of a pair: its host (as reached, and its own name), the path it
    resolved to, its kind and size, device and inode (a file) or device number (a block
    device), and a file's modification time."""
    dev, ino, rdev = opened.identity or (0, 0, 0)
    return {
        "host": host, "name": name, "path": str(opened.raw.get("realpath") or opened.path),
        "kind": opened.kind, "size": opened.size, "dev": dev, "ino": ino, "rdev": rdev,
        "mtime_ns": opened.mtime_ns if opened.kind == "file" else 0,
    }


def state_path(source: dict, destination: dict) -> Path:
    """The default state file of a pair: one per (host, path) of each end."""
    key = json.dumps([source["host"], source["path"], destination["host"], destination["path"]])
    return state_dir() / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".map")


def _header(source: dict, destination: dict, options: dict, ended: bool) -> list[str]:
    return [
        MAGIC,
        "# source: " + json.dumps(source, sort_keys=True),
        "# destination: " + json.dumps(destination, sort_keys=True),
        "# options: " + json.dumps(options, sort_keys=True),
        f"# ended: {'true' if ended else 'false'}",
    ]


def _fields(comments: list[str]) -> dict:
    """The `# key: value` comments of a state file, values parsed as JSON."""
    fields = {}
    for line in comments:
        key, sep, value = line[1:].strip().partition(": ")
        if sep and key in ("source", "destination", "options", "ended"):
            try:
                fields[key] = json.loads(value)
            except ValueError:
                raise MapError(f"its {key} line is not valid") from None
    return fields


def mismatch(recorded: dict, now: dict, side: str, ended: bool, mtimes: bool = True) -> str:
    """Why a recorded end is not the one opened now ("" if it is)."""
    for key in ("host", "path", "kind", "size", "dev", "ino", "rdev"):
        if now["kind"] == "block" and key in ("dev", "ino"):
            continue  # a device node's inode is not the device
        if recorded.get(key) != now[key]:
            return f"the {side}'s {key} changed ({recorded.get(key)!r}, now {now[key]!r})"
    if now["kind"] == "file" and mtimes:
        then = recorded.get("mtime_ns")
        if not isinstance(then, int):
            return f"the {side}'s modification time is missing"
        # A destination may have been written after the last record by the writes that were
        # in flight when the controller went away: only later, never earlier.
        if (now["mtime_ns"] != then) if side == "source" or ended else (now["mtime_ns"] < then):
            return f"the {side} was modified since"
    return ""


def load(path: Path, source: dict, destination: dict, chunk_size: int, size: int,
         mtimes: bool = True) -> tuple[Prior | None, str]:
    """The prior a state file gives this pair, or (None, why it is ignored); (None, "") if
    there is none. Without `mtimes`, modification times are not compared (a lane merging its
    share into what the others recorded)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            total = -(-size // chunk_size)
            comments, states = map_states(f, chunk_size, size, MAX_LINES_PER_CHUNK * total + 64)
            fields = _fields(comments)
    except FileNotFoundError:
        return None, ""
    except (OSError, MapError) as exc:
        return None, f"the resume state {path} is ignored: {exc}"
    if not comments or comments[0] != MAGIC or not {"source", "destination"} <= fields.keys():
        return None, f"the resume state {path} is ignored: it is not one of ours"
    ended = fields.get("ended") is True
    for side, recorded, now in (("source", fields["source"], source), ("destination", fields["destination"], destination)):
        why = mismatch(recorded if isinstance(recorded, dict) else {}, now, side, ended, mtimes)
        if why:
            return None, f"the resume state {path} is ignored: {why}"
    return Prior(states, chunk_size, "resume"), ""


class Checkpoints:
    """Writes the state file of one run: atomically (a temporary file, fsync, rename, fsync of
    the directory), so a crash leaves the old state or the new one, never half of one. A lane
    of a parallel run owns chunks first..end-1 only: it merges them into the file as the other
    lanes left it, under a lock."""

    def __init__(self, path: Path, source: dict, destination: dict, options: dict,
                 chunk_size: int, size: int, first: int, end: int) -> None:
        self.path = path
        self.source = source
        self.destination = dict(destination)
        self.options = options
        self.chunk_size = chunk_size
        self.size = size
        self.first, self.end = first, end
        self.total = -(-size // chunk_size)
        self.failed = ""
        """Why the last write failed (the run goes on: a state is a convenience)."""

    def write(self, states: bytes, flushed: dict, ended: bool = False) -> None:
        """Record chunks first..end-1 in `states`, all on disk as of the flush that answered
        `flushed` (its destination modification time is recorded)."""
        if isinstance(flushed.get("mtime_ns"), int) and self.destination["kind"] == "file":
            self.destination["mtime_ns"] = flushed["mtime_ns"]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                whole = states
                if (self.first, self.end) != (0, self.total):
                    whole = self._others(states)
                header = _header(self.source, self.destination, self.options, ended)
                _replace(self.path, map_text(whole, self.chunk_size, self.size, header, exact=True))
            self.failed = ""
        except OSError as exc:
            self.failed = f"cannot write the resume state {self.path}: {exc.strerror or exc}"

    def _others(self, mine: bytes) -> bytes:
        """The whole device's states: the file's (if it is this pair's), ours over our share."""
        whole = bytearray(self.total)
        prior, _ = load(self.path, self.source, self.destination, self.chunk_size, self.size, mtimes=False)
        if prior is not None:
            whole[:] = prior.states
        whole[self.first : self.end] = mine
        return bytes(whole)

    @contextlib.contextmanager
    def _locked(self):
        with open(str(self.path) + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def remove(self) -> None:
        """The sync completed: nothing is left to resume."""
        forget(self.path)


def forget(path: Path) -> None:
    """Remove a state file, its lock, and what a killed writer left half written."""
    for name in (path, Path(str(path) + ".lock"), *path.parent.glob(path.name + ".*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            name.unlink()


def _replace(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
