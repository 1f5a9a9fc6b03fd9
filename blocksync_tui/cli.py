"""Provides the command line: the TUI by default, `sync` and `compare` for headless runs.

Exit status: 0 identical or synced, 1 differences found (compare), 2 error, 130 interrupted
(SIGINT, Ctrl-C), 143 terminated (SIGTERM). Every fault ends with one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from blocksync_tui import __version__
from blocksync_tui.engine.api import Engine
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import BlocksyncError, Cancelled, DestinationAppeared, UsageError
from blocksync_tui.engine.options import MAX_CHUNK, MIN_CHUNK, SshOptions, SyncOptions
from blocksync_tui.engine.report import Report
from blocksync_tui.engine.parallel import engine_for
from blocksync_tui.engine.units import human_bytes, parse_size, size_text

if TYPE_CHECKING:
    from blocksync_tui.engine.owners import Owners
    from blocksync_tui.tui.app import BlocksyncApp

EXIT_OK = 0
EXIT_DIFFERS = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
"""128 + SIGINT; a SIGTERM ends with 128 + SIGTERM = 143."""
EXIT_TERMINATED = 143

HEADLESS_COMMANDS = ("sync", "compare", "forget")
APP_COMMAND = "app"
"""The app's command, which may be left out: any other first argument starts the app."""
DEBUG_ENV = "BLOCKSYNC_DEBUG"
"""Set to 1 for tracebacks of unexpected errors, like --debug (also for the app)."""

# -- sizes


def chunk_size_ok(size: int) -> bool:
    """Whether the engine takes this chunk size (its bounds, read from the engine)."""
    return size & (size - 1) == 0 and MIN_CHUNK <= size <= MAX_CHUNK


CHUNK_RANGE = f"a power of two from {size_text(MIN_CHUNK)} to {size_text(MAX_CHUNK)}"


# -- the parser


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: the usage itself is what --help is for."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"blocksync-tui: {message} (see {self.prog} --help)\n")


