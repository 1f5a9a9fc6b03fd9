"""Provides small helpers shared by the engine tests."""

from __future__ import annotations

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
