"""Provides the one-line bootstrap that starts a worker from its source sent over stdin.

Nothing is installed on the worker's host: `python3 -c STUB` reads a length line and that many
bytes of zlib-compressed worker source from stdin, then runs it. After that, stdin and stdout
carry frames.
"""

from __future__ import annotations

import hashlib
import shlex
import zlib
from functools import lru_cache
from pathlib import Path

EXIT_PYTHON_TOO_OLD = 96
"""The stub's exit status when the remote Python is older than 3.8."""
EXIT_COMMAND_NOT_FOUND = 127
"""What a POSIX shell returns when the Python interpreter does not exist."""

STUB = (
    "import sys,zlib;sys.version_info<(3,8)and sys.exit(96);b=sys.stdin.buffer;"
    "n=int(b.readline());s=zlib.decompress(b.read(n));"
    "exec(compile(s,'blocksync_worker.py','exec'),"
    "{'__name__':'__blocksync_worker__','WORKER_SOURCE':s})"
)


@lru_cache(maxsize=1)
def worker_source() -> bytes:
    """The worker's source, exactly as it will run on the other side."""
    return Path(__file__).with_name("worker.py").read_bytes()


def worker_sha256() -> str:
    """The digest the worker must report in its HELLO."""
    return hashlib.sha256(worker_source()).hexdigest()


@lru_cache(maxsize=1)
def payload() -> bytes:
    """What to write on the worker's stdin right after starting it."""
    packed = zlib.compress(worker_source(), 9)
    return b"%d\n" % len(packed) + packed


def local_argv(python: str) -> list[str]:
    """The argv of a local worker process."""
    return [python, "-c", STUB]


def remote_command(python: str = "python3", sudo: bool = False) -> str:
    """The shell command that starts a worker on an SSH host; every word is quoted."""
    words = [python, "-c", STUB]
    if sudo:
        words = ["sudo", "-n", "--", *words]
    return " ".join(shlex.quote(w) for w in words)
