"""A volume's contents, a repository's records and a server's replies never reach the
terminal raw: the CLI and the TUI show them through one escaping rule.

The volume is a real ext4 image whose names, symlink target and file contents hold
terminal sequences; the server is the real lamina.v1 servicer over a real repository,
with hostile strings put into its replies (tests/support/hostile.py).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from rich.console import Console
from textual.pilot import Pilot

from lamina.backend.service import JobState, Service, init_repository
from lamina.backend.service.remote import ApiClient, RemoteService
from lamina.tui.app import LaminaApp, make_app
from lamina.tui.client import start_restore
from lamina.tui.screens.dialogs import RestoreScreen
from lamina.tui.screens.files import FilesScreen
from lamina.tui.screens.jobs import JobsScreen
from lamina.tui.screens.volumes import VolumesScreen
from tests.support.hostile import (
    COLOURS_SHOWN,
    HOSTILE_DIR,
    HOSTILE_FILES,
    HOSTILE_LINK,
    HOSTILE_SHOWN,
    hostile_server,
    make_hostile_image,
    unsafe_characters,
)

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]
SIZE = (160, 50)


@dataclass(frozen=True)
class Hostile:
    url: str
    service: Service
    point: str  # a backup of the hostile image, as the local cluster's volume demo/hostile


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    tmp = tmp_path_factory.mktemp("hostile")
    url = str(tmp / "repo")
    init_repository(url, grid_size=256 * 1024)
    service = Service(url, local_root=str(tmp / "cluster"))
    service.add_local_volume("demo", "hostile", str(make_hostile_image(tmp)))
    job = service.start_volume_backup("local", "demo", "hostile")
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    yield Hostile(url, service, job.result.id)


def lamina(*args: str) -> tuple[int, str, str]:
    done = subprocess.run([*LAMINA, *args], capture_output=True, timeout=120)
    out = done.stdout.decode("utf-8", "surrogateescape")
    return done.returncode, out, done.stderr.decode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------- the CLI


def test_files_ls_shows_every_hostile_name_escaped(hostile: Hostile) -> None:
    for long in ([], ["-l"]):
        status, out, err = lamina("files", "ls", "--repo", hostile.url, hostile.point, "/", *long)
        assert status == 0, err
        assert unsafe_characters(out) == []
        lines = out.splitlines()
        for shown in [*HOSTILE_FILES.values(), HOSTILE_DIR[1]]:
            assert any(line.endswith(shown) for line in lines), (shown, out)
        if long:
            assert any(line.endswith(f"link -> {HOSTILE_LINK[2]}") for line in lines), out


def test_an_error_quoting_a_hostile_path_is_one_escaped_line(hostile: Hostile) -> None:
    path = os.fsdecode(b"/" + HOSTILE_DIR[0] + b"/gone\x1b]0;x\x07")
    status, out, err = lamina("files", "ls", "--repo", hostile.url, hostile.point, path)
    assert status != 0 and out == ""
    assert err.count("\n") == 1 and err.startswith("lamina: error: ")
    assert unsafe_characters(err) == []
    assert "gone\\x1b]0;x\\x07" in err


def test_cli_output_from_a_hostile_server_is_escaped(hostile: Hostile) -> None:
    with hostile_server(hostile.service) as address:
        for command in (["points"], ["chain", hostile.point]):
            status, out, err = lamina(*command, "--server", address)
            assert status == 0, err
            assert unsafe_characters(out) == [] and unsafe_characters(err) == []
            assert HOSTILE_SHOWN in out, out
        status, out, err = lamina("verify", hostile.point, "--server", address)
        assert status == 0, err
        assert unsafe_characters(out + err) == []


# ---------------------------------------------------------------------------- the TUI


def screen_text(app: LaminaApp) -> str:
    """What the terminal would show, as text: every segment the app draws, no styles."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return console.export_text()


