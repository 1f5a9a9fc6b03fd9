"""Provides LAYOUT: the partition table and file-system signatures of the open file, read-only.

What is on disk is untrusted: counts are bounded, a GPT header and its entries must match their
CRC32 (else the backup GPT is tried), and nothing outside the device is read. GUIDs travel as
the hex of their on-disk bytes; the controller formats them and names the types.
"""

from __future__ import annotations

import os
import struct
import zlib

MAX_ENTRIES_BYTES = 256 << 10
"""GPT entry arrays larger than this are refused (the usual one is 128 x 128 bytes)."""
MAX_LOGICAL = 128
"""Logical partitions followed in an extended partition's chain."""
GPT = struct.Struct("<8sIII4xQQQQ16sQIII")
MBR_ENTRY = struct.Struct("<B3xB3xII")  # status, type, first sector, sectors
GPT_ENTRY = struct.Struct("<16s16sQQ8x72s")
EXTENDED = (0x05, 0x0F, 0x85)


def layout(fd: int, size: int, sector: int) -> dict:
    """The partition table of a file or device of `size` bytes, each partition's file system,
    and the file system of the whole; `problems` says what was refused."""
    disk = Disk(fd, size)
    out = {"table": "", "id": "", "sector": sector, "parts": [], "problems": disk.problems,
           "fs": filesystem(disk, 0, size)}
    mbr = disk.read(0, 512)
    if mbr[510:] != b"\x55\xaa":
        return out
    entries = [MBR_ENTRY.unpack_from(mbr, 446 + 16 * i) for i in range(4)]
    if any(e[1] == 0xEE for e in entries):
        for ss in sorted((512, 4096), key=lambda s: s != sector):
            if _gpt(disk, out, ss):
                return out
        disk.problems.append("protective MBR, but no valid GPT")
        return out
    if out["fs"] and out["fs"]["type"] in ("vfat", "ntfs", "exfat"):
        return out  # its boot sector, not a partition table
    if any(e[0] & 0x7F for e in entries):
        return out  # not a status byte of a partition table
    out.update(table="dos", id="%08x" % struct.unpack_from("<I", mbr, 440), sector=512)
    for n, (_, kind, first, count) in enumerate(entries, 1):
        if kind:
            disk.part(out, n, first * 512, count * 512, "%02x" % kind, "", "")
        if kind in EXTENDED:
            _logical(disk, out, first * 512)
    out["parts"].sort(key=lambda p: p["n"])
    return out


