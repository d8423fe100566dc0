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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, NoReturn

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from lamina.backend.progress import Progress
from lamina.backend.service import (
    Capabilities,
    ClusterSummary,
    ClusterVolume,
    CompareReport,
    FileEntry,
    HistoryPage,
    Job,
    JobEvent,
    JobRecord,
    JobView,
    LastGoodBackup,
    LockInfo,
    MountInfo,
    PointInfo,
    Reachability,
    RepositoryInfo,
    RequestCounts,
    ScheduleInfo,
    VolumeComparison,
    VolumeInfo,
    VolumeRef,
)
from lamina.tui.app import LaminaApp, make_app
from lamina.tui.formatting import parse_time
from lamina.tui.screens.chain import ChainScreen
from lamina.tui.screens.clusters import ClustersScreen
from lamina.tui.screens.compare import CompareScreen
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
) -> PointInfo:
    capacity = 256 * MIB
    return PointInfo(
        id=id,
        parent=parent,
        kind="incremental" if parent else "full",
        volume=VolumeRef("local", "demo", "app-data"),
        created=created,
        capacity=capacity,
        stats={
            "bytes_read": read,
            "bytes_new": read - dedup,
            "bytes_stored": stored,
            "bytes_deduplicated": dedup,
            "bytes_uploaded": stored + 4096,
            "duration_seconds": round(read / (180 * MIB), 2) + 0.05,
        },
        notes=[],
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


def _file(
    path: str,
    name: str,
    kind: str,
    size: int,
    mtime: float,
    mode: int = 0,
    target: str | None = None,
) -> FileEntry:
    ns = int(mtime * 1e9)
    return FileEntry(
        name=name,
        kind=kind,
        inode=0,
        size=size,
        mode=mode,
        uid=0,
        gid=0,
        nlink=1,
        mtime_ns=ns,
        atime_ns=ns,
        ctime_ns=ns,
        link_target=target,
        path=path,
    )


FILES: dict[str, list[FileEntry]] = {
    "/": [
        _file("/data", "data", "dir", 4096, parse_time("2026-03-13T01:58:00Z"), 0o40755),
        _file("/docs", "docs", "dir", 4096, parse_time("2026-03-10T09:12:00Z"), 0o40755),
        _file("/etc", "etc", "dir", 4096, parse_time("2026-03-14T09:30:00Z"), 0o40755),
        _file(
            "/lost+found", "lost+found", "dir", 16384, parse_time("2026-03-10T09:00:00Z"), 0o40700
        ),
        _file("/README", "README", "file", 412, parse_time("2026-03-10T09:00:00Z"), 0o100644),
    ],
    "/etc": [
        _file(
            "/etc/app.conf", "app.conf", "file", 57, parse_time("2026-03-14T09:30:00Z"), 0o100644
        ),
        _file("/etc/cron.d", "cron.d", "dir", 4096, parse_time("2026-03-10T09:00:00Z"), 0o40755),
        _file(
            "/etc/current",
            "current",
            "symlink",
            8,
            parse_time("2026-03-10T09:00:00Z"),
            0o120777,
            "app.conf",
        ),
        _file(
            "/etc/tls.key", "tls.key", "file", 1704, parse_time("2026-03-10T09:00:00Z"), 0o100600
        ),
    ],
}
CONTENTS = {
    "/etc/app.conf": b"listen = 0.0.0.0:9090\nworkers = 8\nlog_level = debug\n# end\n",
    "/README": b"app-data volume: configuration in /etc, data in /data.\n",
}


PROGRESS = ("phase", "done", "total", "rate", "eta", "read", "stored", "deduplicated", "elapsed")


def _job(id: str, kind: str, description: str, state: str, **fields: Any) -> JobView:
    progress = Progress(**{name: fields.pop(name) for name in PROGRESS if name in fields})
    volume = fields.pop("volume", None)
    created = float(fields.pop("created"))
    finished = state in ("succeeded", "failed", "cancelled")
    return JobView(
        id=id,
        kind=kind,
        description=description,
        state=state,
        progress=progress,
        volume=VolumeRef.parse(volume) if volume else None,
        created=created,
        started=created,
        ended=created + progress.elapsed if finished else None,
        **fields,
    )


def _record(job_id: str, kind: str, state: str, volume: str | None, hours_ago: float) -> JobRecord:
    created = NOW - hours_ago * 3600
    record = JobRecord(
        id=job_id,
        kind=kind,
        state=state,
        description=f"{kind} {volume or 'the repository'}",
        volume=volume,
        created_at=created,
        started_at=created + 2,
        ended_at=created + 95,
        bytes_read=3 * 1024**3 if kind == "backup" else 0,
        bytes_stored=180 * 1024**2 if kind == "backup" else 0,
        error="backup failed: cannot read /dev/vg/db: I/O error" if state == "failed" else None,
        origin="api",
        host="mover-1",
        pid=4242,
        cost_usd=0.0123,
        events=[
            JobEvent(created, "queued"),
            JobEvent(created + 2, "running"),
            JobEvent(created + 95, state),
        ],
    )
    record.requests.update(put=420, get=12, head=3, list=2)
    return record


HISTORY = [
    _record("7a01c9e3d2b4", "backup", "succeeded", "local/demo/app-data", 2),
    _record("6f0e2d1c3b5a", "backup", "failed", "local/demo/db", 5),
    _record("5e9d8c7b6a41", "verify", "succeeded", None, 26),
]

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


def _not_in_a_snapshot() -> NoReturn:
    raise AssertionError("not in a snapshot")


class RecordedClient:
    """Recorded data for snapshots: fixed ids, times and sizes; jobs never move. It keeps
    the whole service contract (LaminaService); what the screens only look at answers."""

    repo_url = "s3://backups/lamina"

    def info(self) -> RepositoryInfo:
        return RepositoryInfo(
            self.repo_url, "3e1f", 1, 4 * MIB, True, "zstd level 3", "2026-03-01T00:00:00Z"
        )

    def capabilities(self) -> Capabilities:
        return Capabilities(browse=True, extract=True, mount=False, delete=True, protect=True)

    def close(self) -> None:
        pass

    def list_clusters(self) -> list[ClusterSummary]:
        return [
            ClusterSummary("prod-eu", "kubernetes", True, "https://10.20.0.1:6443", "default"),
            ClusterSummary("staging", "kubernetes", False, "https://10.30.0.1:6443", None),
            ClusterSummary("local", "local", False, "demo/cluster", None),
        ]

    def check_clusters(
        self, names: Iterable[str] | None = None, *, timeout: float = 3.0
    ) -> dict[str, Reachability]:
        return {
            "prod-eu": Reachability(True, "Kubernetes v1.31.2", 0.042),
            "staging": Reachability(
                False, "cannot connect to https://10.30.0.1:6443: connection refused", 0.003
            ),
            "local": Reachability(True, "volumes under demo/cluster", 0.0),
        }

    def list_cluster_volumes(
        self, cluster: str, namespace: str | None = None, *, with_backups: bool = False
    ) -> list[ClusterVolume]:
        def volume(ns: str, name: str, capacity: int, **backups: Any) -> ClusterVolume:
            return ClusterVolume(
                cluster, ns, name, "Block", capacity, "local-image", "lamina.local", True,
                phase="Bound", **backups,
            )  # fmt: skip

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

    def list_points(self, volume: str | VolumeRef | None = None) -> list[PointInfo]:
        return [p for p in POINTS if volume in (None, str(p.volume))]

    def get_point(self, ref: str) -> PointInfo:
        return next(p for p in POINTS if p.id.startswith(ref))

    def chain(self, ref: str) -> list[PointInfo]:
        return POINTS[::-1]

    def list_volumes(self) -> list[VolumeInfo]:
        _not_in_a_snapshot()

    def job_views(self) -> list[JobView]:
        return list(JOBS)

    def job_view(self, job_id: str) -> JobView:
        return next(j for j in JOBS if j.id == job_id)

    def watch_job(self, job_id: str, listener: Callable[[JobView], None]) -> Callable[[], None]:
        listener(self.job_view(job_id))
        return lambda: None

    def list_files(self, point_ref: str, path: str = "/") -> list[FileEntry]:
        return FILES.get(path, [])

    def read_file(self, point_ref: str, path: str, *, offset: int = 0, length: int = 0) -> bytes:
        return CONTENTS.get(path, bytes(range(256)) * 8)[offset : offset + length]

    def list_mounts(self) -> list[MountInfo]:
        return []

    def list_history(
        self,
        *,
        volume: str | None = None,
        kind: str | None = None,
        since: float | None = None,
        failed: bool = False,
        limit: int | None = None,
        page_token: str = "",
    ) -> HistoryPage:
        return HistoryPage(jobs=[replace(r, events=[]) for r in HISTORY])

    def get_job(self, job_id: str) -> JobRecord:
        return next(r for r in HISTORY if r.id == job_id)

    def job_requests(self, job_id: str) -> RequestCounts | None:
        return None  # the recorded jobs' requests are in their history records

    def list_schedules(self) -> list[ScheduleInfo]:
        return []

    def get_schedule(self, name: str) -> ScheduleInfo:
        _not_in_a_snapshot()

    def pause_schedule(self, name: str) -> ScheduleInfo:
        _not_in_a_snapshot()

    def resume_schedule(self, name: str) -> ScheduleInfo:
        _not_in_a_snapshot()

    def run_schedule_now(self, name: str) -> ScheduleInfo:
        _not_in_a_snapshot()

    def remove_schedule(self, name: str) -> None:
        _not_in_a_snapshot()

    def last_good_backups(self, volumes: Sequence[str]) -> list[LastGoodBackup]:
        # app-data's last good backup is recent; pg-data's is two days old: drawn in red.
        ended = {"demo/app-data": NOW - 3 * 3600, "db/pg-data": NOW - 2 * 86400}
        return [LastGoodBackup(v, ended.get(v.split("/", 1)[-1])) for v in volumes]

    # The snapshots only look: nothing here starts or changes anything.
    def start_backup(self, source: str, volume: str | VolumeRef, **options: Any) -> Job:
        _not_in_a_snapshot()

    def start_volume_backup(self, cluster: str, namespace: str, name: str) -> Job:
        _not_in_a_snapshot()

    def start_restore(
        self,
        point_ref: str,
        target: str,
        *,
        overwrite: bool = False,
        within: Sequence[str] = (),
        delta: bool = False,
        assume_from: str | None = None,
    ) -> Job:
        _not_in_a_snapshot()

    def start_copy(
        self,
        other: str,
        *,
        direction: str = "to",
        points: Sequence[str] = (),
        volume: str | None = None,
        verify: bool = False,
        other_password: bytes | None = None,
    ) -> Job:
        _not_in_a_snapshot()

    def compare(
        self, other: str, *, volume: str | None = None, other_password: bytes | None = None
    ) -> CompareReport:
        """An offsite copy one point behind, with a point of its own and one that differs."""
        ids = [p.id for p in POINTS]
        return CompareReport(
            self.repo_url,
            other,
            [
                VolumeComparison(
                    "local/demo/app-data",
                    both=ids[:1],
                    only_left=ids[2:],
                    only_right=["7d3e0a9f5b1c2864"],
                    differing=ids[1:2],
                    newest_common=ids[0],
                    left_behind_points=1,
                    left_behind_bytes=12 * MIB,
                    right_behind_points=2,
                    right_behind_bytes=3 * MIB + 98304,
                )
            ],
        )

    def start_verify(self, point_ref: str | None = None, *, deep: bool = False) -> Job:
        _not_in_a_snapshot()

    def start_extract(
        self, point_ref: str, paths: Sequence[str], to_dir: str, *, within: Sequence[str] = ()
    ) -> Job:
        _not_in_a_snapshot()

    def start_delete(self, point_ref: str) -> Job:
        _not_in_a_snapshot()

    def start_forget(self, policy: Any, *, volume: str | None = None, dry_run: bool = False) -> Job:
        _not_in_a_snapshot()

    def start_prune(self, *, dry_run: bool = False, repack_below: float = 0.5) -> Job:
        _not_in_a_snapshot()

    def start_consolidate(self, point_ref: str, until: str | None = None) -> Job:
        _not_in_a_snapshot()

    def protect(self, point_ref: str, note: str = "") -> PointInfo:
        _not_in_a_snapshot()

    def unprotect(self, point_ref: str) -> PointInfo:
        _not_in_a_snapshot()

    def cancel_job(self, job_id: str) -> None:
        _not_in_a_snapshot()

    def list_locks(self) -> list[LockInfo]:
        _not_in_a_snapshot()

    def unlock(self, *, all_locks: bool = False) -> list[LockInfo]:
        _not_in_a_snapshot()

    def mount(
        self, point_ref: str | None, mountpoint: str, *, cache_bytes: int = 512 * 1024 * 1024
    ) -> MountInfo:
        _not_in_a_snapshot()

    def unmount(self, mountpoint: str) -> None:
        _not_in_a_snapshot()


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


def test_compare_with_another_repository(snap_compare: Callable[..., bool]) -> None:
    async def run(pilot: Pilot[None]) -> None:
        await to_chain(pilot)
        await pilot.press("equals_sign", *"s3://offsite/lamina", "enter")
        await until(
            pilot,
            lambda: isinstance(pilot.app.screen, CompareScreen) and pilot.app.screen.loaded,
        )

    assert snap_compare(app(), terminal_size=SIZE, run_before=run)


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

    def list_files(self, point_ref: str, path: str = "/") -> list[FileEntry]:
        when = parse_time("2026-03-10T09:00:00Z")
        names = [os.fsdecode(name) for name in HOSTILE_FILES]
        entries = [
            _file("/" + os.fsdecode(HOSTILE_DIR[0]), os.fsdecode(HOSTILE_DIR[0]), "dir", 0, when),
            *(_file("/" + n, n, "file", 13, when, 0o100644) for n in names),
            _file("/link", "link", "symlink", 12, when, 0o120777, os.fsdecode(HOSTILE_LINK[1])),
            _file("/colours.txt", "colours.txt", "file", len(COLOURS), when, 0o100644),
        ]
        return entries if path == "/" else []

    def read_file(self, point_ref: str, path: str, *, offset: int = 0, length: int = 0) -> bytes:
        return (COLOURS if path == "/colours.txt" else b"hostile name\n")[offset : offset + length]


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
