"""Provides generators of demo and benchmark image pairs with realistic change patterns.

Stdlib only, so that the benchmark and the tests can use it without Textual. Everything is
derived from a seed: the same seed gives byte-identical files.
"""

from __future__ import annotations

import math
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB

PAGE = 4 * KiB
"""Granularity of the scattered writes: a filesystem block / memory page."""

DEFAULT_TAIL = 12345
"""Bytes added to the requested size so that no chunk size divides the image."""

_POOL_SIZE = 32 * MiB
_PIECE = 16 * KiB
_WRITE_BLOCK = 8 * MiB


def _pool_size(image_size: int) -> int:
    return min(_POOL_SIZE, max(2 * MiB, image_size // 4))


_VOCABULARY = (
    "the and for with from this that disk block sector chunk image volume partition kernel mount "
    "inode journal extent superblock backup snapshot restore sync hash digest write read error "
    "warning info debug user root host server client session request reply status ok"
)
_WORDS = _VOCABULARY.split()
_DAEMONS = ("sshd", "kernel", "systemd", "cron", "nginx", "postgres", "rsyslogd", "dockerd")


class RandomStream:
    """A fast, seeded source of incompressible bytes.

    `random.Random.randbytes`, `os.urandom` and `hashlib.shake_128` all run at only
    ~150-300 MB/s here, too slow for a 1 GiB benchmark pair. Instead the stream concatenates
    16 KiB pieces cut at random byte offsets from a 32 MiB seeded pool, which runs at memory
    speed. The output does not compress (a codec's window sees a repeat only by chance, ~3% of
    bytes for a 1 MiB window) and no block of a few pieces ever recurs, so neither zero
    detection, compression nor rsync's rolling checksum gets a shortcut through it.
    """

    def __init__(self, seed: int, pool_size: int = _POOL_SIZE) -> None:
        """Build the pool.

        Args:
            seed: Seed of the generator; equal seeds and pool sizes give equal streams.
            pool_size: Size of the pool; small images need less (and it costs ~7 ms per MiB).
        """
        self._rng = random.Random(seed)
        self._pool_size = pool_size
        pool = self._rng.randbytes(pool_size)
        # Extended so that any offset in the pool yields a full piece without wrapping.
        self._pool = pool + pool[:_PIECE]

    def read(self, length: int) -> bytes:
        """Return the next `length` bytes of the stream.

        Args:
            length: Number of bytes wanted.

        Returns:
            The bytes.
        """
        randrange, pool, pool_size = self._rng.randrange, self._pool, self._pool_size
        parts = []
        for done in range(0, length, _PIECE):
            start = randrange(pool_size)
            parts.append(pool[start : start + min(_PIECE, length - done)])
        return b"".join(parts)


class TextStream:
    """A seeded source of compressible, log- and document-like text."""

    def __init__(self, seed: int, pool_size: int = MiB) -> None:
        """Generate a text pool to draw from.

        Args:
            seed: Seed of the generator.
            pool_size: Size of the generated text pool; output is cut from it.
        """
        self._rng = random.Random(seed)
        rng = self._rng
        lines = []
        total = 0
        while total < pool_size:
            if rng.random() < 0.6:
                line = (
                    f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
                    f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} "
                    f"host{rng.randint(1, 9)} {rng.choice(_DAEMONS)}[{rng.randint(100, 32000)}]: "
                    + " ".join(rng.choices(_WORDS, k=rng.randint(4, 14)))
                    + "\n"
                )
            else:
                line = " ".join(rng.choices(_WORDS, k=rng.randint(8, 20))).capitalize() + ".\n"
            lines.append(line)
            total += len(line)
        self._pool = "".join(lines).encode()

    def read(self, length: int) -> bytes:
        """Return `length` bytes of text, cut from the pool at random offsets.

        Args:
            length: Number of bytes wanted.

        Returns:
            The bytes.
        """
        parts = []
        remaining = length
        while remaining > 0:
            n = min(remaining, len(self._pool) // 2)
            start = self._rng.randrange(len(self._pool) - n + 1)
            parts.append(self._pool[start : start + n])
            remaining -= n
        return b"".join(parts)


@dataclass(frozen=True)
class Extent:
    """A stretch of the source image filled with one kind of data."""

    offset: int
    length: int
    kind: str
    """"random" (binaries, compressed files), "text" (logs, documents) or "zero" (unused space)."""


@dataclass(frozen=True)
class Change:
    """A stretch of the destination that was rewritten relative to the source."""

    offset: int
    length: int
    kind: str
    """"page" (scattered 4 KiB write), "cluster" (rewritten file), "zeroed" (data on the source,
    zeros on the destination), "filled" (zeros on the source, stale data on the destination)
    or "tail" (a few bytes in the last, partial chunk)."""


@dataclass(frozen=True)
class PairPlan:
    """Where `make_pair` puts data and changes, so tests can check the files against it."""

    size: int
    extents: tuple[Extent, ...]
    changes: tuple[Change, ...]

    def changed_pages(self, page: int = PAGE) -> set[int]:
        """Return the indexes of the `page`-sized pages touched by any change.

        Args:
            page: Page size in bytes.

        Returns:
            The set of page indexes.
        """
        pages: set[int] = set()
        for change in self.changes:
            pages.update(
                range(change.offset // page, (change.offset + change.length - 1) // page + 1)
            )
        return pages


def plan_pair(
    size: int = 256 * MiB, seed: int = 1, chunk_hint: int = MiB, tail: int = DEFAULT_TAIL
) -> PairPlan:
    """Lay out a plausible disk image and the changes that turn it into the destination.

    Args:
        size: Nominal image size; the files are `size + tail` bytes long.
        seed: Seed of the layout and of the changes.
        chunk_hint: Chunk size a sync tool will likely use; clustered changes are placed across
            its boundaries.
        tail: Bytes added to `size`; keep it not a multiple of the chunk size.

    Returns:
        The plan.

    Raises:
        ValueError: If the image would be smaller than 1 MiB.
    """
    if size < MiB:
        raise ValueError(f"demo images need at least 1 MiB, got {size} bytes")
    rng = random.Random(seed)
    total = size + tail
    max_extent = max(PAGE, min(16 * MiB, size // 8) // PAGE * PAGE)

    extents = []
    offset = 0
    while offset < total:
        length = min(rng.randrange(PAGE, max_extent + 1, PAGE), total - offset)
        # The first extent is data: a partition table and boot code, never unused space.
        kind = "random" if not extents else rng.choices(("random", "text", "zero"), (45, 25, 30))[0]
        extents.append(Extent(offset, length, kind))
        offset += length
    if not any(e.kind == "zero" for e in extents) and len(extents) > 1:
        mid = extents[len(extents) // 2]
        extents[len(extents) // 2] = Extent(mid.offset, mid.length, "zero")

    changes = []
    n_pages = math.ceil(total / PAGE)
    for index in rng.sample(range(n_pages), max(1, n_pages // 200)):
        changes.append(Change(index * PAGE, min(PAGE, total - index * PAGE), "page"))

    region_cap = max(PAGE, size // 32 // PAGE * PAGE)
    n_chunks = max(1, size // chunk_hint)
    for _ in range(rng.randint(3, 5)):
        length = min(rng.randint(1, 8) * MiB, region_cap)
        # Start halfway into a chunk so the region straddles chunk boundaries on both ends.
        start = rng.randrange(n_chunks) * chunk_hint + chunk_hint // 2
        start = min(start, total - length) // PAGE * PAGE
        changes.append(Change(start, length, "cluster"))

    data = [e for e in extents if e.kind != "zero"]
    zeros = [e for e in extents if e.kind == "zero"]
    for kind, pool in (("zeroed", data), ("filled", zeros)):
        if pool:
            extent = rng.choice(pool)
            length = min(4 * MiB, region_cap, extent.length)
            start = extent.offset + rng.randrange(0, extent.length - length + 1, PAGE)
            changes.append(Change(start, length, kind))

    if tail:
        # A few bytes at the very end: tools that mishandle a partial last chunk miss them.
        changes.append(Change(total - min(tail, 100), min(tail, 100), "tail"))
    return PairPlan(total, tuple(extents), tuple(changes))


def _write_blocks(fd: int, blocks: Iterator[bytes]) -> None:
    for block in blocks:
        view = memoryview(block)
        while view:
            view = view[os.write(fd, view) :]


def _extent_blocks(extent: Extent, rand: RandomStream, text: TextStream) -> Iterator[bytes]:
    remaining = extent.length
    while remaining:
        n = min(_WRITE_BLOCK, remaining)
        if extent.kind == "zero":
            yield bytes(n)
        elif extent.kind == "text":
            yield text.read(n)
        else:
            yield rand.read(n)
        remaining -= n


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def make_pair(
    directory: Path,
    size: int = 256 * MiB,
    seed: int = 1,
    chunk_hint: int = MiB,
    tail: int = DEFAULT_TAIL,
) -> tuple[Path, Path]:
    """Write `source.img` and `destination.img`: a plausible disk image and a diverged copy.

    The source mixes incompressible data, text and all-zero unused space. The destination is the
    source with ~0.5% of its 4 KiB pages rewritten at random, 3-5 clustered regions of up to
    8 MiB rewritten, one data region zeroed, one zero region filled with stale data, and a few
    bytes changed in the last, partial chunk. Both files are `size + tail` bytes long.

    Args:
        directory: Where to write the files; created if missing.
        size: Nominal image size in bytes.
        seed: Seed of layout, changes and content.
        chunk_hint: Chunk size a sync tool will likely use (see `plan_pair`).
        tail: Bytes added to `size`, so that the size is not a multiple of the chunk size.

    Returns:
        The paths of the source and the destination image.
    """
    plan = plan_pair(size, seed, chunk_hint, tail)
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "source.img"
    destination = directory / "destination.img"
    rand = RandomStream(seed, _pool_size(plan.size))
    text = TextStream(seed)

    fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for extent in plan.extents:
            _write_blocks(fd, _extent_blocks(extent, rand, text))
    finally:
        os.close(fd)
    shutil.copyfile(source, destination)

    # Separate streams, so that new content never equals the source's content at that spot.
    new_data = RandomStream(seed + 0x5EED, _pool_size(plan.size))
    new_text = TextStream(seed + 0x5EED)
    content_rng = random.Random(seed + 0x5EED)
    fd = os.open(destination, os.O_WRONLY)
    try:
        for change in plan.changes:
            if change.kind == "zeroed":
                data = bytes(change.length)
            elif change.kind == "tail":
                data = bytes(b ^ 0xFF for b in _read_at(source, change.offset, change.length))
            elif change.kind == "cluster" and content_rng.random() < 0.5:
                data = new_text.read(change.length)
            else:
                data = new_data.read(change.length)
            _pwrite_all(fd, data, change.offset)
    finally:
        os.close(fd)
    return source, destination


def _read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def make_changed_pair(
    src: Path,
    dst: Path,
    size: int,
    change_fraction: float = 0.01,
    page: int = PAGE,
    seed: int = 2,
) -> int:
    """Write a random file and a copy of it with a fraction of its pages changed at random.

    This is the benchmark's worst case for coarse tools: with 1% of 4 KiB pages changed, about
    92% of 1 MiB chunks contain a change.

    Args:
        src: Path of the random file to write.
        dst: Path of the changed copy to write.
        size: Size of both files in bytes.
        change_fraction: Fraction of pages to change, scattered uniformly.
        page: Size of a changed page in bytes.
        seed: Seed of content and positions.

    Returns:
        The number of bytes that differ between the two files.
    """
    rng = random.Random(seed)
    rand = RandomStream(seed, _pool_size(size))
    fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_blocks(
            fd, (rand.read(min(_WRITE_BLOCK, size - o)) for o in range(0, size, _WRITE_BLOCK))
        )
    finally:
        os.close(fd)
    shutil.copyfile(src, dst)

    n_pages = math.ceil(size / page)
    changed = 0
    fd = os.open(dst, os.O_RDWR)
    try:
        for index in sorted(rng.sample(range(n_pages), round(n_pages * change_fraction))):
            offset = index * page
            length = min(page, size - offset)
            data = rand.read(length)
            if data == os.pread(fd, length, offset):
                # Astronomically unlikely, but the return value promises these bytes differ.
                data = bytes([data[0] ^ 1]) + data[1:]
            _pwrite_all(fd, data, offset)
            changed += length
    finally:
        os.close(fd)
    return changed
