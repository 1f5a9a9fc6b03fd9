"""Provides run: who owns byte ranges of a mounted ext4 or xfs, asked of the kernel.

FS_IOC_GETFSMAP says: an inode (xfs with rmapbt), a structure, free, or unknown (ext4 data);
a walk of the mount names the inodes and finds, by FS_IOC_FIEMAP, the files in the unknown.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import os
import stat
import struct
import time

from . import devices

HEAD = struct.Struct("=IIII48x")  # struct fsmap_head, then 2 keys and the records (linux/fsmap.h)
REC = struct.Struct("=IIQQQQ24x")  # device, flags, physical, owner, offset, length
GETFSMAP, FIEMAP = 0xC0C0583B, 0xC020660B
SPECIAL, LAST, UNKNOWN = 0x10, 0x20, 2  # FMR_OF_SPECIAL_OWNER, FMR_OF_LAST, FMR_OWN_UNKNOWN
FM = struct.Struct("=QQIII4x")  # struct fiemap: start, length, flags, mapped, count
FE = struct.Struct("=QQQ16xI12x")  # logical, physical, length, flags (linux/fiemap.h)
FE_LAST, FE_SHARED, FE_NOT_PLACED = 1, 0x2000, 0x70E  # unknown, delalloc, encoded, inline...
BATCH, GAP, MAX_RECORDS, MAX_ENTRIES, MAX_NAMES = 256, 1 << 20, 100000, 1000000, 8


def run(req: dict) -> dict:
    """mounted: False; or mount, fstype, and error (refused) or records [physical, length, owner,
    flags], extents [physical, length, inode] found in the unknown, names {inode: paths}."""
    deadline = time.monotonic() + min(float(req.get("timeout", 60)), 300.0)
    ranges = sorted((int(s), int(e)) for s, e in req["ranges"])
    found = _mount(req["path"], int(req["offset"]))
    if found is None:
        return {"mounted": False}
    num, point, root, fstype = found
    out = {"mount": point, "fstype": fstype}
    fd = -1
    try:
        fd = os.open(point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        dev = os.fstat(fd).st_dev
        if devices.devnum(dev) != num:
            raise OSError(errno.ENODEV, "not that device's mount")
        major, minor = os.major(dev), os.minor(dev)  # the keys hold the kernel's dev_t encoding
        key = minor & 255 | major << 8 | (minor >> 8) << 20
        out["records"], out["truncated"] = _getfsmap(fd, ranges, key, deadline)
    except OSError as exc:
        return dict(out, error=errno.errorcode.get(exc.errno, "EUNKNOWN"), reason=exc.strerror)
    finally:
        if fd >= 0:
            os.close(fd)
    out.update(_walk(point, root, dev, out["records"], ranges, deadline))
    return out


def _mount(path: str, offset: int) -> "tuple[str, str, str, str] | None":
    """The major:minor, mount point, root and type of the mount of the file system at `offset`
    of `path`: a block device or its partition, or an image under a loop device."""
    st = os.stat(path)
    if stat.S_ISBLK(st.st_mode):
        bases = [(st.st_rdev, 0)]
    elif stat.S_ISREG(st.st_mode):
        bases = [(os.stat(loop).st_rdev, int(devices.read_text(
            "/sys/block/%s/loop/offset" % loop[5:], "0"))) for loop in devices.loop_devices_backed_by(st)]
    else:
        return None
    nums = []
    for rdev, start in bases:
        base = os.path.realpath(devices.sys_block_dir(rdev))
        if start == offset:
            nums.append(devices.devnum(rdev))
        for entry in devices._listdir(base):
            part = os.path.join(base, entry)
            sectors = int(devices.read_text(part + "/start", "-1"))
            if os.path.exists(part + "/partition") and start + sectors * devices.SECTOR == offset:
                nums.append(devices.read_text(part + "/dev"))
    with open(devices.MOUNTINFO, encoding="latin-1") as f:  # its bytes as they are, escaped
        mounts = [line.split() for line in f]
    for whole in (True, False):  # a mount of the file system's root first, then a bind mount
        for fields in mounts:  # id, parent, major:minor, root, mount point, ..., "-", type, ...
            if len(fields) > 7 and fields[2] in nums and (fields[3] == "/") == whole:
                inside, point = (os.fsdecode(f.encode("latin-1").decode("unicode_escape")
                                             .encode("latin-1")) for f in fields[3:5])
                return fields[2], point, inside, fields[fields.index("-") + 1]
    return None


def _getfsmap(fd: int, ranges: "list[tuple[int, int]]", dev: int, deadline: float):
    """The kernel's records over the spans of `ranges` (and whether they were cut short), BATCH
    per call; the last record of one call is the low key of the next."""
    spans: "list[list[int]]" = []
    for start, end in ranges:
        if spans and start - spans[-1][1] < GAP:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    records: "list[list[int]]" = []
    buf = bytearray(HEAD.size + (2 + BATCH) * REC.size)
    for start, end in spans:
        HEAD.pack_into(buf, 0, 0, 0, BATCH, 0)
        REC.pack_into(buf, HEAD.size, dev, 0, start, 0, 0, 0)
        REC.pack_into(buf, HEAD.size + REC.size, dev, 0xFFFFFFFF, end - 1, (1 << 64) - 1, (1 << 64) - 1, 0)
        while True:
            if len(records) >= MAX_RECORDS or time.monotonic() > deadline:
                return records, True
            fcntl.ioctl(fd, GETFSMAP, buf)
            count = HEAD.unpack_from(buf)[3]
            for i in range(count):
                _, flags, physical, owner, _, length = REC.unpack_from(buf, HEAD.size + (2 + i) * REC.size)
                if not records or records[-1][:3] != [physical, length, owner]:  # spans may share one
                    records.append([physical, length, owner, flags])
            if not count or flags & LAST:
                break
            last = HEAD.size + (1 + count) * REC.size
            buf[HEAD.size : HEAD.size + REC.size] = buf[last : last + REC.size]
    return records, False


def _overlaps(ranges: list, physical: int, length: int):
    """The parts of sorted, disjoint (start, end) ranges inside [physical, physical + length)."""
    for start, end in ranges[max(0, bisect.bisect_left(ranges, (physical,)) - 1) :]:
        if start >= physical + length:
            break
        if max(start, physical) < min(end, physical + length):
            yield max(start, physical), min(end, physical + length)


def _walk(point: str, root: str, dev: int, records: list, ranges: list, deadline: float) -> dict:
    """Name the records' inodes, and find the files whose data lies in their unknown ranges:
    depth first, never into another file system or through a symbolic link; it stops once all
    are found, or at MAX_ENTRIES or the deadline."""
    wanted = {r[2] for r in records if not r[3] & SPECIAL}
    unknown = [part for p, n, owner, flags in records if flags & SPECIAL and owner == UNKNOWN
               for part in _overlaps(ranges, p, n)]
    left = sum(e - s for s, e in unknown)
    names: "dict[int, list[str]]" = {}
    extents: "list[list[int]]" = []
    buf = bytearray(FM.size + BATCH * FE.size)

    def visit(path: str, ino: int, name: str, placed: bool) -> None:
        nonlocal left
        if ino in wanted:
            names.setdefault(ino, []).append(name)
            if len(names[ino]) >= MAX_NAMES:
                wanted.discard(ino)
        try:
            for physical, length, shared in _fiemap(path, buf, deadline) if placed and left > 0 else ():
                for lo, hi in _overlaps(unknown, physical, length):
                    extents.append([lo, hi - lo, ino])
                    left -= 0 if shared else hi - lo
                    if name not in names.setdefault(ino, []):
                        names[ino].append(name)
        except OSError:
            pass  # gone, or no FIEMAP here: its data stays unknown

    visit(point, os.stat(point).st_ino, root, True)
    todo, entries, cut = [(point, root.rstrip("/"))], 0, ""
    while todo and (wanted or left > 0) and not cut:
        where, shown = todo.pop()
        try:
            listing = list(os.scandir(where))
        except OSError:
            continue
        for entry in listing:
            entries += 1
            if entries > MAX_ENTRIES or time.monotonic() > deadline:
                cut = "timed out" if entries <= MAX_ENTRIES else "more than %d entries" % MAX_ENTRIES
                break
            name = shown + "/" + entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                if is_dir and entry.stat(follow_symlinks=False).st_dev != dev:
                    continue  # another file system mounted here
                visit(entry.path, entry.inode(), name, is_dir or entry.is_file(follow_symlinks=False))
            except OSError:
                continue
            if is_dir:
                todo.append((entry.path, name))
            if not wanted and left <= 0:
                break
    return {"names": names, "extents": extents, "entries": entries, "cut": cut}


def _fiemap(path: str, buf: bytearray, deadline: float):
    """(physical, length, shared) of a file's placed extents, BATCH per call."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        start = 0
        while time.monotonic() < deadline:
            FM.pack_into(buf, 0, start, (1 << 64) - 1 - start, 0, 0, BATCH)
            fcntl.ioctl(fd, FIEMAP, buf)
            count, flags = FM.unpack_from(buf)[3], FE_LAST
            for i in range(count):
                logical, physical, length, flags = FE.unpack_from(buf, FM.size + i * FE.size)
                if not flags & FE_NOT_PLACED:
                    yield physical, length, flags & FE_SHARED
                start = logical + length
            if not count or flags & FE_LAST:
                return
    finally:
        os.close(fd)
