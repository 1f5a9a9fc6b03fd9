"""Provides what this host says of its block devices: sizes, users, and what shares storage.

Everything here reads /proc and /sys (and asks the kernel by ioctl where sysfs can be stale);
nothing opens a device for writing. These are the facts the safety checks of an OPEN rest on:
who uses a device (mounts, swap, holders, loop devices over a file) and which devices are built
on one another, so that a sync never reads what its own writes change.
"""

from __future__ import annotations

import os
import stat
import struct

MOUNTINFO = "/proc/self/mountinfo"
SWAPS = "/proc/swaps"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
MACHINE_IDS = ("/etc/machine-id", "/var/lib/dbus/machine-id")
DISK_LINKS = (("by_id", "/dev/disk/by-id"), ("partuuid", "/dev/disk/by-partuuid"))
"""udev's names of a device that do not come from its contents (not by-uuid, a file system's)."""
SYS_BLOCK = "/sys/block"
SECTOR = 512
"""The unit of the sizes sysfs gives, whatever the device's own sector size."""

BLKSSZGET = 0x1268
"""ioctl: a block device's logical sector size (linux/fs.h)."""
LOOP_GET_STATUS64 = 0x4C05
"""ioctl: the status of a loop device, a struct loop_info64 (linux/loop.h)."""
LOOP_INFO64_SIZE = 232
LOOP_INFO64_HEAD = struct.Struct("=QQ")
"""The first two fields of struct loop_info64: lo_device, lo_inode (its backing file)."""
MAX_STACK = 4096
"""At most this many devices are followed when walking a device stack: sysfs has no cycles, but a
bound costs nothing."""


def device_model(base: str) -> str:
    """What a person calls the device under /sys/block/NAME: its maker and model, as lsblk.

    A virtio or PCI disk's "vendor" is a PCI id (0x1af4) and ATA's is the bus: no maker's
    name. With no model either, the driver says what it is ("virtio disk").
    """
    vendor, model = read_text(base + "/device/vendor"), read_text(base + "/device/model")
    if vendor.startswith("0x") or vendor == "ATA":
        vendor = ""
    text = " ".join(x for x in (vendor, model) if x)
    if not text and os.path.islink(base + "/device/driver"):
        driver = os.path.basename(os.readlink(base + "/device/driver"))  # virtio_blk, xen-blkfront
        text = driver.split("_")[0].split("-")[0] + " disk"
    return text


def read_text(path: str, default: str = "") -> str:
    """The stripped content of a small text file (a sysfs attribute), or `default`."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _listdir(path: str) -> "list[str]":
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def boot_id() -> str:
    """Unique per boot of a machine: tells that two endpoints reached differently (a path, ssh to
    localhost) are on one machine."""
    return read_text(BOOT_ID)


def machine_id() -> str:
    """The machine's own id, the same across boots (systemd's or D-Bus's), or ""."""
    for path in MACHINE_IDS:
        found = read_text(path)
        if found:
            return found
    return ""


def stable_ids(rdev: int, name: str) -> dict:
    """What names a block device whatever its number: WWN, serial, device-mapper UUID (an LV's),
    udev's by-id and by-partuuid links, a loop device's backing file (st_dev, st_ino)."""
    base = sys_block_dir(rdev)
    ids = {}
    for key, rel in (("wwid", "/wwid"), ("wwid", "/device/wwid"), ("serial", "/device/serial"), ("dm_uuid", "/dm/uuid")):
        found = read_text(base + rel)
        if found and key not in ids:
            ids[key] = found
    for key, where in DISK_LINKS:
        links = [e for e in _listdir(where) if os.path.realpath(os.path.join(where, e)) == "/dev/" + name]
        if links:
            ids[key] = links
    if name.startswith("loop"):
        backing = loop_backing_identities(name)
        if backing:
            ids["loop"] = list(backing[0])
    return ids


def sectors_written(rdev: int) -> int:
    """The sectors written to a block device since boot (its sysfs stat), or -1: a device has
    no mtime, but this counter moves with every write that reaches it."""
    try:
        return int(read_text(sys_block_dir(rdev) + "/stat").split()[6])
    except (IndexError, ValueError):
        return -1


