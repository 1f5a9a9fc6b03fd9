"""Provides WriteBehind: what the destination's worker writes goes to disk as the run goes.

Left to itself, the kernel keeps written pages dirty in memory up to its limits (by default
10-20% of memory: gigabytes), and the final fsync then writes them all while nothing else
moves; a copy of a whole disk also pushes everything else the destination host had cached out
of its memory. So every STEP bytes written, writeback of that step's range starts at once
(sync_file_range WRITE, which does not wait), and the step before it is waited for and dropped
from the cache (POSIX_FADV_DONTNEED): at most two steps are dirty, the disk writes while the
link delivers, and the final fsync finds little left.

An error that sync_file_range reports is a lost write of ours, and the kernel will not report it
again to a later fsync of this descriptor (its error cursor has moved past it): so it is kept
and raised by every later call, `sync` included, and the writer stops at it.

Without ctypes (or outside Linux), POSIX_FADV_DONTNEED alone starts writeback of the step
before and drops what is clean, without waiting; the fsync still makes everything durable.
"""

from __future__ import annotations

import errno
import os
import threading

from . import libc

STEP = 16 << 20
"""Bytes written between two rounds of writeback: two steps at most are dirty at a time."""
_WRITE = 2  # SYNC_FILE_RANGE_WRITE
_WAIT = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER
_UNSUPPORTED = frozenset((errno.EINVAL, errno.ESPIPE, errno.ENOSYS, errno.EOPNOTSUPP))
"""sync_file_range's answers for a file it cannot work on: not a lost write."""


class WriteBehind:
    """The ranges written since the last round, for one descriptor. Shared by the writer thread
    and a direct compare's scan thread, so its state moves under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fd = -1
        self.current: "list[int]" = []
        """[low, high) of what was written since the last round; empty if nothing."""
        self.previous: "list[int]" = []
        """The range of the round before: its writeback has started, not yet waited for."""
        self.pending = 0
        self.error: "OSError | None" = None
        self.unsupported = False
        """sync_file_range refused this kind of file: advice alone from then on."""

    def wrote(self, fd: int, offset: int, length: int) -> None:
        """Note `length` bytes written at `offset` of `fd`; once a STEP is full, write it back.

        Raises:
            OSError: writeback of an earlier range failed (now or before).
        """
        with self.lock:
            self._raise_kept()
            if fd != self.fd:
                self.fd, self.current, self.previous, self.pending = fd, [], [], 0
                self.unsupported = False
            if self.current:
                self.current = [min(self.current[0], offset), max(self.current[1], offset + length)]
            else:
                self.current = [offset, offset + length]
            self.pending += length
            if self.pending < STEP:
                return
            try:
                self._round()
            except OSError as exc:
                self.error = OSError(exc.errno, "%s, writing back to disk" % exc.strerror)
                raise self.error from None

    def sync(self, fd: int) -> None:
        """fsync `fd`, then drop what was written from the cache (it is on disk now).

        Raises:
            OSError: the fsync failed, or a writeback before it did.
        """
        with self.lock:
            self._raise_kept()
            os.fsync(fd)
            if fd == self.fd:
                for low_high in (self.previous, self.current):
                    _drop(fd, low_high)
                self.current, self.previous, self.pending = [], [], 0

    def _raise_kept(self) -> None:
        if self.error is not None:
            raise OSError(self.error.errno, self.error.strerror)

    def _round(self) -> None:
        sync_file_range = libc.function("sync_file_range", ["c_int", "c_int64", "c_int64", "c_uint"])
        if sync_file_range is not None and not self.unsupported:
            try:
                low, high = self.current
                sync_file_range(self.fd, low, high - low, _WRITE)
                if self.previous:
                    low, high = self.previous
                    sync_file_range(self.fd, low, high - low, _WAIT)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                self.unsupported = True
        _drop(self.fd, self.previous)
        self.previous, self.current, self.pending = self.current, [], 0


def _drop(fd: int, low_high: "list[int]") -> None:
    if low_high:
        try:
            os.posix_fadvise(fd, low_high[0], low_high[1] - low_high[0], os.POSIX_FADV_DONTNEED)
        except (OSError, AttributeError):
            pass  # only advice: nothing is lost if it is not taken