class _ChunkSizeAction(argparse.Action):
    """--chunk-size SIZE, checked here so that a bad one is named in one line."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
        values: Any, option_string: str | None = None,
    ) -> None:
        try:
            size = parse_size(str(values))
        except ValueError:
            size = 0
        if not chunk_size_ok(size):
            message = f"{option_string} {values}: must be {CHUNK_RANGE}"
            parser.exit(EXIT_ERROR, f"blocksync-tui: {message}\n")
        setattr(namespace, self.dest, size)


def _streams(text: str) -> int | None:
    """--streams N or auto (None); the range is SyncOptions.check's to refuse, in one line."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of lanes nor auto") from None


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    _add_endpoints(parser, optional=False)
    parser.add_argument(
        "--chunk-size", action=_ChunkSizeAction, default=1 << 20, metavar="SIZE",
        help=f"bytes per compared chunk, {CHUNK_RANGE} (default 1M)",
    )
    parser.add_argument(
        "--hash", dest="algorithm", metavar="NAME",
        help="chunk digest: xxh128, sha256, sha1, blake2b, md5 (default: fastest both ends have)",
    )
    parser.add_argument(
        "--compress", default="auto", choices=["auto", "none", "zlib", "lz4", "zstd"],
        help="compress chunk data on the wire (auto: zstd or lz4 if both ends have it)",
    )
    parser.add_argument(
        "--no-direct", dest="direct", action="store_false",
        help="compare digests even when both ends are on one machine (by default the "
        "destination's worker then reads the source itself and compares bytes)",
    )
    parser.add_argument("--streams", type=_streams, default=None, metavar="N|auto",
                        help="split the device into N lanes, each with its own process, workers "
                        "and SSH connections (default: one per two cores, at most 4, when a side "
                        "is remote; else 1)")
    parser.add_argument("--json", metavar="REPORT",
                        help="write the report as JSON to this file (-: to stdout)")
    parser.add_argument("--map", metavar="MAPFILE",
                        help="write the chunk states as a GNU ddrescue mapfile (+ equal or written, "
                        "- differing or failed, ? not compared), for ddrescueview and ddrescuelog")
    parser.add_argument("--changed-from", metavar="FILE",
                        help="compare only the ranges this list says changed (a ddrescue mapfile: + "
                        "unchanged, anything else changed; or thin_delta's XML), and a sample of the rest")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--full", dest="cache", action="store_const", const="full", default="auto",
                       help="read both sides, even where the destination's digest cache would "
                       "spare reading it; then keep a fresh cache")
    cache.add_argument("--forget", dest="cache", action="store_const", const="forget",
                       help="remove the destination's digest cache, and keep none after this run")
    parser.add_argument("--owners", nargs="?", const="source", choices=["source", "destination", "both"],
                        help="after the run, name the files and ext2/3/4 or xfs structures that own "
                        "the differing bytes, on the source (default), the destination or both, with "
                        "e2fsprogs on that side's host, or its kernel where the file system is mounted; "
                        "listed after the summary and in --json")
    parser.add_argument("--fs-offset", action="append", default=[], metavar="OFFSET",
                        help="with --owners: a file system starts at this byte offset (a "
                        "partition; may be repeated); by default the whole device is one")
    parser.add_argument("--owners-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="with --owners: give up the lookup after this long (default 60)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback of an error (or set {DEBUG_ENV}=1)")
    _add_ssh_options(parser)


def _add_ssh_options(parser: argparse.ArgumentParser) -> None:
    """The SSH options, one group for every command (the app's too)."""
    ssh = parser.add_argument_group("SSH (remote endpoints)")
    ssh.add_argument("-i", "--identity", action="append", default=[], metavar="KEY",
                     help="private key file (may be repeated); ~/.ssh/config and the agent also apply")
    ssh.add_argument("--ssh-config", metavar="FILE", help="ssh_config file (default ~/.ssh/config)")
    ssh.add_argument("--known-hosts", metavar="FILE", help="the only known_hosts file to read and write (default: ssh_config's "
                     "UserKnownHostsFile and GlobalKnownHostsFile)")
    ssh.add_argument("--accept-new-host-key", action="store_true",
                     help="trust and remember a host key not yet in known_hosts (never a changed one)")
    ssh.add_argument("--remote-python", default="python3", metavar="PATH",
                     help="Python 3.8+ interpreter on remote hosts (default python3)")
    ssh.add_argument("--sudo", action="store_true", help="run remote workers under sudo -n")


def _add_endpoints(parser: argparse.ArgumentParser, optional: bool) -> None:
    """SOURCE and DESTINATION; the app may start without them (then they are picked there)."""
    where = "file or block device: /path or [user@]host[:port]:/path"
    more: dict[str, Any] = {"nargs": "?", "default": ""} if optional else {}
    parser.add_argument("source", help=where, **more)
    parser.add_argument("destination", help=where, **more)


def _add_app_options(parser: argparse.ArgumentParser) -> None:
    """The app's arguments: endpoints to fill the setup screen with, the demo, and SSH."""
    _add_endpoints(parser, optional=True)
    parser.add_argument("--demo", action="store_true",
                        help="open on two generated demo images (in a temp dir) and dry-run them")
    parser.add_argument("--demo-size", type=int, default=256, metavar="MIB",
                        help="demo image size in MiB (default 256)")
    _add_ssh_options(parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = _Parser(
        prog="blocksync-tui",
        description="Synchronize block devices and disk images, rewriting only the chunks "
        "that differ. With no command: the full-screen app.",
        epilog="Exit status: 0 identical or synced, 1 differences found (compare), "
        "2 error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).",
    )
    parser.add_argument("--version", action="version", version=f"blocksync-tui {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")  # of class _Parser too
    sync = commands.add_parser("sync", help="make DESTINATION identical to SOURCE")
    _add_run_options(sync)
    sync.add_argument("--verify", action="store_true",
                      help="re-read what was written, from disk, and compare digests")
    sync.add_argument("-y", "--yes", action="store_true",
                      help="do not ask before writing to a block device")
    sync.add_argument("--no-resume", dest="resume", action="store_false",
                      help="neither pick up from nor record a resume state (by default an "
                      "interrupted sync of the same pair resumes where it stopped)")
    sync.add_argument("--state", metavar="FILE",
                      help="the resume state file (default: one per pair under "
                      "~/.cache/blocksync-tui/resume/)")
    sync.add_argument("--no-compare", dest="compare", action="store_false",
                      help="copy every chunk without comparing, for a destination known to differ "
                      "everywhere (a disk reused for another image): the source is read once and "
                      "sent, zeros become holes or BLKZEROOUT")
    compare = commands.add_parser("compare", help="dry run: report what differs, write nothing")
    _add_run_options(compare)
    forget = commands.add_parser(
        "forget", help="remove kept digest caches: of the destinations named, or all of them",
        description="Remove the digest caches kept of destinations (in $XDG_CACHE_HOME/blocksync-tui), "
        "named as they were written in the runs (/dev/sdb, host:/dev/sdb); with none named, all.",
    )
    forget.add_argument("destination", nargs="*", help="a destination as it was written in its runs")
    app = commands.add_parser(
        APP_COMMAND, help="the full-screen app (the default: `blocksync-tui [SOURCE DESTINATION]`)",
        description="The full-screen app: pick endpoints, dry-run, review, sync. It is also what "
        "runs with no command, so `app` may be left out.",
    )
    _add_app_options(app)
    return parser


def _ssh_options(args: argparse.Namespace) -> SshOptions:
    return SshOptions(
        identity_files=list(args.identity),
        config_file=args.ssh_config,
        known_hosts=args.known_hosts,
        accept_new_host_key=args.accept_new_host_key,
        python=args.remote_python,
        sudo=args.sudo,
    )


# -- output that a closed pipe cannot turn into a traceback


def _drop(stream: IO[str]) -> None:
    """After EPIPE: point the stream's descriptor at /dev/null, so that what is still buffered
    (flushed again at exit) goes nowhere instead of into "Exception ignored" on stderr."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (captured by a test): nothing is flushed at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _write(stream: IO[str], write: Callable[[], object]) -> None:
    """Run one write to `stream` and flush it; a reader that went away (`| head`) only means
    that nobody reads on."""
    try:
        write()
        stream.flush()
    except BrokenPipeError:
        _drop(stream)


def _say(text: str) -> None:
    """A line on stderr."""
    _write(sys.stderr, lambda: print(text, file=sys.stderr))


def _out(text: str) -> None:
    """A line on stdout."""
    _write(sys.stdout, lambda: print(text))


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- signals


class Interrupted(BaseException):
    """Raised in the main thread by a signal that ends the command at once.

    A BaseException like KeyboardInterrupt, so that no `except Exception` on its way stops it.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


STOP_GRACE = 2.0
"""Seconds a stop may spend closing workers on its way out (the engine asks each to exit,
and a busy or hung one may not answer for its 10 s timeout); then the CLI leaves without
them. They end anyway: on EOF, once this process is gone. BLOCKSYNC_STOP_GRACE sets another
(a service manager that waits longer before its SIGKILL may give the workers more time)."""


def _stop_grace() -> float:
    try:
        return max(0.0, float(os.environ.get("BLOCKSYNC_STOP_GRACE", STOP_GRACE)))
    except ValueError:
        return STOP_GRACE


class _Signals:
    """SIGINT (a terminal's Ctrl-C) and SIGTERM (a service manager's stop) during one command.

    - Until the run starts, nothing has been written: a signal stops at once.
    - While it runs, the first signal requests a cancel, which the wait loop hands to the
      engine: it stops at a chunk boundary, and the writes sent are completed and flushed. A
      second signal stops at once, for a cancel stuck behind a hung device or host.
    - Once the run has ended, signals are ignored: only its result is left to write, whole.

    A stop raises Interrupted, so that what it leaves (workers, the progress bar) is closed on
    the way out. Should that take longer than STOP_GRACE, or a signal come meanwhile, the
    process exits on the spot. Either way exactly one line says why: whoever takes `_word`
    first prints it. The first signal sets the exit status: 128 + its number.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        """The first signal, if any."""
        self.cancel_requested = False
        self._mode = "start"
        """start (nothing written yet), run, stopping (an Interrupted is on its way out), or
        quiet (the outcome is being written)."""
        self._dry_run = False
        self._stopping = ""
        """The line of the stop on its way out."""
        self._word = threading.Lock()
        """Taken, never released, by whoever prints a stop's line (never blocking on it: the
        signal handler may run while the main thread holds it)."""
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread can set handlers
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        # Started now, not by the handler: starting a thread takes locks that the main
        # thread, interrupted by the handler, may hold.
        threading.Thread(target=self._watch, name="stop-watch", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finished.set()
        self._stop.set()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def running(self, dry_run: bool) -> None:
        """The run starts: a first signal now cancels it."""
        self._mode, self._dry_run = "run", dry_run

    def quiet(self) -> None:
        """The command's outcome is decided: ignore signals while it is written."""
        self._mode = "quiet"

    def take_word(self) -> bool:
        """Whether the caller is the one to print the stop's line."""
        return self._word.acquire(blocking=False)

    @property
    def status(self) -> int:
        """The exit status for an interrupted command."""
        return 128 + (self.received or signal.SIGINT)

    @property
    def name(self) -> str:
        """The first signal's name, "SIGINT" or "SIGTERM"."""
        return signal.Signals(self.received or signal.SIGINT).name

    def _handle(self, signum: int, frame: object) -> None:
        # It runs in the main thread between two bytecodes, maybe inside the engine's
        # progress(): so it only sets flags, or raises to leave at once.
        if self._mode == "quiet":
            return
        if self.received is None:
            self.received = signum
        if self._mode == "stopping":  # impatient, or the way out is stuck
            self._leave_now()
            return
        if self._mode == "run" and not self.cancel_requested:
            self.cancel_requested = True
            return
        self._stopping = self._stop_message(signal.Signals(signum).name)
        self._mode = "stopping"
        self._stop.set()
        raise Interrupted(self.status, self._stopping)

    def _watch(self) -> None:
        self._stop.wait()
        if not self._finished.wait(_stop_grace()):
            self._leave_now()

    def _leave_now(self) -> None:
        """Print the stop's line, unless the main thread is printing it, and exit."""
        if not self.take_word():
            return  # the main thread has it: it ends in a moment
        if sys.stderr.isatty():
            sys.stderr.write("\033[?25h")  # the progress bar hid the cursor
        _say(f"blocksync-tui: {self._stopping}")
        os._exit(self.status)

    def _stop_message(self, name: str) -> str:
        if self._mode == "start":
            return f"{name}: stopped before anything was written"
        if self._dry_run:
            return f"{name} while cancelling: stopped at once; the destination was not touched"
        return (
            f"{name} while cancelling: stopped at once, without waiting for the writes in "
            "flight; the destination is partly updated; run the sync again to finish it"
        )


# -- headless runs


def run_headless(args: argparse.Namespace, signals: _Signals | None = None) -> int:
    """Run `sync` or `compare` with a progress bar; return the exit status."""
    from blocksync_tui.progress import ProgressDisplay, owners_lines

    signals = signals or _Signals()
    if args.command == "forget":
        return _forget(args.destination)
    dry_run = args.command == "compare"
    _fs_offsets(args)  # a bad one is refused before anything runs
    options = SyncOptions(
        chunk_size=args.chunk_size,
        algorithm=args.algorithm,
        compress=args.compress,
        verify=getattr(args, "verify", False),
        dry_run=dry_run,
        direct=args.direct,
        compare=getattr(args, "compare", True),
        streams=args.streams,
        changed_from=args.changed_from,
        resume=getattr(args, "resume", True),
        state_file=getattr(args, "state", None),
        cache=args.cache,
    )
    engine = _prepared(args, options)
    told = set(engine.warnings)  # a sync's include each file system it overwrites: said before any prompt
    display = ProgressDisplay(enabled=not args.quiet and sys.stderr.isatty())
    signals.running(dry_run)
    outcome = _run(engine, display, signals)
    if isinstance(outcome, DestinationAppeared) and not engine.cancelled:
        # Absent when it was checked, there now: it is compared like any destination.
        _say(f"blocksync-tui: {outcome}; checking it again")
        engine = _prepared(args, options)
        told |= set(engine.warnings)
        outcome = _run(engine, display, signals)
    owners = _owners(engine, args, signals) if args.owners and not isinstance(outcome, BaseException) else []
    signals.quiet()
    report = engine.report()
    report.owners = [o.to_dict() for o in owners]
    if isinstance(outcome, Cancelled):
        report.outcome, report.message = "cancelled", str(outcome)
    elif isinstance(outcome, BaseException):
        report.outcome, report.message = "failed", str(outcome)
    if args.json:
        _save(report, args.json)
    if getattr(args, "map", None):
        _save_map(engine, report, args.map)
    if isinstance(outcome, Cancelled):
        if signals.received is None:
            _say(f"blocksync-tui: {outcome}")
            return EXIT_ERROR
        _say(f"blocksync-tui: {signals.name}: {outcome}")
        return signals.status
    if isinstance(outcome, BaseException):
        raise outcome
    for warning in report.warnings:  # what the run found on its way (a sample that differed)
        if warning not in told:
            _say(f"blocksync-tui: warning: {warning}")
    # With the report on stdout, the summary goes to stderr: stdout stays valid JSON.
    show = _say if args.json == "-" else _out
    show(display.summary(report))
    for side in owners:
        for line in owners_lines(side):
            show(line)
    for error in report.errors[:20]:
        _say(f"blocksync-tui: error: {error}")
    if report.errors:
        return EXIT_ERROR
    return EXIT_DIFFERS if dry_run and report.outcome == "differs" else EXIT_OK


def _prepared(args: argparse.Namespace, options: SyncOptions) -> Engine:
    """The run's engine, prepared (its warnings and notes said) and, for a block device
    destination, confirmed."""
    engine = engine_for(Endpoint.parse(args.source), Endpoint.parse(args.destination), options,
                        _ssh_options(args))
    engine.prepare()
    for warning in engine.warnings:
        _say(f"blocksync-tui: warning: {warning}")
    for note in engine.notes:
        _say(f"blocksync-tui: {note}")
    dest_info = engine.destination_info
    if not options.dry_run and dest_info.get("kind") == "block" and not args.yes:
        if not _confirm_device(str(engine.destination), dest_info):
            engine.close()
            raise UsageError(f"not writing to block device {engine.destination} without --yes")
    return engine


def _forget(destinations: list[str]) -> int:
    """`forget`: remove the digest caches of these destinations, or of all."""
    from blocksync_tui.engine import digest_cache

    names = [str(Endpoint.parse(name)) for name in destinations]
    removed = digest_cache.forget(names)
    _out(f"blocksync-tui: removed {removed} digest cache{'' if removed == 1 else 's'} from {digest_cache.cache_dir()}")
    return EXIT_OK


def _run(engine: Engine, display: Any, signals: _Signals) -> Report | BaseException:
    """Run the engine in a thread while showing its progress; its report, or what it raised."""
    result: list[Report | BaseException] = []
    done = threading.Event()

    def work() -> None:
        try:
            result.append(engine.run())
        except BaseException as exc:  # handed to the main thread, which reports it
            result.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=work, name="engine", daemon=True)
    with display:
        thread.start()
        # An Event set after the result, not Thread.join(): an exception raised inside
        # join() marks a thread that still runs as stopped (so there was no result to read).
        while not done.wait(0.1):
            if signals.cancel_requested and not engine.cancelled:
                engine.cancel()
            display.update(engine.progress(), cancelling=engine.cancelled)
        display.update(engine.progress())
    return result[0]


