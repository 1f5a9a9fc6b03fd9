"""Ctrl-C and SIGTERM on the headless CLI, with real processes and real signals.

The CLI runs as `python3 -m blocksync_tui` in a session of its own, and each signal goes to its
whole process group, the way a terminal sends Ctrl-C to its foreground job.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blocksync_tui.cli import STOP_GRACE, main
from sshd import _descendants

LONG_GRACE = 60.0

REPO = Path(__file__).resolve().parents[1]
SIZE = 256 << 20
CHUNK = "4K"
"""Small chunks: 65,536 of them make a sync of SIZE take a second or more, even from cache."""


# -- /proc


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int, started: int) -> bool:
    """Whether that very process (not a later one with its pid) is still there and no zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == started


def _holds(pid: int, path: Path) -> bool:
    """Whether the process has `path` open."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if Path(os.readlink(fd)) == path:
                return True
        except OSError:
            continue
    return False


def _read_bytes(pid: int) -> int:
    """Bytes the process has read so far (rchar: page cache included)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- fixtures


class Cli:
    """Runs the CLI in sessions of its own; kills whatever is left at the end of the test."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []
        self.workers: list[tuple[int, int]] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "blocksync_tui", *args],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True, env={**os.environ, **(env or {})},
        )
        self.started.append(process)
        return process

    def workers_of(self, process: subprocess.Popen[str]) -> list[tuple[int, int]]:
        """The worker processes of a running CLI, as (pid, start time); killed at the end."""
        found = [(pid, stat[2]) for pid in _children(process.pid) if (stat := _stat(pid))]
        self.workers.extend(found)
        return found

    def cleanup(self) -> None:
        for process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            process.stdout.close()  # type: ignore[union-attr]
            process.stderr.close()  # type: ignore[union-attr]
        for pid, started in self.workers:
            if _running(pid, started):  # never a later process that reuses the pid
                os.kill(pid, signal.SIGKILL)  # a stopped process dies of SIGKILL too


@pytest.fixture
def cli() -> Iterator[Cli]:
    runner = Cli()
    yield runner
    runner.cleanup()


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A source with no zero 4 KiB page: every chunk differs from an all-zero destination."""
    path = tmp_path_factory.mktemp("signals") / "src.img"
    mib = bytes(range(256)) * 4096
    with path.open("wb") as out:
        for _ in range(SIZE >> 20):
            out.write(mib)
    return path


@pytest.fixture
def zero_destination(tmp_path: Path) -> Path:
    """A sparse destination of the source's size (no "will be grown" warning on stderr)."""
    path = tmp_path / "dst.img"
    with path.open("wb") as out:
        out.truncate(SIZE)
    return path


# -- helpers


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen[str], what: str,
              timeout: float = 60.0) -> None:
    """Poll until `condition` holds; fail if the CLI ends first or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the CLI ended (status {process.returncode}) before {what}: {out}{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f} s")
        time.sleep(0.005)


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def _started_workers(cli: Cli, process: subprocess.Popen[str]) -> list[tuple[int, int]]:
    """Both workers, checked to run in sessions of their own: a terminal's Ctrl-C is not theirs."""
    workers = cli.workers_of(process)
    assert len(workers) == 2, workers
    for pid, _ in workers:
        assert os.getsid(pid) != os.getsid(process.pid), "a worker shares the CLI's session"
    return workers


