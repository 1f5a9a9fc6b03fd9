"""Provides verify: read every written chunk back from the destination's disk and compare.

Runs after the flush, when nothing else is in flight. A chunk that reads back different is
hashed again on the source: if the source changed while the sync ran, the chunk is sent again,
whole, and checked once more (state UPDATED); otherwise the write itself failed (state ERROR).
"""

from __future__ import annotations

import queue
from dataclasses import dataclass

from blocksync_tui.engine.worker import protocol as wire
from blocksync_tui.engine.chunkmap import State
from blocksync_tui.engine.connection import EOF_OP
from blocksync_tui.engine.errors import ConnectionLost, RemoteError
from blocksync_tui.engine.connection import end_if_silent, protocol_error, where
from blocksync_tui.engine.pipeline import POLL_SECONDS, Transfer
from blocksync_tui.engine.windows import runs_of
from blocksync_tui.engine.preflight import DESTINATION, SOURCE

RUNS_PER_REQUEST = 4096
"""Runs of chunks per verify request: keeps each request far below the frame limit."""


@dataclass(frozen=True)
class Verified:
    """What verify found."""

    failed: tuple[int, ...]
    """Chunks that read back different although the source did not change: state ERROR."""
    updated: tuple[int, ...]
    """Chunks whose source changed during the run, sent again and read back equal."""
    changing: tuple[int, ...]
    """Chunks whose source changed again while they were sent again: state ERROR."""

    @property
    def ok(self) -> bool:
        """Every chunk written read back equal (possibly after a resend)."""
        return not self.failed and not self.changing


def verify(transfer: Transfer, flush) -> Verified:
    """Check every chunk the transfer wrote; `flush()` makes the destination's writes durable
    (called again after a resend). Sets the chunk states and adds the errors to the transfer."""
    chunk_map = transfer.chunk_map
    expected = transfer.verify_digests
    written = [i for i in expected if chunk_map.get(i) == State.WRITTEN]
    on_disk = _digests_now(transfer, DESTINATION, written, drop_cache=True) if written else {}
    bad = [i for i in written if on_disk.get(i) != expected[i]]
    source_now = _digests_now(transfer, SOURCE, bad, drop_cache=False) if bad else {}
    moved = [i for i in bad if source_now.get(i) not in (None, expected[i])]
    failed = sorted(set(bad) - set(moved))
    for index in failed:
        chunk_map.set(index, State.ERROR)
        transfer.errors.append(f"{transfer.names[DESTINATION]}: chunk {index} failed verification")
    updated: list[int] = []
    changing: list[int] = []
    if moved:
        transfer.resend(moved, source_now)
        flush()
        on_disk = _digests_now(transfer, DESTINATION, moved, drop_cache=True)
        for index in moved:
            if chunk_map.get(index) == State.ERROR:
                continue  # the resend itself failed: its error is recorded
            if on_disk.get(index) == expected[index]:
                chunk_map.set(index, State.UPDATED)
                updated.append(index)
            else:  # the source keeps changing: it must be quiesced to be copied
                chunk_map.set(index, State.ERROR)
                changing.append(index)
                transfer.errors.append(
                    f"{transfer.names[SOURCE]}: chunk {index} changed during the sync and again "
                    "while it was sent again (failed verification)"
                )
    return Verified(tuple(failed), tuple(updated), tuple(changing))


def _digests_now(transfer: Transfer, side: str, indexes: list[int], drop_cache: bool) -> dict[int, bytes | None]:
    """Hash chunks on one side now; a zero chunk's digest is b"", an unreadable one's None.
    Requests go in batches of runs, so no frame outgrows the limit however many chunks."""
    conn = transfer.sides[side].conn
    runs = runs_of(sorted(indexes))
    digests: dict[int, bytes | None] = {}
    for start in range(0, len(runs), RUNS_PER_REQUEST):
        request = {
            "ranges": runs[start : start + RUNS_PER_REQUEST],
            "chunk_size": transfer.geometry.chunk_size,
            "size": transfer.geometry.size,
            "algo": transfer.negotiated.algorithm,
            "drop_cache": drop_cache and start == 0,
        }
        _collect(transfer, side, conn.post(wire.OP_HASH, request), digests)
    return digests


def _collect(transfer: Transfer, side: str, rid: int, digests: dict[int, bytes | None]) -> None:
    conn = transfer.sides[side].conn
    while True:
        try:
            frame = transfer.events.get(timeout=POLL_SECONDS)
        except queue.Empty:
            end_if_silent(conn, transfer.options.peer_timeout)
            continue
        if frame.op == EOF_OP:
            raise ConnectionLost(frame.payload.decode()).on(frame.side)
        if (frame.side, frame.rid) != (side, rid):
            if frame.op == wire.OP_WRITTEN:
                continue  # acknowledgements of the flushed writes, already counted
            raise protocol_error(transfer.sides[frame.side].conn, frame, "a frame while verifying")
        if frame.op == wire.OP_DONE:
            return
        if frame.op == wire.OP_ERROR:
            raise RemoteError(where(conn, wire.decode_json(frame.payload)["message"])).on(side)
        first, count, dsize = wire.DIGESTS_HEAD.unpack_from(frame.payload)
        pos = wire.DIGESTS_HEAD.size
        for index in range(first, first + count):
            flag = frame.payload[pos]
            digest = frame.payload[pos + 1 : pos + 1 + dsize]
            zeros = flag in (wire.FLAG_ZERO, wire.FLAG_HOLE)
            digests[index] = digest if flag == wire.FLAG_DATA else b"" if zeros else None
            pos += 1 + dsize

