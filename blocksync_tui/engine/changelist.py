"""Provides load: a list of the ranges known to have changed (`--changed-from FILE`) as a Prior.

Two formats, told apart by their first character:
- a GNU ddrescue mapfile (`pos size status` lines, as ddrescuelog writes them): `+` means
  unchanged; `?`, `*`, `/` and `-` mean changed, and so does any byte the map does not cover;
- the XML of thin_delta (thin-provisioning-tools), the difference between two thin snapshots:
  `<different>`, `<left_only>` and `<right_only>` are changed; `<same>` and every block it
  does not list (unmapped in both snapshots, so zeros in both) are unchanged. Its `begin` and
  `length` count data blocks of the pool, whose size the `<superblock data_block_size=...>`
  gives in 512-byte sectors. Both the plain and the `--verbose` form (`<range>` inside each).

The file is read as a stream, within bounds, and trusted in nothing: a line or an element that
does not fit is one error line (UsageError), before anything is compared.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from blocksync_tui.engine.chunkmap import State
from blocksync_tui.engine.errors import UsageError
from blocksync_tui.engine.mapfile import MapError, map_states
from blocksync_tui.engine.prior import Prior

MAX_BYTES = 1 << 30
"""A list longer than this is refused: a sector-exact map of a huge device is far smaller."""
MAX_LINES = 20_000_000
MAX_ELEMENTS = 20_000_000
READ_SIZE = 1 << 20
SECTOR = 512
MAX_BLOCK_SECTORS = 1 << 21
"""dm-thin's largest data block: 1 GiB."""
CHANGED = ("different", "left_only", "right_only")
UNCHANGED = ("same",)


def load(path: str, chunk_size: int, size: int) -> Prior:
    """The prior a list of changes gives a device of `size` bytes in chunks of `chunk_size`.

    Raises:
        UsageError: the file cannot be read, is too large, or does not parse (one line).
    """
    where = f"--changed-from {path}"
    try:
        with open(path, "rb") as f:
            if Path(path).is_file() and Path(path).stat().st_size > MAX_BYTES:
                raise UsageError(f"{where}: larger than {MAX_BYTES >> 20} MiB")
            head = f.read(READ_SIZE)
            start = head.lstrip()[:1]
            if start == b"<":
                states = _thin_delta(head, f, chunk_size, size)
            else:
                states = _mapfile(head, f, chunk_size, size)
    except OSError as exc:
        raise UsageError(f"{where}: {exc.strerror or exc}") from None
    except (MapError, ValueError) as exc:
        raise UsageError(f"{where}: {exc}") from None
    return Prior(states, chunk_size, "list")


def _mapfile(head: bytes, f, chunk_size: int, size: int) -> bytes:
    def lines():
        rest = head
        while True:
            more = f.read(READ_SIZE)
            if len(rest) + len(more) > MAX_BYTES:
                raise MapError(f"larger than {MAX_BYTES >> 20} MiB")
            rest += more
            *done, rest = rest.split(b"\n")
            for line in done:
                yield line.decode("utf-8", "replace")
            if not more:
                if rest:
                    yield rest.decode("utf-8", "replace")
                return

    _, states = map_states(lines(), chunk_size, size, MAX_LINES)
    return states


def _thin_delta(head: bytes, f, chunk_size: int, size: int) -> bytes:
    """Chunk states from thin_delta's XML: SAME everywhere but where a change touches."""
    total = -(-size // chunk_size)
    states = bytearray([State.SAME]) * total
    parser = ET.XMLPullParser(events=("start", "end"))
    block = 0
    path: list[str] = []
    elements = 0
    read = 0
    tail = b""
    chunk = head
    while True:
        read += len(chunk)
        if read > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES >> 20} MiB")
        if b"<!" in tail + chunk:  # no DOCTYPE, no ENTITY: no entity expansion at all
            raise ValueError("it declares a DOCTYPE or entities, which thin_delta never writes")
        tail = chunk[-1:]
        try:
            parser.feed(chunk) if chunk else parser.close()
            for event, element in parser.read_events():
                if event == "end":
                    path.pop()
                    element.clear()
                    continue
                elements += 1
                if elements > MAX_ELEMENTS:
                    raise ValueError(f"more than {MAX_ELEMENTS:,} elements")
                block = _element(element, path, block, states, chunk_size, size)
                path.append(element.tag)
        except ET.ParseError as exc:
            raise ValueError(f"not valid XML ({exc})") from None
        if not chunk:
            break
        chunk = f.read(READ_SIZE)
    if not block:
        raise ValueError("no <superblock data_block_size=...>: not thin_delta's output")
    return bytes(states)


def _element(element: ET.Element, path: list[str], block: int, states: bytearray, chunk_size: int, size: int) -> int:
    """Apply one opening element; returns the data block size in bytes (once the superblock
    said it)."""
    tag = element.tag
    if not path:
        if tag != "superblock":
            raise ValueError(f"its root is <{tag[:40]}>, not thin_delta's <superblock>")
        sectors = _number(element, "data_block_size")
        if not 1 <= sectors <= MAX_BLOCK_SECTORS:
            raise ValueError(f"data_block_size {sectors} is not a thin pool's")
        return sectors * SECTOR
    if path == ["superblock"]:
        if tag != "diff":
            raise ValueError(f"<{tag[:40]}> where thin_delta writes <diff>")
        return block
    kind = tag if len(path) == 2 else path[-1] if tag == "range" and len(path) == 3 else ""
    if kind not in CHANGED + UNCHANGED:
        raise ValueError(f"unknown element <{tag[:40]}> in <{path[-1]}>")
    if tag == kind and len(element.attrib) == 0:
        return block  # the verbose form: the ranges inside carry the numbers
    begin, length = _number(element, "begin"), _number(element, "length")
    start, end = begin * block, (begin + length) * block
    if end > -(-size // block) * block:
        raise ValueError(f"<{kind} begin={begin} length={length}> reaches past the end of the "
                         f"{size:,}-byte device (blocks of {block:,} bytes)")
    if kind in CHANGED and length:
        low, high = start // chunk_size, -(-min(end, size) // chunk_size)
        states[low:high] = bytes(high - low)  # PENDING: suspect
    return block


def _number(element: ET.Element, name: str) -> int:
    value = element.get(name)
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
        raise ValueError(f"<{element.tag[:40]}> has no valid {name} ({(value or '')[:20]!r})")
    return int(value)
