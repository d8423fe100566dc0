"""The bar on top of every screen: where the user is, which repository, how many jobs run."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..formatting import shown

CRUMB = " \N{SINGLE RIGHT-POINTING ANGLE QUOTATION MARK} "


class TopBar(Static):
    def __init__(self, crumbs: list[str], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.crumbs = crumbs
        self.repository = ""
        self.running = 0

    def on_mount(self) -> None:
        self.repository = getattr(self.app, "repository_label", "")
        self._draw()

    def set_crumbs(self, crumbs: list[str]) -> None:
        self.crumbs = crumbs
        self._draw()

    def set_running(self, running: int) -> None:
        if running != self.running:
            self.running = running
            self._draw()

    def _draw(self) -> None:
        left = Text()
        left.append(" lamina ", style="bold reverse")
        for crumb in self.crumbs:
            left.append(CRUMB, style="dim")
            left.append_text(shown(crumb, style="bold"))  # cluster and volume names
        right = Text(no_wrap=True, overflow="ellipsis", justify="right")
        if self.running:
            right.append(
                f"{self.running} job{'s' if self.running > 1 else ''} running", style="bold cyan"
            )
            right.append("  ")
        right.append_text(shown(self.repository, style="dim"))
        grid = Table.grid(expand=True)
        grid.add_column(ratio=3, no_wrap=True, overflow="ellipsis")
        grid.add_column(ratio=2, no_wrap=True, overflow="ellipsis", justify="right")
        grid.add_row(left, right)
        self.update(grid)
