"""k9s habits of the terminal UI, against a real repository and local cluster: keys that
move in tables and in the file browser, the file browser's filter and column names, a
footer that fits, the mount key that says what it does, live ages, and a header that
names the server."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from textual.pilot import Pilot

from lamina.tui.app import LaminaApp, make_app
from lamina.tui.screens.chain import ChainScreen
from lamina.tui.screens.dialogs import ConfirmScreen, PromptScreen
from lamina.tui.screens.files import FilesScreen
from lamina.tui.screens.volumes import VolumesScreen
from lamina.tui.widgets.bars import TopBar
from lamina.tui.widgets.footer import MORE
from tests.functional.test_hostile_strings import screen_text
from tests.functional.test_tui import (
    SIZE,
    World,
    back_up,
    open_volumes,
    screen_of,
    type_path,
    wait_for,
    world,
)

__all__ = ["world"]  # the fixture, shared with test_tui.py
pytestmark = pytest.mark.asyncio


async def open_chain(pilot: Pilot[None], app: LaminaApp) -> ChainScreen:
    await pilot.press("enter")
    await wait_for(
        pilot, lambda: isinstance(app.screen, ChainScreen) and app.screen.loaded, "the chain"
    )
    return screen_of(app, ChainScreen)


async def test_g_and_G_move_to_the_first_and_last_row(world: World) -> None:
    for name in ("a-first", "b-middle"):
        image = world.root / f"{name}.img"
        shutil.copy(world.image, image)
        world.service.add_local_volume("more", name, str(image))
    app = world.app()
    async with app.run_test(size=SIZE) as pilot:
        volumes = await open_volumes(pilot, app)
        table = volumes.table
        assert table.row_count == 3
        await pilot.press("G")
        assert table.cursor_row == 2
        await pilot.press("g")
        assert table.cursor_row == 0
        await pilot.press("end")
        assert table.cursor_row == 2
        await pilot.press("home")
        assert table.cursor_row == 0


async def test_the_file_browser_names_its_columns_and_filters(world: World) -> None:
    app = world.app()
    async with app.run_test(size=SIZE) as pilot:
        await open_volumes(pilot, app)
        await back_up(pilot, app)
        await open_chain(pilot, app)
        await pilot.press("f")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, FilesScreen) and app.screen.root_loaded,
            "the files",
        )
        files = screen_of(app, FilesScreen)
        tree = files.file_tree
        text = screen_text(app)
        header = next(line for line in text.splitlines() if "NAME" in line)
        assert "SIZE" in header and "MODIFIED" in header
        names = [n.data.name for n in tree.root.children if n.data]
        assert names == ["data", "docs", "etc", "lost+found"]

        def cursor() -> str:
            node = tree.cursor_node
            return node.data.name if node is not None and node.data is not None else ""

        await pilot.press("G")
        assert cursor() == "lost+found"
        await pilot.press("g")
        assert cursor() == "data"

        files.nodes["/etc"].expand()
        await wait_for(pilot, lambda: "/etc" in files.loaded, "/etc to load")
        await pilot.press("slash", *"conf")
        shown = [n.data.path for n in tree.root.children if n.data]
        assert shown == ["/etc"]  # the folder holding app.conf stays, the others go
        assert [n.data.name for n in files.nodes["/etc"].children if n.data] == ["app.conf"]
        await pilot.press("enter")  # keeps the filter
        assert files.filter_text == "conf"
        await pilot.press("escape")  # clears it, stays on the screen
        assert app.screen is files and files.filter_text == ""
        assert [n.data.name for n in tree.root.children if n.data] == names
        await pilot.press("escape")
        assert isinstance(app.screen, ChainScreen)


@pytest.mark.parametrize("screen", ["clusters", "volumes", "chain", "files"])
async def test_the_footer_fits_80_columns_or_says_keys_are_left_out(
    world: World, screen: str
) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.started, "the repository")
        if screen != "clusters":
            await open_volumes(pilot, app)
        if screen in ("chain", "files"):
            await back_up(pilot, app)
            await open_chain(pilot, app)
        if screen == "files":
            await pilot.press("f")
            await wait_for(pilot, lambda: isinstance(app.screen, FilesScreen), "the files")

        def last_line() -> str:
            return str(screen_text(app).splitlines()[app.size.height - 1])

        await wait_for(pilot, lambda: last_line().rstrip().endswith("^p palette"), "the footer")
        footer = last_line()
        keys = [
            b
            for _, b, enabled, _ in app.screen.active_bindings.values()
            if b.show and b.action != "command_palette"
        ]
        every = all(f"{app.get_key_display(b)} {b.description}" in footer for b in keys)
        assert every or MORE in footer, footer
        if screen == "chain":
            assert MORE in footer  # eleven keys do not fit in 80 columns
        if screen in ("clusters", "volumes"):  # the table's own enter no longer hides it
            assert ("enter Volumes" if screen == "clusters" else "enter Chain") in footer


async def test_the_mount_key_follows_the_state_and_unmount_is_confirmed(
    world: World, tmp_path: Path
) -> None:
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        pytest.fail("FUSE is missing (fusermount3); `make test` installs it")
    app = world.app()
    async with app.run_test(size=SIZE) as pilot:
        await open_volumes(pilot, app)
        await back_up(pilot, app)
        chain = await open_chain(pilot, app)

        def label() -> str:
            return str(screen_text(app).splitlines()[app.size.height - 1])

        await wait_for(pilot, lambda: "m Mount" in label(), "the Mount key")
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the mount prompt")
        await type_path(pilot, str(tmp_path / "mnt"))
        await wait_for(pilot, lambda: bool(chain.mounts), "the mount", timeout=30)
        await wait_for(pilot, lambda: "m Unmount" in label(), "the Unmount key")

        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        await pilot.press("n")  # kept
        assert chain.mounts and app.screen is chain
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        await pilot.press("y")
        # First the notice: a notification expires after a few seconds on a busy machine.
        await wait_for(
            pilot,
            lambda: any("unmounted" in n.message for n in app._notifications),
            "the unmounted notice",
            timeout=30,
        )
        await wait_for(pilot, lambda: not chain.mounts, "the unmount", timeout=30)
        await wait_for(pilot, lambda: "m Mount" in label(), "the Mount key again")


async def test_ages_grow_while_a_screen_is_open(world: World) -> None:
    now = [time.time()]
    app = make_app(world.service, clock=lambda: now[0])
    app.age_interval = 0.05
    async with app.run_test(size=SIZE) as pilot:
        volumes = await open_volumes(pilot, app)
        view = await back_up(pilot, app)
        assert view.point
        now[0] = time.time() + 1  # the clock the screens read, a moment after the backup
        await wait_for(
            pilot, lambda: volumes.loaded and "just now" in screen_text(app), "the new backup"
        )
        now[0] += 3 * 3600
        await wait_for(pilot, lambda: "3h ago" in screen_text(app), "the age to grow")
        chain = await open_chain(pilot, app)
        assert "3h ago" in screen_text(app)
        now[0] += 2 * 86400
        await wait_for(pilot, lambda: "2d ago" in screen_text(app), "the point's age to grow")
        assert isinstance(chain, ChainScreen)


async def test_the_header_says_the_repository_is_a_servers(world: World) -> None:
    app = world.app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.started, "the repository")
        bar = app.screen.query_one(TopBar)
        if world.server_address is None:
            assert "server" not in bar.repository
        else:
            assert bar.repository.startswith(f"server {world.server_address}: ")
        await pilot.press("colon", *"volumes nowhere", "enter")
        assert any("no cluster 'nowhere'" in n.message for n in app._notifications)
        assert not isinstance(app.screen, VolumesScreen)
