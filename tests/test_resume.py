"""Resume: an interrupted sync leaves a state file of what is on disk, and the next sync of the
same pair reads only the rest (and a sample of what was done). Real CLIs, killed for real."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_signals import Cli, _running, _wait_for

from blocksync_tui.cli import main
from blocksync_tui.engine import resume
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import ConnectionLost
from blocksync_tui.engine.options import SyncOptions
from blocksync_tui.engine.sync import SyncEngine
from blocksync_tui.engine.transports import transport_factory

SIZE = 64 << 20
CHUNK = "4K"
TOTAL = SIZE // 4096
FAST = {"BLOCKSYNC_CHECKPOINT_SECONDS": "0.05"}
"""Checkpoints every 50 ms, so that a run killed a second in has recorded some."""


@pytest.fixture
def cli() -> Iterator[Cli]:
    runner = Cli()
    yield runner
    runner.cleanup()


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A source and a destination that differ in every chunk."""
    rnd = random.Random(11)
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    src.write_bytes(rnd.randbytes(SIZE))
    dst.write_bytes(rnd.randbytes(SIZE))
    return src, dst


def _done(state: Path, at_least: int = 2 << 20) -> bool:
    """Whether a state file records `at_least` bytes done: more chunks than a sample reads."""
    try:
        lines = state.read_text().splitlines()
    except OSError:
        return False
    done = sum(int(line.split()[1], 16) for line in lines if line.endswith("  +") and line.startswith("0x"))
    return done >= at_least


def _sync(src: Path, dst: Path, tmp_path: Path, *more: str) -> dict:
    report = tmp_path / "report.json"
    assert main(["sync", str(src), str(dst), "--chunk-size", CHUNK, "-q", "--json", str(report), *more]) == 0
    return json.loads(report.read_text())


def _kill_when_done_some(cli: Cli, src: Path, dst: Path, state: Path, sig: int, share: float) -> subprocess.Popen[str]:
    """Start a sync and signal it once its checkpoints record `share` of the device more than a
    first one (a point in the run, not a time: a fast machine could finish before a delay)."""
    process = cli.start("sync", str(src), str(dst), "--chunk-size", CHUNK, "-q", "--state", str(state), env=FAST)
    _wait_for(lambda: _done(state, (2 << 20) + int(share * SIZE)), process, "a first checkpoint")
    workers = cli.workers_of(process)
    assert process.poll() is None, "the sync ended before it could be interrupted"
    os.killpg(process.pid, sig) if sig != signal.SIGKILL else process.kill()
    process.wait(60)
    deadline = time.monotonic() + 30  # a killed controller's workers finish their writes, then go
    while any(_running(*w) for w in workers):
        assert time.monotonic() < deadline, "workers outlived their controller"
        time.sleep(0.01)
    return process


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_at_a_random_point_then_the_rerun_resumes(cli: Cli, pair: tuple[Path, Path], tmp_path: Path, seed: int) -> None:
    src, dst = pair
    state = tmp_path / "sync.map"
    process = _kill_when_done_some(cli, src, dst, state, signal.SIGKILL, random.Random(seed).uniform(0, 0.5))
    assert process.returncode == -signal.SIGKILL
    assert "# ended: false" in state.read_text()  # the controller never got to say it ended

    report = _sync(src, dst, tmp_path, "--state", str(state))
    assert dst.read_bytes() == src.read_bytes()
    assert report["settled_by"] == "resume" and report["sample_differed"] == 0
    # It read less than the whole device: what the killed run had on disk was not read again.
    assert report["chunks_settled"] > 0
    assert report["chunks_settled"] + report["chunks_sampled"] <= TOTAL
    assert not state.exists(), "a completed sync leaves its state file behind"


