"""Provides zero_range: make a range of the destination read as zeros at the least cost.

- A file gets a hole (fallocate PUNCH_HOLE, size kept): a sparse image stays sparse, and no
  zeros are written at all.
- A block device gets BLKZEROOUT, which the kernel turns into the device's WRITE ZEROES
  (never a discard: the ioctl asks for no unmapping) or writes the zeros itself.
- Where neither is supported (another file system, an old kernel, no ctypes), zeros are
  written. Every way ends with the range reading as zeros; the caller's fsync makes it durable.
"""

from __future__ import annotations

import errno
import struct

from . import libc

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
BLKZEROOUT = 0x127F
"""_IO(0x12, 127): zero a byte range of a block device, 512-byte aligned."""
SECTOR = 512
UNSUPPORTED = frozenset((errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTTY))
"""What a file system or device says when it cannot do the shortcut: write zeros instead."""


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a range of a file, keeping its size; False if not supported here."""
    fallocate = libc.function("fallocate", ["c_int", "c_int", "c_int64", "c_int64"])
    if fallocate is None:
        return False
    try:
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
    except OSError as exc:
        if exc.errno in UNSUPPORTED:
            return False
        raise
    return True


def block_zero_out(fd: int, offset: int, length: int) -> int:
    """Zero the sector-aligned part of a range of a block device with BLKZEROOUT; returns how
    many bytes from `offset` on it zeroed (0 if not supported, or nothing aligned)."""
    aligned = length - length % SECTOR
    if offset % SECTOR or aligned <= 0:
        return 0
    try:
        import fcntl

        fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, aligned))
    except ImportError:
        return 0
    except OSError as exc:
        if exc.errno in UNSUPPORTED:
            return 0
        raise
    return aligned


def zero_range(target, offset: int, length: int, write_zeros) -> None:
    """Make [offset, offset + length) of `target` read as zeros; `write_zeros(offset, length)`
    writes them where no shortcut applies."""
    if length <= 0:
        return
    if target.is_block:
        done = block_zero_out(target.fd, offset, length)
        offset, length = offset + done, length - done
    elif punch_hole(target.fd, offset, length):
        return
    if length:
        write_zeros(offset, length)
