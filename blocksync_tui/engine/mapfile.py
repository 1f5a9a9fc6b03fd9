"""Provides ddrescue_map: a run's chunk states as a GNU ddrescue mapfile.

ddrescue's mapfile is the plain, documented format of its field: comment lines, one status line
(current position, status, pass), then `pos size status` lines in hex that cover the device in
order. ddrescueview draws it and ddrescuelog reads it, so a compare's result can be inspected
with them. A mapfile's statuses describe a rescue; ours are mapped so that the tools' views
mean what a user of this one expects:

    +  finished       the chunk is equal (same, zero or hole), or was written (written, updated)
    -  bad sector     the chunk differs, or failed (differs, error): `ddrescuelog -l-` lists them
    ?  non-tried      the chunk was not compared (pending: a cancelled or failed run)
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from blocksync_tui.engine.chunkmap import STATE_NAMES, ChunkView, State

STATUS = {
    State.PENDING: "?",
    State.SAME: "+",
    State.ZERO: "+",
    State.HOLE: "+",
    State.WRITTEN: "+",
    State.UPDATED: "+",
    State.DIFFERS: "-",
    State.ERROR: "-",
}


def ddrescue_map(chunk_map: ChunkView, chunk_size: int, size: int, tool: str = "blocksync-tui") -> str:
    """The mapfile text: runs of one status merged, the last one cut at the device's size."""
    return map_text(chunk_map.snapshot(), chunk_size, size, [f"# Mapfile. Created by {tool}"])


_RUNS = re.compile(b"(.)\\1*", re.DOTALL)


def map_text(states: bytes, chunk_size: int, size: int, header: list[str], exact: bool = False) -> str:
    """A mapfile of chunk states under `header` (comment lines). With `exact`, a `+` line of
    chunks that are not merely equal (zero, written...) follows a STATE_NOTE saying which."""
    lines = [
        *header,
        "# + equal or written, - differing or failed, ? not compared",
        "# current_pos  current_status  current_pass",
        "0x00000000     +               1",
        "#      pos        size  status",
    ]
    start = 0
    status = ""
    note = ""
    for run in _RUNS.finditer(states):
        state = State(run.group()[0])
        mark = STATUS[state]
        kind = STATE_NAMES[state] if exact and mark == "+" and state != State.SAME else ""
        if (mark, kind) != (status, note):
            if status:
                lines.extend(_lines(start, run.start() * chunk_size - start, status, note))
            start, status, note = run.start() * chunk_size, mark, kind
    if status and size > start:
        lines.extend(_lines(start, size - start, status, note))
    return "\n".join(lines) + "\n"


def _lines(pos: int, size: int, status: str, note: str) -> list[str]:
    return ([STATE_NOTE + note] if note else []) + [_line(pos, size, status)]


def _line(pos: int, size: int, status: str) -> str:
    return f"0x{pos:08X}  0x{size:08X}  {status}"


# -- reading: a state file of ours, or a list of changes from ddrescuelog or another tool

MAP_STATUSES = "?*/-+"
"""The statuses of a mapfile's data lines (ddrescue: non-tried, non-trimmed, non-scraped,
bad sector, finished)."""
_CURRENT_STATUSES = "?*/-FGD+"
"""The statuses its first line (current position, status, pass) may give."""
MAX_LINE = 4096
MAX_HEADER_LINES = 256
STATE_NOTE = "# state "
"""Our own comment before a `+` line whose chunks are not merely equal: "# state zero",
"# state written". Other tools ignore it (a comment); a resume reads it back."""
_NUMBER = re.compile(r"(0x[0-9a-fA-F]+|[0-9]+)\Z")


class MapError(ValueError):
    """A mapfile that cannot be read: the message is one line, naming the line."""


def map_states(lines: Iterable[str], chunk_size: int, size: int, max_lines: int) -> tuple[list[str], bytes]:
    """The header comments of a mapfile and one State per chunk of a device of `size` bytes:
    a chunk wholly inside `+` lines is settled (SAME, or the state a STATE_NOTE gives), any
    other (a byte of it `?`, `*`, `/`, `-`, or not in the map at all) is PENDING.

    Lines must be in ascending order and must not overlap, as ddrescue writes them; anything
    else raises MapError, for the first line that is wrong.
    """
    total = -(-size // chunk_size)
    states = bytearray(total)
    comments: list[str] = []
    names = {name: state for state, name in STATE_NAMES.items()}
    seen_data = seen_status = False
    note = State.SAME
    end_of_last = 0
    run_end = -1  # end of the run of `+` lines being filled

    def close_run() -> None:
        if 0 <= run_end < size and run_end % chunk_size:
            states[run_end // chunk_size] = State.PENDING  # a chunk only partly finished

    for number, line in enumerate(lines, 1):
        if number > max_lines:
            raise MapError(f"more than {max_lines:,} lines")
        if len(line) > MAX_LINE:
            raise MapError(f"line {number} is longer than {MAX_LINE} characters")
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            if text.startswith(STATE_NOTE.strip()) and text[len(STATE_NOTE):].strip() in names:
                note = names[text[len(STATE_NOTE):].strip()]
            elif not seen_data and len(comments) < MAX_HEADER_LINES:
                comments.append(text)
            continue
        fields = text.split()
        if not seen_status and not seen_data and 2 <= len(fields) <= 3 and fields[1] in _CURRENT_STATUSES:
            seen_status = True  # current_pos current_status [current_pass]
            continue
        if len(fields) != 3 or not _NUMBER.match(fields[0]) or not _NUMBER.match(fields[1]):
            raise MapError(f"line {number} is not 'pos size status': {text[:60]!r}")
        pos, length, status = int(fields[0], 0), int(fields[1], 0), fields[2]
        if status not in MAP_STATUSES:
            raise MapError(f"line {number}: unknown status {status[:8]!r} (ddrescue's are {MAP_STATUSES})")
        if pos < end_of_last:
            raise MapError(f"line {number}: position {pos:#x} overlaps or precedes the line before")
        seen_data = True
        end_of_last = pos + length
        state, note = note, State.SAME
        if status != "+" or not length or pos >= size:
            continue
        if pos != run_end:
            close_run()
        run_end = pos + length
        low, high = -(-pos // chunk_size), min(total, -(-(pos + length) // chunk_size))
        if high > low:
            states[low:high] = bytes([state]) * (high - low)
    close_run()
    return comments, bytes(states)
