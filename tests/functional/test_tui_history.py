"""The TUI's history screen, driven by Textual's pilot over a real catalog and service, in
process and through a real lamina.v1 server on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.coordinate import Coordinate
from textual.widgets import Static

from lamina.backend.catalog import Catalog, JobRecord
from lamina.backend.service import Service, init_repository
from lamina.tui.app import LaminaApp, make_app
from lamina.tui.screens.clusters import ClustersScreen
from lamina.tui.screens.dialogs import GotoScreen, HelpScreen
from lamina.tui.screens.history import HistoryJobScreen, HistoryScreen
from tests.functional.test_tui import SIZE, palette_settled, screen_of, wait_for

pytestmark = pytest.mark.asyncio
HOSTILE = "[bold]vol\x1b]0;owned\x07\u202e\r\nforged"
NOW = float(int(time.time()))


def _seed(url: str) -> None:
    catalog = Catalog.open(url)
    try:
        for job_id, kind, state, volume, ago, error in (
            ("h1", "backup", "succeeded", "local/a/one", 300, None),
            ("h2", "verify", "succeeded", None, 200, None),
            ("h3", "backup", "failed", HOSTILE, 100, f"failed: {HOSTILE}"),
        ):
            record = JobRecord(
                id=job_id,
                kind=kind,
                state=state,
                volume=volume,
                created_at=NOW - ago,
                started_at=NOW - ago + 1,
                ended_at=NOW - ago + 61,
                bytes_read=ago * 1024,
                error=error,
                host="mover",
                pid=77,
                cost_usd=0.001 * ago,
            )
            record.requests["put"] = ago
            catalog.record_job(JobRecord(**{**record.__dict__, "state": "running"}), "started")
            catalog.record_job(record, error or "done", at=NOW - ago + 61)
    finally:
        catalog.close()


@pytest.fixture(params=["in-process", "grpc"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LaminaApp]:
    catalog = f"sqlite:///{tmp_path}/catalog.sqlite"
    _seed(catalog)
    init_repository(str(tmp_path / "repo"))
    service = Service(str(tmp_path / "repo"), local_root=str(tmp_path / "cluster"), catalog=catalog)
    try:
        if request.param == "grpc":
            from lamina.backend.service.remote import ApiClient, RemoteService
            from tests.support.api_server import TOKEN, running_server

            with running_server(service) as server:
                remote = RemoteService(ApiClient(server.address, token=TOKEN))
                yield make_app(remote)
                remote.close()
        else:
            yield make_app(service)
    finally:
        service.close()


def _rows(screen: HistoryScreen) -> list[str]:
    table = screen.table
    return [
        str(table.coordinate_to_cell_key(Coordinate(i, 0)).row_key.value)
        for i in range(table.row_count)
    ]


async def test_history_screen_filter_sort_details_and_palette(app: LaminaApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ClustersScreen), "clusters")
        await pilot.press("H")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, HistoryScreen) and bool(app.screen.items),
            "the history",
        )
        history = screen_of(app, HistoryScreen)
        assert _rows(history) == ["h3", "h2", "h1"]  # newest first
        cells = [str(c) for c in history.table.get_row("h3")]
        assert cells[:2] == ["backup", "failed"]
        assert "\\x1b" in cells[2] and "\x1b" not in "".join(cells)  # drawn escaped
        assert "[bold]" in cells[2]  # a Text, never markup: drawn as it is written
        assert cells[7] == "100" and "failed:" in cells[9]

        await pilot.press("slash", *"verify")
        assert _rows(history) == ["h2"]
        await pilot.press("escape")
        assert _rows(history) == ["h3", "h2", "h1"]
        await pilot.press("s")  # by kind
        assert history.sort_column == "kind"
        assert _rows(history)[-1] == "h2"
        await pilot.press("S")
        assert _rows(history)[0] == "h2"

        history.table.move_cursor(row=_rows(history).index("h3"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryJobScreen), "the details")
        details = app.screen.query_one("#history-job-detail", Static)
        await wait_for(pilot, lambda: "state changes" in str(details.render()), "the job")
        text = str(details.render())
        assert "\x1b" not in text and "\u202e" not in text and "\\x1b" in text
        assert "put 100" in text and "mover, pid 77" in text
        assert "running  started" in text and "failed  failed: [bold]vol" in text
        await pilot.press("escape")
        assert app.screen is history

        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "the help")
        await pilot.press("escape")
        await pilot.press("escape")  # back to the clusters
        await wait_for(pilot, lambda: isinstance(app.screen, ClustersScreen), "clusters")

        await pilot.press("colon")
        await wait_for(pilot, lambda: isinstance(app.screen, GotoScreen), "the command line")
        await pilot.press(*"history", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), ":history")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ClustersScreen), "clusters")

        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: palette_settled(app, ""), "the command palette")
        await pilot.press(*"go to history")
        await wait_for(pilot, lambda: palette_settled(app, "Go to history"), "the palette")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), "the palette's view")
