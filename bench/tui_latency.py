"""How fast a key press reaches the terminal UI's screen while backups run in the background.

A measurement, not a test: it builds a local cluster of three volumes with incompressible
data in a temporary folder and opens the real app (same factory and in-process client as
``lamina tui``) under Textual's pilot. It backs up one volume, then the two others at once,
with the keys a user presses (b; space to mark, b), and meanwhile sends arrow keys through
the terminal driver, one every 30 ms, up and down the volume table. Each sample is the time
from sending a key to the first frame the app finishes after the cursor moved. It prints
p50, p95 and max: idle, during one backup and during two.

    .venv/bin/python bench/tui_latency.py [--keys 200] [--data-mib 512]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import events
from textual._compositor import CompositorUpdate

from lamina.backend.service import Service, init_repository
from lamina.tui.app import LaminaApp, make_app
from lamina.tui.screens.clusters import ClustersScreen
from lamina.tui.screens.volumes import VolumesScreen

MIB = 1024 * 1024


def build(work: Path, volumes: int, data_mib: int) -> Service:
    init_repository(str(work / "repo"))
    service = Service(str(work / "repo"), local_root=str(work / "cluster"))
    for n in range(volumes):
        image = work / f"vol-{n}.img"
        with open(image, "wb") as f:
            f.truncate(2 * data_mib * MIB)
            for i in range(data_mib // 4):
                f.seek(i * 8 * MIB)
                f.write(os.urandom(4 * MIB))
        service.add_local_volume("bench", f"vol-{n}", str(image))
    return service


class FrameClock:
    """When the app finishes each frame for its terminal.

    Under the pilot the terminal is headless and Textual skips the final write, so the
    frame is also encoded here as it would be for a real terminal, and timed after that.
    """

    def __init__(self, app: LaminaApp) -> None:
        self.times: list[float] = []
        original = app._display

        def display(screen: Any, renderable: Any) -> None:
            original(screen, renderable)
            if isinstance(renderable, CompositorUpdate):
                renderable.render_segments(app.console)
            self.times.append(time.perf_counter())

        app._display = display  # type: ignore[method-assign]

    def first_after(self, moment: float) -> float | None:
        i = bisect.bisect_left(self.times, moment)
        return self.times[i] if i < len(self.times) else None


async def measure(
    app: LaminaApp,
    frames: FrameClock,
    keys: int,
    while_: Callable[[], bool] = lambda: True,
) -> list[float]:
    """Send arrow keys the way a terminal does (through the driver), one every ~30 ms."""
    screen = app.screen
    assert isinstance(screen, VolumesScreen)
    table = screen.table
    driver = app._driver
    assert driver is not None
    moves: list[float] = []
    screen.watch(table, "cursor_coordinate", lambda: moves.append(time.perf_counter()), init=False)
    out = []
    for _ in range(keys):
        if not while_():
            break
        key = "down" if table.cursor_row == 0 else "up"
        seen = len(moves)
        event = events.Key(key, None)
        event.set_sender(app)
        started = time.perf_counter()
        driver.send_message(event)
        while len(moves) == seen or frames.first_after(moves[seen]) is None:
            if time.perf_counter() - started > 5:
                raise SystemExit("a key press did not reach the screen within 5 s")
            await asyncio.sleep(0.0005)
        drawn = frames.first_after(moves[seen])
        assert drawn is not None
        out.append(drawn - started)
        await asyncio.sleep(0.03)
    return out


def report(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[max(0, int(len(ms) * 0.95) - 1)]
    return (
        f"{name:<28} keys {len(ms):4d}  p50 {statistics.median(ms):6.1f} ms  "
        f"p95 {p95:6.1f} ms  max {ms[-1]:6.1f} ms"
    )


async def run(service: Service, keys: int) -> list[str]:
    app = make_app(service)
    lines: list[str] = []
    async with app.run_test(size=(130, 36)) as pilot:
        frames = FrameClock(app)
        while not (isinstance(app.screen, ClustersScreen) and app.screen.loaded):
            await pilot.pause(0.02)
        await pilot.press("enter")
        while not (isinstance(app.screen, VolumesScreen) and app.screen.loaded):
            await pilot.pause(0.02)
        await pilot.pause(0.3)
        lines.append(report("idle", await measure(app, frames, keys)))

        def running() -> bool:
            return any(not v.finished for v in app.job_views.values())

        for label, presses in (
            ("while 1 backup runs", ["b"]),  # the first volume
            ("while 2 backups run", ["down", "space", "space", "b"]),  # the other two
        ):
            await pilot.press(*presses)
            while not any(v.read > 0 and not v.finished for v in app.job_views.values()):
                await pilot.pause(0.01)
            started = time.monotonic()
            merged, redraws = app.feed.merged, app.redraws
            samples = await measure(app, frames, keys * 10, running)
            seconds = time.monotonic() - started
            lines.append(report(label, samples))
            lines.append(
                f"   ({seconds:.1f} s of backup; {app.feed.merged - merged} progress updates "
                f"merged away; {(app.redraws - redraws) / seconds:.1f} job redraws/s)"
            )
            while running():
                await pilot.pause(0.1)
        failed = [v.error for v in app.job_views.values() if v.state != "succeeded"]
        if failed:
            lines.append(f"   backups that did not succeed: {failed}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=200, help="key presses per measurement")
    parser.add_argument("--data-mib", type=int, default=512, help="data per volume, MiB")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lamina-tui-latency-"))
    try:
        service = build(work, 3, args.data_mib)
        lines = asyncio.run(run(service, args.keys))
        service.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"lamina tui: key press to screen, {os.cpu_count()} CPUs")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