class Disk:
    """Reads of a file that never leave it, and the partitions found so far."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size, self.problems = fd, size, []

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            return b""
        return os.pread(self.fd, length, offset)

    def part(self, out: dict, n: int, start: int, length: int, kind: str, uuid: str, name: str) -> None:
        if length <= 0 or start + length > self.size:
            self.problems.append("partition %d is empty or ends beyond the device" % n)
            return
        out["parts"].append({"n": n, "start": start, "size": length, "type": kind, "uuid": uuid,
                             "name": name, "fs": filesystem(self, start, length)})


def _gpt(disk: Disk, out: dict, ss: int) -> bool:
    """Read the primary GPT at LBA 1, else the backup at the last LBA."""
    for lba in (1, disk.size // ss - 1):
        head = disk.read(lba * ss, GPT.size)
        if len(head) < GPT.size:
            continue
        sig, _, hsize, crc, mine, _, _, _, guid, table, count, esize, ecrc = GPT.unpack(head)
        if sig != b"EFI PART" or mine != lba or not GPT.size <= hsize <= ss:
            continue
        raw = bytearray(disk.read(lba * ss, hsize))
        raw[16:20] = bytes(4)
        if zlib.crc32(raw) != crc:
            disk.problems.append("GPT header at LBA %d fails its CRC" % lba)
            continue
        if esize < 128 or esize % 8 or count * esize > MAX_ENTRIES_BYTES:
            disk.problems.append("GPT at LBA %d: %d entries of %d bytes refused" % (lba, count, esize))
            continue
        entries = disk.read(table * ss, count * esize)
        if len(entries) < count * esize or zlib.crc32(entries) != ecrc:
            disk.problems.append("GPT entries of LBA %d fail their CRC" % lba)
            continue
        out.update(table="gpt", id=guid.hex(), sector=ss)
        for n in range(count):
            kind, uuid, first, last, name = GPT_ENTRY.unpack_from(entries, n * esize)
            if kind != bytes(16):
                name = name.decode("utf-16-le", "replace").split("\0")[0]
                disk.part(out, n + 1, first * ss, (last - first + 1) * ss, kind.hex(), uuid.hex(), name)
        return True
    return False


def _logical(disk: Disk, out: dict, base: int) -> None:
    """The logical partitions of an extended partition at `base`: a chain of EBRs, each
    relative to the extended partition, bounded and never visited twice."""
    at, seen = base, set()
    for n in range(5, 5 + MAX_LOGICAL):
        ebr = disk.read(at, 512)
        if at in seen or ebr[510:] != b"\x55\xaa":
            return
        seen.add(at)
        _, kind, first, count = MBR_ENTRY.unpack_from(ebr, 446)
        if kind:
            disk.part(out, n, at + first * 512, count * 512, "%02x" % kind, "", "")
        _, kind, first, _ = MBR_ENTRY.unpack_from(ebr, 462)
        if kind not in EXTENDED or not first:
            return
        at = base + first * 512
    disk.problems.append("more than %d logical partitions" % MAX_LOGICAL)


def _text(raw: bytes) -> str:
    return raw.split(b"\0")[0].decode("utf-8", "replace").rstrip()


def _uuid(raw: bytes) -> str:
    h = raw.hex()
    return "-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:32])) if any(raw) else ""


def _serial(raw: bytes) -> str:
    """A FAT or exFAT volume serial as blkid shows it: XXXX-XXXX."""
    h = raw[::-1].hex().upper()
    return h[:4] + "-" + h[4:]


def filesystem(disk: Disk, start: int, size: int) -> "dict | None":
    """The file system whose signature starts at `start` (of a region of `size` bytes), as
    {"type", "label", "uuid"} the way blkid names them, or None."""

    def at(offset: int, length: int) -> bytes:
        return disk.read(start + offset, length) if offset + length <= size else b""

    def fs(kind: str, label: str = "", uuid: str = "") -> dict:
        return {"type": kind, "label": label, "uuid": uuid}

    head = at(0, 512)
    if head[:6] == b"LUKS\xba\xbe":
        return fs("crypto_LUKS", _text(head[24:72]) if head[7] == 2 else "", _text(head[168:208]))
    for s in range(4):
        label = at(s * 512, 32)
        if label[:8] == b"LABELONE" and label[24:32] == b"LVM2 001":
            u = _text(at(s * 512 + 32, 32))
            return fs("LVM2_member", "", "-".join((u[:6], u[6:10], u[10:14], u[14:18], u[18:22], u[22:26], u[26:])))
    if head[:4] == b"XFSB":
        return fs("xfs", _text(head[108:120]), _uuid(head[32:48]))
    sb = at(1024, 256)
    if sb[56:58] == b"\x53\xef":
        compat, incompat, ro = struct.unpack_from("<III", sb, 92)
        ext4 = incompat & ~0x16 or ro & ~0x7  # features ext3 does not have
        kind = "jbd" if incompat & 0x8 else "ext4" if ext4 else "ext3" if compat & 0x4 else "ext2"
        return fs(kind, _text(sb[120:136]), _uuid(sb[104:120]))
    btrfs = at(0x10000, 0x400)
    if btrfs[64:72] == b"_BHRfS_M":
        return fs("btrfs", _text(btrfs[299:555]), _uuid(btrfs[32:48]))
    for page in (4096, 8192, 16384, 65536):
        if at(page - 10, 10) in (b"SWAPSPACE2", b"SWAP-SPACE"):
            return fs("swap", _text(sb[28:44]), _uuid(sb[12:28]))
    iso = at(0x8000, 2048)
    if iso[1:6] == b"CD001":
        d = iso[813:829].decode("ascii", "replace")
        return fs("iso9660", _text(iso[40:72]), "-".join((d[:4], d[4:6], d[6:8], d[8:10], d[10:12], d[12:14], d[14:16])))
    if head[3:11] == b"NTFS    ":
        return fs("ntfs", "", head[72:80][::-1].hex().upper())
    if head[3:11] == b"EXFAT   ":
        return fs("exfat", "", _serial(head[100:104]))
    if head[510:] == b"\x55\xaa" and head[11:13] in (b"\x00\x02", b"\x00\x04", b"\x00\x08", b"\x00\x10"):
        if head[82:87] == b"FAT32":
            label, serial = head[71:82], head[67:71]
        elif head[54:57] == b"FAT":
            label, serial = head[43:54], head[39:43]
        else:
            return None
        label = _text(label)
        return fs("vfat", "" if label == "NO NAME" else label, _serial(serial))
    return None
