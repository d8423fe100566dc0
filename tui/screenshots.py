"""Render every screen of the terminal UI into screenshots/*.svg (``make screenshots``).

It builds a demo-like repository in a temporary folder: an ext4 volume made with
``mkfs.ext4 -d`` and changed between backups with ``debugfs -w``, in a local cluster,
backed up three times; then it drives the real app (the same factory and in-process
client as ``lamina tui``) with Textual's pilot and saves what the terminal shows.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script from tui/: keep this folder's modules (app.py, client.py) off sys.path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from textual.pilot import Pilot  # noqa: E402

from lamina.backend.service import (  # noqa: E402
    Controller,
    Schedules,
    Service,
    init_repository,
    policy_from_options,
)
from lamina.tui.app import LaminaApp, make_app  # noqa: E402
from lamina.tui.screens.chain import ChainScreen  # noqa: E402
from lamina.tui.screens.clusters import ClustersScreen  # noqa: E402
from lamina.tui.screens.compare import CompareScreen  # noqa: E402
from lamina.tui.screens.files import FilesScreen  # noqa: E402
from lamina.tui.screens.history import HistoryScreen  # noqa: E402
from lamina.tui.screens.jobs import JobsScreen  # noqa: E402
from lamina.tui.screens.schedules import SchedulesScreen  # noqa: E402
from lamina.tui.screens.volumes import VolumesScreen  # noqa: E402

SIZE = (130, 36)
MIB = 1024 * 1024


def _tool(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/sbin/{name}"):
        if candidate and os.path.exists(candidate):
            return candidate
    raise SystemExit(f"screenshots need {name} (Debian package e2fsprogs)")


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


def _deterministic(size: int, seed: bytes) -> bytes:
    out = bytearray()
    digest = hashlib.sha256(seed).digest()
    while len(out) < size:
        digest = hashlib.sha256(digest).digest()
        out += digest
    return bytes(out[:size])


def build_demo(work: Path) -> Service:
    """A repository with a chain of three points and a local cluster of three volumes."""
    content = work / "content"
    (content / "etc").mkdir(parents=True)
    (content / "docs").mkdir()
    (content / "data").mkdir()
    (content / "etc" / "app.conf").write_text(
        "listen = 0.0.0.0:8080\nworkers = 4\nlog_level = info\n"
    )
    for i in range(12):
        (content / "docs" / f"note-{i:03d}.txt").write_text(
            "".join(f"line {j} of note {i}: the quick brown fox\n" for j in range(120))
        )
    (content / "data" / "table.db").write_bytes(_deterministic(6 * MIB, b"table"))
    (content / "data" / "zeros.bin").write_bytes(bytes(MIB))
    os.symlink("../etc/app.conf", content / "docs" / "config-link")
    image = work / "app-data.img"
    with open(image, "wb") as f:
        f.truncate(64 * MIB)
    _run(_tool("mkfs.ext4"), "-q", "-F", "-b", "4096", "-L", "app-data", "-E", "root_owner=0:0",
         "-d", str(content), str(image))  # fmt: skip

    big = work / "pg-data.img"
    with open(big, "wb") as f:
        f.truncate(1024 * MIB)
        for i in range(96):  # enough data that its backup is still running for the picture
            f.seek(i * 10 * MIB)
            f.write(os.urandom(4 * MIB))
    wal = work / "pg-wal.img"
    with open(wal, "wb") as f:
        f.truncate(32 * MIB)

    init_repository(str(work / "repo"))
    catalog = f"sqlite:///{work}/catalog.sqlite"  # its own history, not the user's
    service = Service(str(work / "repo"), local_root=str(work / "cluster"), catalog=catalog)
    service.add_local_volume("demo", "app-data", str(image))
    service.add_local_volume("db", "pg-data", str(big))
    service.add_local_volume("db", "pg-wal", str(wal))

    def backup() -> None:
        job = service.start_volume_backup("local", "demo", "app-data")
        job.wait()
        if job.error:
            raise SystemExit(f"backup failed: {job.error}")

    backup()
    edits = [
        {"/etc/app.conf": b"listen = 0.0.0.0:9090\nworkers = 8\nlog_level = debug\n"},
        {f"/docs/note-{i:03d}.txt": f"note {i} rewritten\n".encode() * 300 for i in (1, 5, 9)},
    ]
    for step, files in enumerate(edits):
        script = []
        for n, (dest, data) in enumerate(files.items()):
            local = work / f"upload-{step}-{n}"
            local.write_bytes(data)
            script += [f"rm {dest}", f"write {local} {dest}"]
        (work / "debugfs.cmd").write_text("\n".join(script) + "\n")
        _run(_tool("debugfs"), "-w", "-f", str(work / "debugfs.cmd"), str(image))
        backup()
    verify = service.start_verify(service.list_points()[-1].id)
    verify.wait()
    add_schedules(work, catalog, image, wal)
    # An offsite copy that holds the first point only, for the comparison.
    from lamina.backend.service.copies import start_copy

    init_repository(str(work / "offsite"))
    offsite = Service(str(work / "offsite"))
    copy = start_copy(service, offsite, [service.list_points("demo/app-data")[0].id])
    copy.wait()
    if copy.error:
        raise SystemExit(f"copy failed: {copy.error}")
    offsite.close()
    return service


def add_schedules(work: Path, catalog: str, image: Path, wal: Path) -> None:
    """An hourly schedule of demo/app-data that has run once (by a real controller), a
    4-hourly one of db/pg-wal that has not run yet, and a paused weekly prune."""
    repo, root = str(work / "repo"), str(work / "cluster")
    schedules = Schedules(catalog)
    keep = policy_from_options(hourly=24, daily=7)
    schedules.add("app-data-hourly", repository=repo, every="1h", volume="demo/app-data",
                  source=str(image), local_root=root, policy=keep)  # fmt: skip
    schedules.add("pg-wal-4h", repository=repo, cron="0 */4 * * *", volume="db/pg-wal",
                  source=str(wal), local_root=root)  # fmt: skip
    schedules.add("weekly-prune", repository=repo, cron="0 3 * * 0", prune=True)
    schedules.pause("weekly-prune")
    schedules.run_now("app-data-hourly")
    controller = Controller(catalog)
    try:
        if controller.tick() != ["app-data-hourly"]:
            raise SystemExit("the controller did not start the schedule")
        deadline = time.monotonic() + 120
        while controller.running():
            if time.monotonic() > deadline:
                raise SystemExit("the schedule's run did not end")
            time.sleep(0.1)
    finally:
        controller.shutdown()
        controller.close()
    if schedules.get("app-data-hourly").last_state != "succeeded":
        raise SystemExit("the schedule's run failed")


async def _until(
    pilot: Pilot[None], what: str, condition: Callable[[], object], timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"the app did not get to {what}")
        await pilot.pause(0.02)


async def shoot(app: LaminaApp, out: Path) -> list[Path]:
    saved: list[Path] = []

    def save(name: str) -> None:
        saved.append(Path(app.save_screenshot(f"{name}.svg", path=str(out))))

    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = app.screen
        await _until(
            pilot, "the clusters", lambda: isinstance(screen, ClustersScreen) and screen.checks
        )
        await pilot.pause(0.2)
        save("clusters")

        await pilot.press("enter")
        await _until(
            pilot,
            "the volumes",
            lambda: isinstance(app.screen, VolumesScreen) and app.screen.loaded,
        )
        await pilot.press("b")  # back up db/pg-data (the first row) and photograph it running
        await _until(  # the bar under the table is part way, with its rate and ETA
            pilot,
            "the running backup",
            lambda: any(
                v.phase == "backing up" and 0.05 < (v.fraction or 0) < 0.6 and v.eta
                for v in app.job_views.values()
            ),
        )
        await pilot.pause(0.3)
        save("volumes")
        await _until(
            pilot,
            "the end of the backup",
            lambda: all(v.finished for v in app.job_views.values()),
            120,
        )
        await _until(pilot, "the notification", lambda: bool(app._notifications))
        await pilot.pause(0.5)
        save("notification")  # the finished backup says which point it made

        await pilot.press("down", "down", "enter")  # db/pg-wal, then demo/app-data
        await _until(
            pilot, "the chain", lambda: isinstance(app.screen, ChainScreen) and app.screen.loaded
        )
        await pilot.press("down", "down")  # the newest point
        await pilot.pause(0.2)
        save("chain")

        await pilot.press("equals_sign", *"offsite", "enter")  # compare with the offsite copy
        await _until(
            pilot,
            "the comparison",
            lambda: isinstance(app.screen, CompareScreen) and app.screen.comparison is not None,
        )
        await pilot.pause(0.2)
        save("compare")
        await pilot.press("escape")
        await _until(pilot, "the chain again", lambda: isinstance(app.screen, ChainScreen))

        await pilot.press("f")
        await _until(
            pilot,
            "the files",
            lambda: isinstance(app.screen, FilesScreen) and app.screen.root_loaded,
        )
        files = app.screen
        assert isinstance(files, FilesScreen)
        await pilot.press("down", "down", "enter")  # from data: docs, etc; open /etc
        await _until(pilot, "/etc", lambda: "/etc" in files.loaded)
        await pilot.press("up", "space", "down")  # mark docs/; then etc/, app.conf
        await pilot.pause(0.5)
        save("files")

        await pilot.press("J")
        await _until(pilot, "the jobs", lambda: isinstance(app.screen, JobsScreen))
        await pilot.pause(0.3)
        save("jobs")

        await pilot.press("question_mark")
        await pilot.pause(0.3)
        save("help")
        await pilot.press("escape", "colon", "v", "o")
        await pilot.pause(0.3)
        save("command-line")

        await pilot.press("escape", "H")
        await _until(
            pilot,
            "the history",
            lambda: isinstance(app.screen, HistoryScreen) and bool(app.screen.items),
        )
        await pilot.pause(0.3)
        save("history")

        await pilot.press("T")
        await _until(
            pilot,
            "the schedules",
            lambda: isinstance(app.screen, SchedulesScreen) and bool(app.screen.items),
        )
        await pilot.pause(0.3)
        save("schedules")
    return saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=str(_HERE.parent / "screenshots"), help="folder for the SVGs"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # A fixed folder, so the paths the pictures show do not change from run to run.
    work = Path(tempfile.gettempdir()) / "lamina-screenshots"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        service = build_demo(work)
        try:
            app = make_app(service, work_dir=str(work))
            saved = asyncio.run(shoot(app, out))
        finally:
            for job in service.jobs():
                job.cancel()
                job.wait(30)
            service.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for path in saved:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
