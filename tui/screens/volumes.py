"""Volumes of one cluster, with their backups; back them up from here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from lamina.backend.service import ClusterVolume, JobView, LastGoodBackup

from .. import formatting as fmt
from ..formatting import shown
from ..messages import VolumesLoaded
from ..widgets.jobs import PHASE_WIDTH
from .base import Column, TableScreen


def _cbt(v: ClusterVolume) -> Text:
    if not v.in_cluster:
        return Text("-", style="dim")
    return Text("yes", style="green") if v.cbt else Text("no", style="yellow")


def _name(v: ClusterVolume) -> Text:
    name = shown(v.name, style="bold" if v.in_cluster else "dim")
    if v.phase != "Bound":
        name.append(f" ({fmt.printable(v.phase)})", style="dim italic" if v.in_cluster else "dim")
    return name


class VolumesScreen(TableScreen[ClusterVolume]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Chain", id="volumes.open", key_display="enter", priority=True),
        Binding("b", "backup", "Back up", id="volumes.backup"),
        Binding("space", "mark", "Mark", id="volumes.mark", key_display="space"),
        Binding("c", "cancel", "Cancel job", id="volumes.cancel"),
        Binding("equals_sign", "compare", "Compare", id="volumes.compare", key_display="="),
        Binding("ctrl+r", "refresh", "Refresh", show=False, id="volumes.refresh"),
    ]

    def __init__(self, cluster: str) -> None:
        super().__init__()
        self.cluster = cluster
        self.marked: set[str] = set()
        self.loaded = False
        self.sort_column = "namespace"
        self.last_good: dict[str, LastGoodBackup] | None = {}
        self._column_list = self._columns()

    def columns(self) -> list[Column[Any]]:
        return self._column_list

    def _columns(self) -> list[Column[Any]]:
        return [
            Column("mark", " ", lambda v: self._mark(v), width=1),
            Column(
                "namespace",
                "NAMESPACE",
                lambda v: shown(v.namespace),
                lambda v: (v.namespace, v.name),
            ),
            Column("name", "PVC", _name, lambda v: v.name),
            Column("mode", "MODE", lambda v: shown(v.mode or "-"), lambda v: v.mode),
            Column(
                "capacity",
                "CAPACITY",
                lambda v: Text(fmt.size(v.capacity), justify="right"),
                lambda v: v.capacity,
            ),
            Column(
                "class",
                "STORAGE CLASS",
                lambda v: shown(v.storage_class or "-"),
                lambda v: v.storage_class,
            ),
            Column("cbt", "CBT", _cbt, lambda v: v.cbt),
            Column(
                "last",
                "LAST BACKUP",
                lambda v: self._last_backup(v),
                lambda v: v.last_backup or "",
            ),
            Column(
                "good",
                "LAST GOOD",
                lambda v: self._last_good(v),
                lambda v: self._last_good_end(v),
            ),
            Column(
                "chain",
                "CHAIN",
                lambda v: Text(str(v.chain_length), justify="right"),
                lambda v: v.chain_length,
            ),
            Column(
                "stored",
                "STORED",
                lambda v: Text(fmt.size(v.stored), justify="right"),
                lambda v: v.stored,
            ),
            Column("job", "JOB", lambda v: self._job_cell(v), width=PHASE_WIDTH + 7),
        ]

    def crumbs(self) -> list[str]:
        return ["clusters", self.cluster, "volumes"]

    def compose(self) -> Iterable[Any]:
        yield self.compose_top()
        yield Static(id="empty", classes="empty-note")
        yield from self.compose_table()
        yield from self.compose_bottom()

    def on_mount(self) -> None:
        self.setup_table()
        self.query_one("#empty").display = False
        self.table.loading = True
        self.load()
        self.set_interval(self.lamina.age_interval, self.refresh_ages)

    def item_key(self, item: ClusterVolume) -> str:
        return item.key

    def item_text(self, item: ClusterVolume) -> str:
        return f"{item.namespace}/{item.name} {item.mode} {item.storage_class} {item.phase}"

    def _last_backup(self, v: ClusterVolume) -> Text:
        return Text(fmt.age(v.last_backup, self.now()), style="" if v.last_backup else "dim")

    def _last_good_end(self, v: ClusterVolume) -> float:
        found = (self.last_good or {}).get(v.key)
        return found.ended_at or 0.0 if found else 0.0

    def _last_good(self, v: ClusterVolume) -> Text:
        """When the newest successful backup ended; red when it is older than the volume's
        schedule allows (twice its interval), or than 24 hours without a schedule."""
        if self.last_good is None:
            return Text("?", style="dim")  # the history could not be read
        found = self.last_good.get(v.key)
        if found is None:
            return Text("-", style="dim")
        now = self.now()
        late = found.overdue(now)
        if found.ended_at is None:
            return Text("never", style="bold red" if late else "dim")
        return Text(fmt.ago(found.ended_at, now), style="bold red" if late else "green")

    def refresh_ages(self) -> None:
        """Ages grow while the screen is open: '3m ago' becomes '4m ago'."""
        for item in self.visible_items():
            self.update_cell(item.key, "last", self._last_backup(item))
            self.update_cell(item.key, "good", self._last_good(item))

    def _mark(self, v: ClusterVolume) -> Text:
        return Text("✔", style="bold magenta") if v.key in self.marked else Text("")

    def _job_cell(self, v: ClusterVolume) -> Text:
        """The volume's running job: its whole phase and how far it is (the strip has more)."""
        view = self.running_job_for(volume=v.key)
        if view is None:
            return Text("")
        cell = Text(fmt.printable(view.phase or view.state)[:PHASE_WIDTH], style="italic")
        if view.fraction is not None:
            cell.append(f" {fmt.percent(view.fraction):>6}", style="cyan")
        return cell

    # ------------------------------------------------------------------ loading

    @work(thread=True, exclusive=True, group="volumes")
    def load(self) -> None:
        try:
            volumes = self.service.list_cluster_volumes(self.cluster, with_backups=True)
        except Exception as e:
            from .base import plain_error

            self.post_message(VolumesLoaded(self.cluster, [], plain_error(e)))
            return
        # One call for every volume shown: the history's newest good backup of each. A
        # catalog that is off or down leaves the column at '?', without a notice each load.
        last_good: dict[str, LastGoodBackup] | None
        try:
            found = self.service.last_good_backups([v.key for v in volumes])
            last_good = {b.volume: b for b in found}
        except Exception:
            last_good = None
        self.post_message(VolumesLoaded(self.cluster, volumes, last_good=last_good))

    @on(VolumesLoaded)
    def _loaded(self, message: VolumesLoaded) -> None:
        self.table.loading = False
        self.refresh_bindings()  # the focused widget was hidden while loading
        self.loaded = True
        empty = self.query_one("#empty", Static)
        if message.error:
            self.fail(f"list the volumes of {self.cluster}", message.error)
            empty.update(
                shown(f"cannot list the volumes of {self.cluster}: {message.error}", style="red")
            )
        elif not message.volumes:
            empty.update(
                shown(f"cluster {self.cluster} has no volumes lamina can back up.", style="dim")
            )
        empty.display = bool(message.error or not message.volumes)
        self.last_good = message.last_good
        keys = {v.key for v in message.volumes}
        self.marked &= keys
        self.show_items(message.volumes)

    def jobs_changed(self, views: list[JobView]) -> None:
        mine = [v for v in views if v.volume and v.volume.cluster == self.cluster]
        for view in mine:
            if not any(i.key == view.volume_key for i in self.items):
                continue
            item = next(i for i in self.items if i.key == view.volume_key)
            self.update_cell(item.key, "job", self._job_cell(item))
        if any(v.finished and v.kind == "backup" for v in mine):
            self.load()

    # ------------------------------------------------------------------ actions

    def action_refresh(self) -> None:
        self.load()

    def action_open(self) -> None:
        volume = self.current_item()
        if volume is None:
            return
        from .chain import ChainScreen

        self.app.push_screen(ChainScreen(volume))

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_mark(self) -> None:
        volume = self.current_item()
        if volume is None:
            return
        self.marked ^= {volume.key}
        self.update_cell(volume.key, "mark", self._mark(volume))
        self.table.action_cursor_down()

    def selected(self) -> list[ClusterVolume]:
        marked = [v for v in self.items if v.key in self.marked]
        if marked:
            return marked
        current = self.current_item()
        return [current] if current is not None else []

    def action_backup(self) -> None:
        volumes = [v for v in self.selected() if v.in_cluster]
        if not volumes:
            self.notify("select a volume of the cluster to back up", severity="warning")
            return
        for volume in volumes:
            self.lamina.start_job(
                f"back up {volume.key}",
                lambda v=volume: (
                    self.service.start_volume_backup(v.cluster, v.namespace, v.name).id
                ),
            )
        self.marked.clear()
        for volume in volumes:
            self.update_cell(volume.key, "mark", Text(""))

    def action_cancel(self) -> None:
        volume = self.current_item()
        view = self.running_job_for(volume=volume.key) if volume else None
        if view is None:
            self.notify("no job is running for this volume", severity="warning")
            return
        self.lamina.cancel_job(view.id)

    def action_compare(self) -> None:
        volume = self.current_item()
        if volume is None:
            self.notify("no volume selected", severity="warning")
            return
        from .compare import ask_and_compare

        ask_and_compare(self, volume.key)
