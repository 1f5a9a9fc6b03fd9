"""Provides list_devices: the block devices of a host, as its own worker reads them."""

from __future__ import annotations

import queue
from dataclasses import dataclass, field

from blocksync_tui.engine.worker import protocol as wire
from blocksync_tui.engine.connection import Connection, Frame
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.transports import TransportFactory, local_only


@dataclass(frozen=True)
class Device:
    """A block device (or partition) as a picker shows it."""

    path: str
    size: int
    model: str = ""
    mounted: tuple[str, ...] = ()
    holders: tuple[str, ...] = ()
    readonly: bool = False
    partitions: tuple[Device, ...] = field(default=())

    @property
    def in_use(self) -> bool:
        """Mounted or held, itself or through a partition: never a destination."""
        return bool(self.mounted or self.holders) or any(p.in_use for p in self.partitions)


def _device(entry: dict) -> Device:
    return Device(
        path=entry["path"],
        size=entry.get("size", 0),
        model=entry.get("model", ""),
        mounted=tuple(entry.get("mounted", ())),
        holders=tuple(entry.get("holders", ())),
        readonly=bool(entry.get("readonly")),
        partitions=tuple(_device(p) for p in entry.get("partitions", ())),
    )


def parse_devices(entries: list[dict]) -> list[Device]:
    """The devices of a DEVICES answer."""
    return [_device(entry) for entry in entries]


def list_devices(host: Endpoint, factory: TransportFactory = local_only) -> list[Device]:
    """Start a worker on `host` (only its host part matters) and ask it for its block devices.

    Raises:
        BlocksyncError: the host cannot be reached or the worker cannot start.
    """
    conn = Connection(factory(host), "inventory", queue.Queue[Frame]())
    try:
        conn.start()
        reply = conn.call_json(wire.OP_DEVICES, {})
    finally:
        conn.close()
    return parse_devices(reply["devices"])
