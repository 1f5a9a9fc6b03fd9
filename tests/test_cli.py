"""The headless command line: exit codes, messages, the JSON report."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from blocksync_tui.cli import build_parser, main
from blocksync_tui.engine.sync import MAX_CHUNK, SyncEngine
from blocksync_tui.engine.units import parse_size, size_text


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


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "blocksync_tui", *args]


@pytest.mark.parametrize(
    "args, status, err_lines",
    [([], 1, 0), (["--json", "-"], 1, 1), (["--help"], 0, 0)],
    ids=["summary", "json-report", "help"],
)
def test_closed_stdout_ends_quietly(
    pair: tuple[Path, Path], args: list[str], status: int, err_lines: int
) -> None:
    """`blocksync-tui compare A B | head -0`: the reader is gone before anything is printed.
    That is no error: no traceback, no "Exception ignored", and the run's own exit status.
    (With the JSON report on stdout, the summary line is on stderr.)"""
    src, dst = pair
    argv = ["compare", "--help"] if args == ["--help"] else ["compare", str(src), str(dst), *args]
    process = subprocess.Popen(_cli(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # type: ignore[union-attr]  # no reader left, as after `head -0`
    err = process.stderr.read()  # type: ignore[union-attr]
    process.wait(timeout=60)
    process.stderr.close()  # type: ignore[union-attr]
    assert process.returncode == status, err
    assert err.count(b"\n") == err_lines and b"Error" not in err and b"ignored" not in err, err


def _break(monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """Make SyncEngine.<method> fail the way a bug would."""

    def broken(self: SyncEngine) -> None:
        self.close()
        raise TypeError("unexpected\nvalue")

    monkeypatch.setattr(SyncEngine, method, broken)


@pytest.mark.parametrize("method", ["prepare", "run"])  # in the main thread, in the engine's
def test_internal_error_is_one_line(
    pair: tuple[Path, Path], monkeypatch, capsys, method: str
) -> None:
    src, dst = pair
    monkeypatch.delenv("BLOCKSYNC_DEBUG", raising=False)
    _break(monkeypatch, method)
    assert main(["sync", str(src), str(dst)]) == 2
    assert capsys.readouterr().err == (
        "blocksync-tui: internal error: TypeError: unexpected value "
        "(run with --debug for the traceback)\n"
    )


@pytest.mark.parametrize("how", ["option", "environment"])
def test_debug_shows_the_traceback(pair: tuple[Path, Path], monkeypatch, capsys, how: str) -> None:
    src, dst = pair
    _break(monkeypatch, "run")
    if how == "environment":
        monkeypatch.setenv("BLOCKSYNC_DEBUG", "1")
    assert main(["sync", str(src), str(dst), *(["--debug"] if how == "option" else [])]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and ", in broken" in err
    assert err.splitlines()[-1] == "blocksync-tui: internal error: TypeError: unexpected value"


def test_json_dash_writes_the_report_to_stdout(
    pair: tuple[Path, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    src, dst = pair
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(src), str(dst), "--chunk-size", "64K", "--json", "-"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["outcome"] == "differs"  # stdout holds the JSON alone
    assert "differs: 1 of 4 chunks differ" in captured.err
    assert not (tmp_path / "-").exists()


def test_unwritable_report_is_one_line(pair: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    src, dst = pair
    report = tmp_path / "no such dir" / "r.json"
    assert main(["compare", str(src), str(dst), "--json", str(report)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write the report to {report}" in err


@pytest.mark.parametrize(
    "text", ["-4096", "3K", "3000", "abc", "0", "128M", "1G", str(2 * MAX_CHUNK)]
)
def test_bad_chunk_size_is_one_line(pair: tuple[Path, Path], capsys, text: str) -> None:
    src, dst = pair
    before = dst.read_bytes()
    assert main(["sync", str(src), str(dst), "--chunk-size", text]) == 2
    assert capsys.readouterr().err == (
        f"blocksync-tui: --chunk-size {text}: must be a power of two from 4K to "
        f"{size_text(MAX_CHUNK)}\n"
    )
    assert dst.read_bytes() == before


@pytest.mark.parametrize(
    "text, size",
    [("4096", 4096), ("64K", 64 << 10), ("1M", 1 << 20), ("4MiB", 4 << 20),
     (f"{MAX_CHUNK >> 20}M", MAX_CHUNK), (f"{MAX_CHUNK >> 20}MiB", MAX_CHUNK)],
)
def test_chunk_sizes_with_units(text: str, size: int) -> None:
    assert build_parser().parse_args(["sync", "a", "b", "--chunk-size", text]).chunk_size == size


def test_size_text() -> None:
    sizes = (4096, 64 << 20, 1 << 30, 1536, 100)
    assert [size_text(n) for n in sizes] == ["4K", "64M", "1G", "1536", "100"]


@pytest.mark.parametrize(
    "argv",
    [["sync", "only-a-source"], ["compare", "a", "b", "--bogus"],
     ["sync", "a", "b", "--compress", "rar"], ["sync", "a", "b", "--chunk-size"]],
)
def test_usage_errors_are_one_line(argv: list[str], capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("blocksync-tui: ") and "--help)" in err, err


def test_help_still_shows_the_usage(capsys) -> None:
    assert main(["sync", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: blocksync-tui sync") and "--chunk-size SIZE" in out
    assert "--debug" in out


def test_units_format_and_parse() -> None:
    from blocksync_tui.engine.units import format_duration, human_bytes, human_rate, rate

    assert human_bytes(1536) == "1.5 KiB" and human_bytes(100) == "100 B"
    assert human_rate(1 << 20) == "1.0 MiB/s"
    assert rate(10, 0) == 0.0 and rate(10, 2) == 5.0
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "1:05"
    assert format_duration(None) == "–"
    with pytest.raises(ValueError):
        parse_size("4X")


def test_the_app_has_the_same_ssh_options_as_sync(capsys: pytest.CaptureFixture[str]) -> None:
    """One front door: `app --help` lists the SSH group of `sync --help`, help texts and all."""

    def ssh_section(argv: list[str]) -> str:
        assert main(argv) == 0
        out = capsys.readouterr().out
        return out[out.index("SSH (remote endpoints):"):]

    assert ssh_section(["app", "--help"]) == ssh_section(["sync", "--help"])
    assert main(["--help"]) == 0 and "app " in capsys.readouterr().out


@pytest.mark.parametrize("direct", [False, True], ids=["digests", "direct"])
def test_a_16_tib_sparse_compare_is_cheap_in_memory(tmp_path: Path, direct: bool) -> None:
    """A 16 TiB image that is holes but for two small extents, compared with 64 MiB chunks:
    nothing but the data is read, and the whole run (controller and both workers) stays small
    in memory: one byte of state per chunk and bounded windows, nothing per chunk of the device."""
    size = (16 << 40) - (64 << 20)  # ext4's largest file, on 4 KiB blocks, is just under 16 TiB
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    for path, text in ((src, b"source"), (dst, b"destination")):
        with open(path, "wb") as f:
            try:
                f.truncate(size)
            except OSError as exc:  # a file system with a smaller largest file
                pytest.skip(f"no {size}-byte sparse file here: {exc.strerror}")
            f.seek(size // 3)
            f.write(text)
            f.seek(7 << 40)
            f.write(b"the same on both sides")
    report = tmp_path / "report.json"
    argv = [sys.executable, "-m", "blocksync_tui", "compare", str(src), str(dst), "--chunk-size", "64M",
            "--json", str(report), "-q"] + ([] if direct else ["--no-direct"])
    # A small launcher measures: a child forked from pytest itself would start out with pytest's
    # peak resident size as its own.
    launcher = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
                "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    measured = subprocess.run([sys.executable, "-c", launcher, *argv], cwd=Path(__file__).parent.parent,
                              capture_output=True, text=True, check=True)
    code, peak = map(int, measured.stdout.split()[-2:])
    result = json.loads(report.read_text())
    assert code == 1 and result["outcome"] == "differs"
    assert result["chunks"]["differs"] == 1 and result["chunks"]["same"] == 1
    assert result["total_chunks"] == size // (64 << 20)
    assert peak < 80_000, f"peak RSS {peak} KiB"  # the largest process of the run: CLI or a worker


def test_a_ddrescue_map_of_a_compare_and_of_the_sync(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """--map writes a GNU ddrescue mapfile that covers the device exactly: the differing chunk is
    "-" (what ddrescuelog lists as bad), the rest "+"; after the sync, all of it is "+"."""
    src, dst = pair
    size = src.stat().st_size
    mapfile = tmp_path / "compare.map"
    assert main(["compare", str(src), str(dst), "--chunk-size", "64K", "-q", "--map", str(mapfile)]) == 1
    lines = [line.split() for line in mapfile.read_text().splitlines() if not line.startswith("#")]
    assert lines[0] == ["0x00000000", "+", "1"]
    areas = [(int(pos, 16), int(length, 16), status) for pos, length, status in lines[1:]]
    assert areas == [(0, 65536, "+"), (65536, 65536, "-"), (131072, size - 131072, "+")]
    if shutil.which("ddrescuelog"):  # the tool of that format reads it as we mean it
        listed = subprocess.run(["ddrescuelog", "-b", "65536", "-l-", str(mapfile)],
                                capture_output=True, text=True, check=True)
        assert listed.stdout.split() == ["1"]
    synced = tmp_path / "sync.map"
    assert main(["sync", str(src), str(dst), "--chunk-size", "64K", "-q", "--map", str(synced)]) == 0
    assert synced.read_text().splitlines()[-1] == f"0x00000000  0x{size:08X}  +"


REPORT_KEYS = [
    "source", "destination", "mode", "outcome", "size", "chunk_size", "sub_block_size", "method",
    "algorithm", "compression", "total_chunks", "chunks", "chunks_differing", "bytes_differing",
    "bytes_sent", "wire_bytes", "seconds", "verified", "change_runs", "largest_runs", "errors",
    "warnings", "message", "destination_size", "scanned_source", "scanned_destination", "cache",
    "size_difference", "settled_by", "chunks_settled", "chunks_sampled", "sample_differed",
    "partitions", "owners", "tool_version", "started", "source_host", "destination_host",
    "source_path", "destination_path", "streams",
]
"""The JSON report's keys, in order: scripts read them, so new keys only ever go at the end."""