def _assert_gone(workers: list[tuple[int, int]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_running(*w) for w in workers):
        assert time.monotonic() < deadline, f"workers left running: {workers}"
        time.sleep(0.01)


def _assert_one_line(err: str) -> None:
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and "Broken pipe" not in err, err


def _rerun_finishes(src: Path, dst: Path, tmp_path: Path, already_written: int | None) -> None:
    """The same sync again completes it: the rest is written and dst equals src."""
    report_path = tmp_path / "rerun.json"
    assert main(["sync", str(src), str(dst), "--chunk-size", CHUNK, "-q",
                 "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    if already_written is not None:  # what the cancelled run counted as written is on disk:
        # the rerun resumes, and reads it again only for a sample
        assert report["settled_by"] == "resume"
        assert report["chunks_settled"] + report["chunks_sampled"] == already_written
    assert filecmp.cmp(src, dst, shallow=False)


# -- tests


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_cancels_the_sync_at_a_chunk_boundary(
    cli: Cli, big_source: Path, zero_destination: Path, tmp_path: Path, signum: int
) -> None:
    """Ctrl-C (or a service manager's SIGTERM): the writes sent are completed and flushed, one
    line says so, the status is 128 + the signal, no worker is left, and a rerun finishes."""
    report_path = tmp_path / "report.json"
    process = cli.start("sync", str(big_source), str(zero_destination), "--chunk-size", CHUNK,
                        "--json", str(report_path))
    _wait_for(lambda: _allocated(zero_destination) >= 4 << 20, process, "writes")
    workers = _started_workers(cli, process)
    os.killpg(process.pid, signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    _assert_one_line(err)
    assert signal.Signals(signum).name in err and "run the sync again" in err, err
    assert out == ""
    report = json.loads(report_path.read_text())
    assert report["outcome"] == "cancelled"
    written = report["chunks"]["written"]
    assert 0 < written < report["total_chunks"], "the sync was not interrupted part-way"
    _assert_gone(workers)
    _rerun_finishes(big_source, zero_destination, tmp_path, written)


def test_sigint_cancels_a_compare(cli: Cli, big_source: Path, zero_destination: Path) -> None:
    process = cli.start("compare", str(big_source), str(zero_destination), "--chunk-size", CHUNK,
                        "--no-direct")
    _wait_for(lambda: len(_children(process.pid)) == 2, process, "workers")
    workers = _started_workers(cli, process)
    _wait_for(lambda: all(_read_bytes(pid) >= 16 << 20 for pid, _ in workers), process,
              "reads on both sides")
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    _assert_one_line(err)
    assert "not touched" in err and out == ""
    _assert_gone(workers)
    assert _allocated(zero_destination) == 0


def test_second_sigint_stops_a_stuck_cancel_at_once(
    cli: Cli, big_source: Path, zero_destination: Path, tmp_path: Path
) -> None:
    """A cancel waits for the writes in flight; with the destination's worker stuck (stopped,
    like a hung device), a second Ctrl-C still ends the CLI promptly, with one line."""
    process = cli.start("sync", str(big_source), str(zero_destination), "--chunk-size", CHUNK)
    _wait_for(lambda: _allocated(zero_destination) >= 4 << 20, process, "writes")
    workers = _started_workers(cli, process)
    writer = next(pid for pid, _ in workers if _holds(pid, zero_destination))
    os.kill(writer, signal.SIGSTOP)
    try:
        os.killpg(process.pid, signal.SIGINT)
        # The first Ctrl-C asks for a cancel, which waits for the stuck writes: the CLI stays.
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=1.0)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        os.kill(writer, signal.SIGCONT)
    assert process.returncode == 130, err
    _assert_one_line(err)
    assert "at once" in err and "run the sync again" in err, err
    _assert_gone(workers)  # both workers end on their closed pipes
    _rerun_finishes(big_source, zero_destination, tmp_path, None)


@pytest.mark.parametrize(
    "stuck, signals", [(False, 1), (True, 1), (True, 2)],
    ids=["responsive", "stuck-worker", "stuck-worker-twice"],
)
def test_sigterm_while_connecting_stops_at_once(
    cli: Cli, zero_destination: Path, stuck: bool, signals: int
) -> None:
    """Before the run nothing is written: a signal during prepare (here an SSH host that
    accepts the connection and never says a word) ends the CLI at once, with one line. If
    closing the other side's worker on the way out hangs (stopped, like a hung device), the
    CLI leaves without it after STOP_GRACE, or on the spot at a second signal."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        # Twice, a grace far longer than any machine's lag: then only the second signal can
        # end the CLI in time. Once, the default grace must do it.
        grace = LONG_GRACE if signals == 2 else STOP_GRACE
        # One lane: its workers are the CLI's own children (lanes are tested in test_parallel).
        process = cli.start("compare", f"nobody@127.0.0.1:{port}:/x", str(zero_destination),
                            "--streams", "1", "--ssh-config", os.devnull, "--known-hosts", os.devnull,
                            env={"BLOCKSYNC_STOP_GRACE": str(grace)})
        silent.settimeout(60)
        connection, _ = silent.accept()
        with connection:
            _wait_for(lambda: len(_children(process.pid)) == 1, process, "the local worker")
            workers = cli.workers_of(process)
            worker = workers[0][0]
            _wait_for(lambda: _holds(worker, zero_destination), process, "the destination open")
            if stuck:
                os.kill(worker, signal.SIGSTOP)
            try:
                os.killpg(process.pid, signal.SIGTERM)
                signalled = time.monotonic()
                if signals == 2:  # the way out waits for the stopped worker: do not wait too
                    with pytest.raises(subprocess.TimeoutExpired):
                        process.wait(timeout=0.5)
                    # The way out may have finished meanwhile (closing kills a worker that does
                    # not exit within 2 s): then there is no one left to signal, and that is fine.
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGTERM)
                out, err = process.communicate(timeout=grace + 20)  # a loaded CI machine
                took = time.monotonic() - signalled
            finally:
                if stuck:  # stopped, it ends on its closed pipes once it runs; unless the way
                    with contextlib.suppress(ProcessLookupError):  # out killed it (after 2 s)
                        os.kill(worker, signal.SIGCONT)
    assert process.returncode == 143, err
    _assert_one_line(err)
    assert err == "blocksync-tui: SIGTERM: stopped before anything was written\n" and out == ""
    if signals == 2:
        assert took < LONG_GRACE / 2, "the second signal did not end the CLI before the grace did"
    _assert_gone(workers)


def test_sigint_cancels_every_lane(
    cli: Cli, big_source: Path, zero_destination: Path, tmp_path: Path
) -> None:
    """With --streams 2, a terminal's Ctrl-C reaches the CLI only (the lanes run in sessions
    of their own); it cancels every lane, one line says so, and nothing is left running."""
    report_path = tmp_path / "report.json"
    process = cli.start("sync", str(big_source), str(zero_destination), "--chunk-size", CHUNK,
                        "--streams", "2", "--json", str(report_path))
    _wait_for(lambda: _allocated(zero_destination) >= 4 << 20, process, "writes")
    family = [(pid, stat[2]) for pid in _descendants(process.pid) if (stat := _stat(pid))]
    cli.workers.extend(family)
    assert len(family) >= 6, family  # two lanes, each with two workers (and their shells)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    _assert_one_line(err)
    assert "SIGINT" in err and "run the sync again" in err, err
    report = json.loads(report_path.read_text())
    assert report["outcome"] == "cancelled"
    assert 0 < report["chunks"]["written"] < report["total_chunks"]
    _assert_gone(family)
    _rerun_finishes(big_source, zero_destination, tmp_path, report["chunks"]["written"])
