#!/usr/bin/env python3
"""Provides the sparse-image benchmark: a 16 GiB image that is 90% holes, against dd and rsync.

A thin-provisioned VM disk is mostly holes. Two runs, each contender side by side, cold cache:
- first copy to a new file: ours (`sync`, the stream: holes are not read, nor sent, nor
  allocated), `dd conv=sparse` (reads every hole as zeros, skips writing them) and
  `rsync --sparse` (the same, through its delta machinery);
- repeat sync after 1% of the data's 4 KiB pages changed: ours (holes on both sides cost no
  read), `rsync --inplace --no-whole-file`, and `dd conv=sparse,notrunc` (rewrites everything).
Every contender ends with its data on disk (dd conv=fsync, rsync --fsync), as ours does.
Each result is compared with the source by `cmp`. Times are medians of `--rounds`; read the
ratios, not the seconds: the machine is shared.

    python3 bench/bench_sparse.py [--size 16G] [--data-share 0.1] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXTENT = 64 << 20
PAGE = 4096


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def make_source(path: Path, size: int, share: float, rnd: random.Random) -> list[int]:
    """A sparse file of `size` bytes whose data is `share` of it, in EXTENT-sized extents."""
    slots = size // EXTENT
    chosen = sorted(rnd.sample(range(slots), max(1, int(slots * share))))
    with open(path, "wb") as f:
        f.truncate(size)
        for slot in chosen:
            f.seek(slot * EXTENT)
            for _ in range(EXTENT >> 20):
                f.write(rnd.randbytes(1 << 20))
    return [slot * EXTENT for slot in chosen]


def change_pages(path: Path, extents: list[int], share: float, rnd: random.Random) -> int:
    """Rewrite `share` of the data's 4 KiB pages; return how many."""
    pages = len(extents) * (EXTENT // PAGE)
    count = max(1, int(pages * share))
    with open(path, "r+b") as f:
        for _ in range(count):
            f.seek(rnd.choice(extents) + rnd.randrange(EXTENT // PAGE) * PAGE)
            f.write(rnd.randbytes(PAGE))
    return count


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass  # not root: warm cache, said in the output


def timed(argv: list[str]) -> float:
    drop_caches()
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return time.monotonic() - start


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="16G")
    parser.add_argument("--data-share", type=float, default=0.10)
    parser.add_argument("--change-share", type=float, default=0.01)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    rnd = random.Random(7)
    work = Path(tempfile.mkdtemp(prefix="bench-sparse-", dir=args.workdir))
    try:
        src = work / "src.img"
        extents = make_source(src, size, args.data_share, rnd)
        ours = [sys.executable, "-m", "blocksync_tui", "sync", "-q", "--forget"]
        first = {
            "blocksync-tui sync": lambda dst: ours + [str(src), str(dst)],
            "dd conv=sparse,fsync bs=1M": lambda dst: ["dd", f"if={src}", f"of={dst}", "bs=1M", "conv=sparse,fsync", "status=none"],
            "rsync --sparse --fsync": lambda dst: ["rsync", "--sparse", "--fsync", str(src), str(dst)],
        }
        repeat = {
            "blocksync-tui sync": lambda dst: ours + [str(src), str(dst)],
            "rsync --inplace --no-whole-file --fsync": lambda dst: ["rsync", "--inplace", "--no-whole-file", "--fsync", str(src), str(dst)],
            "dd conv=sparse,notrunc,fsync bs=1M": lambda dst: ["dd", f"if={src}", f"of={dst}", "bs=1M",
                                                               "conv=sparse,notrunc,fsync", "status=none"],
        }
        print(f"{human(size)} image, {human(allocated(src))} of data in {len(extents)} extents of "
              f"{human(EXTENT)}, rounds {args.rounds}, {'cold' if os.geteuid() == 0 else 'warm'} cache\n")
        for title, contenders, prepare in (
            ("first copy to a new file", first, None),
            (f"repeat sync, {args.change_share:.0%} of the data's pages changed", repeat, True),
        ):
            results: dict[str, list[float]] = {name: [] for name in contenders}
            alloc: dict[str, int] = {}
            changed = 0
            for _ in range(args.rounds):
                if prepare:  # every destination starts as the current source, then it changes
                    base = work / "base.img"
                    subprocess.run(["cp", "--sparse=always", str(src), str(base)], check=True)
                    changed = change_pages(src, extents, args.change_share, rnd)
                for name, argv_of in contenders.items():
                    dst = work / "dst.img"
                    dst.unlink(missing_ok=True)
                    if prepare:
                        subprocess.run(["cp", "--sparse=always", str(base), str(dst)], check=True)
                    results[name].append(timed(argv_of(dst)))
                    alloc[name] = allocated(dst)
                    if subprocess.run(["cmp", "-s", str(src), str(dst)]).returncode != 0:
                        results[name][-1] = float("nan")
            print(f"### {title}" + (f" ({changed} pages)" if prepare else "") + "\n")
            print("| contender | median s | x ours | dest allocated | correct |")
            print("|---|---:|---:|---:|---|")
            medians = {n: sorted(v)[len(v) // 2] for n, v in results.items()}
            mine = medians["blocksync-tui sync"]
            for name, median in medians.items():
                ok = median == median
                print(f"| {name} | {median:.2f} | {median / mine:.2f} | {human(alloc[name])} | {'yes' if ok else 'NO'} |")
            print()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
