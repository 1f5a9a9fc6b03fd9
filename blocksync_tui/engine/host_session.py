"""Provides HostSession: one worker kept on a host while the app's setup names that host.

It lists the host's block devices and the start of its directories (for path completion),
each a request on a channel already open: completing a remote path costs a round trip, not a
connection.
"""

from __future__ import annotations

import queue
import threading

from blocksync_tui.engine.connection import Connection, Frame
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import BlocksyncError, ConnectionLost
from blocksync_tui.engine.inventory import Device, parse_devices
from blocksync_tui.engine.listing import Listing
from blocksync_tui.engine.transports import TransportFactory, local_only
from blocksync_tui.engine.worker import protocol as wire

LIST_LIMIT = 1000
"""Entries asked for per directory: a few tens of KiB at most on the wire."""
LIST_TIMEOUT = 30.0
"""A directory that does not answer in this long (a hung network mount) ends the worker; the
next request starts another."""


class HostSession:
    """A worker on one host, started at the first request and kept until `close`.

    Requests may come from several threads at once. A failed start is remembered: listings
    then fail at once, without trying again on every keystroke; `devices()` tries again.
    """

    def __init__(self, host: Endpoint, factory: TransportFactory = local_only) -> None:
        """Args:
            host: The host (only its host part matters; "" for this machine).
            factory: Makes the transport that starts the worker there.
        """
        self.host = host
        self._factory = factory
        self._lock = threading.Lock()
        self._starting = threading.Lock()
        self._connection: Connection | None = None
        self._failed: BlocksyncError | None = None
        self._closed = False
        self.listings = 0
        """LIST requests sent so far (round trips to the host for path completion)."""
        self.starts = 0
        """Workers started so far (connections, for a remote host)."""

    def devices(self) -> list[Device]:
        """The host's block devices (starting the worker again if an earlier start failed).

        Raises:
            BlocksyncError: the host cannot be reached or the worker cannot start.
        """
        return parse_devices(self._call(wire.OP_DEVICES, {}, retry=True, timeout=60.0)["devices"])

    def listing(self, folder: str, prefix: str) -> Listing:
        """The first entries of `folder` whose names start with `prefix` (see worker/listing.py).

        Raises:
            BlocksyncError: no worker (the start failed before), the directory cannot be read
                (RemoteError), or the answer is malformed (ProtocolError).
        """
        request = {"path": folder, "prefix": prefix, "max": LIST_LIMIT}
        answer = self._call(wire.OP_LIST, request, retry=False, timeout=LIST_TIMEOUT)
        return Listing.parse(answer, prefix, LIST_LIMIT)

    def _call(self, op: int, request: dict, retry: bool, timeout: float) -> dict:
        connection = self._started(retry)
        if op == wire.OP_LIST:
            with self._lock:
                self.listings += 1
        try:
            return connection.call_json(op, request, timeout)
        except ConnectionLost:
            with self._lock:
                if self._connection is connection:
                    self._connection = None  # the next request starts another worker
            connection.close()
            raise

    def _started(self, retry: bool) -> Connection:
        # One start at a time: requests that arrive meanwhile wait for it, rather than start
        # workers of their own. State changes under `_lock` alone, so `close` never waits.
        with self._starting:
            with self._lock:
                if self._closed:
                    raise ConnectionLost(f"{self.host.host or 'this machine'}: session closed")
                if self._connection is not None:
                    return self._connection
                if self._failed is not None and not retry:
                    raise self._failed
                self.starts += 1
            connection = Connection(self._factory(self.host), "host", queue.Queue[Frame]())
            try:
                connection.start()
            except BlocksyncError as exc:
                connection.close()
                with self._lock:
                    self._failed = exc
                raise
            with self._lock:
                if not self._closed:
                    self._failed, self._connection = None, connection
                    return connection
            _close_in_background(connection)
            raise ConnectionLost(f"{self.host.host or 'this machine'}: session closed")

    def close(self) -> None:
        """End the worker, in a thread of its own (closing waits for the worker's answer):
        never blocks the caller. Requests fail from now on."""
        with self._lock:
            self._closed = True
            connection, self._connection = self._connection, None
        if connection is not None:
            _close_in_background(connection)


def _close_in_background(connection: Connection) -> None:
    threading.Thread(target=connection.close, name="host-session-close", daemon=True).start()