def _fs_offsets(args: argparse.Namespace) -> list[int]:
    """The --fs-offset values, in bytes, sorted.

    Raises:
        UsageError: one is not a size.
    """
    try:
        return sorted({parse_size(text) for text in args.fs_offset})
    except ValueError as exc:
        raise UsageError(f"--fs-offset: {exc}") from None


def _owners(engine: Engine, args: argparse.Namespace, signals: _Signals) -> list[Owners]:
    """Look up the owners of the differing bytes on the sides asked for, in a thread: a first
    signal skips the lookup (the run's outcome stands), as a second would stop at once."""
    from blocksync_tui.engine.owners import FsRegion, owners_after
    from blocksync_tui.engine.transports import transport_factory

    offsets = _fs_offsets(args)
    regions = None
    if offsets:
        ends = offsets[1:] + [engine.size]
        named = len(offsets) > 1
        regions = [FsRegion(start, max(0, end - start), name=f"@{start:#x}" if named else "")
                   for start, end in zip(offsets, ends)]
    sides = ["source", "destination"] if args.owners == "both" else [args.owners]
    found: list[Owners] = []
    done = threading.Event()

    def work() -> None:
        try:
            for side in sides:
                found.append(owners_after(engine, side, transport_factory(_ssh_options(args)),
                                          regions, args.owners_timeout))
        finally:
            done.set()

    threading.Thread(target=work, name="owners", daemon=True).start()
    while not done.wait(0.1):
        if signals.cancel_requested:
            _say(f"blocksync-tui: {signals.name}: the owners lookup was skipped")
            return []
    return found


