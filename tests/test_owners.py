"""Owners of differing bytes on real ext4 images: mkfs.ext4 -d, changes made with debugfs and by
writing into files' own blocks, compared by the engine, then looked up with e2fsprogs by a
worker; a GPT image with the file system in partition 2; the bounds and the hostile inputs."""

from __future__ import annotations

import json
import queue
import shutil
import time
from pathlib import Path

import pytest

from blocksync_tui.engine.connection import Connection, Frame
from blocksync_tui.engine.differences import Differences, differing_ranges
from blocksync_tui.engine.e2fs_text import parse_dumpe2fs, parse_icheck, parse_ncheck
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import ProtocolError
from blocksync_tui.engine.owners import FILE, FREE, INODE, UNATTRIBUTED, FsRegion, owners_after
from blocksync_tui.engine.sync import SyncEngine, SyncOptions
from blocksync_tui.engine.transport import LocalTransport
from blocksync_tui.engine.worker import e2fs
from blocksync_tui.engine.worker import protocol as wire
from ext4_images import (
    MIB,
    add_file,
    debugfs,
    gpt_image,
    make_ext4,
    make_tree,
    need,
    overwrite_file,
    place,
)
from helpers import tampered_engine

FILES = {f"data/file{i:02d}.bin": (i % 7 + 1) * 160_000 for i in range(40)}
FILES.update({"etc/passwd": 1500, "etc/hostname": 12, "home/user/notes.txt": 40_000})


def _migration(
    tmp_path: Path, size: int = 128 * MIB, offset: int = 0, image: Path | None = None, added: int = 4 * MIB
) -> dict:
    """An old ext4 image and a new one: 8 files rewritten in place, 3 new files, 2 removed and
    one unlinked while its data changed; returns what changed where."""
    tree = make_tree(tmp_path / "tree", FILES)
    old = make_ext4(tmp_path / "old.img", size, tree)
    new = tmp_path / "new.img"
    shutil.copyfile(old, new)
    if image is not None:  # the file systems go into partitions of disk images instead
        for fs, disk in ((old, image.with_name("old-disk.img")), (new, image.with_name("new-disk.img"))):
            shutil.copyfile(image, disk)
        old_disk, new_disk = image.with_name("old-disk.img"), image.with_name("new-disk.img")
        place(old_disk, old, offset)
        place(new_disk, new, offset)
        old, new = old_disk, new_disk
    rewritten = {f"/data/file{i:02d}.bin": overwrite_file(new, f"/data/file{i:02d}.bin", 240, i, offset)
                 for i in range(0, 40, 5)}
    new_files = {}
    for k, blob in enumerate(("alpha", "beta", "gamma")):
        host = make_tree(tmp_path / f"add{k}", {blob: added}, seed=10 + k) / blob
        add_file(new, host, f"/home/user/{blob}.bin", offset)
        new_files[f"/home/user/{blob}.bin"] = added
    debugfs(new, "rm /data/file01.bin", "rm /data/file02.bin", write=True, offset=offset)
    unlinked = int(debugfs(new, "stat /data/file03.bin", offset=offset).split()[1])
    debugfs(new, "unlink /data/file03.bin", write=True, offset=offset)
    overwrite_file(new, f"<{unlinked}>", 16, 99, offset)
    return {"old": old, "new": new, "rewritten": rewritten, "added": new_files, "unlinked": unlinked}


