"""--streams N: a run in lanes, each an engine process of its own, gives what one lane gives."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocksync_tui.engine.api import Engine
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import BlocksyncError, UsageError
from blocksync_tui.engine.options import SshOptions, SyncOptions
from blocksync_tui.engine.parallel import ParallelEngine, engine_for
from helpers import expected_states
from sshd import _descendants
from test_engine import pairs


def _run(src: Path, dst: Path | str, streams: int, ssh: SshOptions | None = None, **options):
    engine = engine_for(Endpoint.parse(str(src)), Endpoint.parse(str(dst)),
                        SyncOptions(streams=streams, **options), ssh or SshOptions())
    engine.prepare()
    report = engine.run()
    return engine, report


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=pairs(), streams=st.sampled_from([2, 3]), direct=st.booleans(), dry_run=st.booleans())
def test_lanes_give_what_one_gives(tmp_path: Path, pair, streams: int, direct: bool, dry_run: bool) -> None:
    src_data, dst_data, chunk = pair
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(src_data)
    dst.unlink(missing_ok=True)
    if dst_data is not None:
        dst.write_bytes(dst_data)
    engine, report = _run(src, dst, streams, chunk_size=chunk, direct=direct, dry_run=dry_run)
    assert isinstance(engine, ParallelEngine) and report.streams == streams
    states = expected_states(src_data, dst_data, chunk)
    if dry_run:
        got = report.chunks
        assert got["differs"] == states.count("differs"), got
        assert got["same"] + got["zero"] == len(states) - states.count("differs")
        assert (dst.read_bytes() if dst_data is not None else None) == dst_data
        assert report.outcome == ("differs" if "differs" in states or (dst_data is not None and len(dst_data) != len(src_data)) else "identical")
    else:
        assert dst.read_bytes() == src_data
        assert report.chunks["pending"] == 0 and report.outcome in ("synced", "identical")
        assert report.chunks_differing == states.count("differs") or dst_data is None


def test_lanes_sync_a_file_that_is_too_long(tmp_path: Path) -> None:
    """The first lane truncates; the others must find the file it left, not the one prepare saw."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(300_000))
    dst.write_bytes(os.urandom(500_000))
    _, report = _run(src, dst, 3, chunk_size=4096, direct=False)
    assert dst.read_bytes() == src.read_bytes()
    assert report.size_difference == 200_000 and report.outcome == "synced"


def test_a_new_destination_is_created_once(tmp_path: Path) -> None:
    """The first lane creates it (O_EXCL); the others open that very file and stream into it."""
    src, dst = tmp_path / "src", tmp_path / "new"
    data = os.urandom(1 << 20) + bytes(1 << 20) + os.urandom(12345)
    src.write_bytes(data)
    _, report = _run(src, dst, 3, chunk_size=65536, direct=False)
    assert dst.read_bytes() == data
    assert report.method == "stream" and report.chunks["zero"] == 16
    assert os.stat(dst).st_blocks * 512 < len(data) - (1 << 20) + 65536  # the zeros stayed holes


