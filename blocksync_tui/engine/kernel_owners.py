"""Provides ask and classify: the owners of differing bytes of a mounted file system, from its
kernel (FS_IOC_GETFSMAP, and FS_IOC_FIEMAP of the files a walk of the mount finds).

The side's worker finds the mount of the region's device (or of a loop device over the
image) and asks the kernel (worker/fsmap.py). What the kernel calls an inode is a file
named by the walk, or an inode; its special owners are structures or free space. Data whose
owner the kernel does not know (ext4 keeps no reverse map) is the file whose extents cover
it; what no file covers (the journal, extent-tree blocks, an unlinked file) is left to
e2fsprogs, as are regions that are not mounted, or whose kernel refuses the request.
Everything in the answer is checked against what was asked before it is believed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from blocksync_tui.engine.connection import Connection
from blocksync_tui.engine.differences import split_by
from blocksync_tui.engine.errors import BlocksyncError
from blocksync_tui.engine.worker import protocol as wire

FREE_OWNER, UNKNOWN_OWNER = 1, 2
"""FMR_OWN_FREE and FMR_OWN_UNKNOWN, the special owners every file system shares."""
SPECIAL = 0x10
"""FMR_OF_SPECIAL_OWNER: the owner is one of these codes, not an inode."""
STRUCTURES = {
    (0, 3): "metadata",
    (ord("X"), 1): "superblocks and fs headers",
    (ord("X"), 2): "journal (log)",
    (ord("X"), 3): "free-space btrees",
    (ord("X"), 4): "inode btrees",
    (ord("X"), 5): "inode tables",
    (ord("X"), 6): "refcount btrees",
    (ord("X"), 7): "copy-on-write staging",
    (ord("X"), 8): "bad blocks",
    (ord("f"), 1): "group descriptors",
    (ord("f"), 2): "reserved GDT blocks",
    (ord("f"), 3): "block bitmaps",
    (ord("f"), 4): "inode bitmaps",
}
"""Special owners by (type, code), as ext4's and xfs's fsmap headers define them."""
MAX_RECORDS = 100_000
MAX_EXTENTS = 1 << 20
MAX_INODES = 1 << 20
MAX_NAMES = 8
MAX_TEXT = 4096
_ERRNO = re.compile(r"E[A-Z0-9]{1,15}\Z")


class Refused(Exception):
    """The answer cannot be believed, or the kernel did not give one: e2fsprogs instead."""


@dataclass
class Answer:
    """A worker's checked answer about one mounted region, in the region's own offsets."""

    mount: str
    fstype: str
    records: list[tuple[int, int, tuple[int, int]]]
    """(start, end, (owner, flags)), sorted and disjoint, inside the region."""
    extents: list[tuple[int, int, int]]
    """(start, end, inode): the files found where the kernel knows no owner."""
    names: dict[int, list[str]] = field(default_factory=dict)
    truncated: bool = False
    cut: str = ""
    entries: int = 0


def _int(value: object, below: int) -> int:
    if type(value) is not int or not 0 <= value < below:
        raise Refused("a bad number in the answer")
    return value


def _text(value: object, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise Refused("a bad text in the answer")
    return value.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates, shown


def _spans(items: object, limit: int, length: int, width: int) -> list[tuple]:
    """[start, size, *rest] lists as (start, end, rest), clipped to [0, length), sorted, and
    disjoint (the first claims what two claim: a reflinked block has more owners)."""
    if not isinstance(items, list) or len(items) > limit:
        raise Refused("too many records in the answer")
    out = []
    for item in items:
        if not isinstance(item, list) or len(item) != width:
            raise Refused("a bad record in the answer")
        start, size = _int(item[0], 1 << 63), _int(item[1], 1 << 63)
        rest = tuple(_int(x, 1 << 64) for x in item[2:])
        if size and start < length:
            out.append((start, min(start + size, length), rest if len(rest) > 1 else rest[0]))
    out.sort(key=lambda r: r[0])
    disjoint: list[tuple] = []
    for start, end, rest in out:
        start = max(start, disjoint[-1][1]) if disjoint else start
        if start < end:
            disjoint.append((start, end, rest))
    return disjoint


def check(answer: dict, length: int) -> Answer | None:
    """The worker's answer, believed only within bounds; None if the region is not mounted.

    Raises:
        Refused: the kernel refused (its errno said), or the answer is malformed.
    """
    if not isinstance(answer, dict) or answer.get("mounted") is False:
        return None
    mount, fstype = _text(answer.get("mount")), _text(answer.get("fstype"), 64)
    if "error" in answer:
        code = _text(answer["error"], 16)
        if not _ERRNO.match(code):
            raise Refused("a bad error in the answer")
        raise Refused(f"FS_IOC_GETFSMAP on {mount}: {_text(answer.get('reason', ''), 200)} ({code})")
    names: dict[int, list[str]] = {}
    given = answer.get("names", {})
    if not isinstance(given, dict) or len(given) > MAX_INODES:
        raise Refused("too many names in the answer")
    for key, paths in given.items():
        if not isinstance(key, str) or not key.isdigit() or not isinstance(paths, list) or not paths:
            raise Refused("a bad name in the answer")
        names[_int(int(key), 1 << 64)] = [_text(p) for p in paths[:MAX_NAMES]]
    cut = _text(answer.get("cut", ""), 64)
    return Answer(mount, fstype, _spans(answer.get("records"), MAX_RECORDS, length, 4),
                  _spans(answer.get("extents", []), MAX_EXTENTS, length, 3), names,
                  answer.get("truncated") is True, cut, _int(answer.get("entries", 0), 1 << 40))


def ask(conn: Connection, path: str, offset: int, length: int, pieces: list[tuple[int, int]],
        seconds: float) -> Answer | None:
    """Ask the side's worker about the pieces (device offsets) of the file system at bytes
    [offset, offset + length) of `path`: None if it is not mounted.

    Raises:
        Refused: the kernel refused, the answer is malformed, or the worker failed.
    """
    ranges = [[start - offset, end - offset] for start, end in pieces]
    request = {"path": path, "offset": offset, "ranges": ranges, "timeout": seconds}
    try:
        answer = conn.call_json(wire.OP_FSMAP, request, timeout=seconds + 10)
    except BlocksyncError as exc:
        raise Refused(f"FS_IOC_GETFSMAP: {exc}") from None
    return check(answer, length)


def notes_of(answer: Answer, region: str) -> list[str]:
    """What the user is told of a mounted region's answer: that the kernel gave it, and what
    cut it short."""
    where = f"{region} " if region else ""
    notes = [f"{where}mounted on {answer.mount} ({answer.fstype}): owners from its kernel "
             f"(FS_IOC_GETFSMAP, FIEMAP of {answer.entries:,} entries)"]
    if answer.truncated:
        notes.append(f"the kernel's map of {answer.mount} was cut short: the rest by e2fsprogs")
    if answer.cut:
        notes.append(f"the walk of {answer.mount} stopped ({answer.cut}): some files are not named")
    return notes


Label = tuple
"""What owns a part: ("inode", number), ("free",) or ("structure", name)."""


def classify(answer: Answer, pieces: list[tuple[int, int]], offset: int
             ) -> tuple[list[tuple[int, int, Label]], list[tuple[int, int]]]:
    """The parts of the pieces (device offsets; the file system starts at `offset`) whose owner
    the kernel named, and the parts it left (no owner known, or outside its answer)."""
    local = [(start - offset, end - offset) for start, end in pieces]
    named: list[tuple[int, int, Label]] = []
    left: list[tuple[int, int]] = []
    unknown: list[tuple[int, int]] = []
    for start, end, record in split_by(local, answer.records):
        if record is None:
            left.append((start, end))
            continue
        owner, flags = record
        if not flags & SPECIAL:
            named.append((start, end, ("inode", owner)))
        elif owner == FREE_OWNER:
            named.append((start, end, ("free",)))
        elif owner == UNKNOWN_OWNER:
            unknown.append((start, end))
        else:
            name = STRUCTURES.get((owner >> 32, owner & 0xFFFFFFFF), f"fs metadata ({owner:#x})")
            named.append((start, end, ("structure", name)))
    for start, end, inode in split_by(unknown, answer.extents):
        if inode is None:
            left.append((start, end))
        else:
            named.append((start, end, ("inode", inode)))
    left.sort()
    return ([(offset + s, offset + e, label) for s, e, label in named],
            [(offset + s, offset + e) for s, e in left])
