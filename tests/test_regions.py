"""Differing bytes per partition: the report's `partitions`, from real runs on GPT images, and
the tally's split of a chunk that straddles a boundary."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from disk_images import MiB, gpt_image

from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.layout import Layout, Partition
from blocksync_tui.engine.parallel import ParallelEngine
from blocksync_tui.engine.regions import DiffTally, Region, regions_of, report_layout
from blocksync_tui.engine.sync import SyncEngine, SyncOptions

PAGE = 4096


def _write(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A GPT image and a copy with one page changed in p1, three in p2 and one in the gap
    between the GPT's entries and p1."""
    src = gpt_image(tmp_path / "src.img")
    dst = tmp_path / "dst.img"
    shutil.copyfile(src, dst)
    _write(dst, 512 * KiB, b"\xaa" * PAGE)  # unpartitioned, after the GPT entries
    _write(dst, 6 * MiB, b"\xbb" * PAGE)  # p1, past the FAT
    for k in range(3):
        _write(dst, 40 * MiB + k * 2 * MiB, b"\xcc" * PAGE)  # p2, in the ext4's free space
    return src, dst


KiB = 1024


def _engine(src: Path, dst: Path, **options: object) -> SyncEngine:
    engine = SyncEngine(Endpoint.parse(str(src)), Endpoint.parse(str(dst)), SyncOptions(**options))
    engine.prepare()
    return engine


def _by_region(rows: list[dict]) -> list[tuple[str, int]]:
    return [(row["region"], row["bytes_differing"]) for row in rows]


@pytest.mark.parametrize("direct", [False, True])
def test_the_report_counts_differing_bytes_per_partition(pair: tuple[Path, Path], direct: bool) -> None:
    engine = _engine(*pair, dry_run=True, direct=direct)
    assert engine.source_layout is not None and engine.destination_layout is not None
    assert [p.label for p in engine.destination_layout.partitions] == ["p1", "p2"]
    report = engine.run()
    assert report.method == ("direct" if direct else "digests")
    assert _by_region(report.partitions) == [
        ("unpartitioned", PAGE), ("p1", PAGE), ("p2", 3 * PAGE), ("unpartitioned", 0),
    ]
    assert sum(row["bytes_differing"] for row in report.partitions) == report.bytes_differing
    p2 = report.partitions[2]
    assert (p2["fs"], p2["label"], p2["type"], p2["name"], p2["chunks_differing"]) == (
        "ext4", "root", "Linux filesystem", "root", 3,
    )
    assert p2["offset"] == 21 * MiB and report.partitions[-1]["offset"] + report.partitions[-1]["length"] == report.size


def test_a_sync_counts_what_it_writes_and_a_first_copy_counts_by_the_source(pair: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = pair
    report = _engine(src, dst, direct=False).run()
    # The source's chunks in p1 and p2 are zeros: such a chunk is zeroed whole, and counted so.
    assert _by_region(report.partitions)[:3] == [("unpartitioned", PAGE), ("p1", MiB), ("p2", 3 * MiB)]
    assert sum(row["bytes_differing"] for row in report.partitions) == report.bytes_differing
    fresh = tmp_path / "new.img"
    engine = _engine(src, fresh, direct=False)
    assert engine.destination_layout is None  # absent: the source's layout is counted by
    report = engine.run()
    assert report.method == "stream"
    assert sum(row["bytes_differing"] for row in report.partitions) == report.bytes_differing > 0
    assert [row["region"] for row in report.partitions] == ["unpartitioned", "p1", "p2", "unpartitioned"]


def test_a_chunk_across_a_boundary_is_split_where_its_bytes_lie(pair: tuple[Path, Path]) -> None:
    """With 4 MiB chunks, chunk 0 holds the gap and the start of p1: the sub-block digests of
    a compare by digests place each page; a direct compare, which only says how many bytes
    differ, splits them in proportion (1 MiB of gap, 3 MiB of p1)."""
    src, dst = pair
    _write(dst, 6 * MiB, open(src, "rb").read()[6 * MiB : 6 * MiB + PAGE])  # undo p1's change
    _write(dst, 2 * MiB, b"\xdd" * PAGE)  # p1, in chunk 0
    exact = _engine(src, dst, dry_run=True, direct=False, chunk_size=4 * MiB).run()
    assert _by_region(exact.partitions)[:3] == [("unpartitioned", PAGE), ("p1", PAGE), ("p2", 3 * PAGE)]
    assert [row["chunks_differing"] for row in exact.partitions][:2] == [1, 1]
    split = _engine(src, dst, dry_run=True, direct=True, chunk_size=4 * MiB, cache="full").run()  # not the cache the first kept
    assert _by_region(split.partitions)[:3] == [("unpartitioned", 2 * PAGE // 4), ("p1", 2 * PAGE * 3 // 4), ("p2", 3 * PAGE)]


def test_lanes_of_a_parallel_run_sum_their_partitions(pair: tuple[Path, Path]) -> None:
    src, dst = pair
    engine = ParallelEngine(Endpoint.parse(str(src)), Endpoint.parse(str(dst)), SyncOptions(dry_run=True, streams=2))
    engine.prepare()
    assert engine.destination_layout is not None
    report = engine.run()
    assert _by_region(report.partitions)[:3] == [("unpartitioned", PAGE), ("p1", PAGE), ("p2", 3 * PAGE)]


def test_no_layout_no_partitions(tmp_path: Path) -> None:
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_bytes(os.urandom(1 << 16))
    dst.write_bytes(os.urandom(1 << 16))
    report = _engine(src, dst, dry_run=True, layout=False).run()
    assert report.partitions == []
    report = _engine(src, dst, dry_run=True).run()
    assert _by_region(report.partitions) == [("whole device", 1 << 16)]


def _layout(*parts: tuple[int, int, int]) -> Layout:
    return Layout(size=100, table="gpt", partitions=tuple(
        Partition(n, start, length, "t", "Linux filesystem") for n, start, length in parts))


def test_regions_name_the_gaps_and_cut_overlaps() -> None:
    regions = regions_of(_layout((1, 10, 20), (2, 25, 30), (3, 90, 50)), 100)
    assert [(r.name, r.start, r.end) for r in regions] == [
        ("unpartitioned", 0, 10), ("p1", 10, 30), ("p2", 30, 55), ("unpartitioned", 55, 90), ("p3", 90, 100),
    ]
    assert regions_of(None, 100) == []
    assert report_layout(None, _layout()) == _layout()  # no table either side: what there is
    assert report_layout(_layout(), _layout((1, 0, 10))) == _layout((1, 0, 10))


def test_the_tally_splits_by_spans_or_in_proportion() -> None:
    tally = DiffTally([Region("a", 0, 10), Region("b", 10, 40)])
    tally.add(0, 8, 8)  # inside a
    tally.add(8, 8, 4, spans=[(0, 1), (3, 3)])  # 1 byte in a, 3 in b
    tally.add(8, 8, 8)  # no spans: 2 in a, 6 in b
    tally.add(32, 8, 0)  # nothing differs: nothing counted
    assert tally.bytes == [8 + 1 + 2, 3 + 6]
    assert tally.chunks == [3, 2]
