"""Provides the destination digest cache: the chunk (and sub-block) digests a run leaves known
of a destination, kept on the controller so that the next run of it reads only the source.

One small file per destination under `$XDG_CACHE_HOME/blocksync-tui/` (default
`~/.cache/blocksync-tui/`), named after the destination as the user wrote it. It holds the
destination's identity (host, path, size, and a file's device, inode and mtime, or a block
device's WWN, serial, UUIDs or loop backing file), the geometry and hashes it was taken with,
then one state byte and one digest per chunk, and the sub-block digests of each chunk while
they fit SUBS_LIMIT. It is written atomically (a temporary file, fsync, rename) and read with
every field checked: a cache that does not parse is ignored, with a warning, never trusted.

Nothing here talks to a worker: the engine decides when a cache applies (`SyncEngine`), the
pipeline reads and records digests (`pipeline.Transfer`), and a sample of the chunks is re-read
on the destination before a cache is believed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from blocksync_tui.engine.preflight import Flushed, Opened
from blocksync_tui.engine.prior import sample_size
from blocksync_tui.engine.worker import protocol as wire

VERSION = 1
MAGIC = b"BLOCKSYNC-DIGESTS\n"
HEAD = 4
"""Bytes of the header's length, after the magic."""
HEADER_LIMIT = 64 << 10
CHECK = hashlib.sha256
CHECK_SIZE = 32
"""A SHA-256 of everything before it ends the file: a torn or corrupt file never parses."""
SUBS_LIMIT = 64 << 20
"""Sub-block digests are kept while they take at most this much (a device of 32 GiB, at 4 KiB
sub-blocks): beyond, only chunk digests are, and a differing chunk costs a read of that chunk
on the destination."""
SUFFIX = ".digests"

DATA, ZERO, HOLE = 1, 2, 3
"""A chunk's state byte in the file (0, not known, never appears in one)."""
CODE_OF_FLAG = {wire.FLAG_DATA: DATA, wire.FLAG_ZERO: ZERO, wire.FLAG_HOLE: HOLE}
FLAG_OF_CODE = {code: flag for flag, code in CODE_OF_FLAG.items()}


class CacheError(Exception):
    """A cache file that cannot be used, and why (one line)."""