def test_report_says_when_where_and_by_what(pair: tuple[Path, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A report read a year later still says when it ran, on which machines, which files (the
    absolute paths, links resolved, even for a destination that does not exist yet) and by
    which version of the tool."""
    import time

    from blocksync_tui import __version__

    src, _ = pair
    (tmp_path / "link.img").symlink_to(src.name)
    monkeypatch.chdir(tmp_path)
    before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    assert main(["compare", "link.img", "new.img", "--json", "r.json"]) == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert list(report) == REPORT_KEYS
    assert report["source"] == "link.img" and report["source_path"] == str(src)
    assert report["destination_path"] == str(tmp_path / "new.img")
    assert report["source_host"] == report["destination_host"] == os.uname().nodename
    assert report["tool_version"] == __version__
    assert before <= report["started"] <= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_BROKEN_APP = """
import sys
from blocksync_tui.tui.screens.setup import SetupScreen

def on_mount(self):
    raise ZeroDivisionError("a bug in the app")

SetupScreen.on_mount = on_mount
from blocksync_tui.cli import main
sys.exit(main([]))
"""


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_a_bug_in_the_app_ends_it_with_one_line(tmp_path: Path, debug: bool) -> None:
    """The app on a real terminal, broken on purpose: it ends, the terminal is given back, and
    the command line says what happened in one line with exit status 2, as a headless command
    does; the traceback only with BLOCKSYNC_DEBUG."""
    import pty
    import select

    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "TERM": "xterm-256color",
           "BLOCKSYNC_DEBUG": "1" if debug else "0"}
    process = subprocess.Popen([sys.executable, "-c", _BROKEN_APP], stdin=slave, stdout=slave, stderr=slave,
                               env=env, cwd=tmp_path, close_fds=True)
    os.close(slave)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other end closed: the app has exited
                break
            if not chunk:
                break
            seen += chunk
        status = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    shown = seen.decode(errors="replace")
    last = shown.replace("\r\n", "\n").rstrip("\n").rsplit("\n", 1)[-1]
    assert status == 2, shown[-2000:]
    if debug:
        assert "Traceback (most recent call last)" in shown and "a bug in the app" in shown
        assert last.endswith("blocksync-tui: internal error: ZeroDivisionError: a bug in the app")
    else:
        assert "Traceback" not in shown and "╭" not in shown.split("\x1b[?1049l")[-1], shown[-2000:]
        assert last.endswith(
            "blocksync-tui: internal error: ZeroDivisionError: a bug in the app "
            "(set BLOCKSYNC_DEBUG=1 for the traceback)"
        ), repr(last)
