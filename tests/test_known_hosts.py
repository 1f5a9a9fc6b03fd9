"""known_hosts reading, matching and writing, checked against OpenSSH's own ssh-keygen."""

from __future__ import annotations

import base64
import multiprocessing
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from blocksync_tui.engine import known_hosts
from blocksync_tui.engine.known_hosts import Status

needs_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")


def _blob(type_name: str, body: bytes) -> bytes:
    """A well-formed (not necessarily valid) public key blob: a type string, then anything."""
    name = type_name.encode()
    return len(name).to_bytes(4, "big") + name + len(body).to_bytes(4, "big") + body


KEY = _blob("ssh-ed25519", b"A" * 32)
OTHER = _blob("ssh-ed25519", b"B" * 32)
RSA = _blob("ssh-rsa", b"C" * 64)


def line(hosts: str, key: bytes = KEY, marker: str = "") -> str:
    text = f"{hosts} {known_hosts.key_type(key)} {base64.b64encode(key).decode()}"
    return f"{marker} {text}" if marker else text


def status(text: str, name: str, key: bytes = KEY) -> Status:
    return known_hosts.check(known_hosts.parse(text), name, key).status


# -- matching, as sshd(8) describes it


@pytest.mark.parametrize(
    ("hosts", "name", "expected"),
    [
        ("example.com", "example.com", True),
        ("Example.COM", "example.com", True),  # host names are case-insensitive
        ("a.example,example.com,10.0.0.1", "example.com", True),  # comma lists
        ("a.example,b.example", "example.com", False),
        ("*.example.com", "www.example.com", True),
        ("*.example.com", "example.com", False),
        ("host?", "host1", True),
        ("host?", "host12", False),
        ("[example.com]:2222", "[example.com]:2222", True),  # brackets are literal, not a class
        ("[example.com]:2222", "example.com", False),
        ("example.com", "[example.com]:2222", False),
        ("[10.0.0.?]:2222", "[10.0.0.7]:2222", True),
        ("*", "[10.0.0.7]:2222", True),
        ("*,!secret.example.com", "secret.example.com", False),  # a negation rules a line out
        ("!secret.example.com,*", "secret.example.com", False),  # wherever it is in the list
        ("*,!secret.example.com", "www.example.com", True),
        ("!secret.example.com", "www.example.com", False),  # a negation alone matches nothing
        ("*.example.com,!*.internal.example.com", "db.internal.example.com", False),
    ],
)
def test_host_patterns(hosts: str, name: str, expected: bool) -> None:
    assert known_hosts.match_hosts(name, hosts) is expected


def test_host_name_adds_the_port_as_openssh_does() -> None:
    assert known_hosts.host_name("Example.com", 22) == "example.com"
    assert known_hosts.host_name("Example.com", 2222) == "[example.com]:2222"
    assert known_hosts.host_name("::1", 2222) == "[::1]:2222"


def test_a_hashed_name_matches_only_itself() -> None:
    hashed = known_hosts.format_line("[Example.com]:2222", KEY, hashed=True)
    assert hashed.startswith("|1|") and "example" not in hashed.lower()
    entry = known_hosts.parse_line(hashed)
    assert entry is not None
    assert entry.matches("[example.com]:2222")
    assert not entry.matches("example.com") and not entry.matches("[example.com]:2223")
    salt = base64.b64decode(hashed.split("|")[2])
    assert known_hosts.format_line("[example.com]:2222", KEY, hashed=True, salt=salt) == hashed


# -- reading: what OpenSSH skips is skipped, and nothing fails a whole file


