"""Two repositories side by side for one volume: what each holds, and copying what is missing.

The service's repository is the left side ("this repository"), the other one is named by a
URL its machine reaches (the server's, over --server). The comparison runs in a worker
thread; copies are service jobs shown in the job strip, and the view refreshes when they end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from lamina.backend.service import (
    JobView,
    PasswordRequired,
    PointInfo,
    VolumeComparison,
    WrongPassword,
)
from lamina.backend.units import plural

from .. import formatting as fmt
from ..formatting import shown
from ..widgets.table import LaminaTable
from .base import LaminaScreen, plain_error

HERE = "✓"
MISSING = Text("missing", style="bold yellow")
DIFFERS = Text("✗ differs", style="bold red")


@dataclass
class CompareLoaded(Message):
    comparison: VolumeComparison | None
    points: list[PointInfo]  # this repository's points of the volume
    error: str | None = None
    needs_password: bool = False  # the other repository is encrypted: none given, or wrong


@dataclass(frozen=True)
class Row:
    point: str
    created: str  # "" for a point only the other side holds (its facts stay over there)
    here: Text
    there: Text


def comparison_rows(c: VolumeComparison, points: list[PointInfo]) -> list[Row]:
    """This side's points oldest first, then the points only the other side holds."""
    differing, only_here = set(c.differing), set(c.only_left)
    rows = []
    for p in sorted(points, key=lambda p: p.created):
        if p.id in differing:
            here, there = DIFFERS, DIFFERS
        elif p.id in only_here:
            here, there = Text(HERE, style="green"), MISSING
        else:
            here, there = Text(HERE, style="green"), Text(HERE, style="green")
        rows.append(Row(p.id, p.created, here, there))
    listed = {p.id for p in points}
    for point_id in c.only_right:
        if point_id not in listed:
            rows.append(Row(point_id, "", MISSING, Text(HERE, style="green")))
    return rows


