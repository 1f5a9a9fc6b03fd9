"""Provides real disk images for the layout tests: partitioned by sgdisk or sfdisk, formatted by
mkfs (at an offset, no loop device needed), and helpers that damage them as an attacker would."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

MiB = 1 << 20
GPT_HEADER = struct.Struct("<8sIII4xQQQQ16sQIII")


def need(*tools: str) -> None:
    """Skip the test unless every tool is installed."""
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def run(*argv: str, stdin: str | None = None) -> str:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True).stdout


def gpt_image(path: Path, size: int = 64 * MiB, fat: bool = True) -> Path:
    """A GPT image: p1 "EFI" (1-21 MiB, vfat 'EFI' when mkfs.vfat exists), p2 "root" (to the
    end, ext4 'root')."""
    need("sgdisk", "mkfs.ext4")
    with open(path, "wb") as f:
        f.truncate(size)
    run("sgdisk", "-n1:1M:+20M", "-t1:ef00", "-c1:EFI", "-n2:0:0", "-t2:8300", "-c2:root", str(path))
    if fat and shutil.which("mkfs.vfat"):
        run("mkfs.vfat", "-n", "EFI", "--offset", "2048", str(path), str(20 * 1024))
    p2_start, p2_end = 21 * MiB, size - MiB  # sgdisk keeps the backup GPT in the last 17 KiB
    mkfs_ext4(path, "root", p2_start, p2_end - p2_start)
    return path


def mkfs_ext4(path: Path, label: str, offset: int, length: int) -> None:
    need("mkfs.ext4")
    run("mkfs.ext4", "-q", "-F", "-L", label, "-E", f"offset={offset}", str(path), f"{length // 1024}k")


def mbr_image(path: Path, size: int = 64 * MiB) -> Path:
    """An MBR image: p1 Linux (1-9 MiB, ext4 'boot'), p2 extended holding p5 (swap type) and
    p6 (Linux, ext4 'data'), by sfdisk."""
    need("sfdisk", "mkfs.ext4")
    with open(path, "wb") as f:
        f.truncate(size)
    script = "label: dos\nlabel-id: 0x1234abcd\n,8M,83\n,,5\n,8M,82\n,,83\n"
    run("sfdisk", "-q", str(path), stdin=script)
    parts = {p["node"][len(str(path)):]: p for p in sfdisk_json(path)["partitiontable"]["partitions"]}
    mkfs_ext4(path, "boot", parts["1"]["start"] * 512, parts["1"]["size"] * 512)
    mkfs_ext4(path, "data", parts["6"]["start"] * 512, parts["6"]["size"] * 512)
    return path


def sfdisk_json(path: Path) -> dict:
    import json

    return json.loads(run("sfdisk", "--json", str(path)))


def blkid(path: Path, offset: int = 0) -> dict[str, str]:
    """`blkid -p` of the file system at `offset`, as a dict (empty when it finds none)."""
    done = subprocess.run(["blkid", "-p", "-o", "export", "-O", str(offset), str(path)],
                          capture_output=True, text=True)
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def patch_gpt(path: Path, lba: int, fix_crc: bool = True, **fields: int) -> None:
    """Rewrite fields of the GPT header at `lba` (512-byte sectors): `count`, `entry_size`,
    `entries_crc`, `my_lba`; then recompute its CRC, unless told not to."""
    names = ("sig", "rev", "hsize", "crc", "my_lba", "alt", "first", "last", "guid", "table",
             "count", "entry_size", "entries_crc")
    with open(path, "r+b") as f:
        f.seek(lba * 512)
        values = dict(zip(names, GPT_HEADER.unpack(f.read(GPT_HEADER.size))))
        values.update(fields)
        if fix_crc:
            values["crc"] = 0
            values["crc"] = zlib.crc32(GPT_HEADER.pack(*values.values())[: values["hsize"]])
        f.seek(lba * 512)
        f.write(GPT_HEADER.pack(*values.values()))


def gpt_entries(path: Path, lba: int) -> tuple[int, int, int]:
    """(first entry LBA, count, entry size) of the GPT header at `lba`."""
    with open(path, "rb") as f:
        f.seek(lba * 512)
        fields = GPT_HEADER.unpack(f.read(GPT_HEADER.size))
    return fields[9], fields[10], fields[11]


def rewrite_entry(path: Path, lba: int, index: int, first: int, last: int) -> None:
    """Set entry `index`'s first and last LBA in the array of the header at `lba`, and fix the
    array's CRC in that header (a table that is consistent, and lies)."""
    table, count, size = gpt_entries(path, lba)
    with open(path, "r+b") as f:
        f.seek(table * 512 + index * size + 32)
        f.write(struct.pack("<QQ", first, last))
        f.seek(table * 512)
        crc = zlib.crc32(f.read(count * size))
    patch_gpt(path, lba, entries_crc=crc)
