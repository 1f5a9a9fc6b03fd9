"""Golden tests of the wire format: frozen opcodes, frames, pieces, chunk requests."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blocksync_tui.engine import bootstrap
from blocksync_tui.engine.worker import protocol as wire
from blocksync_tui.engine.worker import scan


def test_opcodes_are_frozen() -> None:
    """Renumbering an opcode breaks every deployed controller/worker pair: never do it."""
    assert {name: value for value, name in wire.OP_NAMES.items()} == {
        "HELLO": 1, "OPEN": 2, "HASH": 3, "SUBHASH": 4, "DELTA": 5, "WRITE": 6, "ZERO": 7,
        "FLUSH": 8, "DEVICES": 9, "EXIT": 10, "PAIR": 11, "STREAM": 12, "LAYOUT": 13, "E2FS": 14,
        "LIST": 15, "FSMAP": 16, "RELEASE": 17,
        "REPLY": 64, "DIGESTS": 65, "SUBDIGESTS": 66, "DATA": 67, "WRITTEN": 68, "ERROR": 69,
        "DONE": 70, "PAIRED": 71, "RUNS": 72,
    }


def test_chunk_flags_and_outcomes_are_frozen() -> None:
    """Chunk flags and direct-compare outcomes are wire values too (and kept in digest caches)."""
    flags = (wire.FLAG_DATA, wire.FLAG_ZERO, wire.FLAG_ERROR, wire.FLAG_HOLE)
    outcomes = (wire.PAIR_SAME, wire.PAIR_ZERO, wire.PAIR_DIFFERS, wire.PAIR_ERROR, wire.PAIR_HOLE)
    assert flags == (0, 1, 2, 3) and outcomes == (0, 1, 2, 3, 4)


def test_header_golden_bytes() -> None:
    assert wire.pack_header(wire.OP_HASH, 7, 258) == b"BK\x03\x00\x00\x00\x00\x07\x00\x00\x01\x02"
    assert wire.unpack_header(wire.pack_header(wire.OP_DATA, 1, 5)) == (wire.OP_DATA, 1, 5)


def test_header_rejects_bad_magic_and_oversize_frames() -> None:
    with pytest.raises(ValueError, match="magic"):
        wire.unpack_header(b"XX" + bytes(10))
    with pytest.raises(ValueError, match="exceeds"):
        wire.unpack_header(wire.pack_header(wire.OP_DATA, 1, wire.MAX_PAYLOAD + 1))


@pytest.mark.parametrize("codec", [None, "zlib"])
def test_pieces_round_trip(codec: str | None) -> None:
    text = b"compressible text " * 400
    noise = bytes(range(256)) * 3
    parts = [wire.PIECES_HEAD.pack(9, 1 << 16, 3)]
    parts += wire.encode_piece(0, text, codec)
    parts += wire.encode_piece(8192, bytes(4096), codec)
    parts += wire.encode_piece(20000, noise, codec)
    pieces = wire.decode_pieces(b"".join(parts), 9, 1 << 16)
    assert pieces == [(0, len(text), text), (8192, 4096, None), (20000, len(noise), noise)]
    if codec:
        assert len(b"".join(parts)) < len(text)  # the text piece travelled compressed


def test_piece_outside_its_chunk_is_refused() -> None:
    payload = wire.PIECES_HEAD.pack(0, 100, 1) + b"".join(wire.encode_piece(90, b"x" * 20, None))
    with pytest.raises(ValueError, match="outside"):
        wire.decode_pieces(payload, 0, 100)


def test_pieces_are_checked_against_the_readers_geometry_not_the_frames() -> None:
    """A frame that declares a longer chunk (or another chunk) cannot place a piece outside the
    chunk the reader asked for."""
    piece = b"".join(wire.encode_piece(4096, b"x" * 4096, None))
    longer = wire.PIECES_HEAD.pack(0, 8192, 1) + piece
    with pytest.raises(ValueError, match="expected"):
        wire.decode_pieces(longer, 0, 4096)
    other = wire.PIECES_HEAD.pack(1, 8192, 1) + piece
    with pytest.raises(ValueError, match="expected"):
        wire.decode_pieces(other, 0, 8192)
    assert wire.decode_pieces(longer, 0, 8192) == [(4096, 4096, b"x" * 4096)]


@pytest.mark.parametrize("codec", ["zlib", "zstd", "lz4"])
def test_decompression_is_bounded_by_the_declared_length(codec: str) -> None:
    """A small compressed body that claims 4 KiB but expands to 64 MiB is refused without
    producing more than the 4 KiB it claims."""
    if codec != "zlib":
        pytest.importorskip({"zstd": "zstandard", "lz4": "lz4"}[codec])
    code, compress, _ = wire._codec_functions(codec)
    bomb = compress(bytes(64 << 20))
    assert len(bomb) < (1 << 20)
    payload = wire.PIECES_HEAD.pack(0, 1 << 20, 1) + wire.PIECE_HEAD.pack(0, code, 4096, len(bomb)) + bomb
    with pytest.raises(ValueError):
        wire.decode_pieces(payload, 0, 1 << 20)


CODECS = [name for name in ("zlib", "zstd", "lz4") if name in wire.compressors()]
"""Every codec this interpreter has (the test extras install all three)."""


def _frame_of_chunk_3(codec: str) -> bytes:
    """A valid DATA/WRITE payload of chunk 3 (16 KiB): a raw piece, a zero piece and a piece
    in `codec`."""
    text = b"compressible text, " * 216  # 4,104 bytes
    parts = [wire.PIECES_HEAD.pack(3, 16384, 3)]
    parts += wire.encode_piece(0, bytes(range(256)) * 4, None)
    parts += wire.encode_piece(4096, bytes(2048), None)
    parts += wire.encode_piece(8192, text, codec)
    return b"".join(parts)


@settings(max_examples=300, deadline=None)
@given(codec=st.sampled_from(CODECS), noise=st.binary(max_size=200),
       mutations=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
       cut=st.integers(0, 40))
def test_the_piece_decoder_refuses_or_stays_inside_the_chunk(codec: str, noise: bytes, mutations, cut: int) -> None:
    """Property: whatever bytes arrive (random, or a valid frame with bytes changed, cut short
    or extended), decoding either refuses with ValueError, the one error its callers expect,
    or gives pieces inside the chunk named, in order, each of the length it declares. A
    ZstdError or zlib.error instead failed no chunk: the run ended blaming the destination."""
    valid = bytearray(_frame_of_chunk_3(codec))
    for at, value in mutations:
        valid[at % len(valid)] = value  # anywhere: heads, lengths, bodies
    for payload in (noise, bytes(valid[: len(valid) - cut]), bytes(valid) + noise[:cut]):
        try:
            pieces = wire.decode_pieces(payload, 3, 16384)
        except ValueError:
            continue
        end = 0
        for offset, length, data in pieces:
            assert end <= offset and offset + length <= 16384
            assert data is None or len(data) == length
            end = offset + length


@pytest.mark.parametrize("codec", CODECS)
def test_a_corrupt_body_is_a_value_error_for_every_codec(codec: str) -> None:
    payload = bytearray(_frame_of_chunk_3(codec))
    _offset, code, _raw, start, _end = wire.piece_layout(payload, 3, 16384)[2]
    assert code not in (wire.CODEC_RAW, wire.CODEC_ZERO)
    payload[start : start + 8] = b"\xff" * 8  # its frame header (zstd, lz4) or stream header (zlib)
    with pytest.raises(ValueError, match=f"bad {codec} piece"):
        wire.decode_pieces(bytes(payload), 3, 16384)


def test_chunk_request_round_trip() -> None:
    payload = wire.pack_chunk_request(3, 3 << 20, 1 << 20, 4096, wire.DELTA_SUBDIGESTS, "sha256", "zlib", b"tail")
    assert wire.unpack_chunk_request(payload) == (
        3, 3 << 20, 1 << 20, 4096, wire.DELTA_SUBDIGESTS, "sha256", "zlib", b"tail"
    )


def test_spans() -> None:
    assert scan.spans([False, True, True, False, True]) == [(1, 2), (4, 1)]
    assert scan.spans([]) == []


def test_differing_runs_merge_neighbours_and_shift_by_base() -> None:
    a = bytearray(10 * 4096 + 100)
    b = bytearray(a)
    for at in (5, 4096 + 7, 3 * 4096, 10 * 4096 + 99):  # blocks 0, 1, 3 and the short tail
        b[at] = 1
    assert scan.differing_runs(a, b, 4096) == [(0, 2 * 4096), (3 * 4096, 4 * 4096), (10 * 4096, len(a))]
    assert scan.differing_runs(a, b, 4096, base=1 << 20)[0] == (1 << 20, (1 << 20) + 2 * 4096)
    assert scan.differing_runs(a, bytearray(a), 4096) == []


def test_is_zero_takes_any_buffer() -> None:
    data = bytearray(8192)
    view = memoryview(data)
    assert wire.is_zero(view) and wire.is_zero(bytes(data)) and wire.is_zero(data)
    data[8191] = 1
    assert not wire.is_zero(view[4096:]) and wire.is_zero(view[:4096])


def test_bootstrap_payload_is_the_loader_then_the_compressed_modules() -> None:
    payload = bootstrap.payload()
    length, rest = payload.split(b"\n", 1)
    assert rest[: int(length)] == bootstrap.loader_source()
    length, packed = rest[int(length) :].split(b"\n", 1)
    assert int(length) == len(packed)
    assert zlib.decompress(packed) == bootstrap.bundle()
    assert set(bootstrap.module_sources()) >= {"__init__", "protocol", "serve"}
    # 17.2 KB as one file; 25.7 KB as a package: module docstrings, named constants, and the
    # loader (5 KB, sent uncompressed so that a bad bundle is refused by it in one line);
    # 27.3 KB with the first copy's stream module; 29.0 KB before the partition-table and
    # file-system probe (LAYOUT), which brought it to 32.0 KB; 35.2 KB with the digest cache's
    # identities and the ext2/3/4 owners request (E2FS): a tenth of a packet window per start;
    # 35.9 KB with the directory listing for remote path completion (LIST); 37.7 KB with the
    # kernel's owners of a mounted file system (FSMAP: +2.8 KB for GETFSMAP, FIEMAP and the
    # walk, less 1.0 KB of the loader's docstrings, which travel uncompressed); 38.2 KB with
    # #9's audit (a new file's directory fsynced, loop stacks, writes since prepare refused);
    # 41.3 KB with the shared-memory rings, both ways, for a worker on the controller's host (#10);
    # 43.2 KB with write-behind on the destination and the libc helper it shares with zeroing.
    assert len(payload) < 43_500, "the worker travels on every start: keep it small"


class _CutStream:
    """A transport's recv side that answers in the sizes given (bytes or bytearrays), then EOF."""

    def __init__(self, data: bytes, cuts: list[int]) -> None:
        self.data, self.cuts, self.at = data, cuts, 0

    def recv(self, size: int) -> bytes:
        n = min(size, self.cuts.pop(0) if self.cuts else size, len(self.data) - self.at)
        out = self.data[self.at : self.at + n]
        self.at += n
        return bytearray(out) if n % 2 else out


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=0, max_size=5000), cuts=st.lists(st.integers(1, 1500), max_size=30),
       reads=st.lists(st.integers(0, 900), max_size=30))
def test_the_reader_returns_exact_reads_however_recv_cuts_the_stream(data: bytes, cuts: list[int], reads: list[int]) -> None:
    """Frames come out whole and in order whatever pieces the transport's recv returns; a read
    past the end gives None, and every byte is counted once."""
    from blocksync_tui.engine.connection import _Reader

    reader = _Reader(_CutStream(data, cuts))  # type: ignore[arg-type]
    at = 0
    for size in reads:
        got = reader.read_exact(size)
        if at + size > len(data):
            assert got is None
            return
        assert isinstance(got, bytes) and got == data[at : at + size]
        at += size
    assert reader.bytes_in <= len(data) and reader.pending_size == reader.bytes_in - at
