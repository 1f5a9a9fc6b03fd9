"""Provides CacheSample: the chunks of a digest cache that the destination reads again first.

A cache is believed only after a random sample of its chunks, re-read on the destination,
agrees with it (see digest_cache.py for how large and why). The destination's answer must
hold each sampled chunk exactly once, with digests of the negotiated size; anything else
is the destination's protocol error, never a guess.
"""

from __future__ import annotations

from collections.abc import Callable

from blocksync_tui.engine.worker import protocol as wire
from blocksync_tui.engine import digest_cache
from blocksync_tui.engine.connection import Connection, Frame, where
from blocksync_tui.engine.digest_cache import DigestCache
from blocksync_tui.engine.errors import ProtocolError, RemoteError
from blocksync_tui.engine.windows import Geometry, runs_of

ZEROS = (wire.FLAG_ZERO, wire.FLAG_HOLE)


class CacheSample:
    """The sample of one transfer's chunks first..end-1 against `cached`."""

    def __init__(self, cached: DigestCache, first: int, end: int) -> None:
        self.cached = cached
        self.indexes = digest_cache.sample(first, end)
        self.wrong: list[int] = []
        """The sampled chunks the destination no longer holds as its cache says."""
        self.done = not self.indexes
        """Whether the sample is in (and `wrong` final)."""
        self.rid: int | None = None
        """The destination's request id while the sample is out."""
        self._answered = dict.fromkeys(self.indexes, False)

    @property
    def out(self) -> bool:
        """Whether it was asked and is not all in yet."""
        return self.rid is not None

    def ask(self, conn: Connection, geometry: Geometry, algorithm: str) -> None:
        """Ask the destination for the digests of the sampled chunks, all at once."""
        if self.done:
            return
        request = {"ranges": runs_of(self.indexes), "chunk_size": geometry.chunk_size,
                   "size": geometry.size, "algo": algorithm, "scattered": True}
        self.rid = conn.post(wire.OP_HASH, request)

    def take(
        self, frame: Frame, conn: Connection, digest_size: int,
        error: Callable[[Frame, str], ProtocolError], read: Callable[[int], None],
    ) -> None:
        """One frame of the destination's answer: a batch of digests (`read` is called with
        each chunk's index) or the end of it, after which `done` is True."""
        if frame.op == wire.OP_ERROR:
            raise RemoteError(where(conn, str(wire.decode_json(frame.payload)["message"]))).on(frame.side)
        if frame.op == wire.OP_DONE:
            if not all(self._answered.values()):
                raise error(frame, "an incomplete sample")
            self.done, self.rid = True, None
            return
        if frame.op != wire.OP_DIGESTS:
            raise error(frame, "an unexpected frame")
        first, count, dsize = wire.DIGESTS_HEAD.unpack_from(frame.payload)
        if dsize != digest_size or len(frame.payload) != wire.DIGESTS_HEAD.size + count * (1 + dsize):
            raise error(frame, "a sample batch of the wrong length")
        pos = wire.DIGESTS_HEAD.size
        for index in range(first, first + count):
            if self._answered.get(index) is not False:
                raise error(frame, f"chunk {index}, not sampled or twice")
            self._answered[index] = True
            flag, digest = frame.payload[pos], bytes(frame.payload[pos + 1 : pos + 1 + dsize])
            pos += 1 + dsize
            now = digest if flag == wire.FLAG_DATA else b"" if flag in ZEROS else None
            if not self.cached.matches(index, now):
                self.wrong.append(index)
            read(index)
