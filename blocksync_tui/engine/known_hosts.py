"""Provides a known_hosts reader and writer that decides about host keys as OpenSSH does.

paramiko's HostKeys is not used: one line it cannot parse makes it fail for the whole file (an
`@cert-authority` line ends every connection with "Incorrect padding"), and it knows neither
`@revoked`, nor wildcards and negations, nor OpenSSH's rule that a host listed with another key
has a CHANGED key. The format is the one in sshd(8), SSH_KNOWN_HOSTS FILE FORMAT.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import os
import re
import stat
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

SSH_PORT = 22
HASH_MAGIC = "|1|"
"""How a hashed host field starts: |1|base64(salt)|base64(HMAC-SHA1(salt, name))."""
REVOKED = "@revoked"
CERT_AUTHORITY = "@cert-authority"


class Status(Enum):
    """What known_hosts says about a host's key."""

    KNOWN = "known"
    UNKNOWN = "unknown"
    CHANGED = "changed"
    """The host is listed, but with other keys (of any type, as OpenSSH decides)."""
    REVOKED = "revoked"


@dataclass(frozen=True)
class Entry:
    """One usable line of a known_hosts file."""

    path: str
    line: int
    marker: str
    """"", REVOKED or CERT_AUTHORITY."""
    hosts: str
    """The host field as written: patterns separated by commas, or one hashed name."""
    key: bytes
    """The public key blob (the base64 field, decoded)."""

    @property
    def key_type(self) -> str:
        """The key's algorithm name, from the blob (e.g. "ssh-ed25519")."""
        return key_type(self.key)

    @property
    def where(self) -> str:
        """"FILE:LINE", for messages that tell a user which line to look at."""
        return f"{self.path}:{self.line}"

    def matches(self, name: str) -> bool:
        """True if this line is about `name` ("host" or "[host]:port")."""
        return match_hosts(name, self.hosts)


@dataclass(frozen=True)
class Verdict:
    """The answer for one key: its status, and the line that decided it (if any)."""

    status: Status
    entry: Entry | None = None


# -- names, keys, fingerprints


def host_name(host: str, port: int) -> str:
    """The name known_hosts lists a host under: "host", or "[host]:port" off port 22."""
    host = host.lower()
    return host if port == SSH_PORT else f"[{host}]:{port}"


def key_type(blob: bytes) -> str:
    """The algorithm name an SSH public key blob starts with; "" if the blob is malformed."""
    if len(blob) < 4:
        return ""
    (length,) = struct.unpack(">I", blob[:4])
    if length > len(blob) - 4:
        return ""
    return blob[4 : 4 + length].decode("ascii", errors="replace")


def fingerprint(blob: bytes) -> str:
    """The key's fingerprint as OpenSSH prints it: "SHA256:" and unpadded base64."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


# -- matching


def match_pattern(name: str, pattern: str) -> bool:
    """OpenSSH's wildcard match: `*` any run of characters, `?` one; everything else literal
    (`[` and `]` too, which fnmatch would read as a class), case-insensitively."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.IGNORECASE | re.DOTALL) is not None


def _hashed_match(name: str, field: str) -> bool:
    parts = field[len(HASH_MAGIC) :].split("|")
    if len(parts) != 2:
        return False
    try:
        salt, expected = (base64.b64decode(part, validate=True) for part in parts)
    except (binascii.Error, ValueError):
        return False
    actual = hmac.new(salt, name.lower().encode(), hashlib.sha1).digest()
    return hmac.compare_digest(actual, expected)


def match_hosts(name: str, field: str) -> bool:
    """True if a host field lists `name`.

    A hashed field matches only its own name. Otherwise the field is a comma list of patterns:
    a negated pattern (`!pattern`) that matches rules the line out, whatever else matches.
    """
    if field.startswith(HASH_MAGIC):
        return _hashed_match(name, field)
    found = False
    for pattern in field.split(","):
        if pattern.startswith("!"):
            if match_pattern(name, pattern[1:]):
                return False
        elif pattern and match_pattern(name, pattern):
            found = True
    return found


# -- reading


