"""Provides the command line: the TUI by default, `sync` and `compare` for headless runs.

Exit status: 0 identical or synced, 1 differences found (compare), 2 error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
from collections.abc import Sequence

from blocksync_tui import __version__
from blocksync_tui.endpoint import Endpoint
from blocksync_tui.engine.errors import BlocksyncError, Cancelled, UsageError
from blocksync_tui.engine.report import Report
from blocksync_tui.engine.sync import SyncEngine, SyncOptions
from blocksync_tui.engine.transports import SshOptions, transport_factory

EXIT_OK = 0
EXIT_DIFFERS = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

_SIZE = re.compile(r"^(\d+)\s*([KMG]?)(i?B)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse "1048576", "64K", "1M", "4MiB" into bytes.

    Raises:
        argparse.ArgumentTypeError: not a size.
    """
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 65536, 64K, 1M)")
    factor = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match[2].upper()]
    return int(match[1]) * factor


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="file or block device: /path or [user@]host[:port]:/path")
    parser.add_argument("destination", help="file or block device: /path or [user@]host[:port]:/path")
    parser.add_argument(
        "--chunk-size", type=parse_size, default=1 << 20, metavar="SIZE",
        help="bytes per compared chunk, a power of two from 4K to 16M (default 1M)",
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
    parser.add_argument("--json", metavar="REPORT", help="write the report as JSON to this file")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ssh = parser.add_argument_group("SSH (remote endpoints)")
    ssh.add_argument("-i", "--identity", action="append", default=[], metavar="KEY",
                     help="private key file (may be repeated); ~/.ssh/config and the agent also apply")
    ssh.add_argument("--ssh-config", metavar="FILE", help="ssh_config file (default ~/.ssh/config)")
    ssh.add_argument("--known-hosts", metavar="FILE", help="known_hosts file (default ~/.ssh/known_hosts)")
    ssh.add_argument("--accept-new-host-key", action="store_true",
                     help="trust and remember a host key not yet in known_hosts (never a changed one)")
    ssh.add_argument("--remote-python", default="python3", metavar="PATH",
                     help="Python 3.8+ interpreter on remote hosts (default python3)")
    ssh.add_argument("--sudo", action="store_true", help="run remote workers under sudo -n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(
        prog="blocksync-tui",
        description="Synchronize block devices and disk images, rewriting only the chunks "
        "that differ. With no command: the full-screen app.",
        epilog="Exit status: 0 identical or synced, 1 differences found (compare), "
        "2 error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"blocksync-tui {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    sync = commands.add_parser("sync", help="make DESTINATION identical to SOURCE")
    _add_run_options(sync)
    sync.add_argument("--verify", action="store_true",
                      help="re-read what was written, from disk, and compare digests")
    sync.add_argument("-y", "--yes", action="store_true",
                      help="do not ask before writing to a block device")
    compare = commands.add_parser("compare", help="dry run: report what differs, write nothing")
    _add_run_options(compare)
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


def run_headless(args: argparse.Namespace) -> int:
    """Run `sync` or `compare` with a progress bar; return the exit status."""
    from blocksync_tui.progress import ProgressDisplay

    dry_run = args.command == "compare"
    options = SyncOptions(
        chunk_size=args.chunk_size,
        algorithm=args.algorithm,
        compress=args.compress,
        verify=getattr(args, "verify", False),
        dry_run=dry_run,
        direct=args.direct,
    )
    engine = SyncEngine(
        Endpoint.parse(args.source),
        Endpoint.parse(args.destination),
        options,
        transport_factory(_ssh_options(args)),
    )
    engine.prepare()
    for warning in engine.warnings:
        print(f"blocksync-tui: warning: {warning}", file=sys.stderr)
    dest_info = engine.destination_info
    if not dry_run and dest_info.get("kind") == "block" and not args.yes:
        if not _confirm_device(str(engine.destination), dest_info):
            engine.close()
            raise UsageError(f"not writing to block device {engine.destination} without --yes")

    result: list[Report | BaseException] = []

    def work() -> None:
        try:
            result.append(engine.run())
        except BaseException as exc:  # handed to the main thread, which reports it
            result.append(exc)

    thread = threading.Thread(target=work, name="engine", daemon=True)
    display = ProgressDisplay(enabled=not args.quiet and sys.stderr.isatty())
    interrupted = False
    with display:
        thread.start()
        while thread.is_alive():
            try:
                thread.join(0.1)
            except KeyboardInterrupt:
                interrupted = True
                engine.cancel()
            display.update(engine.progress())
        display.update(engine.progress())
    outcome = result[0]
    report = engine.report()
    if isinstance(outcome, Cancelled):
        report.outcome, report.message = "cancelled", str(outcome)
    elif isinstance(outcome, BaseException):
        report.outcome, report.message = "failed", str(outcome)
    if args.json:
        report.save(args.json)
    if isinstance(outcome, Cancelled):
        print(f"blocksync-tui: {outcome}", file=sys.stderr)
        return EXIT_INTERRUPTED if interrupted else EXIT_ERROR
    if isinstance(outcome, BaseException):
        raise outcome
    print(display.summary(report))
    for error in report.errors[:20]:
        print(f"blocksync-tui: error: {error}", file=sys.stderr)
    if report.errors:
        return EXIT_ERROR
    return EXIT_DIFFERS if dry_run and report.outcome == "differs" else EXIT_OK


def _confirm_device(name: str, info: dict) -> bool:
    """Ask on the terminal to type the device's name; False if there is no terminal."""
    if not sys.stdin.isatty():
        return False
    size = info.get("size", 0)
    print(f"About to overwrite block device {name} ({size / 2**30:.1f} GiB) where it differs.")
    try:
        answer = input(f"Type {name} to go ahead: ")
    except EOFError:
        return False
    return answer.strip() == name


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `blocksync-tui` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("sync", "compare", "-h", "--help", "--version"):
        from blocksync_tui.tui.launch import launch

        return launch(argv)
    args = build_parser().parse_args(argv)
    try:
        return run_headless(args)
    except BlocksyncError as exc:
        print(f"blocksync-tui: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("blocksync-tui: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
