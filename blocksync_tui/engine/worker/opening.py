"""Provides OPEN: what a worker opens, and the checks made on the descriptor before any use.

The open is where the worker's safety rules live: the source read-only always, a destination
opened for writing only if nothing uses it (mounted, swap, held, or behind a loop device), the
very object an earlier open saw when the controller says what to expect, and a file to create
only if it still does not exist. Every check is made on the open descriptor, never on a path
that may have changed since.
"""

from __future__ import annotations

import errno
import os
import stat

from . import devices, protocol
from .output import WorkerError, os_error_text

CLOEXEC = getattr(os, "O_CLOEXEC", 0)
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CREATE_MODE = 0o644
"""The mode of a destination file the worker creates (before the umask)."""


class Opened:
    """One opened file or device, with the geometry a destination was opened with."""

    def __init__(self, fd: int, scan_fd: int, path: str, info: dict) -> None:
        self.fd = fd
        self.scan_fd = scan_fd
        """A second descriptor of the same file for the sequential scan alone: Linux keeps the
        readahead state per open file, and the random reads and writes of differing chunks on a
        shared one cut a cold scan to a third of its speed (measured)."""
        self.path = path
        self.size = info["size"]
        self.is_block = info["kind"] == "block"
        self.writable = False
        self.chunk_size = 0
        self.sync_size = 0
        """The geometry the controller opened the destination with: every write is checked
        against it, never against lengths a frame declares."""

    def close(self) -> None:
        """Close both descriptors."""
        for fd in {self.fd, self.scan_fd}:
            os.close(fd)

    def prefetch(self, length: int, offset: int = 0) -> None:
        """Ask the kernel to start reading `length` bytes from `offset` now, in the background:
        the scan then finds them in memory. Meant for while the other side is still connecting,
        and for the scattered chunks of a sample, read all at once."""
        try:
            os.posix_fadvise(self.scan_fd, offset, min(length, self.size - offset), os.POSIX_FADV_WILLNEED)
        except (OSError, AttributeError):
            pass

    def drop_cache(self) -> None:
        """Write back and forget cached pages, so a verify reads the disk, not memory."""
        try:
            os.fsync(self.fd)
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except (OSError, AttributeError):
            pass


class Files:
    """What this worker has open: its file (the target) and, for a direct compare on one host,
    the source (the peer), read-only."""

    def __init__(self) -> None:
        self.target: "Opened | None" = None
        self.peer: "Opened | None" = None
        """The source, opened read-only by the destination's worker when both are on this host
        (a PAIR compares the two directly: no digests, no data through the controller)."""

    def need_target(self) -> Opened:
        """The open target.

        Raises:
            WorkerError: nothing is open.
        """
        if self.target is None:
            raise WorkerError("no file is open")
        return self.target

    def need_peer(self) -> Opened:
        """The open peer.

        Raises:
            WorkerError: no source is open here.
        """
        if self.peer is None:
            raise WorkerError("no source is open for a direct compare")
        return self.peer

    def open(self, req: dict) -> dict:
        """Serve an OPEN request: open, check, and keep the result as the target or the peer.

        The path is resolved once (a symlink the user named, like /dev/disk/by-id/..., is
        followed here) and the result opened with O_NOFOLLOW and O_NONBLOCK (a FIFO never
        blocks us). With `expect` (what an earlier open saw), the object opened must be that
        very one. `create` makes a file that must not exist yet (O_EXCL).
        """
        path = req["path"]
        peer = bool(req.get("peer"))
        write = bool(req.get("write")) and not peer  # the peer is a source: read-only, always
        real = os.path.realpath(path)
        shared = bool(req.get("shared"))
        if shared and not (write and req.get("expect")):
            raise WorkerError("%s: a shared open is for writing to an object already checked" % path)
        fd = _open_fd(path, real, write, bool(req.get("create")), exclusive=not shared)
        if fd < 0:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise WorkerError("%s: directory %s does not exist" % (path, parent))
            return {"exists": False, "path": path, "realpath": real}
        try:
            info = _check_opened(fd, path, real, write, req.get("expect"))
            if write:
                chunk_size = int(req.get("chunk_size") or 0)
                if info["kind"] == "file" and req.get("truncate") is not None:
                    os.ftruncate(fd, int(req["truncate"]))
                    # What another lane of the same run must find when it opens this file.
                    st = os.fstat(fd)
                    info["size"], info["mtime_ns"], info["ctime_ns"] = int(req["truncate"]), st.st_mtime_ns, st.st_ctime_ns
                sync_size = int(req.get("sync_size", info["size"]))
                if not 0 <= sync_size <= info["size"]:
                    raise WorkerError("%s is too small: %d bytes, the source has %d" % (path, info["size"], sync_size))
        except BaseException:
            os.close(fd)
            raise
        opened = Opened(fd, _scan_descriptor(fd), path, info)
        if peer:
            if self.peer is not None:
                self.peer.close()
            self.peer = opened
        else:
            if self.target is not None:
                self.target.close()
            opened.writable = write
            if write:
                opened.chunk_size, opened.sync_size = chunk_size, sync_size
            self.target = opened
        return info


