"""Owners of differing bytes asked of the kernel of a mounted source (FS_IOC_GETFSMAP, FIEMAP):
real ext4 and xfs images on loop devices, mounted under a temporary directory, changed through
the mount; a partition of a GPT image mounted through the loop device's partition; a file
system whose kernel refuses (vfat: ENOTTY; xfs to an unprivileged worker: EPERM); and
answers that must not be believed."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blocksync_tui.cli import main
from blocksync_tui.engine import kernel_owners
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.owners import FILE, STRUCTURE, FsRegion, find_owners, owners_after
from blocksync_tui.engine.sync import SyncEngine, SyncOptions
from blocksync_tui.engine.transport import LocalTransport
from ext4_images import BLOCK, MIB, gpt_image, make_ext4, make_tree, place

pytestmark = pytest.mark.loop
FILES = {f"data/file{i:02d}.bin": (i % 7 + 1) * 160_000 for i in range(40)}
FILES["etc/hostname"] = 12


@pytest.fixture
def mount(loop_device) -> Iterator[Callable[..., tuple[str, Path]]]:
    """Mount an image (or one partition of it) through a loop device under a temporary
    directory; everything is unmounted and detached after the test."""
    mounted: list[Path] = []

    def attach(image: Path, partition: int = 0, options: str = "") -> tuple[str, Path]:
        device = loop_device(image)
        if partition:
            # partx adds the partitions (a loop device is attached without a scan of its own);
            # it says "busy" of those the kernel happened to add already.
            subprocess.run(["partx", "-a", device], capture_output=True)
            device = f"{device}p{partition}"
            for _ in range(50):
                if os.path.exists(device):
                    break
                time.sleep(0.05)
            else:
                pytest.skip(f"partx did not add {device}")
        point = Path(tempfile.mkdtemp(prefix="mnt-", dir=image.parent))
        argv = ["mount", *(["-o", options] if options else []), device, str(point)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"mount is not permitted here: {done.stderr.strip()}")
        mounted.append(point)
        return device, point

    yield attach
    for point in reversed(mounted):
        subprocess.run(["umount", str(point)], capture_output=True)


def _change(root: Path, seed: int = 7) -> dict[str, int]:
    """Through the mount: 8 files rewritten in place (25 blocks each), two new files, one
    removed; flushed. Returns the bytes changed per path."""
    rnd = random.Random(seed)
    changed = {}
    for i in range(0, 40, 5):
        path = f"/data/file{i:02d}.bin"
        with open(root / path[1:], "r+b") as f:
            f.write(rnd.randbytes(25 * BLOCK))
            os.fsync(f.fileno())
        changed[path] = 25 * BLOCK
    (root / "new").mkdir()
    for name, size in (("big.bin", 3 * MIB), ("small.bin", 5 * BLOCK)):
        (root / "new" / name).write_bytes(rnd.randbytes(size))
        changed[f"/new/{name}"] = size
    os.remove(root / "data/file01.bin")
    subprocess.run(["sync"], check=True)
    return changed


def _compare(source: str | Path, destination: Path) -> SyncEngine:
    engine = SyncEngine(Endpoint.parse(str(source)), Endpoint.parse(str(destination)),
                        SyncOptions(dry_run=True))
    engine.prepare()
    engine.run()
    return engine


def _check_named(owners, changed: dict[str, int], prefix: str = "") -> None:
    by_label = {o.label: o for o in owners.owners}
    for path, size in changed.items():
        owner = by_label[prefix + path]
        assert owner.kind == FILE and owner.bytes == size, (path, owner)
    assert prefix + "/data/file01.bin" not in by_label  # removed: its data did not change
    assert owners.fraction >= 0.95, owners.to_dict()


@pytest.mark.parametrize("through", ["image", "device"])
def test_a_mounted_ext4_is_named_by_its_kernel(tmp_path: Path, mount, through: str) -> None:
    old = make_ext4(tmp_path / "old.img", 128 * MIB, make_tree(tmp_path / "tree", FILES))
    new = tmp_path / "new.img"
    shutil.copyfile(old, new)
    device, point = mount(new)
    changed = _change(point)
    engine = _compare(new if through == "image" else device, old)
    started = time.monotonic()
    owners = owners_after(engine, "source")
    seconds = time.monotonic() - started
    print(f"\nkernel owners of {owners.bytes_total / MIB:.1f} MiB on a mounted ext4: {seconds:.2f} s, "
          f"{100 * owners.fraction:.2f}% attributed")
    assert not owners.unavailable and owners.bytes_total == engine.report().bytes_differing
    assert owners.notes[0] == (f"mounted on {point} (ext4): owners from its kernel "
                               f"(FS_IOC_GETFSMAP, FIEMAP of {owners.notes[0].split('FIEMAP of ')[1]}")
    _check_named(owners, changed)
    names = {o.name for o in owners.owners}
    # The kernel's names of the structures (e2fsprogs names them per group)...
    assert {"block bitmaps", "inode tables", "/data", "/new"} <= names
    # ...and what it cannot place (the journal: no file holds it) is left to e2fsprogs.
    assert any(o.kind == STRUCTURE and o.name.startswith("journal") for o in owners.owners)


def test_twenty_mib_of_changes_on_a_mounted_ext4_are_attributed_in_time(tmp_path: Path, mount) -> None:
    """The issue's bound (2 s wanted for 20 MiB) is measured and printed, with e2fsprogs' time on
    the same image once unmounted, not asserted; 95% attributed is."""
    old = make_ext4(tmp_path / "old.img", 160 * MIB, make_tree(tmp_path / "tree", FILES))
    new = tmp_path / "new.img"
    shutil.copyfile(old, new)
    _, point = mount(new)
    changed = _change(point)
    for k in range(3):
        (point / f"new/add{k}.bin").write_bytes(random.Random(k).randbytes(6 * MIB))
        changed[f"/new/add{k}.bin"] = 6 * MIB
    subprocess.run(["sync"], check=True)
    engine = _compare(new, old)
    started = time.monotonic()
    owners = owners_after(engine, "source")
    kernel = time.monotonic() - started
    subprocess.run(["umount", str(point)], check=True)
    started = time.monotonic()
    read = owners_after(engine, "source")
    e2fs = time.monotonic() - started
    print(f"\nowners of {owners.bytes_total / MIB:.1f} MiB, mounted ext4: kernel {kernel:.2f} s "
          f"({100 * owners.fraction:.2f}%), e2fsprogs once unmounted {e2fs:.2f} s ({100 * read.fraction:.2f}%)")
    assert owners.bytes_total >= 20 * MIB and owners.notes[0].startswith("mounted on")
    _check_named(owners, changed)
    assert not any(n.startswith("mounted on") for n in read.notes)  # unmounted: e2fsprogs alone


def test_a_partition_mounted_through_the_loop_devices_partition(tmp_path: Path, mount) -> None:
    disk = tmp_path / "disk.img"
    parts = gpt_image(disk, 200 * MIB, [(2048, 16384), (18432, 128 * MIB // 512)])
    fs = make_ext4(tmp_path / "fs.img", 128 * MIB, make_tree(tmp_path / "tree", FILES))
    place(disk, fs, parts[1][0])
    old = tmp_path / "old-disk.img"
    shutil.copyfile(disk, old)
    _, point = mount(disk, partition=2)
    changed = _change(point)
    engine = _compare(disk, old)
    owners = owners_after(engine, "source")
    assert owners.notes[0].startswith(f"p2 mounted on {point} (ext4)")
    _check_named(owners, changed, prefix="p2: ")


@pytest.mark.parametrize("rmapbt", [1, 0], ids=["rmapbt", "no-rmapbt"])
def test_a_mounted_xfs_is_named_by_its_kernel(tmp_path: Path, mount, rmapbt: int) -> None:
    """With a reverse map the kernel says which inode owns each block and the walk names it;
    without one, it says "unknown" and FIEMAP of the files finds them. e2fsprogs reads no xfs."""
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("not installed: mkfs.xfs (apt-get install xfsprogs)")
    image = tmp_path / "new.img"
    with open(image, "wb") as f:
        f.truncate(320 * MIB)
    subprocess.run(["mkfs.xfs", "-q", "-m", f"rmapbt={rmapbt}", str(image)], check=True, capture_output=True)
    _, point = mount(image)
    for name, size in FILES.items():
        (point / name).parent.mkdir(parents=True, exist_ok=True)
        (point / name).write_bytes(random.Random(name).randbytes(size))
    subprocess.run(["umount", str(point)], check=True)
    old = tmp_path / "old.img"
    shutil.copyfile(image, old)
    subprocess.run(["mount", str(image), str(point)], check=True)  # a new loop device of its own
    changed = _change(point)
    engine = _compare(image, old)
    started = time.monotonic()
    owners = owners_after(engine, "source")
    print(f"\nkernel owners of {owners.bytes_total / MIB:.1f} MiB on a mounted xfs (rmapbt={rmapbt}): "
          f"{time.monotonic() - started:.2f} s, {100 * owners.fraction:.2f}% attributed")
    assert engine.source_layout.fs.type == "xfs" and not owners.unavailable
    assert owners.notes[0].startswith(f"mounted on {point} (xfs)")
    by_label = {o.label: o for o in owners.owners}
    for path, size in changed.items():
        assert by_label[path].kind == FILE and by_label[path].bytes == size, (path, by_label[path])
    if rmapbt:  # the reverse map knows its own structures too
        assert owners.fraction >= 0.95, owners.to_dict()
    else:
        assert owners.bytes_of(FILE) >= 0.9 * sum(changed.values())
    subprocess.run(["umount", str(point)], check=True)
    unmounted = owners_after(engine, "source")
    assert unmounted.unavailable == "xfs, not mounted: only the kernel of a mount names its owners"


def test_a_kernel_that_refuses_leaves_it_to_e2fsprogs_in_one_line(tmp_path: Path, mount) -> None:
    """squashfs has no FS_IOC_GETFSMAP (ENOTTY): said in one note, then e2fsprogs is asked."""
    if shutil.which("mksquashfs") is None:
        pytest.skip("not installed: mksquashfs (apt-get install squashfs-tools)")
    image = tmp_path / "ro.img"
    tree = make_tree(tmp_path / "tree", {"a.bin": MIB})
    subprocess.run(["mksquashfs", str(tree), str(image), "-quiet", "-noappend"], check=True, capture_output=True)
    _, point = mount(image)
    size = image.stat().st_size
    owners = find_owners(Endpoint.parse(str(image)), [(0, size)], MIB, [FsRegion(0, size, "ext4")])
    refused = [n for n in owners.notes if "FS_IOC_GETFSMAP" in n]
    assert refused == [f"FS_IOC_GETFSMAP on {point}: Inappropriate ioctl for device (ENOTTY): "
                       "read with e2fsprogs instead"]
    assert owners.unavailable == "not an ext2/3/4 file system"


def test_a_worker_not_permitted_to_reach_the_mount_says_so(tmp_path: Path, mount) -> None:
    """A worker without root cannot open a mount point under a private directory (EACCES):
    one note says so before e2fsprogs is tried (and it cannot read the device either)."""
    if shutil.which("setpriv") is None or not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("no setpriv, or no /usr/bin/python3, for a worker that is not root")
    old = make_ext4(tmp_path / "fs.img", 32 * MIB, make_tree(tmp_path / "tree", {"a.bin": MIB}))
    device, point = mount(old)
    python = tmp_path / "python-as-nobody"
    python.write_text('#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 "$@"\n')
    python.chmod(0o755)
    owners = find_owners(Endpoint.parse(device), [(0, MIB)], MIB, [FsRegion(0, 32 * MIB, "ext4")],
                         factory=lambda endpoint: LocalTransport(str(python)))
    assert [n for n in owners.notes if "FS_IOC_GETFSMAP" in n] == [
        f"FS_IOC_GETFSMAP on {point}: Permission denied (EACCES): read with e2fsprogs instead"]
    assert "Permission denied" in owners.unavailable


def test_answers_are_believed_only_within_bounds() -> None:
    good = {"mount": "/m", "fstype": "ext4", "records": [[0, 8192, 2, 16]], "extents": [[4096, 4096, 12]],
            "names": {"12": ["/a\udcff"]}, "entries": 3, "cut": "", "truncated": False}
    answer = kernel_owners.check(good, 1 << 20)
    assert answer.records == [(0, 8192, (2, 16))] and answer.names == {12: ["/a\\udcff"]}
    assert kernel_owners.check({"mounted": False}, 1 << 20) is None
    # Records past the region are cut to it; overlapping ones made disjoint.
    clipped = kernel_owners.check(dict(good, records=[[0, 8192, 5, 0], [4096, 1 << 30, 6, 0]]), 1 << 20)
    assert clipped.records == [(0, 8192, (5, 0)), (8192, 1 << 20, (6, 0))]
    bad = [
        dict(good, records=[[0, -1, 2, 16]]),
        dict(good, records=[[0, 1, 2]]),
        dict(good, records=[[0, 1, 2, 1 << 40]] * 2 + [[0, 1, 2, "x"]]),
        dict(good, records=[[0, 1, 2, 16]] * (kernel_owners.MAX_RECORDS + 1)),
        dict(good, names={"x": ["/a"]}),
        dict(good, names={"1": "/a"}),
        dict(good, names={"1": ["a" * 5000]}),
        dict(good, mount=7),
        dict(good, error="not an errno; rm -rf", reason="x"),
        dict(good, entries=True),
    ]
    for answer in bad:
        with pytest.raises(kernel_owners.Refused):
            kernel_owners.check(answer, 1 << 20)
    with pytest.raises(kernel_owners.Refused, match=r"^FS_IOC_GETFSMAP on /m: Operation not permitted \(EPERM\)$"):
        kernel_owners.check({"mount": "/m", "fstype": "xfs", "error": "EPERM", "reason": "Operation not permitted"}, 1)


def test_classify_names_inodes_structures_free_and_leaves_the_unknown() -> None:
    answer = kernel_owners.Answer("/m", "ext4", records=[
        (0, 4096, (ord("X") << 32 | 1, 0x10)), (4096, 12288, (2, 0x10)), (12288, 16384, (1, 0x10)),
        (16384, 20480, (131, 0))], extents=[(4096, 8192, 12)])
    named, left = kernel_owners.classify(answer, [(1000 + 0, 1000 + 24576)], 1000)
    assert named == [(1000, 5096, ("structure", "superblocks and fs headers")), (13288, 17384, ("free",)),
                     (17384, 21480, ("inode", 131)), (5096, 9192, ("inode", 12))]
    assert left == [(9192, 13288), (21480, 25576)]  # unknown, no file; and past the answer


def test_the_cli_lists_a_mounted_sources_files(tmp_path: Path, mount, capsys) -> None:
    old = make_ext4(tmp_path / "old.img", 64 * MIB, make_tree(tmp_path / "tree", FILES))
    new = tmp_path / "new.img"
    shutil.copyfile(old, new)
    _, point = mount(new)
    changed = _change(point)
    assert main(["compare", str(new), str(old), "--owners"]) == 1
    out = capsys.readouterr().out
    assert f"note: mounted on {point} (ext4): owners from its kernel" in out
    for path in changed:
        assert f"  {path}  [file, " in out, path
