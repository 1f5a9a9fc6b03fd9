"""The headless command line: exit codes, messages, the JSON report."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from blocksync_tui.cli import main, parse_size


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    rnd = random.Random(1)
    data = rnd.randbytes(3 * 65536 + 100)
    src = tmp_path / "src.img"
    src.write_bytes(data)
    changed = bytearray(data)
    changed[70000:70010] = b"0123456789"
    dst = tmp_path / "dst.img"
    dst.write_bytes(bytes(changed))
    return src, dst


def test_compare_exit_codes_and_report(pair: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    src, dst = pair
    report_path = tmp_path / "r.json"
    assert main(["compare", str(src), str(dst), "--chunk-size", "64K", "--json", str(report_path)]) == 1
    report = json.loads(report_path.read_text())
    assert report["outcome"] == "differs" and report["chunks"]["differs"] == 1
    assert report["bytes_differing"] == 4096 and report["mode"] == "compare"
    assert "differs: 1 of 4 chunks differ" in capsys.readouterr().out
    assert main(["sync", str(src), str(dst), "--chunk-size", "64K", "--verify"]) == 0
    assert dst.read_bytes() == src.read_bytes()
    assert main(["compare", str(src), str(dst)]) == 0


def test_errors_are_one_line_with_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["sync", str(tmp_path / "nope"), str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err
    assert not (tmp_path / "d").exists()


def test_bad_chunk_size_is_a_usage_error(pair: tuple[Path, Path], capsys) -> None:
    src, dst = pair
    with pytest.raises(SystemExit) as exit_info:
        main(["sync", str(src), str(dst), "--chunk-size", "lots"])
    assert exit_info.value.code == 2
    assert main(["sync", str(src), str(dst), "--chunk-size", "3000"]) == 2
    assert "power of two" in capsys.readouterr().err


def test_parse_size() -> None:
    assert parse_size("64K") == 65536 and parse_size("1M") == 1 << 20
    assert parse_size("4MiB") == 4 << 20 and parse_size("512") == 512


def test_console_script_entry_point(pair: tuple[Path, Path]) -> None:
    src, dst = pair
    result = subprocess.run(
        [sys.executable, "-m", "blocksync_tui", "compare", str(src), str(dst)],
        capture_output=True, text=True,
    )
    assert result.returncode == 1 and "differs" in result.stdout