def test_lines_openssh_skips_are_skipped() -> None:
    text = "\n".join([
        "# a comment",
        "",
        "   ",
        "@cert-authority *.example.com ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC",  # bad padding
        "@cert-authority *.example.com " + line("x", RSA).split(" ", 1)[1],
        "@unknown-marker example.com " + line("x").split(" ", 1)[1],
        "truncated.example ssh-ed25519",
        "garbage.example ssh-ed25519 !!!notbase64!!!",
        "mislabelled.example ssh-rsa " + base64.b64encode(KEY).decode(),
        line("example.com") + " a trailing comment",
    ])
    entries = known_hosts.parse(text, "kh")
    assert [(e.marker, e.hosts, e.line) for e in entries] == [
        ("@cert-authority", "*.example.com", 5),
        ("", "example.com", 10),
    ]
    assert entries[1].where == "kh:10" and entries[1].key == KEY


def test_a_missing_or_unreadable_file_lists_nothing(tmp_path: Path) -> None:
    (tmp_path / "kh").write_text(line("example.com") + "\n")
    entries = known_hosts.read([str(tmp_path / "missing"), str(tmp_path), str(tmp_path / "kh")])
    assert [e.hosts for e in entries] == ["example.com"]


# -- deciding: OpenSSH's check_key_in_hostkeys


def test_known_unknown_changed() -> None:
    text = line("example.com") + "\n" + line("other.example", OTHER) + "\n"
    assert status(text, "example.com") is Status.KNOWN
    assert status(text, "new.example") is Status.UNKNOWN
    assert status(text, "other.example") is Status.CHANGED
    # One matching line is enough, whatever other lines for the host say.
    assert status(line("example.com", OTHER) + "\n" + text, "example.com") is Status.KNOWN


def test_a_host_known_with_another_key_type_has_changed() -> None:
    """OpenSSH refuses a host whose only listed key is of another type (the server offered a
    type we do not know for it); we ask for the listed types first, so that is rare."""
    verdict = known_hosts.check(known_hosts.parse(line("example.com", RSA)), "example.com", KEY)
    assert verdict.status is Status.CHANGED and verdict.entry and verdict.entry.key == RSA


def test_changed_names_a_line_of_the_same_type_first() -> None:
    text = line("example.com", RSA) + "\n" + line("example.com", OTHER) + "\n"
    verdict = known_hosts.check(known_hosts.parse(text, "kh"), "example.com", KEY)
    assert verdict.status is Status.CHANGED and verdict.entry and verdict.entry.where == "kh:2"


def test_revoked_wins_over_everything() -> None:
    text = line("example.com") + "\n" + line("*", KEY, "@revoked") + "\n"
    verdict = known_hosts.check(known_hosts.parse(text, "kh"), "example.com", KEY)
    assert verdict.status is Status.REVOKED and verdict.entry and verdict.entry.where == "kh:2"
    # A revocation is about its hosts, and about its key only.
    assert status(line("other.example", KEY, "@revoked"), "example.com") is Status.UNKNOWN
    assert status(text, "example.com", OTHER) is Status.CHANGED


def test_cert_authority_lines_are_ignored() -> None:
    text = line("*.example.com", OTHER, "@cert-authority") + "\n"
    assert status(text, "www.example.com") is Status.UNKNOWN
    assert status(text + line("www.example.com") + "\n", "www.example.com") is Status.KNOWN


def test_a_listed_bare_name_counts_for_another_port() -> None:
    """OpenSSH's "checking without port identifier": only a match counts there."""
    entries = known_hosts.parse(line("example.com") + "\n")
    found = known_hosts.lookup(entries, "[example.com]:2222", KEY, "example.com")
    assert found.status is Status.KNOWN
    assert known_hosts.lookup(entries, "[example.com]:2222", OTHER, "example.com").status is Status.UNKNOWN
    # The port's own line decides when there is one.
    both = known_hosts.parse(line("[example.com]:2222", OTHER) + "\n" + line("example.com") + "\n")
    assert known_hosts.lookup(both, "[example.com]:2222", KEY, "example.com").status is Status.CHANGED


def test_known_types_in_file_order() -> None:
    text = "\n".join([line("example.com", RSA), line("*", OTHER, "@revoked"), line("example.com"),
                      line("other.example", _blob("ecdsa-sha2-nistp256", b"x"))])
    assert known_hosts.known_types(known_hosts.parse(text), "example.com") == ["ssh-rsa", "ssh-ed25519"]


