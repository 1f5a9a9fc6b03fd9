"""blocksync-tui: synchronize block devices by rewriting only the chunks that differ."""

__version__ = "0.1.0"
