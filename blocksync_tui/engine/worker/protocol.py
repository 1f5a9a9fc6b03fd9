"""Provides the wire format both ends speak: frames, opcodes, structs, hashes, pieces.

This is the one definition of the protocol. The controller imports this module (and ring.py,
for a worker on its own host) and nothing else of the worker package (so its import stays
cheap: no device probing, no threads); the worker imports it as a sibling on the other end of
the wire, where it runs under Python 3.8+ with the standard library alone.

Framing: a 12-byte header (magic, opcode, flags, request id, payload length) and a payload.
Control payloads are JSON; bulk payloads (digests, data pieces) are packed with `struct`.
Nothing is ever unpickled.
"""

from __future__ import annotations

import errno
import hashlib
import json
import struct
import zlib

PROTOCOL_VERSION = 3
WORKER_VERSION = "0.1.0"
BANNER = b"BLOCKSYNC-WORKER 1\n"
"""Written before the first frame, so stray output from a login shell is detected, not parsed."""

MAGIC = b"BK"
HEADER = struct.Struct("!2sBBII")
FRAME_SHARED = 0x01
"""Header flag: the payload is in the shared ring (worker/ring.py), not on the pipe."""
RELEASE = struct.Struct("!Q")
MAX_CHUNK_SIZE = 64 << 20
MAX_PAYLOAD = MAX_CHUNK_SIZE + (1 << 20)
"""Frames larger than this are refused before their body is read: a whole chunk sent raw, with
the headers of its pieces (16,384 of them at most, 13 bytes each), fits."""
SUB_DIGEST_SIZE = 8
"""Sub-block digests are truncated: a chunk-level digest still guards every chunk."""

# Requests (controller -> worker). Frozen by a test: never renumber.
OP_HELLO = 1
OP_OPEN = 2
OP_HASH = 3
OP_SUBHASH = 4
OP_DELTA = 5
OP_WRITE = 6
OP_ZERO = 7
OP_FLUSH = 8
OP_DEVICES = 9
OP_EXIT = 10
OP_PAIR = 11
OP_STREAM = 12
OP_LAYOUT = 13
OP_E2FS = 14  # dumpe2fs, debugfs icheck/ncheck (worker/e2fs.py)
OP_LIST = 15  # a directory's entries, for path completion (worker/listing.py)
OP_FSMAP = 16  # FS_IOC_GETFSMAP on a mounted file system (worker/fsmap.py)
OP_RELEASE = 17  # shared-memory space given back (worker/ring.py); no reply
# Replies (worker -> controller).
OP_REPLY = 64
OP_DIGESTS = 65
OP_SUBDIGESTS = 66
OP_DATA = 67
OP_WRITTEN = 68
OP_ERROR = 69
OP_DONE = 70
OP_PAIRED = 71
OP_RUNS = 72  # where a chunk of a direct compare differs

OP_NAMES = {v: k[3:] for k, v in list(globals().items()) if k.startswith("OP_") and k != "OP_NAMES"}

# Per-chunk flags in a DIGESTS frame.
FLAG_DATA = 0
FLAG_ZERO = 1
FLAG_ERROR = 2
FLAG_HOLE = 3
"""Zeros, and the chunk lies wholly in a hole of a file: it was not read."""

# Per-chunk outcomes in a PAIRED frame (a direct compare of two files on one host).
PAIR_SAME = 0
PAIR_ZERO = 1
PAIR_DIFFERS = 2
"""Differs; if the request said write, the differing sub-blocks are written already."""
PAIR_ERROR = 3
PAIR_HOLE = 4
"""Both chunks lie wholly in holes: equal, and neither was read."""

# Piece codecs.
CODEC_RAW = 0
CODEC_ZLIB = 1
CODEC_ZERO = 2
CODEC_LZ4 = 3
CODEC_ZSTD = 4

# DELTA modes: what the destination already has.
DELTA_SUBDIGESTS = 0
"""Send the sub-blocks whose digests differ from the ones given."""
DELTA_DEST_ZERO = 1
"""The destination chunk is all zero: send every sub-block that is not."""
DELTA_WHOLE = 2
"""Send the whole chunk."""