def parse_line(text: str, path: str = "", number: int = 0) -> Entry | None:
    """One line as an Entry; None for comments, blank lines and lines OpenSSH would skip."""
    fields = text.split()
    if not fields or fields[0].startswith("#"):
        return None
    marker = ""
    if fields[0].startswith("@"):
        marker, fields = fields[0], fields[1:]
        if marker not in (REVOKED, CERT_AUTHORITY):
            return None
    if len(fields) < 3:
        return None
    hosts, type_name, encoded = fields[:3]
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    if key_type(blob) != type_name:
        return None  # a truncated or mislabelled key: OpenSSH skips it too
    return Entry(path, number, marker, hosts, blob)


def parse(text: str, path: str = "") -> list[Entry]:
    """Every usable line of a known_hosts text."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = parse_line(line, path, number)
        if entry is not None:
            entries.append(entry)
    return entries


def read(paths: Iterable[str]) -> list[Entry]:
    """The entries of several files, in order; a missing or unreadable file lists nothing."""
    entries: list[Entry] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                entries.extend(parse(f.read(), path))
        except OSError:
            continue
    return entries


# -- deciding


def check(entries: Sequence[Entry], name: str, key: bytes) -> Verdict:
    """What `entries` say about `key` for `name`, as OpenSSH's check_key_in_hostkeys decides.

    A matching `@revoked` line wins over everything. Otherwise the key is KNOWN if any line for
    the name lists it, CHANGED if lines for the name list only other keys (of any type), and
    UNKNOWN if no line is about the name. `@cert-authority` lines are ignored (no host
    certificates are negotiated).
    """
    listed = [e for e in entries if e.marker != CERT_AUTHORITY and e.matches(name)]
    for entry in listed:
        if entry.marker == REVOKED and entry.key == key:
            return Verdict(Status.REVOKED, entry)
    plain = [e for e in listed if not e.marker]
    for entry in plain:
        if entry.key == key:
            return Verdict(Status.KNOWN, entry)
    if plain:
        same_type = [e for e in plain if e.key_type == key_type(key)]
        return Verdict(Status.CHANGED, (same_type or plain)[0])
    return Verdict(Status.UNKNOWN)


def lookup(
    entries: Sequence[Entry], name: str, key: bytes, bare_name: str | None = None
) -> Verdict:
    """`check`, then, for a host on another port that is not listed, its bare name.

    OpenSSH does the same ("checking without port identifier"): a key listed under "host" is
    accepted for "[host]:port". Only a match counts there; a revoked key is refused too.
    """
    verdict = check(entries, name, key)
    if verdict.status is Status.UNKNOWN and bare_name and bare_name != name:
        fallback = check(entries, bare_name, key)
        if fallback.status in (Status.KNOWN, Status.REVOKED):
            return fallback
    return verdict


def known_types(entries: Sequence[Entry], name: str) -> list[str]:
    """The key types listed for `name`, in file order: ask the server for these first."""
    types = [e.key_type for e in entries if not e.marker and e.matches(name)]
    return list(dict.fromkeys(types))


# -- writing


def format_line(name: str, key: bytes, hashed: bool = False, salt: bytes | None = None) -> str:
    """A known_hosts line for `name` (lower-cased, as OpenSSH writes it), hashed on request."""
    name = name.lower()
    if hashed:
        salt = salt if salt is not None else os.urandom(20)
        digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        name = f"{HASH_MAGIC}{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    return f"{name} {key_type(key)} {base64.b64encode(key).decode()}\n"


def add(path: str, name: str, key: bytes, hashed: bool = False) -> Verdict:
    """Append `key` for `name` to `path`, unless the file already lists it; returns what the
    file says afterwards (KNOWN once written).

    The file is locked (flock: POSIX record locks would not keep two threads of one process
    apart) and read again under the lock, so two workers that meet the same new host at once
    write its key once. The line is one O_APPEND write: existing content is never rewritten.
    A file that now lists another key, or revokes this one, is left alone (CHANGED, REVOKED).
    A path that is not a regular file (/dev/null) is not written: UNKNOWN.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return Verdict(Status.UNKNOWN)
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        content = _read_all(fd)
        verdict = check(parse(content.decode("utf-8", errors="replace"), path), name, key)
        if verdict.status is not Status.UNKNOWN:
            return verdict
        line = format_line(name, key, hashed)
        if content and not content.endswith(b"\n"):
            line = "\n" + line  # never glue our line onto an unterminated last one
        _write_all(fd, line.encode())
        number = content.count(b"\n") + 1 + (line.startswith("\n"))
        return Verdict(Status.KNOWN, parse_line(line, path, number))
    finally:
        os.close(fd)  # releases the lock


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
