"""The checks and the negotiation before a run, on plain values: no workers."""

from __future__ import annotations

import pytest

from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import EndpointError, ProtocolError, UsageError
from blocksync_tui.engine.options import SyncOptions
from blocksync_tui.engine.preflight import Hello, Opened, check_pair, negotiate, overlap, same_host, same_object

SRC, DST = Endpoint.parse("/src.img"), Endpoint.parse("/dev/sdz")


def _file(size: int = 1 << 20, ino: int = 1, **extra) -> Opened:
    return Opened.parse({"exists": True, "path": "/f", "kind": "file", "size": size,
                         "identity": [8, ino, 0], **extra})


def _block(size: int = 1 << 20, devnum: str = "7:0", **extra) -> Opened:
    major, minor = map(int, devnum.split(":"))
    return Opened.parse({"exists": True, "path": "/dev/x", "kind": "block", "size": size,
                         "identity": [5, 100 + minor, (major << 8) | minor], "devnum": devnum, **extra})


def test_malformed_answers_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="OPEN"):
        Opened.parse({"exists": True, "path": "/f", "kind": "pipe", "size": 1})
    with pytest.raises(ProtocolError, match="OPEN"):
        Opened.parse({"exists": True, "path": "/f", "kind": "file", "size": -1})
    with pytest.raises(ProtocolError, match="OPEN"):
        Opened.parse({"exists": True, "path": "/f", "kind": "file", "size": 1, "mounted": "/"})
    with pytest.raises(ProtocolError, match="HELLO"):
        Hello.parse({"algorithms": "sha256"})
    assert not Opened.parse({"exists": False, "path": "/new"}).exists


def test_identity_overlap_and_host() -> None:
    assert same_object(_file(ino=3), _file(ino=3)) and not same_object(_file(ino=3), _file(ino=4))
    disk, part = _block(devnum="8:0", stack=["8:1"]), _block(devnum="8:1", stack=["8:0"])
    assert overlap(disk, part) and overlap(part, disk) and not overlap(disk, _block(devnum="9:0"))
    loop = _block(devnum="7:0", backing=[[8, 3]])
    assert overlap(_file(ino=3), loop) and not overlap(_file(ino=4), loop)
    a, b = Hello(("sha256",), (), "boot-a"), Hello(("sha256",), (), "boot-b")
    assert same_host(a, a, "x:22", "y:22") and not same_host(a, b, "x:22", "y:22")
    assert same_host(a, b, "localhost", "localhost")


def test_check_pair_refusals_and_warnings() -> None:
    with pytest.raises(UsageError, match="same file"):
        check_pair(SRC, DST, _file(ino=3), _file(ino=3), True, False)
    assert check_pair(SRC, DST, _file(ino=3), _file(ino=3), False, False).warnings == []  # two hosts
    with pytest.raises(EndpointError, match="in use"):
        check_pair(SRC, DST, _file(), _block(mounted=["/mnt"]), False, False)
    assert "in use" in check_pair(SRC, DST, _file(), _block(mounted=["/mnt"]), False, True).warnings[0]
    with pytest.raises(EndpointError, match="too small"):
        check_pair(SRC, DST, _file(size=2 << 20), _block(size=1 << 20), False, False)
    with pytest.raises(EndpointError, match="read-only"):
        check_pair(SRC, DST, _file(), _block(readonly=True), False, False)
    longer = check_pair(SRC, DST, _file(size=100), _file(size=164, ino=9), False, False)
    assert longer.size_difference == 64 and "truncated" in longer.warnings[0]
    absent = check_pair(SRC, DST, _file(), Opened.parse({"exists": False, "path": "/n"}), True, False)
    assert absent.dest_absent and absent.size_difference == 0


def test_negotiate() -> None:
    fast = Hello(("xxh128", "sha256"), ("zstd", "lz4", "zlib"), "")
    plain = Hello(("sha256", "md5"), ("zlib",), "")
    chosen = negotiate(fast, fast, SyncOptions())
    assert (chosen.algorithm, chosen.digest_size, chosen.sub_algorithm, chosen.compression) == (
        "xxh128", 16, "xxh64", "zstd")
    assert chosen.subs_during_scan
    mixed = negotiate(fast, plain, SyncOptions())
    assert (mixed.algorithm, mixed.sub_algorithm, mixed.compression) == ("sha256", "sha256", "none")
    assert not mixed.subs_during_scan
    with pytest.raises(UsageError, match="not available"):
        negotiate(fast, plain, SyncOptions(algorithm="xxh128"))
    with pytest.raises(UsageError, match="not available"):
        negotiate(fast, plain, SyncOptions(compress="zstd"))
    with pytest.raises(UsageError, match="in common"):
        negotiate(Hello(("md5",), (), ""), Hello(("sha1",), (), ""), SyncOptions())
