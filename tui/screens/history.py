"""History: every job of the job-history catalog (docs/catalog.md), and one job's details."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Static

from lamina.backend.service import JobRecord, format_cost

from .. import formatting as fmt
from ..formatting import shown
from ..widgets.jobs import state_text
from .base import Column, LaminaScreen, TableScreen

#: The newest jobs the screen lists (pages of the service's history).
SHOWN_JOBS = 1000


class HistoryLoaded(Message):
    def __init__(self, records: list[JobRecord]) -> None:
        super().__init__()
        self.records = records


class JobLoaded(Message):
    def __init__(self, record: JobRecord | None) -> None:
        super().__init__()
        self.record = record


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _requests(r: JobRecord) -> int:
    return sum(r.requests.values())


def _error(r: JobRecord) -> Text:
    return shown(fmt.printable(r.error or "")[:60], style="red")


class HistoryScreen(TableScreen[JobRecord]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Details", id="history.open", key_display="enter", priority=True),
        Binding("ctrl+r", "refresh", "Reload", id="history.refresh"),
    ]

    COLUMNS: ClassVar[list[Column[Any]]] = [
        Column("kind", "KIND", lambda r: shown(r.kind, style="bold"), lambda r: r.kind),
        Column("state", "STATE", lambda r: state_text(r.state), lambda r: r.state),
        Column(
            "volume",
            "VOLUME",
            lambda r: shown(fmt.printable(r.volume or "-")[:40]),
            lambda r: r.volume or "",
        ),
        Column("start", "START (UTC)", lambda r: _when(r.created_at), lambda r: r.created_at),
        Column(
            "duration",
            "DURATION",
            lambda r: Text(fmt.duration(r.duration), justify="right"),
            lambda r: r.duration or 0.0,
        ),
        Column(
            "read",
            "READ",
            lambda r: Text(fmt.size(r.bytes_read), justify="right"),
            lambda r: r.bytes_read,
        ),
        Column(
            "stored",
            "STORED",
            lambda r: Text(fmt.size(r.bytes_stored), justify="right"),
            lambda r: r.bytes_stored,
        ),
        Column(
            "requests",
            "REQUESTS",
            lambda r: Text(str(_requests(r)), justify="right"),
            _requests,
        ),
        Column(
            "cost",
            "COST",
            lambda r: Text(format_cost(r.cost_usd), justify="right"),
            lambda r: r.cost_usd,
        ),
        Column("error", "ERROR", _error, lambda r: r.error or ""),
    ]

    def crumbs(self) -> list[str]:
        return ["history"]

    def compose(self) -> Iterable[Any]:
        yield self.compose_top()
        yield from self.compose_table()
        yield Static(
            Text("No jobs in the history yet.", style="dim"), id="empty", classes="empty-note"
        )
        yield from self.compose_bottom()

    def on_mount(self) -> None:
        self.setup_table()
        self.query_one("#empty").display = False
        self.table.loading = True
        self.load()

    def item_key(self, item: JobRecord) -> str:
        return item.id

    def item_text(self, item: JobRecord) -> str:
        return f"{item.id} {item.kind} {item.state} {item.volume or ''} {item.error or ''}"

    @work(thread=True, exclusive=True, group="history")
    def load(self) -> None:
        records = self.call_safely("read the job history", self._newest)
        self.post_message(HistoryLoaded(records or []))

    def _newest(self) -> list[JobRecord]:
        records: list[JobRecord] = []
        token = ""
        while len(records) < SHOWN_JOBS:
            page = self.service.list_history(limit=SHOWN_JOBS - len(records), page_token=token)
            records += page.jobs
            token = page.next_page_token
            if not token:
                break
        return records

    @on(HistoryLoaded)
    def _loaded(self, message: HistoryLoaded) -> None:
        self.table.loading = False
        self.refresh_bindings()
        self.query_one("#empty").display = not message.records
        self.show_items(message.records)

    def action_refresh(self) -> None:
        self.load()

    def action_open(self) -> None:
        record = self.current_item()
        if record is not None:
            self.app.push_screen(HistoryJobScreen(record.id))


class HistoryJobScreen(LaminaScreen):
    """One job of the history: its figures, who started it, and its state changes."""

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id

    def crumbs(self) -> list[str]:
        return ["history", fmt.printable(self.job_id)]

    def compose(self) -> Iterable[Any]:
        yield self.compose_top()
        with VerticalScroll(id="history-job"):
            yield Static(Text("loading…", style="dim italic"), id="history-job-detail")
        yield from self.compose_bottom()

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="history-job")
    def load(self) -> None:
        record = self.call_safely("read the job", lambda: self.service.get_job(self.job_id))
        self.post_message(JobLoaded(record))

    @on(JobLoaded)
    def _loaded(self, message: JobLoaded) -> None:
        detail = self.query_one("#history-job-detail", Static)
        if message.record is None:
            detail.update(Text("This job could not be read.", style="red"))
            return
        detail.update(job_details(message.record))


def job_details(r: JobRecord) -> Text:
    """A job's details as text: every string from the catalog drawn as it is, escaped."""
    text = Text()

    def line(label: str, value: str | Text, style: str = "") -> None:
        text.append(f"{label:<14}", style="bold")
        text.append(value if isinstance(value, Text) else shown(value, style=style))
        text.append("\n")

    line("job", r.id)
    line("kind", r.kind)
    line("state", state_text(r.state))
    line("description", r.description or "-")
    line("repository", r.repository or "-")
    line("volume", r.volume or "-")
    line("point", r.point or "-")
    line("created (UTC)", _when(r.created_at))
    line("started (UTC)", _when(r.started_at))
    line("ended (UTC)", _when(r.ended_at))
    line("duration", fmt.duration(r.duration))
    line("read", fmt.size(r.bytes_read))
    line("stored", fmt.size(r.bytes_stored))
    line("deduplicated", fmt.size(r.bytes_deduplicated))
    requests = ", ".join(f"{op} {n}" for op, n in r.requests.items() if n) or "none"
    line("requests", f"{requests} ({r.retries} retries)")
    line("transfer", f"up {fmt.size(r.bytes_up)}, down {fmt.size(r.bytes_down)}")
    line("cost", f"about {format_cost(r.cost_usd)}")
    if r.origin == "repository":
        line("started by", "found in the repository")
    else:
        line("started by", f"{fmt.printable(r.origin)} on {fmt.printable(r.host)}, pid {r.pid}")
    if r.error:
        line("error", r.error, style="red")
    text.append("\nstate changes\n", style="bold underline")
    for event in r.events:
        text.append(f"{_when(event.at)}  ")
        text.append(state_text(event.state))
        if event.message:
            text.append("  ")
            text.append(shown(event.message))
        text.append("\n")
    if not r.events:
        text.append("none recorded\n", style="dim")
    return text
