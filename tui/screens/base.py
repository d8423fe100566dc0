"""What every lamina screen shares: the top bar, the job strip, the footer, workers, filters."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Input

from lamina.backend.service import JobView, LaminaError, LaminaService

from ..messages import ActionFailed, JobsUpdated
from ..widgets.bars import TopBar
from ..widgets.footer import KeyFooter
from ..widgets.jobs import JobStrip
from ..widgets.table import LaminaTable

if TYPE_CHECKING:
    from ..app import LaminaApp

T = TypeVar("T")


def plain_error(error: BaseException) -> str:
    """One line for the user: a LaminaError says it itself; anything else is named, no trace."""
    if isinstance(error, LaminaError):
        return str(error)
    text = str(error).strip().splitlines()
    detail = text[0] if text else ""
    return f"unexpected {type(error).__name__}" + (f": {detail}" if detail else "")


class LaminaScreen(Screen[None]):
    """A full screen with the top bar, the running jobs and the footer."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="back", key_display="esc"),
        Binding("ctrl+r", "refresh", "Refresh", show=False, id="refresh"),
    ]

    def crumbs(self) -> list[str]:
        return []

    @property
    def lamina(self) -> LaminaApp:
        return self.app  # type: ignore[return-value]

    @property
    def service(self) -> LaminaService:
        return self.lamina.service

    def now(self) -> float:
        return self.lamina.clock()

    def compose_top(self) -> TopBar:
        return TopBar(self.crumbs(), id="top-bar")

    def compose_bottom(self) -> Iterable[Any]:
        yield JobStrip(id="job-strip")
        yield KeyFooter()

    def on_screen_resume(self) -> None:
        self._show_jobs()

    def _show_jobs(self) -> None:
        views = list(self.lamina.job_views.values())
        for strip in self.query(JobStrip):
            strip.show_jobs(views)
        for bar in self.query(TopBar):
            bar.set_running(sum(1 for v in views if not v.finished))

    @on(JobsUpdated)
    def _jobs_updated(self, message: JobsUpdated) -> None:
        if self.is_current:
            self._show_jobs()
        self.jobs_changed(message.views)

    def jobs_changed(self, views: list[JobView]) -> None:
        """Hook: jobs changed (finished backups mean new points, for example)."""

    def running_job_for(
        self, *, volume: str | None = None, point: str | None = None
    ) -> JobView | None:
        for view in reversed(list(self.lamina.job_views.values())):
            if view.finished:
                continue
            if (volume and view.volume_key == volume) or (point and view.point == point):
                return view
        return None

    def fail(self, what: str, error: BaseException | str) -> None:
        """Report a failure from any thread, in plain words."""
        reason = error if isinstance(error, str) else plain_error(error)
        self.post_message(ActionFailed(what, reason))

    def call_safely(self, what: str, fn: Callable[[], T]) -> T | None:
        """Run a blocking client call (in a worker thread); report failures, never raise."""
        try:
            return fn()
        except Exception as e:
            self.fail(what, e)
            return None

    def can_go_back(self) -> bool:
        stack = self.app.screen_stack
        return self in stack and stack.index(self) > 0

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "back":
            return self.can_go_back()
        return True

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def action_refresh(self) -> None:
        """Reload what the screen shows."""


@dataclass(frozen=True)
class Column(Generic[T]):
    key: str
    label: str
    cell: Callable[[T], Any]
    sort: Callable[[T], Any] | None = None
    width: int | None = None


class FilteredScreen(LaminaScreen):
    """A screen with a '/' filter box (an Input with id ``filter``): typing narrows what it
    shows, enter keeps the filter, esc clears it. Its subclass binds '/' to ``filter`` and
    says how to redraw and what takes the focus back."""

    def __init__(self) -> None:
        super().__init__()
        self.filter_text = ""

    def filter_changed(self) -> None:
        """Hook: the filter text changed; show what it lets through."""
        raise NotImplementedError

    def filter_done(self) -> None:
        """Hook: the filter box is left; focus what it filters."""
        raise NotImplementedError

    @property
    def filter_input(self) -> Input:
        return self.query_one("#filter", Input)

    def action_filter(self) -> None:
        box = self.filter_input
        box.add_class("-open")
        box.focus()
        self.refresh_bindings()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.filter_changed()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        if not event.value:
            self.filter_input.remove_class("-open")
        self.filter_done()
        self.refresh_bindings()

    def action_back(self) -> None:
        box = self.filter_input
        if box.has_focus or self.filter_text:
            box.value = ""
            box.remove_class("-open")
            self.filter_text = ""
            self.filter_changed()
            self.filter_done()
            self.refresh_bindings()
            return
        super().action_back()

    def can_go_back(self) -> bool:
        return (
            bool(self.filter_text) or self.filter_input.has_class("-open") or super().can_go_back()
        )


