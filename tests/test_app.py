"""The app driven like a user would, with Pilot: real engine, real workers, real files."""

from __future__ import annotations

import io
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from blocksync_tui.engine.chunkmap import State
from blocksync_tui.engine.options import SyncOptions
from blocksync_tui.tui.app import BlocksyncApp
from blocksync_tui.tui.request import RunRequest
from blocksync_tui.tui.screens.confirm import ConfirmSyncScreen
from blocksync_tui.tui.screens.dialogs import ErrorScreen, YesNoScreen
from blocksync_tui.tui.screens.help import HelpScreen
from blocksync_tui.tui.screens.hostkey import HostKeyScreen
from blocksync_tui.tui.screens.review import ReviewScreen
from blocksync_tui.tui.screens.run import RunScreen
from blocksync_tui.tui.widgets.endpoint_panel import EndpointPanel
from helpers import run_engine

SIZE = (140, 44)


def _pair(tmp_path: Path, size: int = 3 << 20, seed: int = 1) -> tuple[Path, Path]:
    rnd = random.Random(seed)
    data = rnd.randbytes(size)
    changed = bytearray(data)
    for at in range(5000, size, size // 7):
        changed[at : at + 100] = rnd.randbytes(100)
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    src.write_bytes(data)
    dst.write_bytes(bytes(changed))
    return src, dst


def _on(app, kind: type) -> bool:
    """Whether the app shows a screen of `kind`, mounted: its widgets can be queried (a screen
    is the app's screen a moment before that, which a loaded machine makes long)."""
    return isinstance(app.screen, kind) and app.screen.is_mounted


async def _wait_for(pilot, condition, timeout: float = 90.0) -> None:
    """Let the app run until `condition()` holds (the engine works in a thread)."""
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"the app did not get there in time: {pilot.app.screen_stack}")


def _summary_text(review: ReviewScreen) -> str:
    """The review's key figures as plain text."""
    console = Console(width=120, file=io.StringIO())
    console.print(review.summary())
    return console.file.getvalue()


async def _click(pilot, selector: str) -> None:
    """Click a widget once the screen that holds it has been laid out."""
    await _wait_for(pilot, lambda: bool(pilot.app.screen.query(selector)) and pilot.app.screen.query_one(selector).region.area > 0)
    await pilot.pause()
    assert await pilot.click(selector)


async def _type(pilot, selector: str, text: str) -> None:
    await _click(pilot, selector)
    await pilot.press("home", "ctrl+k")  # clear the field: start of line, delete to its end
    await pilot.press(*text)


