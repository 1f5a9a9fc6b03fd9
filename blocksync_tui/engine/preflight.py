"""Provides the decisions made before a run writes anything, as pure functions.

Each worker answers HELLO (what it can do) and OPEN (what it opened). Those answers arrive as
JSON from a process we do not trust to be well formed, so they are parsed once, here, into typed
values; everything after reads fields, never `.get` on a dict. `check_pair` then refuses what
would be unsafe or pointless and `negotiate` picks the digest and the codec. Neither talks to a
worker, so both are tested on plain values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blocksync_tui.engine.worker import protocol as wire
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import EndpointError, ProtocolError, UsageError
from blocksync_tui.engine.options import SyncOptions

SOURCE = "source"
DESTINATION = "destination"
FAST_CODECS = ("zstd", "lz4")
SUB_ALGORITHM = "xxh64"
"""The sub-block digest when both ends have xxhash: cheap enough to take during the scan."""


@dataclass(frozen=True)
class Hello:
    """What a worker said it can do."""

    algorithms: tuple[str, ...]
    """Chunk digests it can compute, fastest collision-safe first."""
    compressors: tuple[str, ...]
    boot_id: str
    """Unique per boot of its machine: two workers with one boot id share a kernel."""
    machine_id: str = ""
    """Its machine's id, the same across boots (/etc/machine-id), or "": part of what a
    destination's kept digests are keyed by."""
    host: str = ""
    """Its machine's host name (for the report)."""

    @classmethod
    def parse(cls, answer: dict) -> Hello:
        """Raises ProtocolError if a field is missing or of the wrong type."""
        try:
            return cls(
                algorithms=_strings(answer["algorithms"]),
                compressors=_strings(answer.get("compressors", [])),
                boot_id=str(answer.get("boot_id") or ""),
                machine_id=_bounded(str(answer.get("machine_id") or ""), "machine id"),
                host=str(answer.get("host") or "")[:255],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"a malformed HELLO ({exc})") from None


@dataclass(frozen=True)
class Opened:
    """What a worker said of the file or device it opened (or found absent)."""

    path: str
    exists: bool
    kind: str = "file"
    """"file" or "block"."""
    size: int = 0
    identity: tuple[int, int, int] | None = None
    """(st_dev, st_ino, st_rdev) of what was opened."""
    mtime_ns: int = 0
    ctime_ns: int = 0
    sectors_written: int = -1
    """A block device's sectors written since boot (-1: not known)."""
    readonly: bool = False
    mounted: tuple[str, ...] = ()
    holders: tuple[str, ...] = ()
    swap: tuple[str, ...] = ()
    devnum: str = ""
    """"major:minor" of a block device."""
    stack: tuple[str, ...] = ()
    """The "major:minor" of every device below or above it (slaves, holders, partitions)."""
    backing: tuple[tuple[int, int], ...] = ()
    """A loop device's backing file, as (st_dev, st_ino)."""
    realpath: str = ""
    """The path with every symbolic link resolved, as the worker opened it."""
    ids: tuple[tuple[str, str], ...] = ()
    """A block device's names that do not depend on its number or contents, sorted (key,
    value) pairs: WWN, serial, device-mapper UUID, by-id and by-partuuid links, a loop device's
    backing file as "st_dev:st_ino"."""
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    """The answer as it came, for display (model, sector size...)."""

    @classmethod
    def parse(cls, answer: dict) -> Opened:
        """Raises ProtocolError if a field is missing or of the wrong type."""
        try:
            if not answer.get("exists"):
                return cls(path=str(answer.get("path", "")), exists=False,
                           realpath=_bounded(str(answer.get("realpath") or ""), "path", 4096),
                           raw=answer)
            kind = answer["kind"]
            if kind not in ("file", "block"):
                raise ValueError(f"kind {kind!r}")
            identity = answer.get("identity")
            size = int(answer["size"])
            if size < 0:
                raise ValueError(f"size {size}")
            return cls(
                path=str(answer["path"]),
                exists=True,
                kind=kind,
                size=size,
                identity=tuple(int(x) for x in identity) if identity else None,  # type: ignore[arg-type]
                mtime_ns=int(answer.get("mtime_ns") or 0),
                ctime_ns=int(answer.get("ctime_ns") or 0),
                sectors_written=int(answer.get("sectors_written", -1)),
                readonly=bool(answer.get("readonly")),
                mounted=_strings(answer.get("mounted") or []),
                holders=_strings(answer.get("holders") or []),
                swap=_strings(answer.get("swap") or []),
                devnum=str(answer.get("devnum") or ""),
                stack=_strings(answer.get("stack") or []),
                backing=tuple((int(d), int(i)) for d, i in answer.get("backing") or []),
                realpath=_bounded(str(answer.get("realpath") or answer["path"]), "path", 4096),
                ids=_device_ids(answer.get("ids") or {}),
                raw=answer,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"a malformed OPEN answer ({exc})") from None

    @property
    def in_use(self) -> bool:
        """Mounted, held (by a loop device, a partition, device-mapper) or used as swap."""
        return bool(self.mounted or self.holders or self.swap)

    @property
    def usage(self) -> str:
        """What uses it, in words."""
        return wire.usage_text(self.raw)

    def expectation(self) -> dict:
        """What a later open for writing must find again: this very object, unchanged. Not
        written to either: a file's change time (which a write moves even when the modification
        time is set back) and a block device's count of sectors written. What was checked here
        (a digest cache, above all) holds only if nothing wrote in between: the confirm dialog
        may stay open for minutes."""
        identity = list(self.identity) if self.identity else None
        return {"kind": self.kind, "size": self.size, "identity": identity, "mtime_ns": self.mtime_ns,
                "ctime_ns": self.ctime_ns, "sectors_written": self.sectors_written}


