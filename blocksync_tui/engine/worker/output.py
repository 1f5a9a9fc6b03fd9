"""Provides the worker's end of stdout: whole frames from many threads, and one-line errors.

Stdout belongs to the protocol alone: the scan, the service threads and the writer all answer
through one `Output`, which never lets two frames interleave and goes quiet once the
controller has gone (the writer must still finish and flush what it got).
"""

from __future__ import annotations

import os
import threading

from . import protocol


IOV_BATCH = 64
"""Buffers per writev call, well under any system's IOV_MAX (1024 on Linux)."""


class WorkerError(Exception):
    """An error to report to the controller as one line; `code`, an errno it can act on."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


def os_error_text(exc: OSError, path: str) -> str:
    """An OSError as the controller shows it: "path: reason"."""
    return "%s: %s" % (path, exc.strerror or exc)


def exception_text(exc: Exception) -> str:
    """Any failure of a request as one line: ours as they are, a bug with its type."""
    if isinstance(exc, WorkerError):
        return str(exc)
    return "%s: %s" % (type(exc).__name__, exc)


class Output:
    """Frames to the controller, written whole, from any thread."""

    def __init__(self, out_fd: int) -> None:
        self.out_fd = out_fd
        self.lock = threading.Lock()
        self.broken = False
        """The controller has gone: frames are dropped from then on."""
        self.ring = None
        """The memory shared with a controller on this host (ring.py), once HELLO set it up."""
        self.ring_lock = threading.Lock()
        """Held from taking ring space to sending the header, so headers go in ring order; a
        thread waiting for space holds this one only, never `lock`, which the request loop
        (that reads the RELEASE it waits for) needs for its replies."""

    def write_all(self, data) -> None:
        """Write every byte (the banner, or a part of a frame under the lock)."""
        view = memoryview(data)
        while view:
            n = os.write(self.out_fd, view)
            view = view[n:]

    def send(self, op: int, rid: int, payload=b"") -> None:
        """Send one frame; frames from different threads never interleave."""
        self.send_parts(op, rid, [payload])

    def send_parts(self, op: int, rid: int, parts: list) -> None:
        """Send one frame whose payload is the concatenation of `parts` (bytes, memoryviews),
        gathered by writev: a chunk's data is written from where it was read, never joined."""
        views = [memoryview(part).cast("B") for part in parts if len(part)]
        length = sum(len(view) for view in views)
        ring = self.ring
        if op == protocol.OP_DATA and ring is not None and ring.fits(length):
            with self.ring_lock:
                ring.put(views, length)
                self._write([memoryview(protocol.pack_header(op, rid, length, protocol.FRAME_SHARED))])
            return
        self._write([memoryview(protocol.pack_header(op, rid, length)), *views])

    def _write(self, views: list) -> None:
        """Write one frame's pieces whole, under the lock; a gone controller is noted, once."""
        with self.lock:
            if self.broken:
                return
            try:
                while views:
                    written = os.writev(self.out_fd, views[:IOV_BATCH])
                    while written:
                        if written >= len(views[0]):
                            written -= len(views.pop(0))
                        else:
                            views[0] = views[0][written:]
                            written = 0
            except OSError:
                self.broken = True

    def reply(self, rid: int, obj: dict) -> None:
        """Answer a control request."""
        self.send(protocol.OP_REPLY, rid, protocol.encode_json(obj))

    def error(self, rid: int, message: str, chunk: int = -1, code: int = 0, **extra) -> None:
        """Report an error for one request (and chunk)."""
        body = {"message": message, "chunk": chunk, "errno": code}
        body.update(extra)
        self.send(protocol.OP_ERROR, rid, protocol.encode_json(body))
