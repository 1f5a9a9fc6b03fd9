"""Provides make_app and launch: the app for a request from the command line (or the demo's).

The command line itself, the app's arguments included, is parsed in one place: `cli.py`.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from blocksync_tui.engine.options import SyncOptions
from blocksync_tui.tui.request import RunRequest

if TYPE_CHECKING:
    from blocksync_tui.tui.app import BlocksyncApp

DEMO_CHUNK_SIZE = 64 << 10
"""64 KiB chunks: thousands of them, so that the demo's map is finely grained."""


def make_app(request: RunRequest, demo_size: int | None = None) -> BlocksyncApp:
    """The app, its setup screen filled from `request`.

    Args:
        request: Endpoints (maybe empty) and SSH options.
        demo_size: Make two demo images of this many bytes in a temp dir instead, and open on
            a dry run of them.
    """
    from blocksync_tui.tui.app import BlocksyncApp  # Textual loads only for the app

    if demo_size is None:
        return BlocksyncApp(request)
    from blocksync_tui.demo import make_pair
    from blocksync_tui.demo_layout import stamp_layout

    workdir = Path(tempfile.mkdtemp(prefix="blocksync-demo-"))
    print(f"blocksync-tui: writing two {demo_size >> 20} MiB demo images to {workdir} "
          "(removed when the app quits) ...", file=sys.stderr)
    source, destination = make_pair(workdir, size=demo_size)
    stamp_layout(source, destination)  # partitions on the map, a file system at stake
    # Temporary images: no digest cache is kept of them.
    request = replace(request, source=str(source), destination=str(destination),
                      options=SyncOptions(chunk_size=DEMO_CHUNK_SIZE, cache="forget"))
    return BlocksyncApp(request, autostart=True, scratch=workdir)


def launch(app: BlocksyncApp) -> int:
    """Run the app until it quits; returns the exit status.

    Raises:
        Exception: what ended the app, if a bug did (its traceback was not printed).
    """
    try:
        app.run()
    finally:
        if app.scratch is not None:
            print(f"blocksync-tui: removed the demo images in {app.scratch}", file=sys.stderr)
    if app.crashed is not None:
        raise app.crashed
    return app.return_code or 0
