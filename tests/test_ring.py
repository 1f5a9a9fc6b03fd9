"""Tests for the shared-memory ring that carries a local worker's chunk data (worker/ring.py)."""

from __future__ import annotations

import os
import queue
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blocksync_tui.engine import bootstrap
from blocksync_tui.engine.connection import Connection
from blocksync_tui.engine.errors import ConnectionLost
from blocksync_tui.engine.transport import LocalTransport
from blocksync_tui.engine.worker import protocol as wire
from blocksync_tui.engine.worker import ring as shared_ring
from helpers import run_engine, tampered_engine

SMALL = 4 * shared_ring.MIN_PAYLOAD
"""A ring of 256 KiB: payloads of 64-128 KiB wrap around it every few frames."""


def _pair(size: int = SMALL) -> tuple[shared_ring.Ring, shared_ring.Ring]:
    """Both ends of one ring, as the controller and the worker map it."""
    consumer, fd = shared_ring.create(size)
    try:
        producer = shared_ring.attach(f"/proc/{os.getpid()}/fd/{fd}", size)
    finally:
        os.close(fd)
    return producer, consumer


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(shared_ring.MIN_PAYLOAD, SMALL // 2), min_size=1, max_size=12), st.integers(0, 1 << 32))
def test_payloads_come_out_as_they_went_in_across_the_wrap(sizes: list[int], seed: int) -> None:
    rnd = random.Random(seed)
    producer, consumer = _pair()
    for size in sizes:
        data = rnd.randbytes(size)
        cut = rnd.randrange(size + 1)  # a payload in two parts, as a chunk's pieces are
        producer.put([memoryview(data)[:cut], memoryview(data)[cut:]], size)
        assert consumer.take(size) == data
        producer.release(consumer.head)  # every frame given back: the producer never waits


def test_the_producer_waits_for_space_until_the_consumer_releases_it() -> None:
    producer, consumer = _pair()
    half = bytes([7]) * (SMALL // 2)
    producer.put([half], len(half))
    producer.put([half], len(half))  # the ring is full now
    third = threading.Thread(target=producer.put, args=([b"\1" * shared_ring.MIN_PAYLOAD], shared_ring.MIN_PAYLOAD))
    third.start()
    third.join(0.3)
    assert third.is_alive(), "a put into a full ring must wait"
    assert consumer.take(len(half)) == half
    producer.release(consumer.head)
    third.join(5)
    assert not third.is_alive()
    assert consumer.take(len(half)) == half
    assert consumer.take(shared_ring.MIN_PAYLOAD) == b"\1" * shared_ring.MIN_PAYLOAD


def test_a_release_outside_what_was_put_and_an_oversized_take_are_refused() -> None:
    producer, consumer = _pair()
    producer.put([bytes(shared_ring.MIN_PAYLOAD)], shared_ring.MIN_PAYLOAD)
    with pytest.raises(ValueError, match="release"):
        producer.release(shared_ring.MIN_PAYLOAD + 1)
    producer.release(shared_ring.MIN_PAYLOAD)
    with pytest.raises(ValueError, match="release"):
        producer.release(0)  # behind what was already given back
    with pytest.raises(ValueError, match="shared-memory frame"):
        consumer.take(SMALL // 2 + 1)
    with pytest.raises(ValueError, match="shared-memory frame"):
        consumer.take(0)


def test_attach_checks_the_file_it_opened(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_bytes(bytes(SMALL))
    with pytest.raises(ValueError, match="not a memory file of"):
        shared_ring.attach(str(other), SMALL * 2)  # a file of another size than offered
    with pytest.raises(ValueError):
        shared_ring.attach(str(other), 100)  # a size no controller offers
    with pytest.raises(OSError):
        shared_ring.attach(str(tmp_path / "missing"), SMALL)


def _stream(conn: Connection, events: queue.Queue, path: Path, chunk: int) -> bytes:
    size = path.stat().st_size
    conn.call_json(wire.OP_OPEN, {"path": str(path)})
    conn.post(wire.OP_STREAM, {"chunk_size": chunk, "size": size, "sub_block": 65536, "codec": "",
                               "ranges": [[0, -(-size // chunk)]]})
    out = bytearray(size)
    while True:
        frame = events.get(timeout=60)
        if frame.op == wire.OP_DATA:
            index, length, _ = wire.PIECES_HEAD.unpack_from(frame.payload)
            for offset, _code, raw, start, end in wire.piece_layout(frame.payload, index, length):
                out[index * chunk + offset : index * chunk + offset + raw] = frame.payload[start:end]
        elif frame.op != wire.OP_DIGESTS:
            assert frame.op == wire.OP_DONE, frame
            return bytes(out)


def test_a_local_worker_streams_through_the_ring_for_several_turns(tmp_path: Path) -> None:
    """80 MiB in 1 MiB chunks through a 32 MiB ring: it wraps twice, and its space comes back
    only through RELEASE frames, so a lost or wrong release would hang or garble this."""
    path = tmp_path / "src.img"
    data = bytearray(os.urandom(80 << 20))
    data[5 << 20 : 7 << 20] = bytes(2 << 20)  # zero chunks go as entries, not through the ring
    path.write_bytes(data)
    events: queue.Queue = queue.Queue()
    conn = Connection(LocalTransport(), "source", events)
    try:
        assert conn.start()["ring"] == shared_ring.SIZE
        pipe_before = conn._reader.bytes_in
        assert _stream(conn, events, path, 1 << 20) == bytes(data)
        # The payloads came through shared memory: the pipe carried headers and entries only.
        assert conn.bytes_in - pipe_before >= 78 << 20
    finally:
        conn.close()


def test_a_worker_that_cannot_map_the_ring_says_so_and_uses_the_pipe(tmp_path: Path) -> None:
    offer = {"ring": {"path": str(tmp_path / "gone"), "size": shared_ring.SIZE},
             "ring_in": {"path": "/proc/self/fd/0", "size": shared_ring.SIZE}}  # a pipe, not a memory file
    frames = b"".join(
        wire.pack_header(op, rid, len(body)) + body
        for op, rid, body in [(wire.OP_HELLO, 1, wire.encode_json(offer)), (wire.OP_EXIT, 2, b"")]
    )
    done = subprocess.run([sys.executable, "-I", "-c", bootstrap.STUB], input=bootstrap.payload() + frames,
                          capture_output=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    body = done.stdout[len(wire.BANNER) + wire.HEADER.size :]
    _op, _rid, length = wire.unpack_header(done.stdout[len(wire.BANNER) : len(wire.BANNER) + wire.HEADER.size])
    hello = wire.decode_json(body[:length])
    assert hello["ring"] == hello["ring_in"] == 0


def test_a_shared_frame_from_a_worker_given_no_ring_ends_the_run_in_one_line(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    src.write_bytes(os.urandom(3 << 20))

    def tamper(op: int, rid: int, payload: bytes):
        return [(op, rid, payload, wire.FRAME_SHARED if op == wire.OP_DATA else 0)]

    engine = tampered_engine(src, dst, "source", tamper, chunk_size=1 << 20, compress="none", direct=False)
    engine.prepare()
    with pytest.raises(ConnectionLost, match="DATA frame through shared memory it was not given") as caught:
        engine.run()
    assert "\n" not in str(caught.value)
    assert not dst.exists() or dst.read_bytes() != src.read_bytes()


def test_a_sync_through_both_rings_is_byte_identical(tmp_path: Path, monkeypatch) -> None:
    """The network path between two local workers (no direct compare): chunk data comes from
    the source through one ring and goes to the destination through another, each turning
    over twice; a size not a multiple of the chunk size, zero runs included."""
    through = {"put": 0, "take": 0}
    put, take = shared_ring.Ring.put, shared_ring.Ring.take

    def counted_put(ring, views, length):  # in this process: the WRITEs to the destination
        through["put"] += length
        return put(ring, views, length)

    def counted_take(ring, length):  # in this process: the DATA from the source
        through["take"] += length
        return take(ring, length)

    monkeypatch.setattr(shared_ring.Ring, "put", counted_put)
    monkeypatch.setattr(shared_ring.Ring, "take", counted_take)
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    data = bytearray(os.urandom((72 << 20) + 12345))
    data[(3 << 20) + 100 : (9 << 20)] = bytes((9 << 20) - (3 << 20) - 100)
    src.write_bytes(data)
    report = run_engine(src, dst, chunk_size=1 << 20, direct=False, compress="none")
    assert dst.read_bytes() == bytes(data)
    assert report.bytes_sent < len(data)
    assert through["take"] >= 64 << 20 and through["put"] >= 64 << 20, through


def test_a_put_waiting_for_space_gives_up_when_the_ring_is_abandoned() -> None:
    producer, _consumer = _pair()
    producer.put([bytes(SMALL // 2)], SMALL // 2)
    producer.put([bytes(SMALL // 2)], SMALL // 2)
    failed: list[BaseException] = []

    def put() -> None:
        try:
            producer.put([bytes(shared_ring.MIN_PAYLOAD)], shared_ring.MIN_PAYLOAD)
        except EOFError as exc:
            failed.append(exc)

    waiting = threading.Thread(target=put)
    waiting.start()
    waiting.join(0.2)
    assert waiting.is_alive()
    producer.abandon()
    waiting.join(5)
    assert not waiting.is_alive() and failed