class TableScreen(FilteredScreen, Generic[T]):
    """A screen built around one table: '/' filters it, 's' and header clicks sort it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", id="filter", key_display="/"),
        Binding("s", "sort_next", "Sort", id="sort", show=False),
        Binding("S", "sort_reverse", "Reverse sort", id="sort-reverse", show=False),
        Binding("j", "cursor_down", "Down", show=False, id="cursor-down"),
        Binding("k", "cursor_up", "Up", show=False, id="cursor-up"),
    ]

    AUTO_FOCUS = "#table"
    COLUMNS: ClassVar[list[Column[Any]]] = []
    sort_column: str | None = None
    sort_reverse = False

    def __init__(self) -> None:
        super().__init__()
        self.items: list[T] = []

    # subclasses say how an item looks
    def item_key(self, item: T) -> str:
        raise NotImplementedError

    def item_text(self, item: T) -> str:
        """What the filter matches against."""
        raise NotImplementedError

    def compose_table(self) -> Iterable[Any]:
        yield Input(placeholder="filter…  (enter keeps it, esc clears it)", id="filter")
        table = LaminaTable(id="table", cursor_type="row", zebra_stripes=True)
        yield table

    @property
    def table(self) -> DataTable[Any]:
        return self.query_one("#table", DataTable)

    def setup_table(self) -> None:
        """Call from on_mount (Textual runs every class's on_mount: no super() chain here)."""
        for column in self.columns():
            self.table.add_column(column.label, key=column.key, width=column.width)
        self.table.focus()

    def columns(self) -> list[Column[Any]]:
        return self.COLUMNS

    def visible_items(self) -> list[T]:
        needle = self.filter_text.lower()
        items = [i for i in self.items if needle in self.item_text(i).lower()]
        column = next((c for c in self.columns() if c.key == self.sort_column), None)
        if column is not None and column.sort is not None:
            items.sort(key=column.sort, reverse=self.sort_reverse)
        return items

    def show_items(self, items: list[T]) -> None:
        self.items = items
        self.redraw_table()

    def redraw_table(self) -> None:
        table = self.table
        current = self.current_key()
        table.clear()
        for column in self.columns():
            label = Text(column.label)
            if column.key == self.sort_column:
                label.append(" ▼" if self.sort_reverse else " ▲", style="bold")
            header = table.columns[column.key]  # type: ignore[index]
            header.label = label
            header.content_width = max(header.content_width, label.cell_len)
        for item in self.visible_items():
            table.add_row(*(c.cell(item) for c in self.columns()), key=self.item_key(item))
        if current is not None:
            try:
                table.move_cursor(row=table.get_row_index(current))
            except Exception:
                pass
        self.table_changed()

    def table_changed(self) -> None:
        """Hook: the rows were redrawn."""

    def current_key(self) -> str | None:
        table = self.table
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:
            return None
        return str(key) if key is not None else None

    def current_item(self) -> T | None:
        key = self.current_key()
        return next((i for i in self.items if self.item_key(i) == key), None)

    def update_cell(self, key: str, column: str, value: Any, *, widen: bool = False) -> None:
        try:
            self.table.update_cell(key, column, value, update_width=widen)
        except Exception:  # the row is filtered out or gone
            pass

    # ------------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "open":
            # enter opens the row (a priority key, so that the footer and the help show it,
            # which the table's own enter would hide); in the filter box it keeps the filter.
            try:
                return self.table.has_focus
            except Exception:  # not composed yet
                return False
        return super().check_action(action, parameters)

    def filter_changed(self) -> None:
        self.redraw_table()

    def filter_done(self) -> None:
        self.table.focus()

    def action_sort_next(self) -> None:
        keys = [c.key for c in self.columns() if c.sort is not None]
        if not keys:
            return
        index = keys.index(self.sort_column) + 1 if self.sort_column in keys else 0
        self.sort_column = keys[index % len(keys)]
        self.sort_reverse = False
        self.redraw_table()

    def action_sort_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.redraw_table()

    @on(DataTable.HeaderSelected)
    def _header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        column = next((c for c in self.columns() if c.key == key), None)
        if column is None or column.sort is None:
            return
        if self.sort_column == key:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = key, False
        self.redraw_table()

    def action_cursor_down(self) -> None:
        self.table.action_cursor_down()

    def action_cursor_up(self) -> None:
        self.table.action_cursor_up()
