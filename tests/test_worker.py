"""A real worker driven request by request: the scan's kept sub-digests and direct compares."""

from __future__ import annotations

import os
import queue
import random
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocksync_tui.engine import bootstrap
from blocksync_tui.engine.worker import protocol as wire
from blocksync_tui.engine.connection import Connection, Frame
from blocksync_tui.engine.transport import LocalTransport
from helpers import drop_from_cache, resident

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


def _open_destination(conn: Connection, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    conn.call_json(wire.OP_OPEN, {"path": str(path), "write": True, "chunk_size": CHUNK, "sync_size": len(data)})


def _bad_writes() -> list[bytes]:
    """WRITE payloads a buggy or hostile controller could send for chunk 1."""
    good_head = wire.PIECES_HEAD.pack(1, CHUNK, 1)
    return [
        b"",  # nothing at all
        b"\x00\x00",  # shorter than an index (struct.error)
        wire.PIECES_HEAD.pack(1, CHUNK, 1) + wire.PIECE_HEAD.pack(0, wire.CODEC_ZLIB, SUB, 9) + b"not zlib!",
        good_head + wire.PIECE_HEAD.pack(0, wire.CODEC_RAW, SUB, SUB),  # body missing
        wire.PIECES_HEAD.pack(2**64 - 1, CHUNK, 0),  # an index no chunk has ("negative")
        wire.PIECES_HEAD.pack(1, 2 * CHUNK, 1) + b"".join(wire.encode_piece(CHUNK, b"\xee" * SUB, None)),
        good_head + wire.PIECE_HEAD.pack(0, 99, SUB, 1) + b"?",  # unknown codec
    ]


def test_malformed_writes_become_errors_and_the_writer_lives_on(worker, tmp_path: Path) -> None:
    """Each bad WRITE is answered by an error; FLUSH still answers after them all, and nothing
    outside chunk 1 (in fact nothing at all) was written."""
    conn, events = worker
    path = tmp_path / "dst.img"
    data = bytes(range(256)) * (4 * CHUNK // 256)
    _open_destination(conn, path, data)
    bad = _bad_writes()
    for payload in bad:
        conn.post(wire.OP_WRITE, payload)
    assert wire.decode_json(conn.call(wire.OP_FLUSH, b"", timeout=10))["flushed"]
    errors = []
    while not events.empty():
        frame = events.get_nowait()
        if frame.op == wire.OP_ERROR:
            errors.append(wire.decode_json(frame.payload)["message"])
    assert len(errors) == len(bad)
    assert path.read_bytes() == data


def test_a_decompression_bomb_is_refused_by_the_worker(worker, tmp_path: Path) -> None:
    conn, events = worker
    path = tmp_path / "dst.img"
    data = bytes(4 * CHUNK)
    _open_destination(conn, path, data)
    bomb = zlib.compress(bytes(256 << 20), 9)
    payload = wire.PIECES_HEAD.pack(1, CHUNK, 1) + wire.PIECE_HEAD.pack(0, wire.CODEC_ZLIB, SUB, len(bomb)) + bomb
    conn.post(wire.OP_WRITE, payload)
    conn.call(wire.OP_FLUSH, b"", timeout=10)
    frame = events.get(timeout=10)
    while frame.op != wire.OP_ERROR:
        frame = events.get(timeout=10)
    assert "longer than its declared" in wire.decode_json(frame.payload)["message"]
    status = Path(f"/proc/{conn.transport.process.pid}/status").read_text()
    peak_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    assert peak_kib < 100 << 10  # far below the 256 MiB the bomb expands to


def test_a_worker_whose_controller_vanished_applies_and_flushes_what_it_got(tmp_path: Path) -> None:
    """The controller dies (its end of the pipe closes) with writes in flight: they are applied,
    so what it last saw acknowledged, and more, is on the disk."""
    events: queue.Queue[Frame] = queue.Queue()
    conn = Connection(LocalTransport(), "destination", events)
    conn.start()
    path = tmp_path / "dst.img"
    _open_destination(conn, path, bytes(64 * CHUNK))
    for index in range(64):
        piece = b"".join(wire.encode_piece(0, bytes([index + 1]) * CHUNK, None))
        conn.post(wire.OP_WRITE, wire.PIECES_HEAD.pack(index, CHUNK, 1) + piece)
    process = conn.transport.process
    time.sleep(0.05)  # let the sender thread hand the writes to the pipe
    process.stdin.close()  # no EXIT: the controller is gone
    assert process.wait(timeout=30) == 0
    written = path.read_bytes()
    assert all(written[i * CHUNK : (i + 1) * CHUNK] == bytes([i + 1]) * CHUNK for i in range(64))
    conn.close()


CODECS = [name for name in ("zlib", "zstd", "lz4") if name in wire.compressors()]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=300), codec=st.sampled_from(CODECS),
       mutations=st.lists(st.tuples(st.integers(8, 1 << 16), st.integers(0, 255)), max_size=8))
