"""Block device tests on real loop devices: file<->device, device<->device, the safety checks."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from blocksync_tui.cli import main
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import EndpointError, UsageError
from blocksync_tui.engine.sync import SyncEngine, SyncOptions
from helpers import run_engine

pytestmark = pytest.mark.loop
MIB = 1 << 20


def _image(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def _device_bytes(device: str, size: int) -> bytes:
    with open(device, "rb") as f:
        return f.read(size)


def _changed(data: bytes, seed: int) -> bytes:
    rnd = random.Random(seed)
    out = bytearray(data)
    for _ in range(30):
        at = rnd.randrange(len(out) - 4096)
        out[at : at + 4096] = rnd.randbytes(4096)
    return bytes(out)


@pytest.mark.parametrize("direct", [False, True])
def test_file_to_device(tmp_path: Path, loop_device, direct: bool) -> None:
    src = _image(tmp_path / "src.img", 6 * MIB + 4096 * 3, 1)  # not a multiple of the chunk size
    dev = loop_device(_image(tmp_path / "dev.img", 8 * MIB, 2))
    report = run_engine(src, dev, verify=True, direct=direct)
    assert report.method == ("direct" if direct else "digests")
    assert _device_bytes(dev, src.stat().st_size) == src.read_bytes()
    assert report.verified and any("larger than the source" in w for w in report.warnings)


@pytest.mark.parametrize("direct", [False, True])
def test_device_to_device(tmp_path: Path, loop_device, direct: bool) -> None:
    a = _image(tmp_path / "a.img", 8 * MIB, 3)
    b = tmp_path / "b.img"
    b.write_bytes(_changed(a.read_bytes(), 4))
    src, dst = loop_device(a), loop_device(b)
    report = run_engine(src, dst, dry_run=True, direct=direct)
    assert report.outcome == "differs"
    # A compare by digests keeps the device's digests: the sync reads only the source.
    assert run_engine(src, dst, direct=direct).method == ("direct" if direct else "cache")
    assert _device_bytes(dst, 8 * MIB) == _device_bytes(src, 8 * MIB)


def test_device_to_file(tmp_path: Path, loop_device) -> None:
    src = loop_device(_image(tmp_path / "a.img", 5 * MIB, 5))
    dst = tmp_path / "copy.img"
    run_engine(src, dst)
    assert dst.read_bytes() == _device_bytes(src, 5 * MIB)


def test_device_too_small_is_refused_before_writing(tmp_path: Path, loop_device) -> None:
    src = _image(tmp_path / "src.img", 4 * MIB, 6)
    small = _image(tmp_path / "small.img", 2 * MIB, 7)
    dev = loop_device(small)
    before = _device_bytes(dev, 2 * MIB)
    with pytest.raises(EndpointError, match="too small"):
        run_engine(src, dev)
    assert _device_bytes(dev, 2 * MIB) == before


def test_mounted_device_is_refused(tmp_path: Path, loop_device) -> None:
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed")
    dev = loop_device(_image(tmp_path / "fs.img", 8 * MIB, 8))
    subprocess.run(["mkfs.ext4", "-q", dev], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", dev, str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("mount is not permitted here")
    try:
        # The source differs from the device only in its last MiB, which ext4 leaves unused:
        # if anything were written, that region would now hold the sentinel bytes.
        src = tmp_path / "src.img"
        src.write_bytes(_device_bytes(dev, 7 * MIB) + b"\xab" * MIB)
        with pytest.raises(EndpointError, match="in use .*mounted on"):
            run_engine(src, dev)
        # A dry run may read it, with a warning.
        report = run_engine(src, dev, dry_run=True)
        assert any("in use" in w for w in report.warnings)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert b"\xab" * 4096 not in _device_bytes(dev, 8 * MIB)


def test_image_file_of_a_loop_device_is_refused(tmp_path: Path, loop_device) -> None:
    """Writing under a loop device's feet corrupts whatever uses it."""
    image = _image(tmp_path / "busy.img", 2 * MIB, 10)
    loop_device(image)
    src = _image(tmp_path / "src.img", 2 * MIB, 11)
    with pytest.raises(EndpointError, match="in use .*held by /dev/loop"):
        run_engine(src, image)


def test_cli_needs_yes_for_a_block_device(tmp_path: Path, loop_device, capsys) -> None:
    src = _image(tmp_path / "src.img", 1 * MIB, 12)
    dev = loop_device(_image(tmp_path / "dev.img", 1 * MIB, 13))
    before = _device_bytes(dev, MIB)
    assert main(["sync", str(src), dev, "-q"]) == 2
    assert "without --yes" in capsys.readouterr().err
    assert _device_bytes(dev, MIB) == before
    assert main(["sync", str(src), dev, "-q", "--yes"]) == 0
    assert _device_bytes(dev, MIB) == src.read_bytes()


def _partitioned(tmp_path: Path, loop_device) -> tuple[str, Path]:
    """A loop device with a GPT of two partitions, and a device node for its first partition
    (made by hand: this machine has no udev to make /dev/loopNp1)."""
    if shutil.which("sfdisk") is None or shutil.which("partx") is None:
        pytest.skip("sfdisk and partx (util-linux) are needed")
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(16 * MIB))
    layout = "label: gpt\n,6M\n,6M\n"
    subprocess.run(["sfdisk", "-q", str(image)], input=layout, text=True, check=True, capture_output=True)
    disk = loop_device(image)
    subprocess.run(["partx", "-a", disk], capture_output=True)
    name = Path(disk).name
    dev = Path(f"/sys/block/{name}/{name}p1/dev")
    if not dev.exists():
        pytest.skip("the kernel did not expose the loop device's partitions")
    major, minor = dev.read_text().split(":")
    node = tmp_path / f"{name}p1"
    subprocess.run(["mknod", str(node), "b", major, minor.strip()], check=True)
    return disk, node


