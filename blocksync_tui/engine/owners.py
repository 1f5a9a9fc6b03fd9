"""Provides find_owners: which files and file-system structures own the bytes that differ.

After a compare (never during one: it runs beside or after the run, on a worker of its own),
the worker on one side's host runs e2fsprogs read-only on each ext2/3/4 file system region
of that side: dumpe2fs names the structures (superblocks, group descriptors, bitmaps, inode
tables) and the free blocks, debugfs icheck finds the inode of every other differing block,
and ncheck the inode's paths. What none of them claims is unattributed, and says so. A region
that is mounted (ext4, xfs) is asked of its kernel first (kernel_owners.py), and e2fsprogs
reads only what the kernel leaves.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from blocksync_tui.engine import kernel_owners
from blocksync_tui.engine.api import Engine
from blocksync_tui.engine.connection import Connection, Frame
from blocksync_tui.engine.differences import differing_ranges, split_by
from blocksync_tui.engine.e2fs_text import FsLayout, parse_dumpe2fs, parse_icheck, parse_ncheck
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import BlocksyncError
from blocksync_tui.engine.transports import TransportFactory, local_only
from blocksync_tui.engine.worker import protocol as wire

FILE = "file"
"""An owner with a path (a file, a directory, a symbolic link)."""
INODE = "inode"
"""An inode in use that no directory names (deleted while open, or unlinked)."""
STRUCTURE = "structure"
"""File-system metadata: superblocks, descriptors, bitmaps, inode tables, journal, quotas."""
FREE = "free"
"""Blocks the file system does not use: what they hold is no file's."""
UNATTRIBUTED = "unattributed"
"""Bytes outside every file system looked at, or in one but claimed by nothing found."""
ATTRIBUTED_KINDS = (FILE, INODE, STRUCTURE)

MAX_BLOCKS = 65536
"""Blocks looked up with icheck at most (its cost grows with the blocks asked times the
blocks in use); the rest stay unattributed, and a note says so."""
DEFAULT_TIMEOUT = 60.0
KERNEL_SHARE = 0.5
"""Of the time left, what a mounted region's kernel answer may take: the rest is for e2fsprogs
to name what the kernel leaves."""


@dataclass(frozen=True)
class FsRegion:
    """Where a file system lies in a device or image: bytes [offset, offset + length)."""

    offset: int
    length: int
    fstype: str = ""
    """"ext4", "ext3", "ext2"; "" when unknown (e2fsprogs is asked, and says)."""
    name: str = ""
    """What the owners' names are prefixed with when there are several regions ("p2")."""


@dataclass(frozen=True)
class Owner:
    """One file or structure, and the differing bytes it owns."""

    name: str
    """A path, a structure's name, or "inode N (no path...)", or "unattributed"."""
    kind: str
    bytes: int
    runs: tuple[tuple[int, int], ...]
    """The chunks it covers, as (first chunk, count) runs in device order."""
    inode: int = 0
    region: str = ""
    paths: tuple[str, ...] = ()
    """Every name of a hard-linked inode (the first is `name`)."""

    @property
    def chunks(self) -> int:
        """How many chunks it covers."""
        return sum(count for _, count in self.runs)

    @property
    def label(self) -> str:
        """The name, prefixed with the region's ("p2: /etc/passwd") when it has one."""
        return f"{self.region}: {self.name}" if self.region else self.name

    def covers(self, first: int, count: int) -> bool:
        """Whether it owns part of chunks [first, first + count)."""
        return any(start < first + count and first < start + n for start, n in self.runs)


