"""Provides the app's screens: setup, run, review, and the dialogs."""