def _scan_descriptor(fd: int) -> int:
    """A second descriptor of the file `fd` holds, advised for sequential reading."""
    try:  # the same file, never a file that replaced it at that path meanwhile
        scan_fd = os.open("/proc/self/fd/%d" % fd, os.O_RDONLY | CLOEXEC)
    except OSError:
        scan_fd = fd
    try:  # the scan reads front to back: ask for a larger readahead
        os.posix_fadvise(scan_fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (OSError, AttributeError):
        pass
    return scan_fd


def _open_fd(path: str, real: str, write: bool, create: bool, exclusive: bool = True) -> int:
    """The descriptor of `real`, or -1 if it does not exist (and may not be created).

    `exclusive` False is for the later lanes of a parallel run: the first lane's open holds
    the device's claim for all of them, until every lane is done.
    """
    # Without O_CREAT, Linux takes O_EXCL on a block device as "claim it": the open fails
    # with EBUSY if anything mounted or claimed it. On a regular file it has no effect.
    flags = (os.O_RDWR | (os.O_EXCL if exclusive else 0)) if write else os.O_RDONLY
    try:
        if write and create:
            # Absent when it was checked: it must still be absent, or what it holds now was
            # never compared. O_CREAT|O_EXCL makes that atomic.
            fd = os.open(real, os.O_RDWR | os.O_CREAT | os.O_EXCL | CLOEXEC | NOFOLLOW, CREATE_MODE)
            try:
                _sync_directory(os.path.dirname(real))
            except BaseException:
                os.close(fd)
                raise
            return fd
        return os.open(real, flags | os.O_NONBLOCK | CLOEXEC | NOFOLLOW)
    except FileNotFoundError:
        if write:
            raise WorkerError("%s disappeared after it was checked: run again" % path)
        return -1
    except FileExistsError:
        raise WorkerError("%s appeared after it was checked" % path, errno.EEXIST)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise WorkerError("%s is busy (mounted or claimed): refusing to write to it" % path)
        if exc.errno == errno.ELOOP:
            raise WorkerError("%s: changed into a symbolic link while it was opened" % path)
        if exc.errno == errno.EISDIR:
            raise WorkerError("%s is a directory, not a file or block device" % path)
        raise WorkerError(os_error_text(exc, path))


def _sync_directory(path: str) -> None:
    """fsync a directory: a new file's name survives a power cut too (a flush syncs its data)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def _check_opened(fd: int, path: str, real: str, write: bool, expect) -> dict:
    """What was opened, checked on its descriptor: kind, size, use, identity."""
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        raise WorkerError("%s is a directory, not a file or block device" % path)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise WorkerError("%s is neither a regular file nor a block device" % path)
    try:  # O_NONBLOCK was only for the open: reads and writes must block
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except (OSError, ImportError):
        pass
    is_block = stat.S_ISBLK(st.st_mode)
    info = {
        "exists": True,
        "path": path,
        "realpath": real,
        "kind": "block" if is_block else "file",
        "size": os.lseek(fd, 0, os.SEEK_END),
        "identity": [st.st_dev, st.st_ino, st.st_rdev],
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "sectors_written": devices.sectors_written(st.st_rdev) if is_block else -1,
        "sector_size": devices.sector_size(fd) if is_block else devices.SECTOR,
        "mounted": [],
        "holders": [],
        "swap": [],
        "readonly": False,
        "devnum": "",
        "stack": [],
        "backing": None,
    }
    if is_block:
        info.update(devices.device_usage(st.st_rdev, real))
        info["readonly"] = devices.is_read_only(st.st_rdev)
        info["devnum"] = devices.devnum(st.st_rdev)
        info["stack"] = devices.device_stack(st.st_rdev)
        name = devices.kernel_name(st.st_rdev)
        info["ids"] = devices.stable_ids(st.st_rdev, name)
        info["backing"] = [list(x) for x in devices.stack_backing_identities(st.st_rdev, info["stack"])]
    else:
        info["holders"] = devices.loop_devices_backed_by(st)
    in_use = info["mounted"] or info["holders"] or info["swap"]
    if write and in_use:
        raise WorkerError("%s is in use (%s): refusing to write to it" % (path, protocol.usage_text(info)))
    if expect is not None and not _same_as_expected(info, expect):
        raise WorkerError("%s changed after it was checked (another file or device, resized, or written to): "
                          "run again" % path)
    return info


def _same_as_expected(info: dict, expect: dict) -> bool:
    """Whether an open found the object an earlier open saw, unwritten since: the same size, and
    the same device (rdev) and sectors written, or file (device, inode), mtime and ctime."""
    if info["kind"] != expect.get("kind") or info["size"] != expect.get("size"):
        return False
    mine, theirs = info["identity"], expect.get("identity") or [None, None, None]
    if info["kind"] == "block":
        written, was = info["sectors_written"], expect.get("sectors_written", -1)
        return mine[2] == theirs[2] and (written < 0 or was < 0 or written == was)
    return (mine[:2] == theirs[:2] and info["mtime_ns"] == expect.get("mtime_ns")
            and info["ctime_ns"] == expect.get("ctime_ns", info["ctime_ns"]))