@dataclass(frozen=True)
class Owners:
    """The owners of one side's differing bytes, largest first (unattributed bytes among them)."""

    side: str
    owners: tuple[Owner, ...] = ()
    bytes_total: int = 0
    seconds: float = 0.0
    unavailable: str = ""
    """Why there are no owners (no debugfs there, not ext2/3/4, timed out...); "" if there are."""
    notes: tuple[str, ...] = ()
    """What limits the answer (coarse ranges, a lookup cut short), for the user."""
    regions: tuple[FsRegion, ...] = ()

    def bytes_of(self, *kinds: str) -> int:
        """Bytes owned by owners of these kinds."""
        return sum(o.bytes for o in self.owners if o.kind in kinds)

    @property
    def attributed(self) -> int:
        """Bytes owned by a file, an inode or a named structure."""
        return self.bytes_of(*ATTRIBUTED_KINDS)

    @property
    def fraction(self) -> float:
        """The share of the differing bytes attributed to a file or a structure."""
        return self.attributed / self.bytes_total if self.bytes_total else 1.0

    def of_run(self, first: int, count: int) -> list[Owner]:
        """The owners of chunks [first, first + count), largest first."""
        return [o for o in self.owners if o.covers(first, count)]

    def to_dict(self, limit: int = 1000) -> dict:
        """For the JSON report: the `limit` largest owners and the totals."""
        return {
            "side": self.side,
            "unavailable": self.unavailable,
            "bytes": self.bytes_total,
            "attributed_bytes": self.attributed,
            "free_bytes": self.bytes_of(FREE),
            "unattributed_bytes": self.bytes_of(UNATTRIBUTED),
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
            "owners": [
                {"name": o.name, "kind": o.kind, "inode": o.inode, "region": o.region, "bytes": o.bytes,
                 "chunks": o.chunks, "runs": [list(r) for r in o.runs[:100]], "paths": list(o.paths)}
                for o in self.owners[:limit]
            ],
        }


class Unavailable(Exception):
    """No owners can be told for a region, for the reason given."""


@dataclass
class _Tally:
    """Bytes and chunks per owner key while attributing."""

    chunk_size: int
    bytes: dict[tuple, int] = field(default_factory=dict)
    chunks: dict[tuple, list[tuple[int, int]]] = field(default_factory=dict)

    def add(self, key: tuple, start: int, end: int) -> None:
        """Bytes [start, end) of the device belong to `key`."""
        if end <= start:
            return
        self.bytes[key] = self.bytes.get(key, 0) + end - start
        first, last = start // self.chunk_size, (end - 1) // self.chunk_size
        spans = self.chunks.setdefault(key, [])
        if spans and spans[-1][1] >= first - 1:
            spans[-1] = (spans[-1][0], max(spans[-1][1], last))
        else:
            spans.append((first, last))

    def runs(self, key: tuple) -> tuple[tuple[int, int], ...]:
        merged: list[list[int]] = []
        for first, last in sorted(self.chunks[key]):
            if merged and first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        return tuple((first, last - first + 1) for first, last in merged)