DIGESTS_HEAD = struct.Struct("!QIB")  # first chunk, count, digest size
CHUNK_HEAD = struct.Struct("!QI")  # chunk index, chunk length
CHUNK_REQ = struct.Struct("!QQIIB")  # chunk index, offset, length, sub-block size, DELTA mode
PIECE_HEAD = struct.Struct("!IBII")  # offset in chunk, codec, raw length, encoded length
PIECES_HEAD = struct.Struct("!QIH")  # chunk index, chunk length, number of pieces
ZERO_REQ = struct.Struct("!QIQ")  # chunk index, length, offset
WRITE_INDEX = struct.Struct("!Q")  # the chunk index that starts every WRITE and ZERO payload
ACK_ITEM = struct.Struct("!QB")  # chunk index, status (ACK_OK, else errno)
ACK_OK = 0
RUNS_HEAD = struct.Struct("!QH")  # chunk index, number of runs
RUN_ITEM = struct.Struct("!II")  # start, end: bytes of the chunk that differ
MAX_RUNS = 1024  # more: the last goes to the end
PAIRED_ITEM = struct.Struct("!BBI")  # outcome, source FLAG_DATA/ZERO, bytes differing; digest

FATAL_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.ENXIO, errno.EBADF}
)
"""Write errors after which no later write can succeed: the destination stops at the first, and
the controller, seeing one in an acknowledgement, ends the run."""

COMPRESS_MIN_BYTES = 512
"""Pieces shorter than this travel raw: compressing them saves next to nothing."""
COMPRESS_MIN_SAVING = 8
"""A compressed piece is kept only if it saves at least 1/COMPRESS_MIN_SAVING of its bytes:
otherwise decompressing it is wasted work."""
COMPRESS_LEVEL = 1
"""The fastest level of each codec: the link, not the ratio, is what a sync waits for."""


# ---------------------------------------------------------------------------- framing


def pack_header(op: int, rid: int, length: int, flags: int = 0) -> bytes:
    """The 12-byte header of a frame."""
    return HEADER.pack(MAGIC, op, flags, rid, length)


def is_shared(header: bytes) -> bool:
    """Whether a frame's payload waits in the shared ring rather than after its header."""
    return bool(header[3] & FRAME_SHARED)


def release_position(payload: bytes) -> int:
    """The ring position a RELEASE gives space back up to.

    Raises:
        ValueError: the payload is not one.
    """
    if len(payload) != RELEASE.size:
        raise ValueError("a malformed RELEASE of %d bytes" % len(payload))
    return RELEASE.unpack(payload)[0]


def unpack_header(header: bytes) -> "tuple[int, int, int]":
    """Check a frame header and return (opcode, request id, payload length).

    Raises:
        ValueError: bad magic or a payload larger than MAX_PAYLOAD.
    """
    magic, op, _flags, rid, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ValueError("bad frame magic %r (stream corrupted?)" % (bytes(header[: HEADER.size]),))
    if length > MAX_PAYLOAD:
        raise ValueError("frame of %d bytes exceeds the limit of %d" % (length, MAX_PAYLOAD))
    return op, rid, length


def encode_json(obj: object) -> bytes:
    """Encode a control payload."""
    return json.dumps(obj, separators=(",", ":")).encode()


def decode_json(payload: bytes) -> dict:
    """Decode a control payload."""
    return json.loads(bytes(payload).decode())


def usage_text(info: dict) -> str:
    """How an OPEN reply says its device is in use, in words ("mounted on /mnt; held by dm-0")."""
    parts = []
    if info.get("mounted"):
        parts.append("mounted on " + ", ".join(info["mounted"]))
    if info.get("holders"):
        parts.append("held by " + ", ".join(info["holders"]))
    if info.get("swap"):
        parts.append("used as swap")
    return "; ".join(parts)


# ---------------------------------------------------------------------------- hashing


