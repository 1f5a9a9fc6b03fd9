"""Provides ddrescue_map: a run's chunk states as a GNU ddrescue mapfile.

ddrescue's mapfile is the plain, documented format of its field: comment lines, one status line
(current position, status, pass), then `pos size status` lines in hex that cover the device in
order. ddrescueview draws it and ddrescuelog reads it, so a compare's result can be inspected
with them. A mapfile's statuses describe a rescue; ours are mapped so that the tools' views
mean what a user of this one expects:

    +  finished       the chunk is equal (same or zero), or was written (written, updated)
    -  bad sector     the chunk differs, or failed (differs, error): `ddrescuelog -l-` lists them
    ?  non-tried      the chunk was not compared (pending: a cancelled or failed run)
"""

from __future__ import annotations

from blocksync_tui.engine.chunkmap import ChunkView, State

STATUS = {
    State.PENDING: "?",
    State.SAME: "+",
    State.ZERO: "+",
    State.WRITTEN: "+",
    State.UPDATED: "+",
    State.DIFFERS: "-",
    State.ERROR: "-",
}


def ddrescue_map(chunk_map: ChunkView, chunk_size: int, size: int, tool: str = "blocksync-tui") -> str:
    """The mapfile text: runs of one status merged, the last one cut at the device's size."""
    states = chunk_map.snapshot()
    lines = [
        f"# Mapfile. Created by {tool}",
        "# + equal or written, - differing or failed, ? not compared",
        "# current_pos  current_status  current_pass",
        "0x00000000     +               1",
        "#      pos        size  status",
    ]
    start = 0
    status = ""
    for index, state in enumerate(states):
        mark = STATUS[State(state)]
        if mark != status:
            if status:
                lines.append(_line(start, index * chunk_size - start, status))
            start, status = index * chunk_size, mark
    if status and size > start:
        lines.append(_line(start, size - start, status))
    return "\n".join(lines) + "\n"


def _line(pos: int, size: int, status: str) -> str:
    return f"0x{pos:08X}  0x{size:08X}  {status}"