def _compare(source: Path, destination: Path, **options: object) -> SyncEngine:
    engine = SyncEngine(Endpoint.parse(str(source)), Endpoint.parse(str(destination)),
                        SyncOptions(dry_run=True, **options))
    engine.prepare()
    engine.run()
    return engine


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "digests"])
def test_the_owners_name_the_changed_files_and_structures(tmp_path: Path, direct: bool) -> None:
    case = _migration(tmp_path)
    engine = _compare(case["new"], case["old"], direct=direct)
    assert engine.method == ("direct" if direct else "digests")
    owners = owners_after(engine, "source")
    assert not owners.unavailable and not owners.notes
    by_name = {o.name: o for o in owners.owners}
    for path, changed in {**case["rewritten"], **case["added"]}.items():
        assert by_name[path].kind == FILE and by_name[path].bytes == changed, path
    unlinked = [o for o in owners.owners if o.kind == INODE]
    assert [o.inode for o in unlinked] == [case["unlinked"]] and unlinked[0].bytes == 16 * 4096
    assert "no path" in unlinked[0].name
    names = set(by_name)
    assert {"block bitmap (group 0)", "inode bitmap (group 0)", "/data", "/home/user"} <= names
    assert any(n.startswith("inode table, group 0 (inodes 1-") for n in names)
    assert not {"/data/file01.bin", "/data/file02.bin", "/data/file03.bin"} & names  # removed: data unchanged
    assert owners.bytes_total == engine.report().bytes_differing
    assert owners.fraction >= 0.95, owners.to_dict()
    # Every owner's chunks are chunks that differ.
    differing = {i for run in engine.chunk_map.changed_runs() for i in range(run.first, run.first + run.count)}
    for owner in owners.owners:
        assert {i for first, n in owner.runs for i in range(first, first + n)} <= differing


def test_twenty_mib_of_changes_are_attributed_in_time(tmp_path: Path) -> None:
    """The issue's bound: at least 95% of the differing bytes attributed to a file or a named
    structure. The time (2 s wanted for 20 MiB) is measured and printed, not asserted."""
    case = _migration(tmp_path, 160 * MIB, added=6 * MIB)
    engine = _compare(case["new"], case["old"])
    started = time.monotonic()
    owners = owners_after(engine, "source")
    seconds = time.monotonic() - started
    print(f"\nowners of {owners.bytes_total / MIB:.1f} MiB: {seconds:.2f} s, "
          f"{100 * owners.fraction:.2f}% attributed, {len(owners.owners)} owners")
    assert owners.bytes_total >= 20 * MIB
    assert owners.fraction >= 0.95


def test_the_destination_side_names_what_will_be_overwritten(tmp_path: Path) -> None:
    case = _migration(tmp_path)
    engine = _compare(case["new"], case["old"])
    owners = owners_after(engine, "destination")
    by_name = {o.name: o for o in owners.owners}
    assert by_name["free space"].kind == FREE  # where the new files go, the old image has nothing
    assert by_name["free space"].bytes >= sum(case["added"].values())
    for path in case["rewritten"]:
        assert by_name[path].kind == FILE
    assert "/data/file03.bin" in by_name  # unlinked in the new image, a file in the old one


def test_a_sync_records_the_pieces_it_sent(tmp_path: Path) -> None:
    case = _migration(tmp_path)
    engine = SyncEngine(Endpoint.parse(str(case["new"])), Endpoint.parse(str(case["old"])),
                        SyncOptions(direct=False))
    engine.prepare()
    report = engine.run()
    assert report.outcome == "synced"
    owners = owners_after(engine, "source")
    assert owners.bytes_total == report.bytes_differing and owners.fraction >= 0.95
    assert set(case["rewritten"]) <= {o.name for o in owners.owners}


