"""The first copy: a destination that does not exist is not compared; the source streams every
chunk that holds data, read once, and the result is byte-identical and as sparse as the source."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from blocksync_tui.engine.chunkmap import State
from blocksync_tui.engine.errors import Cancelled, ProtocolError
from blocksync_tui.engine.worker import protocol as wire
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.pipeline import Transfer
from blocksync_tui.engine.sync import SyncEngine, SyncOptions
from helpers import run_engine, tampered_engine

KIB = 1024
CHUNK = 64 * KIB


def _sparse_image(path: Path, size: int, extents: list[tuple[int, bytes]]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in extents:
            f.seek(offset)
            f.write(data)
    return path


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, 5 * CHUNK + 4097])
def test_a_first_copy_streams_and_is_exact(tmp_path: Path, size: int) -> None:
    src = tmp_path / "src"
    src.write_bytes(random.Random(size).randbytes(size))
    dst = tmp_path / "new" / "dst"
    dst.parent.mkdir()
    report = run_engine(src, dst, chunk_size=CHUNK, direct=False, verify=True)
    assert report.method == "stream" and report.outcome == "synced" and report.verified
    assert dst.read_bytes() == src.read_bytes()
    assert report.chunks["written"] == report.total_chunks
    assert report.bytes_differing == size
    assert size <= report.bytes_sent < size + 64 * report.total_chunks  # frame heads only


def test_a_sparse_source_gives_a_sparse_destination(tmp_path: Path) -> None:
    """Holes are not read, zero chunks are not sent, zero sub-blocks of a data chunk are left
    out: the destination allocates what the source does, not its whole size."""
    rnd = random.Random(3)
    extents = [(0, rnd.randbytes(4 * KIB)), (10 * CHUNK + 8 * KIB, rnd.randbytes(20 * KIB)),
               (200 * CHUNK, rnd.randbytes(3 * CHUNK))]
    src = _sparse_image(tmp_path / "src", 256 * CHUNK, extents)
    with open(src, "r+b") as f:  # allocated zeros, which read as zeros all the same
        f.seek(100 * CHUNK)
        f.write(bytes(2 * CHUNK))
    dst = tmp_path / "dst"
    report = run_engine(src, dst, chunk_size=CHUNK, direct=False)
    assert report.method == "stream" and dst.read_bytes() == src.read_bytes()
    data = sum(len(d) for _, d in extents)
    assert report.bytes_differing == data and report.chunks["written"] == 5
    assert report.chunks["zero"] == 2  # the allocated zeros; the rest are holes, never read
    assert report.chunks["hole"] == 256 - 5 - 2
    assert _allocated(dst) <= data + 16 * KIB  # file-system blocks at the edges of extents


def run_engine_prepared(src: Path, dst: Path) -> SyncEngine:
    engine = SyncEngine(Endpoint.parse(str(src)), Endpoint.parse(str(dst)),
                        SyncOptions(chunk_size=CHUNK, direct=False))
    engine.prepare()
    return engine


def _stream_pair(tmp_path: Path, chunks: int = 64) -> tuple[Path, Path]:
    src = tmp_path / "src"
    src.write_bytes(random.Random(9).randbytes(chunks * CHUNK))
    return src, tmp_path / "dst"


@pytest.mark.parametrize(
    "what, tamper_of, message",
    [
        ("data ahead of its window", lambda: _shift_index(1000), "out of order"),
        ("an entry for data never sent", lambda: _drop_data(3), "never sent"),
        ("data sent twice", lambda: _repeat_data(2), "out of order"),
        ("data then called zeros", lambda: _data_called_zero(1), "called it zeros"),
    ],
)
def test_a_hostile_source_in_a_stream_is_a_protocol_error(tmp_path: Path, what, tamper_of, message) -> None:
    src, dst = _stream_pair(tmp_path)
    engine = tampered_engine(src, dst, "source", tamper_of(), chunk_size=CHUNK, compress="none", direct=False)
    engine.prepare()
    with pytest.raises(ProtocolError, match=message) as caught:
        engine.run()
    assert "\n" not in str(caught.value), what


def _shift_index(by: int):
    def tamper(op: int, rid: int, payload: bytes):
        if op == wire.OP_DATA:
            index, length, count = wire.PIECES_HEAD.unpack_from(payload)
            payload = wire.PIECES_HEAD.pack(index + by, length, count) + payload[wire.PIECES_HEAD.size:]
        return [(op, rid, payload)]
    return tamper


def _drop_data(index_to_drop: int):
    def tamper(op: int, rid: int, payload: bytes):
        if op == wire.OP_DATA and wire.PIECES_HEAD.unpack_from(payload)[0] == index_to_drop:
            return []
        return [(op, rid, payload)]
    return tamper


def _repeat_data(index_to_repeat: int):
    def tamper(op: int, rid: int, payload: bytes):
        frames = [(op, rid, payload)]
        if op == wire.OP_DATA and wire.PIECES_HEAD.unpack_from(payload)[0] == index_to_repeat:
            frames.append((op, rid, payload))
        return frames
    return tamper


def _data_called_zero(index: int):
    def tamper(op: int, rid: int, payload: bytes):
        if op == wire.OP_DIGESTS:
            first, count, dsize = wire.DIGESTS_HEAD.unpack_from(payload)
            if first <= index < first + count:
                entries = bytearray(payload)
                entries[wire.DIGESTS_HEAD.size + (index - first) * (1 + dsize)] = wire.FLAG_ZERO
                payload = bytes(entries)
        return [(op, rid, payload)]
    return tamper


def test_a_cancelled_stream_stops_writing_and_a_rerun_finishes(tmp_path: Path, monkeypatch) -> None:
    """After a cancel no further chunk is written; the chunks written are acknowledged and on
    disk; the rerun (the file now exists) compares and completes it."""
    src, dst = _stream_pair(tmp_path, chunks=256)
    relay = Transfer._on_streamed_data
    seen: list[int] = []

    def cancel_at_the_fifth(self: Transfer, frame) -> None:
        relay(self, frame)
        seen.append(1)
        if len(seen) == 5:
            self.control.cancel()

    monkeypatch.setattr(Transfer, "_on_streamed_data", cancel_at_the_fifth)
    engine = run_engine_prepared(src, dst)
    with pytest.raises(Cancelled):
        engine.run()
    written = engine.chunk_map.count(State.WRITTEN)
    assert written == 5, "the chunks relayed before the cancel are written, and no more"
    data, copy = src.read_bytes(), dst.read_bytes()
    for index in range(256):
        piece = slice(index * CHUNK, (index + 1) * CHUNK)
        if engine.chunk_map.get(index) == State.WRITTEN:
            assert copy[piece] == data[piece]
    report = run_engine(src, dst, chunk_size=CHUNK, direct=False)
    assert report.method == "digests" and dst.read_bytes() == data
    assert report.chunks["same"] >= written


# ---------------------------------------------------------------- zeros onto an existing file


@pytest.mark.parametrize("direct", [False, True])
def test_zeros_written_onto_a_file_become_holes(tmp_path: Path, direct: bool) -> None:
    """A sparse source onto a dense destination: the zero chunks and zero pieces are punched
    out (FALLOC_FL_PUNCH_HOLE), not written, so the destination ends as sparse as the source."""
    rnd = random.Random(11)
    size = 128 * CHUNK
    extents = [(5 * CHUNK, rnd.randbytes(CHUNK)), (70 * CHUNK + 12 * KIB, rnd.randbytes(8 * KIB))]
    src = _sparse_image(tmp_path / "src", size, extents)
    dst = tmp_path / "dst"
    dst.write_bytes(rnd.randbytes(size))
    assert _allocated(dst) >= size
    report = run_engine(src, dst, chunk_size=CHUNK, direct=direct)
    assert report.method == ("direct" if direct else "digests")
    assert dst.read_bytes() == src.read_bytes()
    assert _allocated(dst) <= _allocated(src) + 16 * KIB


@pytest.mark.parametrize("compare", [True, False], ids=["compared", "no-compare"])
def test_zeros_onto_a_block_device_read_back_as_zeros(tmp_path: Path, loop_device, compare: bool) -> None:
    """On a device, a zero chunk goes out as BLKZEROOUT (never a discard): it reads as zeros."""
    from blocksync_tui.engine.worker import zeroing

    rnd = random.Random(12)
    src = _sparse_image(tmp_path / "src", 64 * CHUNK, [(3 * CHUNK, rnd.randbytes(CHUNK))])
    image = tmp_path / "dev.img"
    image.write_bytes(rnd.randbytes(64 * CHUNK))
    device = loop_device(image)
    report = run_engine(src, device, chunk_size=CHUNK, direct=False, verify=True, compare=compare)
    assert report.method == ("digests" if compare else "stream")
    assert report.chunks["written"] == 64 and report.verified
    with open(device, "rb") as f:
        assert f.read(64 * CHUNK) == src.read_bytes()
    fd = os.open(device, os.O_WRONLY)
    try:  # the ioctl itself is there and zeroes what is sector-aligned
        assert zeroing.block_zero_out(fd, 4096, 8192 + 100) == 8192
        assert zeroing.block_zero_out(fd, 100, 4096) == 0
    finally:
        os.close(fd)


# ---------------------------------------------------------------- --no-compare


@pytest.mark.parametrize("direct", [False, True])
def test_no_compare_overwrites_everything_once(tmp_path: Path, direct: bool) -> None:
    """A destination known to differ everywhere is not read: every chunk is sent or zeroed,
    zero stretches inside data chunks too, and the result is exact (and sparse where the
    source is), on one host as over the network."""
    rnd = random.Random(13)
    size = 48 * CHUNK + 777
    extents = [(0, rnd.randbytes(CHUNK)), (9 * CHUNK + 4 * KIB, rnd.randbytes(8 * KIB)),
               (47 * CHUNK, rnd.randbytes(CHUNK + 777))]
    src = _sparse_image(tmp_path / "src", size, extents)
    dst = tmp_path / "dst"
    dst.write_bytes(rnd.randbytes(size + 5000))  # longer, too: truncated
    report = run_engine(src, dst, chunk_size=CHUNK, direct=direct, compare=False, verify=True)
    assert report.method == "stream" and report.outcome == "synced" and report.verified
    assert dst.read_bytes() == src.read_bytes()
    assert report.chunks["written"] == report.total_chunks  # every chunk, none compared
    assert _allocated(dst) <= _allocated(src) + 16 * KIB


def test_no_compare_is_for_a_sync_only(tmp_path: Path) -> None:
    from blocksync_tui.engine.errors import UsageError

    src, dst = _stream_pair(tmp_path, chunks=2)
    dst.write_bytes(b"x")
    with pytest.raises(UsageError, match="no-compare"):
        run_engine(src, dst, dry_run=True, compare=False)


@pytest.mark.parametrize("algorithm", ["sha256", "blake2b"])
def test_a_first_copy_verifies_with_a_hashlib_digest(tmp_path: Path, algorithm: str) -> None:
    """The stream hashes each chunk it sends (for --verify and the digest cache) with any
    chunk digest, not only xxhash's (a hashlib constructor takes no data)."""
    src = tmp_path / "src"
    src.write_bytes(random.Random(3).randbytes(5 * CHUNK + 100))
    dst = tmp_path / "dst"
    report = run_engine(src, dst, chunk_size=CHUNK, direct=False, verify=True, algorithm=algorithm)
    assert report.method == "stream" and report.verified and report.cache == "kept"
    assert dst.read_bytes() == src.read_bytes()
