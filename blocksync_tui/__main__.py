"""Provides `python -m blocksync_tui`."""

from blocksync_tui.cli import main

# Guarded, so that importing this module (as tools and tests do) runs nothing. The app's engine
# process does not come through here: it is `python -c` importing engine.process directly.
if __name__ == "__main__":
    raise SystemExit(main())
