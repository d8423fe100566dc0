"""The TUI's schedules screen and the volumes screen's last-good column, driven by
Textual's pilot over a real catalog and service, in process and through a real lamina.v1
server on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.text import Text
from textual.coordinate import Coordinate

from lamina.backend.catalog import Catalog, JobRecord
from lamina.backend.catalog.schedules import update_schedule
from lamina.backend.service import Schedules, Service, init_repository
from lamina.tui.app import LaminaApp, make_app
from lamina.tui.screens.clusters import ClustersScreen
from lamina.tui.screens.dialogs import GotoScreen, HelpScreen
from lamina.tui.screens.schedules import SchedulesScreen
from lamina.tui.screens.volumes import VolumesScreen
from tests.functional.test_tui import SIZE, screen_of, wait_for

pytestmark = pytest.mark.asyncio
HOSTILE = "[bold]disk\x1b]0;owned\x07\u202e\r\nforged"
NOW = float(int(time.time()))
HOUR = 3600.0


@dataclass
class Lab:
    app: LaminaApp
    catalog_url: str


def _seed(catalog_url: str, repo: str, tmp: Path) -> None:
    """Three local volumes: 'late' is backed up hourly but its last good backup is three
    hours old; 'fresh' hourly and backed up half an hour ago; 'unscheduled' two hours ago,
    within the 24 hours a volume without a schedule may go; plus a prune schedule."""
    schedules = Schedules(catalog_url)
    root = str(tmp / "cluster")
    for name in ("late", "fresh", "unscheduled"):
        (tmp / f"{name}.img").write_bytes(bytes(64 * 1024))
    for name in ("late", "fresh"):
        schedules.add(
            f"{name}-hourly",
            repository=repo,
            every="1h",
            volume=f"apps/{name}",
            source=str(tmp / f"{name}.img"),
            local_root=root,
            now=NOW - 10,
        )
    schedules.add("weekly-prune", repository=repo, cron="0 3 * * 0", prune=True, now=NOW)
    catalog = Catalog.open(catalog_url)
    try:
        update_schedule(
            catalog,
            "weekly-prune",
            last_run=NOW - 120,
            last_state="failed",
            last_error=f"prune failed: {HOSTILE}",
        )
        for volume, ago in (("late", 3 * HOUR), ("fresh", HOUR / 2), ("unscheduled", 2 * HOUR)):
            ended = NOW - ago
            catalog.record_job(
                JobRecord(
                    id=f"job-{volume}",
                    kind="backup",
                    state="succeeded",
                    repository=repo,
                    volume=f"local/apps/{volume}",
                    created_at=ended - 30,
                    started_at=ended - 29,
                    ended_at=ended,
                )
            )
    finally:
        catalog.close()


@pytest.fixture(params=["in-process", "grpc"])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    catalog = f"sqlite:///{tmp_path}/catalog.sqlite"
    repo = str(tmp_path / "repo")
    init_repository(repo)
    _seed(catalog, repo, tmp_path)
    root = str(tmp_path / "cluster")
    service = Service(repo, local_root=root, catalog=catalog)
    service.add_local_volume("apps", "unscheduled", str(tmp_path / "unscheduled.img"))
    try:
        if request.param == "grpc":
            from lamina.backend.service.remote import ApiClient, RemoteService
            from tests.support.api_server import TOKEN, running_server

            with running_server(service) as server:
                remote = RemoteService(ApiClient(server.address, token=TOKEN))
                yield Lab(make_app(remote, clock=lambda: NOW), catalog)
                remote.close()
        else:
            yield Lab(make_app(service, clock=lambda: NOW), catalog)
    finally:
        service.close()


def _rows(screen: SchedulesScreen | VolumesScreen) -> list[str]:
    table = screen.table
    return [
        str(table.coordinate_to_cell_key(Coordinate(i, 0)).row_key.value)
        for i in range(table.row_count)
    ]


def _cells(screen: SchedulesScreen, name: str) -> dict[str, str]:
    keys = [c.key for c in screen.columns()]
    return {k: str(v) for k, v in zip(keys, screen.table.get_row(name), strict=True)}


async def test_schedules_screen_lists_filters_and_pauses_resumes_runs_now(lab: Lab) -> None:
    app = lab.app
    stored = Schedules(lab.catalog_url)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ClustersScreen), "clusters")
        await pilot.press("T")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, SchedulesScreen) and bool(app.screen.items),
            "the schedules",
        )
        screen = screen_of(app, SchedulesScreen)
        assert _rows(screen) == ["fresh-hourly", "late-hourly", "weekly-prune"]
        late = _cells(screen, "late-hourly")
        assert late["volume"] == "apps/late" and late["when"] == "every 1h"
        assert late["next"] == "in 59m" and late["last"] == "never" and late["state"] == "active"
        prune = _cells(screen, "weekly-prune")
        assert prune["volume"] == "prune" and prune["last"] == "2m ago"
        assert prune["result"].startswith("failed  prune failed: [bold]disk\\x1b]0;owned")
        assert "\x1b" not in prune["result"] and "\u202e" not in prune["result"]

        await pilot.press("slash", *"prune")
        assert _rows(screen) == ["weekly-prune"]
        await pilot.press("escape")
        assert _rows(screen) == ["fresh-hourly", "late-hourly", "weekly-prune"]

        screen.table.move_cursor(row=_rows(screen).index("late-hourly"))
        # Each change is drawn from what the service answered once it was stored.
        await pilot.press("p")
        await wait_for(
            pilot, lambda: _cells(screen, "late-hourly")["state"] == "paused", "paused shown"
        )
        assert stored.get("late-hourly").paused
        assert _cells(screen, "late-hourly")["next"] == "paused"
        await pilot.press("n")
        await wait_for(
            pilot,
            lambda: _cells(screen, "late-hourly")["state"] == "paused +run now",
            "run-now shown",
        )
        assert stored.get("late-hourly").run_now_pending
        await pilot.press("r")
        await wait_for(
            pilot,
            lambda: _cells(screen, "late-hourly")["state"] == "active +run now",
            "resumed shown",
        )
        assert not stored.get("late-hourly").paused
        assert not stored.get("fresh-hourly").paused  # only the selected one changed

        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "the help")
        keys = {
            b.binding.description: b.binding.key
            for b in app.screen.bindings.values()  # type: ignore[attr-defined]
        }
        assert keys["Pause"] == "p" and keys["Resume"] == "r" and keys["Run now"] == "n"
        await pilot.press("escape", "escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ClustersScreen), "clusters")

        await pilot.press("colon")
        await wait_for(pilot, lambda: isinstance(app.screen, GotoScreen), "the command line")
        await pilot.press(*"schedules", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, SchedulesScreen), ":schedules")


async def test_last_good_column_is_red_when_older_than_the_schedule_allows(lab: Lab) -> None:
    app = lab.app
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, ClustersScreen) and bool(app.screen.items),
            "clusters",
        )
        await pilot.press("colon")
        await wait_for(pilot, lambda: isinstance(app.screen, GotoScreen), "the command line")
        await pilot.press(*"volumes local", "enter")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, VolumesScreen) and app.screen.loaded,
            "the volumes",
        )
        screen = screen_of(app, VolumesScreen)
        index = [c.key for c in screen.columns()].index("good")

        def good(volume: str) -> Text:
            cell = screen.table.get_row(f"local/apps/{volume}")[index]
            assert isinstance(cell, Text)
            return cell

        late, fresh, unscheduled = good("late"), good("fresh"), good("unscheduled")
        # Three hours old against an hourly schedule (two hours allowed): red.
        assert str(late) == "3h ago" and "red" in str(late.style)
        assert str(fresh) == "30m ago" and "red" not in str(fresh.style)
        # No schedule: 24 hours allowed, and two hours is within them.
        assert str(unscheduled) == "2h ago" and "red" not in str(unscheduled.style)
