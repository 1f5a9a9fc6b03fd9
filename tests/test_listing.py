"""LIST, the worker's bounded directory listing for path completion: a real worker answers,
the controller checks every name, and a host's session serves many listings on one worker."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import ConnectError, ProtocolError, RemoteError
from blocksync_tui.engine.host_session import LIST_LIMIT, HostSession
from blocksync_tui.engine.listing import Listing
from blocksync_tui.engine.transports import transport_factory
from blocksync_tui.engine.worker import listing as worker_listing


@pytest.fixture
def session():
    """A session with a real worker on this machine."""
    session = HostSession(Endpoint("/"))
    yield session
    session.close()


def _files(folder: Path, names: list[str | bytes]) -> Path:
    folder.mkdir(exist_ok=True)
    for name in names:
        path = os.path.join(os.fsencode(folder), os.fsencode(name))
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY))
    return folder


def test_a_listing_names_the_first_entries_by_name_and_dot_files_only_when_asked(session, tmp_path: Path) -> None:
    folder = _files(tmp_path / "d", ["b.img", "a.img", ".hidden", ".config2"])
    (folder / "sub").mkdir()
    (folder / "link").symlink_to(folder / "sub")
    (folder / "dangling").symlink_to(folder / "gone")
    listing = session.listing(str(folder), "")
    assert listing.entries == (("a.img", False), ("b.img", False), ("dangling", False), ("link", True),
                               ("sub", True)) and listing.complete
    assert session.listing(str(folder), ".").entries == ((".config2", False), (".hidden", False))
    assert session.listing(str(folder), "s").entries == (("sub", True),)
    assert session.starts == 1 and session.listings == 3  # one worker for every request


def test_a_huge_directory_is_answered_in_part_and_said_to_be(session, tmp_path: Path) -> None:
    """2,500 entries: the first 1,000 by name travel, marked incomplete; a longer prefix
    asks for the ones that start with it."""
    folder = _files(tmp_path / "many", [f"f{i:05d}" for i in range(2500)])
    started = time.monotonic()
    listing = session.listing(str(folder), "")
    assert len(listing.entries) == LIST_LIMIT and not listing.complete
    assert listing.entries[0] == ("f00000", False) and listing.entries[-1] == ("f00999", False)
    assert listing.covers("f005") and not listing.covers("f02")  # f02... lie beyond the first 1,000
    narrower = session.listing(str(folder), "f02")
    assert len(narrower.entries) == 500 and narrower.complete and narrower.completion("f02") == ("f02000", False)
    assert time.monotonic() - started < 5


def test_the_scan_of_a_directory_is_bounded_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_SCAN entries the worker stops reading the directory and says it is incomplete
    (the worker's function itself, with a small bound: 100,000 files take seconds to make)."""
    folder = _files(tmp_path / "scan", [f"n{i:03d}" for i in range(60)])
    monkeypatch.setattr(worker_listing, "MAX_SCAN", 50)
    answer = worker_listing.listing({"path": str(folder), "prefix": "", "max": 1000})
    assert len(answer["entries"]) == 50 and not answer["complete"]
    monkeypatch.setattr(worker_listing, "MAX_SCAN", 60)
    assert worker_listing.listing({"path": str(folder), "prefix": "", "max": 1000})["complete"]
    huge = worker_listing.listing({"path": str(folder), "prefix": "", "max": 10**9})  # bounded by the worker
    assert len(huge["entries"]) == 60


def test_names_that_are_not_utf8_or_hold_control_characters_are_never_suggested(session, tmp_path: Path) -> None:
    """Such names travel (JSON escapes them) but are left out: shown, a name that is not
    UTF-8 would not be its bytes, and a control character would act on the terminal."""
    folder = _files(tmp_path / "odd", [b"disk-\xff\xfe.img", "disk-\x1b[31mred.img", "disk-new\nline.img",
                                       "disk-ok.img", "disk-é.img"])
    listing = session.listing(str(folder), "disk-")
    assert listing.entries == (("disk-ok.img", False), ("disk-é.img", False)) and listing.complete