def _xxhash(flavour: str):
    """(incremental constructor, one-shot digest) of an xxhash flavour (PyPI xxhash, optional)."""
    import xxhash

    return getattr(xxhash, flavour), getattr(xxhash, flavour + "_digest")


def _hashlib(name: str, **params):
    """A builder of (incremental constructor, None) for a hashlib algorithm."""

    def build():
        hashlib.new(name, **params)  # this Python may lack it (or forbid it: FIPS and md5)
        return (lambda: hashlib.new(name, **params)), None

    return build


HASHES = {
    "xxh128": lambda: _xxhash("xxh3_128"),
    "xxh64": lambda: _xxhash("xxh3_64"),
    "sha256": _hashlib("sha256"),
    "sha1": _hashlib("sha1"),
    "blake2b": _hashlib("blake2b", digest_size=32),
    "md5": _hashlib("md5"),
}
"""Every hash name either end may ask for, and how to build it: the one table behind
`hash_algorithms`, `new_hash` and `hasher`, so a name one of them offers the others can build."""
CHUNK_HASHES = ("xxh128", "sha256", "sha1", "blake2b", "md5")
"""The names a chunk digest may use, fastest first: xxh64 is too short for chunks and is used
for sub-blocks only (their digests are truncated to SUB_DIGEST_SIZE anyway)."""


def _build_hash(algo: str):
    """(incremental constructor, one-shot digest or None) of `algo`.

    Raises:
        ValueError: an unknown name, or one this Python cannot compute.
    """
    build = HASHES.get(algo)
    if build is None:
        raise ValueError("unknown hash %r" % algo)
    try:
        return build()
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError("hash %r is not available here (%s)" % (algo, exc))


def hash_algorithms() -> "list[str]":
    """The chunk digests this Python can compute, fastest collision-safe ones first."""
    names = []
    for name in CHUNK_HASHES:
        try:
            _build_hash(name)
        except ValueError:
            continue
        names.append(name)
    return names


def new_hash(algo: str):
    """A constructor of incremental hash objects (update, digest) equal to hasher(algo)."""
    return _build_hash(algo)[0]


def hasher(algo: str):
    """A function that returns the digest of a bytes-like object."""
    make, one_shot = _build_hash(algo)
    if one_shot is not None:
        return one_shot

    def digest(data) -> bytes:
        h = make()
        h.update(data)
        return h.digest()

    return digest


def digest_size(algo: str) -> int:
    """The size in bytes of an `algo` digest."""
    return len(new_hash(algo)().digest())


def sub_digests(algo_fn, data, sub_size: int) -> bytes:
    """The truncated digests of each sub-block of a chunk, concatenated."""
    view = memoryview(data)
    d = SUB_DIGEST_SIZE
    return b"".join([algo_fn(view[off : off + sub_size])[:d] for off in range(0, len(view), sub_size)])


def differing_sub_blocks(mine: bytes, theirs: bytes, count: int) -> "list[bool]":
    """Per sub-block, whether two concatenated sub-digest strings differ there."""
    d = SUB_DIGEST_SIZE
    return [mine[i * d : (i + 1) * d] != theirs[i * d : (i + 1) * d] for i in range(count)]


def is_zero(data, _zero: "list[bytes]" = [b""]) -> bool:
    """True if every byte is zero (a compare against a zero block runs at memory speed)."""
    if len(_zero[0]) < len(data):
        _zero[0] = bytes(len(data))
    if not isinstance(data, bytearray):
        # Only bytearray compares with any buffer by memcmp; a memoryview compares item by item,
        # 50x slower.
        data = bytearray(data)
    return data == memoryview(_zero[0])[: len(data)]


# ---------------------------------------------------------------------------- pieces


def compressors() -> "list[str]":
    """The piece codecs this Python can use: zlib always, faster ones if installed."""
    names = []
    try:
        import zstandard  # noqa: F401

        names.append("zstd")
    except ImportError:
        pass
    try:
        import lz4.frame  # noqa: F401

        names.append("lz4")
    except ImportError:
        pass
    names.append("zlib")
    return names


