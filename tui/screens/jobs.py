"""Jobs: running and finished, with their progress, log and errors; cancel from here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Log, Static

from lamina.backend.service import JobView

from .. import formatting as fmt
from ..formatting import shown
from ..widgets.jobs import JobCard, plain_log, progress_cell, rate_text, shown_rate, state_text
from .base import Column, TableScreen


class JobsScreen(TableScreen[JobView]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "cancel", "Cancel job", id="jobs.cancel"),
    ]

    COLUMNS: ClassVar[list[Column[Any]]] = [
        Column("id", "JOB", lambda j: shown(j.id[:12])),
        Column("kind", "KIND", lambda j: shown(j.kind, style="bold"), lambda j: j.kind),
        Column(
            "what",
            "WHAT",
            lambda j: shown(fmt.printable(j.volume_key or j.point or j.description)[:40]),
            lambda j: j.description,
        ),
        Column("state", "STATE", lambda j: state_text(j.state), lambda j: j.state),
        Column("phase", "PHASE", lambda j: shown(j.phase or "-"), lambda j: j.phase),
        Column("progress", "PROGRESS", lambda j: progress_cell(j, 10), lambda j: j.fraction or 0.0),
        Column(
            "rate",
            "RATE",
            lambda j: Text(rate_text(j), justify="right"),
            lambda j: shown_rate(j) or 0.0,
        ),
        Column("read", "READ", lambda j: Text(fmt.size(j.read), justify="right"), lambda j: j.read),
        Column(
            "stored",
            "STORED",
            lambda j: Text(fmt.size(j.stored), justify="right"),
            lambda j: j.stored,
        ),
        Column(
            "elapsed",
            "ELAPSED",
            lambda j: Text(fmt.duration(j.elapsed), justify="right"),
            lambda j: j.elapsed,
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.shown_job: str | None = None
        self.shown_log = 0

    def crumbs(self) -> list[str]:
        return ["jobs"]

    def compose(self) -> Iterable[Any]:
        yield self.compose_top()
        yield from self.compose_table()
        with Vertical(id="job-detail"):
            yield JobCard(id="job-card")
            yield Log(id="job-log", auto_scroll=True)
        yield Static(
            Text("No jobs yet: back up a volume with b on the volumes screen.", style="dim"),
            id="empty",
            classes="empty-note",
        )
        yield from self.compose_bottom()

    def on_mount(self) -> None:
        self.setup_table()
        self.show_items(self._all_jobs())

    def _all_jobs(self) -> list[JobView]:
        return sorted(self.lamina.job_views.values(), key=lambda j: j.created, reverse=True)

    def item_key(self, item: JobView) -> str:
        return item.id

    def item_text(self, item: JobView) -> str:
        return f"{item.id} {item.kind} {item.description} {item.state}"

    def table_changed(self) -> None:
        has_jobs = bool(self.items)
        self.query_one("#empty").display = not has_jobs
        self.query_one("#job-detail").display = has_jobs
        self.show_selected()

    def jobs_changed(self, views: list[JobView]) -> None:
        known = {j.id for j in self.items}
        if any(v.id not in known for v in views):
            self.show_items(self._all_jobs())
            return
        self.items = self._all_jobs()
        by_id = {v.id: v for v in self.items}
        for view in views:
            current = by_id.get(view.id, view)
            for column in self.columns():
                self.update_cell(current.id, column.key, column.cell(current))
        self.show_selected()

    @on(DataTable.RowHighlighted, "#table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_selected()

    @on(DataTable.RowSelected, "#table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.query_one("#job-log", Log).focus()

    def show_selected(self) -> None:
        view = self.current_item()
        self.query_one("#job-card", JobCard).show_job(view)
        log = self.query_one("#job-log", Log)
        if view is None:
            log.clear()
            self.shown_job, self.shown_log = None, 0
            return
        if view.id != self.shown_job or len(view.log) < self.shown_log:
            log.clear()
            self.shown_job, self.shown_log = view.id, 0
        new_lines = view.log[self.shown_log :]
        if new_lines:
            log.write_lines([plain_log(line) for line in new_lines])
            self.shown_log = len(view.log)

    def action_cancel(self) -> None:
        view = self.current_item()
        if view is None:
            return
        if view.finished:
            self.notify(f"job {view.id} has already {view.state}", severity="warning")
            return
        self.lamina.cancel_job(view.id)
