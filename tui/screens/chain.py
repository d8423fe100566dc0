"""The chain of a volume: full points and the incrementals built on them, and what to do with one."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, ClassVar

from rich.console import Group
from rich.json import JSON
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from lamina.backend.display import tree_rows
from lamina.backend.service import ClusterVolume, JobView, PointInfo
from lamina.backend.units import plural

from .. import formatting as fmt
from ..client import mount_point, mounted_points, start_restore, unmount_point
from ..formatting import shown
from ..messages import MountsChanged, PointsLoaded
from ..widgets.table import LaminaTable
from .base import LaminaScreen, plain_error
from .dialogs import ConfirmScreen, PromptScreen, RestoreScreen

VERIFY_STYLES = {
    "ok": ("✓ verified", "green"),
    "corrupt": ("✗ corrupt", "bold red"),
    "verifying": ("verifying…", "cyan"),
    "": ("not verified", "dim"),
}


def chain_rows(points: list[PointInfo]) -> list[tuple[PointInfo, str]]:
    """Points in tree order with their tree glyphs: each point one level under its parent.

    Newest chain first; under each point the points built on it, oldest first. A full
    point is ●, an incremental ○, and ◌ an incremental whose parent is not listed.
    """
    rows = tree_rows(
        points, key=lambda p: p.id, parent=lambda p: p.parent, order=lambda p: p.created
    )
    out: list[tuple[PointInfo, str]] = []
    for point, connector in rows:
        if point.kind == "full":
            marker = "●"
        else:
            marker = "○" if connector else "◌"
        out.append((point, connector + marker))
    return out


def verify_cell(state: str) -> Text:
    label, style = VERIFY_STYLES.get(state, (state, ""))
    return shown(label, style=style)  # an unknown state is a server's word


class ChainScreen(LaminaScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter,f", "browse", "Files", id="chain.browse", key_display="enter/f"),
        Binding("v", "verify", "Verify", id="chain.verify"),
        Binding("V", "verify_deep", "Deep verify", id="chain.verify-deep", show=False),
        Binding("r", "restore", "Restore", id="chain.restore"),
        Binding("m", "mount", "Mount", id="chain.mount"),
        Binding("m", "unmount", "Unmount", id="chain.unmount"),
        Binding("d", "delete", "Delete", id="chain.delete"),
        Binding("p", "protect", "Protect", id="chain.protect", show=False),
        Binding("b", "backup", "Back up", id="chain.backup"),
        Binding("c", "cancel", "Cancel job", id="chain.cancel", show=False),
        Binding("equals_sign", "compare", "Compare", id="chain.compare", key_display="="),
        Binding("j", "cursor_down", "Down", show=False, id="chain.cursor-down"),
        Binding("k", "cursor_up", "Up", show=False, id="chain.cursor-up"),
    ]

    AUTO_FOCUS = "#points"

    def __init__(self, volume: ClusterVolume) -> None:
        super().__init__()
        self.volume = volume
        self.points: list[PointInfo] = []
        self.mounts: dict[str, str] = {}
        self.loaded = False

    def crumbs(self) -> list[str]:
        return [
            "clusters",
            self.volume.cluster,
            f"{self.volume.namespace}/{self.volume.name}",
            "chain",
        ]

    def compose(self) -> Iterable[Any]:
        yield self.compose_top()
        with Vertical(id="chain-body"):
            table = LaminaTable(id="points", cursor_type="row")
            yield table
            with Horizontal(id="point-detail"):
                yield Static(id="point-info")
                with VerticalScroll(id="point-manifest"):
                    yield Static(id="manifest")
        yield from self.compose_bottom()

    @property
    def table(self) -> DataTable[Any]:
        return self.query_one("#points", DataTable)

    def on_mount(self) -> None:
        table = self.table
        table.add_column("POINT", key="point")
        table.add_column("CREATED (UTC)", key="created")
        table.add_column("AGE", key="age")
        table.add_column("WRITTEN", key="written")
        table.add_column("CHANGED", key="changed")
        table.add_column("DEDUP", key="dedup")
        table.add_column("VERIFY", key="verify")
        table.focus()
        table.loading = True
        self.load()
        self.set_interval(self.lamina.age_interval, self.refresh_ages)

    def refresh_ages(self) -> None:
        """Ages grow while the screen is open: '3m ago' becomes '4m ago'."""
        now = self.now()
        for point in self.points:
            try:
                self.table.update_cell(point.id, "age", shown(fmt.age(point.created, now)))
            except Exception:  # the row is being redrawn
                pass

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        caps = self.lamina.capabilities
        if action == "browse" and not caps.browse:
            return False
        if action in ("mount", "unmount"):
            # One key, labelled for what it does to the point under the cursor.
            if not caps.mount:
                return False
            point = self.current_point()
            mounted = point is not None and point.id in self.mounts
            return mounted if action == "unmount" else not mounted
        if action == "delete" and not caps.delete:
            return False
        if action == "protect" and not caps.protect:
            return False
        return super().check_action(action, parameters)

    # ------------------------------------------------------------------ loading

    @work(thread=True, exclusive=True, group="points")
    def load(self) -> None:
        try:
            points = self.service.list_points(self.volume.key)
            mounts = mounted_points(self.service) if self.lamina.capabilities.mount else {}
        except Exception as e:
            self.post_message(PointsLoaded(self.volume.key, [], plain_error(e)))
            return
        self.post_message(MountsChanged(mounts))
        self.post_message(PointsLoaded(self.volume.key, points))

    @on(MountsChanged)
    def _mounts_changed(self, message: MountsChanged) -> None:
        self.mounts = message.mounts
        self.refresh_bindings()

    @on(PointsLoaded)
    def _loaded(self, message: PointsLoaded) -> None:
        table = self.table
        table.loading = False
        self.refresh_bindings()  # the focused widget was hidden while loading
        self.loaded = True
        if message.error:
            self.fail(f"list the points of {self.volume.key}", message.error)
        current = self.current_point()
        self.points = message.points
        table.clear()
        now = self.now()
        for point, glyph in chain_rows(self.points):
            label = Text()
            label.append(glyph + " ", style="bold cyan" if point.kind == "full" else "cyan")
            label.append_text(shown(point.id, style="bold" if point.kind == "full" else ""))
            if point.protected:
                label.append(" protected", style="yellow")
            if point.id in self.mounts:
                label.append(" mounted", style="magenta")
            table.add_row(
                label,
                shown(fmt.short_time(point.created)),
                shown(fmt.age(point.created, now)),
                Text(fmt.size(point.bytes_stored), justify="right"),
                Text(fmt.percent(point.changed_share), justify="right"),
                Text(fmt.size(point.bytes_deduplicated), justify="right"),
                verify_cell(point.verify_state),
                key=point.id,
            )
        if current is not None and current.id in {p.id for p in self.points}:
            table.move_cursor(row=table.get_row_index(current.id))
        self.show_detail(self.current_point())

    def current_point(self) -> PointInfo | None:
        table = self.table
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:
            return None
        return next((p for p in self.points if p.id == key), None)

    @on(DataTable.RowHighlighted, "#points")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail(self.current_point())
        self.refresh_bindings()  # m mounts or unmounts the point under the cursor

    @on(DataTable.RowSelected, "#points")
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_browse()

    def show_detail(self, point: PointInfo | None) -> None:
        info = self.query_one("#point-info", Static)
        manifest = self.query_one("#manifest", Static)
        if point is None:
            manifest.update("")
            if self.loaded:
                info.update(
                    Text.assemble(
                        shown(f"No backups of {self.volume.namespace}/{self.volume.name} yet."),
                        "\nPress b to back it up.",
                        style="dim",
                    )
                )
            return
        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="dim")
        facts.add_column()
        rows: list[tuple[str, Text | str]] = [
            ("point", shown(point.id, style="bold")),
            ("kind", shown(point.kind)),
            ("parent", shown(point.parent or "-")),
            ("created", shown(fmt.timestamp(point.created))),
            ("capacity", fmt.size(point.capacity)),
            (
                "read",
                f"{fmt.size(point.bytes_read)} ({fmt.percent(point.changed_share)} of the volume)",
            ),
            ("new data", fmt.size(point.bytes_new)),
            ("stored", f"{fmt.size(point.bytes_stored)} compressed"),
            ("deduplicated", fmt.size(point.bytes_deduplicated)),
            ("took", f"{point.duration:.2f} s"),
            ("verify", verify_cell(point.verify_state)),
            ("protected", "yes: kept by delete and retention" if point.protected else "no"),
        ]
        if point.id in self.mounts:
            rows.append(("mounted at", shown(self.mounts[point.id], style="magenta")))
        for name, value in rows:
            facts.add_row(name, value)
        info.update(facts)
        manifest.update(
            Group(
                Text("manifest", style="bold underline"),
                # ASCII JSON: every control, bidi or format character in it comes \u-escaped.
                JSON.from_data(point.manifest, indent=2, sort_keys=True, ensure_ascii=True),
            )
        )

    def jobs_changed(self, views: list[JobView]) -> None:
        ids = {p.id for p in self.points}
        for view in views:
            if view.kind == "backup" and view.volume_key == self.volume.key and view.finished:
                self.load()
                return
            if view.kind in ("verify", "delete") and view.point in ids:
                self.load()
                return

    # ------------------------------------------------------------------ actions

    def action_refresh(self) -> None:
        self.load()

    def action_cursor_down(self) -> None:
        self.table.action_cursor_down()

    def action_cursor_up(self) -> None:
        self.table.action_cursor_up()

    def _point_or_warn(self) -> PointInfo | None:
        point = self.current_point()
        if point is None:
            self.notify("no point selected", severity="warning")
        return point

    def action_browse(self) -> None:
        point = self._point_or_warn()
        if point is None:
            return
        if not self.lamina.capabilities.browse:
            self.notify("browsing files is not available with this backend", severity="warning")
            return
        from .files import FilesScreen

        self.app.push_screen(FilesScreen(point))

    def _verify(self, deep: bool) -> None:
        point = self._point_or_warn()
        if point is None:
            return
        self.lamina.start_job(
            f"verify {point.id}",
            lambda: self.service.start_verify(point.id, deep=deep).id,
        )
        self.table.update_cell(point.id, "verify", verify_cell("verifying"))

    def action_verify(self) -> None:
        self._verify(False)

    def action_verify_deep(self) -> None:
        self._verify(True)

    def action_restore(self) -> None:
        point = self._point_or_warn()
        if point is None:
            return
        suggestion = os.path.join(
            self.lamina.work_dir, fmt.printable(f"{self.volume.name}-{point.id[:8]}.img")
        )

        def start(target: str, overwrite: bool) -> str:
            return start_restore(
                self.service, point.id, self.lamina.resolve_path(target), overwrite
            )

        def started(job_id: str | None) -> None:
            if job_id:
                self.lamina.follow_job(job_id, f"restore {point.id}")

        self.app.push_screen(
            RestoreScreen(
                f"Restore point {point.id} to a file or block device",
                suggestion,
                start,
                hint="a new file; lamina writes it sparse and checks the image digest",
            ),
            started,
        )

    def action_unmount(self) -> None:
        point = self._point_or_warn()
        if point is None or point.id not in self.mounts:
            return
        where = self.mounts[point.id]

        def answer(yes: bool | None) -> None:
            if yes:
                self.unmount_point(point.id)

        self.app.push_screen(
            ConfirmScreen(
                f"Unmount point {point.id} from {where}?",
                "Programs still reading files under it lose them.",
                confirm_label="Unmount",
                cancel_label="Keep mounted",
            ),
            answer,
        )

    def action_mount(self) -> None:
        point = self._point_or_warn()
        if point is None:
            return
        if point.id in self.mounts:
            self.action_unmount()
            return
        suggestion = os.path.join(self.lamina.work_dir, fmt.printable(f"mnt-{point.id[:8]}"))

        def mount(target: str | None) -> None:
            if target:
                self.mount_point(point.id, self.lamina.resolve_path(target))

        self.app.push_screen(PromptScreen(f"Mount point {point.id} at", suggestion), mount)

    @work(thread=True, group="mount")
    def mount_point(self, point_id: str, target: str) -> None:
        where = self.call_safely(
            f"mount {point_id}", lambda: mount_point(self.service, point_id, target)
        )
        if where is not None:
            self.app.call_from_thread(self.notify, f"point {point_id} mounted at {where}")
        self.post_message(MountsChanged(mounted_points(self.service)))
        self.load()

    @work(thread=True, group="mount")
    def unmount_point(self, point_id: str) -> None:
        def unmount() -> bool:
            unmount_point(self.service, point_id)
            return True

        if self.call_safely(f"unmount {point_id}", unmount):
            self.app.call_from_thread(self.notify, f"point {point_id} unmounted")
        self.post_message(MountsChanged(mounted_points(self.service)))
        self.load()

    def action_delete(self) -> None:
        point = self._point_or_warn()
        if point is None:
            return
        if point.protected:
            self.notify(
                f"point {point.id} is protected: unprotect it first (p)", severity="warning"
            )
            return
        children = [p for p in self.points if p.parent == point.id]
        text = (
            (
                f"{plural(len(children), 'point')} built on it "
                f"{'takes' if len(children) == 1 else 'take'} over its data and restore"
                f"{'s' if len(children) == 1 else ''} as before."
            )
            if children
            else "No point is built on it."
        )

        def delete(yes: bool | None) -> None:
            if yes:
                self.lamina.start_job(
                    f"delete {point.id}", lambda: self.service.start_delete(point.id).id
                )

        self.app.push_screen(
            ConfirmScreen(
                f"Delete point {point.id}?", text, confirm_label="Delete", cancel_label="Keep"
            ),
            delete,
        )

    def action_protect(self) -> None:
        point = self._point_or_warn()
        if point is not None:
            self.set_protected(point.id, not point.protected)

    @work(thread=True, group="protect")
    def set_protected(self, point_id: str, protected: bool) -> None:
        def change() -> bool:
            if protected:
                self.service.protect(point_id)
            else:
                self.service.unprotect(point_id)
            return True

        if self.call_safely(f"{'protect' if protected else 'unprotect'} {point_id}", change):
            self.load()

    def action_backup(self) -> None:
        v = self.volume
        if not v.in_cluster:
            self.notify(f"{v.key} is not in the cluster any more", severity="warning")
            return
        self.lamina.start_job(
            f"back up {v.key}",
            lambda: self.service.start_volume_backup(v.cluster, v.namespace, v.name).id,
        )

    def action_cancel(self) -> None:
        view = self.running_job_for(volume=self.volume.key)
        point = self.current_point()
        if view is None and point is not None:
            view = self.running_job_for(point=point.id)
        if view is None:
            self.notify("no job is running here", severity="warning")
            return
        self.lamina.cancel_job(view.id)

    def action_compare(self) -> None:
        from .compare import ask_and_compare

        ask_and_compare(self, self.volume.key)
