"""Provides SyncOptions and SshOptions, what a user may choose about a run, and the engine's
fixed tunables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from blocksync_tui.engine.worker import protocol as wire
from blocksync_tui.engine.errors import UsageError
from blocksync_tui.engine.prior import Prior

MIN_CHUNK = 4096
MAX_CHUNK = wire.MAX_CHUNK_SIZE
SUB_BLOCK = 4096
"""The unit of a delta inside a differing chunk: the page size of every file system in use."""
MAX_STREAMS = 16
COMPRESSIONS = ("auto", "none", "zlib", "lz4", "zstd")
CACHE_MODES = ("auto", "full", "forget")
PEER_TIMEOUT = 120.0
"""A worker that owes an answer and says nothing for this long ends the run. A scan reports at
least every 50 ms while it reads, so only a hung disk or a dead link stays this quiet."""


@dataclass
class SyncOptions:
    """How to run a compare or a sync."""

    chunk_size: int = 1 << 20
    algorithm: str | None = None
    """Chunk digest; None picks the fastest collision-safe one both workers have."""
    compress: str = "auto"
    """auto (a fast codec if both ends have one), none, zlib, lz4, zstd."""
    verify: bool = False
    dry_run: bool = False
    sub_block: int = SUB_BLOCK
    direct: bool = True
    """When both ends are on one machine, the destination's worker reads the source itself and
    compares bytes: no digests, no data through the controller. False forces digests."""
    peer_timeout: float = PEER_TIMEOUT
    """Seconds a worker that owes an answer may stay silent before the run ends."""
    compare: bool = True
    """False: a sync that writes every chunk without comparing (a destination known to differ
    everywhere): the source streams, and its zeros are zeroed on the destination."""
    cache: str = "auto"
    """The destination's digest cache: "auto" (a valid one stands in for reading the
    destination, after a sample of it is re-read; one is kept after the run), "full" (read
    both sides; keep a fresh one) or "forget" (remove it; keep none)."""

    layout: bool = True
    """Read each side's partition table and file-system signatures (a few KiB) while opening:
    the report counts differing bytes per partition, and the app shows them."""

    streams: int | None = None
    """Lanes of the run (engine.parallel): each settles its share of the chunks in a process,
    with workers and connections, of its own. None: `auto_streams` decides."""
    lane: tuple[int, int] | None = None
    """(k, n): settle only the k-th of n contiguous, equal shares of the chunks (one lane of a
    `--streams n` run, engine.parallel); None: all of them."""

    prior: Prior | None = None
    """Chunks known to be settled already (a dry run's states): only the others and a sample
    of these are read (engine.prior). Composes with `lane`: a lane reads its share of them."""
    changed_from: str | None = None
    """A list of the ranges known to have changed (a ddrescue mapfile, or thin_delta's XML):
    only those and a sample of the rest are compared (engine.changelist)."""
    resume: bool = True
    """A sync records what it has done in a state file while it runs, and a sync of the same
    pair picks up from it (engine.resume)."""
    state_file: str | None = None
    """The resume state file; None: one per pair under ~/.cache/blocksync-tui/resume/."""

    def chunk_range(self, total: int) -> tuple[int, int]:
        """The chunks first..end-1 that this run settles, of a device of `total` chunks."""
        if self.lane is None:
            return 0, total
        k, n = self.lane
        return total * k // n, total * (k + 1) // n

    def check(self) -> None:
        """Raises UsageError for options that cannot work."""
        size = self.chunk_size
        if size & (size - 1) or not MIN_CHUNK <= size <= MAX_CHUNK:
            raise UsageError(
                f"chunk size {size} must be a power of two from {MIN_CHUNK} to {MAX_CHUNK} bytes"
            )
        if self.compress not in COMPRESSIONS:
            raise UsageError(f"unknown compression {self.compress!r}")
        if self.streams is not None and not 1 <= self.streams <= MAX_STREAMS:
            raise UsageError(f"--streams {self.streams}: must be from 1 to {MAX_STREAMS}")
        if self.lane is not None and not 0 <= self.lane[0] < self.lane[1]:
            raise UsageError(f"lane {self.lane[0]} of {self.lane[1]} does not exist")
        if self.cache not in CACHE_MODES:
            raise UsageError(f"unknown cache mode {self.cache!r}")
        if not self.compare and self.dry_run:
            raise UsageError("a compare without comparing is nothing: --no-compare is for sync")


def auto_streams(any_remote: bool, cpus: int | None = None, cached: bool = False) -> int:
    """Lanes for a run whose `--streams` was not given: when a side is remote, one per two
    controller cores (at most 4). A lane takes about two cores here: its controller, whose
    paramiko connection is bound to one, and its local worker reading or writing (measured: on
    2 cores one lane beat two in every first copy, pull and repeat push). One when both are
    local, where extra engine processes cost more to start than they save, and one when the
    destination has a digest cache (`cached`), which spares reading it: what is left is
    reading the source, which more connections do not make faster. Where this says one, a
    first copy over a long link may still take more, once connected (parallel.AutoLanes)."""
    if not any_remote or cached:
        return 1
    return max(1, min(4, (cpus if cpus is not None else (os.cpu_count() or 1)) // 2))


@dataclass
class SshOptions:
    """How to reach remote endpoints. Secrets are never stored here: keys are paths."""

    identity_files: list[str] = field(default_factory=list)
    """Private key files to offer, in addition to ~/.ssh/config's and the agent's."""
    config_file: str | None = None
    """ssh_config to read; None means ~/.ssh/config if it exists."""
    known_hosts: str | None = None
    """The one known_hosts file to check host keys against and save new ones to. None means
    ssh_config's UserKnownHostsFile and GlobalKnownHostsFile (by default ~/.ssh/known_hosts,
    ~/.ssh/known_hosts2, /etc/ssh/ssh_known_hosts, /etc/ssh/ssh_known_hosts2)."""
    accept_new_host_key: bool = False
    """Trust and remember a key for a host that known_hosts does not list (never a changed key).
    True wins over ssh_config's StrictHostKeyChecking; False leaves it to ssh_config."""
    python: str = "python3"
    """The interpreter to start on remote hosts."""
    sudo: bool = False
    """Run remote workers under `sudo -n`."""
    connect_timeout: float | None = None
    """Seconds for each step of connecting; None means ssh_config's ConnectTimeout, else 15."""