def devnum(rdev: int) -> str:
    """A device number as "major:minor"."""
    return "%d:%d" % (os.major(rdev), os.minor(rdev))


def sys_block_dir(rdev: int) -> str:
    """The sysfs directory of a block device, by number."""
    return "/sys/dev/block/" + devnum(rdev)


def is_read_only(rdev: int) -> bool:
    """Whether the kernel marks the block device read-only."""
    return read_text(sys_block_dir(rdev) + "/ro") == "1"


def kernel_name(rdev: int) -> str:
    """The kernel's name of a block device ("sdb1", "loop0")."""
    return os.path.basename(os.path.realpath(sys_block_dir(rdev)))


def sector_size(fd: int) -> int:
    """The logical sector size of an open block device."""
    try:
        import fcntl

        buf = fcntl.ioctl(fd, BLKSSZGET, b"\0\0\0\0")
        return struct.unpack("i", buf)[0]
    except (OSError, ImportError):
        return SECTOR


def _mounts_by_devnum() -> "dict[str, list[str]]":
    """Mount points per "major:minor", from this host's mount table."""
    mounts: "dict[str, list[str]]" = {}
    try:
        with open(MOUNTINFO) as f:
            for line in f:
                # mountinfo(5): id, parent id, major:minor, root, mount point, ...
                fields = line.split()
                if len(fields) > 4:
                    mounts.setdefault(fields[2], []).append(
                        fields[4].encode().decode("unicode_escape")
                    )
    except OSError:
        pass
    return mounts


def _swaps() -> "set[str]":
    names = set()
    try:
        with open(SWAPS) as f:
            for line in list(f)[1:]:  # the first line names the columns
                names.add(os.path.realpath(line.split()[0]))
    except OSError:
        pass
    return names


def device_usage(rdev: int, path: str = "") -> "dict[str, list[str]]":
    """Who uses a block device or any of its partitions: mount points, holders, swap."""
    base = os.path.realpath(sys_block_dir(rdev))
    nums = [devnum(rdev)]
    holders = []
    dirs = [base]
    for entry in _listdir(base):
        if os.path.exists(os.path.join(base, entry, "partition")):
            dirs.append(os.path.join(base, entry))
            nums.append(read_text(os.path.join(base, entry, "dev")))
    for d in dirs:
        holders.extend(_listdir(os.path.join(d, "holders")))
    table = _mounts_by_devnum()
    mounted = [m for num in nums for m in table.get(num, [])]
    swaps = _swaps()
    names = ["/dev/" + os.path.basename(d) for d in dirs]
    if path:
        names.append(os.path.realpath(path))
    swap = [n for n in names if n in swaps]
    return {"mounted": mounted, "holders": holders, "swap": swap}


def loop_backing_identities(name: str) -> "list[tuple[int, int]]":
    """(st_dev, st_ino) of the file behind loop device `name`: from the kernel itself
    (LOOP_GET_STATUS64), and from the path sysfs shows, which a rename or unlink makes stale."""
    found = []
    try:
        import fcntl

        fd = os.open("/dev/" + name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            info = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(LOOP_INFO64_SIZE))
        finally:
            os.close(fd)
        found.append(LOOP_INFO64_HEAD.unpack_from(info))
    except (OSError, ImportError):
        pass
    backing = read_text("%s/%s/loop/backing_file" % (SYS_BLOCK, name))
    if backing:
        try:
            st = os.stat(backing)
            found.append((st.st_dev, st.st_ino))
        except OSError:
            pass
    return found


def loop_backing_device(name: str) -> int:
    """The block device behind loop device `name`, or 0 (sysfs shows no slave for it)."""
    backing = read_text("%s/%s/loop/backing_file" % (SYS_BLOCK, name))
    try:
        st = os.stat(backing) if backing else None
    except OSError:
        return 0
    return st.st_rdev if st is not None and stat.S_ISBLK(st.st_mode) else 0


