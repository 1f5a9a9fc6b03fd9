#!/usr/bin/env python3
"""Provides the baseline of the benchmark: the classic lockstep "blocksync" design, re-implemented.

This is the seed design that blocksync-tui replaces, written from its description so that the
benchmark can measure it on the same data. One client process reads the source one chunk at a
time. For every chunk it sends a request to a server process next to the destination (a local
subprocess, or `python3 -c <this file>` over OpenSSH), which reads the same chunk and replies
with its SHA-1; the client hashes its own copy meanwhile. When the digests differ the client
sends the whole chunk and the server writes it in place. Nothing is pipelined: every chunk
costs a full round trip, and a 4 KiB change costs a whole chunk on the wire.

Unlike the original, which assumed a size that is a multiple of the chunk size, requests carry
offsets and lengths, so any size works; the destination must be at least as large as the source
and is never truncated or extended.

Usage:
    python3 bench/naive_blocksync.py SRC DST [-b BYTES] [--json REPORT]
    python3 bench/naive_blocksync.py SRC DST --ssh user@host [-p PORT] [-i KEY] [-o OPT]...

Stdlib only, so that the same file can run as the server on a remote host.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


def serve(path: str) -> int:
    """Answer requests on stdin/stdout until told to quit.

    Requests are one ASCII line each: `H offset length` (reply: hex SHA-1 and a newline),
    `W offset length` followed by `length` bytes of data (no reply) and `Q` (fsync, reply `OK`).
    The first line the server sends is the size of the destination.

    Args:
        path: The destination file or device.

    Returns:
        The exit status.
    """
    fd = os.open(path, os.O_RDWR)
    rx, tx = sys.stdin.buffer, sys.stdout.buffer
    tx.write(b"%d\n" % os.lseek(fd, 0, os.SEEK_END))
    tx.flush()
    while line := rx.readline():
        op, *args = line.split()
        if op == b"H":
            offset, length = map(int, args)
            tx.write(hashlib.sha1(os.pread(fd, length, offset)).hexdigest().encode() + b"\n")
            tx.flush()
        elif op == b"W":
            offset, length = map(int, args)
            data = rx.read(length)
            if len(data) != length:
                return 3
            view = memoryview(data)
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
        elif op == b"Q":
            os.fsync(fd)
            tx.write(b"OK\n")
            tx.flush()
            return 0
    return 2  # the client went away without saying goodbye


def server_command(dst: str, chunk: int, ssh: list[str] | None) -> list[str]:
    """Return the command that starts the server next to the destination.

    Args:
        dst: Destination path, as seen by the server.
        chunk: Chunk size (only for the process list; the client sends lengths).
        ssh: The ssh command and destination host, or None to run locally.

    Returns:
        The argv.
    """
    if ssh is None:
        return [sys.executable, str(Path(__file__).resolve()), "--server", dst, "-b", str(chunk)]
    # `python3 -` would read the script from stdin, which the protocol needs: ship it with -c.
    remote = ["python3", "-c", Path(__file__).read_text(), "--server", dst, "-b", str(chunk)]
    return [*ssh, shlex.join(remote)]


def read_line(rx: BinaryIO) -> bytes:
    """Read one reply line from the server.

    Args:
        rx: The server's stdout.

    Returns:
        The line without its newline.

    Raises:
        ConnectionError: If the server exited.
    """
    line = rx.readline()
    if not line.endswith(b"\n"):
        raise ConnectionError("the destination server exited unexpectedly")
    return line[:-1]


def sync(src: str, dst: str, chunk: int, ssh: list[str] | None) -> dict[str, int | float]:
    """Make `dst` equal to `src`, one chunk at a time in lockstep.

    Args:
        src: Local source file or device.
        dst: Destination path, local or on the ssh host.
        chunk: Chunk size in bytes.
        ssh: The ssh command and host, or None for a local destination.

    Returns:
        Counters: chunks, chunks_sent, bytes_out, bytes_in, bytes_on_wire, seconds.

    Raises:
        ConnectionError: If the server failed.
        ValueError: If the destination is smaller than the source.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(
        server_command(dst, chunk, ssh), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    tx, rx = proc.stdin, proc.stdout
    bytes_out = bytes_in = chunks = chunks_sent = 0
    try:
        line = read_line(rx)
        bytes_in += len(line) + 1
        dst_size = int(line)
        with open(src, "rb") as f:
            src_size = f.seek(0, os.SEEK_END)
            if dst_size < src_size:
                raise ValueError(
                    f"destination is smaller than the source ({dst_size} < {src_size})"
                )
            for offset in range(0, src_size, chunk):
                length = min(chunk, src_size - offset)
                request = b"H %d %d\n" % (offset, length)
                tx.write(request)
                tx.flush()
                # Hash our copy while the server reads and hashes its own.
                data = os.pread(f.fileno(), length, offset)
                local = hashlib.sha1(data).hexdigest().encode()
                remote = read_line(rx)
                bytes_out += len(request)
                bytes_in += len(remote) + 1
                chunks += 1
                if remote != local:
                    header = b"W %d %d\n" % (offset, length)
                    tx.write(header)
                    tx.write(data)
                    tx.flush()
                    bytes_out += len(header) + length
                    chunks_sent += 1
        tx.write(b"Q\n")
        tx.flush()
        bytes_out += 2
        if read_line(rx) != b"OK":
            raise ConnectionError("the destination server did not confirm the flush")
        bytes_in += 3
    finally:
        tx.close()
        status = proc.wait()
    if status:
        raise ConnectionError(f"the destination server exited with status {status}")
    return {
        "chunks": chunks,
        "chunks_sent": chunks_sent,
        "bytes_out": bytes_out,
        "bytes_in": bytes_in,
        "bytes_on_wire": bytes_out + bytes_in,
        "seconds": round(time.perf_counter() - started, 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the client or, with --server, the server.

    Args:
        argv: Arguments without the program name; defaults to sys.argv[1:].

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(
        description="Lockstep chunk-by-chunk block sync (benchmark baseline)."
    )
    parser.add_argument("src", nargs="?", help="source file or device")
    parser.add_argument("dst", help="destination file or device (on the ssh host with --ssh)")
    parser.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "-b", "--chunk", type=int, default=CHUNK, help="chunk size in bytes (1 MiB)"
    )
    parser.add_argument("--json", metavar="REPORT", help="write the counters to this JSON file")
    parser.add_argument("--ssh", metavar="USER@HOST", help="run the server on this host over ssh")
    parser.add_argument("-p", "--port", help="ssh port")
    parser.add_argument("-i", "--identity", help="ssh private key")
    parser.add_argument("-o", "--ssh-option", action="append", default=[], help="ssh -o option")
    args = parser.parse_args(argv)

    if args.server:
        try:
            return serve(args.dst)
        except OSError as exc:
            print(f"naive_blocksync server: {exc}", file=sys.stderr)
            return 1
    if args.src is None:
        parser.error("SRC is required")
    ssh = None
    if args.ssh:
        ssh = ["ssh", "-T", *(["-p", args.port] if args.port else [])]
        ssh += ["-i", args.identity] if args.identity else []
        for option in args.ssh_option:
            ssh += ["-o", option]
        ssh.append(args.ssh)
    try:
        stats = sync(args.src, args.dst, args.chunk, ssh)
    except (OSError, ValueError) as exc:
        print(f"naive_blocksync: {exc}", file=sys.stderr)
        return 1
    print(
        f"naive_blocksync: {stats['chunks']} chunks, {stats['chunks_sent']} sent, "
        f"{stats['bytes_on_wire']} bytes on the wire, {stats['seconds']} s",
        file=sys.stderr,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
