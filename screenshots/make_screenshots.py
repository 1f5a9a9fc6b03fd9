"""Regenerate the SVG screenshots in this folder: `python3 screenshots/make_screenshots.py`."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # this checkout's code, whatever is installed

import scenes  # noqa: E402


async def shoot(name: str, out: Path) -> None:
    app = scenes.app()
    async with app.run_test(size=scenes.SIZE) as pilot:
        await pilot.pause()
        await scenes.SCENES[name](pilot)
        await pilot.pause(0.3)
        (out / f"{name}.svg").write_text(app.export_screenshot(title=f"blocksync-tui: {name}"))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="blocksync-shots-") as work:
        os.chdir(work)
        os.environ["XDG_CACHE_HOME"] = work  # the scenes' digest caches stay out of ~/.cache
        scenes.make_images(Path(work))
        for name in scenes.SCENES:
            asyncio.run(shoot(name, HERE))
            print(f"wrote screenshots/{name}.svg")


if __name__ == "__main__":
    main()
