"""Snapshots of every screen of the terminal UI, at a fixed size, from recorded data.

The app is built by the same factory as in production; only the client differs: a
recorded-data client (fixed ids, times and sizes, written down once from a demo-like
repository) and a frozen clock, so every run draws the same picture. The functional tests
in test_tui.py drive the same screens against a real repository.

Update after an intended change: ``pytest tests/unit/test_tui_snapshots.py --snapshot-update``
and look at the SVGs it writes before committing them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from lamina.tui.app import LaminaApp, make_app
from lamina.tui.client import (
    Capabilities,
    Cluster,
    ClusterCheck,
    FileEntry,
    JobView,
    Point,
    RepositorySummary,
    Volume,
)
from lamina.tui.formatting import parse_time
from lamina.tui.screens.chain import ChainScreen
from lamina.tui.screens.clusters import ClustersScreen
from lamina.tui.screens.files import FilesScreen
from lamina.tui.screens.volumes import VolumesScreen
from tests.support.hostile import COLOURS, HOSTILE_DIR, HOSTILE_FILES, HOSTILE_LINK

SIZE = (130, 36)
NOW = parse_time("2026-03-14T12:00:00Z")
MIB = 1024 * 1024


def _point(
    id: str,
    parent: str | None,
    created: str,
    read: int,
    stored: int,
    dedup: int = 0,
    verify: str = "",
    protected: bool = False,
) -> Point:
    capacity = 256 * MIB
    return Point(
        id=id,
        parent=parent,
        kind="incremental" if parent else "full",
        volume="local/demo/app-data",
        created=created,
        capacity=capacity,
        bytes_read=read,
        bytes_new=read - dedup,
        bytes_stored=stored,
        bytes_deduplicated=dedup,
        bytes_uploaded=stored + 4096,
        duration=round(read / (180 * MIB), 2) + 0.05,
        image_digest=f"blake3:{id * 4}",
        snapshot_handle=f"snap-{id[:8]}",
        verify_state=verify,
        protected=protected,
        manifest={
            "capacity": capacity,
            "created": created,
            "format": 1,
            "id": id,
            "kind": "incremental" if parent else "full",
            "parent": parent,
            "volume": {"cluster": "local", "namespace": "demo", "name": "app-data"},
            "stats": {"bytes_read": read, "bytes_stored": stored, "bytes_deduplicated": dedup},
        },
    )


POINTS = [
    _point(
        "4c1d9e07a2b35f68",
        None,
        "2026-03-11T02:00:05Z",
        31 * MIB,
        9 * MIB,
        verify="ok",
        protected=True,
    ),
    _point("9a0f3b6c71e2d584", "4c1d9e07a2b35f68", "2026-03-12T02:00:04Z", 4096, 1200, verify="ok"),
    _point("e57b2c09d4a18f36", "9a0f3b6c71e2d584", "2026-03-13T02:00:06Z", 98304, 26000, 8192),
    _point(
        "2f6e8d1b0c9a7345",
        "e57b2c09d4a18f36",
        "2026-03-14T10:00:03Z",
        3 * MIB,
        3 * MIB,
        verify="corrupt",
    ),
]

FILES: dict[str, list[FileEntry]] = {
    "/": [
        FileEntry("/data", "data", "dir", 4096, parse_time("2026-03-13T01:58:00Z"), 0o40755),
        FileEntry("/docs", "docs", "dir", 4096, parse_time("2026-03-10T09:12:00Z"), 0o40755),
        FileEntry("/etc", "etc", "dir", 4096, parse_time("2026-03-14T09:30:00Z"), 0o40755),
        FileEntry(
            "/lost+found", "lost+found", "dir", 16384, parse_time("2026-03-10T09:00:00Z"), 0o40700
        ),
        FileEntry("/README", "README", "file", 412, parse_time("2026-03-10T09:00:00Z"), 0o100644),
    ],
    "/etc": [
        FileEntry(
            "/etc/app.conf", "app.conf", "file", 57, parse_time("2026-03-14T09:30:00Z"), 0o100644
        ),
        FileEntry(
            "/etc/cron.d", "cron.d", "dir", 4096, parse_time("2026-03-10T09:00:00Z"), 0o40755
        ),
        FileEntry(
            "/etc/current",
            "current",
            "symlink",
            8,
            parse_time("2026-03-10T09:00:00Z"),
            0o120777,
            "app.conf",
        ),
        FileEntry(
            "/etc/tls.key", "tls.key", "file", 1704, parse_time("2026-03-10T09:00:00Z"), 0o100600
        ),
    ],
}
CONTENTS = {
    "/etc/app.conf": b"listen = 0.0.0.0:9090\nworkers = 8\nlog_level = debug\n# end\n",
    "/README": b"app-data volume: configuration in /etc, data in /data.\n",
}


def _job(id: str, kind: str, description: str, state: str, **fields: object) -> JobView:
    return JobView(id=id, kind=kind, description=description, state=state, **fields)  # type: ignore[arg-type]


JOBS = [
    _job(
        "5d1e0c2b9a87",
        "backup",
        "back up local/demo/app-data",
        "succeeded",
        phase="done",
        done=3 * MIB,
        read=3 * MIB,
        stored=3 * MIB,
        elapsed=1.4,
        summary="point 2f6e8d1b0c9a7345: read 3.0 MiB, stored 3.0 MiB, deduplicated 0 B",
        log=(
            "10:00:01 started: back up local/demo/app-data",
            "10:00:01 taking a snapshot",
            "10:00:03 point 2f6e8d1b0c9a7345",
            "10:00:03 succeeded",
        ),
        volume="local/demo/app-data",
        point="2f6e8d1b0c9a7345",
        created=NOW - 7200,
    ),
    _job(
        "a3c4f0e19b27",
        "verify",
        "verify point 2f6e8d1b0c9a7345 (deep)",
        "failed",
        phase="failed",
        done=2 * MIB,
        total=3 * MIB,
        read=2 * MIB,
        elapsed=0.8,
        error="piece 7d0c41e2 of pack 3be9 does not match its id (volume offset 12582912)",
        log=(
            "10:30:00 started: verify point 2f6e8d1b0c9a7345 (deep)",
            "10:30:00 loading index",
            "10:30:01 failed: piece 7d0c41e2 of pack 3be9 does not match its id (volume offset 12582912)",
        ),
        point="2f6e8d1b0c9a7345",
        created=NOW - 5400,
    ),
    _job(
        "b8e2d6f4c031",
        "backup",
        "back up local/db/pg-data",
        "running",
        phase="backing up",
        done=120 * MIB,
        total=300 * MIB,
        rate=85 * MIB,
        eta=2.1,
        read=120 * MIB,
        stored=64 * MIB,
        deduplicated=40 * MIB,
        elapsed=1.6,
        log=("11:59:58 started: back up local/db/pg-data", "11:59:58 taking a snapshot"),
        volume="local/db/pg-data",
        created=NOW - 2,
    ),
]


class RecordedClient:
    """Recorded data for snapshots: fixed ids, times and sizes; jobs never move."""

    def repository(self) -> RepositorySummary:
        return RepositorySummary("s3://backups/lamina", "3e1f", True, "zstd level 3")

    def capabilities(self) -> Capabilities:
        return Capabilities(browse=True, extract=True, mount=False, delete=True, protect=True)

    def list_clusters(self) -> list[Cluster]:
        return [
            Cluster("prod-eu", "kubernetes", True, "https://10.20.0.1:6443", "default"),
            Cluster("staging", "kubernetes", False, "https://10.30.0.1:6443", None),
            Cluster("local", "local", False, "demo/cluster", None),
        ]

    def check_clusters(
        self, names: Sequence[str] | None = None, timeout: float = 3.0
    ) -> dict[str, ClusterCheck]:
        return {
            "prod-eu": ClusterCheck(True, "Kubernetes v1.31.2", 0.042),
            "staging": ClusterCheck(
                False, "cannot connect to https://10.30.0.1:6443: connection refused", 0.003
            ),
            "local": ClusterCheck(True, "volumes under demo/cluster", 0.0),
        }

    def list_volumes(self, cluster: str, namespace: str | None = None) -> list[Volume]:
        def volume(ns: str, name: str, capacity: int, **backups: Any) -> Volume:
            return Volume(
                cluster, ns, name, "Block", capacity, "local-image", True, "Bound", True, **backups
            )

        return [
            volume(
                "demo",
                "app-data",
                256 * MIB,
                last_backup=POINTS[-1].created,
                last_point=POINTS[-1].id,
                chain_length=4,
                points=4,
                stored=13 * MIB,
            ),
            volume(
                "db",
                "pg-data",
                512 * MIB,
                last_backup="2026-03-11T03:00:00Z",
                last_point="77aa01b2c3d4e5f6",
                chain_length=2,
                points=2,
                stored=212 * MIB,
            ),
            volume("db", "pg-wal", 64 * MIB),
            replace(
                volume(
                    "web",
                    "uploads",
                    128 * MIB,
                    last_backup="2026-02-20T00:00:00Z",
                    last_point="0b1c2d3e4f506172",
                    chain_length=1,
                    points=1,
                    stored=41 * MIB,
                ),
                mode="",
                storage_class="",
                cbt=False,
                phase="backups only",
                in_cluster=False,
            ),
        ]

    def list_points(self, volume: str | None = None) -> list[Point]:
        return [p for p in POINTS if volume in (None, p.volume)]

    def chain(self, point_id: str) -> list[Point]:
        return POINTS[::-1]

    def jobs(self) -> list[JobView]:
        return list(JOBS)

    def job(self, job_id: str) -> JobView:
        return next(j for j in JOBS if j.id == job_id)

    def watch_job(self, job_id: str, listener: Callable[[JobView], None]) -> Callable[[], None]:
        listener(self.job(job_id))
        return lambda: None

    def list_files(self, point_id: str, path: str) -> list[FileEntry]:
        return FILES.get(path, [])

    def read_file(self, point_id: str, path: str, limit: int) -> bytes:
        return CONTENTS.get(path, bytes(range(256)) * 8)[:limit]

    def mounts(self) -> dict[str, str]:
        return {}

    # The snapshots only look: nothing here starts or changes anything.
    def start_backup(self, cluster: str, namespace: str, name: str) -> str:
        raise AssertionError("not in a snapshot")

    def start_verify(self, point_id: str, deep: bool = False) -> str:
        raise AssertionError("not in a snapshot")

    def start_restore(self, point_id: str, target: str, overwrite: bool = False) -> str:
        raise AssertionError("not in a snapshot")

    def start_extract(self, point_id: str, paths: Sequence[str], to_dir: str) -> str:
        raise AssertionError("not in a snapshot")

    def start_delete(self, point_id: str) -> str:
        raise AssertionError("not in a snapshot")

    def set_protected(self, point_id: str, protected: bool) -> None:
        raise AssertionError("not in a snapshot")

    def cancel_job(self, job_id: str) -> None:
        raise AssertionError("not in a snapshot")

    def mount(self, point_id: str, mountpoint: str) -> str:
        raise AssertionError("not in a snapshot")

    def unmount(self, point_id: str) -> None:
        raise AssertionError("not in a snapshot")


def app() -> LaminaApp:
    return make_app(RecordedClient(), clock=lambda: NOW, work_dir="/srv/restore")


async def until(pilot: Pilot[None], condition: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the screen did not load"
        await pilot.pause(0.02)


async def clusters_ready(pilot: Pilot[None]) -> None:
    app = pilot.app
    assert isinstance(app, LaminaApp)
    screen = app.screen
    await until(
        pilot,
        lambda: (
            isinstance(screen, ClustersScreen)
            and len(screen.checks) == 3
            and app.started
            and bool(app.job_views)
        ),
    )


async def to_volumes(pilot: Pilot[None]) -> VolumesScreen:
    await clusters_ready(pilot)
    await pilot.press("down", "down", "enter")  # the local cluster
    await until(
        pilot, lambda: isinstance(pilot.app.screen, VolumesScreen) and pilot.app.screen.loaded
    )
    screen = pilot.app.screen
    assert isinstance(screen, VolumesScreen)
    return screen


async def to_chain(pilot: Pilot[None]) -> ChainScreen:
    await to_volumes(pilot)
    await pilot.press("down", "down", "enter")  # db/pg-data, db/pg-wal, then demo/app-data
    await until(
        pilot, lambda: isinstance(pilot.app.screen, ChainScreen) and pilot.app.screen.loaded
    )
    screen = pilot.app.screen
    assert isinstance(screen, ChainScreen)
    return screen


async def to_files(pilot: Pilot[None]) -> FilesScreen:
    await to_chain(pilot)
    await pilot.press("f")
    await until(
        pilot, lambda: isinstance(pilot.app.screen, FilesScreen) and pilot.app.screen.root_loaded
    )
    screen = pilot.app.screen
    assert isinstance(screen, FilesScreen)
    return screen


def still_cursor(pilot: Pilot[None]) -> None:
    for box in pilot.app.screen.query(Input):
        box.cursor_blink = False


def test_clusters(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(app(), terminal_size=SIZE, run_before=clusters_ready)


def test_volumes_with_a_running_backup(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(app(), terminal_size=SIZE, run_before=to_volumes)


def test_volumes_filtered(snap_compare: Callable[..., bool]) -> None:
    async def run(pilot: Pilot[None]) -> None:
        await to_volumes(pilot)
        await pilot.press("slash", "d", "b", "enter", "s", "s", "s", "S")  # capacity, largest first
        still_cursor(pilot)

    assert snap_compare(app(), terminal_size=SIZE, run_before=run)


def test_chain(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(app(), terminal_size=SIZE, run_before=to_chain)


def test_files_with_preview_and_marks(snap_compare: Callable[..., bool]) -> None:
    async def run(pilot: Pilot[None]) -> None:
        screen = await to_files(pilot)
        await pilot.press("down", "down", "enter")  # from data: docs, etc; open /etc
        await until(pilot, lambda: "/etc" in screen.loaded)
        await pilot.press("down", "space")  # mark cron.d; the cursor moves on to app.conf
        await until(pilot, lambda: "workers = 8" in str(screen.query_one("#file-preview").render()))

    assert snap_compare(app(), terminal_size=SIZE, run_before=run)


def test_jobs_with_a_failure(snap_compare: Callable[..., bool]) -> None:
    async def run(pilot: Pilot[None]) -> None:
        await to_volumes(pilot)
        await pilot.press("J", "down")  # newest first: the running backup, then the failed verify

    assert snap_compare(app(), terminal_size=SIZE, run_before=run)


def test_help(snap_compare: Callable[..., bool]) -> None:
    async def run(pilot: Pilot[None]) -> None:
        await to_chain(pilot)
        await pilot.press("question_mark")

    assert snap_compare(app(), terminal_size=SIZE, run_before=run)


def test_command_line(snap_compare: Callable[..., bool]) -> None:
    async def run(pilot: Pilot[None]) -> None:
        await to_volumes(pilot)
        await pilot.press("colon", "j", "o")
        still_cursor(pilot)

    assert snap_compare(app(), terminal_size=SIZE, run_before=run)


def test_restore_prompt(snap_compare: Callable[..., bool]) -> None:
    async def run(pilot: Pilot[None]) -> None:
        await to_chain(pilot)
        await pilot.press("r")
        still_cursor(pilot)

    assert snap_compare(app(), terminal_size=SIZE, run_before=run)


def test_delete_question(snap_compare: Callable[..., bool]) -> None:
    async def run(pilot: Pilot[None]) -> None:
        await to_chain(pilot)
        await pilot.press("down", "d")  # the first incremental: not protected

    assert snap_compare(app(), terminal_size=SIZE, run_before=run)


@pytest.mark.parametrize("width", [100])
def test_narrow_terminal(snap_compare: Callable[..., bool], width: int) -> None:
    """A small terminal still shows the chain and its keys."""
    assert snap_compare(app(), terminal_size=(width, 30), run_before=to_chain)


class HostileClient(RecordedClient):
    """The recorded data, with a volume whose names and contents attack the terminal."""

    def list_files(self, point_id: str, path: str) -> list[FileEntry]:
        when = parse_time("2026-03-10T09:00:00Z")
        names = [os.fsdecode(name) for name in HOSTILE_FILES]
        entries = [
            FileEntry(
                "/" + os.fsdecode(HOSTILE_DIR[0]), os.fsdecode(HOSTILE_DIR[0]), "dir", 0, when
            ),
            *(FileEntry("/" + n, n, "file", 13, when, 0o100644) for n in names),
            FileEntry("/link", "link", "symlink", 12, when, 0o120777, os.fsdecode(HOSTILE_LINK[1])),
            FileEntry("/colours.txt", "colours.txt", "file", len(COLOURS), when, 0o100644),
        ]
        return entries if path == "/" else []

    def read_file(self, point_id: str, path: str, limit: int) -> bytes:
        return (COLOURS if path == "/colours.txt" else b"hostile name\n")[:limit]


def test_files_with_hostile_names(snap_compare: Callable[..., bool]) -> None:
    """Escape sequences, bidi overrides, markup and bad bytes are drawn as escapes."""

    async def run(pilot: Pilot[None]) -> None:
        screen = await to_files(pilot)
        # G and g go to the last and the first entry; colours.txt is the sixth: its colour
        # codes are shown, not obeyed.
        await pilot.press("G", "g", *["down"] * 5)
        await until(pilot, lambda: "second line" in str(screen.query_one("#file-preview").render()))

    hostile = make_app(HostileClient(), clock=lambda: NOW, work_dir="/srv/restore")
    assert snap_compare(hostile, terminal_size=SIZE, run_before=run)
