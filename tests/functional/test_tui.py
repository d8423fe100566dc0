"""The terminal UI driven by Textual's pilot against a real repository and local cluster.

Each test builds a repository in a temporary folder, an ext4 volume image made with
``mkfs.ext4 -d`` registered as a volume of the local cluster, and the app through the same
factory the CLI uses, with the in-process client over the real service.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from textual.command import Command, CommandList, CommandPalette
from textual.coordinate import Coordinate
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Log, Static

from lamina.backend.service import JobView, Progress, Service, init_repository
from lamina.tui.app import LaminaApp, make_app
from lamina.tui.screens.chain import ChainScreen
from lamina.tui.screens.clusters import ClustersScreen
from lamina.tui.screens.dialogs import (
    ConfirmScreen,
    GotoScreen,
    HelpScreen,
    PromptScreen,
    RestoreScreen,
)
from lamina.tui.screens.files import FilesScreen
from lamina.tui.screens.jobs import JobsScreen
from lamina.tui.screens.volumes import VolumesScreen
from lamina.tui.widgets.jobs import JobStrip

pytestmark = pytest.mark.asyncio
SIZE = (150, 40)
MIB = 1024 * 1024


def _mkfs() -> str:
    for candidate in (shutil.which("mkfs.ext4"), "/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"):
        if candidate and os.path.exists(candidate):
            return candidate
    pytest.fail("mkfs.ext4 is missing (Debian package e2fsprogs; `make test` installs it)")


def make_ext4(image: Path, content: Path, size: int) -> Path:
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(
        [_mkfs(), "-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d", str(content), str(image)],
        check=True,
        capture_output=True,
    )
    return image


@dataclass
class World:
    service: Service
    root: Path
    image: Path
    blob: bytes
    config: bytes
    server_address: str | None = None

    def app(self) -> LaminaApp:
        if self.server_address is None:
            return make_app(self.service)
        from lamina.backend.service.remote import ApiClient, RemoteService
        from tests.support.api_server import TOKEN

        return make_app(RemoteService(ApiClient(self.server_address, token=TOKEN)))


@pytest.fixture(params=["in-process", "grpc"])
def world(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """The same screens over both clients: in process, and remote through a real lamina.v1
    server on loopback (the `lamina tui --server` path)."""
    monkeypatch.chdir(tmp_path)  # prompts suggest paths here; short relative ones are typed
    content = tmp_path / "content"
    (content / "etc").mkdir(parents=True)
    (content / "data").mkdir()
    (content / "docs" / "deep").mkdir(parents=True)
    config = b"listen = 0.0.0.0:8080\nworkers = 4\n"
    (content / "etc" / "app.conf").write_bytes(config)
    blob = random.Random(7).randbytes(300 * 1024)
    (content / "data" / "blob.bin").write_bytes(blob)
    (content / "docs" / "deep" / "notes.txt").write_text("a note\n" * 100)
    image = make_ext4(tmp_path / "volume.img", content, 8 * MIB)
    init_repository(str(tmp_path / "repo"))
    service = Service(str(tmp_path / "repo"), local_root=str(tmp_path / "cluster"))
    service.add_local_volume("demo", "app-data", str(image))
    if request.param == "grpc":
        from tests.support.api_server import running_server

        with running_server(service, allowed_paths=[str(tmp_path)]) as server:
            yield World(service, tmp_path, image, blob, config, server.address)
    else:
        yield World(service, tmp_path, image, blob, config)
    for job in service.jobs():
        job.cancel()
        job.wait(10)
    service.close()


async def wait_for(
    pilot: Pilot[None], condition: Callable[[], object], what: str, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def palette_settled(app: LaminaApp, highlighted: str) -> bool:
    """The command palette is open, done searching, and highlights a hit starting so."""
    palette = app.screen
    if not isinstance(palette, CommandPalette) or not palette.has_class("-ready"):
        return False
    if any(worker.node is palette and not worker.is_finished for worker in app.workers):
        return False
    hits = palette.query_one(CommandList)
    if hits.highlighted is None:
        return not highlighted
    option = hits.get_option_at_index(hits.highlighted)
    return isinstance(option, Command) and (option.hit.text or "").startswith(highlighted)


S = TypeVar("S", bound=Screen[Any])


def screen_of(app: LaminaApp, kind: type[S]) -> S:
    screen = app.screen
    assert isinstance(screen, kind), f"on {screen!r}, not a {kind.__name__}"
    return screen


def finished_jobs(app: LaminaApp, kind: str) -> list[JobView]:
    return [v for v in app.job_views.values() if v.kind == kind and v.finished]


async def open_volumes(pilot: Pilot[None], app: LaminaApp) -> VolumesScreen:
    await wait_for(
        pilot, lambda: isinstance(app.screen, ClustersScreen) and app.screen.loaded, "clusters"
    )
    await pilot.press("enter")
    await wait_for(
        pilot, lambda: isinstance(app.screen, VolumesScreen) and app.screen.loaded, "volumes"
    )
    assert isinstance(app.screen, VolumesScreen)
    return app.screen


async def back_up(pilot: Pilot[None], app: LaminaApp, count: int = 1) -> JobView:
    await pilot.press("b")
    await wait_for(pilot, lambda: len(finished_jobs(app, "backup")) >= count, "the backup")
    view = max(finished_jobs(app, "backup"), key=lambda v: v.created)
    assert view.state == "succeeded", view.error
    return view


async def type_path(pilot: Pilot[None], path: str) -> None:
    """Replace the suggested path of a prompt with ``path``, as a user would."""
    await pilot.press("ctrl+u", "end")
    await pilot.press("ctrl+u")
    await pilot.press(*path)
    await pilot.press("enter")


async def move_to(pilot: Pilot[None], screen: FilesScreen, path: str) -> None:
    """Walk the cursor to ``path`` with the arrow keys."""
    tree = screen.file_tree
    target = screen.nodes[path]
    for _ in range(50):
        if tree.cursor_node is target:
            return
        await pilot.press("down" if target.line > tree.cursor_line else "up")
    raise AssertionError(f"cannot reach {path} in the tree")


async def test_back_up_see_the_chain_browse_and_extract(world: World) -> None:
    app = world.app()
    async with app.run_test(size=SIZE) as pilot:
        volumes = await open_volumes(pilot, app)
        volume = volumes.current_item()
        assert volume is not None and volume.key == "local/demo/app-data"
        assert volume.last_backup is None and volume.chain_length == 0

        first = await back_up(pilot, app)
        assert [p.id for p in world.service.list_points()] == [first.point]
        await wait_for(
            pilot,
            lambda: (item := volumes.current_item()) is not None and item.chain_length == 1,
            "the volume list to show the new point",
        )
        second = await back_up(pilot, app, count=2)
        await wait_for(
            pilot,
            lambda: (item := volumes.current_item()) is not None and item.chain_length == 2,
            "the chain of two",
        )

        await pilot.press("enter")
        await wait_for(
            pilot, lambda: isinstance(app.screen, ChainScreen) and app.screen.loaded, "the chain"
        )
        chain = screen_of(app, ChainScreen)
        rows = [
            str(chain.table.coordinate_to_cell_key(Coordinate(i, 0)).row_key.value)
            for i in range(2)
        ]
        assert rows == [first.point, second.point]  # the full point, then its incremental
        assert {p.id: p.parent for p in chain.points} == {
            first.point: None,
            second.point: first.point,
        }

        await pilot.press("f")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, FilesScreen) and app.screen.root_loaded,
            "the file tree",
        )
        files = screen_of(app, FilesScreen)
        assert files.point.id == first.point  # the cursor was on the full point

        await move_to(pilot, files, "/etc")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "/etc" in files.loaded, "/etc to load")
        await move_to(pilot, files, "/etc/app.conf")
        preview = files.query_one("#file-preview", Static)
        await wait_for(pilot, lambda: "workers = 4" in str(preview.render()), "the text preview")

        await move_to(pilot, files, "/data")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "/data" in files.loaded, "/data to load")
        await move_to(pilot, files, "/data/blob.bin")
        await pilot.press("space")
        assert set(files.marked) == {"/data/blob.bin"}

        target = world.root / "extracted"
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the folder prompt")
        await type_path(pilot, "extracted")
        await wait_for(pilot, lambda: finished_jobs(app, "extract"), "the extraction")
        (extract,) = finished_jobs(app, "extract")
        assert extract.state == "succeeded", extract.error
        assert (target / "blob.bin").read_bytes() == world.blob
        assert not files.marked  # the marks are spent


async def test_restore_verify_and_a_failure_in_plain_words(world: World) -> None:
    app = world.app()
    async with app.run_test(size=SIZE) as pilot:
        await open_volumes(pilot, app)
        point = await back_up(pilot, app)
        await pilot.press("enter")
        await wait_for(
            pilot, lambda: isinstance(app.screen, ChainScreen) and app.screen.loaded, "the chain"
        )
        chain = screen_of(app, ChainScreen)

        await pilot.press("v")
        await wait_for(pilot, lambda: finished_jobs(app, "verify"), "the verify job")
        assert finished_jobs(app, "verify")[0].state == "succeeded"
        await wait_for(
            pilot,
            lambda: [p.verify_state for p in chain.points] == ["ok"],
            "the verify state in the chain",
        )

        target = world.root / "restored.img"
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RestoreScreen), "the restore dialog")
        await type_path(pilot, "restored.img")
        await wait_for(pilot, lambda: finished_jobs(app, "restore"), "the restore")
        (first,) = finished_jobs(app, "restore")
        assert first.state == "succeeded", first.error
        digest = hashlib.sha256
        assert digest(target.read_bytes()).digest() == digest(world.image.read_bytes()).digest()
        assert first.point == point.point

        # Restoring onto the same file again: the dialog asks the service first, stays open
        # with one plain line, and offers to overwrite (no advice about a CLI flag).
        target.write_bytes(b"to be replaced")
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RestoreScreen), "the restore dialog")
        dialog = screen_of(app, RestoreScreen)
        await type_path(pilot, "restored.img")
        await wait_for(pilot, lambda: dialog.existing is not None, "the offer to overwrite")
        assert dialog.problem == f"{target} exists; choose a new file, or pass --overwrite"
        assert dialog.query_one("#restore-overwrite-row").display
        assert app.screen is dialog and len(finished_jobs(app, "restore")) == 1
        assert target.read_bytes() == b"to be replaced"
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: len(finished_jobs(app, "restore")) == 2, "the overwrite")
        assert screen_of(app, ChainScreen) is chain
        assert all(v.state == "succeeded" for v in finished_jobs(app, "restore"))
        assert digest(target.read_bytes()).digest() == digest(world.image.read_bytes()).digest()

        # A target that cannot be written (a folder) is refused in the dialog, in one line,
        # and nothing is left behind.
        folder = world.root / "a-folder"
        folder.mkdir()
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RestoreScreen), "the restore dialog")
        dialog = screen_of(app, RestoreScreen)
        await type_path(pilot, "a-folder")
        await wait_for(pilot, lambda: dialog.problem != "", "the refusal")
        assert dialog.problem == f"{folder} is a folder; give a file or block device to restore to"
        assert dialog.existing is None and not dialog.query_one("#restore-overwrite-row").display
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is chain, "the chain again")
        assert len(finished_jobs(app, "restore")) == 2
        assert list(world.root.glob("*.lamina-partial")) == []
        assert list(folder.iterdir()) == []
        messages = [n.message for n in app._notifications]
        assert not any("Traceback" in m or "internal error" in m for m in messages)
        assert app.is_running


async def test_cancel_a_running_backup(tmp_path: Path) -> None:
    """A backup slow enough (zstd level 19 on every piece) to be still running when 'c'
    arrives, however fast the machine."""
    from tests.support.api_server import slow_image, slow_repository

    image = slow_image(tmp_path / "big.img", 64 * MIB, seed=3)
    service = Service(slow_repository(tmp_path / "repo"), local_root=str(tmp_path / "cluster"))
    service.add_local_volume("db", "pg-data", str(image))
    app = make_app(service)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await open_volumes(pilot, app)
            await pilot.press("b")
            strip = app.screen.query_one(JobStrip)
            await wait_for(  # the running job shows under the table
                pilot, lambda: "local/db/pg-data" in strip.text, "the job in the strip"
            )
            await pilot.press("c")
            await wait_for(pilot, lambda: finished_jobs(app, "backup"), "the cancelled job")
            (view,) = finished_jobs(app, "backup")
            assert view.state == "cancelled"
            assert service.list_points() == []  # a cancelled backup leaves no point
            await wait_for(pilot, lambda: not strip.text, "the strip to empty")

            await pilot.press("J")
            await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen), "the jobs screen")
            jobs = screen_of(app, JobsScreen)
            selected = jobs.current_item()
            assert selected is not None and selected.state == "cancelled"
            log = jobs.query_one("#job-log", Log)
            await wait_for(
                pilot, lambda: any("cancel" in line for line in log.lines), "the log to say so"
            )
            await pilot.press("c")  # nothing left to cancel: said so, nothing breaks
            assert any("already cancelled" in n.message for n in app._notifications)
    finally:
        service.close()


async def test_filter_sort_go_to_help_and_palette(world: World) -> None:
    other = world.root / "other.img"
    with open(other, "wb") as f:
        f.truncate(4 * MIB)
    world.service.add_local_volume("billing", "ledger", str(other))
    app = world.app()
    async with app.run_test(size=SIZE) as pilot:
        volumes = await open_volumes(pilot, app)

        def shown() -> list[str]:
            table = volumes.table
            return [
                str(table.coordinate_to_cell_key(Coordinate(i, 0)).row_key.value)
                for i in range(table.row_count)
            ]

        assert shown() == ["local/billing/ledger", "local/demo/app-data"]
        await pilot.press("slash", *"app")
        assert shown() == ["local/demo/app-data"]
        await pilot.press("escape")  # clears the filter, stays on the screen
        assert shown() == ["local/billing/ledger", "local/demo/app-data"]
        assert app.screen is volumes

        await pilot.press("s", "s", "s")  # from namespace: name, mode, capacity
        assert volumes.sort_column == "capacity"
        assert shown() == ["local/billing/ledger", "local/demo/app-data"]  # 4 MiB before 8 MiB
        await pilot.press("S")
        assert shown() == ["local/demo/app-data", "local/billing/ledger"]

        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "the help")
        await pilot.press("escape")
        assert app.screen is volumes

        await pilot.press("colon")
        await wait_for(pilot, lambda: isinstance(app.screen, GotoScreen), "the command line")
        await pilot.press(*"clusters", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ClustersScreen), "the clusters")
        await pilot.press("colon", *"nowhere", "enter")
        assert any("no view 'nowhere'" in n.message for n in app._notifications)
        await pilot.press("colon", *"volumes local", "enter")
        await wait_for(
            pilot, lambda: isinstance(app.screen, VolumesScreen) and app.screen.loaded, "volumes"
        )

        # ctrl+p: the palette finds the screen's actions by name and runs them.
        volumes = screen_of(app, VolumesScreen)
        volumes.table.move_cursor(row=shown().index("local/demo/app-data"))
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: palette_settled(app, ""), "the command palette")
        await pilot.press(*"back up")
        await wait_for(pilot, lambda: palette_settled(app, "Back up"), "the palette to find it")
        await pilot.press("enter")
        await wait_for(pilot, lambda: finished_jobs(app, "backup"), "the backup from the palette")
        assert finished_jobs(app, "backup")[0].volume_key == "local/demo/app-data"


async def test_a_flood_of_progress_is_merged(world: World) -> None:
    """10,000 job updates from a backend thread reach the screens as a few redraws."""
    app = world.app()
    async with app.run_test(size=SIZE) as pilot:
        await open_volumes(pilot, app)
        base = JobView(id="flood", kind="backup", description="flood", state="running")
        started = time.monotonic()

        def flood() -> None:
            for i in range(10_000):
                progress = Progress(phase="backing up", done=i, total=10_000)
                app.feed.push(replace(base, progress=progress))
            app.feed.push(replace(base, state="succeeded", progress=Progress("done", 10_000)))

        redraws_before = app.redraws
        thread = threading.Thread(target=flood)
        thread.start()
        thread.join()
        await wait_for(
            pilot,
            lambda: (v := app.job_views.get("flood")) is not None and v.state == "succeeded",
            "the last update",
        )
        elapsed = time.monotonic() - started
        redraws = app.redraws - redraws_before
        assert redraws <= elapsed / app.feed.min_interval + 2, (redraws, elapsed)
        assert app.feed.merged >= 9_000
        assert app.job_views["flood"].done == 10_000


async def test_protect_and_delete_a_point(world: World) -> None:
    app = world.app()
    async with app.run_test(size=SIZE) as pilot:
        await open_volumes(pilot, app)
        full = await back_up(pilot, app)
        incremental = await back_up(pilot, app, count=2)
        await pilot.press("enter")
        await wait_for(
            pilot, lambda: isinstance(app.screen, ChainScreen) and app.screen.loaded, "the chain"
        )
        chain = screen_of(app, ChainScreen)
        current = chain.current_point()
        assert current is not None and current.id == full.point

        await pilot.press("p")
        await wait_for(
            pilot,
            lambda: [p.protected for p in chain.points if p.id == full.point] == [True],
            "protect",
        )
        await pilot.press("d")  # refused: protected points are kept
        assert any("is protected" in n.message for n in app._notifications)
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("p")
        await wait_for(
            pilot,
            lambda: [p.protected for p in chain.points if p.id == full.point] == [False],
            "unprotect",
        )

        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        await pilot.press("n")  # keep it after all
        assert app.screen is chain and len(world.service.list_points()) == 2
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        await pilot.press("y")
        await wait_for(pilot, lambda: finished_jobs(app, "delete"), "the delete job")
        assert finished_jobs(app, "delete")[0].state == "succeeded"
        await wait_for(
            pilot, lambda: [p.id for p in chain.points] == [incremental.point], "the shorter chain"
        )
        # The incremental took over the full point's data: it still restores the volume.
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RestoreScreen), "the restore dialog")
        await type_path(pilot, "after-delete.img")
        await wait_for(pilot, lambda: finished_jobs(app, "restore"), "the restore")
        assert finished_jobs(app, "restore")[0].state == "succeeded"
        restored = (world.root / "after-delete.img").read_bytes()
        assert restored == world.image.read_bytes()


async def test_a_kubernetes_cluster_its_volumes_and_a_refusal(world: World, tmp_path: Path) -> None:
    """Against the FAKE API server of tests/support/fake_kube.py (a test double, over HTTP)."""
    from tests.support.fake_kube import make_tls_files, run_fake_kube, seed_standard_cluster

    with run_fake_kube() as fake:
        seed_standard_cluster(fake, make_tls_files(tmp_path / "ca", "cbt").ca_pem)
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", context="fake")
        service = Service(
            world.service.repo_url, kubeconfig=str(kubeconfig), local_root=world.service.local_root
        )
        app = make_app(service)
        async with app.run_test(size=SIZE) as pilot:
            clusters = screen_of(app, ClustersScreen)
            await wait_for(pilot, lambda: len(clusters.checks) == 2, "the reachability checks")
            assert clusters.checks["fake"].ok and clusters.checks["local"].ok
            current = clusters.current_item()
            assert current is not None and current.name == "fake"  # the current context
            await pilot.press("enter")
            await wait_for(
                pilot,
                lambda: isinstance(app.screen, VolumesScreen) and app.screen.loaded,
                "the PVCs",
            )
            volumes = screen_of(app, VolumesScreen)
            keys = [v.key for v in volumes.items]
            assert "fake/apps/data" in keys and "fake/default/plain" in keys
            volumes.table.move_cursor(row=volumes.table.get_row_index("fake/apps/data"))
            await pilot.press("b")  # a cluster volume: the data-mover Job, said in plain words
            await wait_for(
                pilot,
                lambda: any(
                    "data-mover" in n.message and f"--repo {service.repo_url}" in n.message
                    for n in app._notifications
                ),
                "the data-mover message",
            )
            assert not app.job_views

            fake.forbid("list", "persistentvolumeclaims")
            await pilot.press("ctrl+r")
            await wait_for(
                pilot,
                lambda: any(
                    "could not list the volumes of fake" in n.message for n in app._notifications
                ),
                "the refusal",
            )
            refusal = next(n.message for n in app._notifications if "could not list" in n.message)
            assert "RBAC forbids" in refusal and "persistentvolumeclaims" in refusal
            assert "\n" not in refusal
            assert "Traceback" not in refusal
            assert app.is_running
        service.close()