async def test_dry_run_from_keys_matches_the_engine_then_sync(tmp_path: Path) -> None:
    src, dst = _pair(tmp_path)
    app = BlocksyncApp(list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await _type(pilot, "#source-path", str(src))
        await _type(pilot, "#destination-path", str(dst))
        await pilot.press("ctrl+d")
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        review = app.screen
        assert isinstance(review, ReviewScreen)
        headless = run_engine(src, dst, dry_run=True, direct=False)  # the other method agrees
        for field in ("outcome", "chunks_differing", "bytes_differing", "change_runs", "total_chunks"):
            assert getattr(review.report, field) == getattr(headless, field), field
        assert review.report.outcome == "differs" and review.report.method == "direct"
        assert "byte for byte, on one host" in _summary_text(review)
        assert dst.read_bytes() != src.read_bytes(), "a dry run wrote"

        await pilot.press("ctrl+s")
        await _wait_for(pilot, lambda: _on(app, ConfirmSyncScreen))
        await _click(pilot, "#go")
        await _wait_for(
            pilot, lambda: _on(app, ReviewScreen) and app.screen.report.mode == "sync"
        )
        assert app.screen.report.outcome == "synced"
        assert dst.read_bytes() == src.read_bytes()


async def test_the_review_says_how_many_lanes_the_run_took(tmp_path: Path) -> None:
    """`auto` may take more lanes once connected (a first copy over a long link): the review
    says how many the run took, as the report's `streams` does."""
    src = tmp_path / "src.img"
    src.write_bytes(random.Random(4).randbytes(3 << 20))
    dst = tmp_path / "dst.img"
    dst.write_bytes(bytes(3 << 20))
    app = BlocksyncApp(RunRequest(str(src), str(dst)), list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+d")
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        review = app.screen
        assert review.report.streams == 1 and "lanes" not in _summary_text(review)
        in_lanes = ReviewScreen(review.engine, replace(review.report, streams=4), review.request)
        assert "through 4 lanes, each with its own connections" in _summary_text(in_lanes)


async def test_a_length_difference_shows_on_the_review(tmp_path: Path) -> None:
    """The destination is the source plus 4 KiB of zeros: not identical, and the review says why."""
    src = tmp_path / "src.img"
    src.write_bytes(random.Random(3).randbytes(1 << 20))
    dst = tmp_path / "dst.img"
    dst.write_bytes(src.read_bytes() + bytes(4096))
    app = BlocksyncApp(RunRequest(str(src), str(dst)), list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+d")
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        review = app.screen
        assert review.report.outcome == "differs" and review.report.size_difference == 4096
        assert "the destination is 4.0 KiB longer than the source" in _summary_text(review)
        await _wait_for(pilot, lambda: bool(review.query("#sync")))
        assert not review.query_one("#sync").disabled


@pytest.mark.parametrize("chunk_size", [4 << 10, 64 << 20], ids=["4K", "64M"])
async def test_every_chunk_size_of_the_command_line_can_be_picked(tmp_path: Path, chunk_size: int) -> None:
    """4 KiB to 64 MiB, as --chunk-size: the setup offered 64 KiB to 16 MiB only."""
    from textual.widgets import Select

    src, dst = _pair(tmp_path, size=(1 << 20) + 4096)
    app = BlocksyncApp(RunRequest(str(src), str(dst)), list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        app.screen.query_one("#chunk-size", Select).value = chunk_size  # refused if not offered
        await pilot.press("ctrl+d")
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        assert app.screen.report.chunk_size == chunk_size and app.screen.report.outcome == "differs"


async def test_paths_with_brackets_are_shown_as_they_are(tmp_path: Path) -> None:
    """User strings are never Rich markup: "[v1]" stays in the title, the review and the dialog."""
    src, dst = _pair(tmp_path)
    src = src.rename(tmp_path / "disk[v1].img")
    dst = dst.rename(tmp_path / "copy[b].img")
    app = BlocksyncApp(RunRequest(str(src), str(dst)), list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+d")
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        summary = _summary_text(app.screen)
        assert "disk[v1].img" in summary and "copy[b].img" in summary
        await pilot.press("ctrl+s")
        await _wait_for(pilot, lambda: _on(app, ConfirmSyncScreen))
        await _wait_for(pilot, lambda: bool(app.screen.query(".dialog-body")))
        body = str(app.screen.query_one(".dialog-body").render())
        assert "copy[b].img" in body and "disk[v1].img" in body
        await _click(pilot, "#go")
        await _wait_for(pilot, lambda: _on(app, ReviewScreen) and app.screen.report.mode == "sync")
        assert dst.read_bytes() == src.read_bytes()


async def test_brackets_in_user_strings_everywhere_else(tmp_path: Path) -> None:
    """The run screen's figures, an error beside a field and the device table show "[v1]" too."""
    from blocksync_tui.engine.endpoint import Endpoint
    from blocksync_tui.engine.inventory import Device
    from blocksync_tui.engine.sync import SyncEngine, SyncOptions

    src, dst = _pair(tmp_path)
    src = src.rename(tmp_path / "disk[v1].img")
    dst = dst.rename(tmp_path / "copy[b].img")
    app = BlocksyncApp(RunRequest(str(tmp_path / "gone[v2].img"), str(dst)), list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+d")
        await _wait_for(pilot, lambda: _on(app, ErrorScreen))
        await pilot.press("enter")
        panel = app.screen.query_one("#source", EndpointPanel)
        assert "gone[v2].img" in str(panel.query_one("#source-error").render())
        panel.show_devices([Device("/dev/loop7", 1 << 20, "loop: /srv/vm[web].img", mounted=("/mnt/[x]",))])
        table = panel.query_one("#source-devices")
        assert [str(cell) for cell in table.get_row("/dev/loop7")] == [
            "/dev/loop7", "1.0 MiB", "/mnt/[x]", "loop: /srv/vm[web].img"]

        engine = SyncEngine(Endpoint(str(src)), Endpoint(str(dst)), SyncOptions(dry_run=True))
        engine.prepare()
        try:
            screen = RunScreen(engine, poll=False)
            await app.push_screen(screen)
            await pilot.pause()
            screen.show_progress(engine.progress())
            console = Console(width=200, file=io.StringIO())
            console.print(screen.query_one("#stats").table(engine.progress()))
            figures = console.file.getvalue()
            assert "disk[v1].img" in figures and "copy[b].img" in figures
        finally:
            engine.close()


def _big_sync_app(tmp_path: Path, seed: int) -> tuple[BlocksyncApp, Path, Path]:
    """An app set to sync 256 MiB into an empty file in 64 KiB chunks: several times what is in
    flight at once (32 MiB), so that a cancel or a quit lands mid-way."""
    rnd = random.Random(seed)
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    src.write_bytes(b"".join(rnd.randbytes(1 << 20) for _ in range(256)))
    dst.write_bytes(b"")
    request = RunRequest(str(src), str(dst))
    request.options.chunk_size = 64 << 10
    return BlocksyncApp(request, list_devices=False), src, dst


async def _syncing(pilot) -> RunScreen:
    """Start the app's sync, confirm it, and wait until it has written something."""
    app = pilot.app
    await pilot.press("ctrl+s")
    await _click(pilot, "#go")
    await _wait_for(pilot, lambda: _on(app, RunScreen))
    run_screen = app.screen
    await _wait_for(pilot, lambda: run_screen.engine.chunk_map.count(State.WRITTEN) > 0)
    return run_screen


async def _asked_to_cancel(pilot):
    """A sync under way, paused so that it cannot end first, with Esc's cancel question open."""
    run_screen = await _syncing(pilot)
    engine = run_screen.engine
    engine.pause()
    await pilot.press("escape")
    await _wait_for(pilot, lambda: isinstance(pilot.app.screen, YesNoScreen))
    return run_screen, engine


async def test_cancel_mid_sync_says_what_it_left(tmp_path: Path) -> None:
    app, src, dst = _big_sync_app(tmp_path, seed=2)
    async with app.run_test(size=SIZE) as pilot:
        run_screen, engine = await _asked_to_cancel(pilot)
        assert "partly updated" in str(app.screen.question)
        await _click(pilot, "#yes")
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        report = app.screen.report
        assert report.outcome == "cancelled" and "partly updated" in report.message
        assert 0 < report.chunks["written"] < report.total_chunks
        # The note says to run the sync again: the review offers it.
        await _wait_for(pilot, lambda: bool(app.screen.query("#sync")))
        assert not app.screen.query_one("#sync").disabled
        await pilot.press("ctrl+s")
        await _wait_for(pilot, lambda: _on(app, ConfirmSyncScreen))
        await _click(pilot, "#go")
        await _wait_for(pilot, lambda: _on(app, ReviewScreen) and app.screen.report is not report)
        assert app.screen.report.outcome == "synced"
    assert dst.read_bytes() == src.read_bytes()


async def test_missing_source_shows_an_error_dialog_and_marks_the_field(tmp_path: Path) -> None:
    app = BlocksyncApp(RunRequest(str(tmp_path / "missing.img"), str(tmp_path / "d.img")), list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+d")
        await _wait_for(pilot, lambda: _on(app, ErrorScreen))
        assert "no such file" in app.screen.message
        await pilot.press("enter")
        panel = app.screen.query_one("#source", EndpointPanel)
        assert panel.has_class("-invalid")
        assert "no such file" in str(panel.query_one("#source-error").render())
    assert not (tmp_path / "d.img").exists()


async def test_empty_path_is_flagged_beside_its_field(tmp_path: Path) -> None:
    app = BlocksyncApp(RunRequest(str(tmp_path / "s.img"), ""), list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+d")
        await pilot.pause()
        panel = app.screen.query_one("#destination", EndpointPanel)
        assert panel.has_class("-invalid")
        assert not app.screen.query_one("#source", EndpointPanel).has_class("-invalid")


async def test_block_device_needs_its_name_typed(tmp_path: Path, loop_device) -> None:
    src, image = _pair(tmp_path, size=2 << 20)
    device = loop_device(image)
    before = image.read_bytes()
    app = BlocksyncApp(RunRequest(str(src), device), list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+s")
        await _wait_for(pilot, lambda: _on(app, ConfirmSyncScreen) and bool(app.screen.query("#go")))
        await pilot.pause()
        go = app.screen.query_one("#go")
        assert go.disabled
        await pilot.press(*"/dev/loopX")
        assert go.disabled
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmSyncScreen)
        with open(device, "rb") as f:
            assert f.read(len(before)) == before, "written without confirmation"
        await pilot.press("ctrl+s")
        await _wait_for(pilot, lambda: _on(app, ConfirmSyncScreen) and bool(app.screen.query("#confirm-name")))
        await pilot.pause()
        await pilot.press(*device, "enter")
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        assert app.screen.report.outcome == "synced"
    with open(device, "rb") as f:
        assert f.read(src.stat().st_size) == src.read_bytes()


async def test_export_writes_json_and_svg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    src, dst = _pair(tmp_path)
    app = BlocksyncApp(RunRequest(str(src), str(dst)), autostart=True, list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        await pilot.press("ctrl+e")
        await pilot.pause()
    report = json.loads((tmp_path / "blocksync-report.json").read_text())
    assert report["outcome"] == "differs" and report["mode"] == "compare"
    svg = (tmp_path / "blocksync-report.svg").read_text()
    assert svg.startswith("<svg") and "differs: " in svg
    mapfile = (tmp_path / "blocksync-report.map").read_text()
    areas = [line.split() for line in mapfile.splitlines()[5:]]
    assert mapfile.startswith("# Mapfile.") and any(status == "-" for _, _, status in areas)
    assert sum(int(length, 16) for _, length, _ in areas) == report["size"]
    assert dst.read_bytes() != src.read_bytes()


async def test_help_and_theme(tmp_path: Path) -> None:
    app = BlocksyncApp(list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        dark = app.current_theme.dark
        await pilot.press("ctrl+t")
        assert app.current_theme.dark != dark
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_local_devices_are_listed() -> None:
    """The device table shows what this host's kernel lists (empty loop devices and RAM disks aside)."""
    import os

    def fixed(paths: set[str]) -> set[str]:  # loop devices come and go with parallel tests
        return {path for path in paths if not path.startswith("/dev/loop")}

    expected = set()
    for name in os.listdir("/sys/block"):
        if not name.startswith(("ram", "zram")):
            expected.add(f"/dev/{name}")
    app = BlocksyncApp(list_devices=True)
    async with app.run_test(size=SIZE) as pilot:
        panel = app.screen.query_one("#source", EndpointPanel)
        table = panel.query_one("#source-devices")
        await _wait_for(pilot, lambda: not table.loading and panel.devices)
        listed = {device.path for device in panel.devices}
        assert fixed(listed) == fixed(expected) and listed <= expected | {
            f"/dev/{name}" for name in os.listdir("/sys/block")
        }
        keys = {row.value for row in table.rows}
        assert listed <= keys


@pytest.mark.ssh
async def test_remote_destination_in_the_app(tmp_path: Path, sshd, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dry run with the destination over SSH; the panel lists that host's devices via its worker."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # never the real ~/.ssh or agent
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    src, dst = _pair(tmp_path)
    request = RunRequest(str(src), sshd.endpoint(dst), ssh=sshd.ssh_options())
    app = BlocksyncApp(request, autostart=True, list_devices=True)
    async with app.run_test(size=SIZE) as pilot:
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        report = app.screen.report
        assert report.outcome == "differs" and report.destination == sshd.endpoint(dst)
        assert report.chunks_differing == run_engine(src, dst, dry_run=True).chunks_differing
        await pilot.press("escape")
        await _wait_for(pilot, lambda: _on(app, YesNoScreen))
        await _click(pilot, "#yes")  # leave the review
        panel = app.screen.query_one("#destination", EndpointPanel)
        assert panel.host.endswith(f"127.0.0.1:{sshd.port}")
        await _wait_for(pilot, lambda: bool(panel.devices))
    assert dst.read_bytes() != src.read_bytes()


def _dialog_text(screen) -> str:
    """Everything a dialog says, as plain text."""
    return " ".join(str(static.render()) for static in screen.query("Static"))


@pytest.mark.ssh
async def test_unknown_host_key_asks_then_trusts_and_runs(tmp_path: Path, sshd, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ends on a host whose key is unknown: the dialog shows its fingerprint; trusted, the
    key is saved once and the dry run goes ahead."""
    import subprocess

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # never the real ~/.ssh or agent
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    known = tmp_path / "known_hosts"
    src, dst = _pair(tmp_path)
    request = RunRequest(sshd.endpoint(src), sshd.endpoint(dst), ssh=sshd.ssh_options(known_hosts=str(known)))
    app = BlocksyncApp(request, autostart=True, list_devices=False)
    listed = subprocess.run(["ssh-keygen", "-lf", str(sshd.host_key.with_suffix(".pub"))],
                            capture_output=True, text=True, check=True)
    fingerprint = listed.stdout.split()[1]
    async with app.run_test(size=SIZE) as pilot:
        # Focus lands a refresh after the dialog's widgets exist: wait for it, then check where.
        await _wait_for(pilot, lambda: _on(app, HostKeyScreen) and app.screen.focused is not None)
        dialog = app.screen
        assert str(dialog.query_one("#fingerprint").render()) == fingerprint
        assert f"[{sshd.host}]:{sshd.port}" in _dialog_text(dialog) and str(known) in _dialog_text(dialog)
        assert dialog.focused is dialog.query_one("#cancel")  # Enter alone never trusts
        assert not known.exists()
        await _click(pilot, "#trust")
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        assert app.screen.report.outcome == "differs"
    assert known.read_text() == sshd.known_hosts_line() + "\n"
    assert dst.read_bytes() != src.read_bytes()


@pytest.mark.ssh
async def test_unknown_host_key_not_trusted(tmp_path: Path, sshd, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancel: nothing saved, nothing run, the error beside the panel. StrictHostKeyChecking yes
    offers no trust at all, only the error."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    known = tmp_path / "known_hosts"
    src, dst = _pair(tmp_path)
    request = RunRequest(str(src), sshd.endpoint(dst), ssh=sshd.ssh_options(known_hosts=str(known)))
    app = BlocksyncApp(request, autostart=True, list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await _wait_for(pilot, lambda: _on(app, HostKeyScreen) and bool(app.screen.query("#cancel")))
        await pilot.press("escape")
        await _wait_for(pilot, lambda: not isinstance(app.screen, HostKeyScreen))
        panel = app.screen.query_one("#destination", EndpointPanel)
        assert panel.has_class("-invalid") and "is not in" in str(panel.query_one("#destination-error").render())
        assert app.engine is None
    assert not known.exists()

    config = tmp_path / "ssh_config"
    config.write_text("StrictHostKeyChecking yes\nGlobalKnownHostsFile /dev/null\n")  # never /etc/ssh
    request.ssh = sshd.ssh_options(config_file=str(config), known_hosts=None)
    app = BlocksyncApp(request, autostart=True, list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await _wait_for(pilot, lambda: isinstance(app.screen, (ErrorScreen, HostKeyScreen)))
        assert isinstance(app.screen, ErrorScreen) and "StrictHostKeyChecking is yes" in app.screen.message
    assert not (tmp_path / "home" / ".ssh" / "known_hosts").exists()


async def test_demo_opens_on_a_dry_run_of_generated_images(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`blocksync-tui --demo`: two images in a temp dir, and a dry run that finds their differences."""
    from blocksync_tui.cli import make_app

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # let TMPDIR apply
    app = make_app(["--demo", "--demo-size", "16"])
    source, destination = Path(app.request.source), Path(app.request.destination)
    assert source.parent.parent == tmp_path and source.exists() and destination.exists()
    async with app.run_test(size=SIZE) as pilot:
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        report = app.screen.report
        assert report.mode == "compare" and report.outcome == "differs" and report.change_runs > 3
        assert source.read_bytes() != destination.read_bytes(), "the demo's dry run wrote"
    assert not source.parent.exists(), "the demo left its images behind"


async def test_endpoints_on_the_command_line_fill_the_setup() -> None:
    from blocksync_tui.cli import make_app

    app = make_app(["/dev/sdz", "backup@nas:2222:/images/sdz.img", "-i", "/keys/id"])
    assert app.request.ssh.identity_files == ["/keys/id"] and not app.autostart
    app.list_devices_on_start = False  # "nas" is not a host this test may reach
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        source = app.screen.query_one("#source", EndpointPanel)
        destination = app.screen.query_one("#destination", EndpointPanel)
        assert (source.host, source.path) == ("", "/dev/sdz")
        assert (destination.host, destination.path, destination.key) == ("backup@nas:2222", "/images/sdz.img", "/keys/id")
        assert destination.endpoint_text() == "backup@nas:2222:/images/sdz.img"


async def test_quit_during_a_sync_asks_then_cancels(tmp_path: Path) -> None:
    app, src, dst = _big_sync_app(tmp_path, seed=3)
    async with app.run_test(size=SIZE) as pilot:
        engine = (await _syncing(pilot)).engine
        engine.pause()
        await pilot.press("ctrl+q")
        await _wait_for(pilot, lambda: _on(app, YesNoScreen))
        assert "partly updated" in app.screen.question
        await _click(pilot, "#no")  # keep syncing
        assert app.is_running and not engine.cancelled
        await pilot.press("ctrl+q")
        await _wait_for(pilot, lambda: _on(app, YesNoScreen))
        await _click(pilot, "#yes")
        await _wait_for(pilot, lambda: not app.is_running)
        assert engine.cancelled
    # What the command line says of a cancelled sync, said on the terminal once the app is gone.
    assert app.farewell.startswith("blocksync-tui: sync cancelled after writing ")
    assert "partly updated" in app.farewell and "run the sync again" in app.farewell
    assert engine.report().outcome == "cancelled"  # it waited for the engine's end
    run_engine(src, dst, chunk_size=64 << 10)
    assert dst.read_bytes() == src.read_bytes()


async def test_sync_after_a_dry_run_reads_only_what_differed_and_a_sample(tmp_path: Path) -> None:
    """Sync... from the review does not rescan the device: the chunks the dry run found equal
    are settled, but for a sample of 64 read again; the 7 it found differing are compared again
    and written."""
    src, dst = _pair(tmp_path, size=32 << 20)  # 512 chunks of 64 KiB, 7 of them changed
    request = RunRequest(str(src), str(dst), SyncOptions(chunk_size=64 << 10))
    app = BlocksyncApp(request, list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await _click(pilot, "#source-path")
        await pilot.press("ctrl+d")
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        assert app.screen.report.chunks_differing == 7
        await pilot.press("ctrl+s")
        await _wait_for(pilot, lambda: _on(app, ConfirmSyncScreen))
        await _click(pilot, "#go")
        await _wait_for(
            pilot, lambda: _on(app, ReviewScreen) and app.screen.report.mode == "sync"
        )
        report = app.screen.report
        assert report.outcome == "synced" and dst.read_bytes() == src.read_bytes()
        assert report.settled_by == "dry run" and report.sample_differed == 0
        assert (report.chunks_settled, report.chunks_sampled) == (512 - 7 - 64, 64)
        assert report.chunks["written"] == 7
        read = app.screen.engine.progress()  # what the engine's workers read, each side
        assert read.scanned_source == read.scanned_destination == (7 + 64) * (64 << 10)
        assert "settled by the dry run" in _summary_text(app.screen)


async def test_a_dialog_open_when_the_run_ends_stays_until_answered(tmp_path: Path) -> None:
    """The cancel question is open when the sync ends: it stays, and the Enter meant for it
    answers it (keep going) instead of landing on the review that follows."""
    app, src, dst = _big_sync_app(tmp_path, seed=4)
    async with app.run_test(size=SIZE) as pilot:
        run_screen, engine = await _asked_to_cancel(pilot)
        dialog = app.screen
        engine.resume()
        await _wait_for(pilot, lambda: run_screen.finished)
        await pilot.pause(0.2)
        assert app.screen is dialog
        await pilot.press("enter")  # on "Keep going", the focused answer
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        assert app.screen.report.outcome == "synced" and not engine.cancelled
        await pilot.pause(0.2)
        assert isinstance(app.screen, ReviewScreen)
    assert dst.read_bytes() == src.read_bytes()


async def test_escape_on_the_review_asks_before_leaving_it(tmp_path: Path) -> None:
    src, dst = _pair(tmp_path)
    app = BlocksyncApp(RunRequest(str(src), str(dst)), autostart=True, list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        review = app.screen
        await pilot.press("escape")
        await _wait_for(pilot, lambda: _on(app, YesNoScreen))
        await pilot.press("escape")  # no: stay
        await pilot.pause()
        assert app.screen is review
        await pilot.press("escape")
        await _wait_for(pilot, lambda: _on(app, YesNoScreen))
        await _click(pilot, "#yes")
        await _wait_for(pilot, lambda: type(app.screen).__name__ == "SetupScreen")


async def test_at_80x24_everything_is_reachable(tmp_path: Path) -> None:
    """On the smallest common terminal: the review's runs table has rows when it has the focus,
    every button and footer key is on screen, the side panel leaves the map room, and the
    setup's options row fits."""
    from textual.widgets import Button, DataTable
    from textual.widgets._footer import FooterKey

    def on_screen(widget) -> bool:
        region = widget.region
        return region.area > 0 and region.right <= 80 and region.bottom <= 24

    src, dst = _pair(tmp_path)
    app = BlocksyncApp(RunRequest(str(src), str(dst)), list_devices=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await _wait_for(pilot, lambda: app.screen.query("#options > *") and all(
            on_screen(widget) for widget in app.screen.query("#options > *")), timeout=20)
        await pilot.press("ctrl+d")
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        review = app.screen
        await _wait_for(pilot, lambda: review.query(FooterKey) and all(
            on_screen(widget) for widget in [*review.query(Button), *review.query(FooterKey)]), timeout=20)
        assert review.query_one("#review-side").region.width <= 36
        runs = review.query_one("#runs", DataTable)
        runs.focus()

        def rows_shown() -> int:
            return runs.region.intersection(review.query_one("#review-side").content_region).height

        await _wait_for(pilot, lambda: rows_shown() >= 6, timeout=20)


async def test_connecting_shows_at_once_and_can_be_given_up(tmp_path: Path) -> None:
    """A host that accepts the connection and then says nothing: the dialog says what is going
    on from the first moment; Escape gives up, and the late failure opens no dialog."""
    import socket

    from blocksync_tui.engine.options import SshOptions
    from blocksync_tui.tui.screens.dialogs import BusyScreen

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    port = silent.getsockname()[1]
    src, _ = _pair(tmp_path)
    ssh = SshOptions(connect_timeout=2, config_file=str(tmp_path / "no-config"),
                     known_hosts=str(tmp_path / "known_hosts"))
    request = RunRequest(str(src), f"nobody@127.0.0.1:{port}:/x.img", ssh=ssh)
    app = BlocksyncApp(request, list_devices=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+s")
            assert isinstance(app.screen, BusyScreen)  # pushed with the request, not after it
            assert "Connecting, opening both ends" in str(app.screen.query_one(".dialog-title").render())
            await pilot.press("escape")
            await pilot.pause()
            assert type(app.screen).__name__ == "SetupScreen"
            # The connection times out later: that answer is no longer awaited.
            assert [w.name for w in app.workers] == ["prepare_engine"]
            await _wait_for(pilot, lambda: not any(w.is_running for w in app.workers))
            await pilot.pause(0.2)
            assert type(app.screen).__name__ == "SetupScreen" and app.engine is None
    finally:
        silent.close()


def _footer_keys(screen) -> dict[str, str]:
    """What the footer offers: key -> description (enabled or dimmed)."""
    return {key: active.binding.description for key, active in screen.active_bindings.items()}


async def test_pause_shows_in_the_title_and_the_footer(tmp_path: Path) -> None:
    """Space pauses: the title says PAUSED, the footer offers Resume, the progress line says so."""
    app, src, dst = _big_sync_app(tmp_path, seed=5)
    async with app.run_test(size=SIZE) as pilot:
        run_screen = await _syncing(pilot)
        engine = run_screen.engine
        await pilot.press("space")
        assert engine.progress().paused
        assert "PAUSED" in str(run_screen.query_one("#run-title").render())
        assert _footer_keys(run_screen)["space"] == "Resume"
        await pilot.pause(0.3)
        line = run_screen.query_one("#run-progress").text
        assert "of 256.0 MiB compared" in line and line.endswith("paused")
        progress = engine.progress()  # the map marks where the scan is
        assert run_screen.query_one("#block-map").position == progress.scanned // progress.chunk_size
        await pilot.press("space")
        await _wait_for(pilot, lambda: not engine.progress().paused)
        assert "PAUSED" not in str(run_screen.query_one("#run-title").render())
        assert _footer_keys(run_screen)["space"] == "Pause"
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
    assert dst.read_bytes() == src.read_bytes()


async def test_cancelling_and_the_eta_at_80x24(tmp_path: Path) -> None:
    """On 80x24 the progress line with its ETA is in view; a cancel under way reads CANCELLING
    in the title, and the footer's Esc says "Cancelling…" instead of offering a second cancel."""
    from blocksync_tui.engine.endpoint import Endpoint
    from blocksync_tui.engine.sync import SyncEngine, SyncOptions

    src, dst = _pair(tmp_path)
    app = BlocksyncApp(list_devices=False)
    async with app.run_test(size=(80, 24)) as pilot:
        engine = SyncEngine(Endpoint(str(src)), Endpoint(str(dst)), SyncOptions())
        engine.prepare()
        try:
            screen = RunScreen(engine, poll=False)
            await app.push_screen(screen)
            await pilot.pause()
            progress = replace(engine.progress(), phase="scanning", elapsed=2.0,
                               scanned_source=1 << 20, scanned_destination=1 << 20)
            screen.show_progress(progress)
            await pilot.pause()
            bar = screen.query_one("#run-progress")
            assert bar.region.bottom <= 24 and bar.region.width == 80
            line = bar.text
            assert "1.0 MiB of 3.0 MiB compared  33%  ETA 0:04" in line
            assert _footer_keys(screen)["escape"] == "Cancel"
            engine.cancel()  # not running: the flag alone, as while the writes in flight finish
            screen.show_progress(progress)
            assert "CANCELLING" in str(screen.query_one("#run-title").render())
            assert _footer_keys(screen)["escape"] == "Cancelling…"
            assert not screen.active_bindings["escape"].enabled
        finally:
            engine.close()


async def test_the_figures_and_the_legend_show_the_same_counts(tmp_path: Path) -> None:
    """Sampled all through a sync: the chunks the figures say were written are the legend's
    count, never a poll behind it."""
    from blocksync_tui.tui.widgets.block_map_legend import BlockMapLegend

    app, src, dst = _big_sync_app(tmp_path, seed=6)
    async with app.run_test(size=SIZE) as pilot:
        run_screen = await _syncing(pilot)
        stats, legend = run_screen.query_one("#stats"), run_screen.query_one(BlockMapLegend)
        samples = 0
        while not run_screen.finished:
            assert stats.progress.counts == legend.counts
            samples += 1
            await pilot.pause(0.03)
        assert samples > 3
    assert dst.read_bytes() == src.read_bytes()


async def _pick_from_palette(pilot, name: str) -> None:
    """Open the command palette, type `name`, and run the entry once the palette lists it first."""
    from textual.command import CommandList, CommandPalette

    app = pilot.app
    await pilot.press("ctrl+p")
    await _wait_for(pilot, lambda: _on(app, CommandPalette))
    await pilot.press(*name.lower())

    def listed_first() -> bool:
        options = app.screen.query(CommandList)
        return bool(options) and options.first().option_count > 0 and (
            str(options.first().get_option_at_index(0).prompt).startswith(name))

    await _wait_for(pilot, listed_first, timeout=20)
    await pilot.press("enter")


async def test_the_command_palette_holds_the_screens_actions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl+P lists what the screen's keys do (dry run, sync, theme... then on the review
    export and zoom); picking "Dry run" runs one, picking "Export" exports."""
    from blocksync_tui.tui.commands import ActionsProvider

    monkeypatch.chdir(tmp_path)
    src, dst = _pair(tmp_path)
    app = BlocksyncApp(RunRequest(str(src), str(dst)), list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        names = [name for name, _, _ in ActionsProvider(app.screen)._commands()]
        assert {"Dry run", "Sync", "Help", "Light/dark"} <= set(names)
        await _pick_from_palette(pilot, "Dry run")
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        review = app.screen
        wanted = {"Export", "Sync…", "Zoom", "Zoom out", "Whole device", "Back"}
        # The zoom actions are offered once the review's block map is mounted.
        await _wait_for(pilot, lambda: wanted <= {name for name, _, _ in ActionsProvider(review)._commands()})
        await _pick_from_palette(pilot, "Export")
        await _wait_for(pilot, lambda: (tmp_path / "blocksync-report.json").exists())


def test_device_models_name_the_maker_not_a_bus_id() -> None:
    """What the device table shows as a model: never a bare PCI vendor id like 0x1af4."""
    import os
    import re

    from blocksync_tui.engine.endpoint import Endpoint
    from blocksync_tui.engine.inventory import list_devices

    devices = [d for d in list_devices(Endpoint("/")) if not d.path.startswith("/dev/loop")]
    if not devices:
        pytest.skip("this machine lists no block devices")
    for device in devices:
        assert not re.search(r"(^| )0x[0-9a-f]+( |$)", device.model), device
        assert not device.model.startswith("ATA "), device
        name = device.path.removeprefix("/dev/")
        if os.path.realpath(f"/sys/block/{name}/device/driver").endswith("/virtio_blk"):
            assert device.model == "virtio disk"


async def test_setup_errors_go_once_the_field_changes_and_a_new_host_lists_its_own(tmp_path: Path) -> None:
    """An error beside a panel goes once its fields change; a host typed in replaces the
    device list (never this machine's devices under another host's name); a mounted disk
    picked as the destination is flagged at once."""
    from blocksync_tui.engine.inventory import Device

    app = BlocksyncApp(RunRequest(str(tmp_path / "missing.img"), str(tmp_path / "d.img")), list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+d")
        await _wait_for(pilot, lambda: _on(app, ErrorScreen))
        await pilot.press("enter")
        source = app.screen.query_one("#source", EndpointPanel)
        await _wait_for(pilot, lambda: source.has_class("-invalid"))
        (tmp_path / "found.img").write_bytes(b"x" * 4096)
        await _type(pilot, "#source-path", str(tmp_path / "found.img"))
        await pilot.pause()
        assert not source.has_class("-invalid")
        assert not source.query_one("#source-error").has_class("-visible")

        destination = app.screen.query_one("#destination", EndpointPanel)
        disk = Device("/dev/sdz", 1 << 30, "Disk", mounted=("/srv",))
        destination.show_devices([Device("/dev/sdy", 1 << 30, "Spare"), disk])
        table = destination.query_one("#destination-devices")
        table.focus()
        table.move_cursor(row=1)
        await pilot.press("enter")
        await pilot.pause()
        assert destination.path == "/dev/sdz" and destination.has_class("-invalid")
        assert "/dev/sdz is in use (/srv)" in str(destination.query_one("#destination-error").render())
        table.move_cursor(row=0)
        await pilot.press("enter")
        await pilot.pause()
        assert destination.path == "/dev/sdy" and not destination.has_class("-invalid")

        await _type(pilot, "#destination-host", "nobody@127.0.0.1:1")  # nothing listens on port 1
        assert destination.devices == [] and table.row_count == 0
        await _click(pilot, "#destination-path")  # leaving the host field lists its devices
        await _wait_for(pilot, lambda: destination.has_class("-invalid"))
        assert "Block devices of nobody@127.0.0.1:1" in str(destination.query_one(".devices-title").render())
        assert table.row_count == 0


async def test_local_paths_complete_as_they_are_typed(tmp_path: Path) -> None:
    """Typing the start of a local path suggests the rest; → takes it. A host that cannot be
    reached gets none (tests/test_app_completion.py has a remote one's); the key field completes
    this machine's files whatever the host."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "disk-a.img").write_bytes(b"")
    app = BlocksyncApp(list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await _type(pilot, "#source-path", str(tmp_path / "im"))
        field = app.screen.query_one("#source-path")
        await _wait_for(pilot, lambda: field._suggestion == str(tmp_path / "images") + "/", timeout=20)
        await pilot.press("right", *"d")
        await _wait_for(pilot, lambda: field._suggestion == str(tmp_path / "images" / "disk-a.img"), timeout=20)
        await pilot.press("right")
        assert field.value == str(tmp_path / "images" / "disk-a.img")
        await _type(pilot, "#source-host", "nobody@127.0.0.1:1")
        await _type(pilot, "#source-path", str(tmp_path / "im"))
        await pilot.pause(0.3)
        assert not field._suggestion
        # A key file is read on this machine, whatever the host.
        (tmp_path / "id_backup").write_bytes(b"")
        await _type(pilot, "#source-key", str(tmp_path / "id_"))
        key = app.screen.query_one("#source-key")
        await _wait_for(pilot, lambda: key._suggestion == str(tmp_path / "id_backup"), timeout=20)


async def test_the_selected_run_is_lit_on_the_map(tmp_path: Path) -> None:
    src, dst = _pair(tmp_path, size=8 << 20)
    request = RunRequest(str(src), str(dst), SyncOptions(chunk_size=64 << 10))
    app = BlocksyncApp(request, autostart=True, list_devices=False)
    async with app.run_test(size=SIZE) as pilot:
        await _wait_for(pilot, lambda: _on(app, ReviewScreen))
        review = app.screen
        runs, block_map = review.query_one("#runs"), review.query_one("#block-map")
        first, second = review.report.largest_runs[:2]
        assert not block_map.spotlight  # the list's own first highlight, as it fills, lights nothing
        runs.focus()  # taking the focus selects the run under the cursor
        await _wait_for(pilot, lambda: block_map.spotlight == ((first["first_chunk"], first["chunks"]),))
        await pilot.press("down")
        await _wait_for(pilot, lambda: block_map.spotlight == ((second["first_chunk"], second["chunks"]),))
        # The owners list loading (it posts "no owner selected") gives the spotlight back to the run.
        await _wait_for(pilot, lambda: "source" in review.owners)
        await pilot.pause()
        assert block_map.spotlight == ((second["first_chunk"], second["chunks"]),)
        # The whole run in the spotlight (the rest of the map dimmed), not just its first cell.
        await pilot.press("up")
        await _wait_for(pilot, lambda: block_map.spotlight == ((first["first_chunk"], first["chunks"]),))
        await pilot.press("down")
        await _wait_for(pilot, lambda: block_map.spotlight == ((second["first_chunk"], second["chunks"]),))
