"""Provides ProgressDisplay: the headless commands' progress bar and closing summary."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from blocksync_tui.engine.chunkmap import State
from blocksync_tui.engine.owners import FREE, UNATTRIBUTED, Owners
from blocksync_tui.engine.report import Progress as EngineProgress
from blocksync_tui.engine.report import Report
from blocksync_tui.engine.units import human_bytes, human_rate, rate

if TYPE_CHECKING:
    from rich.progress import TaskID


def _description(p: EngineProgress, cancelling: bool) -> str:
    if cancelling and p.phase not in ("done", "failed", "cancelled"):
        # The writes in flight are being completed; say how to stop without waiting for them.
        return "cancelling (^C again: stop now)"
    return p.phase + (" (paused)" if p.paused else "")


class ProgressDisplay:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._task: TaskID | None = None
        if not enabled:
            return  # rich takes 70 ms to import: not for the nightly job that shows nothing
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            transient=False,
            refresh_per_second=10,
        )

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            if self._task is not None:  # a run prepared again: one bar, not the old one too
                self._progress.remove_task(self._task)
            self._progress.start()
            self._task = self._progress.add_task("connecting", total=1, rate="", detail="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()

    def update(self, p: EngineProgress, cancelling: bool = False) -> None:
        """Show one engine snapshot; `cancelling` once a signal asked for a cancel."""
        if not self.enabled or self._task is None:
            return
        detail = f"{p.differing} chunks differ"
        if not p.dry_run:
            detail += f", {p.counts[State.WRITTEN]} written, {human_bytes(p.bytes_sent)} sent"
        self._progress.update(
            self._task,
            description=_description(p, cancelling),
            total=max(p.size, 1),
            completed=p.scanned,
            rate=human_rate(p.rate),
            detail=detail,
        )

    @staticmethod
    def summary(report: Report) -> str:
        """One line that says what happened."""
        speed = human_rate(rate(report.size, report.seconds))
        text = (
            f"{report.outcome}: {report.chunks_differing} of {report.total_chunks} chunks differ "
            f"({human_bytes(report.bytes_differing)} in {report.change_runs} runs); "
            f"{human_bytes(report.bytes_sent)} "
            + ("copied on the host" if report.method == "direct" else "sent")
            + f", {human_bytes(report.wire_bytes)} on the wire; "
            f"{human_bytes(report.size)} in {report.seconds:.2f} s ({speed})"
        )
        if report.size_difference:
            text += "; " + length_text(report)
        if "used" in report.cache:
            text += (f"; the destination's digest cache stood in for reading it "
                     f"({human_bytes(report.scanned_destination)} of it read)")
        if report.settled_by:
            text += (f"; {report.chunks_settled} chunks settled by the {report.settled_by}, not read "
                     f"({report.chunks_sampled} of them read again as a sample)")
        if report.verified is not None:
            text += "; verified" if report.verified else "; VERIFY FAILED"
        return text


def length_text(report: Report) -> str:
    """What a length difference between two files is, or became: a difference in itself."""
    amount = human_bytes(abs(report.size_difference))
    if report.mode == "compare" or report.outcome in ("failed", "cancelled"):
        return f"the destination is {amount} {'longer' if report.size_difference > 0 else 'shorter'}"
    return f"the destination was {'truncated' if report.size_difference > 0 else 'grown'} by {amount}"


OWNERS_SHOWN = 20
"""Owners listed after the summary; the JSON report holds up to a thousand."""


def owners_lines(owners: Owners, limit: int = OWNERS_SHOWN) -> list[str]:
    """The owners of one side's differing bytes, largest first, as `du` lists sizes."""
    where = f"owners of the differing bytes on the {owners.side}"
    if owners.unavailable:
        return [f"{where}: unavailable: {owners.unavailable}"]
    share = f"{100 * owners.fraction:.1f}%" if owners.bytes_total else "all"
    lines = [f"{where} ({human_bytes(owners.bytes_total)}, {share} attributed to files and "
             f"structures, {human_bytes(owners.bytes_of(FREE))} free space, "
             f"{human_bytes(owners.bytes_of(UNATTRIBUTED))} unattributed; {owners.seconds:.2f} s):"]
    for owner in owners.owners[:limit]:
        chunks = f"{owner.chunks:,} chunk" + ("s" if owner.chunks != 1 else "")
        lines.append(f"{human_bytes(owner.bytes):>11}  {owner.label}  [{owner.kind}, {chunks}]")
    if len(owners.owners) > limit:
        lines.append(f"{'':>11}  ... {len(owners.owners) - limit:,} more (all in --json)")
    lines += [f"{'':>11}  note: {note}" for note in owners.notes]
    return lines
