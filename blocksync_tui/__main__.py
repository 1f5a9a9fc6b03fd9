"""Provides `python -m blocksync_tui`."""

from blocksync_tui.cli import main

raise SystemExit(main())
