"""Path completion on a remote host, driven with Pilot against the real sshd: the panel's host
session's worker lists each directory once, → takes the suggestion, another host starts from
nothing, a missing directory suggests nothing and says nothing."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from textual.widgets import Input

from blocksync_tui.tui.app import BlocksyncApp
from blocksync_tui.tui.request import RunRequest
from blocksync_tui.tui.screens.dialogs import ErrorScreen
from blocksync_tui.tui.widgets.endpoint_panel import EndpointPanel
from blocksync_tui.tui.widgets.path_suggester import DEBOUNCE, PathSuggester
from test_app import SIZE, _click, _wait_for

pytestmark = pytest.mark.ssh


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sshd):
    """Never the real ~/.ssh or agent; after each test, nothing runs on the 'remote' host."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    yield
    assert sshd.wait_sessions_gone(timeout=10) == [], "the setup's worker outlived the app"


def _images(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("disk-a.img", "disk-b.img", ".disk-hidden.img", "notes.txt"):
        (images / name).write_bytes(b"")
    (images / "backups").mkdir()
    return images


async def _enter(pilot, selector: str, text: str) -> None:
    """Put `text` in a field, as a paste would (typing the long temporary path key by key takes
    seconds), with the cursor at its end."""
    await _click(pilot, selector)
    field = pilot.app.screen.query_one(selector, Input)
    field.value = text
    field.cursor_position = len(text)
    await pilot.pause()


async def _slowly(pilot, *keys: str) -> None:
    """Keys as a person types them: a pause longer than the debounce after each."""
    for key in keys:
        await pilot.press(key)
        await pilot.pause(DEBOUNCE + 0.1)


def _suggester(field: Input) -> PathSuggester:
    assert isinstance(field.suggester, PathSuggester)
    return field.suggester


async def test_a_remote_path_completes_through_the_hosts_worker(tmp_path: Path, sshd) -> None:
    """Typed slowly, letter by letter, within one directory: one LIST for all of it, on the
    one connection the device list opened; → takes the suggestion; dot-files only after a dot."""
    images = _images(tmp_path)
    app = BlocksyncApp(RunRequest("", "", ssh=sshd.ssh_options()), list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        panel = app.screen.query_one("#source", EndpointPanel)
        await _enter(pilot, "#source-host", f"{sshd.user}@{sshd.host}:{sshd.port}")
        await _click(pilot, "#source-path")  # leaving the host lists its devices: the worker starts
        await _wait_for(pilot, lambda: bool(panel.devices) or panel.has_class("-invalid"))
        assert panel.devices and len(sshd.connection_pids()) == 1
        field = app.screen.query_one("#source-path", Input)

        await _enter(pilot, "#source-path", f"{images}/")
        await _wait_for(pilot, lambda: field._suggestion == f"{images}/backups/", timeout=20)
        session = _suggester(field).directories.session
        assert session is panel.session() and session.listings == 1
        listed = session.listings
        await _slowly(pilot, *"disk")
        await _wait_for(pilot, lambda: field._suggestion == f"{images}/disk-a.img", timeout=20)
        await _slowly(pilot, "-", "b")
        await _wait_for(pilot, lambda: field._suggestion == f"{images}/disk-b.img", timeout=20)
        await pilot.press("right")
        assert field.value == f"{images}/disk-b.img"
        assert session.listings == listed, "typing on within one directory costs no request"

        await _enter(pilot, "#source-path", f"{images}/.")
        await _wait_for(pilot, lambda: field._suggestion == f"{images}/.disk-hidden.img", timeout=20)
        assert session.listings == listed + 1  # a dotted name: the dot-files, once
        await _slowly(pilot, "backspace", *"n")
        await _wait_for(pilot, lambda: field._suggestion == f"{images}/notes.txt", timeout=20)
        assert session.listings == listed + 1
        assert session.starts == 1 and len(sshd.connection_pids()) == 1


async def test_another_host_drops_what_the_last_one_listed(tmp_path: Path, sshd) -> None:
    """A listing of the last host never answers for the next: a new host starts from nothing
    (here one that cannot be reached, so nothing is suggested), the old worker ends, and a
    suggestion asked just before the change comes to nothing."""
    images = _images(tmp_path)
    app = BlocksyncApp(RunRequest("", "", ssh=sshd.ssh_options()), list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        panel = app.screen.query_one("#destination", EndpointPanel)
        host = app.screen.query_one("#destination-host", Input)
        field = app.screen.query_one("#destination-path", Input)
        await _enter(pilot, "#destination-host", f"{sshd.user}@{sshd.host}:{sshd.port}")
        await _enter(pilot, "#destination-path", f"{images}/di")
        await _wait_for(pilot, lambda: field._suggestion == f"{images}/disk-a.img", timeout=30)
        first = _suggester(field).directories
        assert first is not None and first.cached(str(images), "di") is not None

        await _enter(pilot, "#destination-host", "nobody@127.0.0.1:1")  # nothing listens on port 1
        assert sshd.wait_sessions_gone(timeout=10) == []  # the last host's worker was ended
        await _enter(pilot, "#destination-path", f"{images}/d")
        await pilot.pause(DEBOUNCE + 1.0)
        assert field._suggestion == ""
        now = _suggester(field).directories
        assert now is not first and now.session is panel.session() and now.cached(str(images), "d") is None

        # Answered by the first host, but only once the field names another: nothing shown.
        host.value = f"{sshd.user}@{sshd.host}:{sshd.port}"
        await pilot.pause()
        session, answered, release = panel.session(), threading.Event(), threading.Event()
        listing = session.listing

        def held(folder: str, prefix: str):
            found = listing(folder, prefix)
            answered.set()
            release.wait(10)
            return found

        session.listing = held  # type: ignore[method-assign]
        asked = asyncio.ensure_future(_suggester(field).get_suggestion(f"{images}/no"))
        await _wait_for(pilot, answered.is_set, timeout=20)
        host.value = "nobody@127.0.0.1:1"
        await pilot.pause()
        release.set()
        assert await asked is None


async def test_a_missing_directory_suggests_nothing_and_asks_once(tmp_path: Path, sshd) -> None:
    """No such directory on the host: no suggestion, no dialog, and typing on there asks
    the host nothing more."""
    app = BlocksyncApp(RunRequest("", "", ssh=sshd.ssh_options()), list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        field = app.screen.query_one("#source-path", Input)
        await _enter(pilot, "#source-host", f"{sshd.user}@{sshd.host}:{sshd.port}")
        await _enter(pilot, "#source-path", f"{tmp_path}/nowhere/")
        nowhere = str(tmp_path / "nowhere")
        await _wait_for(pilot, lambda: _suggester(field).directories is not None
                        and _suggester(field).directories.cached(nowhere, "") is not None, timeout=30)
        session = _suggester(field).directories.session
        await _slowly(pilot, *"disk")
        assert field._suggestion == "" and not isinstance(app.screen, ErrorScreen)
        assert session.listings == 1
        assert not app.screen.query_one("#source").has_class("-invalid")