def stack_backing_identities(rdev: int, stack: "list[str]") -> "list[tuple[int, int]]":
    """(st_dev, st_ino) of the files behind the loop devices among a device and its stack."""
    found: "list[tuple[int, int]]" = []
    for number in [devnum(rdev)] + stack:
        name = os.path.basename(os.path.realpath("/sys/dev/block/" + number))
        if name.startswith("loop") and os.path.exists("%s/%s/loop" % (SYS_BLOCK, name)):
            found.extend(x for x in loop_backing_identities(name) if x not in found)
    return found


def loop_devices_backed_by(st: os.stat_result) -> "list[str]":
    """Loop devices whose backing file is the file `st` describes, by device and inode: a hard
    link or another path to the same image is caught too (writing under a loop device corrupts
    its users)."""
    mine = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    found = []
    for name in _listdir(SYS_BLOCK):
        if not name.startswith("loop") or not os.path.exists("%s/%s/loop" % (SYS_BLOCK, name)):
            continue
        for dev, ino in loop_backing_identities(name):
            if (os.major(dev), os.minor(dev), ino) == mine:
                found.append("/dev/" + name)
                break
    return found


def device_stack(rdev: int) -> "list[str]":
    """The "major:minor" numbers of every block device that shares storage with `rdev`: what it
    is built on (its whole disk if it is a partition, the slaves of a device-mapper or RAID
    device, and theirs) and what is built on it (its partitions, its holders, and theirs).

    Writing one of them while reading another reads data that the writes change: /dev/sdb1 to
    /dev/sdb, or an LV to the disk under it. Sibling partitions are not related.
    """
    start = os.path.realpath(sys_block_dir(rdev))

    def below(d: str) -> "list[str]":
        out = [os.path.realpath(os.path.join(d, "slaves", e)) for e in _listdir(os.path.join(d, "slaves"))]
        if os.path.exists(os.path.join(d, "partition")):
            out.append(os.path.dirname(d))
        if os.path.exists(os.path.join(d, "loop")):
            backing = loop_backing_device(os.path.basename(d))
            if backing:
                out.append(os.path.realpath(sys_block_dir(backing)))
        return out

    def above(d: str) -> "list[str]":
        out = [os.path.realpath(os.path.join(d, "holders", e)) for e in _listdir(os.path.join(d, "holders"))]
        out.extend(os.path.join(d, e) for e in _listdir(d) if os.path.exists(os.path.join(d, e, "partition")))
        return out

    related: "set[str]" = set()
    for step in (below, above):
        todo, seen = [start], {start}
        while todo and len(seen) < MAX_STACK:
            for nxt in step(todo.pop()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        related |= seen - {start}
    return sorted(num for num in (read_text(os.path.join(d, "dev")) for d in related) if num)


def list_devices() -> "list[dict]":
    """The block devices of this host: name, size, model, mount points, read-only, partitions."""
    table = _mounts_by_devnum()
    devices = []
    try:
        names = sorted(os.listdir(SYS_BLOCK))
    except OSError:
        return devices
    for name in names:
        base = SYS_BLOCK + "/" + name
        size = int(read_text(base + "/size", "0") or 0) * SECTOR
        if name.startswith(("ram", "zram")) or (name.startswith("loop") and size == 0):
            continue
        parts = []
        for entry in sorted(os.listdir(base)):
            if os.path.exists(os.path.join(base, entry, "partition")):
                num = read_text(os.path.join(base, entry, "dev"))
                parts.append(
                    {
                        "name": entry,
                        "path": "/dev/" + entry,
                        "size": int(read_text(os.path.join(base, entry, "size"), "0")) * SECTOR,
                        "mounted": table.get(num, []),
                    }
                )
        num = read_text(base + "/dev")
        model = device_model(base)
        if name.startswith("loop"):
            model = "loop: " + read_text(base + "/loop/backing_file")
        devices.append(
            {
                "name": name,
                "path": "/dev/" + name,
                "size": size,
                "model": model,
                "readonly": read_text(base + "/ro") == "1",
                "removable": read_text(base + "/removable") == "1",
                "mounted": table.get(num, []),
                "holders": sorted(os.listdir(base + "/holders"))
                if os.path.isdir(base + "/holders")
                else [],
                "partitions": parts,
            }
        )
    return devices
