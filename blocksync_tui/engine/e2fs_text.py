"""Provides the parsers of what e2fsprogs prints on a worker's host: dumpe2fs (the file system's
geometry, structures and free blocks), debugfs icheck (blocks to inodes) and ncheck (inodes to
paths).

The text comes from another host and describes a file system anyone may have crafted, so the
parsers are strict and bounded: a line that does not parse is skipped, every block and inode
number is checked against the file system's own geometry, and an answer about a block or an
inode nobody asked about is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_LINES = 4_000_000
"""Lines of one tool's output read at most (the worker already cuts it at 16 MiB)."""
MAX_NAMES = 8
"""Names kept per inode (hard links); more are counted, not kept."""

SPECIAL_INODES = {
    1: "bad blocks inode",
    2: "/",
    3: "user quota",
    4: "group quota",
    5: "boot loader inode",
    6: "undelete directory",
    7: "resize inode (reserved GDT blocks)",
    8: "journal",
    9: "exclude bitmap",
    10: "replica inode",
}
"""What the reserved inodes below the first ordinary one hold (ext4's on-disk layout)."""


@dataclass(frozen=True)
class Extent:
    """Consecutive blocks of one file-system structure."""

    start: int
    count: int
    name: str


@dataclass
class FsLayout:
    """What dumpe2fs says of a file system: geometry, named structures, free blocks."""

    block_size: int
    block_count: int
    first_block: int = 0
    inode_count: int = 0
    inodes_per_group: int = 0
    inode_size: int = 256
    label: str = ""
    features: tuple[str, ...] = ()
    structures: list[Extent] = field(default_factory=list)
    """Superblocks, group descriptors, reserved GDT blocks, bitmaps and inode tables, by start."""
    free: list[tuple[int, int]] = field(default_factory=list)
    """(first block, count) of every free extent, by start."""
    special: dict[int, str] = field(default_factory=lambda: dict(SPECIAL_INODES))
    """Names of the inodes that hold structures (journal, quotas...), by number."""
    truncated: bool = False
    """The output was cut short: structures of the last groups may be missing."""

    @property
    def fstype(self) -> str:
        """ext4, ext3 or ext2, as blkid would tell them apart (by features)."""
        ext4 = {"extent", "extents", "flex_bg", "64bit", "huge_file", "metadata_csum", "dir_nlink"}
        if ext4 & set(self.features):
            return "ext4"
        return "ext3" if "has_journal" in self.features else "ext2"


_HEADER = re.compile(r"^([A-Za-z][A-Za-z #/]*?):\s*(.*?)\s*$")
_GROUP = re.compile(r"^Group (\d+): \(Blocks (\d+)-(\d+)\)")
_AT = re.compile(
    r"(Primary superblock|Backup superblock|Group descriptors?|Reserved GDT blocks|Block bitmap|"
    r"Inode bitmap|Inode table) at (\d+)(?:-(\d+))?"
)
_FREE = re.compile(r"^\s+Free blocks: (.*)$")
_NUMBER_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def _int(text: str, default: int = 0) -> int:
    match = re.match(r"\d+", text)
    return int(match.group()) if match else default


