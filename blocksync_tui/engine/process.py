"""Provides EngineProcess: a SyncEngine in a child process, the same `api.Engine` as SyncEngine.

A UI that runs the engine in one of its own threads slows it down: both share one GIL, and the
engine's reader threads wait behind the UI's event loop (measured: a sync ran 1.6-1.8x slower
inside the app, even with nothing repainting). In its own process the engine keeps its speed.
Chunk states live in a shared memory-mapped file that the UI reads directly; progress snapshots
and the result come over a pipe, as the small frozen dataclasses below (one class per kind of
message, dispatched by type). Nothing here knows about Textual.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from blocksync_tui.engine import errors
from blocksync_tui.engine.chunkmap import ChunkMap, ChunkView, State
from blocksync_tui.engine.differences import Differences
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import BlocksyncError, Cancelled, ProtocolError
from blocksync_tui.engine.layout import Layout
from blocksync_tui.engine.options import SshOptions, SyncOptions
from blocksync_tui.engine.report import Progress, Report
from blocksync_tui.engine.sync import SyncEngine
from blocksync_tui.engine.transports import transport_factory

PROGRESS_INTERVAL = 0.1
"""Seconds between the progress snapshots the child sends."""
_DIRTY_BLOCK = 4096
"""The shared map is compared in blocks this large to find what changed between two polls."""
_DIRTY_BLOCKS_LIMIT = 64
"""Past this many changed blocks, the reader is told to redraw everything."""


class SharedChunkView(ChunkView):
    """The read side of a ChunkMap whose states live in shared memory (another process writes).

    The same `ChunkView` as the engine's own map; `generation` and `take_dirty` work by comparing
    with the copy taken at the previous poll, the counts by counting the states.
    """

    def __init__(self, states: mmap.mmap | bytearray, total: int) -> None:
        self.total = total
        self.states = states
        """One State byte per chunk, written by the engine's process."""
        self._seen = bytes(total)
        self._generation = 0
        self._lock = threading.Lock()
        self._pending_dirty: set[int] | None = set()

    def count(self, state: State) -> int:
        """How many chunks are in `state` now."""
        return self.snapshot().count(bytes([state]))

    def counts(self) -> dict[State, int]:
        """Chunk counts per state (a C-speed count over the states)."""
        now = self.snapshot()
        return {s: now.count(bytes([s])) for s in State}

    @property
    def generation(self) -> int:
        """Changes whenever the states changed since the last look."""
        self._refresh()
        return self._generation

    def take_dirty(self) -> set[int] | None:
        """The chunks changed since the last call, or None when everything should be redrawn."""
        self._refresh()
        with self._lock:
            dirty, self._pending_dirty = self._pending_dirty, set()
        return dirty

    def _refresh(self) -> None:
        now = self.snapshot()
        with self._lock:
            if now == self._seen:
                return
            changed = [
                start
                for start in range(0, self.total, _DIRTY_BLOCK)
                if now[start : start + _DIRTY_BLOCK] != self._seen[start : start + _DIRTY_BLOCK]
            ]
            if self._pending_dirty is not None:
                if len(changed) > _DIRTY_BLOCKS_LIMIT:
                    self._pending_dirty = None
                else:
                    old = self._seen
                    for start in changed:
                        end = min(self.total, start + _DIRTY_BLOCK)
                        self._pending_dirty.update(i for i in range(start, end) if now[i] != old[i])
            self._seen = now
            self._generation += 1


# -- the messages between the app's process and the engine's, one class a kind


@dataclass(frozen=True)
class Start:
    """Parent -> child, first: what to prepare."""

    source: Endpoint
    destination: Endpoint
    options: SyncOptions
    ssh: SshOptions


@dataclass(frozen=True)
class Prepared:
    """Child -> parent: both ends are open and checked; what the parent shows of them."""

    size: int
    total: int
    warnings: list[str]
    source_info: dict
    destination_info: dict
    algorithm: str
    compression: str
    notes: list[str]
    state_file: str
    source_layout: Layout | None = None
    destination_layout: Layout | None = None
    lanes_wanted: int = 1
    long_link: str = ""


@dataclass(frozen=True)
class PrepareFailed:
    """Child -> parent: prepare raised; enough to raise the same error in the parent."""

    kind: str
    """The BlocksyncError subclass's name."""
    message: str
    side: str | None
    details: dict


@dataclass(frozen=True)
class Run:
    """Parent -> child: run, writing chunk states into the shared file `map_file`."""

    map_file: str
    adopt: dict | None = None
    """A lane of a parallel run: the destination as the first lane opened it (SyncEngine.adopt)."""
    hold: bool = False
    """Once the destination is open for writing, say Writable and write nothing before Go."""
    linger: bool = False
    """After the run, keep the workers (and the destination's claim) until Release."""


