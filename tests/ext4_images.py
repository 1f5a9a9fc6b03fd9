"""Provides real ext4 images for the owners tests: made with mkfs.ext4 -d (no mount), changed
with debugfs -w (write, rm, unlink) and by writing into a file's own blocks, which debugfs
lists; and GPT images (sgdisk) with such a file system in a partition."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

MIB = 1 << 20
BLOCK = 4096


def need(*tools: str) -> None:
    """Skip the test, naming what is missing, unless every tool is installed."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install e2fsprogs gdisk)")


def make_tree(root: Path, files: dict[str, int], seed: int = 1) -> Path:
    """A directory of files of random bytes, by relative path and size."""
    rnd = random.Random(seed)
    for name, size in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rnd.randbytes(size))
    return root


def make_ext4(image: Path, size: int, tree: Path, label: str = "root") -> Path:
    """An ext4 file system of `size` bytes in `image`, holding `tree` (mkfs.ext4 -d)."""
    need("mkfs.ext4", "debugfs")
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-L", label, "-d", str(tree), str(image)],
                   check=True, capture_output=True)
    return image


def debugfs(image: Path, *requests: str, write: bool = False, offset: int = 0) -> str:
    """Run debugfs requests on an image (at a byte offset); returns what they printed."""
    device = f"{image}?offset={offset}" if offset else str(image)
    out = []
    for request in requests:
        argv = ["debugfs", *(["-w"] if write else []), "-R", request, device]
        done = subprocess.run(argv, check=True, capture_output=True, text=True)
        out.append(done.stdout)
    return "".join(out)


def file_blocks(image: Path, path: str, offset: int = 0) -> list[int]:
    """The data blocks of a file, as debugfs lists them."""
    return [int(b) for b in debugfs(image, f"blocks {path}", offset=offset).split()]


def overwrite_file(image: Path, path: str, count: int, seed: int, offset: int = 0) -> int:
    """Write random bytes over the first `count` data blocks of a file, in place (its inode and
    directory stay as they were); returns the bytes changed."""
    blocks = file_blocks(image, path, offset)[:count]
    rnd = random.Random(seed)
    with open(image, "r+b") as f:
        for block in blocks:
            f.seek(offset + block * BLOCK)
            f.write(rnd.randbytes(BLOCK))
    return len(blocks) * BLOCK


def add_file(image: Path, host_file: Path, path: str, offset: int = 0) -> None:
    """Copy a file into the image with debugfs write."""
    debugfs(image, f"write {host_file} {path}", write=True, offset=offset)


def gpt_image(image: Path, size: int, partitions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """A GPT disk image with partitions of (first sector, sectors); returns their byte
    (offset, length)."""
    need("sgdisk")
    with open(image, "wb") as f:
        f.truncate(size)
    argv = ["sgdisk", "-o"]
    for number, (first, sectors) in enumerate(partitions, 1):
        argv += [f"-n{number}:{first}:{first + sectors - 1}", f"-t{number}:8300"]
    subprocess.run([*argv, str(image)], check=True, capture_output=True)
    return [(first * 512, sectors * 512) for first, sectors in partitions]


def place(image: Path, fs_image: Path, offset: int) -> None:
    """Copy a file system image into a disk image at a byte offset."""
    with open(image, "r+b") as disk, open(fs_image, "rb") as fs:
        disk.seek(offset)
        shutil.copyfileobj(fs, disk, 4 * MIB)