def cache_dir() -> Path:
    """Where caches live: $XDG_CACHE_HOME/blocksync-tui, else ~/.cache/blocksync-tui."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "blocksync-tui"


def cache_path(destination: str, directory: Path | None = None) -> Path:
    """The cache file of a destination, named by the endpoint as written ("host:/dev/sdb")."""
    name = hashlib.sha256(destination.encode()).hexdigest()[:32]
    return (directory or cache_dir()) / (name + SUFFIX)


@dataclass(frozen=True)
class CacheLayout:
    """How the digests of a cache were taken: over which bytes, in which chunks, with what."""

    size: int
    """The bytes of the destination the chunks cover (the source's size)."""
    chunk_size: int
    algorithm: str
    digest_size: int
    sub_algorithm: str = ""
    """The sub-block digest, or "" when no sub-block digests are kept."""
    sub_block: int = 0

    @property
    def total(self) -> int:
        """The number of chunks."""
        return -(-self.size // self.chunk_size)

    @property
    def stride(self) -> int:
        """Bytes of sub-block digests per chunk (0: none kept)."""
        if not self.sub_algorithm:
            return 0
        return -(-self.chunk_size // self.sub_block) * wire.SUB_DIGEST_SIZE

    def describe(self) -> str:
        return f"{self.chunk_size:,}-byte chunks of {self.size:,} bytes, {self.algorithm}"


def subs_fit(total: int, chunk_size: int, sub_block: int) -> bool:
    """Whether the sub-block digests of `total` chunks fit SUBS_LIMIT."""
    return total * -(-chunk_size // sub_block) * wire.SUB_DIGEST_SIZE <= SUBS_LIMIT


# -- identity


def identity(host: str, opened: Opened, after: Flushed | None = None, boot_id: str = "") -> dict:
    """What a destination is, for a cache to apply to it: the host (its SSH host key and
    machine id), the path, the kind and size; for a file its device, inode, mtime and ctime
    (ns: no program can set a ctime back, as os.utime can an mtime); for a block device its
    stable names (WWN, serial, UUIDs, loop backing file; one without any is known by its
    number, st_rdev) and, within one boot, its count of sectors written. `after` is the
    destination as the final flush found it, after our writes (which changed those)."""
    source: Opened | Flushed = after if after is not None else opened
    dev, ino, rdev = source.identity or (0, 0, 0)
    found: dict = {"host": host, "path": opened.realpath, "kind": opened.kind, "size": source.size}
    if opened.kind == "file":
        found.update(dev=dev, ino=ino, mtime_ns=source.mtime_ns, ctime_ns=source.ctime_ns)
        return found
    if opened.ids:
        found["ids"] = [list(pair) for pair in opened.ids]
    else:
        found["rdev"] = rdev
    if source.sectors_written >= 0 and boot_id:
        found["written"] = {"boot": boot_id, "sectors": source.sectors_written}
    return found


_CHANGES = (
    ("host", "another host"),
    ("path", "another path"),
    ("kind", "another kind of destination"),
    ("size", "size"),
    ("dev", "another file: device"),
    ("ino", "another file: inode"),
    ("mtime_ns", "mtime"),
    ("ctime_ns", "ctime: its inode changed"),
    ("ids", "another device: WWN, serial or UUID"),
    ("rdev", "another device number"),
)


def change(kept: dict, now: dict) -> str | None:
    """What differs between a kept identity and the destination now, in a few words; None if
    nothing does. A device's write counter counts only within one boot: after a reboot only
    the sample can tell."""
    for key, words in _CHANGES:
        if kept.get(key) != now.get(key):
            return words
    then, since = kept.get("written"), now.get("written")
    if isinstance(then, dict) and isinstance(since, dict) and then.get("boot") == since.get("boot"):
        if then.get("sectors") != since.get("sectors"):
            return "written since: its count of sectors written moved"
    return None


# -- the digests of one destination


class DigestCache:
    """The digests of every chunk of a destination, with the identity they belong to; or, for
    one lane of a parallel run (a part, merged by `merge`), of chunks first..first+count-1."""

    def __init__(self, destination: str, ident: dict, layout: CacheLayout, states: bytes | bytearray,
                 digests: bytes | bytearray, subs: bytes | bytearray = b"", first: int = 0) -> None:
        self.destination = destination
        """The endpoint as the user wrote it."""
        self.identity = ident
        self.layout = layout
        self.states = states
        self.digests = digests
        self.subs = subs
        self.first = first

    def entry(self, index: int) -> tuple[int, bytes]:
        """(wire flag, digest) of a chunk, as a DIGESTS entry says it: b"" unless data."""
        at = index - self.first
        flag = FLAG_OF_CODE[self.states[at]]
        if flag != wire.FLAG_DATA:
            return flag, b""
        size = self.layout.digest_size
        return flag, bytes(self.digests[at * size : (at + 1) * size])

    def sub_digests(self, index: int) -> bytes | None:
        """A data chunk's sub-block digests, if kept."""
        stride, at = self.layout.stride, index - self.first
        if not stride or self.states[at] != DATA:
            return None
        offset, length = index * self.layout.chunk_size, self.layout.chunk_size
        length = min(length, self.layout.size - offset)
        blocks = -(-length // self.layout.sub_block)
        return bytes(self.subs[at * stride : at * stride + blocks * wire.SUB_DIGEST_SIZE])

    def matches(self, index: int, digest: bytes | None) -> bool:
        """Whether a chunk read now (its digest; b"" for zeros, None unreadable) is what the
        cache says. A hole and allocated zeros are the same bytes: a zero chunk we wrote to a
        file became a hole."""
        flag, kept = self.entry(index)
        if digest is None:
            return False
        return digest == kept if flag == wire.FLAG_DATA else digest == b""


class Record:
    """The digests of a destination as a run leaves it, filled in chunk by chunk; a chunk that
    stays unknown (or `broken`) means no cache is kept."""

    def __init__(self, layout: CacheLayout) -> None:
        self.layout = layout
        total = layout.total
        self.states = bytearray(total)
        self.digests = bytearray(total * layout.digest_size)
        self.subs = bytearray(total * layout.stride)
        self.broken = ""
        """Why this run cannot leave a cache after all (a resend, a differing dry-run chunk)."""

    def chunk(self, index: int, flag: int, digest: bytes) -> None:
        """What chunk `index` holds now: a wire flag and, for data, its digest."""
        self.states[index] = CODE_OF_FLAG[flag]
        if flag == wire.FLAG_DATA:
            size = self.layout.digest_size
            self.digests[index * size : (index + 1) * size] = digest

    def sub_digests(self, index: int, digests: bytes) -> None:
        """A data chunk's sub-block digests."""
        stride = self.layout.stride
        self.subs[index * stride : index * stride + len(digests)] = digests

    def take(self, cache: DigestCache, first: int, end: int) -> None:
        """Start chunks first..end-1 as `cache` knows them (of the same layout): what the run
        does not read (a prior settles it) stays so, the rest it overwrites."""
        d, s, at = self.layout.digest_size, self.layout.stride, first - cache.first
        count = end - first
        self.states[first:end] = cache.states[at : at + count]
        self.digests[first * d : end * d] = cache.digests[at * d : (at + count) * d]
        self.subs[first * s : end * s] = cache.subs[at * s : (at + count) * s]

    def unknown(self, first: int, end: int) -> int:
        """How many chunks of first..end-1 are not known."""
        return self.states.count(0, first, end)

    def cache(self, destination: str, ident: dict, first: int = 0, end: int | None = None) -> DigestCache:
        """The cache of chunks first..end-1 (a lane's part), or of them all."""
        end = self.layout.total if end is None else end
        d, s = self.layout.digest_size, self.layout.stride
        return DigestCache(destination, ident, self.layout, self.states[first:end],
                           self.digests[first * d : end * d], self.subs[first * s : end * s], first)


# -- the file


def save(path: Path, cache: DigestCache) -> None:
    """Write a cache atomically: a temporary file in the same directory, fsync, rename."""
    layout = cache.layout
    count = len(cache.states)
    header = json.dumps({
        "version": VERSION,
        "destination": cache.destination,
        "identity": cache.identity,
        "size": layout.size,
        "chunk_size": layout.chunk_size,
        "algorithm": layout.algorithm,
        "digest_size": layout.digest_size,
        "sub_algorithm": layout.sub_algorithm,
        "sub_block": layout.sub_block,
        "first": cache.first,
        "count": count,
    }, sort_keys=True).encode()
    body = [MAGIC, len(header).to_bytes(HEAD, "big"), header, cache.states, cache.digests, cache.subs]
    check = CHECK()
    for part in body:
        check.update(part)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for part in body:
                f.write(part)
            f.write(check.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself, durable
    finally:
        os.close(fd)


def load(path: Path, whole: bool = True) -> DigestCache:
    """Read a cache file and check every field; unless `whole` is False, it must cover every
    chunk (not be one lane's part).

    Raises:
        FileNotFoundError: there is none.
        CacheError: it is truncated, corrupt, or of another version.
    """
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + HEAD)
        if len(head) < len(MAGIC) + HEAD or not head.startswith(MAGIC):
            raise CacheError("not a digest cache (or truncated)")
        length = int.from_bytes(head[len(MAGIC):], "big")
        if length > HEADER_LIMIT:
            raise CacheError(f"a header of {length} bytes")
        raw = f.read(length)
        if len(raw) != length:
            raise CacheError("truncated header")
        try:
            header = json.loads(raw)
            destination, ident, layout = _checked_header(header)
        except (ValueError, TypeError, KeyError) as exc:
            raise CacheError(f"a malformed header ({exc})") from None
        first, total = int(header.get("first", 0)), int(header["count"])
        if whole and (first, total) != (0, layout.total):
            raise CacheError(f"it covers chunks {first}..{first + total} of {layout.total}")
        dsize, stride = layout.digest_size, layout.stride
        expected = total * (1 + dsize + stride)
        body = f.read(expected + CHECK_SIZE + 1)
    if len(body) != expected + CHECK_SIZE:
        raise CacheError(f"{len(body)} bytes of digests where {expected + CHECK_SIZE} were due")
    check = CHECK(head + raw + body[:expected]).digest()
    if check != body[expected:]:
        raise CacheError("its checksum does not match (corrupt)")
    states = body[:total]
    if states.translate(None, bytes((DATA, ZERO, HOLE))):
        raise CacheError("an unknown chunk state")
    digests = body[total : total * (1 + dsize)]
    return DigestCache(destination, ident, layout, states, digests, body[total * (1 + dsize) : expected], first)


def _checked_header(header: dict) -> tuple[str, dict, CacheLayout]:
    if header["version"] != VERSION:
        raise ValueError(f"version {header['version']!r}")
    size, chunk_size, count = int(header["size"]), int(header["chunk_size"]), int(header["count"])
    if chunk_size & (chunk_size - 1) or not 4096 <= chunk_size <= wire.MAX_CHUNK_SIZE or size < 0:
        raise ValueError(f"chunk size {chunk_size}, size {size}")
    algorithm, sub_algorithm = str(header["algorithm"]), str(header["sub_algorithm"])
    if algorithm not in wire.CHUNK_HASHES or (sub_algorithm and sub_algorithm not in wire.HASHES):
        raise ValueError(f"hashes {algorithm!r}, {sub_algorithm!r}")
    digest_size, sub_block = int(header["digest_size"]), int(header["sub_block"])
    if not 0 < digest_size <= 64:
        raise ValueError(f"digest size {digest_size}")
    if sub_algorithm and (sub_block & (sub_block - 1) or not 0 < sub_block <= chunk_size):
        raise ValueError(f"sub-block {sub_block}")
    layout = CacheLayout(size, chunk_size, algorithm, digest_size, sub_algorithm, sub_block if sub_algorithm else 0)
    first = int(header.get("first", 0))
    if not 0 <= first <= first + count <= layout.total or layout.total * layout.stride > SUBS_LIMIT:
        raise ValueError(f"chunks {first}..{first + count}")
    ident = header["identity"]
    if not isinstance(ident, dict):
        raise TypeError("identity")
    return str(header["destination"]), ident, layout


def part_path(path: Path, lane: tuple[int, int]) -> Path:
    """Where lane k of n of a parallel run keeps its share, until `merge` joins the shares."""
    return path.with_name(f"{path.name}.part{lane[0]}of{lane[1]}")


def merge(path: Path, lanes: int) -> bool:
    """Join the shares the lanes of a parallel run kept into one cache, and remove them; False
    (and no cache) unless they tile the chunks and agree on the destination. Its mtime is the
    last any lane saw after its own final flush: what the file has after the last write."""
    parts = [part_path(path, (k, lanes)) for k in range(lanes)]
    try:
        loaded = [load(part, whole=False) for part in parts]
    except (OSError, CacheError):
        return False
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
    first = loaded[0]
    moving = {"mtime_ns": 0, "ctime_ns": 0, "written": 0}  # what each lane's own writes moved
    same = {json.dumps({**c.identity, **moving}, sort_keys=True) for c in loaded}
    starts = [c.first for c in loaded]
    ends = [c.first + len(c.states) for c in loaded]
    if len(same) != 1 or any(c.layout != first.layout for c in loaded) or starts[0] != 0 \
            or starts[1:] != ends[:-1] or ends[-1] != first.layout.total:
        return False
    ident = dict(first.identity)
    for key in ("mtime_ns", "ctime_ns"):
        if key in ident:
            ident[key] = max(c.identity[key] for c in loaded)
    if isinstance(ident.get("written"), dict):
        ident["written"] = {**ident["written"], "sectors": max(c.identity["written"]["sectors"] for c in loaded)}
    whole = DigestCache(first.destination, ident, first.layout, b"".join(c.states for c in loaded),
                        b"".join(c.digests for c in loaded), b"".join(c.subs for c in loaded))
    save(path, whole)
    return True


def forget(destinations: list[str], directory: Path | None = None) -> int:
    """Remove the caches of these destinations (as written, e.g. "host:/dev/sdb"), or every
    cache when none is named; the number removed."""
    directory = directory or cache_dir()
    if destinations:
        paths = [cache_path(name, directory) for name in destinations]
    else:
        paths = sorted(directory.glob("*" + SUFFIX)) if directory.is_dir() else []
    removed = 0
    for path in paths:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def sample(first: int, end: int, rng: random.Random | None = None) -> list[int]:
    """The chunks of first..end-1 to re-read before trusting a cache, at random, in order: as
    many as a prior's sample (engine.prior: 0.1%, at least 64, all if fewer)."""
    return sorted((rng or random.SystemRandom()).sample(range(first, end), sample_size(end - first)))
