"""Provides small helpers shared by the engine tests."""

from __future__ import annotations

import os
from pathlib import Path

from blocksync_tui.engine.worker import protocol as wire
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.report import Report
from blocksync_tui.engine.sync import SyncEngine, SyncOptions
from blocksync_tui.engine.transport import LocalTransport


def run_engine(source: Path | str, destination: Path | str, **options: object) -> Report:
    """Prepare and run one compare or sync with local workers."""
    engine = SyncEngine(
        Endpoint.parse(str(source)), Endpoint.parse(str(destination)), SyncOptions(**options)
    )
    engine.prepare()
    return engine.run()


def expected_states(src: bytes, dst: bytes | None, chunk: int) -> list[str]:
    """What a compare must say per chunk: the destination read as zero-padded to the source size."""
    size = len(src)
    padded = bytes(size) if dst is None else (dst[:size] + bytes(max(0, size - len(dst))))
    states = []
    for off in range(0, size, chunk):
        a, b = src[off : off + chunk], padded[off : off + chunk]
        if a != b:
            states.append("differs")
        elif a.count(0) == len(a):
            states.append("zero")
        else:
            states.append("same")
    return states


class TamperingTransport(LocalTransport):
    """A real local worker behind a man in the middle: every frame it sends passes through
    `tamper(op, rid, payload)`, which returns the frames to deliver instead (none, to swallow
    it), as (op, rid, payload) or (op, rid, payload, header flags). This plays a buggy or
    hostile peer with the real worker's code, all of whose frames come down the pipe: no
    shared memory (worker/ring.py) is offered to it."""

    shares_memory = False

    def __init__(self, tamper) -> None:
        super().__init__()
        self.tamper = tamper
        self._raw = bytearray()
        self._out = bytearray()
        self._banner_seen = False

    def recv(self, size: int) -> bytes:
        while not self._out:
            data = super().recv(1 << 20)
            if not data:
                return b""
            self._raw += data
            if not self._banner_seen:
                end = self._raw.find(wire.BANNER)
                if end < 0:
                    continue
                end += len(wire.BANNER)
                self._out += self._raw[:end]
                del self._raw[:end]
                self._banner_seen = True
            while len(self._raw) >= wire.HEADER.size:
                op, rid, length = wire.unpack_header(bytes(self._raw[: wire.HEADER.size]))
                if len(self._raw) < wire.HEADER.size + length:
                    break
                payload = bytes(self._raw[wire.HEADER.size : wire.HEADER.size + length])
                del self._raw[: wire.HEADER.size + length]
                for op2, rid2, payload2, *flags in self.tamper(op, rid, payload):
                    self._out += wire.pack_header(op2, rid2, len(payload2), *flags) + payload2
        out = bytes(self._out[:size])
        del self._out[:size]
        return out


def tampered_engine(source: Path, destination: Path, side: str, tamper, **options: object) -> SyncEngine:
    """An engine whose `side` ("source" or "destination") worker's frames go through `tamper`."""
    target = str(source if side == "source" else destination)

    def factory(endpoint: Endpoint) -> LocalTransport:
        return TamperingTransport(tamper) if endpoint.path == target else LocalTransport()

    return SyncEngine(
        Endpoint.parse(str(source)), Endpoint.parse(str(destination)), SyncOptions(**options), factory
    )


def resident(path: Path | str, offset: int = 0, length: int | None = None) -> float:
    """The share of a file's range that is in the page cache (mincore on a mapping of it)."""
    import ctypes
    import mmap

    if length is None:
        length = os.path.getsize(path) - offset
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            pages = -(-length // mmap.PAGESIZE)
            vector = (ctypes.c_ubyte * pages)()
            assert libc.mincore(address, length, vector) == 0, os.strerror(ctypes.get_errno())
            return sum(byte & 1 for byte in vector) / pages
        finally:
            libc.munmap(address, length)
    finally:
        os.close(fd)


def drop_from_cache(path: Path | str) -> bool:
    """Write a file back and drop it from the page cache; False where its pages stay (tmpfs)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return resident(path) <= 0.01
