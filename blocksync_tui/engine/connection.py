"""Provides Connection: a started, handshaken worker that requests can be sent to.

Replies are read by one thread per worker. Control requests (`call`) wait for their answer;
streaming requests (`post`) deliver every frame of their answer to a queue shared by both
workers, which the engine's single loop consumes, so the engine logic needs no locks.

Requests are written by one sender thread per worker, so a worker that stops reading (frozen,
or a stalled link) never blocks the engine's loop: it notices the silence and ends the run.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from blocksync_tui.engine import bootstrap
from blocksync_tui.engine.worker import protocol as wire
from blocksync_tui.engine.worker import ring as shared_ring
from blocksync_tui.engine.errors import ConnectError, ConnectionLost, ProtocolError, RemoteError
from blocksync_tui.engine.transport import Transport

_BANNER_SEARCH = 64 * 1024
"""How much stray output (a chatty login shell) may precede the worker's banner."""
_EOF = -1
_RECV_SIZE = 1 << 20
"""Ask for at least this much per recv: paramiko's recv(32 KiB) costs twice recv(1 MiB)."""


@dataclass
class _Shared:
    """A frame for the sender thread to put through the shared ring: only its header goes on."""

    op: int
    rid: int
    payload: bytes | memoryview


@dataclass
class Frame:
    """One frame from a worker, as delivered to the engine's queue."""

    side: str
    op: int
    rid: int
    payload: bytes = b""


@dataclass
class _Waiter:
    done: threading.Event = field(default_factory=threading.Event)
    op: int = 0
    payload: bytes = b""