# -- agreeing with OpenSSH itself


@needs_keygen
def test_fingerprint_as_ssh_keygen_prints_it(tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    blob = base64.b64decode((tmp_path / "k.pub").read_text().split()[1])
    printed = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True,
                             text=True, check=True).stdout.split()[1]
    assert known_hosts.fingerprint(blob) == printed


@needs_keygen
@pytest.mark.parametrize("hashed", [False, True])
def test_ssh_keygen_finds_what_we_write(tmp_path: Path, hashed: bool) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    blob = base64.b64decode((tmp_path / "k.pub").read_text().split()[1])
    path = tmp_path / "known_hosts"
    assert known_hosts.add(str(path), "[Host.Example]:2222", blob, hashed).status is Status.KNOWN
    found = subprocess.run(["ssh-keygen", "-F", "[host.example]:2222", "-f", str(path)],
                           capture_output=True, text=True)
    assert found.returncode == 0 and base64.b64encode(blob).decode() in found.stdout


@needs_keygen
def test_we_match_what_ssh_keygen_hashes(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(line("[host.example]:2222") + "\n" + line("plain.example", OTHER) + "\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(path)], check=True, capture_output=True)
    assert "|1|" in path.read_text() and "example" not in path.read_text()
    entries = known_hosts.read([str(path)])
    assert known_hosts.check(entries, "[host.example]:2222", KEY).status is Status.KNOWN
    assert known_hosts.check(entries, "plain.example", KEY).status is Status.CHANGED
    assert known_hosts.check(entries, "host.example", KEY).status is Status.UNKNOWN


# -- writing: once, appended, never corrupting what is there


def test_add_appends_once_and_keeps_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    before = "# mine\n@cert-authority *.example.com ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7\n" + line("a")
    path.write_text(before)  # no newline at its end
    mode = path.stat().st_mode
    first = known_hosts.add(str(path), "[Example.com]:2222", KEY)
    assert first.status is Status.KNOWN and first.entry and first.entry.where == f"{path}:4"
    again = known_hosts.add(str(path), "[example.com]:2222", KEY)
    assert again.status is Status.KNOWN and again.entry and again.entry.line == 4
    assert path.read_text() == before + "\n" + line("[example.com]:2222") + "\n"
    assert path.stat().st_mode == mode


def test_add_refuses_to_write_beside_another_key(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(line("example.com", OTHER) + "\n" + line("*", KEY, "@revoked") + "\n")
    before = path.read_text()
    assert known_hosts.add(str(path), "example.com", KEY).status is Status.REVOKED
    assert known_hosts.add(str(path), "other.example", OTHER).status is Status.KNOWN
    assert path.read_text() == before + line("other.example", OTHER) + "\n"


def test_add_creates_a_private_file_and_directory(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".ssh" / "known_hosts"
    known_hosts.add(str(path), "example.com", KEY)
    assert path.read_text() == line("example.com") + "\n"
    assert path.stat().st_mode & 0o077 == 0 and path.parent.stat().st_mode & 0o077 == 0


def test_add_does_not_write_to_dev_null() -> None:
    assert known_hosts.add("/dev/null", "example.com", KEY).status is Status.UNKNOWN


def test_threads_adding_the_same_key_at_once_write_it_once(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    start = threading.Barrier(8)

    def add() -> None:
        start.wait()
        known_hosts.add(str(path), "[example.com]:2222", KEY, hashed=True)

    threads = [threading.Thread(target=add) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("|1|")


def _add_in_a_process(path: str, start) -> None:
    start.wait()
    known_hosts.add(path, "example.com", KEY)


def test_processes_adding_the_same_key_at_once_write_it_once(tmp_path: Path) -> None:
    path = str(tmp_path / "known_hosts")
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)
    processes = [context.Process(target=_add_in_a_process, args=(path, start)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert Path(path).read_text() == line("example.com") + "\n"
