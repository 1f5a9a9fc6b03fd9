#!/usr/bin/env python3
"""Provides a TCP proxy that delays every byte by a fixed time in each direction (no netem here).

Each chunk read from one side is held until `delay` seconds after it arrived, then written to the
other side, so a round trip through the proxy costs 2 x delay on top of loopback. Bandwidth is
not limited: only latency is added, which is what bounds a windowed protocol (SSH channels) on a
long link. Order is kept; a half close (EOF) is passed on after the data before it.

    python3 bench/delay_proxy.py --target 127.0.0.1:2222 --delay-ms 25 [--listen 127.0.0.1:0]

prints "listening on HOST:PORT" on stdout once it accepts connections, and runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys

READ_SIZE = 256 * 1024
QUEUE_ITEMS = 512
"""Chunks in flight per direction before the proxy stops reading (bounds memory at 128 MiB)."""


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer, each chunk `delay` seconds after it was read."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(QUEUE_ITEMS)

    async def pump_in() -> None:
        try:
            while data := await reader.read(READ_SIZE):
                await queue.put((loop.time() + delay, data))
        except (ConnectionError, OSError):
            pass
        await queue.put((loop.time() + delay, None))

    async def pump_out() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    inbound = asyncio.ensure_future(pump_in())
    try:
        await pump_out()
    except (ConnectionError, OSError):
        pass
    finally:
        inbound.cancel()


async def _handle(
    client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
    target: tuple[str, int], delay: float,
) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.close()
        return
    _nodelay(client_writer)
    _nodelay(server_writer)
    try:
        await asyncio.gather(
            _pipe(client_reader, server_writer, delay), _pipe(server_reader, client_writer, delay)
        )
    finally:
        for writer in (client_writer, server_writer):
            writer.close()


async def serve(listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
    """Accept connections on `listen` and relay them to `target` with the delay, forever."""
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, target, delay), *listen, reuse_address=True
    )
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    """Run the proxy until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=_address, required=True, help="HOST:PORT to relay to")
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 0), help="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, required=True, help="added delay, each way")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.listen, args.target, args.delay_ms / 1000))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
