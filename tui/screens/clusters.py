"""Clusters: the kubeconfig's contexts and the local cluster, and whether each one answers."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from lamina.backend.errors import UsageError
from lamina.backend.service import ClusterSummary, Reachability

from ..formatting import shown
from ..messages import ClustersChecked, ClustersLoaded
from .base import Column, TableScreen, plain_error


def _status(check: Reachability | None) -> Text:
    if check is None:
        return Text("checking…", style="dim italic")
    if check.ok:
        return Text("● reachable", style="bold green")
    return Text("● unreachable", style="bold red")


class ClustersScreen(TableScreen[ClusterSummary]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Volumes", id="clusters.open", key_display="enter", priority=True),
        Binding("ctrl+r", "refresh", "Check again", id="clusters.refresh"),
    ]

    COLUMNS: ClassVar[list[Column[Any]]] = [
        Column(
            "current", " ", lambda c: Text("*", style="bold yellow") if c.current else "", width=1
        ),
        Column("name", "CLUSTER", lambda c: shown(c.name, style="bold"), lambda c: c.name),
        Column("kind", "KIND", lambda c: shown(c.kind), lambda c: c.kind),
        Column("server", "SERVER", lambda c: shown(c.server or "-"), lambda c: c.server or ""),
        Column(
            "namespace",
            "NAMESPACE",
            lambda c: shown(c.namespace or "-"),
            lambda c: c.namespace or "",
        ),
        Column("status", "STATUS", lambda c: _status(None), width=14),
        Column("detail", "DETAIL", lambda c: ""),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.checks: dict[str, Reachability] = {}
        self.loaded = False

    def crumbs(self) -> list[str]:
        return ["clusters"]

    def compose(self) -> Iterable[Any]:
        yield self.compose_top()
        yield from self.compose_table()
        yield Static(id="cluster-detail")
        yield from self.compose_bottom()

    def on_mount(self) -> None:
        self.setup_table()
        self.table.loading = True
        self.load()

    def item_key(self, item: ClusterSummary) -> str:
        return item.name

    def item_text(self, item: ClusterSummary) -> str:
        return f"{item.name} {item.kind} {item.server or ''} {item.namespace or ''}"

    @work(thread=True, exclusive=True, group="clusters")
    def load(self) -> None:
        clusters = self.call_safely("list clusters", self.service.list_clusters)
        self.post_message(ClustersLoaded(clusters or []))
        if clusters:
            names = [c.name for c in clusters]
            checks = self.call_safely("check clusters", lambda: self.check_each(names))
            self.post_message(ClustersChecked(checks or {}))

    def check_each(self, names: list[str]) -> dict[str, Reachability]:
        """A check of every cluster listed. A name the backend refuses to check (a context
        name breaking its rules, say) is that cluster's failed check, in the backend's own
        line; it does not cost the other clusters their answer."""
        timeout = self.lamina.check_timeout
        try:
            return self.service.check_clusters(names, timeout=timeout)
        except UsageError:
            if len(names) == 1:
                raise

        def one(name: str) -> dict[str, Reachability]:
            try:
                return self.service.check_clusters([name], timeout=timeout)
            except UsageError as e:
                return {name: Reachability(False, plain_error(e), 0.0)}

        # In parallel: each check may take up to the timeout.
        with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
            return {k: v for result in pool.map(one, names) for k, v in result.items()}

    @on(ClustersLoaded)
    def _loaded(self, message: ClustersLoaded) -> None:
        self.table.loading = False
        self.refresh_bindings()  # the focused widget was hidden while loading
        self.checks = {}
        self.show_items(message.clusters)
        if self.current_key() is None or not self.loaded:
            preferred = next((c for c in message.clusters if c.current), None)
            if preferred is not None:
                self.table.move_cursor(row=self.table.get_row_index(preferred.name))
        self.loaded = True

    @on(ClustersChecked)
    def _checked(self, message: ClustersChecked) -> None:
        self.checks.update(message.results)
        self.table_changed()
        self.show_detail()

    @on(DataTable.RowHighlighted, "#table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail()

    def show_detail(self) -> None:
        """The whole answer of the highlighted cluster, which the table may cut short."""
        cluster = self.current_item()
        line = Text()
        if cluster is not None:
            check = self.checks.get(cluster.name)
            line.append_text(shown(cluster.name, style="bold"))
            line.append(": ", style="bold")
            if check is None:
                line.append("checking…", style="dim italic")
            else:
                line.append_text(shown(check.detail, style="green" if check.ok else "red"))
            if cluster.kind == "kubernetes":
                line.append(
                    "\nKubernetes volumes are backed up by a data-mover Job in the cluster; "
                    "lamina shows the command when you press b on one.",
                    style="dim",
                )
        self.query_one("#cluster-detail", Static).update(line)

    def table_changed(self) -> None:
        for item in self.visible_items():
            check = self.checks.get(item.name)
            if check is None and not self.loaded:
                continue
            self.update_cell(item.name, "status", _status(check))
            if check is not None:
                detail = shown(check.detail, style="" if check.ok else "red")
                if check.ok and check.seconds >= 0.001:
                    detail.append(f"  ({check.seconds * 1000:.0f} ms)", style="dim")
                self.update_cell(item.name, "detail", detail, widen=True)

    def action_open(self) -> None:
        cluster = self.current_item()
        if cluster is None:
            return
        from .volumes import VolumesScreen

        self.app.push_screen(VolumesScreen(cluster.name))

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_refresh(self) -> None:
        self.table.loading = True
        self.load()