class CompareScreen(LaminaScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "copy_missing", "Copy missing", id="compare.copy"),
        Binding("c", "cancel", "Cancel copy", id="compare.cancel"),
        Binding("ctrl+r", "refresh", "Compare again", id="compare.refresh"),
        Binding("j", "cursor_down", "Down", show=False, id="compare.cursor-down"),
        Binding("k", "cursor_up", "Up", show=False, id="compare.cursor-up"),
    ]

    AUTO_FOCUS = "#compare-points"

    def __init__(self, volume: str, other: str) -> None:
        super().__init__()
        self.volume = volume  # CLUSTER/NS/NAME
        self.other = other
        self.comparison: VolumeComparison | None = None
        self.rows: list[Row] = []
        self.loaded = False
        self.copy_jobs: set[str] = set()
        self._copy_jobs_lock = threading.Lock()
        self.other_password: bytes | None = None  # asked for when the other side is encrypted

    def crumbs(self) -> list[str]:
        return [*self.volume.split("/"), "compare"]

    def compose(self) -> Iterable[Any]:
        yield self.compose_top()
        with Vertical(id="compare-body"):
            yield Static(id="compare-summary")
            yield LaminaTable(id="compare-points", cursor_type="row")
        yield from self.compose_bottom()

    @property
    def table(self) -> DataTable[Any]:
        return self.query_one("#compare-points", DataTable)

    def on_mount(self) -> None:
        table = self.table
        table.add_column("POINT", key="point")
        table.add_column("CREATED (UTC)", key="created")
        table.add_column("THIS REPOSITORY", key="here")
        table.add_column("OTHER", key="there")
        table.focus()
        table.loading = True
        self.load()

    # ------------------------------------------------------------------ loading

    @work(thread=True, exclusive=True, group="compare")
    def load(self) -> None:
        try:
            report = self.service.compare(
                self.other, volume=self.volume, other_password=self.other_password
            )
            points = self.service.list_points(self.volume)
        except (PasswordRequired, WrongPassword) as e:
            # Said here: the backend's line speaks of "this repository" and its CLI options.
            why = "wrong password" if isinstance(e, WrongPassword) else "it is encrypted"
            self.post_message(CompareLoaded(None, [], why, needs_password=True))
            return
        except Exception as e:
            self.post_message(CompareLoaded(None, [], plain_error(e)))
            return
        mine = next(iter(report.volumes), None)
        self.post_message(CompareLoaded(mine or VolumeComparison(self.volume), points))

    @on(CompareLoaded)
    def _loaded(self, message: CompareLoaded) -> None:
        self.table.loading = False
        self.loaded = True
        self.refresh_bindings()
        summary = self.query_one("#compare-summary", Static)
        if message.needs_password:
            self.ask_password(message.error or "the other repository is encrypted")
            return
        if message.error is not None or message.comparison is None:
            self.comparison = None
            self.fail(f"compare with {self.other}", message.error or "no answer")
            summary.update(shown(f"cannot compare with {self.other}: {message.error}", "red"))
            return
        c = self.comparison = message.comparison
        self.rows = comparison_rows(c, message.points)
        table = self.table
        table.clear()
        for row in self.rows:
            table.add_row(
                shown(row.point, style="bold"),
                shown(fmt.short_time(row.created) if row.created else "-"),
                row.here,
                row.there,
                key=row.point,
            )
        summary.update(self.summary_text(c))

    def ask_password(self, why: str) -> None:
        """The other repository's password, asked for again after a wrong one; esc leaves
        the comparison undone, with the reason on the screen."""
        from .dialogs import PromptScreen

        def answer(typed: str | None) -> None:
            if typed is None:
                self.comparison = None
                self.query_one("#compare-summary", Static).update(
                    shown(f"cannot compare with {self.other}: {why}", "red")
                )
                return
            self.other_password = typed.encode()
            self.table.loading = True
            self.load()

        self.app.push_screen(
            PromptScreen(
                f"Password of {self.other}",
                hint=f"{why}; try again" if self.other_password is not None else why,
                password=True,
            ),
            answer,
        )

    def summary_text(self, c: VolumeComparison) -> Text:
        text = Text()
        text.append("this repository  ", style="dim")
        text.append_text(shown(self.lamina.repository_label or self.service.repo_url))
        text.append("\nother            ", style="dim")
        text.append_text(shown(self.other))
        text.append("\nnewest common    ", style="dim")
        text.append_text(shown(c.newest_common or "none"))
        for side, opposite, points, size in (
            ("this repository", "the other", c.left_behind_points, c.left_behind_bytes),
            ("the other", "this repository", c.right_behind_points, c.right_behind_bytes),
        ):
            text.append("\n")
            if points:
                text.append(
                    f"{side} is behind by {plural(points, 'point')}, {fmt.size(size)} to move",
                    style="yellow",
                )
            else:
                text.append(f"{side} holds every point of {opposite}", style="green")
        if c.differing:
            one = len(c.differing) == 1
            text.append(
                f"\n{plural(len(c.differing), 'point')} {'differs' if one else 'differ'}: same "
                f"id, other content (corruption or tampering); {'it is' if one else 'they are'} "
                "not copied",
                style="bold red",
            )
        return text

    def jobs_changed(self, views: list[JobView]) -> None:
        with self._copy_jobs_lock:
            ended = [v for v in views if v.id in self.copy_jobs and v.finished]
            self.copy_jobs -= {v.id for v in ended}
        if ended:
            self.load()

    # ------------------------------------------------------------------ actions

    def action_refresh(self) -> None:
        self.load()

    def action_cursor_down(self) -> None:
        self.table.action_cursor_down()

    def action_cursor_up(self) -> None:
        self.table.action_cursor_up()

    def _remember(self, job_id: str) -> str:
        with self._copy_jobs_lock:
            self.copy_jobs.add(job_id)
        return job_id

    def action_copy_missing(self) -> None:
        c = self.comparison
        if c is None:
            self.notify("nothing compared yet", severity="warning")
            return
        differing = set(c.differing)
        to_other = [p for p in c.only_left if p not in differing]
        from_other = [p for p in c.only_right if p not in differing]
        if not to_other and not from_other:
            self.notify("nothing to copy: both repositories hold the same points")
            return
        # Each direction is one job: the points missing there, with their chains.
        for direction, points in (("to", to_other), ("from", from_other)):
            if not points:
                continue
            what = f"copy {plural(len(points), 'point')} {direction} {fmt.printable(self.other)}"
            self.lamina.start_job(
                what,
                lambda d=direction, p=points: self._remember(
                    self.service.start_copy(
                        self.other, direction=d, points=p, other_password=self.other_password
                    ).id
                ),
            )

    def action_cancel(self) -> None:
        with self._copy_jobs_lock:
            mine = set(self.copy_jobs)
        running = [v for v in self.lamina.job_views.values() if v.id in mine and not v.finished]
        if not running:
            self.notify("no copy is running", severity="warning")
            return
        for view in running:
            self.lamina.cancel_job(view.id)


def ask_and_compare(screen: LaminaScreen, volume: str) -> None:
    """Ask for the other repository (the last one compared with is offered), then open
    the comparison of ``volume``."""
    from .dialogs import PromptScreen

    app = screen.lamina

    def answer(typed: str | None) -> None:
        if not typed:
            return
        other = typed if "://" in typed else app.resolve_path(typed)
        app.compare_with = other
        app.push_screen(CompareScreen(volume, other))

    app.push_screen(
        PromptScreen(
            f"Compare {volume} with the repository at",
            app.compare_with,
            hint="an s3:// URL or a folder, as this repository's machine (or server) reaches "
            "it; y then copies what either side lacks",
        ),
        answer,
    )