DEVICE_ID_KEYS = ("wwid", "serial", "dm_uuid", "by_id", "partuuid", "loop")


def _device_ids(value: object) -> tuple[tuple[str, str], ...]:
    """OPEN's `ids` of a block device, checked: known keys, bounded strings, a loop device's
    backing file as two integers."""
    if not isinstance(value, dict):
        raise TypeError("ids must be an object")
    pairs = []
    for key, item in value.items():
        if key not in DEVICE_ID_KEYS:
            raise ValueError(f"unknown device id {key!r}")
        if key == "loop":
            dev, ino = (int(x) for x in item)
            pairs.append((key, f"{dev}:{ino}"))
        elif key in ("by_id", "partuuid"):
            names = _strings(item)
            if len(names) > 64:
                raise ValueError(f"{len(names)} {key} names")
            pairs.extend((key, _bounded(name, key)) for name in sorted(names))
        else:
            pairs.append((key, _bounded(str(item), key)))
    return tuple(sorted(pairs))


def _bounded(text: str, what: str, limit: int = 256) -> str:
    if len(text) > limit:
        raise ValueError(f"a {what} of {len(text)} characters")
    return text


@dataclass(frozen=True)
class Flushed:
    """What a destination's worker found after the final flush, by fstat: after our writes."""

    size: int
    identity: tuple[int, int, int]
    mtime_ns: int
    ctime_ns: int
    sectors_written: int

    @classmethod
    def parse(cls, answer: dict) -> Flushed:
        """Raises ProtocolError if a field is missing or of the wrong type."""
        try:
            dev, ino, rdev = (int(x) for x in answer["identity"])
            return cls(size=int(answer["size"]), identity=(dev, ino, rdev), mtime_ns=int(answer["mtime_ns"]),
                       ctime_ns=int(answer["ctime_ns"]), sectors_written=int(answer["sectors_written"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"a malformed FLUSH answer ({exc})") from None


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return tuple(str(v) for v in value)


def same_host(src: Hello, dst: Hello, src_host_key: str, dst_host_key: str) -> bool:
    """Whether both workers run on one machine: reached the same way, or one boot id."""
    return src_host_key == dst_host_key or bool(src.boot_id and src.boot_id == dst.boot_id)


def same_object(a: Opened, b: Opened) -> bool:
    """Whether two opened endpoints are the same file (inode) or the same device (rdev)."""
    if not a.identity or not b.identity:
        return False
    if a.kind == b.kind == "block":
        return a.identity[2] == b.identity[2]
    return a.identity[:2] == b.identity[:2]


def overlap(a: Opened, b: Opened) -> bool:
    """Whether two opened endpoints on one host share storage without being the same object:
    a partition and its disk, a device-mapper device and what it is built on, a loop device
    and the device it is set up on (each worker lists its device's stack, by "major:minor"),
    a loop device (or what is built on one) and its backing file, or two loop devices of one
    file."""
    if a.kind == b.kind == "block":
        return a.devnum in b.stack or b.devnum in a.stack or bool(set(a.backing) & set(b.backing))
    if {a.kind, b.kind} == {"file", "block"}:
        file, device = (a, b) if a.kind == "file" else (b, a)
        return bool(file.identity) and file.identity[:2] in device.backing  # type: ignore[index]
    return False


@dataclass(frozen=True)
class PairCheck:
    """The outcome of checking a source and a destination that may go ahead."""

    warnings: list[str]
    dest_absent: bool
    """The destination does not exist yet: a sync creates it."""
    size_difference: int = 0
    """How much longer (or, negative, shorter) a destination file is than the source: a
    difference in itself, which a sync removes by truncating or growing the file."""


def check_pair(
    source: Endpoint,
    destination: Endpoint,
    src: Opened,
    dst: Opened,
    one_host: bool,
    dry_run: bool,
) -> PairCheck:
    """Refuse what would be unsafe or pointless; collect warnings for the rest.

    Raises:
        UsageError: both ends are one object, or overlap.
        EndpointError: the destination is in use, too small or read-only (for a sync).
    """
    if one_host and dst.exists and same_object(src, dst):
        raise UsageError(f"{source} and {destination} are the same file or device")
    if one_host and dst.exists and overlap(src, dst):
        raise UsageError(
            f"{source} and {destination} overlap (one is a partition, holder or "
            "backing file of the other, or both are backed by one file): refusing"
        )
    warnings: list[str] = []
    if dst.in_use:
        if not dry_run:
            raise EndpointError(f"{destination} is in use ({dst.usage}): refusing to write").on(
                DESTINATION
            )
        warnings.append(f"{destination} is in use ({dst.usage}): its contents may change")
    if src.mounted:
        warnings.append(f"{source} is mounted: a file system in use can change while it is copied")
    if not dst.exists:
        return PairCheck(warnings, dest_absent=True)
    if dst.kind == "block":
        if dst.size < src.size:
            raise EndpointError(
                f"{destination} is too small: {dst.size} bytes, the source has {src.size}"
            ).on(DESTINATION)
        if dst.size > src.size:
            warnings.append(
                f"{destination} is larger than the source; "
                f"its last {dst.size - src.size} bytes are left as they are"
            )
        if dst.readonly and not dry_run:
            raise EndpointError(f"{destination} is a read-only device").on(DESTINATION)
        return PairCheck(warnings, dest_absent=False)
    if dst.size != src.size:
        verb = "grow" if dst.size < src.size else "truncate"
        will = f"a sync would {verb} it" if dry_run else f"it will be {verb}d"
        warnings.append(f"{destination} is {dst.size} bytes; {will} to {src.size}")
    return PairCheck(warnings, dest_absent=False, size_difference=dst.size - src.size)


@dataclass(frozen=True)
class Negotiated:
    """The digests and the codec both workers will use."""

    algorithm: str
    digest_size: int
    sub_algorithm: str
    """Digest of sub-blocks (truncated): xxh64 when both ends have xxhash, else `algorithm`."""
    compression: str

    @property
    def subs_during_scan(self) -> bool:
        """Whether the scan takes sub-block digests of every chunk as it reads: only with
        xxhash, cheap enough that a differing chunk is then never read twice."""
        return self.sub_algorithm == SUB_ALGORITHM


def negotiate(src: Hello, dst: Hello, options: SyncOptions) -> Negotiated:
    """Pick the chunk digest (the first both have, or the one asked for) and the codec.

    Raises:
        UsageError: the digest or codec asked for is missing on one end.
    """
    both = [a for a in src.algorithms if a in dst.algorithms]
    if not both:
        raise UsageError("the two ends have no chunk digest in common")
    wanted = options.algorithm
    if wanted and wanted not in both:
        raise UsageError(
            f"hash {wanted!r} is not available on both ends (both have: {', '.join(both)})"
        )
    algorithm = wanted or both[0]
    codecs = [c for c in src.compressors if c in dst.compressors]
    choice = options.compress
    if choice == "auto":
        compression = next((c for c in FAST_CODECS if c in codecs), "none")
    elif choice != "none" and choice not in codecs:
        raise UsageError(f"compression {choice!r} is not available on both ends")
    else:
        compression = choice
    return Negotiated(
        algorithm=algorithm,
        digest_size=len(wire.new_hash(algorithm)().digest()),
        sub_algorithm=SUB_ALGORITHM if "xxh128" in both else algorithm,
        compression=compression,
    )