def test_sigint_leaves_a_state_and_the_rerun_says_it_resumes(cli: Cli, pair: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = pair
    state = tmp_path / "sync.map"
    process = _kill_when_done_some(cli, src, dst, state, signal.SIGINT, 0.1)
    assert process.returncode == 130
    text = state.read_text()
    assert "# ended: true" in text and text.startswith(resume.MAGIC)
    assert subprocess.run(["ddrescuelog", "-t", str(state)], capture_output=True).returncode in (0, 127)

    rerun = cli.start("sync", str(src), str(dst), "--chunk-size", CHUNK, "-q", "--state", str(state), "--json", "-")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert "blocksync-tui: resuming at " in err and "%" in err
    report = json.loads(out)
    assert report["settled_by"] == "resume" and report["chunks_settled"] > 0
    assert dst.read_bytes() == src.read_bytes() and not state.exists()


def test_the_default_state_file_lives_in_the_cache_directory(cli: Cli, pair: tuple[Path, Path], tmp_path: Path, own_cache_home: Path) -> None:
    """Without --state, the pair's state file is under ~/.cache/blocksync-tui/resume/."""
    src, dst = pair
    process = cli.start("sync", str(src), str(dst), "--chunk-size", CHUNK, "-q", env=FAST)
    where = own_cache_home / "blocksync-tui" / "resume"
    _wait_for(lambda: any(_done(p) for p in where.glob("*.map")), process, "a state file in the cache")
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(60) == 130
    assert _sync(src, dst, tmp_path)["settled_by"] == "resume"
    assert list(where.glob("*.map")) == []


def test_no_resume_neither_reads_nor_writes_a_state(cli: Cli, pair: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = pair
    state = tmp_path / "sync.map"
    _kill_when_done_some(cli, src, dst, state, signal.SIGINT, 0.1)
    before = state.read_text()
    report = _sync(src, dst, tmp_path, "--state", str(state), "--no-resume")
    assert report["settled_by"] == "" and report["chunks_settled"] == 0
    assert state.read_text() == before


@pytest.mark.parametrize("change", ["source modified", "destination replaced"])
def test_a_state_whose_pair_changed_is_ignored(cli: Cli, pair: tuple[Path, Path], tmp_path: Path, change: str, capsys) -> None:
    src, dst = pair
    state = tmp_path / "sync.map"
    _kill_when_done_some(cli, src, dst, state, signal.SIGINT, 0.1)
    if change == "source modified":
        with open(src, "r+b") as f:  # same size, new content, new modification time
            f.write(b"changed")
    else:
        replacement = tmp_path / "other.img"
        replacement.write_bytes(dst.read_bytes())
        os.replace(replacement, dst)  # the same bytes, but another file
    capsys.readouterr()
    report = _sync(src, dst, tmp_path, "--state", str(state))
    err = capsys.readouterr().err
    assert report["settled_by"] == "" and report["chunks_settled"] == 0
    assert "resume state" in err and "is ignored" in err and "every chunk is compared" in err
    assert dst.read_bytes() == src.read_bytes()


def test_a_state_file_that_is_not_ours_is_ignored_in_one_line(pair: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    src, dst = pair
    state = tmp_path / "sync.map"
    state.write_text("# Mapfile\n0x0 + 1\n0x0 0x1000 +\nthis is no mapfile line\n")
    report = _sync(src, dst, tmp_path, "--state", str(state))
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert report["settled_by"] == "" and len(err) == 1
    assert "line 4 is not 'pos size status'" in err[0]


def test_a_lost_ssh_connection_leaves_a_state_and_the_rerun_resumes(sshd, pair: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    """A push to a real sshd whose connection dies mid-sync: the remote worker flushes what it
    got, and the rerun over SSH reads only the rest."""
    monkeypatch.setenv("BLOCKSYNC_CHECKPOINT_SECONDS", "0.05")
    src, dst = pair
    state = tmp_path / "sync.map"
    options = SyncOptions(chunk_size=4096, direct=False, state_file=str(state))

    def engine() -> SyncEngine:
        return SyncEngine(Endpoint.parse(str(src)), Endpoint.parse(sshd.endpoint(dst)), options,
                          transport_factory(sshd.ssh_options()))

    first = engine()
    first.prepare()

    def cut_when_done_some() -> None:
        deadline = time.monotonic() + 60
        while not _done(state) and time.monotonic() < deadline:
            time.sleep(0.005)
        sshd.kill_connections()

    threading.Thread(target=cut_when_done_some, daemon=True).start()
    with pytest.raises(ConnectionLost):
        first.run()
    assert sshd.wait_sessions_gone(timeout=30) == []
    assert _done(state)

    second = engine()
    second.prepare()
    assert any(note.startswith("resuming at ") for note in second.notes)
    report = second.run()
    assert report.settled_by == "resume" and report.chunks_settled > 0 and report.sample_differed == 0
    assert dst.read_bytes() == src.read_bytes() and not state.exists()
