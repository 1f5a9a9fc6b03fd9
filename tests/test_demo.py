"""Tests for the demo and benchmark image generators."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from blocksync_tui import demo
from blocksync_tui.demo import PAGE, MiB

SIZE = 16 * MiB


def differing_pages(a: Path, b: Path, page: int = PAGE) -> set[int]:
    """Return the indexes of the pages in which two equally long files differ."""
    pages = set()
    with open(a, "rb") as fa, open(b, "rb") as fb:
        index = 0
        while block := fa.read(page):
            if block != fb.read(page):
                pages.add(index)
            index += 1
    return pages


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return demo.make_pair(tmp_path_factory.mktemp("pair"), SIZE, seed=7)


def test_pair_sizes_are_not_chunk_multiples(pair: tuple[Path, Path]) -> None:
    src, dst = pair
    assert src.name == "source.img" and dst.name == "destination.img"
    assert src.stat().st_size == dst.stat().st_size == SIZE + demo.DEFAULT_TAIL
    assert src.stat().st_size % MiB != 0


def test_pair_is_deterministic(pair: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = demo.make_pair(tmp_path / "again", SIZE, seed=7)
    assert digest(src) == digest(pair[0])
    assert digest(dst) == digest(pair[1])
    other, _ = demo.make_pair(tmp_path / "other", SIZE, seed=8)
    assert digest(other) != digest(src)


def test_pair_differs_exactly_where_planned(pair: tuple[Path, Path]) -> None:
    plan = demo.plan_pair(SIZE, seed=7)
    actual = differing_pages(*pair)
    assert actual == plan.changed_pages()

    kinds = {change.kind for change in plan.changes}
    assert kinds == {"page", "cluster", "zeroed", "filled", "tail"}
    n_pages = -(-plan.size // PAGE)
    scattered = sum(change.kind == "page" for change in plan.changes)
    assert scattered == n_pages // 200  # ~0.5% of pages
    # The partial last chunk must differ, or a tool that drops it would pass unnoticed.
    assert (plan.size - 1) // PAGE in actual


def test_pair_has_zero_text_and_random_areas(pair: tuple[Path, Path]) -> None:
    plan = demo.plan_pair(SIZE, seed=7)
    data = pair[0].read_bytes()
    for kind in ("random", "text", "zero"):
        extent = next(e for e in plan.extents if e.kind == kind)
        sample = data[extent.offset : extent.offset + min(extent.length, 256 * 1024)]
        ratio = len(zlib.compress(sample, 1)) / len(sample)
        if kind == "zero":
            assert sample.count(0) == len(sample)
        elif kind == "text":
            assert ratio < 0.5
        else:
            assert ratio > 0.99


def test_zero_and_filled_regions_are_zero_on_one_side(pair: tuple[Path, Path]) -> None:
    plan = demo.plan_pair(SIZE, seed=7)
    src, dst = (p.read_bytes() for p in pair)
    for change in plan.changes:
        span = slice(change.offset, change.offset + change.length)
        if change.kind == "zeroed":
            assert dst[span].count(0) == change.length and src[span].count(0) < change.length
        elif change.kind == "filled":
            assert src[span].count(0) == change.length and dst[span].count(0) < change.length


def test_changed_pair(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    size = 8 * MiB + 1000
    changed = demo.make_changed_pair(src, dst, size, change_fraction=0.01, seed=3)
    assert src.stat().st_size == dst.stat().st_size == size
    pages = differing_pages(src, dst)
    n_pages = -(-size // PAGE)
    assert len(pages) == round(n_pages * 0.01)
    assert changed == sum(min(PAGE, size - p * PAGE) for p in pages)

    again_src, again_dst = tmp_path / "src2", tmp_path / "dst2"
    assert demo.make_changed_pair(again_src, again_dst, size, seed=3) == changed
    assert digest(again_src) == digest(src) and digest(again_dst) == digest(dst)


def test_random_stream_does_not_compress() -> None:
    data = demo.RandomStream(5, pool_size=2 * MiB).read(MiB)
    assert len(zlib.compress(data, 6)) > 0.99 * len(data)
    assert demo.RandomStream(5, pool_size=2 * MiB).read(MiB) == data


def test_demo_imports_no_textual() -> None:
    code = "import sys, blocksync_tui.demo; print('textual' in sys.modules)"
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