def test_a_partition_onto_its_own_disk_is_refused(tmp_path: Path, loop_device) -> None:
    disk, part = _partitioned(tmp_path, loop_device)
    before = _device_bytes(disk, 16 * MIB)
    for src, dst in ((str(part), disk), (disk, str(part))):
        with pytest.raises(UsageError, match="overlap"):
            run_engine(src, dst, dry_run=True)
        with pytest.raises(UsageError, match="overlap"):
            run_engine(src, dst)
    assert _device_bytes(disk, 16 * MIB) == before


def test_a_hard_link_to_a_loop_devices_image_is_refused(tmp_path: Path, loop_device) -> None:
    """Matched by device and inode, not by path: also after the original name is gone."""
    image = _image(tmp_path / "busy.img", 2 * MIB, 20)
    loop_device(image)
    link = tmp_path / "other-name.img"
    link.hardlink_to(image)
    src = _image(tmp_path / "src.img", 2 * MIB, 21)
    with pytest.raises(EndpointError, match="in use .*held by /dev/loop"):
        run_engine(src, link)
    image.unlink()  # sysfs now shows "busy.img (deleted)": only the kernel's inode tells
    with pytest.raises(EndpointError, match="in use .*held by /dev/loop"):
        run_engine(src, link)


def test_a_loop_device_and_its_own_backing_file_overlap(tmp_path: Path, loop_device) -> None:
    image = _image(tmp_path / "disk.img", 2 * MIB, 22)
    dev = loop_device(image)
    with pytest.raises(UsageError, match="overlap"):
        run_engine(dev, image.with_name("disk.img"), dry_run=True)


def test_a_device_written_between_prepare_and_run_is_refused(tmp_path: Path, loop_device) -> None:
    """The confirm dialog (typing the device's name) is the window: a write to the device
    there must not be taken for its state at prepare, when its digest cache was found good
    (the sync then called the device identical to the source while a chunk differed)."""
    chunk = 64 << 10
    data = random.Random(30).randbytes(32 * MIB)
    src = tmp_path / "src.img"
    src.write_bytes(data)
    dev = loop_device(_image(tmp_path / "dev.img", 32 * MIB, 31))
    assert run_engine(src, dev, chunk_size=chunk, direct=False).outcome == "synced"  # keeps a cache
    engine = SyncEngine(Endpoint.parse(str(src)), Endpoint.parse(dev), SyncOptions(chunk_size=chunk, direct=False))
    engine.prepare()
    foreign = b"\xee" * chunk
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.pwrite(fd, foreign, 77 * chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    with pytest.raises(EndpointError, match="changed after it was checked"):
        engine.run()
    assert _device_bytes(dev, 32 * MIB)[77 * chunk : 78 * chunk] == foreign  # nothing written
    report = run_engine(src, dev, chunk_size=chunk, direct=False)  # run again: compared, fixed
    assert report.outcome == "synced" and report.chunks["written"] == 1
    assert _device_bytes(dev, 32 * MIB) == data


def test_a_loop_device_on_another_device_overlaps_it_and_its_image(tmp_path: Path, loop_device) -> None:
    """`losetup /dev/loopB /dev/loopA`: sysfs shows no holder or slave between them, so only the
    loop device's own backing device tells that writing one rewrites the other (and the image
    under both: the source, read as it is overwritten)."""
    image = _image(tmp_path / "disk.img", 4 * MIB, 23)
    lower = loop_device(image)
    upper = loop_device(Path(lower))
    for src, dst in ((lower, upper), (upper, lower), (str(image), upper)):
        with pytest.raises(UsageError, match="overlap"):
            run_engine(src, dst, dry_run=True)


def test_two_loop_devices_of_one_image_overlap(tmp_path: Path, loop_device) -> None:
    image = _image(tmp_path / "disk.img", 4 * MIB, 24)
    first, second = loop_device(image), loop_device(image)
    before = image.read_bytes()
    with pytest.raises(UsageError, match="overlap"):
        run_engine(first, second)
    assert image.read_bytes() == before



def test_a_device_that_fails_its_writes_back_is_never_synced(tmp_path: Path, thin_device, capsys) -> None:
    """EIO: a loop device whose image lies on a full 1 MiB tmpfs takes every pwrite into the
    page cache and fails them when they are written back. The run fails there, in one line,
    and --verify says false: nothing is called synced before a flush answered."""
    dev = thin_device(1 * MIB, 16 * MIB)
    src = _image(tmp_path / "src.img", 16 * MIB, 32)
    report = tmp_path / "report.json"
    status = main(["sync", str(src), dev, "--yes", "-q", "--verify", "--no-resume",
                   "--chunk-size", "64K", "--json", str(report)])
    err = capsys.readouterr().err.splitlines()
    assert status == 2 and len(err) == 1 and "Input/output error" in err[0], err
    result = json.loads(report.read_text())
    assert result["outcome"] == "failed" and result["verified"] is False
