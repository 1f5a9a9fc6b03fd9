"""The destination digest cache: a repeat run reads only the source, and a cache that lies, a
destination swapped for another, a corrupt cache file or a failed run never make it trusted."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from blocksync_tui.cli import main
from blocksync_tui.engine import digest_cache
from blocksync_tui.engine.digest_cache import CacheError, DigestCache, CacheLayout
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import Cancelled, ProtocolError
from blocksync_tui.engine.sync import SyncEngine, SyncOptions
from blocksync_tui.engine.worker import protocol as wire
from helpers import run_engine, tampered_engine

KIB = 1 << 10
CHUNK = 64 * KIB


def _pages_changed(data: bytes, seed: int, count: int) -> bytes:
    """`data` with `count` 4 KiB pages rewritten at random."""
    rnd = random.Random(seed)
    out = bytearray(data)
    for _ in range(count):
        at = rnd.randrange(len(out) // 4096) * 4096
        out[at : at + 4096] = rnd.randbytes(4096)
    return bytes(out)


def _pair(tmp_path: Path, chunks: int, seed: int = 1) -> tuple[Path, Path]:
    data = random.Random(seed).randbytes(chunks * CHUNK)
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    src.write_bytes(data)
    dst.write_bytes(_pages_changed(data, seed + 1, chunks // 4 + 1))
    return src, dst


def _cache_file(dst: Path) -> Path:
    return digest_cache.cache_path(str(Endpoint.parse(str(dst))))


def _behind_its_back(path: Path, edits: list[int]) -> None:
    """Change a byte at each offset, keeping the size and restoring the mtime to the ns."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        for at in edits:
            f.seek(at)
            old = f.read(1)
            f.seek(at)
            f.write(bytes([old[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns


def _lie(dst: Path, chunks: list[int]) -> None:
    """Make the destination's cache lie about these chunks (a valid file, wrong digests): what a
    change that its identity cannot see (a device written in another boot) leaves."""
    path = _cache_file(dst)
    cache = digest_cache.load(path)
    digests = bytearray(cache.digests)
    size = cache.layout.digest_size
    for index in chunks:
        digests[index * size] ^= 0xFF
    digest_cache.save(path, DigestCache(cache.destination, cache.identity, cache.layout, cache.states, digests, cache.subs))


@pytest.mark.parametrize("direct", [False, True])
def test_a_repeat_sync_reads_only_the_source(tmp_path: Path, direct: bool) -> None:
    """After a sync, the next one (the source changed, the destination did not) reads on the
    destination only the sample of 64 chunks: differing chunks go by the cached sub-digests."""
    src, dst = _pair(tmp_path, chunks=256)
    first = run_engine(src, dst, chunk_size=CHUNK, direct=direct)
    assert first.method == ("direct" if direct else "digests") and first.cache == "kept"
    assert first.scanned_destination == first.size
    src.write_bytes(_pages_changed(src.read_bytes(), 7, 40))
    second = run_engine(src, dst, chunk_size=CHUNK, direct=direct, verify=True)
    assert second.method == "cache" and second.cache == "used, kept" and second.warnings == []
    assert second.chunks_differing > 20 and second.verified
    assert second.scanned_source == second.size
    assert second.scanned_destination == 64 * CHUNK  # the sample, and nothing else
    assert dst.read_bytes() == src.read_bytes()
    third = run_engine(src, dst, chunk_size=CHUNK, direct=direct, dry_run=True)
    assert (third.method, third.outcome, third.cache) == ("cache", "identical", "used")


def _twice(op: int, rid: int, payload: bytes):
    return [(op, rid, payload)] * (2 if op == wire.OP_DIGESTS else 1)


def _held_back(op: int, rid: int, payload: bytes):
    return [] if op == wire.OP_DIGESTS else [(op, rid, payload)]


def _other_chunk(op: int, rid: int, payload: bytes):
    if op != wire.OP_DIGESTS:
        return [(op, rid, payload)]
    first, count, size = wire.DIGESTS_HEAD.unpack_from(payload)
    return [(op, rid, wire.DIGESTS_HEAD.pack(first + 1, count, size) + payload[wire.DIGESTS_HEAD.size :])]


def _short_digests(op: int, rid: int, payload: bytes):
    return [(op, rid, payload[:-1] if op == wire.OP_DIGESTS else payload)]


@pytest.mark.parametrize("tamper, refusal", [
    (_twice, "not sampled or twice"),
    (_held_back, "an incomplete sample"),
    (_other_chunk, "not sampled or twice"),
    (_short_digests, "a sample batch of the wrong length"),
], ids=["twice", "held-back", "another-chunk", "short"])
def test_a_destination_that_answers_the_sample_falsely_is_a_protocol_error(tmp_path: Path, tamper, refusal: str) -> None:
    """Against a cache, the destination's only reads are the sample: each sampled chunk
    answered once, with digests of the negotiated size, or the run ends in one line and
    nothing is written."""
    src, dst = _pair(tmp_path, chunks=256)
    run_engine(src, dst, chunk_size=CHUNK, direct=False)
    src.write_bytes(_pages_changed(src.read_bytes(), 7, 40))
    before = dst.read_bytes()
    engine = tampered_engine(src, dst, "destination", tamper, chunk_size=CHUNK, direct=False)
    engine.prepare()
    with pytest.raises(ProtocolError, match=refusal) as caught:
        engine.run()
    assert "\n" not in str(caught.value) and "destination" in str(caught.value)
    assert dst.read_bytes() == before


@pytest.mark.parametrize("direct", [False, True])
def test_a_first_copy_keeps_a_cache(tmp_path: Path, direct: bool) -> None:
    """A new file (streamed, or on one host compared with its holes) keeps its digests: the
    next sync reads only the source."""
    data = bytearray(random.Random(8).randbytes(128 * CHUNK))
    data[10 * CHUNK : 20 * CHUNK] = bytes(10 * CHUNK)
    src, dst = tmp_path / "src.img", tmp_path / "new.img"
    src.write_bytes(data)
    first = run_engine(src, dst, chunk_size=CHUNK, direct=direct)
    assert first.method == ("direct" if direct else "stream") and first.cache == "kept"
    src.write_bytes(_pages_changed(bytes(data), 21, 20))
    second = run_engine(src, dst, chunk_size=CHUNK, direct=direct)
    assert (second.method, second.cache) == ("cache", "used, kept")
    assert second.scanned_destination == 64 * CHUNK and second.chunks["zero"] >= 5  # allocated in the source
    assert dst.read_bytes() == src.read_bytes()


def test_full_reads_both_sides_and_refreshes_the_cache(tmp_path: Path) -> None:
    src, dst = _pair(tmp_path, chunks=128)
    run_engine(src, dst, chunk_size=CHUNK, direct=False)
    report = run_engine(src, dst, chunk_size=CHUNK, direct=False, cache="full")
    assert (report.method, report.cache) == ("digests", "kept")
    assert report.scanned_destination == report.size


def test_a_file_written_behind_its_back_with_its_mtime_restored_is_caught(tmp_path: Path) -> None:
    """Same size, mtime set back to the ns with os.utime: the ctime (which nothing can set
    back) tells, before any chunk is read."""
    src, dst = _pair(tmp_path, chunks=32)
    run_engine(src, dst, chunk_size=CHUNK, direct=False)
    _behind_its_back(dst, [17 * CHUNK + 12345])
    report = run_engine(src, dst, chunk_size=CHUNK, direct=False)
    assert (report.method, report.cache) == ("digests", "kept")
    assert "cache: destination changed since last run (ctime: its inode changed), comparing in full" in report.warnings
    assert report.chunks_differing == 1 and dst.read_bytes() == src.read_bytes()


def test_a_cache_that_lies_is_caught_by_the_sample(tmp_path: Path) -> None:
    """32 chunks: the sample is every one of them, so one chunk the cache is wrong about is
    found, whatever the draw, and the run compares in full by digests."""
    src, dst = _pair(tmp_path, chunks=32)
    run_engine(src, dst, chunk_size=CHUNK, direct=False)
    _lie(dst, [17])
    report = run_engine(src, dst, chunk_size=CHUNK, direct=False)
    assert report.method == "digests" and report.cache == "dropped, kept"
    assert any("1 of 32 chunks re-read on the destination differ from its cache" in w for w in report.warnings)
    assert report.outcome == "identical" and report.scanned_destination == 2 * report.size


def test_a_cache_that_lies_in_many_chunks_is_caught(tmp_path: Path) -> None:
    """4,096 chunks and the cache wrong about half of them: the 64 sampled miss them all with
    a probability of 2^-64. The run then compares in full and finds the destination right."""
    data = random.Random(3).randbytes(4096 * 4 * KIB)
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    src.write_bytes(data)
    dst.write_bytes(data)
    run_engine(src, dst, chunk_size=4 * KIB, direct=True)
    _lie(dst, list(range(0, 4096, 2)))
    report = run_engine(src, dst, chunk_size=4 * KIB, direct=True, dry_run=True)
    assert report.method == "digests" and report.cache == "dropped"  # by digests from then on
    assert report.outcome == "identical" and not _cache_file(dst).exists()


def test_another_file_at_the_same_path_forces_a_full_compare(tmp_path: Path) -> None:
    src, dst = _pair(tmp_path, chunks=64)
    run_engine(src, dst, chunk_size=CHUNK, direct=False)
    swap = tmp_path / "swap.img"
    swap.write_bytes(dst.read_bytes())
    os.utime(swap, ns=(os.stat(dst).st_atime_ns, os.stat(dst).st_mtime_ns))
    os.replace(swap, dst)  # same path, same size, same mtime, another inode
    report = run_engine(src, dst, chunk_size=CHUNK, direct=False, dry_run=True)
    assert report.method == "digests" and report.cache == "kept"
    assert "cache: destination changed since last run (another file: inode), comparing in full" in report.warnings


def test_another_chunk_size_compares_in_full(tmp_path: Path) -> None:
    src, dst = _pair(tmp_path, chunks=64)
    run_engine(src, dst, chunk_size=CHUNK, direct=False)
    report = run_engine(src, dst, chunk_size=4 * CHUNK, direct=False, dry_run=True)
    assert report.method == "digests"
    assert any(w.startswith("cache: kept for 65,536-byte chunks") for w in report.warnings)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_corrupt_cache_file_is_ignored(tmp_path: Path, damage: str) -> None:
    src, dst = _pair(tmp_path, chunks=64)
    run_engine(src, dst, chunk_size=CHUNK, direct=False)
    path = _cache_file(dst)
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 1
    elif damage == "truncate":
        del raw[-100:]
    else:
        raw = bytearray(b"{not a cache}")
    path.write_bytes(raw)
    report = run_engine(src, dst, chunk_size=CHUNK, direct=False)
    assert report.method == "digests" and report.cache == "kept"
    assert [w for w in report.warnings if w.startswith(f"cache: {path}: ")], report.warnings
    assert digest_cache.load(path).layout.total == 64  # written anew, whole


def test_a_cancelled_sync_leaves_no_cache(tmp_path: Path) -> None:
    src, dst = _pair(tmp_path, chunks=64)
    run_engine(src, dst, chunk_size=CHUNK, direct=False)
    assert _cache_file(dst).exists()
    src.write_bytes(_pages_changed(src.read_bytes(), 9, 10))
    engine = SyncEngine(Endpoint.parse(str(src)), Endpoint.parse(str(dst)), SyncOptions(chunk_size=CHUNK, direct=False))
    engine.prepare()
    engine.cancel()
    with pytest.raises(Cancelled):
        engine.run()
    assert not _cache_file(dst).exists()  # the destination may be partly written: nothing kept
    assert run_engine(src, dst, chunk_size=CHUNK, direct=False).method == "digests"


def test_forget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--forget removes a destination's cache and keeps none; `forget` removes named ones or all."""
    src, dst = _pair(tmp_path, chunks=16)
    other = tmp_path / "other.img"
    assert main(["sync", "-q", "--chunk-size", "64K", str(src), str(dst)]) == 0
    assert main(["sync", "-q", "--chunk-size", "64K", str(src), str(other)]) == 0  # a first copy
    assert _cache_file(dst).exists() and _cache_file(other).exists()
    assert main(["compare", "-q", "--forget", "--chunk-size", "64K", "--json", str(tmp_path / "r.json"), str(src), str(dst)]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["cache"] == "forgotten"
    assert not _cache_file(dst).exists() and _cache_file(other).exists()
    assert main(["compare", "-q", "--chunk-size", "64K", str(src), str(dst)]) == 0
    assert main(["forget", str(dst)]) == 0
    assert not _cache_file(dst).exists() and _cache_file(other).exists()
    assert main(["forget"]) == 0
    assert "removed 1 digest cache from" in capsys.readouterr().out
    assert not list(digest_cache.cache_dir().glob("*" + digest_cache.SUFFIX))


def test_the_cache_lives_in_xdg_cache_home(tmp_path: Path) -> None:
    """Tests never write to the real home: conftest points XDG_CACHE_HOME at a temp directory."""
    assert str(digest_cache.cache_dir()).startswith(os.environ["XDG_CACHE_HOME"])
    assert not str(digest_cache.cache_dir()).startswith(os.path.expanduser("~/.cache"))


# -- the file format


def _cache(total: int = 5, stride: bool = True) -> DigestCache:
    layout = CacheLayout(total * CHUNK - 100, CHUNK, "sha256", 32, "xxh64" if stride else "", 4096 if stride else 0)
    states = bytes([digest_cache.DATA, digest_cache.ZERO, digest_cache.HOLE, digest_cache.DATA, digest_cache.DATA][:total])
    digests = bytes(range(total * 32))
    subs = bytes(7 for _ in range(total * layout.stride))
    return DigestCache("host:/dev/x", {"host": "h", "kind": "file"}, layout, states, digests, subs)


def test_a_cache_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "c" / "x.digests"
    digest_cache.save(path, _cache())
    back = digest_cache.load(path)
    assert back.layout == _cache().layout and back.identity == {"host": "h", "kind": "file"}
    assert back.entry(0) == (wire.FLAG_DATA, bytes(range(32)))
    assert back.entry(1) == (wire.FLAG_ZERO, b"") and back.entry(2) == (wire.FLAG_HOLE, b"")
    assert back.sub_digests(4) == bytes(7 for _ in range(((CHUNK - 100) // 4096 + 1) * 8))
    assert back.sub_digests(1) is None
    assert back.matches(2, b"") and back.matches(0, bytes(range(32))) and not back.matches(0, b"")
    assert not back.matches(3, None)
    assert [p.name for p in path.parent.iterdir()] == ["x.digests"]  # no temporary left


def test_every_field_of_a_cache_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "x.digests"
    digest_cache.save(path, _cache())
    good = path.read_bytes()
    head = len(digest_cache.MAGIC) + digest_cache.HEAD
    length = int.from_bytes(good[len(digest_cache.MAGIC) : head], "big")
    header = json.loads(good[head : head + length])

    def variant(**changes: object) -> bytes:
        raw = json.dumps({**header, **changes}).encode()
        body = digest_cache.MAGIC + len(raw).to_bytes(4, "big") + raw + good[head + length : -32]
        return body + digest_cache.CHECK(body).digest()

    bad = {
        "version": variant(version=2),
        "count": variant(count=6),
        "chunk size": variant(chunk_size=3000),
        "hash": variant(algorithm="crc32"),
        "identity": variant(identity=[1]),
        "state": variant()[: head + len(json.dumps(header).encode()) + 1],
    }
    for what, raw in bad.items():
        path.write_bytes(raw)
        with pytest.raises(CacheError):
            digest_cache.load(path)
    states_at = head + length
    wrong_state = bytearray(good)
    wrong_state[states_at] = 9
    body = bytes(wrong_state[:-32])
    path.write_bytes(body + digest_cache.CHECK(body).digest())
    with pytest.raises(CacheError, match="unknown chunk state"):
        digest_cache.load(path)


def test_the_sample_is_a_thousandth_at_least_64_or_all() -> None:
    assert digest_cache.sample(0, 10) == list(range(10))
    assert digest_cache.sample(100, 164) == list(range(100, 164))
    assert len(digest_cache.sample(0, 1000)) == 64
    picked = digest_cache.sample(1_000_000, 2_000_000)
    assert len(picked) == 1000 and picked == sorted(set(picked)) and 1_000_000 <= picked[0] and picked[-1] < 2_000_000


# -- over SSH, and on a block device


def test_a_repeat_push_over_ssh_reads_only_the_source(sshd, tmp_path: Path) -> None:
    """A remote destination's cache is keyed by its host key: the repeat push reads the
    remote file for the sample only."""
    from test_ssh import sync

    src, dst = _pair(tmp_path, chunks=256)
    remote = sshd.endpoint(dst)
    first = sync(str(src), remote, sshd.ssh_options())
    assert (first.method, first.cache) == ("digests", "kept")
    identity = digest_cache.load(digest_cache.cache_path(str(Endpoint.parse(remote)))).identity
    assert identity["host"].startswith("ssh SHA256:") and identity["path"] == str(dst)
    src.write_bytes(_pages_changed(src.read_bytes(), 11, 30))
    second = sync(str(src), remote, sshd.ssh_options())
    assert (second.method, second.cache) == ("cache", "used, kept")
    assert second.scanned_destination == 64 * CHUNK and second.chunks_differing > 10
    assert dst.read_bytes() == src.read_bytes()


@pytest.mark.loop
def test_a_loop_device_is_known_by_its_backing_file(tmp_path: Path, loop_device) -> None:
    """A loop device has no serial or WWN: its cache is keyed by its backing file (device and
    inode). The same loop device over another image is another destination."""
    import subprocess

    src = tmp_path / "src.img"
    src.write_bytes(random.Random(4).randbytes(64 * CHUNK))
    image = tmp_path / "dev.img"
    image.write_bytes(bytes(64 * CHUNK))
    device = loop_device(image)
    first = run_engine(src, device, chunk_size=CHUNK, direct=False)
    assert (first.method, first.cache) == ("digests", "kept")
    kept = digest_cache.load(_cache_file(Path(device))).identity
    st = os.stat(image)
    assert kept["kind"] == "block" and ["loop", f"{st.st_dev}:{st.st_ino}"] in kept["ids"]
    again = run_engine(src, device, chunk_size=CHUNK, direct=False, dry_run=True)
    assert (again.method, again.outcome, again.cache) == ("cache", "identical", "used")
    with open(device, "r+b") as f:  # written behind its back: its write counter moves
        f.write(b"\xff" * 4096)
        f.flush()
        os.fsync(f.fileno())
    written = run_engine(src, device, chunk_size=CHUNK, direct=False)
    assert (written.method, written.chunks_differing, written.cache) == ("digests", 1, "kept")
    assert "cache: destination changed since last run (written since: its count of sectors written moved), comparing in full" in written.warnings
    other = tmp_path / "other.img"
    other.write_bytes(image.read_bytes())
    subprocess.run(["losetup", "-d", device], check=True)
    if subprocess.run(["losetup", device, str(other)], capture_output=True).returncode != 0:
        pytest.skip(f"cannot attach {device} again")
    swapped = run_engine(src, device, chunk_size=CHUNK, direct=False, dry_run=True)
    assert swapped.method == "digests" and swapped.outcome == "identical"
    assert (
        "cache: destination changed since last run (another device: WWN, serial or UUID), comparing in full"
        in swapped.warnings
    )


def test_lanes_use_and_keep_one_cache(tmp_path: Path) -> None:
    """A run in lanes: each uses its share of the cache (and samples it), each keeps its share,
    and the shares are merged into one cache when every lane is done."""
    from blocksync_tui.engine.options import SshOptions
    from blocksync_tui.engine.parallel import engine_for

    def run(**options: object):
        engine = engine_for(Endpoint.parse(str(src)), Endpoint.parse(str(dst)),
                            SyncOptions(chunk_size=CHUNK, direct=False, **options), SshOptions())
        engine.prepare()
        return engine.run()

    src, dst = _pair(tmp_path, chunks=512)
    first = run(streams=2)
    assert first.cache == "kept" and digest_cache.load(_cache_file(dst)).layout.total == 512
    assert not list(_cache_file(dst).parent.glob("*part*"))
    src.write_bytes(_pages_changed(src.read_bytes(), 13, 50))
    second = run(streams=2)
    assert (second.method, second.cache) == ("cache", "used, kept")
    assert second.scanned_destination == 2 * 64 * CHUNK  # each lane's sample
    assert dst.read_bytes() == src.read_bytes()
    third = run(streams=1, dry_run=True)  # one lane finds the merged cache whole
    assert (third.method, third.outcome, third.cache) == ("cache", "identical", "used")


def test_a_list_of_changes_and_a_cache_read_only_what_changed(tmp_path: Path) -> None:
    """--changed-from with a cache: the source reads the listed chunks and the list's sample,
    the destination its cache's sample; the chunks neither reads keep their cached digests,
    so the next run still has a whole cache."""
    src, dst = _pair(tmp_path, chunks=1024)
    run_engine(src, dst, chunk_size=CHUNK, direct=False)
    data = bytearray(src.read_bytes())
    for index in (10, 500):
        data[index * CHUNK + 7] ^= 0xFF
    src.write_bytes(bytes(data))
    changes = tmp_path / "changes.map"
    lines = ["# Mapfile", "0x00000000     +               1"]
    lines += [f"0x{i * CHUNK:08X}  0x{CHUNK:08X}  {'-' if i in (10, 500) else '+'}" for i in range(1024)]
    changes.write_text("\n".join(lines) + "\n")
    listed = run_engine(src, dst, chunk_size=CHUNK, direct=False, changed_from=str(changes))
    assert (listed.method, listed.cache, listed.chunks["written"]) == ("cache", "used, kept", 2)
    assert listed.scanned_source == (2 + 64) * CHUNK and listed.scanned_destination == 64 * CHUNK
    assert dst.read_bytes() == src.read_bytes()
    again = run_engine(src, dst, chunk_size=CHUNK, direct=False, dry_run=True)
    assert (again.method, again.outcome, again.cache) == ("cache", "identical", "used")
