"""--changed-from FILE: only the ranges a list says changed are compared, and a sample of the
rest; a list that lies is caught by the sample. Lists are ddrescue mapfiles or thin_delta XML
(real output of thin-provisioning-tools in tests/data), and hostile ones are one line."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from blocksync_tui.cli import main
from blocksync_tui.engine import changelist
from blocksync_tui.engine.chunkmap import State
from blocksync_tui.engine.errors import UsageError
from blocksync_tui.engine.prior import Prior, Scope, sample_size

DATA = Path(__file__).parent / "data"
CHUNK = 4096


def _pair(tmp_path: Path, chunks: int, changed: list[int]) -> tuple[Path, Path]:
    rnd = random.Random(5)
    data = rnd.randbytes(chunks * CHUNK)
    other = bytearray(data)
    for index in changed:
        other[index * CHUNK + 100 : index * CHUNK + 200] = rnd.randbytes(100)
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    src.write_bytes(data)
    dst.write_bytes(bytes(other))
    return src, dst


def _map(tmp_path: Path, chunks: int, changed: list[int]) -> Path:
    """A ddrescue mapfile: `-` for the chunks listed, `+` elsewhere."""
    lines = ["# Mapfile. Created by a test", "0x00000000     +               1"]
    for index in range(chunks):
        lines.append(f"0x{index * CHUNK:08X}  0x{CHUNK:08X}  {'-' if index in changed else '+'}")
    path = tmp_path / "changes.map"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(*args: str, tmp_path: Path) -> tuple[int, dict]:
    report = tmp_path / "report.json"
    status = main([*args, "--chunk-size", str(CHUNK), "-q", "--json", str(report)])
    return status, json.loads(report.read_text()) if report.exists() else {}


@pytest.mark.parametrize("direct", [True, False])
def test_only_the_listed_chunks_and_a_sample_are_compared(tmp_path: Path, direct: bool) -> None:
    changed = [10, 11, 12, 700]
    src, dst = _pair(tmp_path, 1024, changed)
    listed = _map(tmp_path, 1024, changed)
    status, report = _run("sync", str(src), str(dst), "--changed-from", str(listed),
                          *([] if direct else ["--no-direct"]), tmp_path=tmp_path)
    assert status == 0 and dst.read_bytes() == src.read_bytes()
    assert report["settled_by"] == "list" and report["sample_differed"] == 0
    assert report["chunks_sampled"] == 64 and report["chunks_settled"] == 1024 - 4 - 64
    assert report["chunks"]["written"] == 4


@pytest.mark.parametrize("direct", [True, False])
def test_a_wrong_list_is_caught_by_the_sample(tmp_path: Path, capsys, direct: bool) -> None:
    """60 chunks: the sample (at least 64) covers every chunk the list calls unchanged, so the
    change it leaves out is found for sure, said in one warning, and everything is compared."""
    src, dst = _pair(tmp_path, 60, [3, 40, 41])
    listed = _map(tmp_path, 60, [3])  # says only chunk 3 changed
    status, report = _run("sync", str(src), str(dst), "--changed-from", str(listed),
                          *([] if direct else ["--no-direct"]), tmp_path=tmp_path)
    assert status == 0 and dst.read_bytes() == src.read_bytes()
    assert report["sample_differed"] == 2 and report["chunks_settled"] == 0
    assert report["chunks"]["written"] == 3
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "the list is wrong, so every chunk is compared" in warnings[0]


def test_a_wrong_list_with_many_settled_chunks_is_caught_and_compared_in_full(tmp_path: Path) -> None:
    """Changes in half of 1024 chunks that the list leaves out: a sample of 64 misses them all
    with a probability of 2^-64; then the rest of the device is compared in the same run."""
    src, dst = _pair(tmp_path, 1024, list(range(0, 1024, 2)))
    listed = _map(tmp_path, 1024, [])
    status, report = _run("compare", str(src), str(dst), "--changed-from", str(listed), tmp_path=tmp_path)
    assert status == 1
    assert report["sample_differed"] > 0 and report["chunks_settled"] == 0
    assert report["chunks_differing"] == 512


def test_thin_delta_xml_of_real_thin_provisioning_tools() -> None:
    """tests/data holds what thin_delta 0.9.0 wrote for two thin devices (thin_dump.xml,
    restored with thin_restore): blocks of 128 sectors (64 KiB); 16-19 differ, 30-35 are new in
    the second snapshot, 48-55 only in the first; the plain and the --verbose form agree."""
    for name in ("thin_delta.xml", "thin_delta_verbose.xml"):
        prior = changelist.load(str(DATA / name), 64 << 10, 64 * (64 << 10))
        suspect = [i for i, state in enumerate(prior.states) if state == State.PENDING]
        assert suspect == [*range(16, 20), *range(30, 36), *range(48, 56)], name
    # In chunks of 1 MiB (16 blocks each): chunks 1, 3 hold changes, 0 and 2 do not.
    coarse = changelist.load(str(DATA / "thin_delta.xml"), 1 << 20, 4 << 20)
    assert [state == State.PENDING for state in coarse.states] == [False, True, True, True]


@pytest.mark.skipif(shutil.which("thin_delta") is None, reason="thin-provisioning-tools is not installed")
def test_thin_delta_output_now_matches_the_sample(tmp_path: Path) -> None:
    meta = tmp_path / "meta.bin"
    with meta.open("wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["thin_restore", "-i", str(DATA / "thin_dump.xml"), "-o", str(meta)], check=True, capture_output=True)
    out = subprocess.run(["thin_delta", "--snap1", "1", "--snap2", "2", str(meta)], check=True, capture_output=True)
    fresh = tmp_path / "delta.xml"
    fresh.write_bytes(out.stdout)
    assert changelist.load(str(fresh), 65536, 4 << 20) == changelist.load(str(DATA / "thin_delta.xml"), 65536, 4 << 20)


HOSTILE = {
    "garbage line": ("0x0 + 1\n0x0 0x1000 +\nrm -rf /\n", "line 3 is not 'pos size status'"),
    "unknown status": ("0x0 0x1000 X\n", "unknown status 'X'"),
    "out of order": ("0x2000 0x1000 +\n0x0 0x1000 -\n", "overlaps or precedes"),
    "negative": ("-1 0x1000 +\n", "is not 'pos size status'"),
    "long line": ("0x0 0x1000 +" + " " * 5000 + "\n", "longer than 4096"),
    "billion laughs": ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]>'
                       '<superblock data_block_size="128"><diff/></superblock>', "DOCTYPE"),
    "not thin_delta": ("<html><body/></html>", "not thin_delta's <superblock>"),
    "bad block size": ('<superblock data_block_size="0"><diff/></superblock>', "data_block_size 0"),
    "past the end": ('<superblock data_block_size="128"><diff><different begin="999999" length="1"/></diff></superblock>',
                     "reaches past the end"),
    "bad number": ('<superblock data_block_size="128"><diff><same begin="1e9" length="1"/></diff></superblock>',
                   "no valid begin"),
    "unknown element": ('<superblock data_block_size="128"><diff><gone begin="1" length="1"/></diff></superblock>',
                        "unknown element <gone>"),
    "broken XML": ('<superblock data_block_size="128"><diff>', "not valid XML"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_list_is_one_line_and_nothing_is_compared(tmp_path: Path, capsys, case: str) -> None:
    text, expected = HOSTILE[case]
    listed = tmp_path / "changes"
    listed.write_text(text)
    src, dst = _pair(tmp_path, 16, [1])
    before = dst.read_bytes()
    status = main(["sync", str(src), str(dst), "--chunk-size", str(CHUNK), "-q", "--changed-from", str(listed)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"blocksync-tui: --changed-from {listed}: ") and expected in err, err
    assert dst.read_bytes() == before


def test_a_missing_list_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="No such file"):
        changelist.load(str(tmp_path / "nothing"), CHUNK, 1 << 20)


def test_the_sample_is_a_thousandth_at_least_64_or_all() -> None:
    assert [sample_size(n) for n in (0, 10, 64, 1000, 64_000, 1_000_000)] == [0, 10, 64, 64, 64, 1000]
    states = bytes([State.SAME]) * 100_000
    scope = Scope(0, len(states), Prior(states, CHUNK, "list"), random.Random(1))
    assert len(scope.sample) == 100 and all(states[i] == State.SAME for i in scope.sample)
    windows = list(scope.windows(32))
    assert sum(count for window in windows for _, count in window) == 100
    assert [first + k for window in windows for first, count in window for k in range(count)] == sorted(scope.sample)
