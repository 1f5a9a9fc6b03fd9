"""The package's arrows point one way: tui -> engine and cli -> engine, never back, and no cycle.

The imports are read from the source with `ast` (nothing is imported to check them), except
for paramiko, which is checked where it matters: in a process that runs a local sync.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import blocksync_tui

PACKAGE = Path(blocksync_tui.__file__).resolve().parent
ROOT = PACKAGE.name  # "blocksync_tui"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.Module, top_level_only: bool) -> list[ast.stmt]:
    """The statements that run: at module level (into if/try/with blocks), or anywhere.

    What is under `if TYPE_CHECKING:` never runs, so it is left out (its `else:` is not).
    """
    found: list[ast.stmt] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if _is_type_checking(node):
                visit(node.orelse)  # type: ignore[attr-defined]
                continue
            found.append(node)
            if top_level_only and not isinstance(node, (ast.If, ast.Try, ast.With)):
                continue  # a function's or a class's body runs later (or, for a class, now:
                # but no module here imports in a class body)
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, None) or []:
                    visit(child.body if isinstance(child, ast.ExceptHandler) else [child])

    visit(tree.body)
    return found


def _imports(path: Path, module: str, modules: set[str], top_level_only: bool) -> set[str]:
    """What `module` imports, by absolute name: our modules, and the top names of others.

    `from a import b` is an import of module `a.b` when there is one, else of `a`.
    """
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in _statements(tree, top_level_only):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                keep = len(anchor) - node.level + (1 if path.name == "__init__.py" else 0)
                base = ".".join([*anchor[:keep], base] if base else anchor[:keep])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {name for name in found if name != module}


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    """Each module of the package -> what it imports."""
    sources = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(sources)
    return {name: _imports(path, name, modules, top_level_only) for name, path in sources.items()}


def _in(module: str, *layers: str) -> bool:
    return any(module == f"{ROOT}.{layer}" or module.startswith(f"{ROOT}.{layer}.") for layer in layers)


def test_the_engine_imports_nothing_above_it() -> None:
    wrong = [
        (module, name)
        for module, names in _graph(top_level_only=False).items() if _in(module, "engine")
        for name in names if _in(name, "tui", "cli", "progress", "demo", "__main__")
    ]
    assert not wrong, f"the engine imports from above it: {wrong}"


def test_the_engine_never_imports_textual() -> None:
    wrong = [
        (module, name)
        for module, names in _graph(top_level_only=False).items() if _in(module, "engine")
        for name in names if name.split(".")[0] in ("textual", "rich")
    ]
    assert not wrong, f"the engine imports a user interface library: {wrong}"


def test_the_app_never_imports_the_command_line() -> None:
    wrong = [
        (module, name)
        for module, names in _graph(top_level_only=False).items() if _in(module, "tui")
        for name in names if _in(name, "cli", "progress", "__main__")
    ]
    assert not wrong, f"the app imports the command line: {wrong}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each as the path that closes it (depth-first search)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue  # not one of ours
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycle_among_the_modules() -> None:
    cycles = _cycles(_graph(top_level_only=True))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_import_cycle_even_through_lazy_imports() -> None:
    """An import inside a function breaks a cycle at run time, not in the design: ssh.py and
    transports.py once imported each other that way."""
    cycles = _cycles(_graph(top_level_only=False))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


_LOCAL_SYNC = """
import sys, tempfile, os
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.options import SshOptions
from blocksync_tui.engine.sync import SyncEngine, SyncOptions
from blocksync_tui.engine.transports import transport_factory
d = tempfile.mkdtemp()
src, dst = os.path.join(d, "src"), os.path.join(d, "dst")
open(src, "wb").write(os.urandom(1 << 16)); open(dst, "wb").write(bytes(1 << 16))
engine = SyncEngine(Endpoint(src), Endpoint(dst), SyncOptions(chunk_size=4096),
                    transport_factory(SshOptions()))
engine.prepare()
report = engine.run()
assert report.outcome == "synced", report.outcome
assert open(src, "rb").read() == open(dst, "rb").read()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("paramiko", "textual", "rich"))
print(",".join(loaded))
"""


def test_a_local_sync_loads_no_paramiko_and_no_textual() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _LOCAL_SYNC], capture_output=True, text=True, timeout=120,
        cwd=PACKAGE.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"a local sync loaded: {result.stdout.strip()}"
