"""Provides Transport, a byte pipe to a worker process, and LocalTransport over subprocess pipes.

A transport knows how to start the worker's interpreter and move bytes; the framing, the
bootstrap payload and the handshake belong to `connection.Connection`.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import subprocess
import sys
import threading
from abc import ABC, abstractmethod
from pathlib import Path

from blocksync_tui.engine import bootstrap
from blocksync_tui.engine.errors import ConnectError


class Transport(ABC):
    """A started worker process: send bytes to its stdin, receive from its stdout."""

    label: str = "local"
    """Where the worker runs, for messages ("local", "user@host")."""
    host_key: str = "localhost"
    """Identifies the host, to tell whether two endpoints can be the same file."""
    shares_memory: bool = False
    """The worker runs on this host: chunk data may come through shared memory (worker/ring.py)."""
    round_trip: float = 0.0
    """Seconds a request and its answer take on the link, as measured while starting (0 here)."""
    send_window: int = 0
    """Bytes the worker's side lets us have in flight unacknowledged (an SSH server's channel
    window); 0: no such bound."""

    @property
    def host_identity(self) -> str:
        """What the host is, once started, for a digest cache to be keyed by: "local" here,
        an SSH host's key fingerprint there (the worker adds its machine id)."""
        return "local"

    @abstractmethod
    def start(self) -> None:
        """Start the worker's interpreter with the bootstrap stub."""

    @abstractmethod
    def send(self, data: bytes | memoryview) -> None:
        """Write all of `data` to the worker's stdin."""

    @abstractmethod
    def recv(self, size: int) -> bytes:
        """Up to `size` bytes from the worker's stdout; b"" at end of stream."""

    @abstractmethod
    def close(self) -> None:
        """Close stdin (the worker exits on EOF) and release everything."""

    @abstractmethod
    def exit_status(self, timeout: float) -> int | None:
        """The worker's exit status, or None if it is still running after `timeout` seconds."""

    def stderr_tail(self) -> str:
        """The last lines the worker wrote to stderr (for error messages)."""
        return "\n".join(getattr(self, "_stderr_lines", ()))

    def _drain_stderr(self, read) -> None:
        """Keep the last lines of stderr; an unread stderr would stall the worker."""
        self._stderr_lines: collections.deque[str] = collections.deque(maxlen=20)
        buffer = b""

        def loop() -> None:
            nonlocal buffer
            while True:
                try:
                    data = read(65536)
                except (OSError, ValueError):
                    return
                if not data:
                    if buffer:
                        self._stderr_lines.append(buffer.decode(errors="replace"))
                    return
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                self._stderr_lines.extend(line.decode(errors="replace") for line in lines)

        threading.Thread(target=loop, name=f"stderr-{self.label}", daemon=True).start()


class LocalTransport(Transport):
    """A worker on this machine, as a child process connected by pipes."""

    shares_memory = True

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable
        """The interpreter to run; by default the one running us."""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv, env = bootstrap.local_argv(self.python), None
        if self.python == sys.executable:
            argv, env = _without_site(argv)
        try:
            self.process = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                # A session of its own: a terminal's Ctrl-C goes to its foreground process
                # group, and is the controller's to handle (a cancel that completes the writes
                # in flight), not the worker's. A worker still ends with the controller: on EOF.
                start_new_session=True,
            )
        except OSError as exc:
            raise ConnectError(f"cannot start {self.python}: {exc.strerror}") from exc
        assert self.process.stderr is not None and self.process.stdout is not None
        for pipe in (self.process.stdin, self.process.stdout):
            _widen(pipe)
        self._drain_stderr(self.process.stderr.read)

    def send(self, data: bytes | memoryview) -> None:
        assert self.process is not None and self.process.stdin is not None
        view = memoryview(data)
        while view:
            view = view[self.process.stdin.write(view) :]

    def recv(self, size: int) -> bytes:
        # Through the file object, never a bare fd number: once closed it raises ValueError,
        # where a reused number could belong to the next run's worker and steal its banner.
        assert self.process is not None and self.process.stdout is not None
        return self.process.stdout.read(size) or b""

    def close(self) -> None:
        """Close stdin: the worker exits on EOF. Its stdout is left to the reader, which ends at EOF."""
        if self.process is None:
            return
        try:
            self.process.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        if self.exit_status(2.0) is None:
            self.process.kill()
            self.process.wait()

    def exit_status(self, timeout: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


PIPE_SIZE = 1 << 20
"""A pipe holds 64 KiB by default: a 1 MiB chunk would take 16 reads and 16 wake-ups."""
_F_SETPIPE_SZ = 1031


def _widen(pipe) -> None:
    """Make a pipe hold PIPE_SIZE (Linux; the unprivileged limit is 1 MiB). Best effort."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", _F_SETPIPE_SZ), PIPE_SIZE)
    except (OSError, ValueError, AttributeError):
        pass


def _without_site(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Start our own interpreter without `site`, the bulk of its start-up where many packages
    install .pth hooks (70 ms measured here, in each worker). The worker needs only the stdlib
    and the optional hash and codec modules: their directories go on PYTHONPATH instead."""
    dirs: list[str] = []
    for name in ("xxhash", "zstandard", "lz4"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin:
            top = str(Path(spec.origin).parent.parent)
            if top not in dirs:
                dirs.append(top)
    if os.environ.get("PYTHONPATH"):
        dirs.append(os.environ["PYTHONPATH"])
    return [argv[0], "-S", *argv[1:]], {**os.environ, "PYTHONPATH": os.pathsep.join(dirs)}
