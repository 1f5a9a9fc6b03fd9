"""The partition-table and file-system probe (worker/probe.py) and its typed value (engine.layout),
on real images made by sgdisk, sfdisk and mkfs, compared with what sfdisk and blkid say, and on
the same images damaged as a hostile or broken disk would be."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from disk_images import (
    MiB,
    blkid,
    gpt_entries,
    gpt_image,
    mbr_image,
    mkfs_ext4,
    need,
    patch_gpt,
    rewrite_entry,
    run,
    sfdisk_json,
)

from blocksync_tui.engine.errors import ProtocolError
from blocksync_tui.engine.layout import Layout
from blocksync_tui.engine.worker import probe


def read_layout(path: Path, sector: int = 512) -> Layout:
    """What a worker answers for `path`, parsed as the engine parses it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return Layout.parse(probe.layout(fd, size, sector), size)
    finally:
        os.close(fd)


def test_gpt_matches_sfdisk_and_blkid(tmp_path: Path) -> None:
    image = gpt_image(tmp_path / "gpt.img")
    layout = read_layout(image)
    table = sfdisk_json(image)["partitiontable"]
    assert layout.table == table["label"] == "gpt"
    assert layout.id == table["id"].lower()
    assert layout.problems == ()
    assert len(layout.partitions) == len(table["partitions"]) == 2
    for part, theirs in zip(layout.partitions, table["partitions"]):
        assert (part.start, part.length) == (theirs["start"] * 512, theirs["size"] * 512)
        assert part.type == theirs["type"].lower()
        assert part.uuid == theirs["uuid"].lower()
        assert part.name == theirs["name"]
        found = blkid(image, part.start)
        if found:
            assert part.fs is not None
            assert (part.fs.type, part.fs.label, part.fs.uuid) == (found["TYPE"], found.get("LABEL", ""), found["UUID"])
    efi, root = layout.partitions
    assert efi.type_name == "EFI System" and root.type_name == "Linux filesystem"
    assert root.describe() == "p2 ext4 'root'"
    if efi.fs is not None:
        assert efi.describe() == "p1 vfat 'EFI'"
    assert layout.describe_at(root.start + 3 * MiB) == "p2 ext4 'root' +3.0 MiB"
    assert layout.describe_at(512) == "unpartitioned"


def test_mbr_with_logical_partitions_matches_sfdisk(tmp_path: Path) -> None:
    image = mbr_image(tmp_path / "mbr.img")
    layout = read_layout(image)
    table = sfdisk_json(image)["partitiontable"]
    assert (layout.table, layout.id) == ("dos", "0x1234abcd") and table["id"] == "0x1234abcd"
    theirs = {int(p["node"][len(str(image)):]): p for p in table["partitions"]}
    mine = {p.number: p for p in layout.partitions}
    assert sorted(mine) == sorted(theirs) == [1, 2, 5, 6]
    for n, part in mine.items():
        assert (part.start, part.length) == (theirs[n]["start"] * 512, theirs[n]["size"] * 512), n
        assert part.type == theirs[n]["type"]
        assert part.uuid == f"1234abcd-{n:02x}"
    assert mine[5].type_name == "Linux swap" and mine[2].type_name == "Extended"
    for n, label in ((1, "boot"), (6, "data")):
        found = blkid(image, mine[n].start)
        assert mine[n].fs is not None
        assert (mine[n].fs.type, mine[n].fs.label, mine[n].fs.uuid) == (found["TYPE"], label, found["UUID"])


def test_a_whole_device_file_system_and_swap(tmp_path: Path) -> None:
    need("blkid")
    image = tmp_path / "ext4.img"
    image.write_bytes(b"")
    os.truncate(image, 16 * MiB)
    mkfs_ext4(image, "whole", 0, 16 * MiB)
    layout = read_layout(image)
    assert layout.table == "" and layout.partitions == ()
    assert layout.fs is not None and (layout.fs.type, layout.fs.label) == ("ext4", "whole")
    assert layout.fs.uuid == blkid(image)["UUID"]
    assert layout.file_systems() == [("whole device", layout.fs, 0, 16 * MiB)]
    need("mkswap")
    swap = tmp_path / "swap.img"
    swap.write_bytes(bytes(8 * MiB))
    run("mkswap", "-L", "myswap", str(swap))
    fs = read_layout(swap).fs
    found = blkid(swap)
    assert fs is not None and (fs.type, fs.label, fs.uuid) == ("swap", "myswap", found["UUID"])


