"""Provides Layout, Partition and Filesystem: a side's partition table and file systems, typed.

A worker's LAYOUT answer (worker/probe.py) is JSON from a process we do not trust to be well
formed: it is parsed once, here, against the device's own size, and everything after reads
fields. GUIDs arrive as the hex of their on-disk bytes and are formatted here, as `blkid` and
`sfdisk` show them; partition types are named here too, so the shipped worker stays small.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from blocksync_tui.engine.errors import ProtocolError
from blocksync_tui.engine.units import human_bytes

MAX_PARTITIONS = 4096
"""More partitions than a GPT of the worker's largest accepted entry array can hold."""
MAX_TEXT = 256
"""Labels, names and UUIDs longer than this are not what a worker sends."""

GPT_TYPES = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI System",
    "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "a19d880f-05fc-4d3b-a006-743f0f84911e": "Linux RAID",
    "ca7d7ccb-63ed-4c53-861c-1742536059cc": "Linux LUKS",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
    "933ac7e1-2eb4-4f13-b844-0e14e2aef915": "Linux home",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
    "e3c9e316-0b5c-4db8-817d-f92df00215ae": "Microsoft reserved",
    "de94bba4-06d1-4d40-a16a-bfd50179d6ac": "Windows recovery",
}
"""The GPT partition types one meets on Linux and dual-boot disks, by sfdisk's names."""
DOS_TYPES = {
    0x01: "FAT12", 0x04: "FAT16 <32M", 0x05: "Extended", 0x06: "FAT16", 0x07: "HPFS/NTFS/exFAT",
    0x0B: "W95 FAT32", 0x0C: "W95 FAT32 (LBA)", 0x0E: "W95 FAT16 (LBA)", 0x0F: "W95 Ext'd (LBA)",
    0x82: "Linux swap", 0x83: "Linux", 0x85: "Linux extended", 0x8E: "Linux LVM",
    0xA5: "FreeBSD", 0xEE: "GPT", 0xEF: "EFI (FAT-12/16/32)", 0xFD: "Linux raid autodetect",
}  # fmt: skip
"""MBR partition types by sfdisk's names."""
DOS_EXTENDED = ("5", "f", "85")
"""The MBR types of an extended partition, as `Partition.type` holds them."""


@dataclass(frozen=True)
class Filesystem:
    """A file-system (or volume) signature: type, label and UUID as `blkid` shows them."""

    type: str
    """"ext4", "vfat", "swap", "LVM2_member", "crypto_LUKS"..."""
    label: str = ""
    uuid: str = ""

    def describe(self) -> str:
        """E.g. `ext4 'root'`."""
        return f"{self.type} '{self.label}'" if self.label else self.type


@dataclass(frozen=True)
class Partition:
    """One partition of a table, in bytes of its device."""

    number: int
    start: int
    length: int
    type: str
    """The type as the table holds it: a GUID (GPT) or two hex digits (MBR)."""
    type_name: str
    """The type in words ("Linux filesystem"), or the raw type when it has no name here."""
    uuid: str = ""
    """The partition's own id, as blkid's PARTUUID."""
    name: str = ""
    """A GPT partition's name."""
    fs: Filesystem | None = None

    @property
    def end(self) -> int:
        """One past its last byte."""
        return self.start + self.length

    @property
    def is_extended(self) -> bool:
        """An MBR extended partition: the container of the logical ones."""
        return self.type in DOS_EXTENDED

    @property
    def label(self) -> str:
        """Its short name: "p2"."""
        return f"p{self.number}"

    def describe(self) -> str:
        """E.g. `p2 ext4 'root'` or `p3 Linux swap` when no signature was found."""
        return f"{self.label} {self.fs.describe() if self.fs else self.type_name}"


