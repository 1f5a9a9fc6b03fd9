"""Provides the blocksync worker: the only code that opens files and devices.

This file is shipped as source to the host that holds a file or device (over a pipe locally,
over an SSH channel remotely) and runs there under any Python 3.8 or newer with nothing but the
standard library. It is also imported by the controller, so the frame format, the opcodes and
the piece encoding below are the single source of truth for both ends of the wire.

Framing: a 12-byte header (magic, opcode, flags, request id, payload length) and a payload.
Control payloads are JSON; bulk payloads (digests, data pieces) are packed with `struct`.
Nothing is ever unpickled.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import stat
import struct
import sys
import threading
import time
import zlib

PROTOCOL_VERSION = 2
WORKER_VERSION = "0.1.0"
BANNER = b"BLOCKSYNC-WORKER 1\n"
"""Written before the first frame, so stray output from a login shell is detected, not parsed."""

MAGIC = b"BK"
HEADER = struct.Struct("!2sBBII")
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
# Replies (worker -> controller).
OP_REPLY = 64
OP_DIGESTS = 65
OP_SUBDIGESTS = 66
OP_DATA = 67
OP_WRITTEN = 68
OP_ERROR = 69
OP_DONE = 70
OP_PAIRED = 71

OP_NAMES = {v: k[3:] for k, v in list(globals().items()) if k.startswith("OP_") and k != "OP_NAMES"}

# Per-chunk flags in a DIGESTS frame.
FLAG_DATA = 0
FLAG_ZERO = 1
FLAG_ERROR = 2

# Per-chunk outcomes in a PAIRED frame (a direct compare of two files on one host).
PAIR_SAME = 0
PAIR_ZERO = 1
PAIR_DIFFERS = 2
"""Differs; if the request said write, the differing sub-blocks are written already."""
PAIR_ERROR = 3

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
ACK_ITEM = struct.Struct("!QB")  # chunk index, status (0 ok, else errno)
PAIRED_ITEM = struct.Struct("!BBI")  # outcome, source FLAG_DATA/ZERO, bytes differing; digest

READ_SIZE = 128 << 10
"""Bytes per read request, and the size of the scan's reused buffer."""
SUB_CACHE_BYTES = 16 << 20
"""Sub-block digests the scan keeps, in bytes: the last 8,192 chunks at 1 MiB, 2,048 at 4 MiB."""
FATAL_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.ENXIO, errno.EBADF}
)
"""Write errors after which no later write can succeed: the destination stops at the first."""

_MOUNTINFO = "/proc/self/mountinfo"
_BLKSSZGET = 0x1268
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_INFO64_SIZE = 232


# ---------------------------------------------------------------------------- framing


def pack_header(op: int, rid: int, length: int, flags: int = 0) -> bytes:
    """The 12-byte header of a frame."""
    return HEADER.pack(MAGIC, op, flags, rid, length)


def unpack_header(header: bytes) -> "tuple[int, int, int]":
    """Check a frame header and return (opcode, request id, payload length).

    Raises:
        ValueError: bad magic or a payload larger than MAX_PAYLOAD.
    """
    magic, op, _flags, rid, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ValueError("bad frame magic %r (stream corrupted?)" % (bytes(header[:12]),))
    if length > MAX_PAYLOAD:
        raise ValueError("frame of %d bytes exceeds the limit of %d" % (length, MAX_PAYLOAD))
    return op, rid, length


def encode_json(obj: object) -> bytes:
    """Encode a control payload."""
    return json.dumps(obj, separators=(",", ":")).encode()


def decode_json(payload: bytes) -> dict:
    """Decode a control payload."""
    return json.loads(bytes(payload).decode())


# ---------------------------------------------------------------------------- hashing


def hash_algorithms() -> "list[str]":
    """The chunk digests this Python can compute, fastest collision-safe ones first."""
    names = []
    try:
        import xxhash  # noqa: F401  (optional, faster than anything in hashlib)

        names.append("xxh128")
    except ImportError:
        pass
    for name in ("sha256", "sha1", "blake2b", "md5"):
        if name in hashlib.algorithms_available:
            names.append(name)
    return names


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


def hasher(algo: str):
    """A function that returns the digest of a bytes-like object."""
    if algo == "xxh128":
        import xxhash

        return xxhash.xxh3_128_digest
    if algo == "xxh64":  # sub-block digests only: 8 bytes are all that is kept of any of them
        import xxhash

        return xxhash.xxh3_64_digest
    make = new_hash(algo)

    def digest(data) -> bytes:
        h = make()
        h.update(data)
        return h.digest()

    return digest


def new_hash(algo: str):
    """A constructor of incremental hash objects (update, digest) equal to hasher(algo)."""
    if algo == "xxh128":
        import xxhash

        return xxhash.xxh3_128
    if algo == "blake2b":
        return lambda: hashlib.blake2b(digest_size=32)
    hashlib.new(algo)  # raises ValueError for an unknown name
    return lambda: hashlib.new(algo)


def is_zero(data, _zero: "list[bytes]" = [b""]) -> bool:
    """True if every byte is zero (a compare against a zero block runs at memory speed)."""
    if len(_zero[0]) < len(data):
        _zero[0] = bytes(len(data))
    if not isinstance(data, bytearray):
        # Only bytearray compares with any buffer by memcmp; a memoryview compares item by item,
        # 50x slower.
        data = bytearray(data)
    return data == memoryview(_zero[0])[: len(data)]


def sub_digests(algo_fn, data, sub_size: int) -> bytes:
    """The truncated digests of each sub-block of a chunk, concatenated."""
    view = memoryview(data)
    d = SUB_DIGEST_SIZE
    return b"".join([algo_fn(view[off : off + sub_size])[:d] for off in range(0, len(view), sub_size)])


# ---------------------------------------------------------------------------- pieces