def parse_dumpe2fs(text: str, truncated: bool = False) -> FsLayout | None:
    """The layout dumpe2fs printed, or None if it holds no ext2/3/4 header."""
    header: dict[str, str] = {}
    lines = text.splitlines()[:MAX_LINES]
    at = 0
    for at, line in enumerate(lines):
        if _GROUP.match(line):
            break
        match = _HEADER.match(line)
        if match:
            header[match.group(1)] = match.group(2)
    if header.get("Filesystem magic number", "").lower() != "0xef53":
        return None
    layout = FsLayout(
        block_size=_int(header.get("Block size", "")),
        block_count=_int(header.get("Block count", "")),
        first_block=_int(header.get("First block", "")),
        inode_count=_int(header.get("Inode count", "")),
        inodes_per_group=_int(header.get("Inodes per group", "")),
        inode_size=_int(header.get("Inode size", ""), 256),
        label="" if header.get("Filesystem volume name") == "<none>" else header.get("Filesystem volume name", ""),
        features=tuple(header.get("Filesystem features", "").split()),
        truncated=truncated,
    )
    if not 1024 <= layout.block_size <= 65536 or layout.block_count <= 0:
        return None
    for key, value in header.items():  # "Journal inode: 8", "User quota inode: 3", ...
        if key.endswith(" inode") and key != "First inode" and value.isdigit():
            number = int(value)
            if 0 < number <= max(layout.inode_count, 11):
                layout.special[number] = key[: -len(" inode")].lower()
    if layout.first_block:
        layout.structures.append(Extent(0, layout.first_block, "boot block (not used by the file system)"))
    group = -1
    for line in lines[at:]:
        match = _GROUP.match(line)
        if match:
            group = int(match.group(1))
            continue
        if group < 0:
            continue
        free = _FREE.match(line)
        if free:
            for first, last in _NUMBER_RANGE.findall(free.group(1)):
                _add(layout.free, layout, int(first), int(last or first))
            continue
        for what, first, last in _AT.findall(line):
            name = _structure_name(what, group, layout)
            extent = _checked(layout, int(first), int(last or first), name)
            if extent is not None:
                layout.structures.append(extent)
    layout.structures.sort(key=lambda e: e.start)
    layout.free.sort()
    return layout


_NAMES = {"Reserved GDT blocks": "reserved GDT blocks", "Block bitmap": "block bitmap",
          "Inode bitmap": "inode bitmap", "Inode table": "inode table"}


def _structure_name(what: str, group: int, layout: FsLayout) -> str:
    if what == "Primary superblock":
        return "superblock"
    if what == "Backup superblock":
        return f"superblock backup (group {group})"
    if what.startswith("Group descriptor"):
        return "group descriptors" + (f" backup (group {group})" if group else "")
    if what == "Inode table" and layout.inodes_per_group:
        first = group * layout.inodes_per_group + 1
        return f"inode table, group {group} (inodes {first}-{first + layout.inodes_per_group - 1})"
    return f"{_NAMES.get(what, what)} (group {group})"


def _checked(layout: FsLayout, first: int, last: int, name: str) -> Extent | None:
    """An extent of blocks inside the file system, or None."""
    if first > last or last >= layout.block_count:
        return None
    return Extent(first, last - first + 1, name)


def _add(free: list[tuple[int, int]], layout: FsLayout, first: int, last: int) -> None:
    if first <= last < layout.block_count:
        free.append((first, last - first + 1))


def parse_icheck(text: str, asked: set[int], inode_count: int) -> dict[int, int]:
    """The inode owning each block that debugfs icheck found, of those asked."""
    found: dict[int, int] = {}
    for line in text.splitlines()[:MAX_LINES]:
        block, _, inode = line.partition("\t")
        if block.isdigit() and inode.isdigit():
            b, i = int(block), int(inode)
            if b in asked and 0 < i <= inode_count:
                found[b] = i
    return found


def parse_ncheck(text: str, asked: set[int]) -> dict[int, list[str]]:
    """The paths debugfs ncheck found for each inode asked (hard links: several).

    A file name holding a newline continues on the next line of ncheck's output; such a line
    is joined to the name before it (it cannot be told from a crafted one: see the README).
    """
    names: dict[int, list[str]] = {}
    last: list[str] | None = None
    for line in text.splitlines()[:MAX_LINES]:
        inode, tab, path = line.partition("\t")
        if tab and inode.isdigit() and path.startswith("/"):
            number = int(inode)
            if number not in asked:
                last = None
                continue
            paths = names.setdefault(number, [])
            if len(paths) < MAX_NAMES:
                paths.append("/" + path.lstrip("/"))  # ncheck writes names in / as //name
                last = paths
            else:
                last = None
        elif last is not None and line and line != "Inode\tPathname":
            last[-1] += "\n" + line
    return names
