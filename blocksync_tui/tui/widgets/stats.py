"""Provides StatsPanel, the numbers beside the block map (bytes, throughput, elapsed), and
RunProgress, the line above it: a bar, the bytes compared of the total, the ETA."""

from __future__ import annotations

from collections import deque

from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline, Static

from blocksync_tui.engine.chunkmap import State
from blocksync_tui.engine.report import Progress
from blocksync_tui.engine.units import format_duration, human_bytes, human_rate

_HISTORY = 60
"""Throughput samples kept for the sparkline."""


class StatsPanel(Vertical):
    """Live figures of a run, updated from engine `Progress` snapshots."""

    def __init__(self, source: str, destination: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.destination = destination
        self.rates: deque[float] = deque([0.0], maxlen=_HISTORY)
        """Recent scan throughput samples, bytes per second."""
        self._last: tuple[float, int] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="stats-table")
        yield Label("throughput", classes="stats-caption")
        yield Sparkline(list(self.rates), id="throughput")

    def show(self, progress: Progress) -> None:
        """Show one snapshot; the throughput sample is taken between two snapshots."""
        if self._last is not None:
            then, scanned = self._last
            dt = progress.elapsed - then
            if dt >= 0.2:
                self.rates.append(max(0.0, (progress.scanned - scanned) / dt))
                self._last = (progress.elapsed, progress.scanned)
                self.query_one(Sparkline).data = list(self.rates)
        else:
            self._last = (progress.elapsed, progress.scanned)
        self.progress = progress
        """The snapshot shown."""
        self.query_one("#stats-table", Static).update(self.table(progress))

    def table(self, p: Progress) -> Table:
        """The figures as a two-column table."""
        counts = p.counts
        table = Table.grid(padding=(0, 1))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        rows = [
            ("Mode", ("dry run (writes nothing)" if p.dry_run else "sync")
             + (", bytes compared on one host" if p.method == "direct" else "")
             + (", the destination's digests from its cache" if p.method == "cache" else "")),
            ("Phase", p.phase + (", paused" if p.paused else "")),
            ("Size", f"{human_bytes(p.size)} in {p.total_chunks:,} chunks of {human_bytes(p.chunk_size)}"),
            ("Scanned src", f"{human_bytes(p.scanned_source)}  {100 * _frac(p.scanned_source, p.size):.0f}%"),
            ("Scanned dst", f"{human_bytes(p.scanned_destination)}  {100 * _frac(p.scanned_destination, p.size):.0f}%"),
            ("Differing", f"{p.differing:,} chunks, "
                          f"{human_bytes(p.bytes_differing)}"),
        ]
        if not p.dry_run:
            rows.append(("Written", f"{counts[State.WRITTEN]:,} chunks"))
            if p.method == "direct":
                rows.append(("Copied", f"{human_bytes(p.bytes_sent)} on the host"))
            else:
                rows.append(("Sent", human_bytes(p.bytes_sent)))
        rows += [
            ("On the wire", human_bytes(p.wire_bytes)),
            ("Throughput", f"{human_rate(self.rates[-1])} now, {human_rate(p.rate)} average"),
            ("Elapsed", format_duration(p.elapsed)),
            ("Source", self.source),  # last: the title names both ends too
            ("Destination", self.destination),
        ]
        if counts[State.ERROR]:
            rows.append(("Errors", Text(f"{counts[State.ERROR]:,} chunks", style="red")))
        for name, value in rows:  # as text: paths are the user's, never markup
            table.add_row(name, value if isinstance(value, Text) else Text(value))
        return table


def _frac(part: int, whole: int) -> float:
    return 1.0 if whole == 0 else min(1.0, part / whole)


class RunProgress(Static):
    """One line: a bar, the bytes compared of the total and the ETA, always in view."""

    DEFAULT_CSS = """
    RunProgress {
        height: 1;
        padding: 0 1;
    }
    """

    def show(self, p: Progress, cancelling: bool = False) -> None:
        """Show one snapshot (`cancelling` once a cancel was asked for)."""
        if cancelling:
            eta = "cancelling"
        elif p.paused:
            eta = "paused"
        elif p.phase in ("connecting", "scanning"):
            eta = f"ETA {format_duration(p.eta)}"
        else:
            eta = p.phase  # flushing, verifying, done...
        text = Text(f" {human_bytes(p.scanned)} of {human_bytes(p.size)} compared"
                    f"  {100 * p.fraction:.0f}%  {eta}", no_wrap=True, overflow="ellipsis")
        line = Table.grid(expand=True)
        line.add_column(ratio=1, min_width=10)
        line.add_column(no_wrap=True)
        line.add_row(ProgressBar(total=max(1, p.size), completed=min(p.scanned, p.size)), text)
        self.text = text.plain.strip()
        """The words beside the bar, as shown last."""
        self.update(line)
