"""Provides stamp_layout: a GPT and file-system signatures written onto the demo pair, so that the
demo (and the screenshots) show partitions, and a confirm dialog that warns of a file system the
source does not have. Stdlib only; the signatures are the fields blkid reads, nothing more."""

from __future__ import annotations

import struct
import uuid
import zlib
from pathlib import Path

SECTOR = 512
ENTRIES = 128
ENTRY_SIZE = 128
ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
LINUX = "0fc63daf-8483-4772-8e79-3d69d8477de4"
SWAP = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
_HEADER = struct.Struct("<8sIII4xQQQQ16sQIII")


def _guid(n: int) -> uuid.UUID:
    return uuid.UUID(int=0x5EED_0000_0000_4000_8000_0000_0000_0000 + n)


def _gpt(size: int, parts: list[tuple[int, int, str, str]]) -> list[tuple[int, bytes]]:
    """(offset, bytes) to write: a protective MBR, the primary and the backup GPT."""
    last = size // SECTOR - 1
    entries = bytearray(ENTRIES * ENTRY_SIZE)
    for k, (start, end, kind, name) in enumerate(parts):
        struct.pack_into("<16s16sQQ8x72s", entries, k * ENTRY_SIZE, uuid.UUID(kind).bytes_le,
                         _guid(k + 1).bytes_le, start // SECTOR, end // SECTOR - 1, name.encode("utf-16-le"))
    mbr = bytearray(SECTOR)
    struct.pack_into("<B3xB3xII", mbr, 446, 0, 0xEE, 1, min(last, 0xFFFFFFFF))
    mbr[510:] = b"\x55\xaa"

    def header(mine: int, other: int, table: int) -> bytes:
        fields = [b"EFI PART", 0x10000, _HEADER.size, 0, mine, other, 34, last - 33,
                  _guid(0).bytes_le, table, ENTRIES, ENTRY_SIZE, zlib.crc32(entries)]
        fields[3] = zlib.crc32(_HEADER.pack(*fields))
        return _HEADER.pack(*fields)

    return [(0, bytes(mbr)), (SECTOR, header(1, last, 2)), (2 * SECTOR, bytes(entries)),
            ((last - 32) * SECTOR, bytes(entries)), (last * SECTOR, header(last, 1, last - 32))]


def _ext4(label: str, n: int) -> list[tuple[int, bytes]]:
    sb = bytearray(1024)  # all of it: a stray flag in the rest would make it another file system
    struct.pack_into("<H", sb, 56, 0xEF53)
    struct.pack_into("<III", sb, 92, 0x4, 0x2 | 0x40, 0x1)  # journal; filetype, extents: ext4
    sb[104:120], sb[120:136] = _guid(100 + n).bytes, label.encode().ljust(16, b"\0")
    return [(1024, bytes(sb))]


def _vfat(label: str, sectors: int) -> list[tuple[int, bytes]]:
    boot = bytearray(SECTOR)
    boot[0:11] = b"\xebX\x90mkfs.fat"
    # sector size, sectors per cluster, reserved sectors, FATs; media; sectors, sectors per FAT
    struct.pack_into("<HBHB", boot, 11, SECTOR, 8, 32, 2)
    struct.pack_into("<B", boot, 21, 0xF8)
    struct.pack_into("<II", boot, 32, sectors, max(1, sectors // 1024))
    boot[67:71], boot[71:82], boot[82:90] = b"\x4e\x1c\xa5\x5e", label.encode().ljust(11), b"FAT32   "
    boot[510:] = b"\x55\xaa"
    return [(0, bytes(boot))]


def _swap(label: str, n: int, size: int) -> list[tuple[int, bytes]]:
    head = struct.pack("<III16s16s", 1, size // 4096 - 1, 0, _guid(100 + n).bytes, label.encode().ljust(16, b"\0"))
    return [(0, bytes(4096)), (1024, head), (4096 - 10, b"SWAPSPACE2")]


def stamp_layout(source: Path, destination: Path) -> None:
    """Give both images one GPT (p1 EFI vfat, p2 ext4 'root', p3) with p3 a swap area on the
    source and an ext4 'data' on the destination: a file system the source does not have."""
    size = source.stat().st_size
    mib = 1 << 20
    cut1, cut2, end = size // 8 // mib * mib, size * 3 // 4 // mib * mib, (size - mib) // mib * mib
    p1, p2, p3 = (mib, cut1), (cut1, cut2), (cut2, end)
    table = [(*p1, ESP, "EFI"), (*p2, LINUX, "root"), (*p3, SWAP, "extra")]
    for path, third in ((source, _swap("swap", 3, p3[1] - p3[0])), (destination, _ext4("data", 4))):
        writes = _gpt(size, table)
        writes += [(p1[0] + o, d) for o, d in _vfat("EFI", (p1[1] - p1[0]) // SECTOR)]
        writes += [(p2[0] + o, d) for o, d in _ext4("root", 2)]
        writes += [(p3[0] + o, d) for o, d in third]
        with open(path, "r+b") as f:
            for offset, data in writes:
                f.seek(offset)
                f.write(data)