def _codec_functions(name: str):
    """(code, compress, decompress) of a codec; decompress(body, raw_len) never produces more
    than raw_len bytes, whatever the body claims (a hostile 256 KiB body can expand to GiBs)."""
    if name == "zlib":
        return CODEC_ZLIB, lambda d: zlib.compress(d, COMPRESS_LEVEL), _zlib_decompress
    if name == "zstd":
        import zstandard

        return CODEC_ZSTD, zstandard.ZstdCompressor(level=COMPRESS_LEVEL).compress, _zstd_decompress
    if name == "lz4":
        import lz4.frame

        # lz4's level 0 is its fast mode: its level 1 already trades speed for ratio.
        return CODEC_LZ4, lambda d: lz4.frame.compress(d, compression_level=0), _lz4_decompress
    raise ValueError("unknown codec %r" % name)


def compressor(name: str):
    """(code, compress) of a codec the sender uses; compress takes any buffer."""
    code, compress, _ = _codec_functions(name)
    return code, compress


_CODEC_NAMES = {CODEC_ZLIB: "zlib", CODEC_ZSTD: "zstd", CODEC_LZ4: "lz4"}
_ZSTD_SIZE_UNKNOWN = -1
"""What zstandard.frame_content_size says of a frame that does not declare its size."""


def _zlib_decompress(body, raw_len: int) -> bytes:
    d = zlib.decompressobj()
    try:
        data = d.decompress(body, raw_len)
    except zlib.error as exc:
        raise ValueError("bad zlib piece: %s" % exc)
    if d.unconsumed_tail or not d.eof:
        raise ValueError("compressed piece is longer than its declared %d bytes" % raw_len)
    return data