def _codec_functions(name: str):
    """(code, compress, decompress) of a codec; decompress(body, raw_len) never produces more
    than raw_len bytes, whatever the body claims (a hostile 256 KiB body can expand to GiBs)."""
    if name == "zlib":
        return CODEC_ZLIB, lambda d: zlib.compress(d, 1), _zlib_decompress
    if name == "zstd":
        import zstandard

        return CODEC_ZSTD, zstandard.ZstdCompressor(level=1).compress, _zstd_decompress
    if name == "lz4":
        import lz4.frame

        return CODEC_LZ4, lambda d: lz4.frame.compress(d, compression_level=0), _lz4_decompress
    raise ValueError("unknown codec %r" % name)


def _zlib_decompress(body, raw_len: int) -> bytes:
    d = zlib.decompressobj()
    data = d.decompress(body, raw_len)
    if d.unconsumed_tail or not d.eof:
        raise ValueError("compressed piece is longer than its declared %d bytes" % raw_len)
    return data


def _zstd_decompress(body, raw_len: int) -> bytes:
    import zstandard

    declared = zstandard.frame_content_size(body)
    if declared not in (-1, raw_len):
        raise ValueError("compressed piece declares %d bytes, expected %d" % (declared, raw_len))
    try:
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
    if codec and raw_len >= 512:
        code, compress, _ = _codec_functions(codec)
        packed = compress(bytes(data))
        # Keep it only if it saves at least an eighth: otherwise decompression is wasted work.
        if len(packed) <= raw_len - raw_len // 8:
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


_CODEC_NAMES = {CODEC_ZLIB: "zlib", CODEC_ZSTD: "zstd", CODEC_LZ4: "lz4"}


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
        data = bytes(body) if code == CODEC_RAW else _codec_functions(_CODEC_NAMES[code])[2](body, raw_len)
        if len(data) != raw_len:
            raise ValueError("piece decoded to %d bytes, expected %d" % (len(data), raw_len))
        pieces.append((offset, raw_len, data))
    return pieces


def raw_bytes(payload, index: int, chunk_len: int) -> int:
    """The bytes of the chunk that a checked DATA payload carries, decoded (zero pieces included)."""
    return sum(raw_len for _o, _c, raw_len, _s, _e in piece_layout(payload, index, chunk_len))


def differing_sub_blocks(mine: bytes, theirs: bytes, count: int) -> "list[bool]":
    """Per sub-block, whether two concatenated sub-digest strings differ there."""
    d = SUB_DIGEST_SIZE
    return [mine[i * d : (i + 1) * d] != theirs[i * d : (i + 1) * d] for i in range(count)]


def differing_runs(a, b, sub_size: int, base: int = 0) -> "list[tuple[int, int]]":
    """Byte ranges (start, end), shifted by `base`, of the sub-blocks where two equal-length
    buffers differ; adjacent ones merged. Give bytes or bytearrays: memoryviews compare slowly."""
    runs: "list[tuple[int, int]]" = []
    length = len(a)
    for start in range(0, length, sub_size):
        end = min(length, start + sub_size)
        if a[start:end] != b[start:end]:
            if runs and runs[-1][1] == base + start:
                runs[-1] = (runs[-1][0], base + end)
            else:
                runs.append((base + start, base + end))
    return runs


def spans(flags: "list[bool]") -> "list[tuple[int, int]]":
    """Runs (first, count) of consecutive true flags."""
    runs: "list[tuple[int, int]]" = []
    for i, flag in enumerate(flags):
        if flag:
            if runs and runs[-1][0] + runs[-1][1] == i:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((i, 1))
    return runs


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


# ---------------------------------------------------------------------------- devices


def _read_text(path: str, default: str = "") -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _mounts_by_devnum() -> "dict[str, list[str]]":
    """Mount points per "major:minor", from this host's mount table."""
    mounts: "dict[str, list[str]]" = {}
    try:
        with open(_MOUNTINFO) as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4:
                    mounts.setdefault(fields[2], []).append(
                        fields[4].encode().decode("unicode_escape")
                    )
    except OSError:
        pass
    return mounts


def _swaps() -> "set[str]":
    names = set()
    try:
        with open("/proc/swaps") as f:
            for line in list(f)[1:]:
                names.add(os.path.realpath(line.split()[0]))
    except OSError:
        pass
    return names


def _sys_block_dir(rdev: int) -> str:
    return "/sys/dev/block/%d:%d" % (os.major(rdev), os.minor(rdev))


def device_usage(rdev: int, path: str = "") -> "dict[str, list[str]]":
    """Who uses a block device or any of its partitions: mount points, holders, swap."""
    base = os.path.realpath(_sys_block_dir(rdev))
    nums = ["%d:%d" % (os.major(rdev), os.minor(rdev))]
    holders = []
    dirs = [base]
    try:
        for entry in sorted(os.listdir(base)):
            if os.path.exists(os.path.join(base, entry, "partition")):
                dirs.append(os.path.join(base, entry))
                nums.append(_read_text(os.path.join(base, entry, "dev")))
    except OSError:
        pass
    for d in dirs:
        try:
            holders.extend(sorted(os.listdir(os.path.join(d, "holders"))))
        except OSError:
            pass
    table = _mounts_by_devnum()
    mounted = [m for num in nums for m in table.get(num, [])]
    swaps = _swaps()
    names = ["/dev/" + os.path.basename(d) for d in dirs]
    if path:
        names.append(os.path.realpath(path))
    swap = [n for n in names if n in swaps]
    return {"mounted": mounted, "holders": holders, "swap": swap}