def _clip(ranges: Iterable[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """The parts of byte ranges (offset, length) inside [start, end), as (start, end)."""
    out = []
    for offset, length in ranges:
        lo, hi = max(offset, start), min(offset + length, end)
        if lo < hi:
            out.append((lo, hi))
    return out


class _Lookup:
    """One side's worker, asked about one region after another, within one deadline."""

    def __init__(self, conn: Connection, path: str, deadline: float) -> None:
        self.conn = conn
        self.path = path
        self.deadline = deadline

    def ask(self, cmd: str, offset: int, args: Sequence[int] = ()) -> dict:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Unavailable("timed out")
        request = {"cmd": cmd, "path": self.path, "offset": offset, "args": list(args), "timeout": left}
        answer = self.conn.call_json(wire.OP_E2FS, request, timeout=left + 10)
        if "missing" in answer:
            raise Unavailable(f"no {answer['missing']} on {self.conn.transport.label} (e2fsprogs is not installed there)")
        if answer.get("timed_out"):
            raise Unavailable("timed out")
        return answer


def _attribute_region(
    lookup: _Lookup, region: FsRegion, pieces: list[tuple[int, int]], tally: _Tally, notes: list[str]
) -> None:
    """Attribute the differing byte pieces inside one region to its owners: by its kernel if it
    is mounted, then by e2fsprogs what the kernel left (all of it if it is not mounted)."""
    seconds = (lookup.deadline - time.monotonic()) * KERNEL_SHARE
    answer = None
    if seconds > 0:
        try:
            answer = kernel_owners.ask(lookup.conn, lookup.path, region.offset, region.length, pieces, seconds)
        except kernel_owners.Refused as exc:
            if region.fstype == "xfs":
                raise Unavailable(str(exc)) from None
            notes.append(f"{exc}: read with e2fsprogs instead")
    if answer is None:
        if region.fstype == "xfs":
            raise Unavailable("xfs, not mounted: only the kernel of a mount names its owners")
        _attribute_with_e2fs(lookup, region, pieces, tally, notes)
        return
    notes += kernel_owners.notes_of(answer, region.name)
    named, left = kernel_owners.classify(answer, pieces, region.offset)
    for start, end, label in named:
        tally.add(_kernel_key(label, answer, region.name), start, end)
    if not left:
        return
    try:
        if region.fstype == "xfs":
            raise Unavailable("in use, its owner unknown to the kernel")
        _attribute_with_e2fs(lookup, region, left, tally, notes)
    except Unavailable as exc:
        notes.append(f"{sum(e - s for s, e in left):,} bytes left unattributed: {exc}")
        for start, end in left:
            tally.add((UNATTRIBUTED,), start, end)


def _kernel_key(label: tuple, answer: kernel_owners.Answer, prefix: str) -> tuple:
    """The tally key of what the kernel says owns a part: an inode (a path the walk found, or
    none), a structure, free space."""
    if label[0] == "free":
        return (FREE, "free space", 0, prefix)
    if label[0] == "structure":
        return (STRUCTURE, label[1], 0, prefix)
    inode, paths = label[1], answer.names.get(label[1])
    if paths:
        return (FILE, paths[0], inode, prefix, tuple(paths) if len(paths) > 1 else ())
    return (INODE, f"inode {inode} (no path found under {answer.mount})", inode, prefix)


def _attribute_with_e2fs(
    lookup: _Lookup, region: FsRegion, pieces: list[tuple[int, int]], tally: _Tally, notes: list[str]
) -> None:
    """Attribute the differing byte pieces inside one region with dumpe2fs and debugfs."""
    answer = lookup.ask("layout", region.offset)
    layout = parse_dumpe2fs(str(answer.get("output", "")), bool(answer.get("truncated")))
    if layout is None:
        raise Unavailable(f"not an ext2/3/4 file system{' at offset ' + format(region.offset, ',') if region.offset else ''}")
    if layout.truncated:
        notes.append("dumpe2fs said too much: the structures of the last groups are not named")
    bs, base, prefix = layout.block_size, region.offset, region.name
    end_of_fs = base + min(region.length, layout.block_count * bs)
    outside = [(s, e) for s, e in pieces if e > end_of_fs]
    for start, end in outside:
        tally.add((UNATTRIBUTED,), max(start, end_of_fs), end)
    pieces = [(s, min(e, end_of_fs)) for s, e in pieces if s < end_of_fs]
    known = [(base + e.start * bs, base + (e.start + e.count) * bs, (STRUCTURE, e.name, 0, prefix))
             for e in layout.structures]
    known += [(base + first * bs, base + (first + count) * bs, (FREE, "free space", 0, prefix))
              for first, count in layout.free]
    known.sort(key=lambda k: k[0])
    rest: list[tuple[int, int]] = []
    for start, end, label in split_by(pieces, _disjoint(known)):
        if label is None:
            rest.append((start, end))
        else:
            tally.add(label, start, end)
    _attribute_blocks(lookup, region, layout, rest, tally, notes)


def _disjoint(extents: list[tuple[int, int, tuple]]) -> list[tuple[int, int, tuple]]:
    """Sorted extents with overlaps cut off (the first one claims what two claim)."""
    out: list[tuple[int, int, tuple]] = []
    for start, end, label in extents:
        if out and start < out[-1][1]:
            start = out[-1][1]
        if start < end:
            out.append((start, end, label))
    return out


def _attribute_blocks(
    lookup: _Lookup, region: FsRegion, layout: FsLayout, pieces: list[tuple[int, int]], tally: _Tally,
    notes: list[str],
) -> None:
    """The pieces no structure claims: each block's inode (icheck), each inode's paths (ncheck)."""
    bs, base, prefix = layout.block_size, region.offset, region.name
    blocks: dict[int, list[tuple[int, int]]] = {}
    for start, end in pieces:
        for block in range((start - base) // bs, (end - 1 - base) // bs + 1):
            if len(blocks) >= MAX_BLOCKS and block not in blocks:
                tally.add((UNATTRIBUTED,), max(start, base + block * bs), end)
                if not notes or "more than" not in notes[-1]:
                    notes.append(f"more than {MAX_BLOCKS:,} blocks differ: only the first were looked up")
                break
            lo, hi = max(start, base + block * bs), min(end, base + (block + 1) * bs)
            blocks.setdefault(block, []).append((lo, hi))
    if not blocks:
        return
    asked = sorted(blocks)
    answer = lookup.ask("icheck", region.offset, asked)
    owner = parse_icheck(str(answer.get("output", "")), set(asked), layout.inode_count or 1 << 32)
    inodes = sorted(set(owner.values()) - {2})
    names = {}
    if inodes:
        names = parse_ncheck(str(lookup.ask("ncheck", region.offset, inodes).get("output", "")), set(inodes))
    for block in asked:
        inode = owner.get(block)
        for start, end in blocks[block]:
            tally.add(_inode_key(inode, layout, names, prefix), start, end)


def _inode_key(inode: int | None, layout: FsLayout, names: dict[int, list[str]], prefix: str) -> tuple:
    """The tally key of what an inode is: a path, a structure, an inode without a path."""
    if inode is None:
        return (UNATTRIBUTED,)
    if inode in names:
        links = tuple(names[inode]) if len(names[inode]) > 1 else ()
        return (FILE, names[inode][0], inode, prefix, links)
    if inode == 2:
        return (FILE, "/", 2, prefix)
    if inode in layout.special:
        return (STRUCTURE, f"{layout.special[inode]} (inode {inode})", inode, prefix)
    return (INODE, f"inode {inode} (no path: deleted or unlinked)", inode, prefix)


def find_owners(
    endpoint: Endpoint,
    ranges: Sequence[tuple[int, int]],
    chunk_size: int,
    regions: Sequence[FsRegion],
    side: str = "source",
    factory: TransportFactory = local_only,
    timeout: float = DEFAULT_TIMEOUT,
    notes: Sequence[str] = (),
) -> Owners:
    """Name the owners of the differing byte ranges (offset, length) of one side.

    Args:
        endpoint: The side whose file systems are read (its worker runs e2fsprogs there).
        ranges: Differing bytes of the device, sorted, not overlapping.
        chunk_size: The run's chunk size, to say which chunks each owner covers.
        regions: Where its file systems are (the whole device: `FsRegion(0, size)`).
        side: "source" or "destination", for the result.
        factory: How to reach the endpoint's host.
        timeout: Seconds for the whole lookup.
        notes: What the caller knows limits the answer (ranges known only by whole chunks).

    Returns:
        The owners; `unavailable` says why there are none (never raises for that).
    """
    started = time.monotonic()
    tally = _Tally(chunk_size)
    notes_out = list(notes)
    total = sum(length for _, length in ranges)
    reasons: list[str] = []
    covered: list[tuple[int, int]] = []
    conn: Connection | None = None
    try:
        conn = Connection(factory(endpoint), side, queue.Queue[Frame]())
        conn.start()
        lookup = _Lookup(conn, endpoint.path, started + timeout)
        for region in sorted(regions, key=lambda r: r.offset):
            pieces = _clip(ranges, region.offset, region.offset + region.length)
            if not pieces:
                continue
            try:
                _attribute_region(lookup, region, pieces, tally, notes_out)
                covered.append((region.offset, region.offset + region.length))
            except Unavailable as exc:
                reasons.append(str(exc))
                if str(exc) == "timed out":
                    break
    except BlocksyncError as exc:
        reasons.append(str(exc))
    finally:
        if conn is not None:
            conn.close()
    if reasons and not covered:
        said = [f"timed out after {timeout:g} s" if r == "timed out" else r for r in reasons]
        reason = "; ".join(dict.fromkeys(said))
        return Owners(side, bytes_total=total, seconds=time.monotonic() - started, unavailable=reason,
                      notes=tuple(notes_out), regions=tuple(regions))
    notes_out += [f"not looked at: {reason}" for reason in reasons]
    for start, end, label in split_by([(o, o + n) for o, n in ranges], [(s, e, True) for s, e in covered]):
        if label is None:
            tally.add((UNATTRIBUTED,), start, end)
    owners = [_owner(key, tally) for key in tally.bytes]
    owners.sort(key=lambda o: (-o.bytes, o.name))
    return Owners(side, tuple(owners), total, time.monotonic() - started, notes=tuple(notes_out),
                  regions=tuple(regions))


def owners_after(
    engine: Engine,
    side: str = "source",
    factory: TransportFactory = local_only,
    regions: Sequence[FsRegion] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Owners:
    """The owners, on one side, of what a finished run of `engine` found differing.

    Args:
        engine: A compare or sync that has run (its chunk map and its `differences`).
        side: "source" or "destination": whose file systems name the bytes.
        factory: How to reach that side's host (the run's SSH options).
        regions: Its file systems; by default the whole device is taken for one.
        timeout: Seconds for the whole lookup.
    """
    chunk_size = engine.options.chunk_size
    ranges, whole, cut = differing_ranges(engine.chunk_map, engine.differences, chunk_size, engine.size)
    notes = []
    if whole:
        notes.append(f"{whole:,} differing chunks are known only whole: all they hold is counted")
    if cut:
        notes.append(f"only the first {len(ranges):,} differing ranges were looked up")
    endpoint = engine.source if side == "source" else engine.destination
    if regions is None:
        # The side's partition table, once the engine reads one (its `source_layout` and
        # `destination_layout`); until then the whole device is taken for one file system.
        regions = regions_of(getattr(engine, f"{side}_layout", None), engine.size)
    if not regions:
        return Owners(side, bytes_total=sum(n for _, n in ranges), unavailable="no ext2/3/4 or xfs file system in its partitions")
    return find_owners(endpoint, ranges, chunk_size, regions, side, factory, timeout, notes)


FS_TYPES = ("ext2", "ext3", "ext4", "xfs")
"""The file systems looked at: e2fsprogs reads ext2/3/4, the kernel of a mount ext4 and xfs."""


def regions_of(layout: object | None, size: int) -> list[FsRegion]:
    """The ext2/3/4 and xfs file systems a side's layout shows (its partitions, by start, length,
    file-system type and label "p2"; or one on the whole device); without a layout, the whole
    device, for e2fsprogs to tell."""
    if layout is None:
        return [FsRegion(0, size)]
    partitions = getattr(layout, "partitions", ())
    found = [FsRegion(p.start, p.length, p.fs.type, p.label) for p in partitions
             if p.fs is not None and p.fs.type in FS_TYPES]
    whole = getattr(layout, "fs", None)
    if not found and whole is not None and whole.type in FS_TYPES:
        found = [FsRegion(0, size, whole.type)]
    if not found and not partitions and whole is None:
        found = [FsRegion(0, size)]  # nothing recognised: let e2fsprogs say
    return found


def _owner(key: tuple, tally: _Tally) -> Owner:
    kind = key[0]
    if kind == UNATTRIBUTED:
        return Owner("unattributed", UNATTRIBUTED, tally.bytes[key], tally.runs(key))
    name, inode, region = key[1], key[2], key[3]
    paths = key[4] if len(key) > 4 else ()
    return Owner(name, kind, tally.bytes[key], tally.runs(key), inode, region, paths)
