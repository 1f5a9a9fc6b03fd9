"""Engine tests with real local workers: correctness, zero paths, safety, bad input."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from blocksync_tui.engine.chunkmap import State
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import Cancelled, EndpointError, UsageError
from blocksync_tui.engine.pipeline import Transfer
from blocksync_tui.engine.sync import SyncEngine, SyncOptions
from helpers import expected_states, run_engine

KIB = 1024


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@st.composite
def pairs(draw: st.DrawFn) -> tuple[bytes, bytes | None, int]:
    """A source, a destination made from it by edits (or None: absent), and a chunk size."""
    chunk = draw(st.sampled_from([4 * KIB, 8 * KIB, 16 * KIB, 64 * KIB]))
    size = draw(st.one_of(st.just(0), st.integers(1, 5 * chunk + 17)))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    kind = draw(st.sampled_from(["random", "zeros", "mixed"]))
    src = bytearray(rnd.randbytes(size) if kind != "zeros" else bytes(size))
    if kind == "mixed" and size:
        for _ in range(draw(st.integers(0, 4))):
            a = rnd.randrange(size)
            src[a : a + rnd.randrange(1, 3 * chunk)] = bytes(min(size - a, 3 * chunk))
            del src[size:]
    if draw(st.booleans()) and size and draw(st.booleans()):
        return bytes(src), None, chunk
    dst = bytearray(src)
    for _ in range(draw(st.integers(0, 6))):
        if not dst:
            break
        a = rnd.randrange(len(dst))
        n = rnd.randrange(1, 2 * chunk)
        fill = bytes(n) if rnd.random() < 0.3 else rnd.randbytes(n)
        dst[a : a + n] = fill[: len(dst) - a]
    resize = draw(st.sampled_from([0, 0, -1, 1]))
    if resize < 0:
        dst = dst[: rnd.randrange(len(dst) + 1)]
    elif resize > 0:
        dst += rnd.randbytes(rnd.randrange(1, chunk))
    return bytes(src), bytes(dst), chunk


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=pairs(), compress=st.sampled_from(["none", "zlib"]), direct=st.booleans())
@example(pair=(b"\x00", None, 4096), compress="none", direct=False)  # found by hypothesis: zero vs absent
def test_compare_then_sync_makes_identical(tmp_path: Path, pair: tuple, compress: str, direct: bool) -> None:
    """For any sizes and edits, by digests or by a direct compare on this host: compare finds
    exactly the differing chunks; sync fixes them all."""
    src_bytes, dst_bytes, chunk = pair
    case = tmp_path / hashlib.sha1(repr(pair).encode()).hexdigest()[:12]
    case.mkdir(exist_ok=True)
    src = _write(case / "src", src_bytes)
    dst = case / "dst"
    dst.unlink(missing_ok=True)
    if dst_bytes is not None:
        _write(dst, dst_bytes)

    report = run_engine(src, dst, chunk_size=chunk, dry_run=True, compress=compress, direct=direct)
    assert report.method == ("direct" if direct and dst_bytes is not None else "digests")
    want = expected_states(src_bytes, dst_bytes, chunk)
    assert report.chunks["differs"] == want.count("differs")
    assert report.chunks["same"] == want.count("same")
    assert report.chunks["zero"] == want.count("zero")
    assert (dst.read_bytes() if dst_bytes is not None else None) == dst_bytes, "compare wrote"

    report = run_engine(src, dst, chunk_size=chunk, compress=compress, verify=True, direct=direct, cache="full")
    assert report.method == ("direct" if direct else "stream" if dst_bytes is None else "digests")
    assert dst.read_bytes() == src_bytes
    assert report.errors == []
    assert report.chunks["written"] == want.count("differs")
    assert report.verified is True


@pytest.mark.parametrize("direct", [False, True])
def test_scattered_small_changes_cost_about_their_size(tmp_path: Path, direct: bool) -> None:
    """4 KiB changes in 1 MiB chunks send (or copy) about 4 KiB each, not 1 MiB."""
    rnd = random.Random(5)
    src = _write(tmp_path / "src", rnd.randbytes(32 << 20))
    data = bytearray(src.read_bytes())
    pages = rnd.sample(range(len(data) // 4096), 80)
    for page in pages:
        data[page * 4096 : page * 4096 + 4096] = rnd.randbytes(4096)
    dst = _write(tmp_path / "dst", bytes(data))
    report = run_engine(src, dst, direct=direct)
    assert report.method == ("direct" if direct else "digests")
    changed = 80 * 4096
    assert report.bytes_differing == changed
    assert changed <= report.bytes_sent <= 1.05 * changed
    assert dst.read_bytes() == src.read_bytes()


def test_zero_paths(tmp_path: Path) -> None:
    """Zero chunks travel as markers, in both directions, and land as real zeros."""
    chunk = 64 * KIB
    rnd = random.Random(2)
    src_data = rnd.randbytes(4 * chunk) + bytes(4 * chunk) + rnd.randbytes(chunk + 5)
    dst_data = bytes(4 * chunk) + rnd.randbytes(4 * chunk) + rnd.randbytes(chunk + 5)
    src, dst = _write(tmp_path / "src", src_data), _write(tmp_path / "dst", dst_data)
    report = run_engine(src, dst, chunk_size=chunk, direct=False)
    assert dst.read_bytes() == src_data
    # Data for the first four chunks (dst was zero); only markers for the next four.
    assert 4 * chunk <= report.bytes_sent < 5 * chunk + 4096 + 1000
    _write(dst, dst_data)
    report = run_engine(src, dst, chunk_size=chunk, verify=True)  # direct: zeros copied as data
    assert dst.read_bytes() == src_data and report.verified
    assert report.chunks["written"] == 10 and report.bytes_differing == len(src_data)


def test_source_is_never_modified(tmp_path: Path) -> None:
    rnd = random.Random(3)
    src = _write(tmp_path / "src", rnd.randbytes(300_000))
    os.chmod(src, 0o444)
    before = (src.read_bytes(), os.stat(src).st_mtime_ns)
    dst = _write(tmp_path / "dst", rnd.randbytes(200_000))
    run_engine(src, dst, chunk_size=4096, verify=True)
    assert (src.read_bytes(), os.stat(src).st_mtime_ns) == before


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: (p / "missing", p / "dst"), "no such file"),
        (lambda p: (p / "src", p / "nodir" / "dst"), "does not exist"),
        (lambda p: (p / "src", p / "src"), "same file"),
        (lambda p: (p / "src", p), "is a directory"),
        (lambda p: (p, p / "dst"), "is a directory"),
    ],
)
def test_bad_input_changes_nothing(tmp_path: Path, make, message: str) -> None:
    _write(tmp_path / "src", b"x" * 10_000)
    src, dst = make(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises((EndpointError, UsageError), match=message):
        run_engine(src, dst)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_hard_link_is_the_same_file(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", b"y" * 5000)
    os.link(src, tmp_path / "link")
    with pytest.raises(UsageError, match="same file"):
        run_engine(src, tmp_path / "link")


@pytest.mark.parametrize("size", [3000, 5 << 20, 1 << 30])
def test_chunk_size_must_be_a_power_of_two_in_range(size: int) -> None:
    with pytest.raises(UsageError, match="power of two"):
        SyncOptions(chunk_size=size if size != 5 << 20 else size + 1).check()
    if size == 1 << 30:
        with pytest.raises(UsageError):
            SyncOptions(chunk_size=size).check()


def test_permission_denied_is_one_clear_line(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", b"z" * 9000)
    dst = _write(tmp_path / "dst", b"q" * 9000)
    if os.system(f"chattr +i {dst} 2>/dev/null") != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        with pytest.raises(EndpointError, match="not permitted|denied"):
            run_engine(src, dst)
    finally:
        os.system(f"chattr -i {dst}")
    assert dst.read_bytes() == b"q" * 9000


def test_unknown_hash_is_refused(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", b"a" * 100)
    with pytest.raises(UsageError, match="not available"):
        run_engine(src, tmp_path / "dst", algorithm="crc-nope")


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "blake2b", "md5", "xxh128"])
def test_every_hash_syncs(tmp_path: Path, algorithm: str) -> None:
    rnd = random.Random(4)
    src = _write(tmp_path / "src", rnd.randbytes(70_000))
    dst = _write(tmp_path / "dst", rnd.randbytes(50_000))
    report = run_engine(src, dst, chunk_size=8192, algorithm=algorithm, verify=True)
    assert report.algorithm == algorithm and report.verified
    assert dst.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("direct", [False, True])
def test_cancel_stops_cleanly_and_rerun_finishes(tmp_path: Path, direct: bool) -> None:
    rnd = random.Random(6)
    size = 64 << 20
    src = _write(tmp_path / "src", rnd.randbytes(size))
    dst = _write(tmp_path / "dst", rnd.randbytes(size))
    options = SyncOptions(chunk_size=64 * KIB, direct=direct)
    engine = SyncEngine(Endpoint(str(src)), Endpoint(str(dst)), options)
    engine.prepare()

    def cancel_when_writing() -> None:
        deadline = time.monotonic() + 30
        while engine.chunk_map.count(State.WRITTEN) < 20 and time.monotonic() < deadline:
            time.sleep(0.001)
        engine.cancel()

    threading.Thread(target=cancel_when_writing).start()
    with pytest.raises(Cancelled, match="partly updated"):
        engine.run()
    written = engine.chunk_map.count(State.WRITTEN)
    assert 20 <= written < engine.chunk_map.total
    report = run_engine(src, dst, chunk_size=64 * KIB)
    # It resumes: what the cancel left written is not read again, but for a sample of it.
    assert report.settled_by == "resume"
    assert report.chunks_settled + report.chunks_sampled == written
    assert report.chunks["same"] == report.chunks_sampled  # the sample, read again: equal now
    assert report.chunks["written"] == engine.chunk_map.total - report.chunks_sampled
    assert dst.read_bytes() == src.read_bytes()


def test_pause_and_resume(tmp_path: Path) -> None:
    rnd = random.Random(7)
    src = _write(tmp_path / "src", rnd.randbytes(8 << 20))
    dst = _write(tmp_path / "dst", b"")
    engine = SyncEngine(Endpoint(str(src)), Endpoint(str(dst)), SyncOptions(chunk_size=64 * KIB))
    engine.prepare()
    engine.pause()
    result = []
    thread = threading.Thread(target=lambda: result.append(engine.run()))
    thread.start()
    time.sleep(0.5)
    assert engine.progress().paused and engine.chunk_map.count(State.WRITTEN) == 0
    engine.resume()
    thread.join(30)
    assert result and result[0].outcome == "synced"
    assert dst.read_bytes() == src.read_bytes()


def test_report_runs_and_json(tmp_path: Path) -> None:
    chunk = 4096
    src_data = bytes(40 * chunk)
    dst_data = bytearray(src_data)
    for first, count in [(2, 3), (10, 1), (20, 7)]:
        dst_data[first * chunk : (first + count) * chunk] = b"\1" * count * chunk
    src = _write(tmp_path / "src", src_data)
    dst = _write(tmp_path / "dst", bytes(dst_data))
    report = run_engine(src, dst, chunk_size=chunk, dry_run=True)
    assert report.outcome == "differs" and report.change_runs == 3
    assert report.largest_runs[0] == {"first_chunk": 20, "chunks": 7, "offset": 20 * chunk, "length": 7 * chunk}
    assert '"change_runs": 3' in report.to_json()


def test_engine_imports_no_textual() -> None:
    """The engine and the CLI's headless path must work where Textual is not installed."""
    import subprocess
    import sys

    code = (
        "import sys, blocksync_tui.engine.sync, blocksync_tui.engine.ssh, blocksync_tui.cli;"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'textual' or m.startswith('blocksync_tui.tui')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("direct", [False, True])
def test_many_hash_windows_with_changes_everywhere(tmp_path: Path, monkeypatch, direct: bool) -> None:
    """Regression: request ids are per connection; window bookkeeping must not mix the sides."""
    import blocksync_tui.engine.pipeline as pipeline

    monkeypatch.setattr(pipeline, "HASH_WINDOW_BYTES", 64 * KIB)  # many windows on a small file
    monkeypatch.setattr(pipeline, "PAIR_WINDOW_BYTES", 64 * KIB)
    monkeypatch.setattr(pipeline, "HASH_WINDOW_CHUNKS", 1)
    monkeypatch.setattr(pipeline, "PAIR_WINDOW_CHUNKS", 1)
    rnd = random.Random(8)
    data = rnd.randbytes(3 << 20)
    changed = bytearray(data)
    for at in range(1000, len(changed), 50_000):
        changed[at] ^= 0xFF
    src, dst = _write(tmp_path / "src", data), _write(tmp_path / "dst", bytes(changed))
    report = run_engine(src, dst, chunk_size=4 * KIB, dry_run=True, direct=direct)
    assert report.chunks["differs"] == len(range(1000, len(changed), 50_000))
    run_engine(src, dst, chunk_size=4 * KIB, direct=direct)
    assert dst.read_bytes() == data


def test_source_changed_during_the_sync_is_sent_again(tmp_path: Path, monkeypatch) -> None:
    """--verify finds a chunk whose source changed after it was compared, sends it again: UPDATED."""
    chunk = 64 * KIB
    rnd = random.Random(9)
    src = _write(tmp_path / "src", rnd.randbytes(8 * chunk))
    dst = _write(tmp_path / "dst", rnd.randbytes(8 * chunk))
    start_chunk = Transfer._start_chunk
    touched: list[int] = []

    def start_after_a_live_write(self: Transfer, job) -> None:
        if not touched:  # a writer on the source, between the compare and the transfer
            with open(src, "r+b") as f:
                f.seek(job.index * chunk + 100)
                f.write(b"written while syncing")
            touched.append(job.index)
        start_chunk(self, job)

    monkeypatch.setattr(Transfer, "_start_chunk", start_after_a_live_write)
    # Digests: a direct compare writes the very bytes it compared, so it has no such window.
    report = run_engine(src, dst, chunk_size=chunk, verify=True, direct=False)
    assert report.chunks["updated"] == 1 and report.chunks["written"] == 7
    assert report.verified and report.errors == [] and report.outcome == "synced"
    assert dst.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("direct", [False, True])
def test_verify_reports_a_destination_that_does_not_hold_what_was_written(
    tmp_path: Path, monkeypatch, direct: bool
) -> None:
    """A write that does not stick (simulated after the flush) is an error, not an update."""
    chunk = 64 * KIB
    rnd = random.Random(10)
    src = _write(tmp_path / "src", rnd.randbytes(4 * chunk))
    dst = _write(tmp_path / "dst", rnd.randbytes(4 * chunk))
    flush = SyncEngine._flush

    def flush_then_corrupt(self: SyncEngine, last: bool = False) -> None:
        flush(self, last)
        with open(dst, "r+b") as f:
            f.seek(2 * chunk + 5)
            f.write(b"bit rot")

    monkeypatch.setattr(SyncEngine, "_flush", flush_then_corrupt)
    report = run_engine(src, dst, chunk_size=chunk, verify=True, direct=direct)
    assert report.method == ("direct" if direct else "digests")
    assert report.verified is False and report.outcome == "failed"
    assert report.chunks["error"] == 1 and "chunk 2 failed verification" in report.errors[0]


def test_waiting_for_a_confirmation_is_not_run_time(tmp_path: Path) -> None:
    """The report's seconds (and so its throughput) cover connecting and running, not the time
    a user took to confirm between prepare() and run()."""
    rnd = random.Random(11)
    src = _write(tmp_path / "src", rnd.randbytes(1 << 20))
    dst = _write(tmp_path / "dst", rnd.randbytes(1 << 20))
    engine = SyncEngine(Endpoint(str(src)), Endpoint(str(dst)), SyncOptions(chunk_size=64 * KIB))
    engine.prepare()
    time.sleep(1.5)
    report = engine.run()
    assert 0 < report.seconds < 1.5


def test_a_full_copy_keeps_a_bounded_backlog(tmp_path: Path, monkeypatch) -> None:
    """Every chunk differs: the scan waits for the transfer instead of queueing the whole device."""
    import blocksync_tui.engine.pipeline as pipeline
    from blocksync_tui.engine.pipeline import Transfer

    monkeypatch.setattr(pipeline, "HASH_WINDOW_BYTES", 64 * KIB)  # windows of 16 chunks
    monkeypatch.setattr(pipeline, "HASH_WINDOW_CHUNKS", 1)
    monkeypatch.setattr(pipeline, "INFLIGHT_BYTES", 16 * KIB)  # a slow transfer: 4 chunks at a time
    rnd = random.Random(21)
    src = _write(tmp_path / "src", rnd.randbytes(4 << 20))
    dst = _write(tmp_path / "dst", rnd.randbytes(4 << 20))
    most: list[int] = [0]
    issue = Transfer._issue_chunks

    def watching(self: Transfer) -> None:
        most[0] = max(most[0], len(self._todo))
        issue(self)

    monkeypatch.setattr(Transfer, "_issue_chunks", watching)
    run_engine(src, dst, chunk_size=4 * KIB, direct=False)
    window = 16
    assert most[0] <= (pipeline.BACKLOG_WINDOWS + pipeline.WINDOWS_AHEAD) * window < 1024
    assert dst.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("direct", [False, True])
def test_sparse_files_either_way(tmp_path: Path, direct: bool) -> None:
    """Holes read as zeros without a read: a sparse source onto a dense destination and back."""
    rnd = random.Random(22)
    size = 16 << 20
    sparse = tmp_path / "sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(size)
        for at in (3 * KIB, 5 << 20, size - 5000):
            f.seek(at)
            f.write(rnd.randbytes(4000))
    dense = _write(tmp_path / "dense.img", rnd.randbytes(size))
    for src, dst in ((sparse, dense), (dense, sparse)):
        assert run_engine(src, dst, chunk_size=64 * KIB, direct=direct).outcome == "synced"
        assert dst.read_bytes() == src.read_bytes()
        assert run_engine(src, dst, chunk_size=64 * KIB, dry_run=True, direct=direct).outcome == "identical"
        if src is sparse:
            dense.write_bytes(rnd.randbytes(size))  # dense again for the way back


def test_a_long_link_keeps_more_chunks_in_flight() -> None:
    """The round trip measured at open sizes the pipeline: at 50 ms it takes hundreds of small
    deltas in flight to keep the source busy, on loopback the byte bound alone (32 at 1 MiB)."""
    from blocksync_tui.engine.chunkmap import ChunkMap
    from blocksync_tui.engine.pipeline import Control, Geometry
    from blocksync_tui.engine.preflight import Negotiated

    def jobs(round_trip: float, chunk: int = 1 << 20) -> int:
        geometry = Geometry(1 << 30, chunk)
        transfer = Transfer(
            {"source": None, "destination": None}, {"source": "a", "destination": "b"},  # type: ignore[dict-item]
            None, ChunkMap(geometry.total), geometry, Negotiated("sha256", 32, "sha256", "none"),  # type: ignore[arg-type]
            SyncOptions(chunk_size=chunk), Control(), "digests", False, round_trip=round_trip,
        )
        return transfer._max_inflight

    assert jobs(0.0001) == 32 and jobs(0.05) == 250 and jobs(5.0) == 1024
    assert jobs(0.0001, chunk=4096) == 8192  # small chunks: the byte bound allows more
