"""Provides the bootstrap that starts a worker from its sources sent over stdin.

Nothing is installed on the worker's host. `python3 -c STUB` reads a length line and that many
bytes of the loader (`worker/loader.py`) and runs it; the loader reads a second length line and
that many bytes of the bundle: every other module of the `worker` package, each as its name, its
length and its source, compressed once with zlib. It installs them as the package
`blocksync_worker` and starts the request loop; from then on stdin and stdout carry frames.

The worker reports in its HELLO the sha256 of the whole payload as it received it (both length
lines, the loader, the compressed bundle); the controller checks it against `payload_sha256`.
"""

from __future__ import annotations

import hashlib
import shlex
import zlib
from functools import lru_cache
from pathlib import Path

EXIT_BAD_PAYLOAD = 95
"""The loader's exit status when the payload arrived truncated or corrupted (worker/loader.py)."""
EXIT_PYTHON_TOO_OLD = 96
"""The stub's exit status when the remote Python is older than 3.8."""
EXIT_COMMAND_NOT_FOUND = 127
"""What a POSIX shell returns when the Python interpreter does not exist."""

PACKAGE_DIR = Path(__file__).with_name("worker")
LOADER = "loader.py"

STUB = (
    # `-c` puts the current directory (a remote user's home) first on sys.path: a zlib.py or
    # hashlib.py there would be imported in place of the standard library's. It goes first.
    "import sys;sys.path[:1]==['']and sys.path.pop(0);sys.version_info<(3,8)and sys.exit(96);b=sys.stdin.buffer;"
    "s=b.read(int(b.readline()));"
    "exec(compile(s,'blocksync_worker/loader.py','exec'),{'__name__':'__blocksync_loader__','LOADER':s})"
)


@lru_cache(maxsize=1)
def loader_source() -> bytes:
    """The loader's source, exactly as the stub will run it."""
    return (PACKAGE_DIR / LOADER).read_bytes()


@lru_cache(maxsize=1)
def module_sources() -> dict[str, bytes]:
    """The shipped modules by name ("__init__", "protocol", ...), exactly as they will run."""
    return {
        path.stem: path.read_bytes()
        for path in sorted(PACKAGE_DIR.glob("*.py"))
        if path.name != LOADER
    }


def bundle() -> bytes:
    """Every shipped module as "<name> <length>\\n<source>", uncompressed."""
    return b"".join(
        b"%s %d\n" % (name.encode(), len(source)) + source
        for name, source in module_sources().items()
    )


@lru_cache(maxsize=1)
def payload() -> bytes:
    """What to write on the worker's stdin right after starting it."""
    loader = loader_source()
    packed = zlib.compress(bundle(), 9)
    return b"%d\n" % len(loader) + loader + b"%d\n" % len(packed) + packed


def payload_sha256() -> str:
    """The digest the worker must report in its HELLO."""
    return hashlib.sha256(payload()).hexdigest()


def local_argv(python: str) -> list[str]:
    """The argv of a local worker process."""
    return [python, "-c", STUB]


def remote_command(python: str = "python3", sudo: bool = False) -> str:
    """The shell command that starts a worker on an SSH host; every word is quoted."""
    words = [python, "-c", STUB]
    if sudo:
        words = ["sudo", "-n", "--", *words]
    return " ".join(shlex.quote(w) for w in words)