@dataclass(frozen=True)
class Layout:
    """What a side's worker found on it: a partition table (or none), file systems, problems."""

    size: int
    """The device's size, which every partition was checked against."""
    table: str = ""
    """"gpt", "dos" or "" (no partition table)."""
    id: str = ""
    """The disk's GUID (GPT) or its 32-bit identifier (MBR, "0x1234abcd")."""
    sector: int = 512
    """The sector size the table counts in."""
    partitions: tuple[Partition, ...] = ()
    fs: Filesystem | None = None
    """A file system on the whole device (no partition table, usually)."""
    problems: tuple[str, ...] = ()
    """What the worker refused to believe (a GPT with a bad CRC, a partition past the end)."""

    def partition_at(self, offset: int) -> Partition | None:
        """The partition that holds byte `offset`, if any."""
        return next((p for p in self.partitions if p.start <= offset < p.end), None)

    def describe_at(self, offset: int) -> str:
        """What holds byte `offset`, in words, with its offset in there: `p2 ext4 'root' +1.2 MiB`."""
        part = self.partition_at(offset)
        if part is not None:
            return f"{part.describe()} +{human_bytes(offset - part.start)}"
        if self.partitions:
            return "unpartitioned"
        return self.fs.describe() if self.fs else ""

    def file_systems(self) -> list[tuple[str, Filesystem | None, int, int]]:
        """(where, file system, start, end) of the whole device or of each partition."""
        if not self.partitions:
            return [("whole device", self.fs, 0, self.size)]
        return [(p.label, p.fs, p.start, p.end) for p in self.partitions]

    @classmethod
    def parse(cls, answer: dict, size: int) -> Layout:
        """A worker's LAYOUT answer, checked against the device's size.

        Raises:
            ProtocolError: a field is missing, of the wrong type, or impossible.
        """
        try:
            table = answer["table"]
            if table not in ("", "gpt", "dos"):
                raise ValueError(f"table {table!r}")
            sector = int(answer["sector"])
            if sector not in (512, 4096):
                raise ValueError(f"sector size {sector}")
            parts = answer["parts"]
            if not isinstance(parts, list) or len(parts) > MAX_PARTITIONS:
                raise ValueError("partitions")
            disk_id = _text(answer.get("id", ""))
            return cls(
                size=size,
                table=table,
                id=_guid(disk_id) if table == "gpt" else f"0x{disk_id}" if disk_id else "",
                sector=sector,
                partitions=tuple(_partition(p, size, table, disk_id) for p in parts),
                fs=_filesystem(answer.get("fs")),
                problems=tuple(_text(p) for p in answer.get("problems", [])[:64]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"a malformed LAYOUT answer ({exc})") from None


def _text(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError(f"text {str(value)[:40]!r}")
    return value


def _guid(hex_bytes: str) -> str:
    """A GUID from the hex of its on-disk (mixed-endian) bytes, as blkid shows it."""
    return str(uuid.UUID(bytes_le=bytes.fromhex(hex_bytes)))


def _filesystem(value: object) -> Filesystem | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("file system")
    kind = _text(value["type"])
    if not kind:
        raise ValueError("file system type")
    return Filesystem(kind, _text(value.get("label", "")), _text(value.get("uuid", "")))


def _partition(value: dict, size: int, table: str, disk_id: str) -> Partition:
    number, start, length = int(value["n"]), int(value["start"]), int(value["size"])
    if not 1 <= number <= MAX_PARTITIONS or start < 0 or length <= 0 or start + length > size:
        raise ValueError(f"partition {number} at {start}+{length} on a device of {size} bytes")
    raw = _text(value["type"])
    if table == "gpt":
        kind = _guid(raw)
        name = GPT_TYPES.get(kind, kind)
        part_uuid = _guid(value["uuid"])
    else:
        code = int(raw, 16)
        kind, name = f"{code:x}", DOS_TYPES.get(code, f"type {code:#04x}")
        part_uuid = f"{disk_id}-{number:02x}" if disk_id else ""
    return Partition(number, start, length, kind, name, part_uuid, _text(value.get("name", "")),
                     _filesystem(value.get("fs")))


def overwritten_file_systems(destination: Layout | None, source: Layout | None) -> list[str]:
    """What a sync destroys that the source does not bring back: each file system of the
    destination (a partition's, or the whole device's) where the source has none, another
    type, or another file system of that type (another UUID). One warning line each: a sync
    engine adds them to its warnings, which the app's confirm dialog, the command line and
    the report show."""
    if destination is None:
        return []
    found = source.file_systems() if source is not None else []
    lines = []
    for where, fs, start, _end in destination.file_systems():
        if fs is None:
            continue
        theirs = next((s for _w, s, s_start, _e in found if s_start == start), None)
        if theirs is None:
            instead = "where the source has no file system"
        elif theirs.type != fs.type:
            instead = f"where the source has {theirs.describe()}"
        elif fs.uuid and theirs.uuid and fs.uuid != theirs.uuid:
            instead = f"(UUID {fs.uuid}), where the source has another one (UUID {theirs.uuid})"
        else:
            continue
        lines.append(f"the destination's {where} holds {fs.describe()} {instead}: it will be overwritten")
    return lines
