"""Provides the widgets of the blocksync-tui user interface."""
