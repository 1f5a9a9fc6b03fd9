"""Provides ReviewScreen: what a run found: figures, the map, the runs of changes, exports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, Static

from blocksync_tui.engine.api import Engine
from blocksync_tui.engine.chunkmap import State
from blocksync_tui.engine.mapfile import ddrescue_map
from blocksync_tui.engine.owners import Owner, Owners, owners_after
from blocksync_tui.engine.regions import report_layout
from blocksync_tui.engine.report import Report
from blocksync_tui.engine.transports import transport_factory
from blocksync_tui.engine.units import format_duration, human_bytes, human_rate
from blocksync_tui.tui.map_svg import map_svg
from blocksync_tui.tui.messages import SyncRequested
from blocksync_tui.tui.request import RunRequest
from blocksync_tui.tui.screens.dialogs import YesNoScreen
from blocksync_tui.tui.widgets.block_map import BlockMap
from blocksync_tui.tui.widgets.block_map_legend import BlockMapLegend
from blocksync_tui.tui.widgets.owners_panel import OwnersPanel

_TITLES = {
    "identical": "Identical: nothing to do",
    "differs": "Dry run: the destination differs",
    "synced": "Synced",
    "failed": "Failed",
    "cancelled": "Cancelled",
}


def partition_table(report: Report) -> Table:
    """The differing bytes of each partition and unpartitioned gap, in device order."""
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(no_wrap=True, style="bold")
    table.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column(no_wrap=True, justify="right", min_width=9)
    for row in report.partitions:
        what = f"{row['fs']} '{row['label']}'" if row["label"] else row["fs"] or row["type"]
        size = human_bytes(row["length"])
        differing = human_bytes(row["bytes_differing"]) if row["bytes_differing"] else "–"
        table.add_row(Text(row["region"]), Text(f"{what}, {size}" if what else size), Text(differing))
    return table


class ReviewScreen(Screen[None]):
    """The result of a dry run (then: sync it) or of a sync."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "sync", "Sync…", id="review-sync", tooltip="Write what differs (asks first)"),
        Binding("ctrl+e", "export", "Export", id="export", tooltip="Save the report (JSON), the map (SVG) and a ddrescue mapfile"),
        Binding("escape", "back", "Back", id="back", tooltip="Back to the setup screen"),
        Binding("o", "owners_side", "Other side", id="owners-side",
                tooltip="List the owners of the differing bytes on the other side"),
    ]

    OWNERS_TIMEOUT = 60.0
    """Seconds the owners lookup of one side may take."""

    @dataclass
    class OwnersFound(Message):
        """The background lookup of one side's owners ended (maybe saying why there are none)."""

        owners: Owners

    def __init__(self, engine: Engine, report: Report, request: RunRequest) -> None:
        super().__init__()
        self.engine = engine
        self.report = report
        self.request = request
        self.owners: dict[str, Owners] = {}
        """The owners found so far, by side."""
        self.owners_side = "source"
        """The side whose owners are listed."""
        self.exported = False
        """True once exported: leaving then loses nothing."""

    def compose(self) -> ComposeResult:
        report = self.report
        yield Static(_TITLES.get(report.outcome, report.outcome), id="review-title",
                     classes=f"outcome-{report.outcome}")
        with Horizontal(id="review-body"):
            with Vertical(id="map-column"):
                yield BlockMap(self.engine.chunk_map, report.chunk_size, report.size, id="block-map",
                               disk_layout=report_layout(self.engine.destination_layout, self.engine.source_layout))
                yield BlockMapLegend("#block-map")
                yield Static("Select a run to zoom to it; 0 shows the whole device.", id="cell-info")
            with VerticalScroll(id="review-side"):
                yield Static(self.summary(), id="summary")
                if report.partitions:
                    yield Label("Differing by partition", classes="section-title")
                    yield Static(partition_table(report), id="partitions")
                yield Label(f"Runs of changes, largest first ({report.change_runs:,} in all)",
                            classes="section-title")
                table: DataTable[str] = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
                table.add_columns("offset", "length", "chunks")
                for run in report.largest_runs[:200]:
                    table.add_row(f"{run['offset']:#x}", human_bytes(run["length"]), f"{run['chunks']:,}",
                                  key=str(run["first_chunk"]))
                yield table
                yield Static("", id="run-owners")
                yield OwnersPanel(id="owners")
        with Horizontal(id="actions"):
            yield Button("Sync…", id="sync", variant="error", disabled=not self.can_sync)
            yield Label("Export to", classes="export-label")
            yield Input("blocksync-report", id="export-prefix")
            yield Button("Export JSON, SVG, map", id="export")
            yield Button("Back", id="back")
        yield Footer(compact=True)

    def summary(self) -> Table:
        """The key figures of the report."""
        r = self.report
        table = Table.grid(padding=(0, 1))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        largest = r.largest_runs[0] if r.largest_runs else None
        rows = [
            ("Source", r.source),
            ("Destination", r.destination),
            ("Size", f"{human_bytes(r.size)}, {r.total_chunks:,} chunks of {human_bytes(r.chunk_size)}"),
            ("Differing", f"{r.chunks_differing:,} chunks ({100 * r.chunks_differing / max(1, r.total_chunks):.2f}%)"),
            ("Bytes differing", f"{human_bytes(r.bytes_differing)} (at {human_bytes(r.sub_block_size)} granularity)"),
            ("Change runs", f"{r.change_runs:,}" + (f", largest {human_bytes(largest['length'])} at {largest['offset']:#x}" if largest else "")),
            ("Unchanged", f"{r.chunks.get('same', 0):,} chunks, {r.chunks.get('zero', 0):,} all-zero, {r.chunks.get('hole', 0):,} holes"),
        ]
        if r.size_difference:
            longer = "longer" if r.size_difference > 0 else "shorter"
            fix = "truncated" if r.size_difference > 0 else "grown"
            verb = "was" if r.mode == "sync" else "will be"
            rows.append(("Length", f"the destination is {human_bytes(abs(r.size_difference))} {longer} "
                         f"than the source ({r.destination_size:,} bytes): it {verb} {fix}"))
        if r.mode == "sync":
            moved = "copied on the host" if r.method == "direct" else "sent"
            rows.append(("Written", f"{r.chunks.get('written', 0):,} chunks, {human_bytes(r.bytes_sent)} {moved}"))
        if r.settled_by:
            checked = (f"{r.sample_differed:,} of a sample of {r.chunks_sampled:,} differed: every chunk was compared"
                       if r.sample_differed else f"a sample of {r.chunks_sampled:,} was read again, and matched")
            rows.append(("Known before", f"{r.chunks_settled:,} chunks settled by the {r.settled_by}, not read; {checked}"))
        if r.verified is not None:
            rows.append(("Verified", "yes, re-read from disk" if r.verified else Text("FAILED", style="red")))
        rows += [
            ("On the wire", human_bytes(r.wire_bytes)
             + (f", through {r.streams} lanes, each with its own connections" if r.streams > 1 else "")),
            ("Compared", "byte for byte, on one host"
             if r.method == "direct" else f"{r.algorithm} digests, compression {r.compression}"
             + (", the destination's from its digest cache (a sample of it read again)" if r.method == "cache" else "")),
            ("Time", (f"{r.seconds:.2f} s" if r.seconds < 60 else format_duration(r.seconds))
             + f" ({human_rate(r.size / max(r.seconds, 1e-9))})"),
        ]
        if r.message:
            rows.append(("Note", r.message))
        for error in r.errors[:5]:
            rows.append(("Error", Text(error, style="red")))
        for warning in r.warnings:
            rows.append(("Warning", warning))
        for name, value in rows:  # as text: paths and messages are the user's, never markup
            table.add_row(name, value if isinstance(value, Text) else Text(value))
        return table

    def on_mount(self) -> None:
        panels = self.query(OwnersPanel)
        if not panels:
            return  # the app quit as the review was being mounted: its widgets are gone
        panel = panels.first()
        if self.report.chunks_differing:  # once the panel's own widgets are there
            self.call_after_refresh(self._look_up, self.owners_side)
        else:
            panel.display = False

    # -- what the map lights: the owner selected in its list, else the run selected, else nothing

    _cursor_run: tuple[int, int] | None = None
    """The run under the runs' cursor: its owners are named under the list."""
    _lit_run: tuple[int, int] | None = None
    """The run the user chose (the runs had the focus): zoomed to and lit on the map."""
    _selected_owner: Owner | None = None

    @on(DataTable.RowHighlighted, "#runs")
    def _run_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._cursor_run = self._run(event.row_key.value)
        self._name_run_owners()
        if event.data_table.has_focus:  # the table's own first highlight, as it fills, lights nothing
            self._light_run()

    @on(events.DescendantFocus, "#runs")
    def _runs_focused(self, event: events.DescendantFocus) -> None:
        """The runs took the focus: the run under their cursor is the chosen one."""
        self._light_run()

    def _run(self, key: str | None) -> tuple[int, int] | None:
        if key is None:
            return None
        run = next(r for r in self.report.largest_runs if r["first_chunk"] == int(key))
        return run["first_chunk"], run["chunks"]  # the whole run, not its first cell

    def _light_run(self) -> None:
        if self._cursor_run is None:
            return
        self._lit_run = self._cursor_run
        self.query_one(BlockMap).zoom_to(*self._lit_run)
        self._light()

    def _light(self) -> None:
        if self._selected_owner is not None:
            spotlight = self._selected_owner.runs
        else:
            spotlight = (self._lit_run,) if self._lit_run else None
        self.query_one(BlockMap).set_spotlight(spotlight)

    def _name_run_owners(self) -> None:
        """Say, under the runs, what owns the run under their cursor (on the side listed)."""
        if self._cursor_run is None:
            return
        owners = self.owners.get(self.owners_side)
        line = self.query_one("#run-owners", Static)
        if owners is None or owners.unavailable:
            line.update("")
            return
        found = owners.of_run(*self._cursor_run)
        names = ", ".join(f"{o.label} ({human_bytes(o.bytes)})" for o in found[:4])
        more = f" and {len(found) - 4:,} more" if len(found) > 4 else ""
        line.update(Text(f"In this run: {names}{more}" if found else "In this run: nothing named"))

    # -- owners

    def _look_up(self, side: str) -> None:
        self.query_one(OwnersPanel).loading(side)
        self.find_owners(side)

    @work(thread=True, group="owners", exclusive=True, exit_on_error=False, description="Finding owners")
    def find_owners(self, side: str) -> None:
        """Ask that side's worker for the owners (blocking, bounded in time: in a thread)."""
        try:
            found = owners_after(self.engine, side, transport_factory(self.request.ssh),
                                 timeout=self.OWNERS_TIMEOUT)
        except Exception as exc:  # a row that says so, never a traceback over the screen
            found = Owners(side, unavailable=f"unexpected error: {type(exc).__name__}: {exc}")
        self.post_message(self.OwnersFound(found))

    @on(OwnersFound)
    def _owners_found(self, message: OwnersFound) -> None:
        owners = message.owners
        self.owners[owners.side] = owners
        self.report.owners = [self.owners[side].to_dict() for side in ("source", "destination")
                              if side in self.owners]
        if owners.side == self.owners_side:
            self.query_one(OwnersPanel).show(owners)
            self._name_run_owners()

    @on(OwnersPanel.Selected)
    def _owner_selected(self, message: OwnersPanel.Selected) -> None:
        """An owner chosen in its list lights its chunks; none (the list loading or left) gives
        the spotlight back to the selected run."""
        owner = self._selected_owner = message.owner
        self._light()
        if owner is not None:
            chunks = f"{owner.chunks:,} chunk" + ("s" if owner.chunks != 1 else "")
            self.query_one("#cell-info", Static).update(
                Text(f"{owner.label}: {human_bytes(owner.bytes)} differ in {chunks}, highlighted"))

    def action_owners_side(self) -> None:
        """List the owners on the other side (looked up the first time)."""
        if not self.report.chunks_differing:
            return
        self.owners_side = "destination" if self.owners_side == "source" else "source"
        if self.owners_side in self.owners:
            self.query_one(OwnersPanel).show(self.owners[self.owners_side])
            self._name_run_owners()
        else:
            self._look_up(self.owners_side)

    @on(BlockMap.CellHighlighted)
    def _cell(self, message: BlockMap.CellHighlighted) -> None:
        self.query_one("#cell-info", Static).update(message.description)

    # -- actions

    @property
    def can_sync(self) -> bool:
        """A dry run found differences, or a sync was cancelled or failed: its note says to
        run it again, so that is offered here."""
        r = self.report
        return (r.mode, r.outcome) in (("compare", "differs"), ("sync", "cancelled"), ("sync", "failed"))

    def action_sync(self) -> None:
        """Sync what the dry run found, or again after a cancel or a failure (the app confirms first)."""
        if self.can_sync:
            self.post_message(SyncRequested())

    def action_back(self) -> None:
        """Back to the setup screen, once the user agreed to leave an unexported review."""
        if self.exported:
            self.app.pop_screen()
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.app.pop_screen()

        self.app.push_screen(YesNoScreen(
            "Leave the review?",
            "Back to the setup screen: this review is not kept. Export it first (Ctrl+E) to "
            "keep its report and map.", yes="Leave it", no="Stay"), answer)

    def action_export(self) -> None:
        """Write the JSON report, an SVG of the map and a ddrescue mapfile next to the chosen prefix."""
        prefix = Path(self.query_one("#export-prefix", Input).value.strip() or "blocksync-report")
        r = self.report
        try:
            self.report.save(prefix.with_suffix(".json"))
            prefix.with_suffix(".svg").write_text(self.map_picture())
            prefix.with_suffix(".map").write_text(ddrescue_map(self.engine.chunk_map, r.chunk_size, r.size))
        except OSError as exc:
            self.notify(f"Cannot export: {exc.strerror}: {exc.filename}", severity="error", markup=False)
            return
        self.exported = True
        saved = ", ".join(str(prefix.with_suffix(s)) for s in (".json", ".svg", ".map"))
        self.notify(f"Saved {saved}", title="Exported", markup=False)

    def map_picture(self) -> str:
        """The map as SVG, in the colours the map shows now."""
        block_map = self.query_one(BlockMap)
        colors = {state: block_map.state_color(state).hex for state in State}
        r = self.report
        title = f"{r.source} → {r.destination}: {r.outcome}, {r.chunks_differing:,} chunks differ"
        return map_svg(self.engine.chunk_map.snapshot(), colors, title, r.chunk_size)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        actions = {"sync": self.action_sync, "export": self.action_export, "back": self.action_back}
        if event.button.id in actions:
            actions[event.button.id]()
