"""Schedules: the backups and prunes `lamina controller --local` runs (docs/schedules.md),
with their next and last run; pause, resume or run one now."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import Static

from lamina.backend.service import ScheduleInfo

from .. import formatting as fmt
from ..formatting import shown
from ..widgets.jobs import state_text
from .base import Column, TableScreen

#: Seconds between two readings of the schedules while the screen is open.
RELOAD_EVERY = 2.0


class SchedulesLoaded(Message):
    def __init__(self, schedules: list[ScheduleInfo] | None, generation: int) -> None:
        super().__init__()
        self.schedules = schedules  # None: they could not be read
        self.generation = generation  # the screen's change count when the reading began


class ScheduleChanged(Message):
    def __init__(self, schedule: ScheduleInfo, said: str) -> None:
        super().__init__()
        self.schedule = schedule
        self.said = said


def _what(s: ScheduleInfo) -> Text:
    if s.kind == "prune":
        return Text("prune", style="italic")
    return shown(s.volume or "-")


def _state(s: ScheduleInfo) -> Text:
    text = Text("paused", style="yellow") if s.paused else Text("active", style="green")
    if s.run_now_pending:
        text.append(" +run now", style="cyan")
    return text


def _last_result(s: ScheduleInfo) -> Text:
    if s.last_state is None:
        return Text("-", style="dim")
    text = state_text(s.last_state)
    if s.last_error:
        text.append("  ")
        text.append(shown(fmt.printable(s.last_error)[:60], style="red"))
    return text


class SchedulesScreen(TableScreen[ScheduleInfo]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pause", "Pause", id="schedules.pause"),
        Binding("r", "resume", "Resume", id="schedules.resume"),
        Binding("n", "run_now", "Run now", id="schedules.run-now"),
        Binding("ctrl+r", "refresh", "Reload", id="schedules.refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sort_column = "name"
        # Changes drawn so far: a reading begun before the last one may be older than it.
        self.generation = 0
        self._column_list = self._columns()

    def columns(self) -> list[Column[Any]]:
        return self._column_list

    def _columns(self) -> list[Column[Any]]:
        return [
            Column("name", "NAME", lambda s: shown(s.name, style="bold"), lambda s: s.name),
            Column("volume", "VOLUME", _what, lambda s: (s.kind, s.volume or "")),
            Column(
                "repository",
                "REPOSITORY",
                lambda s: shown(fmt.printable(s.repository)[:40]),
                lambda s: s.repository,
            ),
            Column("when", "WHEN", lambda s: shown(s.when), lambda s: s.when),
            Column("next", "NEXT RUN", lambda s: self._next_run(s), lambda s: s.next_run),
            Column("last", "LAST RUN", lambda s: self._last_run(s), lambda s: s.last_run or 0.0),
            Column(
                "result", "LAST RESULT", _last_result, lambda s: (s.last_state or "", s.last_error)
            ),
            Column("state", "STATE", _state, lambda s: (s.paused, s.run_now_pending)),
        ]

    def crumbs(self) -> list[str]:
        return ["schedules"]

    def compose(self) -> Iterable[Any]:
        yield self.compose_top()
        yield from self.compose_table()
        yield Static(
            Text(
                "No schedules yet: `lamina schedule add` makes one, "
                "`lamina controller --local` runs them.",
                style="dim",
            ),
            id="empty",
            classes="empty-note",
        )
        yield from self.compose_bottom()

    def on_mount(self) -> None:
        self.setup_table()
        self.query_one("#empty").display = False
        self.table.loading = True
        self.load()
        # Schedules run every few seconds in demos and tests: ages to the second, and the
        # catalog read again often enough that a controller's runs show up at once.
        self.set_interval(min(self.lamina.age_interval, 1.0), self.refresh_ages)
        self.set_interval(RELOAD_EVERY, self.load)

    def item_key(self, item: ScheduleInfo) -> str:
        return item.name

    def item_text(self, item: ScheduleInfo) -> str:
        return (
            f"{item.name} {item.kind} {item.volume or ''} {item.repository} {item.when} "
            f"{item.state} {item.last_state or ''} {item.last_error or ''}"
        )

    # ------------------------------------------------------------------ ages

    def _next_run(self, s: ScheduleInfo) -> Text:
        if s.paused and not s.run_now_pending:
            return Text("paused", style="dim")
        return Text(fmt.relative(s.next_run, self.now()))

    def _last_run(self, s: ScheduleInfo) -> Text:
        if s.last_run is None:
            return Text("never", style="dim")
        return Text(fmt.relative(s.last_run, self.now()))

    def refresh_ages(self) -> None:
        """Ages move while the screen is open: 'in 5s' becomes 'in 4s'."""
        for item in self.visible_items():
            self.update_cell(item.name, "next", self._next_run(item))
            self.update_cell(item.name, "last", self._last_run(item))

    # ------------------------------------------------------------------ loading

    @work(thread=True, exclusive=True, group="schedules")
    def load(self) -> None:
        generation = self.generation
        found = self.call_safely("list the schedules", self.service.list_schedules)
        self.post_message(SchedulesLoaded(found, generation))

    @on(SchedulesLoaded)
    def _loaded(self, message: SchedulesLoaded) -> None:
        if message.generation != self.generation:
            return  # read before a change was drawn: the next reading has it
        self.table.loading = False
        self.refresh_bindings()  # the focused widget was hidden while loading
        empty = self.query_one("#empty", Static)
        if message.schedules is None:
            empty.update(Text("The schedules could not be read.", style="red"))
        empty.display = not message.schedules
        if message.schedules is not None and message.schedules == self.items:
            return  # nothing changed: no redraw under the cursor
        self.show_items(message.schedules or [])

    def action_refresh(self) -> None:
        self.load()

    # ------------------------------------------------------------------ actions

    def action_pause(self) -> None:
        self._change("pause", self.service.pause_schedule, "paused")

    def action_resume(self) -> None:
        self._change("resume", self.service.resume_schedule, "resumed")

    def action_run_now(self) -> None:
        self._change(
            "run now",
            self.service.run_schedule_now,
            "due now: a running `lamina controller --local` starts it",
        )

    def _change(self, what: str, call: Callable[[str], ScheduleInfo], said: str) -> None:
        item = self.current_item()
        if item is None:
            self.notify("select a schedule first", severity="warning")
            return
        self._apply(f"{what} schedule {item.name}", call, item.name, said)

    @work(thread=True, group="schedule-change")
    def _apply(self, what: str, call: Callable[[str], ScheduleInfo], name: str, said: str) -> None:
        changed = self.call_safely(what, lambda: call(name))
        if changed is not None:
            self.post_message(ScheduleChanged(changed, said))

    @on(ScheduleChanged)
    def _changed(self, message: ScheduleChanged) -> None:
        changed = message.schedule
        self.generation += 1
        self.items = [changed if i.name == changed.name else i for i in self.items]
        self.redraw_table()
        self.notify(f"schedule {changed.name}: {message.said}", timeout=4)
