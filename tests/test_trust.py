"""Trust: never write where it must not, never call different data identical, and end every
fault with one line. Real workers throughout; a hostile peer is a real worker behind a man in
the middle (helpers.TamperingTransport)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blocksync_tui.cli import main
from blocksync_tui.engine.worker import protocol as wire
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import ConnectionLost, DestinationAppeared, EndpointError, ProtocolError
from blocksync_tui.engine.pipeline import Transfer
from blocksync_tui.engine.sync import SyncEngine, SyncOptions
from helpers import run_engine, tampered_engine

KIB = 1024
CHUNK = 64 * KIB


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- wrong answers


@pytest.mark.parametrize(
    "make_destination",
    [
        lambda src: src + bytes(4096),  # the same plus 4 KiB of zeros
        lambda src: src + b"one more line\n",
        lambda src: src[:-4096],  # shorter, and the missing tail was zeros
    ],
    ids=["longer-by-zeros", "longer-by-a-line", "shorter-by-zeros"],
)
def test_a_length_difference_is_a_difference(tmp_path: Path, make_destination, capsys) -> None:
    data = random.Random(1).randbytes(3 * CHUNK) + bytes(8192)
    src = _write(tmp_path / "src", data)
    dst = _write(tmp_path / "dst", make_destination(data))
    report = run_engine(src, dst, chunk_size=CHUNK, dry_run=True)
    assert report.outcome == "differs"
    assert report.size_difference == dst.stat().st_size - len(data) != 0
    assert main(["compare", str(src), str(dst), "-q"]) == 1
    report = run_engine(src, dst, chunk_size=CHUNK)
    assert report.outcome == "synced"
    assert dst.read_bytes() == data
    assert run_engine(src, dst, chunk_size=CHUNK, dry_run=True).outcome == "identical"


def test_the_summary_line_says_a_length_difference(tmp_path: Path, capsys) -> None:
    """"differs: 0 of 3 chunks differ" alone said nothing of why; nor may a compare's warning
    say the destination will be truncated."""
    data = random.Random(19).randbytes(3 * CHUNK)
    src = _write(tmp_path / "src", data)
    dst = _write(tmp_path / "dst", data + bytes(4096))
    assert main(["compare", str(src), str(dst), "-q", "--chunk-size", "64K"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("differs: 0 of 3 chunks differ") and "; the destination is 4.0 KiB longer" in out
    assert "a sync would truncate it to 196608" in err and "will be" not in err
    assert main(["sync", str(src), str(dst), "-q", "--chunk-size", "64K"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("synced:") and "; the destination was truncated by 4.0 KiB" in out
    assert "it will be truncated to 196608" in err
    dst.write_bytes(data[:-4096])
    assert main(["compare", str(src), str(dst), "-q", "--chunk-size", "64K"]) == 1
    assert "; the destination is 4.0 KiB shorter" in capsys.readouterr().out


def test_an_empty_source_and_a_non_empty_destination_differ(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", b"")
    dst = _write(tmp_path / "dst", b"not empty")
    assert run_engine(src, dst, dry_run=True).outcome == "differs"
    assert run_engine(src, dst).outcome == "synced"
    assert dst.read_bytes() == b""


def test_a_destination_created_between_prepare_and_run_is_not_assumed_zero(tmp_path: Path) -> None:
    """The confirm dialog is the window: what appears there was never compared."""
    src = _write(tmp_path / "src", random.Random(2).randbytes(4 * CHUNK))
    dst = tmp_path / "dst"
    engine = SyncEngine(Endpoint.parse(str(src)), Endpoint.parse(str(dst)), SyncOptions(chunk_size=CHUNK))
    engine.prepare()
    other = random.Random(3).randbytes(4 * CHUNK)
    dst.write_bytes(other)
    with pytest.raises(DestinationAppeared, match="appeared after it was checked: nothing was written"):
        engine.run()
    assert dst.read_bytes() == other


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "digests"])
def test_a_destination_replaced_between_prepare_and_run_is_not_written(tmp_path: Path, direct: bool) -> None:
    """The scan starts while the writable OPEN travels (one round trip less), but nothing is
    written before its answer is checked: another file now at the path is refused, untouched."""
    src = _write(tmp_path / "src", random.Random(4).randbytes(4 * CHUNK))
    dst = _write(tmp_path / "dst", random.Random(5).randbytes(4 * CHUNK))
    engine = SyncEngine(Endpoint.parse(str(src)), Endpoint.parse(str(dst)),
                        SyncOptions(chunk_size=CHUNK, direct=direct))
    engine.prepare()
    other = random.Random(6).randbytes(4 * CHUNK)
    _write(tmp_path / "other", other).replace(dst)
    with pytest.raises(EndpointError, match="changed after it was checked"):
        engine.run()
    assert dst.read_bytes() == other


def test_the_cli_checks_a_destination_that_appeared_again_then_syncs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A nightly `sync` whose new destination appears between the check and the write
    prepares again, once: what appeared is compared, then made the source's."""
    src = _write(tmp_path / "src", random.Random(2).randbytes(4 * CHUNK))
    dst = tmp_path / "dst"
    prepare = SyncEngine.prepare
    prepared = []

    def appearing(engine: SyncEngine) -> None:
        prepare(engine)
        prepared.append(engine._dest_absent)
        if len(prepared) == 1:
            dst.write_bytes(random.Random(3).randbytes(4 * CHUNK))

    monkeypatch.setattr(SyncEngine, "prepare", appearing)
    assert main(["sync", str(src), str(dst), "--chunk-size", "64K", "--streams", "1"]) == 0
    assert prepared == [True, False]  # the second time, it was there to compare
    assert dst.read_bytes() == src.read_bytes()
    err = capsys.readouterr().err
    assert f"{dst} appeared after it was checked: nothing was written; checking it again" in err