def _zstd_decompress(body, raw_len: int) -> bytes:
    import zstandard

    try:
        declared = zstandard.frame_content_size(body)
        if declared not in (_ZSTD_SIZE_UNKNOWN, raw_len):
            raise ValueError("compressed piece declares %d bytes, expected %d" % (declared, raw_len))
        return zstandard.ZstdDecompressor().decompress(body, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise ValueError("bad zstd piece: %s" % exc)


def _lz4_decompress(body, raw_len: int) -> bytes:
    import lz4.frame

    d = lz4.frame.LZ4FrameDecompressor()
    try:
        data = d.decompress(body, max_length=raw_len)
    except RuntimeError as exc:
        raise ValueError("bad lz4 piece: %s" % exc)
    if not d.eof:
        raise ValueError("compressed piece is longer than its declared %d bytes" % raw_len)
    return data


def encode_piece(offset: int, data, codec: "str | None") -> "list[bytes]":
    """Encode one run of bytes of a chunk: zero marker, compressed if that pays, or raw."""
    raw_len = len(data)
    if is_zero(data):
        return [PIECE_HEAD.pack(offset, CODEC_ZERO, raw_len, 0)]
    if codec and raw_len >= COMPRESS_MIN_BYTES:
        code, compress, _ = _codec_functions(codec)
        packed = compress(bytes(data))
        if len(packed) <= raw_len - raw_len // COMPRESS_MIN_SAVING:
            return [PIECE_HEAD.pack(offset, code, raw_len, len(packed)), packed]
    return [PIECE_HEAD.pack(offset, CODEC_RAW, raw_len, raw_len), bytes(data)]


def piece_layout(payload, index: int, chunk_len: int) -> "list[tuple[int, int, int, int, int]]":
    """Check a DATA/WRITE payload against the chunk it must be and return its pieces as
    (offset in chunk, codec, raw length, body start, body end), without decoding any body.

    Every field is bounded by the reader's own geometry, never by what the payload declares:
    a piece can only land inside chunk `index` of length `chunk_len`.

    Raises:
        ValueError: another chunk, a piece outside the chunk, overlapping or truncated pieces.
    """
    view = memoryview(payload)
    if len(view) < PIECES_HEAD.size:
        raise ValueError("truncated pieces frame")
    got_index, got_len, count = PIECES_HEAD.unpack_from(view, 0)
    if got_index != index or got_len != chunk_len:
        raise ValueError(
            "pieces of chunk %d (%d bytes) where chunk %d (%d bytes) was expected"
            % (got_index, got_len, index, chunk_len)
        )
    pos = PIECES_HEAD.size
    end_of_last = 0
    layout = []
    for _ in range(count):
        if pos + PIECE_HEAD.size > len(view):
            raise ValueError("truncated pieces frame")
        offset, code, raw_len, enc_len = PIECE_HEAD.unpack_from(view, pos)
        pos += PIECE_HEAD.size
        if offset < end_of_last or offset + raw_len > chunk_len or raw_len == 0:
            raise ValueError("piece [%d, +%d) outside chunk %d or out of order" % (offset, raw_len, index))
        if code == CODEC_ZERO:
            enc_len = 0
        elif code == CODEC_RAW and enc_len != raw_len:
            raise ValueError("raw piece of %d bytes declares %d" % (raw_len, enc_len))
        elif code not in _CODEC_NAMES and code != CODEC_RAW:
            raise ValueError("unknown piece codec %d" % code)
        if pos + enc_len > len(view):
            raise ValueError("truncated pieces frame")
        layout.append((offset, code, raw_len, pos, pos + enc_len))
        pos += enc_len
        end_of_last = offset + raw_len
    if pos != len(view):
        raise ValueError("%d stray bytes after the pieces" % (len(view) - pos))
    return layout


def _decompressor(code: int):
    """decompress(body, raw_len) of a codec; ValueError if it is not installed here."""
    try:
        return _codec_functions(_CODEC_NAMES[code])[2]
    except ImportError:
        raise ValueError("%s is not installed here" % _CODEC_NAMES[code])


def decode_pieces(payload, index: int, chunk_len: int) -> "list[tuple[int, int, bytes | None]]":
    """Decode a DATA/WRITE payload of chunk `index` into [(offset, length, bytes)], checked as
    `piece_layout` does; a piece of zeros has bytes None. Decoding is bounded by each piece's
    raw length, which is bounded by the chunk.

    Raises:
        ValueError: the payload is not a well-formed set of pieces of that chunk.
    """
    view = memoryview(payload)
    pieces = []
    for offset, code, raw_len, start, end in piece_layout(view, index, chunk_len):
        if code == CODEC_ZERO:
            pieces.append((offset, raw_len, None))
            continue
        body = view[start:end]
        # A raw piece stays a view of the payload: it is written from there, not copied first.
        data = body if code == CODEC_RAW else _decompressor(code)(body, raw_len)
        if len(data) != raw_len:
            raise ValueError("piece decoded to %d bytes, expected %d" % (len(data), raw_len))
        pieces.append((offset, raw_len, data))
    return pieces


# ---------------------------------------------------------------------------- chunk requests


def pack_chunk_request(
    index: int, offset: int, length: int, sub_size: int, mode: int, algo: str, codec: str, tail=b""
) -> bytes:
    """The payload of a SUBHASH or DELTA request."""
    a, c = algo.encode(), codec.encode()
    return b"".join(
        [CHUNK_REQ.pack(index, offset, length, sub_size, mode), bytes([len(a)]), a, bytes([len(c)]), c, tail]
    )


def unpack_chunk_request(payload) -> "tuple[int, int, int, int, int, str, str, bytes]":
    """Inverse of pack_chunk_request."""
    index, offset, length, sub_size, mode = CHUNK_REQ.unpack_from(payload)
    pos = CHUNK_REQ.size
    algo = bytes(payload[pos + 1 : pos + 1 + payload[pos]]).decode()
    pos += 1 + payload[pos]
    codec = bytes(payload[pos + 1 : pos + 1 + payload[pos]]).decode()
    pos += 1 + payload[pos]
    if not 0 < sub_size <= MAX_CHUNK_SIZE or length > MAX_CHUNK_SIZE:
        raise ValueError("bad chunk request (length %d, sub-block %d)" % (length, sub_size))
    return index, offset, length, sub_size, mode, algo, codec, bytes(payload[pos:])