@dataclass(frozen=True)
class Writable:
    """Child -> parent, with Run(hold=True): open for writing; what another open must expect."""

    expect: dict


@dataclass(frozen=True)
class Go:
    """Parent -> child, after Writable: start writing."""


@dataclass(frozen=True)
class Release:
    """Parent -> child, with Run(linger=True): the run may close its workers."""


@dataclass(frozen=True)
class Pause:
    """Parent -> child: stop issuing new work."""


@dataclass(frozen=True)
class Resume:
    """Parent -> child: continue after a Pause."""


@dataclass(frozen=True)
class Cancel:
    """Parent -> child: stop at the next chunk boundary."""


@dataclass(frozen=True)
class Close:
    """Parent -> child: stop the workers (before a Run: do not run at all)."""


@dataclass(frozen=True)
class ProgressUpdate:
    """Child -> parent, every PROGRESS_INTERVAL while running: a snapshot."""

    progress: Progress


@dataclass(frozen=True)
class Recorded:
    """Child -> parent, just before the outcome: where the differing chunks differ."""

    differences: Differences


@dataclass(frozen=True)
class Finished:
    """Child -> parent, last: the run ended well."""

    report: Report


@dataclass(frozen=True)
class Stopped:
    """Child -> parent, last: the run was cancelled."""

    message: str
    report: Report


@dataclass(frozen=True)
class Failed:
    """Child -> parent, last: the run failed (or the child's process went away: no report)."""

    kind: str
    message: str
    report: Report | None


Command = Pause | Resume | Cancel | Close | Go | Release
"""What the parent may send while the child runs."""
Outcome = Finished | Stopped | Failed
"""The child's last message of a run."""


class _Duplex:
    """One Connection to read (our stdin) and one to write (our stdout), used as one."""

    def __init__(self, reader: Connection, writer: Connection) -> None:
        self.recv, self.send = reader.recv, writer.send


def _child_main() -> None:
    """The engine's process: prepare, wait for "run" or "close", run, report.

    Messages are pickled between this process and its parent, on the same machine and user;
    the wire protocol to workers never is.
    """
    out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # the pipe carries messages; a stray print must not go into it
    conn = _Duplex(Connection(0, writable=False), Connection(out, readable=False))
    start: Start = conn.recv()
    engine = SyncEngine(start.source, start.destination, start.options, transport_factory(start.ssh))
    try:
        engine.prepare()
    except BlocksyncError as exc:
        conn.send(PrepareFailed(type(exc).__name__, str(exc), exc.side, _details(exc)))
        return
    conn.send(Prepared(engine.size, engine.chunk_map.total, engine.warnings,
                       engine.source_info, engine.destination_info,
                       engine.algorithm, engine.compression, engine.notes,
                       str(engine.state_file or ""),
                       engine.source_layout, engine.destination_layout,
                       engine.lanes_wanted, engine.long_link))
    command = conn.recv()
    if not isinstance(command, Run):
        engine.close()
        return
    shared = open_shared_map(command.map_file, engine.chunk_map.total)
    engine.chunk_map = ChunkMap(engine.chunk_map.total, buffer=shared)
    engine.adopt = command.adopt
    send_lock = threading.Lock()
    done = threading.Event()
    go = threading.Event()
    released = threading.Event()
    opened = threading.Event()
    if command.linger:
        def linger() -> None:  # a failed run ends at once: the parent then cancels the others
            if opened.is_set() and engine.phase != "failed":
                released.wait()

        engine.on_finished = linger
    if command.hold:
        def writable(expect: dict) -> None:
            opened.set()
            with send_lock:
                conn.send(Writable(expect))
            go.wait()  # a cancel or a close sets it too, and the run then writes nothing

        engine.on_writable = writable

    def listen() -> None:  # pause, resume and cancel arrive while run() blocks
        while not done.is_set():
            try:
                message: Command = conn.recv()
            except (EOFError, OSError):
                engine.cancel()  # the UI is gone: stop writing at the next chunk
                go.set()
                released.set()
                return
            _obey(engine, message)
            if isinstance(message, (Release, Close)):
                released.set()
            if not isinstance(message, (Pause, Resume, Release)):
                go.set()

    def report_progress() -> None:
        while not done.wait(PROGRESS_INTERVAL):
            with send_lock:
                conn.send(ProgressUpdate(engine.progress()))

    threading.Thread(target=listen, daemon=True).start()
    threading.Thread(target=report_progress, daemon=True).start()
    kind, text = "", ""
    try:
        engine.run()
    except Cancelled as exc:
        kind, text = "Cancelled", str(exc)
    except BlocksyncError as exc:
        kind, text = type(exc).__name__, str(exc)
    except Exception as exc:  # reported, never lost in a process nobody watches
        kind, text = "BlocksyncError", f"unexpected error: {type(exc).__name__}: {exc}"
    done.set()
    with send_lock:
        conn.send(ProgressUpdate(engine.progress()))
        if engine.differences is not None:
            conn.send(Recorded(engine.differences))
        report = engine.report()
        if not kind:
            conn.send(Finished(report))
        elif kind == "Cancelled":
            conn.send(Stopped(text, report))
        else:
            conn.send(Failed(kind, text, report))