def test_streams_satisfy_the_engine_protocol(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    engine = engine_for(Endpoint(str(src)), Endpoint(str(tmp_path / "d")), SyncOptions(streams=2), SshOptions())
    assert isinstance(engine, Engine)
    engine.close()


def test_streams_out_of_range_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--streams 0: must be from 1 to 16"):
        SyncOptions(streams=0).check()


def test_a_killed_lane_stops_the_run_and_leaves_no_orphan(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(8 << 20))
    dst.write_bytes(bytes(8 << 20))
    engine = ParallelEngine(Endpoint(str(src)), Endpoint(str(dst)),
                            SyncOptions(streams=2, chunk_size=65536, direct=False), SshOptions())
    engine.prepare()
    pids = [lane._process.pid for lane in engine.lanes]
    family = [pid for root in pids for pid in [root, *_descendants(root)]]
    engine.pause()  # nothing moves until the kill: the run cannot finish first
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            engine.run()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(1.0)
    os.kill(pids[1], signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive(), "the run did not end after a lane was killed"
    assert outcome and isinstance(outcome[0], BlocksyncError), outcome
    assert "\n" not in str(outcome[0]) and "engine's process ended" in str(outcome[0])
    assert engine.report().outcome == "failed"
    deadline = time.monotonic() + 15
    alive = family
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in family if _alive(pid)]
        time.sleep(0.1)
    assert not alive, f"left behind: {alive}"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_lanes_over_ssh_push_and_pull(tmp_path: Path, sshd) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    data = bytearray(os.urandom(3 << 20) + bytes(1 << 20) + os.urandom(4097))
    src.write_bytes(data)
    ssh = sshd.ssh_options()
    _, report = _run(src, sshd.endpoint(dst), 2, ssh, chunk_size=65536, direct=False)
    assert dst.read_bytes() == data and report.method == "stream"
    data[100_000:100_010] = b"0123456789"
    data[3_500_000:3_500_001] = b"!"
    src.write_bytes(data)
    _, report = _run(sshd.endpoint(src), dst, 3, ssh, chunk_size=65536, direct=False)
    assert dst.read_bytes() == data
    assert report.method == "digests" and report.chunks_differing == 2


@pytest.mark.parametrize("direct", [True, False])
def test_lanes_onto_a_loop_device(tmp_path: Path, loop_device, direct: bool) -> None:
    """Each lane opens the device (O_EXCL is per open file, so lanes do not lock each other out)."""
    size = (6 << 20) + 12288  # not a multiple of the chunk size
    data = bytearray(os.urandom(size))
    data[1 << 20 : 3 << 20] = bytes(2 << 20)  # a zero run across lanes
    src = tmp_path / "src"
    src.write_bytes(data)
    image = tmp_path / "dev.img"
    image.write_bytes(os.urandom(8 << 20))
    dev = loop_device(image)
    _, report = _run(src, dev, 3, chunk_size=65536, direct=direct)
    with open(dev, "rb") as f:
        assert f.read(size) == bytes(data)
    assert report.outcome == "synced" and report.chunks["pending"] == 0


def test_a_destination_that_appeared_stops_every_lane(tmp_path: Path) -> None:
    """The first lane's O_EXCL create fails: no lane writes, one line, nothing waits for ever."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(1 << 20))
    engine = ParallelEngine(Endpoint(str(src)), Endpoint(str(dst)),
                            SyncOptions(streams=3, chunk_size=65536, direct=False), SshOptions())
    engine.prepare()
    dst.write_bytes(b"someone else's")
    with pytest.raises(BlocksyncError, match="appeared after it was checked") as caught:
        engine.run()
    assert "\n" not in str(caught.value)
    assert dst.read_bytes() == b"someone else's"


def test_auto_streams_one_lane_per_two_cores_when_a_side_is_remote() -> None:
    from blocksync_tui.engine.options import auto_streams

    assert auto_streams(any_remote=False, cpus=8) == 1  # local: extra processes cost more than they save
    assert [auto_streams(True, n) for n in (1, 2, 3, 4, 8, 64)] == [1, 1, 1, 2, 4, 4]
    assert auto_streams(True, 8, cached=True) == 1  # only the source is read: one connection


@pytest.mark.parametrize("value, message", [("x", "'x' is not a number of lanes nor auto"),
                                            ("0", "--streams 0: must be from 1 to 16")])
def test_cli_streams_refused_in_one_line(tmp_path: Path, value: str, message: str) -> None:
    import subprocess
    import sys

    src = tmp_path / "src"
    src.write_bytes(b"data")
    result = subprocess.run([sys.executable, "-m", "blocksync_tui", "sync", "--streams", value,
                             str(src), str(tmp_path / "dst")], capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "dst").exists()


def test_a_destination_with_a_digest_cache_gets_one_lane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` opens one lane per core to a remote destination, but one alone when that
    destination's digest cache is there: it spares reading the destination, and reading the
    source is all that is left (measured: one lane 0.83x the time of two)."""
    from blocksync_tui.engine import digest_cache, options as options_module
    from blocksync_tui.engine.sync import SyncEngine

    monkeypatch.setattr(options_module.os, "cpu_count", lambda: 4)
    source, destination = Endpoint.parse(str(tmp_path / "src")), Endpoint.parse("root@127.0.0.1:2222:/srv/dst.img")
    assert isinstance(engine_for(source, destination, SyncOptions(), SshOptions()), ParallelEngine)
    path = digest_cache.cache_path(str(destination))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # its name is what counts here; prepare checks what it holds
    assert isinstance(engine_for(source, destination, SyncOptions(), SshOptions()), SyncEngine)
    assert isinstance(engine_for(source, destination, SyncOptions(cache="full"), SshOptions()), ParallelEngine)
    assert isinstance(engine_for(source, destination, SyncOptions(streams=2), SshOptions()), ParallelEngine)