@pytest.mark.parametrize("tool, kind", [("mkfs.vfat", "vfat"), ("mkfs.xfs", "xfs"), ("mkfs.btrfs", "btrfs")])
def test_other_file_systems_match_blkid(tmp_path: Path, tool: str, kind: str) -> None:
    need(tool, "blkid")
    image = tmp_path / f"{kind}.img"
    image.write_bytes(b"")
    os.truncate(image, 320 * MiB)
    run(tool, *({"vfat": ["-n"], "xfs": ["-f", "-L"], "btrfs": ["-f", "-L"]}[kind]), "LBL", str(image))
    fs = read_layout(image).fs
    found = blkid(image)
    assert fs is not None and (fs.type, fs.label, fs.uuid) == (found["TYPE"], found["LABEL"], found["UUID"])
    assert (fs.type, fs.label) == (kind, "LBL")


def test_signatures_made_by_hand(tmp_path: Path) -> None:
    """LUKS, LVM2 and NTFS headers as their tools write the fields blkid reads."""
    image = tmp_path / "sig.img"
    luks = b"LUKS\xba\xbe\x00\x02" + bytes(16) + b"vault".ljust(48, b"\0") + bytes(96) + b"0b6a3c5e-7f8d-4a9b-8c7d-6e5f4a3b2c1d"
    image.write_bytes(luks.ljust(1 << 20, b"\0"))
    fs = read_layout(image).fs
    assert fs is not None and (fs.type, fs.label, fs.uuid) == ("crypto_LUKS", "vault", "0b6a3c5e-7f8d-4a9b-8c7d-6e5f4a3b2c1d")
    label = b"LABELONE" + bytes(16) + b"LVM2 001" + b"abcdef1234567890ABCDEF1234567890"
    image.write_bytes((bytes(512) + label).ljust(1 << 20, b"\0"))
    fs = read_layout(image).fs
    assert fs is not None and (fs.type, fs.uuid) == ("LVM2_member", "abcdef-1234-5678-90AB-CDEF-1234-567890")
    ntfs = bytearray(1 << 20)
    ntfs[3:11], ntfs[72:80], ntfs[510:512] = b"NTFS    ", struct.pack("<Q", 0x1122334455667788), b"\x55\xaa"
    image.write_bytes(bytes(ntfs))
    layout = read_layout(image)
    assert layout.table == "" and layout.fs is not None
    assert (layout.fs.type, layout.fs.uuid) == ("ntfs", "1122334455667788")


# -- hostile and broken tables: never an exception, never a read outside the device


def test_a_bad_primary_gpt_falls_back_to_the_backup(tmp_path: Path) -> None:
    image = gpt_image(tmp_path / "gpt.img", fat=False)
    patch_gpt(image, 1, fix_crc=False, count=64)  # the header no longer matches its CRC
    layout = read_layout(image)
    assert layout.table == "gpt" and len(layout.partitions) == 2
    assert layout.problems == ("GPT header at LBA 1 fails its CRC",)


def test_two_bad_gpts_give_no_table_and_say_so(tmp_path: Path) -> None:
    image = gpt_image(tmp_path / "gpt.img", fat=False)
    last = os.path.getsize(image) // 512 - 1
    patch_gpt(image, 1, fix_crc=False, count=64)
    patch_gpt(image, last, fix_crc=False, count=64)
    layout = read_layout(image)
    assert layout.table == "" and layout.partitions == ()
    assert layout.problems[-1] == "protective MBR, but no valid GPT"


def test_an_absurd_entry_count_is_refused_before_reading(tmp_path: Path) -> None:
    """A header whose CRC is right but which claims 4 billion entries is not believed."""
    image = gpt_image(tmp_path / "gpt.img", fat=False)
    last = os.path.getsize(image) // 512 - 1
    for lba in (1, last):
        patch_gpt(image, lba, count=0xFFFFFFFF)
    layout = read_layout(image)
    assert layout.partitions == ()
    assert "GPT at LBA 1: 4294967295 entries of 128 bytes refused" in layout.problems


