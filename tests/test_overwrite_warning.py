"""The warning of a file system that a sync destroys, on the command line as in the app's
confirm dialog: one line each, before anything is written (at the device prompt for a block
device), in the JSON report, never for a compare; on real GPT images (sgdisk, mkfs)."""

from __future__ import annotations

import json
import os
import pty
import random
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from disk_images import MiB, blkid, gpt_image, mkfs_ext4, need

from blocksync_tui.cli import main
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.layout import overwritten_file_systems
from blocksync_tui.engine.sync import SyncEngine, SyncOptions

CHUNK = ["--chunk-size", "64K"]


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    """A GPT image (p1 vfat 'EFI', p2 ext4 'root') and a copy whose p2 was made again as
    ext4 'data': the same type, another file system (another UUID)."""
    src = gpt_image(tmp_path / "src.img")
    dst = tmp_path / "dst.img"
    shutil.copyfile(src, dst)
    mkfs_ext4(dst, "data", 21 * MiB, 42 * MiB)
    return src, dst


def _lost(src: Path, dst: Path) -> list[str]:
    """The lines the confirm dialog shows for this pair, from the layouts both workers read."""
    engine = SyncEngine(Endpoint.parse(str(src)), Endpoint.parse(str(dst)), SyncOptions(dry_run=True))
    try:
        engine.prepare()
        return overwritten_file_systems(engine.destination_layout, engine.source_layout)
    finally:
        engine.close()


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("blocksync-tui: warning: ")]


def test_a_sync_onto_another_file_system_warns_once_and_reports_it(tmp_path: Path, capsys) -> None:
    src, dst = _pair(tmp_path)
    need("blkid")
    lost = _lost(src, dst)
    mine, theirs = blkid(dst, 21 * MiB)["UUID"], blkid(src, 21 * MiB)["UUID"]  # as blkid sees them
    assert lost == [f"the destination's p2 holds ext4 'data' (UUID {mine}), where the source has "
                    f"another one (UUID {theirs}): it will be overwritten"]
    # A compare writes nothing: no warning of what a sync would overwrite.
    assert main(["compare", str(src), str(dst), *CHUNK]) == 1
    assert _warnings(capsys.readouterr().err) == []
    report = tmp_path / "report.json"
    assert main(["sync", str(src), str(dst), *CHUNK, "--json", str(report)]) == 0
    out, err = capsys.readouterr()
    assert _warnings(err) == [f"blocksync-tui: warning: {lost[0]}"]  # once, the dialog's text
    assert lost[0] not in out
    assert json.loads(report.read_text())["warnings"] == lost
    assert dst.read_bytes() == src.read_bytes()
    # Synced, the destination holds the source's file systems: nothing left to warn of.
    assert main(["sync", str(src), str(dst), *CHUNK]) == 0
    assert _warnings(capsys.readouterr().err) == []


def test_file_systems_where_the_source_has_none_are_each_named(tmp_path: Path, capsys) -> None:
    dst = gpt_image(tmp_path / "dst.img")
    src = tmp_path / "src.img"
    src.write_bytes(random.Random(3).randbytes(64 * MiB))  # no table, no signature
    assert main(["sync", str(src), str(dst), *CHUNK, "-q", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    expected = [f"the destination's {part} holds {fs} where the source has no file system: it will be overwritten"
                for part, fs in (("p1", "vfat 'EFI'"), ("p2", "ext4 'root'"))]
    assert _warnings(err) == [f"blocksync-tui: warning: {line}" for line in expected]
    assert json.loads(out)["warnings"] == expected  # stdout holds the report alone


@pytest.mark.loop
def test_a_nightly_sync_onto_a_device_warns_and_goes_ahead_with_yes(tmp_path: Path, loop_device, capsys) -> None:
    src, image = _pair(tmp_path)
    lost = _lost(src, image)
    dev = loop_device(image)
    before = image.read_bytes()
    # No terminal and no --yes: the warning, then the refusal; nothing written.
    assert main(["sync", str(src), dev, *CHUNK, "-q"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"blocksync-tui: warning: {lost[0]}",
                   f"blocksync-tui: not writing to block device {dev} without --yes"]
    assert image.read_bytes() == before
    # A nightly job: --yes goes ahead as before; the warning goes to stderr, stdout is the summary.
    assert main(["sync", str(src), dev, *CHUNK, "-q", "--yes"]) == 0
    out, err = capsys.readouterr()
    assert _warnings(err) == [f"blocksync-tui: warning: {lost[0]}"]
    assert out.startswith("synced: ") and out.count("\n") == 1
    with open(dev, "rb") as device:
        assert device.read(64 * MiB) == src.read_bytes()


def _read_until(fd: int, text: bytes, timeout: float = 60.0) -> bytes:
    """What a terminal shows until `text` appears (or the program ends)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the program ended and closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


@pytest.mark.loop
def test_the_device_prompt_comes_after_the_warning_and_before_any_write(tmp_path: Path, loop_device) -> None:
    src, image = _pair(tmp_path)
    lost = _lost(src, image)
    dev = loop_device(image)
    before = image.read_bytes()
    master, slave = pty.openpty()  # a real terminal, as a person at the keyboard has
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    process = subprocess.Popen([sys.executable, "-m", "blocksync_tui", "sync", str(src), dev, *CHUNK, "-q"],
                               stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    try:
        shown = _read_until(master, b"to go ahead: ").decode().replace("\r\n", "\n")
        assert image.read_bytes() == before, "written before the answer"
        warning = f"blocksync-tui: warning: {lost[0]}"
        assert warning in shown and shown.endswith(f"Type {dev} to go ahead: "), shown
        assert shown.index(warning) < shown.index(f"About to overwrite block device {dev} (64.0 MiB) where it differs.")
        os.write(master, f"{dev}\n".encode())
        shown += _read_until(master, b"synced: ").decode()
        assert process.wait(60) == 0, shown
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    with open(dev, "rb") as device:
        assert device.read(64 * MiB) == src.read_bytes()