class _Reader:
    """Reads exact byte counts from a transport with few large recv calls. What a recv returned
    stays as it came, in views, until a read takes it: each byte of a payload is copied once
    (into the joined result), however the recv calls cut it."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.pending: deque[memoryview] = deque()
        """What recv returned and no read has taken yet, in order."""
        self.pending_size = 0
        self.bytes_in = 0

    def read_exact(self, size: int) -> bytes | None:
        while self.pending_size < size:
            data = self.transport.recv(max(size - self.pending_size, _RECV_SIZE))
            if not data:
                return None
            self.bytes_in += len(data)
            self.pending.append(memoryview(data))
            self.pending_size += len(data)
        parts = []
        need = size
        while need:
            piece = self.pending[0]
            if len(piece) <= need:
                parts.append(self.pending.popleft())
                need -= len(piece)
            else:
                parts.append(piece[:need])
                self.pending[0] = piece[need:]
                need = 0
        self.pending_size -= size
        if len(parts) == 1 and isinstance(parts[0].obj, bytes) and len(parts[0]) == len(parts[0].obj):
            return parts[0].obj  # a recv's whole answer, as it came: no copy
        return b"".join(parts)


class Connection:
    """A worker behind a transport: handshake, requests, replies."""

    def __init__(self, transport: Transport, side: str, events: queue.Queue[Frame]) -> None:
        self.transport = transport
        self.side = side
        """"source" or "destination": tags every frame put on `events`."""
        self.events = events
        self.hello: dict = {}
        """The worker's HELLO: version, Python, algorithms, compressors."""
        self.bytes_out = 0
        self._reader = _Reader(transport)
        self._send_lock = threading.Lock()
        self._next_rid = 1
        self._waiters: dict[int, _Waiter] = {}
        self._lost: str | None = None
        self._thread: threading.Thread | None = None
        self._outbox: queue.SimpleQueue[bytes | memoryview | _Shared | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self.last_heard = time.monotonic()
        """When the last frame (or the banner) came from the worker: a watchdog reads it."""
        self._ring_in: shared_ring.Ring | None = None
        """Memory shared with a worker on this host: large DATA payloads come through it."""
        self._ring_out: shared_ring.Ring | None = None
        """And the other way: large WRITE payloads go through it."""
        self._exiting: Callable[[float], bytes] | None = None
        """What waits for the answer to an EXIT asked ahead of `close` (`ask_exit`)."""
        self._offered: list[int] = []
        """Descriptors of the rings offered in HELLO, open until it is answered."""

    @property
    def bytes_in(self) -> int:
        """Bytes received from the worker so far."""
        return self._reader.bytes_in

    # -- start

    def start(self, timeout: float = 30.0, then: Callable[[], object] | None = None) -> dict:
        """Start the worker, send it its source, check its banner and HELLO.

        `then` is called once HELLO is sent, before its answer is awaited: what it asks travels
        with HELLO, and the worker answers it right after (a read-only OPEN saves its round trip
        this way). Nothing that writes may be asked there: the worker is not checked yet.

        Raises:
            ConnectError: the interpreter is missing or too old, or the worker died at start.
            ProtocolError: the worker is not the one we sent, or speaks another protocol.
        """
        self.transport.start()
        self._sender = threading.Thread(
            target=self._send_loop, name=f"sender-{self.side}", daemon=True
        )
        self._sender.start()
        try:
            try:
                self.transport.send(bootstrap.payload())
            except OSError:
                pass  # the process already died: its exit status below says why
            # HELLO goes right behind the payload (the worker reads both through one buffered
            # stdin), so its answer follows the banner: one round trip less per connection.
            answer = self._ask_hello()
            if then is not None:
                then()
            self._await_banner()
        except BaseException:
            self._outbox.put(None)  # the sender thread ends with the start that failed
            self._close_offered()
            raise
        self.last_heard = time.monotonic()
        self._thread = threading.Thread(
            target=self._read_loop, name=f"reader-{self.side}", daemon=True
        )
        self._thread.start()
        hello = answer(timeout)
        if hello.get("protocol") != wire.PROTOCOL_VERSION:
            raise ProtocolError(
                f"{self.transport.label}: worker speaks protocol {hello.get('protocol')}, "
                f"we speak {wire.PROTOCOL_VERSION}"
            )
        if hello.get("sha256") != bootstrap.payload_sha256():
            raise ProtocolError(f"{self.transport.label}: the worker's code arrived altered")
        self.hello = hello
        return hello

    def _ask_hello(self) -> Callable[[float], dict]:
        """Send HELLO, offering a worker on this host the shared rings (worker/ring.py); returns
        what waits for its answer and settles the rings by it."""
        request: dict = {"protocol": wire.PROTOCOL_VERSION}
        fds: list[int] = []
        rings: dict[str, shared_ring.Ring] = {}
        if self.transport.shares_memory:
            try:
                for key in ("ring", "ring_in"):  # the worker's output, then its input
                    rings[key], fd = shared_ring.create()
                    fds.append(fd)
                    request[key] = shared_ring.offer(rings[key], fd)
            except OSError:
                pass  # no memfd here: the pipe carries everything
        # Set before the worker can use them: its first shared frame may follow its answer at once.
        self._ring_in, self._ring_out = rings.get("ring"), rings.get("ring_in")
        self._offered = fds
        try:
            wait = self.ask(wire.OP_HELLO, request)
        except BaseException:
            self._close_offered()
            raise

        def answer(timeout: float) -> dict:
            try:
                hello = wire.decode_json(wait(timeout))
            finally:
                self._close_offered()  # the worker has mapped them, or never will: ours stay
            if self._ring_in is not None and hello.get("ring") != self._ring_in.size:
                self._ring_in.close()  # declined: unmapped, and the frames come down the pipe
                self._ring_in = None
            if self._ring_out is not None and hello.get("ring_in") != self._ring_out.size:
                self._ring_out.close()
                self._ring_out = None
            return hello

        return answer

    def _close_offered(self) -> None:
        """Close the descriptors of the rings offered in HELLO (once)."""
        fds, self._offered = self._offered, []
        for fd in fds:
            os.close(fd)

    def _await_banner(self) -> None:
        seen = bytearray()
        while wire.BANNER not in seen:
            byte = self._reader.read_exact(1)
            if byte is None:
                raise self._start_failure()
            seen += byte
            if len(seen) > _BANNER_SEARCH:
                raise ProtocolError(
                    f"{self.transport.label}: no worker banner, got {bytes(seen[:80])!r}..."
                )

    def _start_failure(self) -> ConnectError:
        status = self.transport.exit_status(5.0)
        where = self.transport.label
        python = getattr(self.transport, "python", "python3")
        tail = self.transport.stderr_tail().strip().splitlines()
        if status == bootstrap.EXIT_COMMAND_NOT_FOUND:
            if tail and tail[-1].startswith("sudo:"):
                return ConnectError(f"{where}: {tail[-1]}")  # e.g. "sudo: command not found"
            return ConnectError(f"{where}: {python} not found (is Python 3 installed there?)")
        if status == bootstrap.EXIT_PYTHON_TOO_OLD:
            return ConnectError(f"{where}: {python} is older than 3.8")
        reason = tail[-1] if tail else f"exit status {status}"
        return ConnectError(f"{where}: the worker did not start: {reason}")

    # -- requests

    def _send(self, op: int, rid: int, payload: bytes) -> None:
        """Queue one frame for the sender thread: never blocks on the worker."""
        header = wire.pack_header(op, rid, len(payload))
        with self._send_lock:
            if self._lost:
                raise ConnectionLost(self._lost)
            ring = self._ring_out
            if op == wire.OP_WRITE and ring is not None and ring.fits(len(payload)):
                self._outbox.put(_Shared(op, rid, payload))
            elif len(payload) < 65536:
                self._outbox.put(header + payload)
            else:  # no copy of a large payload: the header goes on its own
                self._outbox.put(header)
                self._outbox.put(payload)
            self.bytes_out += len(header) + len(payload)

    def _send_loop(self) -> None:
        while True:
            data = self._outbox.get()
            if data is None:
                return
            try:
                if isinstance(data, _Shared):
                    assert self._ring_out is not None
                    self._ring_out.put([memoryview(data.payload)], len(data.payload))
                    data = wire.pack_header(data.op, data.rid, len(data.payload), wire.FRAME_SHARED)
                self.transport.send(data)
            except EOFError:
                return  # the connection ended while this waited for ring space
            except (OSError, ValueError) as exc:
                self._end(f"{self.transport.label}: connection lost ({exc})")
                return

    def _new_rid(self) -> int:
        with self._send_lock:
            rid = self._next_rid
            self._next_rid += 1
        return rid

    def post(self, op: int, payload: bytes | dict) -> int:
        """Send a request whose replies go to the event queue; returns its request id."""
        if isinstance(payload, dict):
            payload = wire.encode_json(payload)
        rid = self._new_rid()
        self._send(op, rid, payload)
        return rid

    def call(self, op: int, payload: bytes | dict, timeout: float = 60.0) -> bytes:
        """Send a request and wait for its one reply.

        Raises:
            RemoteError: the worker answered with an error.
            ConnectionLost: the worker went away, or did not answer in time.
        """
        return self.ask(op, payload)(timeout)

    def ask(self, op: int, payload: bytes | dict) -> Callable[[float], bytes]:
        """Send a request now and return what waits for its one reply (as `call` does): two
        requests asked back to back cost one round trip, not two."""
        if isinstance(payload, dict):
            payload = wire.encode_json(payload)
        rid = self._new_rid()
        waiter = _Waiter()
        self._waiters[rid] = waiter
        try:
            self._send(op, rid, payload)
        except BaseException:
            self._waiters.pop(rid, None)
            raise

        def wait(timeout: float) -> bytes:
            try:
                if not waiter.done.wait(timeout):
                    raise given_up(self, timeout)
            finally:
                self._waiters.pop(rid, None)
            if waiter.op == _EOF:
                raise ConnectionLost(self._lost or f"{self.transport.label}: connection lost")
            if waiter.op == wire.OP_ERROR:
                error = wire.decode_json(waiter.payload)
                failure = RemoteError(error["message"])
                code = error.get("errno")
                failure.errno = code if isinstance(code, int) else 0
                raise failure
            return waiter.payload

        return wait

    def call_json(self, op: int, payload: dict, timeout: float = 60.0) -> dict:
        """`call` for requests answered with JSON."""
        return wire.decode_json(self.call(op, payload, timeout))

    # -- replies

    def _read_loop(self) -> None:
        reason = f"{self.transport.label}: the worker closed the connection"
        try:
            while True:
                header = self._reader.read_exact(wire.HEADER.size)
                if header is None:
                    break
                op, rid, length = wire.unpack_header(header)
                if wire.is_shared(header):
                    payload = self._take_shared(op, length)
                else:
                    payload = self._reader.read_exact(length) if length else b""
                if payload is None:
                    break
                self.last_heard = time.monotonic()
                if op == wire.OP_RELEASE and self._ring_out is not None:
                    self._ring_out.release(wire.release_position(payload))
                    continue
                # Taken out as it is answered: an end of the stream right behind this answer
                # (a worker that exits on EXIT) must not turn it into a lost connection.
                waiter = self._waiters.pop(rid, None) if rid else None
                if waiter is not None:
                    waiter.op, waiter.payload = op, payload
                    waiter.done.set()
                else:
                    self.events.put(Frame(self.side, op, rid, payload))
        except ValueError as exc:
            reason = f"{self.transport.label}: {exc}"
        except OSError as exc:
            reason = f"{self.transport.label}: connection lost ({exc})"
        except Exception as exc:  # whatever it was, the engine must hear that this side ended
            reason = f"{self.transport.label}: connection lost ({type(exc).__name__}: {exc})"
        tail = self.transport.stderr_tail().strip().splitlines()
        if tail and "Traceback" in self.transport.stderr_tail():
            reason += f" ({tail[-1]})"
        self._end(reason)

    def _take_shared(self, op: int, length: int) -> bytes:
        """The payload of a frame that came through the shared ring; gives space back.

        Raises:
            ValueError: no ring was agreed on, the frame is not chunk data, or it cannot fit.
        """
        ring = self._ring_in
        if ring is None or op != wire.OP_DATA:
            raise ValueError(f"the worker sent a {wire.OP_NAMES.get(op, op)} frame through shared memory it was not given")
        payload = ring.take(length)
        self._reader.bytes_in += length
        upto = ring.due_release()
        if upto:
            self._send(wire.OP_RELEASE, 0, wire.RELEASE.pack(upto))
        return payload

    def _end(self, reason: str) -> None:
        """Mark the connection lost (once): wake every waiter, tell the engine."""
        with self._send_lock:
            if self._lost is not None:
                return
            self._lost = reason
        if self._ring_out is not None:
            self._ring_out.abandon()  # the sender may wait for space the worker never frees
        for waiter in list(self._waiters.values()):
            waiter.op = _EOF  # unanswered: the reader takes answered ones out
            waiter.done.set()
        self.events.put(Frame(self.side, _EOF, 0, reason.encode()))

    def abandon(self, reason: str) -> None:
        """Give up on a worker that stopped answering: `close` then ends it without asking."""
        self._end(reason)

    def ask_exit(self) -> None:
        """Ask the worker to exit once it has answered every request sent before: nothing may be
        asked after this, and `close` then only waits for the answer."""
        self._exiting = self.ask(wire.OP_EXIT, b"")

    def close(self, timeout: float = 10.0) -> None:
        """Ask the worker to finish its writes and exit (unless asked already), then close the
        transport."""
        if self._lost is None and self._thread is not None:
            try:
                (self._exiting or self.ask(wire.OP_EXIT, b""))(timeout)
            except (ConnectionLost, RemoteError):
                pass
        self._outbox.put(None)
        if self._ring_out is not None:
            self._ring_out.abandon()
        self.transport.close()


EOF_OP = _EOF
"""The op of the Frame put on the queue when a worker's stream ends."""


def where(conn: Connection, message: str) -> str:
    """A message prefixed with the host it came from (unless it is local or already says so)."""
    label = conn.transport.label
    return message if label == "local" or message.startswith(label) else f"{label}: {message}"


def given_up(conn: Connection, limit: float) -> ConnectionLost:
    """Abandon a worker that has not answered for `limit` seconds; the one line that says so."""
    reason = where(conn, f"the {conn.side} stopped answering ({limit:.0f} s without a reply)")
    conn.abandon(reason)
    return ConnectionLost(reason)


def end_if_silent(conn: Connection, limit: float) -> None:
    """Give up on a worker that has said nothing for `limit` seconds, in one line."""
    if time.monotonic() - conn.last_heard > limit:
        raise given_up(conn, limit).on(conn.side)


def protocol_error(conn: Connection, frame: Frame, what: str) -> ProtocolError:
    """The one-line error for a frame that does not fit what was asked."""
    name = wire.OP_NAMES.get(frame.op, str(frame.op))
    return ProtocolError(
        where(conn, f"the {frame.side}'s worker sent {what}: {name} for request {frame.rid}")
    ).on(frame.side)