def _save(report: Report, path: str) -> None:
    """Write the JSON report to a file, or to stdout for "-"."""
    if path == "-":
        _write(sys.stdout, lambda: report.save("-"))
        return
    try:
        report.save(path)
    except OSError as exc:
        raise UsageError(f"cannot write the report to {path}: {exc.strerror or exc}") from exc


def _save_map(engine: Engine, report: Report, path: str) -> None:
    """Write the chunk states as a ddrescue mapfile."""
    from blocksync_tui.engine.mapfile import ddrescue_map

    text = ddrescue_map(engine.chunk_map, report.chunk_size, report.size)
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write the map to {path}: {exc.strerror or exc}") from exc


def _confirm_device(name: str, info: dict) -> bool:
    """Ask on the terminal to type the device's name; False if there is no terminal. The
    warnings printed just before say what else is at stake (each file system the source does
    not have there)."""
    if not sys.stdin.isatty():
        return False
    _out(f"About to overwrite block device {name} ({human_bytes(info.get('size', 0))}) where it differs.")
    try:
        answer = input(f"Type {name} to go ahead: ")
    except EOFError:
        return False
    except BrokenPipeError:  # nobody can read the question
        _drop(sys.stdout)
        return False
    return answer.strip() == name


# -- the entry point


def _debug_from_env() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _guarded(work: Callable[[], int], debug: bool, hint: str, ending: Callable[[], None]) -> int:
    """Run a command; whatever it raises ends it with one line on stderr and exit status 2,
    after the traceback with `debug`. `ending` is called first (it silences signals)."""
    try:
        return work()
    except BlocksyncError as exc:
        ending()
        if debug:
            _say(traceback.format_exc().rstrip())
        _say(f"blocksync-tui: {_one_line(str(exc))}")
    except Exception as exc:
        ending()
        if debug:
            _say(traceback.format_exc().rstrip())
        what = type(exc).__name__ + (f": {_one_line(str(exc))}" if str(exc).strip() else "")
        _say(f"blocksync-tui: internal error: {what}" + ("" if debug else f" ({hint})"))
    return EXIT_ERROR


