"""Shared fixtures: loop devices, and (in sshd.py) a real OpenSSH server on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sshd import SshServer, sshd_path


@pytest.fixture(autouse=True)
def own_cache_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Resume state files and digest caches (~/.cache/blocksync-tui/) of each test go to a
    directory of its own, never the user's and never another test's; CLIs and engine
    processes started by the test inherit it."""
    home = tmp_path_factory.mktemp("cache-home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def _can_use_loop_devices() -> str | None:
    """None if loop devices work here, else the reason they do not."""
    if os.geteuid() != 0:
        return "loop devices need root"
    if shutil.which("losetup") is None:
        return "losetup is not installed"
    return None


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Callable[[Path], str]]:
    """Attach image files to loop devices; every device is detached after the test."""
    reason = _can_use_loop_devices()
    if reason:
        pytest.skip(reason)
    attached: list[str] = []

    def attach(image: Path) -> str:
        result = subprocess.run(
            ["losetup", "-f", "--show", str(image)], capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.skip(f"losetup failed: {result.stderr.strip()}")
        attached.append(result.stdout.strip())
        return attached[-1]

    yield attach
    for device in attached:
        subprocess.run(["umount", device], capture_output=True)
        subprocess.run(["losetup", "-d", device], capture_output=True)


@pytest.fixture
def thin_device(tmp_path: Path, loop_device) -> Iterator[Callable[[int, int], str]]:
    """A loop device of `size` bytes over a sparse file in a tmpfs of `pool` bytes: a thin volume
    that takes every pwrite into the page cache and fails the writeback once the pool is full."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    pools: list[Path] = []

    def make(pool_size: int, size: int) -> str:
        pool = tmp_path / f"pool{len(pools)}"
        pool.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={pool_size}", "tmpfs", str(pool)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here")
        pools.append(pool)
        with open(pool / "thin.img", "wb") as f:
            f.truncate(size)
        return loop_device(pool / "thin.img")

    yield make
    for pool in pools:  # lazily: the loop device over it is detached after this
        subprocess.run(["umount", "-l", str(pool)], capture_output=True)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A private OpenSSH sshd on 127.0.0.1 (its own keys and files); skips if sshd is missing."""
    if sshd_path() is None:
        pytest.skip("OpenSSH sshd is not installed (apt-get install openssh-server)")
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"cannot run a private sshd here: {exc}")
    yield server
    server.stop()


@pytest.fixture
def kill_ssh_connections(sshd: SshServer) -> Callable[[], list[int]]:
    """SIGKILL the sshd processes serving every open connection; returns the orphaned session pids."""
    return sshd.kill_connections
