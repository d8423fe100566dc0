"""The TUI's side-by-side comparison of two repositories, driven by Textual's pilot.

Real repositories in temporary folders, a volume of the local cluster, and the app in
process and over a real lamina.v1 server on loopback (the `lamina tui --server` path).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Static

from lamina.backend.service import (
    Job,
    JobState,
    JobView,
    LaminaService,
    PointInfo,
    Service,
    init_repository,
)
from lamina.backend.service.copies import start_copy
from lamina.tui.app import LaminaApp, make_app
from lamina.tui.screens.clusters import ClustersScreen
from lamina.tui.screens.compare import CompareScreen
from lamina.tui.screens.dialogs import HelpScreen, PromptScreen
from lamina.tui.screens.volumes import VolumesScreen
from tests.support.api_server import TOKEN, running_server, slow_image, slow_repository
from tests.support.volumes import make_volume, scribble

pytestmark = pytest.mark.asyncio
SIZE = (150, 40)
MiB = 1024 * 1024
VOLUME = "local/demo/app-data"


@dataclass
class Pair:
    root: Path
    here: Service  # the app's repository
    address: str | None  # a server over ``here``, or None: in process

    def app(self) -> LaminaApp:
        service: LaminaService = self.here
        if self.address is not None:
            from lamina.backend.service.remote import ApiClient, RemoteService

            service = RemoteService(ApiClient(self.address, token=TOKEN))
        return make_app(service, work_dir=str(self.root))


def finished(job: Job) -> PointInfo:
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    point: PointInfo = job.result
    return point


def pair_of(request: pytest.FixtureRequest, root: Path, here: Service) -> Iterator[Pair]:
    try:
        if request.param == "grpc":
            with running_server(here, allowed_paths=[str(root)]) as server:
                yield Pair(root, here, server.address)
        else:
            yield Pair(root, here, None)
    finally:
        for job in here.jobs():
            job.cancel()
            job.wait(10)
        here.close()


@pytest.fixture(params=["in-process", "grpc"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    init_repository(str(tmp_path / "here"), grid_size=256 * 1024)
    here = Service(str(tmp_path / "here"), local_root=str(tmp_path / "cluster"))
    yield from pair_of(request, tmp_path, here)


async def wait_for(
    pilot: Pilot[None], condition: Callable[[], object], what: str, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def copies(app: LaminaApp, *, done: bool) -> list[JobView]:
    return [v for v in app.job_views.values() if v.kind == "copy" and v.finished == done]


async def open_volumes(pilot: Pilot[None], app: LaminaApp) -> None:
    await wait_for(
        pilot, lambda: isinstance(app.screen, ClustersScreen) and app.screen.loaded, "clusters"
    )
    await pilot.press("enter")
    await wait_for(
        pilot, lambda: isinstance(app.screen, VolumesScreen) and app.screen.loaded, "volumes"
    )


async def open_comparison(pilot: Pilot[None], app: LaminaApp, other: str) -> CompareScreen:
    """From the volumes screen: '=' and the other repository typed in the prompt."""
    await pilot.press("equals_sign")
    await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the repository prompt")
    await pilot.press("ctrl+u", *other, "enter")
    await wait_for(
        pilot,
        lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded,
        "the comparison",
    )
    assert isinstance(app.screen, CompareScreen)
    return app.screen


def summary(screen: CompareScreen) -> str:
    return str(screen.query_one("#compare-summary", Static).render())


def cells(screen: CompareScreen) -> dict[str, tuple[str, str]]:
    table = screen.table
    return {
        str(key.value): (str(table.get_cell(key, "here")), str(table.get_cell(key, "there")))
        for key in table.rows
    }


async def test_compare_side_by_side_copy_what_is_missing_and_refresh(pair: Pair) -> None:
    root = pair.root
    image = make_volume(root / "app.img", 2 * MiB, seed=3)
    pair.here.add_local_volume("demo", "app-data", str(image))
    first = finished(pair.here.start_volume_backup("local", "demo", "app-data"))
    scribble(image, 4, 64 * 1024, seed=1)
    second = finished(pair.here.start_volume_backup("local", "demo", "app-data"))
    other_url = str(root / "other")
    init_repository(other_url, grid_size=256 * 1024)
    other = Service(other_url)
    finished(start_copy(pair.here, other, [first.id]))
    scribble(image, 4, 64 * 1024, seed=2)
    theirs = finished(other.start_backup(str(image), VOLUME, parent="none"))

    app = pair.app()
    async with app.run_test(size=SIZE) as pilot:
        await open_volumes(pilot, app)
        # A repository that is not there: one line on the screen, nothing else breaks.
        missing = await open_comparison(pilot, app, "nowhere")
        assert "cannot compare" in summary(missing) and "\n" not in summary(missing)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, VolumesScreen), "the volumes")

        screen = await open_comparison(pilot, app, "other")
        assert screen.other == other_url  # typed relative to the working folder
        assert cells(screen) == {
            first.id: ("✓", "✓"),
            second.id: ("✓", "missing"),
            theirs.id: ("missing", "✓"),
        }
        text = summary(screen)
        assert f"newest common    {first.id}" in text
        assert "this repository is behind by 1 point" in text
        assert "the other is behind by 1 point" in text

        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "the help")
        assert isinstance(app.screen, HelpScreen)
        listed = {a.binding.description for a in app.screen.bindings.values() if a.binding.id}
        assert {"Copy missing", "Cancel copy", "Compare again"} <= listed
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, "the comparison again")

        before = {v.id for v in copies(app, done=True)}  # the copy made above, in process
        await pilot.press("y")  # one job each way
        await wait_for(pilot, lambda: len(copies(app, done=True)) == len(before) + 2, "copies")
        made = [v for v in copies(app, done=True) if v.id not in before]
        assert [v.state for v in made] == ["succeeded", "succeeded"], [v.error for v in made]
        await wait_for(
            pilot,
            lambda: (
                screen.comparison is not None
                and not (screen.comparison.only_left or screen.comparison.only_right)
            ),
            "the view to refresh",
        )
        assert set(cells(screen).values()) == {("✓", "✓")}
        assert "this repository holds every point of the other" in summary(screen)
        assert "the other holds every point of this repository" in summary(screen)
    ids = {first.id, second.id, theirs.id}
    assert {p.id for p in other.list_points()} == ids
    assert {p.id for p in pair.here.list_points()} == ids


@pytest.fixture(params=["in-process"])  # cancelling over the API: tests/functional/test_api_copy.py
def slow_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    init_repository(str(tmp_path / "here"), grid_size=256 * 1024)
    here = Service(str(tmp_path / "here"), local_root=str(tmp_path / "cluster"))
    image = slow_image(tmp_path / "slow.img", 4 * MiB, seed=8)
    here.add_local_volume("demo", "app-data", str(image))
    finished(here.start_volume_backup("local", "demo", "app-data"))
    slow_repository(tmp_path / "slow")  # level 19: every piece re-encoded slowly
    yield from pair_of(request, tmp_path, here)


async def test_a_copy_from_the_comparison_can_be_cancelled(slow_pair: Pair) -> None:
    app = slow_pair.app()
    async with app.run_test(size=SIZE) as pilot:
        await open_volumes(pilot, app)
        screen = await open_comparison(pilot, app, "slow")
        await pilot.press("y")
        await wait_for(
            pilot,
            lambda: any(v.progress and v.progress.done for v in copies(app, done=False)),
            "the copy to make progress",
        )
        await pilot.press("c")
        await wait_for(pilot, lambda: copies(app, done=True), "the cancelled copy")
        [view] = copies(app, done=True)  # the only copy this service ran
        assert view.state == "cancelled"
        await wait_for(pilot, lambda: screen.loaded and screen.comparison, "the refresh")
    assert Service(str(slow_pair.root / "slow")).list_points() == []


async def test_an_encrypted_other_repository_asks_its_password_until_it_is_right(
    pair: Pair,
) -> None:
    root = pair.root
    image = make_volume(root / "app.img", 2 * MiB, seed=5)
    pair.here.add_local_volume("demo", "app-data", str(image))
    mine = finished(pair.here.start_volume_backup("local", "demo", "app-data"))
    other_url = str(root / "vault")
    init_repository(other_url, grid_size=256 * 1024, password=b"right horse  ")

    app = pair.app()
    async with app.run_test(size=SIZE) as pilot:
        await open_volumes(pilot, app)
        await pilot.press("equals_sign")
        await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the repository prompt")
        await pilot.press("ctrl+u", *"vault", "enter")

        def asked() -> PromptScreen | None:
            s = app.screen
            return s if isinstance(s, PromptScreen) and s.password else None

        await wait_for(pilot, asked, "the password prompt")
        prompt = asked()
        assert prompt is not None and "vault" in prompt.title_text
        assert prompt.query_one("#prompt-input", Input).password  # typed, never shown
        await pilot.press(*"wrong", "enter")
        await wait_for(pilot, lambda: asked() is not None and asked() is not prompt, "a retry")
        again = asked()
        assert again is not None and "try again" in again.hint
        await pilot.press(*"right horse  ", "enter")  # spaces are part of a password
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, CompareScreen) and app.screen.comparison is not None,
            "the comparison",
        )
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        assert cells(screen) == {mine.id: ("✓", "missing")}
        await pilot.press("y")
        await wait_for(
            pilot,
            lambda: screen.comparison is not None and not screen.comparison.only_left,
            "the copy and the refresh",
        )
        await pilot.press("escape")
        # Esc at the password prompt leaves the comparison undone, saying why, in one line.
        await wait_for(pilot, lambda: isinstance(app.screen, VolumesScreen), "the volumes")
        await pilot.press("equals_sign")
        await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the repository prompt")
        await pilot.press("ctrl+u", *"vault", "enter")
        await wait_for(pilot, asked, "the password prompt")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), "the comparison")
        assert isinstance(app.screen, CompareScreen)
        text = summary(app.screen)
        assert "cannot compare" in text and "\n" not in text
    vault = Service(other_url, password=b"right horse  ")
    try:
        assert [p.id for p in vault.list_points()] == [mine.id]
    finally:
        vault.close()
