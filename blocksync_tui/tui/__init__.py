"""Provides the Textual user interface of blocksync-tui."""