def _headless_main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error: already printed
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    debug = getattr(args, "debug", False) or _debug_from_env()
    with _Signals() as signals:
        try:
            return _guarded(
                lambda: run_headless(args, signals), debug,
                "run with --debug for the traceback", signals.quiet,
            )
        except Interrupted as exc:
            signals.quiet()
            if signals.take_word():
                _say(f"blocksync-tui: {exc}")
            else:  # the watch thread has it: let it print and exit, not the end of main
                time.sleep(_stop_grace())
            return exc.status


def make_app(argv: Sequence[str]) -> BlocksyncApp:
    """The app for the app's command line (without the `app` command itself).

    Raises:
        SystemExit: --help, or a usage error (already printed).
    """
    from blocksync_tui.tui.launch import make_app as make  # the headless commands load no tui
    from blocksync_tui.tui.request import RunRequest

    args = build_parser().parse_args([APP_COMMAND, *argv])
    request = RunRequest(args.source, args.destination, SyncOptions(), _ssh_options(args))
    return make(request, demo_size=args.demo_size << 20 if args.demo else None)


def _app_main(argv: list[str]) -> int:
    from blocksync_tui.tui.launch import launch

    if argv[:1] == [APP_COMMAND]:
        argv = argv[1:]
    try:
        app = make_app(argv)
    except SystemExit as exc:  # --help, or a usage error: already printed
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    return _guarded(
        lambda: launch(app), _debug_from_env(), f"set {DEBUG_ENV}=1 for the traceback",
        lambda: None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `blocksync-tui` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in (*HEADLESS_COMMANDS, "-h", "--help", "--version"):
            status = _headless_main(argv)
        else:
            status = _app_main(argv)
    except KeyboardInterrupt:  # before the headless handlers are set, or in the app's start
        _say("blocksync-tui: interrupted")
        status = EXIT_INTERRUPTED
    _write(sys.stdout, lambda: None)  # what argparse left buffered: a closed pipe is no error
    return status