async def until(pilot: Pilot[None], condition: Callable[[], object], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the screen did not get there"
        await pilot.pause(0.02)


@pytest.mark.asyncio
async def test_the_file_browser_shows_hostile_names_and_contents_escaped(
    hostile: Hostile,
) -> None:
    client = hostile.service
    (point,) = client.list_points()
    app = make_app(client)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.started)
        screen = FilesScreen(point)
        await app.push_screen(screen)
        await until(pilot, lambda: screen.root_loaded)
        folder = "/" + os.fsdecode(HOSTILE_DIR[0])
        screen.nodes[folder].expand()
        await until(pilot, lambda: folder in screen.loaded)
        screen.file_tree.move_cursor(screen.nodes["/colours.txt"])
        await until(pilot, lambda: "second line" in str(screen.query_one("#file-preview").render()))
        await pilot.pause()
        text = screen_text(app)

    assert unsafe_characters(text) == [], text
    for shown in [*HOSTILE_FILES.values(), HOSTILE_DIR[1] + "/", HOSTILE_LINK[2]]:
        assert shown in text, shown
    for line in COLOURS_SHOWN:  # the preview draws the codes, never the colours
        assert line in text
    assert "inside" in text


@pytest.mark.asyncio
async def test_the_tui_over_a_hostile_server_escapes_every_reply(hostile: Hostile) -> None:
    with hostile_server(hostile.service) as address:
        app = make_app(RemoteService(ApiClient(address)))
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await until(pilot, lambda: app.started)
            home = app.screen
            await until(pilot, lambda: len(getattr(home, "checks", {})) >= 1)
            await pilot.pause()
            clusters = screen_text(app)

            volumes = VolumesScreen("local")
            await app.push_screen(volumes)
            await until(pilot, lambda: volumes.loaded)
            await pilot.pause()
            volume_list = screen_text(app)

            app.start_job("verify", lambda: app.service.start_verify(hostile.point).id)
            await until(pilot, lambda: any(v.finished for v in app.job_views.values()))
            # The notification of the finished job quotes the server's summary.
            await until(pilot, lambda: "verify done" in screen_text(app))
            toast = screen_text(app)
            jobs = JobsScreen()
            await app.push_screen(jobs)
            await until(pilot, lambda: bool(jobs.items))
            await pilot.pause()
            job_list = screen_text(app)

    for text in (clusters, volume_list, toast, job_list):
        assert unsafe_characters(text) == [], text
    assert "evil\\x1b[2J" in toast
    # The header, the cluster table and its detail line each show the reply, escaped;
    # a table cell holding '[bold red]' is text, not markup.
    assert "evil\\x1b[2J" in clusters and "[bold red]loud" in clusters
    assert "evil\\x1b[2J" in volume_list  # the volume the server says the repository holds
    assert "evil\\x1b[2J" in job_list  # the task's description, summary and log


@pytest.mark.asyncio
async def test_the_restore_dialog_shows_a_refused_hostile_target_escaped(hostile: Hostile) -> None:
    """The service's refusal quotes the target, resolved under a working folder whose name
    holds terminal sequences; the dialog draws that line escaped."""
    client = hostile.service
    with tempfile.TemporaryDirectory(prefix="r") as tmp:
        work_dir = os.path.join(tmp, "evil\x1b]0;pwned\x07\x1b[2J")
        os.makedirs(os.path.join(work_dir, "restored"))
        app = make_app(client)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.started)
            dialog = RestoreScreen(
                f"Restore point {hostile.point}",
                "restored",
                lambda target, overwrite: start_restore(
                    client, hostile.point, os.path.join(work_dir, target), overwrite
                ),
            )
            await app.push_screen(dialog)
            await pilot.press("enter")
            await until(pilot, lambda: dialog.problem != "")
            await pilot.pause()
            text = screen_text(app)
        assert os.listdir(os.path.join(work_dir, "restored")) == []

    assert "is a folder" in dialog.problem
    assert unsafe_characters(text) == [], text
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J/restored is a folder" in text