def test_a_destination_replaced_between_prepare_and_run_is_refused(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", random.Random(4).randbytes(4 * CHUNK))
    dst = _write(tmp_path / "dst", bytes(4 * CHUNK))
    engine = SyncEngine(Endpoint.parse(str(src)), Endpoint.parse(str(dst)), SyncOptions(chunk_size=CHUNK))
    engine.prepare()
    replacement = _write(tmp_path / "other", b"\x07" * (4 * CHUNK))
    os.replace(replacement, dst)  # same size, same name: another file
    with pytest.raises(EndpointError, match="changed after it was checked"):
        engine.run()
    assert dst.read_bytes() == b"\x07" * (4 * CHUNK)


def test_a_destination_written_in_place_between_prepare_and_run_is_refused(tmp_path: Path) -> None:
    """Its modification time set back, as `touch -r` or an archiver would: the change time still
    tells. The digest cache was found good at prepare, so a run that went on would have called
    the rewritten chunk equal to the source's."""
    data = random.Random(17).randbytes(8 * CHUNK)
    src = _write(tmp_path / "src", data)
    dst = _write(tmp_path / "dst", data)
    assert run_engine(src, dst, chunk_size=CHUNK, direct=False, dry_run=True).cache == "kept"
    engine = SyncEngine(Endpoint.parse(str(src)), Endpoint.parse(str(dst)), SyncOptions(chunk_size=CHUNK, direct=False))
    engine.prepare()
    before = dst.stat()
    with dst.open("r+b") as f:
        f.seek(5 * CHUNK)
        f.write(b"\x07" * CHUNK)
    os.utime(dst, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(EndpointError, match="changed after it was checked"):
        engine.run()
    assert dst.read_bytes()[5 * CHUNK : 6 * CHUNK] == b"\x07" * CHUNK
    assert run_engine(src, dst, chunk_size=CHUNK, direct=False).chunks["written"] == 1
    assert dst.read_bytes() == data


def test_a_destination_that_became_a_symlink_is_not_followed(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", random.Random(5).randbytes(2 * CHUNK))
    dst = _write(tmp_path / "dst", bytes(2 * CHUNK))
    victim = _write(tmp_path / "victim", b"\x09" * (2 * CHUNK))
    engine = SyncEngine(Endpoint.parse(str(src)), Endpoint.parse(str(dst)), SyncOptions(chunk_size=CHUNK))
    engine.prepare()
    dst.unlink()
    dst.symlink_to(victim)
    with pytest.raises(EndpointError):
        engine.run()
    assert victim.read_bytes() == b"\x09" * (2 * CHUNK)


def test_a_symlink_the_user_named_is_resolved_once(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", random.Random(6).randbytes(2 * CHUNK))
    target = _write(tmp_path / "target", bytes(2 * CHUNK))
    link = tmp_path / "by-id"
    link.symlink_to(target)
    assert run_engine(src, link, chunk_size=CHUNK).outcome == "synced"
    assert target.read_bytes() == src.read_bytes() and link.is_symlink()


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", b"x" * 5000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(EndpointError, match="neither a regular file nor a block device"):
        run_engine(src, fifo)


# ---------------------------------------------------------------- a hostile or buggy peer


def _pair(tmp_path: Path, seed: int, chunks: int = 6) -> tuple[Path, Path, bytes, bytes]:
    rnd = random.Random(seed)
    data = rnd.randbytes(chunks * CHUNK)
    other = bytearray(data)
    other[2 * CHUNK + 10 : 2 * CHUNK + 20] = b"0123456789"  # only chunk 2 differs
    return _write(tmp_path / "src", data), _write(tmp_path / "dst", bytes(other)), data, bytes(other)


def test_a_source_cannot_write_outside_the_chunk_it_was_asked_for(tmp_path: Path) -> None:
    """It declares a longer chunk and puts a piece where chunk 3 lies (equal, never rewritten)."""
    src, dst, _, before = _pair(tmp_path, 7)

    def shift(op: int, rid: int, payload: bytes):
        if op == wire.OP_DATA:
            index, _length, _count = wire.PIECES_HEAD.unpack_from(payload)
            evil = b"".join(wire.encode_piece(CHUNK + 100, b"\xee" * 4096, None))
            payload = wire.PIECES_HEAD.pack(index, 2 * CHUNK, 1) + evil
        return [(op, rid, payload)]

    engine = tampered_engine(src, dst, "source", shift, chunk_size=CHUNK, compress="none", direct=False)
    engine.prepare()
    with pytest.raises(ProtocolError, match="do not fit chunk 2"):
        engine.run()
    assert dst.read_bytes() == before


def test_a_stray_answer_is_a_protocol_error(tmp_path: Path) -> None:
    src, dst, _, _ = _pair(tmp_path, 8)

    def misaddress(op: int, rid: int, payload: bytes):
        return [(op, rid + 1000 if op == wire.OP_SUBDIGESTS else rid, payload)]

    engine = tampered_engine(src, dst, "destination", misaddress, chunk_size=CHUNK, direct=False)
    engine.prepare()
    with pytest.raises(ProtocolError, match="answer to no request"):
        engine.run()


@pytest.mark.parametrize("cut", [-1, 1], ids=["short", "long"])
def test_sub_digests_of_the_wrong_length_are_a_protocol_error(tmp_path: Path, cut: int) -> None:
    """The sub-digests a scan sends for the digest cache are as long as our geometry says:
    one byte less or more is refused, and no cache is kept."""
    src, dst, _, _ = _pair(tmp_path, 10)

    def bend(op: int, rid: int, payload: bytes):
        if op == wire.OP_DIGESTS:
            payload = payload[:cut] if cut < 0 else payload + b"\0"
        return [(op, rid, payload)]

    engine = tampered_engine(src, dst, "source", bend, chunk_size=CHUNK, direct=False)
    engine.prepare()
    with pytest.raises(ProtocolError, match="sub-digests of the wrong length"):
        engine.run()
    assert not engine._cache_path.exists()


def test_an_unexpected_frame_is_a_protocol_error_in_one_line(tmp_path: Path) -> None:
    src, dst, _, _ = _pair(tmp_path, 9)

    def inject(op: int, rid: int, payload: bytes):
        extra = [(wire.OP_WRITTEN, 0, wire.ACK_ITEM.pack(5, 0))] if op == wire.OP_DIGESTS else []
        return [(op, rid, payload), *extra]

    engine = tampered_engine(src, dst, "destination", inject, chunk_size=CHUNK, direct=False)
    engine.prepare()
    with pytest.raises(ProtocolError, match="acknowledgement of chunk 5, never sent") as caught:
        engine.run()
    assert "\n" not in str(caught.value)


def test_a_peer_that_stops_answering_ends_the_run_naming_it(tmp_path: Path) -> None:
    src, dst, _, _ = _pair(tmp_path, 10)

    def swallow(op: int, rid: int, payload: bytes):
        return [] if op == wire.OP_DATA else [(op, rid, payload)]

    engine = tampered_engine(src, dst, "source", swallow, chunk_size=CHUNK, peer_timeout=1.0, direct=False)
    engine.prepare()
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match="source stopped answering"):
        engine.run()
    assert time.monotonic() - started < 15


def _prepared_with_its_destination_pid(tmp_path: Path, chunks: int, seed: int) -> tuple[SyncEngine, int]:
    rnd = random.Random(seed)
    src = _write(tmp_path / "src", rnd.randbytes(chunks * CHUNK))
    dst = _write(tmp_path / "dst", rnd.randbytes(chunks * CHUNK))
    engine = SyncEngine(
        Endpoint.parse(str(src)), Endpoint.parse(str(dst)),
        SyncOptions(chunk_size=CHUNK, peer_timeout=1.5, direct=False),
    )
    engine.prepare()
    return engine, engine._conns["destination"].transport.process.pid


def _run_expecting_a_silent_destination(engine: SyncEngine, pid: int) -> None:
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match="destination stopped answering"):
            engine.run()
        assert time.monotonic() - started < 20
    finally:
        try:
            os.kill(pid, 18)  # SIGCONT, in case it outlived the run
        except ProcessLookupError:
            pass  # killed when the run closed it


def test_a_frozen_destination_ends_the_run_naming_it(tmp_path: Path) -> None:
    """SIGSTOP: the worker is alive but reads nothing; sends never block the engine's loop."""
    engine, pid = _prepared_with_its_destination_pid(tmp_path, 64, 11)
    os.kill(pid, 19)  # SIGSTOP
    _run_expecting_a_silent_destination(engine, pid)


@pytest.mark.parametrize("codec", ["zlib", "zstd", "lz4"])
def test_a_corrupt_compressed_piece_fails_its_chunk_and_verify_says_false(tmp_path: Path, codec: str) -> None:
    """The destination refuses it (error frame), the run goes on, and --verify is false. With
    zstd the decoder's own error once escaped: no chunk failed, and the run ended blaming the
    destination for "an error for no request"."""
    if codec not in wire.compressors():
        pytest.skip(f"{codec} is not installed")
    rnd = random.Random(12)
    text = b"compressible line of text\n" * (6 * CHUNK // 26 + 1)
    src = _write(tmp_path / "src", text[: 6 * CHUNK])
    dst = _write(tmp_path / "dst", rnd.randbytes(6 * CHUNK))
    broken: list[int] = []

    def corrupt(op: int, rid: int, payload: bytes):
        if op == wire.OP_DATA and not broken:
            index = wire.PIECES_HEAD.unpack_from(payload)[0]
            pos = wire.PIECES_HEAD.size
            _o, code, _raw, enc = wire.PIECE_HEAD.unpack_from(payload, pos)
            if code == wire.compressor(codec)[0]:
                body = pos + wire.PIECE_HEAD.size
                payload = payload[:body] + bytes(enc) + payload[body + enc :]
                broken.append(index)
        return [(op, rid, payload)]

    engine = tampered_engine(src, dst, "source", corrupt, chunk_size=CHUNK, compress=codec, verify=True, direct=False)
    engine.prepare()
    report = engine.run()
    assert broken and report.outcome == "failed" and report.verified is False
    assert report.chunks["error"] == 1 and "bad write for chunk" in report.errors[0]


# ---------------------------------------------------------------- a destination that fails


@pytest.fixture
def tiny_filesystem(tmp_path: Path):
    """A 1 MiB tmpfs: writes past it fail with ENOSPC."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.parametrize("direct", [False, True])
def test_no_space_stops_at_the_first_failure_with_one_line(tmp_path: Path, tiny_filesystem: Path, direct: bool) -> None:
    src = _write(tmp_path / "src", random.Random(13).randbytes(4 << 20))
    dst = tiny_filesystem / "dst"
    with pytest.raises(EndpointError, match=r"No space left on device after [\d,]+ bytes were written") as caught:
        run_engine(src, dst, chunk_size=CHUNK, direct=direct, verify=True)
    assert "\n" not in str(caught.value)


def test_cli_no_space_is_one_error_line_and_verified_false(tmp_path: Path, tiny_filesystem: Path, capsys) -> None:
    src = _write(tmp_path / "src", random.Random(14).randbytes(4 << 20))
    report = tmp_path / "report.json"
    status = main(["sync", str(src), str(tiny_filesystem / "dst"), "-q", "--verify", "--no-direct",
                   "--chunk-size", "64K", "--json", str(report)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "No space left" in err[0]
    import json

    assert json.loads(report.read_text())["verified"] is False


def test_a_cancel_ends_the_run_even_when_the_destination_froze(tmp_path: Path, monkeypatch) -> None:
    """Writes in flight that are never acknowledged do not hold a cancelled run for ever."""
    engine, pid = _prepared_with_its_destination_pid(tmp_path, 256, 15)
    original = Transfer._on_data

    def freeze_then_cancel(self: Transfer, frame) -> None:
        original(self, frame)
        if not self.control.cancelled:
            os.kill(pid, 19)  # SIGSTOP, with a write in flight
            self.control.cancel()

    monkeypatch.setitem(Transfer._handlers, wire.OP_DATA, freeze_then_cancel)
    _run_expecting_a_silent_destination(engine, pid)


@pytest.mark.parametrize("chunk_size", [4096, 64 << 20])
def test_the_smallest_and_the_largest_chunk_sizes_sync(tmp_path: Path, chunk_size: int) -> None:
    rnd = random.Random(16)
    src = _write(tmp_path / "src", rnd.randbytes((3 << 20) + 123))
    dst = _write(tmp_path / "dst", rnd.randbytes(1 << 20))
    report = run_engine(src, dst, chunk_size=chunk_size, verify=True, direct=False)
    assert report.outcome == "synced" and report.verified
    assert dst.read_bytes() == src.read_bytes()


def test_a_created_destination_has_its_name_made_durable(tmp_path: Path) -> None:
    """`synced` means on disk: for a file the sync created, that is its name too (an fsync of
    its directory), not only its contents (the fsync of the file). Seen with strace."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    src = _write(tmp_path / "src", random.Random(18).randbytes(2 * CHUNK))
    dst, log = tmp_path / "new.img", tmp_path / "strace.log"
    run = subprocess.run(
        [strace, "-f", "-qq", "-e", "trace=openat,fsync", "-o", str(log),
         sys.executable, "-m", "blocksync_tui", "sync", str(src), str(dst), "-q", "--chunk-size", "64K"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120,
    )
    if run.returncode and "ptrace" in run.stderr:
        pytest.skip(f"strace cannot trace here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    calls = [line.split(None, 1) for line in log.read_text().splitlines()]
    creator = next(pid for pid, call in calls if f'"{dst}"' in call and "O_CREAT|O_EXCL" in call)
    directory_fds = {call.rsplit("= ", 1)[1] for pid, call in calls
                     if pid == creator and f'"{tmp_path}"' in call and "O_DIRECTORY" in call}
    assert directory_fds, "the new file's directory was never opened"
    assert any(pid == creator and call.startswith("fsync(") and call[6:].split(")")[0] in directory_fds
               for pid, call in calls), "the new file's directory was never fsynced"