def _obey(engine: SyncEngine, command: Command) -> None:
    """Carry out one command from the parent while the engine runs."""
    match command:
        case Pause():
            engine.pause()
        case Resume():
            engine.resume()
        case Cancel():
            engine.cancel()
        case Close():
            engine.close()
        case Go() | Release():
            pass  # the listener lets the run go on


class EngineProcess:
    """SyncEngine's API, with the engine in a child process. See SyncEngine for each method."""

    def __init__(
        self, source: Endpoint, destination: Endpoint, options: SyncOptions | None = None,
        ssh: SshOptions | None = None, map_file: str | None = None,
    ) -> None:
        """`map_file`: a shared state file of the whole device that the caller owns (the lanes of
        a parallel run share one); by default the process makes its own and removes it."""
        self.source = source
        self.destination = destination
        self.options = options or SyncOptions()
        self.options.check()
        self.ssh = ssh or SshOptions()
        self.size = 0
        self.warnings: list[str] = []
        self.source_info: dict = {}
        self.destination_info: dict = {}
        self.source_layout: Layout | None = None
        self.destination_layout: Layout | None = None
        self.algorithm = ""
        self.compression = ""
        self.notes: list[str] = []
        self.state_file = ""
        """The resume state file the child found or will write ("" if none)."""
        self.chunk_map: SharedChunkView = SharedChunkView(bytearray(), 0)
        self._conn = None
        self._process = None
        self._progress: Progress | None = None
        self._report: Report | None = None
        self._cancelled = False
        self._paused = False
        self._map_file: str | None = map_file
        self._owns_map = map_file is None
        self._running = False
        self.writable: dict | None = None
        """With run(hold=True): what the child's Writable said, once it said it."""
        self._writable = threading.Event()
        self.differences: Differences | None = None
        """Where the differing chunks differ, once the child's run ended (see api.Engine)."""

    def prepare(self) -> None:
        """Start the engine's process and prepare there; raises what SyncEngine.prepare raises."""
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        self._process = subprocess.Popen(
            # Imported, not run as __main__: what it pickles must name this module.
            [sys.executable, "-c", "from blocksync_tui.engine.process import _child_main; _child_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            start_new_session=True,  # a terminal's Ctrl-C is the parent's to handle (it cancels)
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._conn = _Duplex(
            Connection(os.dup(self._process.stdout.fileno()), writable=False),
            Connection(os.dup(self._process.stdin.fileno()), readable=False),
        )
        self._process.stdin.close()
        self._process.stdout.close()
        self._conn.send(Start(self.source, self.destination, self.options, self.ssh))
        info = self._receive()
        if isinstance(info, PrepareFailed):
            self.close()
            raise _rebuild(info.kind, info.message, info.side, info.details)
        if isinstance(info, Failed):  # the child's process went away
            self.close()
            raise _rebuild(info.kind, info.message, None)
        assert isinstance(info, Prepared), info
        self.size, self.warnings = info.size, info.warnings
        self.source_info, self.destination_info = info.source_info, info.destination_info
        self.algorithm, self.compression = info.algorithm, info.compression
        self.notes, self.state_file = info.notes, info.state_file
        self.lanes_wanted, self.long_link = info.lanes_wanted, info.long_link
        self.source_layout, self.destination_layout = info.source_layout, info.destination_layout
        if self._owns_map:
            self._map_file = shared_map_file(info.total)
        else:  # the caller's, made before the size was known; every lane finds the same size
            os.truncate(self._map_file, max(1, info.total))
        self.chunk_map = SharedChunkView(open_shared_map(self._map_file, info.total), info.total)

    def run(self, adopt: dict | None = None, hold: bool = False, linger: bool = False) -> Report:
        """Run in the child; returns its Report or raises Cancelled / BlocksyncError.

        `adopt`, `hold` and `linger` are for the lanes of a parallel run (see Run): with
        `hold`, the child waits once open for writing until `start_writing()`; with `linger`,
        it keeps its workers after the run until `release_claim()`.
        """
        if self._process is None:
            self.prepare()
        assert self._conn is not None
        assert self._map_file is not None
        self._conn.send(Run(self._map_file, adopt, hold, linger))
        self._running = True
        if self._paused:  # paused before the run began: it begins paused
            self._command(Pause())
        while isinstance(message := self._receive(), (ProgressUpdate, Writable, Recorded)):
            if isinstance(message, Writable):
                self.writable = message.expect
                self._writable.set()
            elif isinstance(message, Recorded):
                self.differences = message.differences
            else:
                self._progress = message.progress
        self.close()
        match message:
            case Finished(report):
                self._report = report
                return report
            case Stopped(text, report):
                self._report = report
                raise Cancelled(text)
            case Failed(kind, text, report):
                self._report = report
                raise _rebuild(kind, text, None)
        raise ProtocolError(f"the engine's process sent {type(message).__name__} during a run")

    def _receive(self) -> Prepared | PrepareFailed | ProgressUpdate | Recorded | Outcome:
        assert self._conn is not None
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            code = self._process.poll() if self._process else None
            return Failed("ConnectionLost", f"the engine's process ended (exit status {code})", None)

    def _command(self, command: Command) -> None:
        if self._conn is not None and self._report is None:
            try:
                self._conn.send(command)
            except OSError:
                pass

    def wait_writable(self, timeout: float) -> bool:
        """With run(hold=True) in another thread: whether the child said Writable in time."""
        return self._writable.wait(timeout)

    def start_writing(self) -> None:
        """With run(hold=True): let the child write."""
        self._command(Go())

    def release_claim(self) -> None:
        """With run(linger=True): let the child stop its workers."""
        self._command(Release())

    def cancel(self) -> None:
        """Stop at the next chunk boundary (see SyncEngine.cancel)."""
        self._cancelled = True
        self._command(Cancel())

    def pause(self) -> None:
        """Stop issuing new work until `resume()`."""
        self._paused = True
        if self._running:  # before Run, the child takes anything else for "do not run"
            self._command(Pause())

    def resume(self) -> None:
        """Continue after `pause()`."""
        self._paused = False
        if self._running:
            self._command(Resume())

    @property
    def cancelled(self) -> bool:
        """True once `cancel()` was called."""
        return self._cancelled

    def progress(self) -> Progress:
        """The latest snapshot from the child (at most PROGRESS_INTERVAL old)."""
        if self._progress is None:
            counts = self.chunk_map.counts()
            return Progress("connecting" if not self.size else "scanning", self.options.dry_run, 0.0,
                            self.size, self.options.chunk_size, self.chunk_map.total, 0, 0, 0, 0, 0,
                            counts, self._paused)
        p = self._progress
        # Ours, not the snapshot's: it may predate the last pause or resume we sent.
        return Progress(**{**p.__dict__, "paused": self._paused})

    @property
    def last_report(self) -> Report | None:
        """The child's report once it finished (None before, or if its process went away)."""
        return self._report

    def report(self) -> Report:
        """The child's report once it finished."""
        if self._report is None:
            raise BlocksyncError("the run has not finished")
        return self._report

    def close(self) -> None:
        """Stop the child (it closes its workers) and remove the shared map's file."""
        if self._conn is not None and self._report is None:
            self._command(Close())
        if self._process is not None:
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._map_file and self._owns_map:
            remove_shared_map(self._map_file)
            self._map_file = None


def shared_map_file(total: int) -> str:
    """A new zero-filled file of `total` chunk states, in shared memory where there is some."""
    fd, path = tempfile.mkstemp(prefix="blocksync-map-", dir=_shm_dir())
    os.ftruncate(fd, max(1, total))
    os.close(fd)
    return path


def open_shared_map(path: str, total: int) -> mmap.mmap:
    """The states of a shared map file, mapped (the file may be removed afterwards)."""
    with open(path, "r+b") as f:
        return mmap.mmap(f.fileno(), max(1, total))


def remove_shared_map(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _shm_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _details(exc: BlocksyncError) -> dict:
    """An error's own attributes (UnknownHostKey's fingerprint and key), to rebuild it with."""
    return {name: value for name, value in vars(exc).items()
            if name != "side" and isinstance(value, (str, int, float, bool, type(None)))}


def _rebuild(
    kind: str, message: str, side: str | None, details: dict | None = None
) -> BlocksyncError:
    """The child's error as the same class, with the same attributes, in this process."""
    cls = getattr(errors, kind, BlocksyncError)
    if not (isinstance(cls, type) and issubclass(cls, BlocksyncError)):
        cls = BlocksyncError
    error = cls(message)
    for name, value in (details or {}).items():
        setattr(error, name, value)
    return error.on(side) if side else error

