"""Provides launch: start the app from the command line (no command, SRC DST, or --demo)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from blocksync_tui.engine.sync import SyncOptions
from blocksync_tui.engine.options import SshOptions
from blocksync_tui.tui.request import RunRequest

if TYPE_CHECKING:
    from blocksync_tui.tui.app import BlocksyncApp


def build_parser() -> argparse.ArgumentParser:
    """The app's own arguments (the headless commands have theirs in cli.py)."""
    parser = argparse.ArgumentParser(
        prog="blocksync-tui",
        description="Full-screen app; see also `blocksync-tui sync --help` and `compare --help`.",
    )
    parser.add_argument("source", nargs="?", default="", help="file or device, /path or [user@]host[:port]:/path")
    parser.add_argument("destination", nargs="?", default="", help="file or device")
    parser.add_argument("--demo", action="store_true",
                        help="open on two generated demo images (in a temp dir) and dry-run them")
    parser.add_argument("--demo-size", type=int, default=256, metavar="MIB", help="demo image size")
    parser.add_argument("-i", "--identity", action="append", default=[], metavar="KEY")
    parser.add_argument("--ssh-config", metavar="FILE")
    parser.add_argument("--known-hosts", metavar="FILE")
    parser.add_argument("--accept-new-host-key", action="store_true")
    parser.add_argument("--remote-python", default="python3", metavar="PATH")
    parser.add_argument("--sudo", action="store_true")
    return parser


def make_app(argv: Sequence[str]) -> BlocksyncApp:
    """The app for a command line: endpoints filled in, or demo images made and a dry run queued."""
    from blocksync_tui.tui.app import BlocksyncApp  # Textual loads only for the app

    args = build_parser().parse_args(list(argv))
    ssh = SshOptions(
        identity_files=args.identity, config_file=args.ssh_config, known_hosts=args.known_hosts,
        accept_new_host_key=args.accept_new_host_key, python=args.remote_python, sudo=args.sudo,
    )
    request = RunRequest(args.source, args.destination, SyncOptions(), ssh)
    if args.demo:
        from blocksync_tui.demo import make_pair

        workdir = Path(tempfile.mkdtemp(prefix="blocksync-demo-"))
        print(f"blocksync-tui: writing two {args.demo_size} MiB demo images to {workdir} ...", file=sys.stderr)
        source, destination = make_pair(workdir, size=args.demo_size << 20)
        # 64 KiB chunks: thousands of them, so that the demo's map is finely grained.
        request = RunRequest(str(source), str(destination), SyncOptions(chunk_size=64 << 10), ssh)
    return BlocksyncApp(request, autostart=args.demo)


def launch(argv: Sequence[str]) -> int:
    """Run the app until it quits; returns the exit status."""
    app = make_app(argv)
    app.run()
    return app.return_code or 0