def _loop_backing_identities(name: str) -> "list[tuple[int, int]]":
    """(st_dev, st_ino) of the file behind loop device `name`: from the kernel itself
    (LOOP_GET_STATUS64), and from the path sysfs shows, which a rename or unlink makes stale."""
    found = []
    try:
        import fcntl

        fd = os.open("/dev/" + name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            info = fcntl.ioctl(fd, _LOOP_GET_STATUS64, bytes(_LOOP_INFO64_SIZE))
        finally:
            os.close(fd)
        lo_device, lo_inode = struct.unpack_from("=QQ", info)
        found.append((lo_device, lo_inode))
    except (OSError, ImportError):
        pass
    backing = _read_text("/sys/block/%s/loop/backing_file" % name)
    if backing:
        try:
            st = os.stat(backing)
            found.append((st.st_dev, st.st_ino))
        except OSError:
            pass
    return found


def loop_devices_backed_by(st: os.stat_result) -> "list[str]":
    """Loop devices whose backing file is the file `st` describes, by device and inode: a hard
    link or another path to the same image is caught too (writing under a loop device corrupts
    its users)."""
    mine = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    found = []
    try:
        names = sorted(os.listdir("/sys/block"))
    except OSError:
        return found
    for name in names:
        if not name.startswith("loop") or not os.path.exists("/sys/block/%s/loop" % name):
            continue
        for dev, ino in _loop_backing_identities(name):
            if (os.major(dev), os.minor(dev), ino) == mine:
                found.append("/dev/" + name)
                break
    return found


def device_stack(rdev: int) -> "list[str]":
    """The "major:minor" numbers of every block device that shares storage with `rdev`: what it
    is built on (its whole disk if it is a partition, the slaves of a device-mapper or RAID
    device, and theirs) and what is built on it (its partitions, its holders, and theirs).

    Writing one of them while reading another reads data that the writes change: /dev/sdb1 to
    /dev/sdb, or an LV to the disk under it. Sibling partitions are not related.
    """
    start = os.path.realpath(_sys_block_dir(rdev))

    def below(d: str) -> "list[str]":
        out = [os.path.realpath(os.path.join(d, "slaves", e)) for e in _listdir(os.path.join(d, "slaves"))]
        if os.path.exists(os.path.join(d, "partition")):
            out.append(os.path.dirname(d))
        return out

    def above(d: str) -> "list[str]":
        out = [os.path.realpath(os.path.join(d, "holders", e)) for e in _listdir(os.path.join(d, "holders"))]
        out.extend(os.path.join(d, e) for e in _listdir(d) if os.path.exists(os.path.join(d, e, "partition")))
        return out

    related: "set[str]" = set()
    for step in (below, above):
        todo, seen = [start], {start}
        while todo and len(seen) < 4096:
            for nxt in step(todo.pop()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        related |= seen - {start}
    return sorted(num for num in (_read_text(os.path.join(d, "dev")) for d in related) if num)


def _listdir(path: str) -> "list[str]":
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def list_devices() -> "list[dict]":
    """The block devices of this host: name, size, model, mount points, read-only, partitions."""
    table = _mounts_by_devnum()
    devices = []
    try:
        names = sorted(os.listdir("/sys/block"))
    except OSError:
        return devices
    for name in names:
        base = "/sys/block/" + name
        size = int(_read_text(base + "/size", "0") or 0) * 512
        if name.startswith(("ram", "zram")) or (name.startswith("loop") and size == 0):
            continue
        parts = []
        for entry in sorted(os.listdir(base)):
            if os.path.exists(os.path.join(base, entry, "partition")):
                num = _read_text(os.path.join(base, entry, "dev"))
                parts.append(
                    {
                        "name": entry,
                        "path": "/dev/" + entry,
                        "size": int(_read_text(os.path.join(base, entry, "size"), "0")) * 512,
                        "mounted": table.get(num, []),
                    }
                )
        num = _read_text(base + "/dev")
        model = " ".join(
            x for x in (_read_text(base + "/device/vendor"), _read_text(base + "/device/model")) if x
        )
        if name.startswith("loop"):
            model = "loop: " + _read_text(base + "/loop/backing_file")
        devices.append(
            {
                "name": name,
                "path": "/dev/" + name,
                "size": size,
                "model": model,
                "readonly": _read_text(base + "/ro") == "1",
                "removable": _read_text(base + "/removable") == "1",
                "mounted": table.get(num, []),
                "holders": sorted(os.listdir(base + "/holders"))
                if os.path.isdir(base + "/holders")
                else [],
                "partitions": parts,
            }
        )
    return devices


# ---------------------------------------------------------------------------- the worker


class _NoHash:
    """Stands in for a hash object where no digest is wanted: the entry carries zeros."""

    def update(self, data) -> None:
        pass

    def digest(self) -> bytes:
        return b""


class _HoleFinder:
    """Tells, for a file scanned front to back, whether a range lies wholly in a hole, from
    SEEK_DATA and SEEK_HOLE and without reading it (a 1 GiB image holding 16 MiB of data is
    scanned for the price of its data). Two lseeks per data extent crossed, not per chunk: what
    they say of the file from the scan's position on stays true, because nothing is written
    ahead of the scan. Block devices and file systems without SEEK_DATA always answer no."""

    def __init__(self, fd: int, enabled: bool) -> None:
        self.fd = fd
        self.enabled = enabled and hasattr(os, "SEEK_DATA")
        self.checked_from = -1
        self.data_at = -1
        """No data in [checked_from, data_at)..."""
        self.hole_at = -1
        """...and data all through [data_at, hole_at)."""

    def covers(self, offset: int, length: int) -> bool:
        if not self.enabled:
            return False
        if not self.checked_from <= offset < self.hole_at:
            try:
                self.data_at = os.lseek(self.fd, offset, os.SEEK_DATA)
                self.hole_at = os.lseek(self.fd, self.data_at, os.SEEK_HOLE)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no data at all past offset
                    self.enabled = False
                    return False
                self.data_at = self.hole_at = 1 << 63
            self.checked_from = offset
        return self.data_at >= offset + length


class WorkerError(Exception):
    """An error to report to the controller as one line."""


def _os_error_text(exc: OSError, path: str) -> str:
    return "%s: %s" % (path, exc.strerror or exc)


class Worker:
    """Serves requests from the controller on stdin, answers on stdout."""

    def __init__(self, inp, out_fd: int, source: bytes) -> None:
        self.inp = inp
        self.out_fd = out_fd
        self.source_sha = hashlib.sha256(source).hexdigest()
        self.out_lock = threading.Lock()
        self.fd = -1
        self.scan_fd = -1
        """A second descriptor of the same file for the sequential scan alone: Linux keeps the
        readahead state per open file, and the random reads and writes of differing chunks on a
        shared one cut a cold scan to a third of its speed (measured)."""
        self.path = ""
        self.size = 0
        self.peer_fd = -1
        """The source, opened read-only by the destination's worker when both are on this host
        (a PAIR compares the two directly: no digests, no data through the controller)."""
        self.peer_scan_fd = -1
        self.peer_path = ""
        self.is_block = False
        self.writable = False
        self.chunk_size = 0
        self.sync_size = 0
        """The geometry the controller opened the destination with: every write is checked
        against it, never against lengths a frame declares."""
        self.bytes_written = 0
        self.write_failure: "tuple[int, str] | None" = None
        """(errno, text) of the first fatal write error: later writes are dropped, unreported."""
        self.out_broken = False
        # Long scans, short service requests and writes each get their own thread, in order,
        # so a DELTA for an early chunk is not stuck behind the whole scan.
        self.scan_queue: "queue.Queue" = queue.Queue()
        self.service_queue: "queue.Queue" = queue.Queue()
        # Unbounded: the controller bounds the data in flight, and a reader that never blocks
        # on it keeps answering requests while the disk is slow.
        self.write_queue: "queue.Queue" = queue.Queue()
        self.sub_cache: "dict[int, tuple]" = {}
        """Sub-block digests computed by the scan, by chunk offset, with the (length, sub-block
        size, algorithm) they were taken with: SUBHASH and DELTA then need no second read of the
        chunk. Bounded; dropped when written."""
        self.sub_cache_bytes = 0
        self.cache_lock = threading.Lock()
        self.acks: "list[bytes]" = []
        self.last_ack = time.monotonic()

    # -- output

    def send(self, op: int, rid: int, payload=b"") -> None:
        """Send one frame; frames from different threads never interleave. Once the controller
        has gone, frames are dropped: the writer must still finish and flush what it got."""
        with self.out_lock:
            if self.out_broken:
                return
            try:
                self._write_all(pack_header(op, rid, len(payload)))
                if payload:
                    self._write_all(payload)
            except OSError:
                self.out_broken = True

    def _write_all(self, data) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.out_fd, view)
            view = view[n:]

    def reply(self, rid: int, obj: dict) -> None:
        """Answer a control request."""
        self.send(OP_REPLY, rid, encode_json(obj))

    def error(self, rid: int, message: str, chunk: int = -1, code: int = 0, **extra) -> None:
        """Report an error for one request (and chunk)."""
        body = {"message": message, "chunk": chunk, "errno": code}
        body.update(extra)
        self.send(OP_ERROR, rid, encode_json(body))

    # -- main loop

    def serve(self) -> None:
        """Read frames until EXIT or end of input, then stop every thread."""
        self._write_all(BANNER)
        threads = [
            threading.Thread(target=self._drain, args=(self.scan_queue,), daemon=True),
            # Two service threads: hashing and os.pread release the GIL, so DELTA work overlaps.
            threading.Thread(target=self._drain, args=(self.service_queue,), daemon=True),
            threading.Thread(target=self._drain, args=(self.service_queue,), daemon=True),
            threading.Thread(target=self._writer, daemon=True),
        ]
        for t in threads:
            t.start()
        while True:
            header = self.inp.read(HEADER.size)
            if len(header) < HEADER.size:
                # The controller went away: the writes it sent are still applied and flushed,
                # so what it last saw acknowledged is on disk.
                self._finish_writes()
                break
            op, rid, length = unpack_header(header)
            payload = self.inp.read(length) if length else b""
            if len(payload) < length:
                self._finish_writes()
                break
            if op == OP_EXIT:
                self._finish_writes()
                self.send(OP_DONE, rid)
                break
            try:
                self.dispatch(op, rid, payload)
            except WorkerError as exc:
                self.error(rid, str(exc))
            except Exception as exc:  # report, never die silently: the controller shows it
                self.error(rid, "%s: %s" % (type(exc).__name__, exc))

    def dispatch(self, op: int, rid: int, payload: bytes) -> None:
        """Route one request to its handler or its queue."""
        if op == OP_HELLO:
            self.reply(rid, self.hello())
        elif op == OP_OPEN:
            req = decode_json(payload)
            self.reply(rid, self.open(req))
            if req.get("prefetch") and not req.get("peer"):
                self._prefetch(int(req["prefetch"]))
        elif op == OP_DEVICES:
            self.reply(rid, {"devices": list_devices()})
        elif op == OP_HASH:
            self.scan_queue.put((self.hash_chunks, rid, decode_json(payload)))
        elif op == OP_PAIR:
            self.scan_queue.put((self.pair, rid, decode_json(payload)))
        elif op in (OP_SUBHASH, OP_DELTA):
            handler = self.subhash if op == OP_SUBHASH else self.delta
            self.service_queue.put((handler, rid, payload))
        elif op in (OP_WRITE, OP_ZERO, OP_FLUSH):
            self.write_queue.put((op, rid, payload))
        else:
            raise WorkerError("unknown request %d" % op)

    def _drain(self, q: "queue.Queue") -> None:
        while True:
            handler, rid, arg = q.get()
            try:
                handler(rid, arg)
            except WorkerError as exc:
                self.error(rid, str(exc))
            except Exception as exc:
                self.error(rid, "%s: %s" % (type(exc).__name__, exc))

    # -- requests

    def hello(self) -> dict:
        """Who we are and what we can do."""
        return {
            "protocol": PROTOCOL_VERSION,
            "version": WORKER_VERSION,
            "python": "%d.%d.%d" % sys.version_info[:3],
            "sha256": self.source_sha,
            "algorithms": hash_algorithms(),
            "compressors": compressors(),
            "uid": os.getuid(),
            "pid": os.getpid(),
            "host": os.uname()[1],
            # Unique per boot of a machine: tells that two endpoints reached differently (a path,
            # ssh to localhost) are on one machine, so the same-file check applies.
            "boot_id": _read_text("/proc/sys/kernel/random/boot_id"),
        }

    def open(self, req: dict) -> dict:
        """Open the file or device, then check what was opened: read-only unless `write`.

        The path is resolved once (a symlink the user named, like /dev/disk/by-id/..., is
        followed here) and the result opened with O_NOFOLLOW and O_NONBLOCK (a FIFO never
        blocks us), so every check below is on the descriptor itself, never on a path that
        may have changed since. With `expect` (what an earlier open saw), the object opened
        must be that very one. `create` makes a file that must not exist yet (O_EXCL).
        """
        path = req["path"]
        peer = bool(req.get("peer"))
        write = bool(req.get("write")) and not peer  # the peer is a source: read-only, always
        real = os.path.realpath(path)
        fd = self._open_fd(path, real, write, bool(req.get("create")))
        if fd < 0:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise WorkerError("%s: directory %s does not exist" % (path, parent))
            return {"exists": False, "path": path}
        try:
            info = self._check_opened(fd, path, real, write, req.get("expect"))
            if write:
                self.chunk_size = int(req.get("chunk_size") or 0)
                if info["kind"] == "file" and req.get("truncate") is not None:
                    os.ftruncate(fd, int(req["truncate"]))
                    info["size"] = int(req["truncate"])
                self.sync_size = int(req.get("sync_size", info["size"]))
                if not 0 <= self.sync_size <= info["size"]:
                    raise WorkerError("%s is too small: %d bytes, the source has %d" % (path, info["size"], self.sync_size))
        except BaseException:
            os.close(fd)
            raise
        try:  # the same file, never a file that replaced it at that path meanwhile
            scan_fd = os.open("/proc/self/fd/%d" % fd, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            scan_fd = fd
        try:  # the scan reads front to back: ask for a larger readahead
            os.posix_fadvise(scan_fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (OSError, AttributeError):
            pass
        if peer:
            self._close_peer()
            self.peer_fd, self.peer_scan_fd, self.peer_path = fd, scan_fd, path
        else:
            for old in {self.fd, self.scan_fd} - {-1}:
                os.close(old)
            self.fd, self.scan_fd, self.path = fd, scan_fd, path
            self.writable = write
            self.is_block, self.size = info["kind"] == "block", info["size"]
        return info

    @staticmethod
    def _open_fd(path: str, real: str, write: bool, create: bool) -> int:
        """The descriptor of `real`, or -1 if it does not exist (and may not be created)."""
        cloexec = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        # Without O_CREAT, Linux takes O_EXCL on a block device as "claim it": the open fails
        # with EBUSY if anything mounted or claimed it. On a regular file it has no effect.
        flags = (os.O_RDWR | os.O_EXCL) if write else os.O_RDONLY
        try:
            if write and create:
                # Absent when it was checked: it must still be absent, or what it holds now was
                # never compared. O_CREAT|O_EXCL makes that atomic.
                return os.open(real, os.O_RDWR | os.O_CREAT | os.O_EXCL | cloexec, 0o644)
            return os.open(real, flags | os.O_NONBLOCK | cloexec)
        except FileNotFoundError:
            if write:
                raise WorkerError("%s disappeared after it was checked: run again" % path)
            return -1
        except FileExistsError:
            raise WorkerError("%s appeared after it was checked: run again to compare it" % path)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise WorkerError("%s is busy (mounted or claimed): refusing to write to it" % path)
            if exc.errno == errno.ELOOP:
                raise WorkerError("%s: changed into a symbolic link while it was opened" % path)
            if exc.errno == errno.EISDIR:
                raise WorkerError("%s is a directory, not a file or block device" % path)
            raise WorkerError(_os_error_text(exc, path))

    def _check_opened(self, fd: int, path: str, real: str, write: bool, expect) -> dict:
        """What was opened, checked on its descriptor: kind, size, use, identity."""
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise WorkerError("%s is a directory, not a file or block device" % path)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise WorkerError("%s is neither a regular file nor a block device" % path)
        try:
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except (OSError, ImportError):
            pass
        is_block = stat.S_ISBLK(st.st_mode)
        info = {
            "exists": True,
            "path": path,
            "realpath": real,
            "kind": "block" if is_block else "file",
            "size": os.lseek(fd, 0, os.SEEK_END),
            "identity": [st.st_dev, st.st_ino, st.st_rdev],
            "mtime_ns": st.st_mtime_ns,
            "sector_size": self._sector_size(fd) if is_block else 512,
            "mounted": [],
            "holders": [],
            "swap": [],
            "readonly": False,
            "devnum": "",
            "stack": [],
            "backing": None,
        }
        if is_block:
            info.update(device_usage(st.st_rdev, real))
            info["readonly"] = _read_text(_sys_block_dir(st.st_rdev) + "/ro") == "1"
            info["devnum"] = "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
            info["stack"] = device_stack(st.st_rdev)
            name = os.path.basename(os.path.realpath(_sys_block_dir(st.st_rdev)))
            if name.startswith("loop"):
                info["backing"] = [list(x) for x in _loop_backing_identities(name)]
        else:
            info["holders"] = loop_devices_backed_by(st)
        in_use = info["mounted"] or info["holders"] or info["swap"]
        if write and in_use:
            raise WorkerError("%s is in use (%s): refusing to write to it" % (path, usage_text(info)))
        if expect is not None and not _same_as_expected(info, expect):
            raise WorkerError("%s changed after it was checked (another file or device, or resized): run again" % path)
        return info

    def _prefetch(self, length: int) -> None:
        """Ask the kernel to start reading the first `length` bytes now, in the background: the
        scan then finds them in memory. Meant for while the other side is still connecting."""
        try:
            os.posix_fadvise(self.scan_fd, 0, min(length, self.size), os.POSIX_FADV_WILLNEED)
        except (OSError, AttributeError):
            pass

    def _close_peer(self) -> None:
        for old in {self.peer_fd, self.peer_scan_fd} - {-1}:
            os.close(old)
        self.peer_fd = self.peer_scan_fd = -1

    @staticmethod
    def _sector_size(fd: int) -> int:
        try:
            import fcntl

            buf = fcntl.ioctl(fd, _BLKSSZGET, b"\0\0\0\0")
            return struct.unpack("i", buf)[0]
        except (OSError, ImportError):
            return 512

    def _read(self, offset: int, length: int, fd: int = -1) -> bytearray:
        """Read `length` bytes; past the end of the file reads as zeros.

        Read in READ_SIZE requests, like `cat`: on the virtual disks measured here, 1 MiB requests
        from two files at once were erratic (0.8-2.3 s per GiB pair) where 128 KiB ones were not.
        """
        buf = bytearray(length)
        view = memoryview(buf)
        pos = 0
        while pos < length:
            n = os.preadv(self.fd if fd < 0 else fd, [view[pos : pos + READ_SIZE]], offset + pos)
            if n == 0:
                break  # end of file: the rest stays zero
            pos += n
        return buf

    def _need_open(self) -> None:
        if self.fd < 0:
            raise WorkerError("no file is open")

    def _pieces(self, fd: int, offset: int, length: int, buf: bytearray, path: str = ""):
        """Yield the successive pieces of [offset, offset + length), read in order into `buf`.

        The buffer is reused: a piece that stays in the CPU cache costs a third of the kernel
        time of a read into a fresh chunk-sized buffer (measured: 0.4 against 1.35 s per GiB
        pair). A full piece is `buf` itself, a short last one a copy; past the end of the file
        reads as zeros. Pieces are bytearrays, never memoryviews, which compare slowly.
        """
        view = memoryview(buf)
        size = len(buf)
        end = offset + length
        while offset < end:
            n = min(size, end - offset)
            got = 0
            while got < n:
                try:
                    k = os.preadv(fd, [view[got:n]], offset + got)
                except OSError as exc:  # say which file: a direct compare reads two
                    raise OSError(exc.errno, exc.strerror, path or self.path) from None
                if k == 0:
                    view[got:n] = bytes(n - got)
                    break
                got += k
            yield buf if n == size else bytearray(view[:n])
            offset += n

    def hash_chunks(self, rid: int, req: dict) -> None:
        """Stream the digests of chunk ranges, in order, in batches; then DONE.

        One thread reads strictly in order (interleaved reads defeat the kernel's readahead:
        2.5x slower from a cold disk, measured) and hashes each piece while it is in the CPU
        cache. With `sub_block`, it also keeps the sub-block digests of each data chunk.
        """
        self._need_open()
        chunk_size, size, sub = _geometry(req)
        make_hash = new_hash(req["algo"])
        sub_algo = req.get("sub_algo", "")
        sub_fn = hasher(sub_algo) if sub else None
        if req.get("drop_cache"):
            self._drop_cache()
        dsize = len(make_hash().digest())
        entry = struct.Struct("!B%ds" % dsize)
        buf = bytearray(min(READ_SIZE, chunk_size))
        d = SUB_DIGEST_SIZE

        holes = _HoleFinder(self.scan_fd, not self.is_block)

        def scan(index: int) -> bytes:
            offset = index * chunk_size
            length = min(chunk_size, size - offset)
            if holes.covers(offset, length):
                return entry.pack(FLAG_ZERO, b"")  # nothing allocated there: zeros, unread
            h = make_hash()
            zero = True
            subs: "list[bytes]" = []
            try:
                for piece in self._pieces(self.scan_fd, offset, length, buf):
                    h.update(piece)
                    zero = zero and is_zero(piece)
                    if sub_fn:
                        view = memoryview(piece)
                        subs.extend([sub_fn(view[o : o + sub])[:d] for o in range(0, len(piece), sub)])
            except OSError as exc:
                return entry.pack(FLAG_ERROR, (exc.strerror or "").encode()[:dsize])
            if zero:
                return entry.pack(FLAG_ZERO, b"")
            if sub_fn:
                self._cache_subs(offset, (length, sub, sub_algo), b"".join(subs))
            return entry.pack(FLAG_DATA, h.digest())

        for first, count in req["ranges"]:
            self._stream(rid, OP_DIGESTS, first, map(scan, range(first, first + count)), dsize, chunk_size)
        self.send(OP_DONE, rid)

    def _stream(self, rid: int, op: int, first: int, entries, dsize: int, chunk_size: int) -> None:
        """Send per-chunk entries, from chunk `first` on, in batches: at most 8 MiB of chunks
        each, and at least every 50 ms, so a UI sees progress even on a slow disk."""
        batch_chunks = max(1, min(1024, (8 << 20) // chunk_size))
        batch: "list[bytes]" = []
        last_send = time.monotonic()
        for item in entries:
            batch.append(item)
            now = time.monotonic()
            if len(batch) >= batch_chunks or now - last_send > 0.05:
                self.send(op, rid, DIGESTS_HEAD.pack(first, len(batch), dsize) + b"".join(batch))
                first += len(batch)
                batch = []
                last_send = now
        if batch:
            self.send(op, rid, DIGESTS_HEAD.pack(first, len(batch), dsize) + b"".join(batch))

    def _cache_subs(self, offset: int, kind: tuple, digests: bytes) -> None:
        with self.cache_lock:
            old = self.sub_cache.pop(offset, None)  # re-inserted as the newest
            self.sub_cache_bytes -= len(old[1]) if old else 0
            self.sub_cache[offset] = (kind, digests)
            self.sub_cache_bytes += len(digests)
            while self.sub_cache_bytes > SUB_CACHE_BYTES:
                oldest = self.sub_cache.pop(next(iter(self.sub_cache)))  # dicts keep order
                self.sub_cache_bytes -= len(oldest[1])

    def _cached_subs(self, offset: int, length: int, sub: int, algo: str) -> "bytes | None":
        with self.cache_lock:
            kept = self.sub_cache.get(offset)
        return kept[1] if kept is not None and kept[0] == (length, sub, algo) else None

    def _forget_subs(self, offset: int) -> None:
        """A write at `offset` makes the cached digests of that chunk stale."""
        with self.cache_lock:
            old = self.sub_cache.pop(offset, None)
            self.sub_cache_bytes -= len(old[1]) if old else 0

    def pair(self, rid: int, req: dict) -> None:
        """Compare the peer (the source) with this file chunk by chunk, in order; with `write`,
        copy each chunk's differing sub-blocks over at once. Streams PAIRED batches, then DONE.

        One thread reads both files piece by piece into two small buffers and compares the
        bytes: exact, and cheaper than hashing them. With `digests` (for --verify), a differing
        chunk's entry carries the digest of the source bytes it was given.
        """
        self._need_open()
        if self.peer_fd < 0:
            raise WorkerError("no source is open for a direct compare")
        write = bool(req.get("write"))
        chunk_size, size, sub = _geometry(req)
        if write and not self.writable:
            raise WorkerError("the destination was not opened for writing")
        if write and (chunk_size != self.chunk_size or size != self.sync_size):
            raise WorkerError("direct compare with a geometry the destination was not opened with")
        make_hash = new_hash(req["algo"]) if req.get("digests") else _NoHash
        dsize = len(new_hash(req["algo"])().digest())
        piece_size = min(READ_SIZE, chunk_size)
        bufs = (bytearray(piece_size), bytearray(piece_size))

        def compare(index: int) -> bytes:
            offset = index * chunk_size
            length = min(chunk_size, size - offset)
            return self._pair_chunk(rid, index, offset, length, bufs, sub, write, make_hash, dsize)

        for first, count in req["ranges"]:
            self._stream(rid, OP_PAIRED, first, map(compare, range(first, first + count)), dsize, chunk_size)
        self.send(OP_DONE, rid)

    def _pair_chunk(self, rid, index, offset, length, bufs, sub, write, make_hash, dsize) -> bytes:
        """Compare (and with `write`, fix) one chunk; return its PAIRED entry."""
        h = make_hash()
        zero = True
        runs: "list[tuple[int, int]]" = []
        sources = self._pieces(self.peer_scan_fd, offset, length, bufs[0], self.peer_path)
        destinations = self._pieces(self.scan_fd, offset, length, bufs[1], self.path)
        pos = 0
        try:
            for src, dst in zip(sources, destinations):
                h.update(src)
                zero = zero and is_zero(src)
                if src != dst:
                    piece_runs = differing_runs(src, dst, sub, pos)
                    if write:
                        for start, end in piece_runs:
                            self._pwrite_all(memoryview(src)[start - pos : end - pos], offset + start)
                    runs.extend(piece_runs)
                pos += len(src)
        except OSError as exc:
            self.error(rid, _os_error_text(exc, exc.filename or self.path), chunk=index, code=exc.errno or 0)
            return PAIRED_ITEM.pack(PAIR_ERROR, FLAG_ERROR, 0) + bytes(dsize)
        flag = FLAG_ZERO if zero else FLAG_DATA
        if not runs:
            return PAIRED_ITEM.pack(PAIR_ZERO if zero else PAIR_SAME, flag, 0) + bytes(dsize)
        if write:
            self._forget_subs(offset)
        differing = sum(end - start for start, end in runs)
        return PAIRED_ITEM.pack(PAIR_DIFFERS, flag, differing) + (b"" if zero else h.digest()).ljust(dsize, b"\0")

    def _drop_cache(self) -> None:
        """Write back and forget cached pages, so a verify reads the disk, not memory."""
        try:
            os.fsync(self.fd)
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except (OSError, AttributeError):
            pass

    def subhash(self, rid: int, payload: bytes) -> None:
        """Digests of the sub-blocks of one chunk."""
        self._need_open()
        index, offset, length, sub_size, _mode, algo, _codec, _ = unpack_chunk_request(payload)
        digests = self._cached_subs(offset, length, sub_size, algo)
        if digests is None:
            digests = sub_digests(hasher(algo), self._read(offset, length), sub_size)
        self.send(OP_SUBDIGESTS, rid, CHUNK_HEAD.pack(index, length) + digests)

    def delta(self, rid: int, payload: bytes) -> None:
        """The pieces of one chunk that the destination lacks, encoded for the wire."""
        self._need_open()
        index, offset, length, sub_size, mode, algo, codec, theirs = unpack_chunk_request(payload)
        blocks = -(-length // sub_size)
        mine = self._cached_subs(offset, length, sub_size, algo) if mode == DELTA_SUBDIGESTS else None
        if mine is not None:  # the scan kept them: read only the differing sub-blocks
            runs = spans(differing_sub_blocks(mine, theirs, blocks))

            def piece(start: int, end: int):
                return self._read(offset + start, end - start)

        else:
            view = memoryview(self._read(offset, length))

            def piece(start: int, end: int):
                return view[start:end]

            if mode == DELTA_WHOLE:
                runs = [(0, blocks)] if blocks else []
            elif mode == DELTA_DEST_ZERO:
                runs = spans([not is_zero(view[o : o + sub_size]) for o in range(0, length, sub_size)])
            else:
                mine = sub_digests(hasher(algo), view, sub_size)
                runs = spans(differing_sub_blocks(mine, theirs, blocks))
        parts = [PIECES_HEAD.pack(index, length, len(runs))]
        for first, count in runs:
            start = first * sub_size
            parts.extend(encode_piece(start, piece(start, min(length, start + count * sub_size)), codec or None))
        self.send(OP_DATA, rid, b"".join(parts))

    # -- writes

    def _writer(self) -> None:
        """Apply writes in order; acknowledge them in batches; answer FLUSH after the ones before
        it. Nothing a frame holds can stop this thread: every failure becomes an error frame."""
        while True:
            try:
                op, rid, payload = self.write_queue.get(timeout=0.05)
            except queue.Empty:
                self._send_acks(force=True)
                continue
            try:
                if op == OP_FLUSH:
                    self._send_acks(force=True)
                    self._flush(rid)
                else:
                    self._apply_write(op, rid, payload)
            except Exception as exc:  # a bug of ours: report it, and keep serving
                self.error(rid, "%s: %s" % (type(exc).__name__, exc))
            self.write_queue.task_done()
            self._send_acks(force=self.write_queue.empty())

    def _flush(self, rid: int) -> None:
        if self.write_failure is not None:
            code, text = self.write_failure
            self.error(rid, text, code=code, written=self.bytes_written)
            return
        try:
            os.fsync(self.fd)
            self.reply(rid, {"flushed": True, "written": self.bytes_written})
        except OSError as exc:
            self.error(rid, _os_error_text(exc, self.path), code=exc.errno or 0)

    def _write_geometry(self, index: int) -> "tuple[int, int]":
        """(offset, length) of chunk `index` in the geometry the destination was opened with."""
        if self.chunk_size <= 0 or index < 0 or index * self.chunk_size >= self.sync_size:
            raise WorkerError("write to chunk %d, outside the destination" % index)
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.sync_size - offset)

    def _apply_write(self, op: int, rid: int, payload) -> None:
        """One WRITE or ZERO: checked against our geometry, applied, acknowledged."""
        if len(payload) < 8:
            self.error(rid, "truncated write request", chunk=-1)
            return
        index = struct.unpack_from("!Q", payload)[0]
        if self.write_failure is not None:
            self.acks.append(ACK_ITEM.pack(index, self.write_failure[0]))
            return
        try:
            if not self.writable:
                raise WorkerError("the destination was not opened for writing")
            offset, length = self._write_geometry(index)
            if op == OP_ZERO:
                got_index, got_len, got_offset = ZERO_REQ.unpack(payload)
                if (got_len, got_offset) != (length, offset):
                    raise WorkerError("zero request for chunk %d does not match its geometry" % index)
                self._forget_subs(offset)
                self._write_zeros(offset, length)
            else:
                pieces = decode_pieces(payload, index, length)  # all checked before any write
                self._forget_subs(offset)
                for piece_offset, piece_len, data in pieces:
                    if data is None:
                        self._write_zeros(offset + piece_offset, piece_len)
                    else:
                        self._pwrite_all(data, offset + piece_offset)
            self.acks.append(ACK_ITEM.pack(index, 0))
        except OSError as exc:
            code = exc.errno or errno.EIO
            text = _os_error_text(exc, self.path)
            if code in FATAL_ERRNOS:
                self.write_failure = (code, text)
            self._write_failed(rid, index, text, code)
        except (WorkerError, ValueError, struct.error, zlib.error) as exc:
            self._write_failed(rid, index, "bad write for chunk %d: %s" % (index, exc), errno.EINVAL)

    def _write_failed(self, rid: int, index: int, text: str, code: int) -> None:
        """The error first, then the acknowledgement (with its errno) that settles the chunk."""
        self._send_acks(force=True)
        self.error(rid, text, chunk=index, code=code, written=self.bytes_written)
        self.acks.append(ACK_ITEM.pack(index, code))

    def _send_acks(self, force: bool) -> None:
        if self.acks and (force or len(self.acks) >= 256 or time.monotonic() - self.last_ack > 0.05):
            self.send(OP_WRITTEN, 0, b"".join(self.acks))
            self.acks = []
            self.last_ack = time.monotonic()

    def _pwrite_all(self, data, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n
            self.bytes_written += n

    def _write_zeros(self, offset: int, length: int) -> None:
        zero = bytes(min(length, 1 << 20))
        while length > 0:
            n = min(length, len(zero))
            self._pwrite_all(memoryview(zero)[:n], offset)
            offset += n
            length -= n

    def _finish_writes(self) -> None:
        """Apply every queued write, acknowledge it, and flush it to disk."""
        self.write_queue.join()
        self._send_acks(force=True)
        if self.writable and self.write_failure is None:
            try:
                os.fsync(self.fd)
            except OSError:
                pass


def _geometry(req: dict) -> "tuple[int, int, int]":
    """(chunk size, device size, sub-block size) of a HASH or PAIR request, bounded, with its
    ranges checked against them: no request can make a worker allocate or read without limit."""
    chunk_size, size, sub = int(req["chunk_size"]), int(req["size"]), int(req.get("sub_block") or 0)
    if chunk_size & (chunk_size - 1) or not 0 < chunk_size <= MAX_CHUNK_SIZE or size < 0:
        raise WorkerError("bad chunk size %d" % chunk_size)
    if sub and (sub & (sub - 1) or sub > chunk_size):
        raise WorkerError("bad sub-block size %d" % sub)
    total = -(-size // chunk_size)
    for first, count in req["ranges"]:
        if first < 0 or count < 0 or first + count > total:
            raise WorkerError("chunk range [%d, +%d) outside the %d chunks" % (first, count, total))
    return chunk_size, size, sub


def _same_as_expected(info: dict, expect: dict) -> bool:
    """Whether an open found the object an earlier open saw: the same device (rdev) or file
    (device and inode), the same size, and for a file the same modification time."""
    if info["kind"] != expect.get("kind") or info["size"] != expect.get("size"):
        return False
    mine, theirs = info["identity"], expect.get("identity") or [None, None, None]
    if info["kind"] == "block":
        return mine[2] == theirs[2]
    return mine[:2] == theirs[:2] and info["mtime_ns"] == expect.get("mtime_ns")


def usage_text(info: dict) -> str:
    """How a device is in use, in words ("mounted on /mnt; held by dm-0")."""
    parts = []
    if info.get("mounted"):
        parts.append("mounted on " + ", ".join(info["mounted"]))
    if info.get("holders"):
        parts.append("held by " + ", ".join(info["holders"]))
    if info.get("swap"):
        parts.append("used as swap")
    return "; ".join(parts)


def main(source: bytes) -> None:
    """Entry point on the worker's host: stdout belongs to the protocol alone."""
    out_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed by accident goes to stderr, not into the frame stream
    sys.stdout = sys.stderr
    worker = Worker(sys.stdin.buffer, out_fd, source)
    try:
        worker.serve()
    except (BrokenPipeError, ConnectionResetError):
        pass
    except ValueError as exc:
        sys.stderr.write("blocksync worker: %s\n" % exc)
        os._exit(3)
    # Daemon threads may hold the GIL in a blocking call; leave without waiting for them.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__blocksync_worker__":
    main(WORKER_SOURCE)  # noqa: F821  (set by the bootstrap)