def test_entries_with_a_wrong_crc_are_refused(tmp_path: Path) -> None:
    image = gpt_image(tmp_path / "gpt.img", fat=False)
    patch_gpt(image, 1, entries_crc=12345)
    layout = read_layout(image)
    assert "GPT entries of LBA 1 fail their CRC" in layout.problems
    assert len(layout.partitions) == 2  # from the backup


def test_a_partition_past_the_end_is_dropped_and_named(tmp_path: Path) -> None:
    image = gpt_image(tmp_path / "gpt.img", fat=False)
    last = os.path.getsize(image) // 512 - 1
    for lba in (1, last):
        rewrite_entry(image, lba, 1, 1 << 40, (1 << 40) + 100)
    layout = read_layout(image)
    assert [p.number for p in layout.partitions] == [1]
    assert layout.problems == ("partition 2 is empty or ends beyond the device",)


def test_a_truncated_image_reads_nothing_beyond_its_end(tmp_path: Path) -> None:
    """Cut right after the GPT header: the entries lie beyond the end, so nothing is believed."""
    image = gpt_image(tmp_path / "gpt.img", fat=False)
    table, _, _ = gpt_entries(image, 1)
    os.truncate(image, table * 512 + 512)
    layout = read_layout(image)
    assert layout.partitions == () and layout.problems


def test_a_looping_chain_of_logical_partitions_ends(tmp_path: Path) -> None:
    """An EBR whose next link points back at itself is followed once."""
    image = mbr_image(tmp_path / "mbr.img")
    extended = next(p for p in read_layout(image).partitions if p.number == 2)
    with open(image, "r+b") as f:
        f.seek(extended.start + 462)  # the first EBR's link: to itself (relative LBA 0 is "none")
        f.write(struct.pack("<B3xB3xII", 0, 0x05, 0, 1))
    numbers = [p.number for p in read_layout(image).partitions]
    assert numbers[:3] == [1, 2, 5] and len(numbers) < 10


def test_a_fat_boot_sector_is_not_a_partition_table(tmp_path: Path) -> None:
    need("mkfs.vfat")
    image = tmp_path / "fat.img"
    image.write_bytes(bytes(32 * MiB))
    run("mkfs.vfat", "-n", "STICK", str(image))
    layout = read_layout(image)
    assert layout.table == "" and layout.fs is not None and layout.fs.label == "STICK"


@pytest.mark.parametrize(
    "answer",
    [
        {"table": "zfs", "sector": 512, "parts": []},
        {"table": "gpt", "sector": 3, "parts": []},
        {"table": "dos", "sector": 512, "parts": [{"n": 1, "start": 0, "size": 1 << 40, "type": "83"}]},
        {"table": "dos", "sector": 512, "parts": [{"n": 1, "start": -512, "size": 512, "type": "83"}]},
        {"table": "dos", "sector": 512, "parts": [{"n": 1, "start": 0, "size": 512, "type": "83", "fs": {"type": "x" * 300}}]},
        {"table": "gpt", "sector": 512, "parts": [{"n": 1, "start": 0, "size": 512, "type": "zz", "uuid": ""}]},
        {"table": "", "sector": 512, "parts": "lots"},
        {"sector": 512, "parts": []},
    ],
)
def test_a_malformed_answer_is_a_protocol_error(answer: dict) -> None:
    with pytest.raises(ProtocolError, match="malformed LAYOUT"):
        Layout.parse(answer, 1 << 20)


def test_a_loop_device_is_read_as_its_image(tmp_path: Path, loop_device) -> None:
    """On a block device the worker reads the table through the device (its sector size from
    the kernel): the engine's layout of /dev/loopN is the image's."""
    from blocksync_tui.engine.endpoint import Endpoint
    from blocksync_tui.engine.sync import SyncEngine, SyncOptions

    image = gpt_image(tmp_path / "gpt.img")
    device = loop_device(image)
    source = tmp_path / "source.img"  # not the image itself: that overlaps the device
    source.write_bytes(image.read_bytes())
    engine = SyncEngine(Endpoint.parse(str(source)), Endpoint.parse(device), SyncOptions(dry_run=True))
    engine.prepare()
    try:
        assert engine.destination_info["kind"] == "block"
        assert engine.destination_layout == read_layout(image)
        assert engine.source_layout == read_layout(source)
    finally:
        engine.close()
