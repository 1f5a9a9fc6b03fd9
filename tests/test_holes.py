"""Holes and allocated zeros are two states: a chunk is a *hole* when it lies wholly in a hole
of the file on both sides (neither was read), and *zero* when it is zeros allocated on at
least one side (written zeros, or any zero chunk of a block device)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from test_block_map import MapApp

from blocksync_tui.cli import main
from blocksync_tui.engine.chunkmap import ChunkMap, State
from blocksync_tui.engine.mapfile import ddrescue_map
from blocksync_tui.tui.map_svg import map_svg
from blocksync_tui.tui.widgets.block_map import BlockMap
from blocksync_tui.tui.widgets.block_map_legend import BlockMapLegend
from helpers import run_engine

CHUNK = 64 << 10


def _image(path: Path, data: dict[int, bytes], zeros: list[int], chunks: int = 16) -> Path:
    """A sparse file of `chunks` chunks: data at some chunks, zeros written (allocated) at
    others, holes elsewhere."""
    with open(path, "wb") as f:
        f.truncate(chunks * CHUNK)
        for index, payload in data.items():
            f.seek(index * CHUNK)
            f.write(payload)
        for index in zeros:
            f.seek(index * CHUNK)
            f.write(bytes(CHUNK))
        f.flush()
        os.fsync(f.fileno())
    if os.lseek(os.open(path, os.O_RDONLY), 0, os.SEEK_HOLE) == chunks * CHUNK:
        pytest.skip("this file system does not report holes")
    return path


@pytest.mark.parametrize("direct", [False, True])
def test_holes_and_allocated_zeros_apart_in_the_map_and_report(tmp_path: Path, direct: bool) -> None:
    """Chunk 0 data; 3 and 4 allocated zeros on both sides; 6 allocated zeros on the source
    only (a hole on the destination); 9 a hole on the source only; the rest holes on both."""
    payload = {0: random.Random(1).randbytes(CHUNK)}
    src = _image(tmp_path / "src.img", payload, zeros=[3, 4, 6])
    dst = _image(tmp_path / "dst.img", payload, zeros=[3, 4, 9])
    report = run_engine(src, dst, chunk_size=CHUNK, direct=direct, dry_run=True)
    assert report.outcome == "identical"
    assert report.chunks["same"] == 1
    assert report.chunks["zero"] == 4  # 3, 4, 6, 9: allocated on at least one side
    assert report.chunks["hole"] == 11
    assert json.loads(report.to_json())["chunks"]["hole"] == 11


def test_a_sync_keeps_holes_and_reports_them(tmp_path: Path) -> None:
    """A first copy of a sparse image: its holes stay holes and are counted as such; a repeat
    compare reads neither side's holes and says so."""
    src = _image(tmp_path / "src.img", {5: b"\x01" * CHUNK}, zeros=[7])
    dst = tmp_path / "dst.img"
    first = run_engine(src, dst, chunk_size=CHUNK, direct=False)
    assert first.method == "stream"
    assert (first.chunks["written"], first.chunks["zero"], first.chunks["hole"]) == (1, 1, 14)
    again = run_engine(src, dst, chunk_size=CHUNK, dry_run=True, cache="full", direct=False)
    assert (again.chunks["same"], again.chunks["hole"]) == (1, 14)
    assert again.chunks["zero"] == 1  # allocated on the source, a hole in the copy


def test_the_cli_report_and_mapfile_name_holes(tmp_path: Path) -> None:
    src = _image(tmp_path / "src.img", {0: b"\x02" * CHUNK}, zeros=[1])
    dst = _image(tmp_path / "dst.img", {0: b"\x02" * CHUNK}, zeros=[1])
    out = tmp_path / "report.json"
    mapfile = tmp_path / "map.txt"
    assert main(["compare", "-q", "--chunk-size", "64K", "--json", str(out), "--map", str(mapfile), str(src), str(dst)]) == 0
    chunks = json.loads(out.read_text())["chunks"]
    assert (chunks["same"], chunks["zero"], chunks["hole"]) == (1, 1, 14)
    assert mapfile.read_text().splitlines()[-1] == f"0x00000000  0x{16 * CHUNK:08X}  +"


def _map_with_holes() -> ChunkMap:
    chunk_map = ChunkMap(100)
    for index in range(100):
        chunk_map.set(index, State.HOLE if index < 60 else State.ZERO if index < 90 else State.SAME)
    return chunk_map


def test_holes_have_their_own_colour_in_the_svg_export() -> None:
    colors = {state: f"#{state:02x}{state:02x}{state:02x}" for state in State}
    svg = map_svg(_map_with_holes().snapshot(), colors, "holes", CHUNK)
    assert "hole: 60" in svg and "zero: 30" in svg and "same: 10" in svg
    assert f'fill="{colors[State.HOLE]}"' in svg and f'fill="{colors[State.ZERO]}"' in svg
    assert ddrescue_map(_map_with_holes(), CHUNK, 100 * CHUNK).count("+") >= 1


async def test_holes_have_their_own_colour_and_count_in_the_legend() -> None:
    app = MapApp(_map_with_holes(), poll_interval=None)
    async with app.run_test(size=(120, 20)) as pilot:
        await pilot.pause()
        block_map = app.query_one(BlockMap)
        assert block_map.state_color(State.HOLE) != block_map.state_color(State.ZERO)
        text = app.query_one(BlockMapLegend).render().plain.replace("\u00a0", " ")
        assert "hole 60" in text and "zero 30" in text


def test_a_direct_sync_does_not_take_a_data_chunk_for_zeros(tmp_path: Path) -> None:
    """A chunk whose differing part ends in zeros, with data before it: the direct compare
    used to let the zero stretch it wrote stand for the whole chunk, so --verify found the
    chunk's digest "changed" and sent it again (state updated)."""
    rnd = random.Random(5)
    head = rnd.randbytes(CHUNK // 2)
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    src.write_bytes((head + rnd.randbytes(4096) + bytes(CHUNK // 2 - 4096)) * 4)
    dst.write_bytes((head + rnd.randbytes(4096) + b"\x01" * (CHUNK // 2 - 4096)) * 4)
    report = run_engine(src, dst, chunk_size=CHUNK, direct=True, verify=True)
    assert report.method == "direct" and report.verified
    assert (report.chunks["written"], report.chunks["updated"]) == (4, 0)
    assert dst.read_bytes() == src.read_bytes()