def test_a_missing_directory_or_a_file_is_an_error_to_the_caller_only(session, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(RemoteError, match="No such file"):
        session.listing(str(tmp_path / "missing"), "")
    with pytest.raises(RemoteError, match="Not a directory"):
        session.listing(str(tmp_path / "file"), "")
    assert session.listing(str(tmp_path), "fi").entries == (("file", False),)  # the worker lives on
    assert session.starts == 1


def test_a_home_relative_folder_is_the_workers_home(session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _files(tmp_path / "home", ["images.d"])
    monkeypatch.setenv("HOME", str(home))  # the worker inherits it
    fresh = HostSession(Endpoint("/"))
    try:
        assert fresh.listing("~", "im").entries == (("images.d", False),)
    finally:
        fresh.close()


@pytest.mark.parametrize("answer, why", [
    ({"entries": [["a", False]] * 3, "complete": True}, "more entries than asked for"),
    ({"entries": [["a/b", False]], "complete": True}, "a path, not a name"),
    ({"entries": [[".."], ], "complete": True}, "an entry of one field"),
    ({"entries": [["..", True]], "complete": True}, "the parent"),
    ({"entries": [["", True]], "complete": True}, "empty"),
    ({"entries": [["a\0b", False]], "complete": True}, "a NUL"),
    ({"entries": [["other", False]], "complete": True}, "not what was asked for"),
    ({"entries": [["d" + "x" * 255, False]], "complete": True}, "longer than NAME_MAX"),
    ({"entries": [["d.hidden", 1]], "complete": True}, "is_dir not a bool"),
    ({"entries": [[7, False]], "complete": True}, "a number for a name"),
    ({"entries": {"d": False}, "complete": True}, "not a list"),
    ({"entries": [], "complete": "yes"}, "complete not a bool"),
    ({"complete": True}, "no entries"),
])
def test_a_listing_that_no_worker_of_ours_sends_is_refused(answer: dict, why: str) -> None:
    with pytest.raises(ProtocolError, match="malformed LIST"):
        Listing.parse(answer, "d", limit=2)


def test_dot_files_in_an_answer_to_a_plain_prefix_are_refused() -> None:
    with pytest.raises(ProtocolError):
        Listing.parse({"entries": [[".ssh", True]], "complete": True}, "", limit=5)
    assert Listing.parse({"entries": [[".ssh", True]], "complete": True}, ".", limit=5).entries == ((".ssh", True),)


def test_what_a_listing_can_answer() -> None:
    """A complete listing answers every longer prefix; a partial one (the first names by
    name) only one it holds a completion for; a plain one never a dotted stem."""
    whole = Listing("", (("disk", True), ("disk.img", False), ("images", True)), complete=True)
    assert whole.covers("di") and whole.completion("di") == ("disk", True)
    assert whole.completion("disk.img") is None and whole.covers("disk.img")  # a file of that very name
    assert whole.completion("x") is None and whole.covers("x")
    assert not whole.covers(".bash")
    part = Listing("d", (("d1", False), ("d10", False), ("d2", False)), complete=False)
    assert part.covers("d1") and part.completion("d1") == ("d10", False)
    assert not part.covers("d2")  # only "d2" itself is known: "d20" may lie beyond the first names
    assert not part.covers("d3") and not part.covers("e")


@pytest.mark.ssh
def test_a_remote_session_lists_on_one_connection(sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    folder = _files(tmp_path / "remote", ["disk-a.img", "disk-b.img"])
    host = Endpoint.parse(sshd.endpoint("/"))
    session = HostSession(host, transport_factory(sshd.ssh_options()))
    try:
        for _ in range(5):
            assert session.listing(str(folder), "disk").completion("disk-") == ("disk-a.img", False)
        assert session.devices() is not None
        assert session.starts == 1 and len(sshd.connection_pids()) == 1
    finally:
        session.close()
    assert sshd.wait_sessions_gone(timeout=10) == []


@pytest.mark.ssh
def test_a_failed_start_is_not_tried_again_on_every_listing(sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that refuses the key: the first listing says why, the next fail at once, and
    listing devices (an explicit act) tries again."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    host = Endpoint.parse(sshd.endpoint("/"))
    session = HostSession(host, transport_factory(sshd.ssh_options(identity_files=[str(sshd.other_key)])))
    try:
        with pytest.raises(ConnectError):
            session.listing(str(tmp_path), "")
        with pytest.raises(ConnectError):
            session.listing(str(tmp_path), "")
        assert session.starts == 1
        with pytest.raises(ConnectError):
            session.devices()
        assert session.starts == 2
    finally:
        session.close()
