"""A real worker driven request by request: the scan's kept sub-digests and direct compares."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from blocksync_tui.engine import worker as wire
from blocksync_tui.engine.connection import Connection, Frame
from blocksync_tui.engine.transport import LocalTransport

xxhash = pytest.importorskip("xxhash")
CHUNK = 64 << 10
SUB = 4096


@pytest.fixture
def worker():
    """A started local worker, with the queue its streamed replies arrive on."""
    events: queue.Queue[Frame] = queue.Queue()
    conn = Connection(LocalTransport(), "destination", events)
    conn.start()
    yield conn, events
    conn.close()


def _until_done(events: queue.Queue[Frame], rid: int) -> list[Frame]:
    frames = []
    while True:
        frame = events.get(timeout=30)
        if frame.rid == rid and frame.op == wire.OP_DONE:
            return frames
        frames.append(frame)


def _subdigests(data: bytes) -> bytes:
    return wire.sub_digests(wire.hasher("xxh64"), data, SUB)


def _subhash(conn: Connection, events, index: int) -> bytes:
    request = wire.pack_chunk_request(index, index * CHUNK, CHUNK, SUB, 0, "xxh64", "")
    rid = conn.post(wire.OP_SUBHASH, request)
    frame = events.get(timeout=30)
    while frame.op == wire.OP_WRITTEN:  # acknowledgements of earlier writes come in between
        frame = events.get(timeout=30)
    assert (frame.rid, frame.op) == (rid, wire.OP_SUBDIGESTS)
    return frame.payload[wire.CHUNK_HEAD.size :]


def test_local_workers_start_without_site_yet_have_xxhash(worker) -> None:
    conn, _ = worker
    assert "xxh128" in conn.hello["algorithms"]


def test_kept_sub_digests_answer_subhash_and_go_stale_on_write(worker, tmp_path: Path) -> None:
    conn, events = worker
    path = tmp_path / "disk.img"
    original = bytes(range(256)) * (3 * CHUNK // 256)
    path.write_bytes(original)
    conn.call_json(wire.OP_OPEN, {"path": str(path), "write": True, "chunk_size": CHUNK})
    rid = conn.post(wire.OP_HASH, {"ranges": [[0, 3]], "chunk_size": CHUNK, "size": len(original),
                                   "algo": "xxh128", "sub_block": SUB, "sub_algo": "xxh64"})
    _until_done(events, rid)

    # Kept from the scan: the file changing behind the worker's back does not show...
    with open(path, "r+b") as f:
        f.seek(CHUNK + 5)
        f.write(b"changed behind its back")
    assert _subhash(conn, events, 1) == _subdigests(original[CHUNK : 2 * CHUNK])

    # ...but the worker's own write makes it read the chunk again.
    piece = wire.PIECES_HEAD.pack(1, CHUNK, 1) + b"".join(wire.encode_piece(0, b"\1" * SUB, None))
    conn.post(wire.OP_WRITE, piece)
    conn.call(wire.OP_FLUSH, b"")
    assert _subhash(conn, events, 1) == _subdigests(path.read_bytes()[CHUNK : 2 * CHUNK])


def test_delta_from_kept_sub_digests_sends_only_differing_pieces(worker, tmp_path: Path) -> None:
    conn, events = worker
    path = tmp_path / "src.img"
    data = bytes(range(256)) * (CHUNK // 256)
    path.write_bytes(data)
    conn.call_json(wire.OP_OPEN, {"path": str(path)})
    rid = conn.post(wire.OP_HASH, {"ranges": [[0, 1]], "chunk_size": CHUNK, "size": CHUNK,
                                   "algo": "xxh128", "sub_block": SUB, "sub_algo": "xxh64"})
    _until_done(events, rid)
    theirs = bytearray(_subdigests(data))
    theirs[3 * 8] ^= 1  # the destination differs in sub-blocks 3 and 4
    theirs[4 * 8] ^= 1
    request = wire.pack_chunk_request(0, 0, CHUNK, SUB, wire.DELTA_SUBDIGESTS, "xxh64", "", bytes(theirs))
    rid = conn.post(wire.OP_DELTA, request)
    frame = events.get(timeout=30)
    assert (frame.rid, frame.op) == (rid, wire.OP_DATA)
    pieces = wire.decode_pieces(frame.payload, 0, CHUNK)
    assert pieces == [(3 * SUB, 2 * SUB, data[3 * SUB : 5 * SUB])]


def test_pair_reports_and_fixes_each_chunk(worker, tmp_path: Path) -> None:
    conn, events = worker
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    size = 3 * CHUNK + 100  # the last chunk is short
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    src.write_bytes(data)
    changed = bytearray(data)
    changed[5] ^= 1  # chunk 0: one sub-block
    changed[2 * CHUNK : 3 * CHUNK] = bytes(CHUNK)  # chunk 2: zeroed
    changed[-1] = 7  # chunk 3: the short tail
    dst.write_bytes(bytes(changed))
    conn.call_json(wire.OP_OPEN, {"path": str(dst), "write": True, "chunk_size": CHUNK, "sync_size": len(data)})
    peer = conn.call_json(wire.OP_OPEN, {"path": str(src), "peer": True, "write": True})
    assert peer["size"] == size
    rid = conn.post(wire.OP_PAIR, {"ranges": [[0, 4]], "chunk_size": CHUNK, "size": size,
                                   "sub_block": SUB, "algo": "xxh128", "write": True, "digests": True})
    entries = []
    for frame in _until_done(events, rid):
        first, count, dsize = wire.DIGESTS_HEAD.unpack_from(frame.payload)
        pos = wire.DIGESTS_HEAD.size
        for _ in range(count):
            outcome, flag, differing = wire.PAIRED_ITEM.unpack_from(frame.payload, pos)
            digest = frame.payload[pos + wire.PAIRED_ITEM.size : pos + wire.PAIRED_ITEM.size + dsize]
            entries.append((outcome, differing, digest))
            pos += wire.PAIRED_ITEM.size + dsize
    conn.call(wire.OP_FLUSH, b"")
    assert [(o, n) for o, n, _ in entries] == [
        (wire.PAIR_DIFFERS, SUB), (wire.PAIR_SAME, 0), (wire.PAIR_DIFFERS, CHUNK), (wire.PAIR_DIFFERS, 100)
    ]
    assert entries[0][2] == xxhash.xxh3_128_digest(data[:CHUNK])
    assert dst.read_bytes() == data and src.read_bytes() == data  # the peer was only read
