"""The worker package as it is shipped: stdlib only, runnable with nothing of the repo, checked.

Every module but the loader travels to hosts where only a Python 3.8+ standard library exists;
the controller imports the protocol module alone, and cheaply.
"""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from blocksync_tui.engine import bootstrap
from blocksync_tui.engine.worker import protocol

OPTIONAL = {"xxhash", "zstandard", "lz4"}
"""Fast extras a worker uses when its host has them: imported inside functions, under try."""
SHIPPED = sorted(bootstrap.PACKAGE_DIR.glob("*.py"))


def _imports(tree: ast.AST) -> tuple[set[str], set[str], list[ast.AST]]:
    """(absolute top-level names, relative sibling names, optional imports outside a function)."""
    absolute: set[str] = set()
    siblings: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            absolute |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                siblings |= {node.module} if node.module else {a.name for a in node.names}
            elif node.module != "__future__":
                absolute.add(node.module.split(".")[0])
    module_level = [
        node
        for node in tree.body  # type: ignore[attr-defined]
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and any(a.name.split(".")[0] in OPTIONAL for a in node.names)
    ]
    return absolute, siblings, module_level


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_module_is_python38_and_imports_only_stdlib_and_siblings(path: Path) -> None:
    tree = ast.parse(path.read_text(), feature_version=(3, 8))
    absolute, siblings, module_level = _imports(tree)
    assert absolute - OPTIONAL <= set(sys.stdlib_module_names), path.name
    assert siblings <= {p.stem for p in SHIPPED}, path.name
    assert not module_level, f"{path.name}: import the optional extras inside a function"


def test_the_package_init_imports_nothing() -> None:
    """The controller runs __init__ on its way to protocol: it must cost nothing."""
    tree = ast.parse((bootstrap.PACKAGE_DIR / "__init__.py").read_text())
    assert all(isinstance(node, ast.Expr) for node in tree.body)


def test_the_controller_imports_the_protocol_alone() -> None:
    code = (
        "import sys; import blocksync_tui.engine.worker.protocol;"
        "print(sorted(m for m in sys.modules if m.startswith('blocksync_tui.engine.worker')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent).stdout
    assert out.strip() == "['blocksync_tui.engine.worker', 'blocksync_tui.engine.worker.protocol']"


def _hello(payload: bytes, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    """Run the stub in an isolated interpreter far from the repo, send it `payload`, a HELLO
    and an EXIT, and return what happened."""
    frames = b"".join(
        protocol.pack_header(op, rid, len(body)) + body
        for op, rid, body in [(protocol.OP_HELLO, 1, protocol.encode_json({})), (protocol.OP_EXIT, 2, b"")]
    )
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": ""}
    return subprocess.run([sys.executable, "-I", "-c", bootstrap.STUB], input=payload + frames,
                          capture_output=True, cwd=tmp_path, env=env, timeout=60)


def _frames(stream: bytes) -> list[tuple[int, int, bytes]]:
    assert stream.startswith(protocol.BANNER)
    pos, frames = len(protocol.BANNER), []
    while pos < len(stream):
        op, rid, length = protocol.unpack_header(stream[pos : pos + protocol.HEADER.size])
        pos += protocol.HEADER.size
        frames.append((op, rid, stream[pos : pos + length]))
        pos += length
    return frames


def test_the_bundle_runs_in_a_bare_interpreter_and_reports_the_payload_digest(tmp_path: Path) -> None:
    done = _hello(bootstrap.payload(), tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    (op, rid, body), (op2, rid2, _) = _frames(done.stdout)
    assert (op, rid, op2, rid2) == (protocol.OP_REPLY, 1, protocol.OP_DONE, 2)
    hello = protocol.decode_json(body)
    assert hello["sha256"] == bootstrap.payload_sha256() == hashlib.sha256(bootstrap.payload()).hexdigest()
    assert hello["protocol"] == protocol.PROTOCOL_VERSION


def _with_bundle(packed: bytes) -> bytes:
    loader = bootstrap.loader_source()
    return b"%d\n" % len(loader) + loader + b"%d\n" % len(packed) + packed


@pytest.mark.parametrize("how", ["flipped byte", "truncated", "bad module header"])
def test_a_corrupted_payload_is_refused_with_one_line(tmp_path: Path, how: str) -> None:
    packed = zlib.compress(bootstrap.bundle(), 9)
    if how == "flipped byte":
        payload = _with_bundle(packed[:100] + bytes([packed[100] ^ 0xFF]) + packed[101:])
    elif how == "truncated":
        payload = bootstrap.payload()[:-100]
    else:
        payload = _with_bundle(zlib.compress(b"protocol 99999999\nx = 1\n"))
    done = _hello(payload, tmp_path)
    assert done.returncode == bootstrap.EXIT_BAD_PAYLOAD
    assert done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blocksync worker: cannot load the worker:"), lines


def test_a_worker_traceback_names_the_real_module(tmp_path: Path) -> None:
    """A failure inside a shipped module is reported as that module's file, with its line."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import loader, io, importlib\n"
        "sources = {p: open(sys.argv[1] + '/' + p + '.py', 'rb').read() for p in sys.argv[2:]}\n"
        "sys.meta_path.insert(0, loader.BundleFinder('blocksync_worker', sources))\n"
        "scan = importlib.import_module('blocksync_worker.scan')\n"
        "import traceback\n"
        "try:\n    scan.geometry({'chunk_size': 3, 'size': 0, 'ranges': []})\n"
        "except Exception:\n    traceback.print_exc()\n"
    )
    names = sorted(bootstrap.module_sources())
    done = subprocess.run([sys.executable, "-I", "-c", code, str(bootstrap.PACKAGE_DIR), *names],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert 'File "blocksync_worker/scan.py", line' in done.stderr, done.stderr
    assert 'raise WorkerError("bad chunk size %d" % chunk_size)' in done.stderr


def test_every_advertised_hash_name_builds() -> None:
    """One table behind hash_algorithms, new_hash and hasher: what is offered can be built, and
    the incremental and one-shot forms agree. xxh64 (sub-blocks) comes with xxh128."""
    names = protocol.hash_algorithms()
    assert names and set(names) <= set(protocol.HASHES)
    if "xxh128" in names:
        names.append("xxh64")  # what the controller picks for sub-blocks when both have xxhash
    data = bytes(range(256)) * 64
    for name in names:
        h = protocol.new_hash(name)()
        h.update(data)
        assert h.digest() == protocol.hasher(name)(data), name
        assert protocol.digest_size(name) == len(h.digest()) >= protocol.SUB_DIGEST_SIZE
    with pytest.raises(ValueError, match="unknown hash"):
        protocol.new_hash("crc32")


def test_modules_in_the_current_directory_are_not_imported_by_the_worker(tmp_path: Path, monkeypatch) -> None:
    """`python3 -c` puts the current directory first on sys.path; over SSH that is the remote
    user's home. A zlib.py or hashlib.py there must not stand in for the standard library's."""
    from helpers import run_engine

    shadows = tmp_path / "home"
    shadows.mkdir()
    for name in ("zlib", "hashlib", "struct", "json", "queue", "mmap", "fcntl"):
        (shadows / f"{name}.py").write_text(f"raise SystemExit('the {name}.py of the current directory ran')\n")
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    src.write_bytes(os.urandom(3 << 20))
    dst.write_bytes(bytes(3 << 20))
    monkeypatch.chdir(shadows)
    report = run_engine(src, dst, chunk_size=1 << 20)
    assert report.outcome == "synced" and dst.read_bytes() == src.read_bytes()
