"""Provides the worker's request loop: frames in on stdin, each routed to its thread, and
HELLO, OPEN, LAYOUT, DEVICES and EXIT answered on the spot.
"""

from __future__ import annotations

import os
import queue
import sys
import threading

from . import devices, e2fs, fsmap, listing, probe, protocol, ring
from .opening import Files
from .output import Output, WorkerError, exception_text
from .scan import Scanner, SubDigestCache
from .stream import Streamer
from .writer import Writer

SERVICE_THREADS = 2
"""Threads serving SUBHASH and DELTA: hashing and os.pread release the GIL, so they overlap."""
EXIT_BAD_STREAM = 3
"""The worker's exit status when its input is not a frame stream."""


class Worker:
    """Serves requests from the controller on stdin, answers on stdout."""

    def __init__(self, inp, out_fd: int, payload_sha256: str) -> None:
        self.inp = inp
        self.payload_sha256 = payload_sha256
        """The digest of the payload this worker was started from: HELLO reports it."""
        self.out = Output(out_fd)
        self.files = Files()
        self.cache = SubDigestCache()
        self.writer = Writer(self.files, self.out, self.cache)
        self.scanner = Scanner(self.files, self.out, self.cache, self.writer)
        self.streamer = Streamer(self.files, self.out)
        # Long scans, short service requests and writes each get their own thread, in order,
        # so a DELTA for an early chunk is not stuck behind the whole scan.
        self.scan_queue: "queue.Queue" = queue.Queue()
        self.service_queue: "queue.Queue" = queue.Queue()
        self.ring_in = None
        """Memory shared with a controller on this host, that large WRITEs come through."""

    def serve(self) -> None:
        """Read frames until EXIT or end of input, then stop every thread."""
        self.out.write_all(protocol.BANNER)
        threads = [threading.Thread(target=self._drain, args=(self.scan_queue,), daemon=True)]
        threads += [
            threading.Thread(target=self._drain, args=(self.service_queue,), daemon=True)
            for _ in range(SERVICE_THREADS)
        ]
        threads.append(threading.Thread(target=self.writer.run, daemon=True))
        for t in threads:
            t.start()
        header_size = protocol.HEADER.size
        while True:
            header = self.inp.read(header_size)
            if len(header) < header_size:
                # The controller went away: the writes it sent are still applied and flushed,
                # so what it last saw acknowledged is on disk.
                self.writer.finish()
                break
            op, rid, length = protocol.unpack_header(header)
            if protocol.is_shared(header):
                payload = self._take_shared(op, length)
            else:
                payload = self.inp.read(length) if length else b""
            if len(payload) < length:
                self.writer.finish()
                break
            if op == protocol.OP_EXIT:
                self.writer.finish()
                self.out.send(protocol.OP_DONE, rid)
                break
            try:
                self.dispatch(op, rid, payload)
            except Exception as exc:  # report, never die silently: the controller shows it
                self.out.error(rid, exception_text(exc), code=exc.code if isinstance(exc, WorkerError) else 0)

    def _take_shared(self, op: int, length: int) -> bytes:
        """A WRITE's payload from the ring the controller put it in; gives space back.

        Raises:
            ValueError: no ring was agreed on, or the frame is not one that may use it.
        """
        if self.ring_in is None or op != protocol.OP_WRITE:
            raise ValueError("a frame through shared memory that was not agreed on")
        payload = self.ring_in.take(length)
        upto = self.ring_in.due_release()
        if upto:
            self.out.send(protocol.OP_RELEASE, 0, protocol.RELEASE.pack(upto))
        return payload

    def dispatch(self, op: int, rid: int, payload: bytes) -> None:
        """Route one request to its handler or its queue."""
        if op == protocol.OP_RELEASE:
            if self.out.ring is None:
                raise WorkerError("a RELEASE without a shared ring")
            self.out.ring.release(protocol.release_position(payload))
        elif op == protocol.OP_HELLO:
            self.out.reply(rid, self.hello(protocol.decode_json(payload) if payload else {}))
        elif op == protocol.OP_OPEN:
            req = protocol.decode_json(payload)
            self.out.reply(rid, self.files.open(req))
            if req.get("prefetch") and not req.get("peer") and self.files.target is not None:
                target = self.files.target
                k, n = req.get("prefetch_share", (0, 1))
                at = target.size * int(k) // max(1, int(n))
                # In the background: a large WILLNEED can take a while to queue its reads.
                threading.Thread(target=target.prefetch, args=(int(req["prefetch"]), at), daemon=True).start()
        elif op == protocol.OP_LAYOUT:
            t = self.files.need_target()
            self.out.reply(rid, probe.layout(t.fd, t.size, devices.sector_size(t.fd) if t.is_block else 512))
        elif op == protocol.OP_DEVICES:
            self.out.reply(rid, {"devices": devices.list_devices()})
        elif op == protocol.OP_LIST:
            self.out.reply(rid, listing.listing(protocol.decode_json(payload)))
        elif op == protocol.OP_HASH:
            self.scan_queue.put((self.scanner.hash_chunks, rid, protocol.decode_json(payload)))
        elif op == protocol.OP_PAIR:
            self.scan_queue.put((self.scanner.pair, rid, protocol.decode_json(payload)))
        elif op in (protocol.OP_E2FS, protocol.OP_FSMAP):
            run = e2fs.run if op == protocol.OP_E2FS else fsmap.run
            self.scan_queue.put((lambda rid, req: self.out.reply(rid, run(req)), rid, protocol.decode_json(payload)))
        elif op == protocol.OP_STREAM:
            self.scan_queue.put((self.streamer.stream, rid, protocol.decode_json(payload)))
        elif op in (protocol.OP_SUBHASH, protocol.OP_DELTA):
            handler = self.scanner.subhash if op == protocol.OP_SUBHASH else self.scanner.delta
            self.service_queue.put((handler, rid, payload))
        elif op in (protocol.OP_WRITE, protocol.OP_ZERO, protocol.OP_FLUSH):
            self.writer.queue.put((op, rid, payload))
        else:
            raise WorkerError("unknown request %d" % op)

    @staticmethod
    def _attach(offer):
        """The ring HELLO offered, or None: then those frames go down the pipe."""
        if not isinstance(offer, dict):
            return None
        try:
            return ring.attach(offer.get("path"), offer.get("size"))
        except (OSError, ValueError):
            return None

    def _drain(self, q: "queue.Queue") -> None:
        while True:
            handler, rid, arg = q.get()
            try:
                handler(rid, arg)
            except Exception as exc:
                self.out.error(rid, exception_text(exc))

    def hello(self, req: dict) -> dict:
        """Who we are and what we can do; with "ring", attach the controller's shared memory."""
        if self.out.ring is None:
            self.out.ring = self._attach(req.get("ring"))
        if self.ring_in is None:
            self.ring_in = self._attach(req.get("ring_in"))
        return {
            "ring": self.out.ring.size if self.out.ring else 0,
            "ring_in": self.ring_in.size if self.ring_in else 0,
            "protocol": protocol.PROTOCOL_VERSION,
            "version": protocol.WORKER_VERSION,
            "python": "%d.%d.%d" % sys.version_info[:3],
            "sha256": self.payload_sha256,
            "algorithms": protocol.hash_algorithms(),
            "compressors": protocol.compressors(),
            "uid": os.getuid(),
            "pid": os.getpid(),
            "host": os.uname()[1],
            # Unique per boot of a machine: tells that two endpoints reached differently (a path,
            # ssh to localhost) are on one machine, so the same-file check applies.
            "boot_id": devices.boot_id(),
            "machine_id": devices.machine_id(),
        }


PIPE_SIZE = 1 << 20


def widen_pipe(fd: int) -> None:
    """Let a pipe to sshd hold 1 MiB (Linux; 64 KiB by default): sshd then hands over a chunk
    in a few writes while this worker is busy writing the last one. Best effort."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except (OSError, ImportError):
        pass  # not a pipe, or above the unprivileged limit


def main(payload_sha256: str) -> None:
    """Entry point on the worker's host: stdout belongs to the protocol alone."""
    for fd in (0, 1):
        widen_pipe(fd)
    out_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed by accident goes to stderr, not into the frame stream
    sys.stdout = sys.stderr
    worker = Worker(sys.stdin.buffer, out_fd, payload_sha256)
    try:
        worker.serve()
    except (BrokenPipeError, ConnectionResetError):
        pass
    except ValueError as exc:
        sys.stderr.write("blocksync worker: %s\n" % exc)
        os._exit(EXIT_BAD_STREAM)
    # Daemon threads may hold the GIL in a blocking call; leave without waiting for them.
    sys.stderr.flush()
    os._exit(0)
