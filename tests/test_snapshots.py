"""SVG snapshots of each screen of the app, from the deterministic scenes in screenshots/scenes.py.

Update the baselines with `pytest tests/test_snapshots.py --snapshot-update` after a deliberate
change of the UI, and look at the SVGs (screenshots/make_screenshots.py writes the same scenes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "screenshots"))

import scenes  # noqa: E402


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("scenes")
    scenes.make_images(directory)
    return directory


@pytest.mark.parametrize("name", list(scenes.SCENES))
def test_screen(name: str, images: Path, monkeypatch: pytest.MonkeyPatch, snap_compare) -> None:
    """Each scene's docstring says what a reviewer should see in its SVG."""
    monkeypatch.chdir(images)

    async def run_before(pilot) -> None:
        await pilot.pause()
        await scenes.SCENES[name](pilot)

    assert snap_compare(scenes.app(), run_before=run_before, terminal_size=scenes.SIZE)
