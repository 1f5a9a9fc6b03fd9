"""Provides the writing side of a worker: one thread that applies WRITE and ZERO in order,
acknowledges them in batches, answers FLUSH, and fsyncs at the end.

Its failure rules: a write is checked whole (geometry, pieces) before any byte of it lands; a
bad frame costs one chunk, never the thread; after a fatal errno (protocol.FATAL_ERRNOS: no
later write can succeed) every later write is dropped, acknowledged with that errno, and FLUSH
answers with the first error.
"""

from __future__ import annotations

import errno
import os
import queue
import struct
import time
import zlib

from . import devices, protocol, zeroing
from .writeback import WriteBehind
from .output import WorkerError, exception_text, os_error_text

ACK_BATCH = 256
"""Acknowledgements are sent once this many are waiting..."""
ACK_SECONDS = 0.05
"""...or once the oldest has waited this long, or whenever the queue runs dry."""
ZERO_BLOCK = 1 << 20
"""ZERO and zero pieces are written from one buffer of zeros of at most this size."""


class Writer:
    """The write queue and the thread that drains it."""

    def __init__(self, files, out, cache) -> None:
        self.files = files
        """The worker's `opening.Files`: writes go to its target."""
        self.out = out
        self.cache = cache
        """The scan's sub-block digests: a written chunk's are stale."""
        # Unbounded: the controller bounds the data in flight, and a reader that never blocks
        # on it keeps answering requests while the disk is slow.
        self.queue: "queue.Queue" = queue.Queue()
        self.bytes_written = 0
        self.failure: "tuple[int, str] | None" = None
        """(errno, text) of the first fatal write error: later writes are dropped, unreported."""
        self.acks: "list[bytes]" = []
        self.last_ack = time.monotonic()
        self.behind = WriteBehind()
        """Writes go to disk as the run goes (writeback.py); its fsync reports what that lost."""

    def run(self) -> None:
        """Apply writes in order; acknowledge them in batches; answer FLUSH after the ones before
        it. Nothing a frame holds can stop this thread: every failure becomes an error frame."""
        while True:
            try:
                op, rid, payload = self.queue.get(timeout=ACK_SECONDS)
            except queue.Empty:
                self._send_acks(force=True)
                continue
            try:
                if op == protocol.OP_FLUSH:
                    self._send_acks(force=True)
                    self._flush(rid)
                else:
                    self._apply(op, rid, payload)
            except Exception as exc:  # a bug of ours: report it, and keep serving
                self.out.error(rid, exception_text(exc))
            self.queue.task_done()
            self._send_acks(force=self.queue.empty())

    def finish(self) -> None:
        """Apply every queued write, acknowledge it, and flush it to disk."""
        self.queue.join()
        self._send_acks(force=True)
        target = self.files.target
        if target is not None and target.writable and self.failure is None:
            try:
                self.behind.sync(target.fd)
            except OSError:
                pass

    def _flush(self, rid: int) -> None:
        if self.failure is not None:
            code, text = self.failure
            self.out.error(rid, text, code=code, written=self.bytes_written)
            return
        target = self.files.need_target()
        try:
            self.behind.sync(target.fd)
            st = os.fstat(target.fd)  # after our writes: what a kept digest cache is keyed by
            self.out.reply(rid, {
                "flushed": True, "written": self.bytes_written, "size": os.lseek(target.fd, 0, os.SEEK_END),
                "identity": [st.st_dev, st.st_ino, st.st_rdev], "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                "sectors_written": devices.sectors_written(st.st_rdev) if target.is_block else -1,
            })
        except OSError as exc:
            self.out.error(rid, os_error_text(exc, target.path), code=exc.errno or 0)

    def _apply(self, op: int, rid: int, payload) -> None:
        """One WRITE or ZERO: checked against our geometry, applied, acknowledged."""
        if len(payload) < protocol.WRITE_INDEX.size:
            self.out.error(rid, "truncated write request", chunk=-1)
            return
        index = protocol.WRITE_INDEX.unpack_from(payload)[0]
        if self.failure is not None:
            self.acks.append(protocol.ACK_ITEM.pack(index, self.failure[0]))
            return
        target = self.files.target
        try:
            if target is None or not target.writable:
                raise WorkerError("the destination was not opened for writing")
            offset, length = _chunk_geometry(target, index)
            if op == protocol.OP_ZERO:
                _index, got_len, got_offset = protocol.ZERO_REQ.unpack(payload)
                if (got_len, got_offset) != (length, offset):
                    raise WorkerError("zero request for chunk %d does not match its geometry" % index)
                self.cache.forget(offset)
                self.zero_range(target, offset, length)
            else:
                pieces = protocol.decode_pieces(payload, index, length)  # all checked before any write
                self.cache.forget(offset)
                for piece_offset, piece_len, data in pieces:
                    if data is None:
                        self.zero_range(target, offset + piece_offset, piece_len)
                    else:
                        self.pwrite_all(target, data, offset + piece_offset)
            self.acks.append(protocol.ACK_ITEM.pack(index, protocol.ACK_OK))
        except OSError as exc:
            code = exc.errno or errno.EIO
            text = os_error_text(exc, target.path if target is not None else "")
            if code in protocol.FATAL_ERRNOS or self.behind.error is not None:
                self.failure = (code, text)
            self._failed(rid, index, text, code)
        except (WorkerError, ValueError, struct.error, zlib.error) as exc:
            self._failed(rid, index, "bad write for chunk %d: %s" % (index, exc), errno.EINVAL)

    def _failed(self, rid: int, index: int, text: str, code: int) -> None:
        """The error first, then the acknowledgement (with its errno) that settles the chunk."""
        self._send_acks(force=True)
        self.out.error(rid, text, chunk=index, code=code, written=self.bytes_written)
        self.acks.append(protocol.ACK_ITEM.pack(index, code))

    def _send_acks(self, force: bool) -> None:
        if self.acks and (force or len(self.acks) >= ACK_BATCH or time.monotonic() - self.last_ack > ACK_SECONDS):
            self.out.send(protocol.OP_WRITTEN, 0, b"".join(self.acks))
            self.acks = []
            self.last_ack = time.monotonic()

    def pwrite_all(self, target, data, offset: int) -> None:
        """Write every byte of `data` at `offset` of `target`, counted in bytes_written."""
        view = memoryview(data)
        start = offset
        while view:
            n = os.pwrite(target.fd, view, offset)
            view = view[n:]
            offset += n
            self.bytes_written += n
        self.behind.wrote(target.fd, start, offset - start)

    def zero_range(self, target, offset: int, length: int) -> None:
        """Make a range read as zeros: a hole in a file, BLKZEROOUT on a device, else zeros."""

        def write(offset: int, length: int) -> None:
            zero = memoryview(bytes(min(length, ZERO_BLOCK)))
            while length > 0:
                n = min(length, len(zero))
                self.pwrite_all(target, zero[:n], offset)
                offset += n
                length -= n

        before = self.bytes_written
        zeroing.zero_range(target, offset, length, write)
        self.bytes_written = before + length  # a hole punched changed the destination too


def _chunk_geometry(target, index: int) -> "tuple[int, int]":
    """(offset, length) of chunk `index` in the geometry the destination was opened with."""
    if target.chunk_size <= 0 or index < 0 or index * target.chunk_size >= target.sync_size:
        raise WorkerError("write to chunk %d, outside the destination" % index)
    offset = index * target.chunk_size
    return offset, min(target.chunk_size, target.sync_size - offset)
