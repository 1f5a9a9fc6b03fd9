"""Provides `python -m blocksync_tui`."""

from blocksync_tui.cli import main

# Guarded: the app's engine process is started with multiprocessing's "spawn", which imports
# the main module again in the child.
if __name__ == "__main__":
    raise SystemExit(main())