def test_a_gpt_image_with_the_file_system_in_partition_2(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    parts = gpt_image(disk, 200 * MIB, [(2048, 16384), (18432, 128 * MIB // 512)])
    offset, length = parts[1]
    case = _migration(tmp_path, 128 * MIB, offset, disk)
    engine = _compare(case["new"], case["old"])
    regions = [FsRegion(parts[0][0], parts[0][1], name="p1"), FsRegion(offset, length, "ext4", "p2")]
    owners = owners_after(engine, "source", regions=regions)
    assert owners.fraction >= 0.95, owners.to_dict()
    labels = {o.label for o in owners.owners}
    assert {f"p2: {path}" for path in case["rewritten"]} <= labels
    assert all(o.region == "p2" for o in owners.owners if o.kind != UNATTRIBUTED)
    # The file system's own offsets: its superblock was changed (free counts), named in p2.
    assert "p2: superblock" in labels
    # By default the side's own partition table says where its ext4 is: the same owners.
    found = owners_after(engine, "source")
    assert {o.label for o in found.owners} == labels and found.regions[0].name == "p2"
    # Told the whole disk is one file system: not ext4 at offset 0, said as such.
    whole = owners_after(engine, "source", regions=[FsRegion(0, engine.size)])
    assert whole.unavailable == "not an ext2/3/4 file system" and not whole.owners


def test_a_region_that_is_not_ext4_leaves_the_others_attributed(tmp_path: Path) -> None:
    case = _migration(tmp_path, 64 * MIB)
    engine = _compare(case["new"], case["old"])
    size = engine.size
    regions = [FsRegion(0, 8 * MIB, name="a"), FsRegion(8 * MIB, size - 8 * MIB, name="b")]
    owners = owners_after(engine, "source", regions=regions)
    assert not owners.unavailable
    assert any("not looked at: not an ext2/3/4 file system" in n for n in owners.notes)
    assert any(o.kind == UNATTRIBUTED for o in owners.owners)


def test_no_file_system_at_all_says_so(tmp_path: Path) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(bytes(4 * MIB))
    b.write_bytes(b"\1" * MIB + bytes(3 * MIB))
    need("dumpe2fs")
    engine = _compare(a, b)
    owners = owners_after(engine, "source")
    assert owners.unavailable == "not an ext2/3/4 file system"
    assert owners.bytes_total == MIB and not owners.owners


def test_a_lookup_out_of_time_says_timed_out(tmp_path: Path) -> None:
    case = _migration(tmp_path, 64 * MIB)
    engine = _compare(case["new"], case["old"])
    owners = owners_after(engine, "source", timeout=0.001)
    assert owners.unavailable == "timed out after 0.001 s"


def test_without_e2fsprogs_the_worker_says_which_tool_is_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(e2fs, "PATH", str(tmp_path))  # a host without e2fsprogs
    image = tmp_path / "x.img"
    image.write_bytes(bytes(MIB))
    assert e2fs.run({"cmd": "icheck", "path": str(image), "offset": 0, "args": [1]}) == {"missing": "debugfs"}


def test_the_worker_refuses_anything_but_its_commands_and_numbers(tmp_path: Path) -> None:
    image = tmp_path / "x.img"
    image.write_bytes(bytes(MIB))
    conn = Connection(LocalTransport(), "source", queue.Queue[Frame]())
    conn.start()
    try:
        bad = [
            {"cmd": "write", "path": str(image), "offset": 0, "args": []},
            {"cmd": "icheck", "path": str(image), "offset": 0, "args": ["1; rm -rf /"]},
            {"cmd": "icheck", "path": str(image), "offset": -1, "args": [1]},
            {"cmd": "ncheck", "path": str(image), "offset": 0, "args": [-5]},
            {"cmd": "layout", "path": str(tmp_path), "offset": 0},
        ]
        for request in bad:
            with pytest.raises(Exception) as caught:
                conn.call_json(wire.OP_E2FS, request)
            assert type(caught.value).__name__ == "RemoteError", request
        # A path is only a path: "?" or a leading "-" never reach a tool's parser.
        odd = tmp_path / "-R stats?offset=5"
        make_ext4(odd, 8 * MIB, make_tree(tmp_path / "t", {"a": 10}))
        answer = conn.call_json(wire.OP_E2FS, {"cmd": "layout", "path": str(odd), "offset": 0})
        assert answer["status"] == 0 and parse_dumpe2fs(answer["output"]) is not None
    finally:
        conn.close()


def test_a_tool_past_its_time_is_killed(tmp_path: Path) -> None:
    need("dumpe2fs")
    image = make_ext4(tmp_path / "x.img", 64 * MIB, make_tree(tmp_path / "t", {"a": 10}))
    started = time.monotonic()
    answer = e2fs.run({"cmd": "icheck", "path": str(image), "offset": 0, "args": [1], "timeout": 0})
    assert answer["timed_out"] and answer["status"] == -1
    assert time.monotonic() - started < 5


def test_runs_a_direct_compare_reports_are_checked(tmp_path: Path) -> None:
    """A destination worker that reports runs outside the chunk ends the run."""
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(bytes(4 * MIB))
    b.write_bytes(b"\1" * 4096 + bytes(4 * MIB - 4096))

    def tamper(op: int, rid: int, payload: bytes):
        if op == wire.OP_RUNS:
            index, _ = wire.RUNS_HEAD.unpack_from(payload)
            payload = wire.RUNS_HEAD.pack(index, 1) + wire.RUN_ITEM.pack(0, 2 * MIB)
        yield op, rid, payload

    engine = tampered_engine(a, b, "destination", tamper, dry_run=True)
    engine.prepare()
    with pytest.raises(ProtocolError, match="runs outside chunk 0"):
        engine.run()


def test_the_parsers_believe_nothing_they_did_not_ask_for() -> None:
    found = parse_icheck("Block\tInode number\n5\t12\n6\t<block not found>\n7\t13\n8\t99999\nx\t1\n", {5, 6, 8}, 1000)
    assert found == {5: 12}
    names = parse_ncheck("Inode\tPathname\n12\t//etc\n13\t/a/b\n12\t/x/y\nsecond line\n40\t/nope\n", {12, 13})
    assert names == {12: ["/etc", "/x/y\nsecond line"], 13: ["/a/b"]}
    layout = parse_dumpe2fs(
        "Filesystem magic number:  0xEF53\nBlock size: 4096\nBlock count: 100\nInode count: 64\n"
        "Inodes per group: 64\nJournal inode: 8\nUser quota inode: 3\n"
        "Group 0: (Blocks 0-99)\n  Primary superblock at 0, Group descriptors at 1-1\n"
        "  Block bitmap at 2 (+2)\n  Inode table at 3-10\n  Inode bitmap at 500\n"
        "  Free blocks: 50-59, 70, 90-200\n"
    )
    assert layout is not None and layout.fstype == "ext2"
    assert [(e.start, e.count, e.name) for e in layout.structures] == [
        (0, 1, "superblock"), (1, 1, "group descriptors"), (2, 1, "block bitmap (group 0)"),
        (3, 8, "inode table, group 0 (inodes 1-64)"),
    ]  # the bitmap at block 500 is past the end: dropped
    assert layout.free == [(50, 10), (70, 1)] and layout.special[3] == "user quota"
    assert parse_dumpe2fs("Filesystem magic number:  0x1234\nBlock size: 4096\n") is None


def test_differences_are_bounded_and_whole_chunks_said(monkeypatch) -> None:
    from blocksync_tui.engine import differences
    from blocksync_tui.engine.chunkmap import ChunkMap, State

    monkeypatch.setattr(differences, "MAX_CHUNKS", 2)
    record = Differences(1 << 16)
    for index in range(3):
        record.add(index, [(0, 4096), (4096, 8192), (12288, 16384)])
    assert record.of(0) == [(0, 8192), (12288, 16384)] and record.of(2) is None and record.dropped == 1
    chunk_map = ChunkMap(4)
    for index in range(3):
        chunk_map.set(index, State.DIFFERS)
    ranges, whole, cut = differing_ranges(chunk_map, record, 1 << 16, 4 << 16)
    assert ranges == [(0, 8192), (12288, 4096), (65536, 8192), (77824, 4096), (131072, 65536)]
    assert whole == 1 and not cut


def test_compare_owners_on_the_command_line(tmp_path: Path, capsys) -> None:
    """`compare --owners` lists them after the summary, largest first, and in the JSON report;
    a run without it has an empty list; the exit status is the compare's."""
    from blocksync_tui.cli import main

    case = _migration(tmp_path, 64 * MIB)
    report_path = tmp_path / "r.json"
    argv = ["compare", str(case["new"]), str(case["old"]), "-q", "--json", str(report_path)]
    assert main([*argv, "--owners", "both"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("differs:")
    assert out[1].startswith("owners of the differing bytes on the source (") and "attributed" in out[1]
    assert "/home/user/alpha.bin  [file, " in out[2]
    assert any(line.startswith("owners of the differing bytes on the destination") for line in out)
    report = json.loads(report_path.read_text())
    source, destination = report["owners"]
    assert (source["side"], destination["side"]) == ("source", "destination")
    assert source["attributed_bytes"] + source["free_bytes"] + source["unattributed_bytes"] == source["bytes"]
    assert {o["name"] for o in source["owners"]} >= set(case["rewritten"])
    assert main(argv) == 1
    assert json.loads(report_path.read_text())["owners"] == []
    assert main([*argv, "--owners", "--fs-offset", "64M"]) == 1  # past every difference
    assert "unattributed" in capsys.readouterr().out
    assert main([*argv, "--owners", "--fs-offset", "sixty"]) == 2
    assert "--fs-offset: 'sixty' is not a size" in capsys.readouterr().err