def test_random_and_mutated_writes_never_kill_the_writer_or_leave_their_chunk(
    worker, tmp_path_factory, payload: bytes, codec: str, mutations
) -> None:
    """Property: whatever WRITE arrives for chunk 1 (random bytes, or a valid frame with some
    bytes changed, its compressed piece in any codec), the worker answers the next FLUSH and
    chunks 0, 2 and 3 are untouched."""
    conn, events = worker
    path = tmp_path_factory.mktemp("fuzz") / "dst.img"
    data = bytes(range(256)) * (4 * CHUNK // 256)
    _open_destination(conn, path, data)
    valid = bytearray(wire.PIECES_HEAD.pack(1, CHUNK, 2))
    valid += b"".join(wire.encode_piece(SUB, b"\x55" * SUB, None))
    valid += b"".join(wire.encode_piece(CHUNK - SUB, b"\x66" * SUB, codec))
    for at, value in mutations:  # the chunk index (its first 8 bytes) stays the one named
        valid[8 + at % (len(valid) - 8)] = value
    for candidate in (payload, bytes(valid)):
        conn.post(wire.OP_WRITE, candidate)
    assert wire.decode_json(conn.call(wire.OP_FLUSH, b"", timeout=10))["flushed"]
    while not events.empty():
        events.get_nowait()
    after = path.read_bytes()
    assert len(after) == len(data)
    assert after[:CHUNK] == data[:CHUNK] and after[2 * CHUNK :] == data[2 * CHUNK :]


def _bytes_read(conn: Connection) -> int:
    io = Path(f"/proc/{conn.transport.process.pid}/io").read_text()
    return int(next(line.split()[1] for line in io.splitlines() if line.startswith("rchar")))


def test_holes_are_zero_chunks_without_a_read(worker, tmp_path: Path) -> None:
    """A sparse 64 MiB image with three data extents: the scan reads about what is allocated, and
    reports every chunk right (data where written, a hole where nothing is allocated, zero in
    allocated zeros)."""
    conn, events = worker
    path = tmp_path / "sparse.img"
    size = 64 << 20
    with open(path, "wb") as f:
        f.truncate(size)
        for at in (0, 10 << 20, size - CHUNK // 2):
            f.seek(at)
            f.write(b"\x01" * (CHUNK // 2))
        f.seek(20 << 20)
        f.write(bytes(CHUNK))  # allocated zeros: read, and zero all the same
    if os.lseek(os.open(path, os.O_RDONLY), 0, os.SEEK_HOLE) == size:
        pytest.skip("this file system does not report holes")
    conn.call_json(wire.OP_OPEN, {"path": str(path)})
    before = _bytes_read(conn)
    total = size // CHUNK
    rid = conn.post(wire.OP_HASH, {"ranges": [[0, total]], "chunk_size": CHUNK, "size": size, "algo": "xxh128"})
    flags = []
    for frame in _until_done(events, rid):
        first, count, dsize = wire.DIGESTS_HEAD.unpack_from(frame.payload)
        flags += [frame.payload[wire.DIGESTS_HEAD.size + i * (1 + dsize)] for i in range(count)]
    data_chunks = {0, (10 << 20) // CHUNK, total - 1}
    zeros = range((20 << 20) // CHUNK, (20 << 20) // CHUNK + 1)
    assert flags == [
        wire.FLAG_DATA if i in data_chunks else wire.FLAG_ZERO if i in zeros else wire.FLAG_HOLE for i in range(total)
    ]
    assert _bytes_read(conn) - before < 8 * CHUNK  # not the 64 MiB a dense read takes


def test_pair_does_not_read_holes_on_both_sides(worker, tmp_path: Path) -> None:
    """A direct compare of two sparse files reads their data only: 4 GiB of holes on both
    sides are zero chunks without a read (it once read every byte of them)."""
    conn, events = worker
    size = 4 << 30
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    for path in (src, dst):
        with open(path, "wb") as f:
            f.truncate(size)
            f.seek(size // 2)
            f.write(b"the only data")
    conn.call_json(wire.OP_OPEN, {"path": str(dst)})
    conn.call_json(wire.OP_OPEN, {"path": str(src), "peer": True})
    before = _bytes_read(conn)
    chunk = 1 << 20
    rid = conn.post(wire.OP_PAIR, {"ranges": [[0, size // chunk]], "chunk_size": chunk, "size": size,
                                   "sub_block": SUB, "algo": "xxh128"})
    outcomes = []
    for frame in _until_done(events, rid):
        first, count, dsize = wire.DIGESTS_HEAD.unpack_from(frame.payload)
        for n in range(count):
            pos = wire.DIGESTS_HEAD.size + n * (wire.PAIRED_ITEM.size + dsize)
            outcomes.append(wire.PAIRED_ITEM.unpack_from(frame.payload, pos)[0])
    assert len(outcomes) == size // chunk
    assert outcomes.count(wire.PAIR_SAME) == 1 and outcomes.count(wire.PAIR_HOLE) == len(outcomes) - 1
    assert _bytes_read(conn) - before < 16 * chunk  # the data chunk on each side, and the frames



def test_a_lane_reads_ahead_where_its_share_begins(worker, tmp_path: Path) -> None:
    """OPEN's prefetch asks the kernel to read ahead from the start of the lane's share (here
    the second of two), while the other side still connects: that share's first chunks are in
    memory when its scan begins, the first share's are not read."""
    conn, _ = worker
    path = tmp_path / "src.img"
    path.write_bytes(random.Random(5).randbytes(32 << 20))
    if not drop_from_cache(path):
        pytest.skip("this file system keeps the file in memory (tmpfs?)")
    conn.call_json(wire.OP_OPEN, {"path": str(path), "prefetch": 8 << 20, "prefetch_share": [1, 2]})
    deadline = time.monotonic() + 10
    while resident(path, 16 << 20, 8 << 20) < 0.99 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert resident(path, 16 << 20, 8 << 20) >= 0.99
    assert resident(path, 0, 16 << 20) < 0.05


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 700_000), st.integers(1, 600_000), st.integers(0, 1 << 32))
def test_read_into_fills_any_view_through_its_small_buffer(tmp_path: Path, offset: int, length: int, seed: int) -> None:
    """Views larger than one read go through the thread's bounce buffer: the bytes land where
    they belong, and past the end of the file read as zeros."""
    from blocksync_tui.engine.worker import scan

    path = tmp_path / "data"
    data = random.Random(seed).randbytes(500_000)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        view = memoryview(bytearray(b"\xff" * length))
        scan.read_into(fd, view, offset)
        expected = data[offset : offset + length]
        assert bytes(view) == expected + bytes(length - len(expected))
    finally:
        os.close(fd)


class Held(LocalTransport):
    """A worker whose output is held back while `held(ops)` is true of the ops of the frames
    sent to it so far, as a slow link holds answers: a controller that waits for an answer
    before sending what `held` asks for never gets it (after 10 s the stream ends: one line)."""

    def __init__(self, held: Callable[[list[int]], bool]) -> None:
        super().__init__()
        self.held = held
        self.ops: list[int] = []
        self._payload_left = len(bootstrap.payload())
        self._frames = bytearray()
        self._changed = threading.Condition()

    def send(self, data) -> None:
        super().send(data)
        data = bytes(data)
        skip = min(self._payload_left, len(data))  # the worker's code comes first
        self._payload_left -= skip
        self._frames += data[skip:]
        # Whole frames only: enough for the requests these tests watch, which all come before
        # any WRITE (whose payload may travel through shared memory instead).
        while len(self._frames) >= wire.HEADER.size:
            op, _rid, length = wire.unpack_header(bytes(self._frames[: wire.HEADER.size]))
            if len(self._frames) < wire.HEADER.size + length:
                break
            del self._frames[: wire.HEADER.size + length]
            with self._changed:
                self.ops.append(op)
                self._changed.notify_all()

    def recv(self, size: int) -> bytes:
        data = super().recv(size)  # held once it came: a reader is always waiting in recv
        with self._changed:
            if not self._changed.wait_for(lambda: not self.held(self.ops), timeout=10):
                return b""
        return data


def until_sent(op: int) -> Callable[[list[int]], bool]:
    return lambda ops: op not in ops


def test_exit_travels_with_the_last_flush(tmp_path: Path) -> None:
    """Closing costs no round trip of its own: EXIT follows the run's last FLUSH at once."""
    from blocksync_tui.engine.endpoint import Endpoint
    from blocksync_tui.engine.sync import SyncEngine, SyncOptions

    def held(ops: list[int]) -> bool:  # the answer to a FLUSH until an EXIT follows it
        return wire.OP_FLUSH in ops and wire.OP_EXIT not in ops[len(ops) - ops[::-1].index(wire.OP_FLUSH) :]

    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    data = random.Random(5).randbytes(3 << 20)
    src.write_bytes(data)
    dst.write_bytes(bytes(3 << 20))

    def factory(endpoint):
        transport = Held(held if endpoint.path == str(dst) else until_sent(wire.OP_HELLO))
        transport.shares_memory = False  # every frame through the pipe, where Held reads it
        return transport

    options = SyncOptions(chunk_size=1 << 20, direct=False)
    report = SyncEngine(Endpoint.parse(str(src)), Endpoint.parse(str(dst)), options, transport_factory=factory).run()
    assert dst.read_bytes() == data and report.outcome == "synced"


def test_an_answer_right_before_the_worker_exits_is_still_the_answer(tmp_path: Path) -> None:
    """EXIT goes right behind the last FLUSH: the worker answers both and exits at once, so its
    stream may end before the caller has read the FLUSH's answer. That answer stands; only
    requests still unanswered become a lost connection."""
    path = tmp_path / "file"
    path.write_bytes(b"x" * 4096)
    conn = Connection(LocalTransport(), "destination", queue.Queue())
    conn.start(timeout=20)
    try:
        opening = conn.ask(wire.OP_OPEN, {"path": str(path)})
        conn.ask_exit()
        deadline = time.monotonic() + 10
        while conn._lost is None and time.monotonic() < deadline:  # the stream has ended
            time.sleep(0.01)
        assert conn._lost is not None
        assert wire.decode_json(opening(5))["size"] == 4096
    finally:
        conn.close()


def test_hello_travels_with_the_payload_not_after_the_banner() -> None:
    """One round trip less per connection: HELLO is sent right behind the worker's code, so its
    answer comes back with the banner."""
    conn = Connection(Held(until_sent(wire.OP_HELLO)), "source", queue.Queue())
    try:
        assert conn.start(timeout=20)["protocol"] == wire.PROTOCOL_VERSION
    finally:
        conn.close()


def test_the_read_only_open_travels_with_hello(tmp_path: Path) -> None:
    """One more round trip less: each side's read-only OPEN goes right behind HELLO, before the
    banner and HELLO's answer are awaited; the writable OPEN still waits for the checks."""
    from blocksync_tui.engine.endpoint import Endpoint
    from blocksync_tui.engine.sync import SyncEngine, SyncOptions

    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    src.write_bytes(random.Random(3).randbytes(3 << 20))
    dst.write_bytes(bytes(3 << 20))
    held: list[Held] = []

    def factory(endpoint):
        held.append(Held(until_sent(wire.OP_OPEN)))
        return held[-1]

    engine = SyncEngine(Endpoint.parse(str(src)), Endpoint.parse(str(dst)), SyncOptions(chunk_size=1 << 20),
                        transport_factory=factory)
    engine.run()
    assert dst.read_bytes() == src.read_bytes()
    assert len(held) == 2 and all(wire.OP_OPEN in t.ops for t in held)


def test_the_scan_starts_while_the_writable_open_travels(tmp_path: Path) -> None:
    """And one more: the destination's HASH follows its writable OPEN without waiting for the
    answer (the worker answers in order); the transfer checks that answer before any write."""
    from blocksync_tui.engine.endpoint import Endpoint
    from blocksync_tui.engine.sync import SyncEngine, SyncOptions

    def held(ops: list[int]) -> bool:  # from the writable OPEN until a HASH follows it
        opens = [k for k, op in enumerate(ops) if op == wire.OP_OPEN]
        return len(opens) > 1 and wire.OP_HASH not in ops[opens[1] :]

    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    data = random.Random(4).randbytes(3 << 20)
    src.write_bytes(data)
    dst.write_bytes(data[: 2 << 20] + bytes(1 << 20))
    transports: list[Held] = []

    def factory(endpoint):
        transports.append(Held(held if endpoint.path == str(dst) else until_sent(wire.OP_HELLO)))
        return transports[-1]

    options = SyncOptions(chunk_size=1 << 20, direct=False)  # by digests, as to another host
    report = SyncEngine(Endpoint.parse(str(src)), Endpoint.parse(str(dst)), options, transport_factory=factory).run()
    assert dst.read_bytes() == data
    assert (report.method, report.chunks_differing) == ("digests", 1)
