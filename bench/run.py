"""lamina against restic, borg and the raw S3 ceiling, on one generated volume per size.

    python bench/run.py [--size 2GiB] [--sizes 1GiB,4GiB] [--only ceiling,s3,incremental,local]
                        [--out bench/results/NAME.json] [--drop-caches] [--keep]

See bench/README.md for what is measured and how the figures are judged.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ceiling
import measure
import volume
from peers import Borg, Lamina, LaminaServer, Restic, folder_bytes, tool_version
from report import (
    Row,
    SizeResults,
    as_json,
    format_size,
    measurements_table,
    scaling_verdicts,
    sparse_verdicts,
    verdicts_table,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from tests.support.seaweedfs import S3Server, find_weed, seaweedfs_s3  # noqa: E402

SECTIONS = ("ceiling", "s3", "incremental", "local", "sparse")
PER_SIZE_SECTIONS = {"ceiling", "s3", "incremental", "local"}
CHANGE_FRACTION = 0.01
# The same change at every size: what an incremental's time does when only the volume grows.
FIXED_CHANGE_BYTES = 10 * 1024 * 1024
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'256MiB', '2GiB', '4G', '1048576': binary units; a whole number of MiB."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 256MiB or 2GiB)")
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if size <= 0 or size % volume.BLOCK:
        raise argparse.ArgumentTypeError(f"size {text!r} must be a positive whole number of MiB")
    return size


def parse_sizes(text: str) -> list[int]:
    return sorted({parse_size(part) for part in text.split(",") if part.strip()})


def parse_sections(text: str) -> set[str]:
    chosen = {part.strip() for part in text.split(",") if part.strip()}
    unknown = chosen - set(SECTIONS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(sorted(unknown)) or '(none)'}; choose from {', '.join(SECTIONS)}"
        )
    return chosen


def _expect_incremental(point: dict[str, Any]) -> None:
    if point.get("kind") != "incremental":
        raise measure.StepFailed(f"lamina made a {point.get('kind')} point, not an incremental")


class SizeRun:
    """Every measurement at one volume size, on one image and one fresh S3 server."""

    def __init__(
        self,
        size: int,
        sections: set[str],
        folder: Path,
        server: S3Server,
        args: argparse.Namespace,
    ) -> None:
        self.size = size
        self.sections = sections
        self.folder = folder
        self.server = server
        self.drop_caches: bool = args.drop_caches
        self.pause: float = args.pause
        self.repeat: int = args.repeat
        self.idle_target: float = args.idle_target
        self.max_wait: float = args.max_wait
        self.seed: int = args.seed
        self.results = SizeResults(size)
        self.env = server.environment()
        self.client = ceiling.s3_client(self.env)
        self.image = folder / "volume.img"
        self.restore_dir = folder / "restore"
        self.restore_dir.mkdir(parents=True, exist_ok=True)
        self.digest = ""
        # lamina's local cache lives in the work folder, as restic's does; --no-lamina-cache
        # measures without it.
        lamina_cache = (
            {"LAMINA_CACHE": "off"}
            if args.no_lamina_cache
            else {"LAMINA_CACHE_DIR": str(folder / "lamina-cache")}
        )
        self.lamina = Lamina({**self.env, **lamina_cache})
        self.lamina_bucket = ""
        self.lamina_points: dict[str, str] = {}
        self.restic: Restic | None = None
        self.restic_bucket = ""

    # ------------------------------------------------------------------ plumbing

    def step(
        self, key: str, label: str, tool: str, action: Callable[[Row], None], *, repeat: bool = True
    ) -> Row:
        """Run one measured step (``--repeat`` times if it can be repeated, keeping the fastest);
        any failure becomes an error row instead of ending the run."""
        best: Row | None = None
        times: list[float] = []
        for _ in range(self.repeat if repeat else 1):
            row = Row(key, label, tool)
            idle = measure.settle(self.drop_caches, self.pause, self.idle_target, self.max_wait)
            row.extra["cpu_idle_before"] = round(idle, 2)
            row.extra["load_before"] = round(os.getloadavg()[0], 2)
            try:
                action(row)
            except Exception as e:
                row.error = " ".join(str(e).split()) or type(e).__name__
                row.seconds = None
                if os.environ.get("BENCH_DEBUG"):
                    traceback.print_exc()
            if row.ok and row.seconds is not None:
                times.append(round(row.seconds, 3))
            if best is None or (
                row.ok and (not best.ok or (row.seconds or 0) < (best.seconds or 0))
            ):
                best = row
        assert best is not None
        if len(times) > 1:
            best.extra["attempts_seconds"] = times
        self.results.add(best)
        outcome = f"ERROR {best.error}" if best.error else f"{best.seconds:.2f} s"
        if len(times) > 1:
            outcome += f" (best of {', '.join(f'{t:.2f}' for t in times)})"
        if best.extra.get("cpu_idle_before", 1.0) < self.idle_target:
            best.extra["busy_machine"] = True
            outcome += f" [machine busy: {best.extra['cpu_idle_before']:.0%} idle before]"
        print(f"  [{format_size(self.size)}] {label:<34} {tool:<7} {outcome}", flush=True)
        return best

    @staticmethod
    def fill(row: Row, measured: measure.Measured) -> None:
        row.seconds = measured.seconds
        row.peak_rss_bytes = measured.peak_rss_bytes
        row.cpu_seconds = measured.cpu_seconds

    def check_restored(self, path: Path, expected: str) -> None:
        try:
            actual = volume.file_digest(path)
        finally:
            path.unlink(missing_ok=True)
        if actual != expected:
            raise measure.StepFailed("the restored image differs from the source")

    def restore_timed(self, row: Row, run: Callable[[], measure.Measured], restored: Path) -> None:
        """Time a restore up to the data reaching the disk (fsync), the same for every tool."""
        measured = run()
        started = time.perf_counter()
        measure.fsync_path(restored)
        self.fill(row, measured)
        row.seconds = measured.seconds + time.perf_counter() - started

    # ------------------------------------------------------------------ the volume

    def make_volume(self) -> None:
        started = time.perf_counter()
        layout = volume.plan_layout(self.size, self.seed)
        volume.write_image(self.image, layout, self.seed)
        self.digest = volume.file_digest(self.image)
        self.results.facts.update(
            {
                "volume_bytes": self.size,
                "allocated_bytes": layout.allocated,
                "text_bytes": layout.bytes_of(volume.TEXT),
                "random_bytes": layout.bytes_of(volume.RANDOM),
                "generate_seconds": round(time.perf_counter() - started, 2),
            }
        )
        print(
            f"  [{format_size(self.size)}] volume: {format_size(layout.allocated)} allocated "
            f"({format_size(layout.bytes_of(volume.TEXT))} text, "
            f"{format_size(layout.bytes_of(volume.RANDOM))} random), rest holes",
            flush=True,
        )

    # ------------------------------------------------------------------ sections

    def run(self) -> SizeResults:
        self.make_volume()
        if "ceiling" in self.sections:
            self.measure_ceiling()
        if self.sections & {"s3", "incremental"}:
            self.full_backups_s3()
        if "s3" in self.sections:
            self.restores_s3()
        if "local" in self.sections:
            self.local()
        if "incremental" in self.sections:
            self.incrementals()
        return self.results

    def measure_ceiling(self) -> None:
        bucket = self.server.create_bucket("ceiling")
        keys: list[str] = []

        def put(row: Row) -> None:
            result = ceiling.put_objects(self.image, self.client, bucket)
            keys[:] = result.keys
            row.seconds = result.seconds
            row.stored_bytes = result.bytes
            rate = result.bytes / result.seconds
            row.extra["rate"] = rate
            row.extra["note"] = (
                f"{format_size(rate)}/s, {len(result.keys)} x 4 MiB objects, {ceiling.THREADS} threads"
            )

        def get(row: Row) -> None:
            if not keys:
                raise measure.StepFailed("nothing was uploaded to read back")
            result = ceiling.get_objects(self.client, bucket, keys)
            row.seconds = result.seconds
            row.stored_bytes = result.bytes
            rate = result.bytes / result.seconds
            row.extra["rate"] = rate
            row.extra["note"] = f"{format_size(rate)}/s, {ceiling.THREADS} threads"

        for direction, action in (("put", put), ("get", get)):
            row = self.step(
                f"ceiling.{direction}",
                f"raw {direction.upper()} ceiling (allocated data)",
                "boto3",
                action,
            )
            if row.ok:
                self.results.facts[f"ceiling_{direction}_rate"] = row.extra["rate"]

    def full_backups_s3(self) -> None:
        def lamina_full(row: Row) -> None:
            self.lamina_bucket = self.server.create_bucket("lamina")
            self.lamina.init(self.lamina_url)
            before = ceiling.bucket_bytes(self.client, self.lamina_bucket)
            backup = self.lamina.backup(self.lamina_url, self.image)
            self.fill(row, backup.measured)
            row.stored_bytes = ceiling.bucket_bytes(self.client, self.lamina_bucket) - before
            self.lamina_points["full"] = str(backup.point["id"])
            self._note_point(row, backup.point)

        self.step("s3.full.lamina", "full backup to S3", "lamina", lamina_full)

        def restic_full(row: Row) -> None:
            self.restic_bucket = self.server.create_bucket("restic")
            self.restic = Restic(
                self.env,
                f"s3:{self.server.endpoint_url}/{self.restic_bucket}",
                self.folder / "restic-cache",
            )
            self.restic.init()
            before = ceiling.bucket_bytes(self.client, self.restic_bucket)
            self.fill(row, self.restic.backup(self.image))
            row.stored_bytes = ceiling.bucket_bytes(self.client, self.restic_bucket) - before

        self.step("s3.full.restic", "full backup to S3", "restic", restic_full)

    @property
    def lamina_url(self) -> str:
        return f"s3://{self.lamina_bucket}/repo"

    @staticmethod
    def _note_point(row: Row, point: dict[str, Any]) -> None:
        stats = point.get("stats", {})
        row.extra["point"] = point.get("id")
        row.extra["stats"] = stats
        row.extra["note"] = (
            f"read {format_size(stats.get('bytes_read', 0))}, {stats.get('requests', '?')} requests"
        )

    def restores_s3(self) -> None:
        def lamina_restore(row: Row) -> None:
            point = self._need_point("full")
            target = self.restore_dir / "lamina.img"
            self.restore_timed(
                row, lambda: self.lamina.restore(self.lamina_url, point, target), target
            )
            row.stored_bytes = self.results.rows["s3.full.lamina"].stored_bytes
            self.check_restored(target, self.digest)
            row.extra["note"] = "content checked"

        self.step("s3.restore.lamina", "restore from S3", "lamina", lamina_restore)

        def restic_restore(row: Row) -> None:
            restic = self._need_restic()
            target_dir = self.restore_dir / "restic"
            restored = target_dir / self.image.resolve().relative_to("/")
            self.restore_timed(row, lambda: restic.restore(target_dir), restored)
            self.check_restored(restored, self.digest)
            shutil.rmtree(target_dir, ignore_errors=True)
            row.extra["note"] = "content checked"

        self.step("s3.restore.restic", "restore from S3", "restic", restic_restore)

    def local(self) -> None:
        lamina_repo = self.folder / "lamina-local"
        borg = Borg(self.folder / "borg-repo", self.folder / "borg-home")
        point: list[str] = []

        def lamina_full(row: Row) -> None:
            shutil.rmtree(lamina_repo, ignore_errors=True)
            self.lamina.init(str(lamina_repo))
            before = folder_bytes(lamina_repo)
            backup = self.lamina.backup(str(lamina_repo), self.image)
            self.fill(row, backup.measured)
            row.stored_bytes = folder_bytes(lamina_repo) - before
            point.append(str(backup.point["id"]))
            self._note_point(row, backup.point)

        def borg_create(row: Row) -> None:
            shutil.rmtree(borg.repository, ignore_errors=True)
            borg.init()
            before = folder_bytes(borg.repository)
            self.fill(row, borg.create(self.image, "full"))
            row.stored_bytes = folder_bytes(borg.repository) - before

        def lamina_restore(row: Row) -> None:
            if not point:
                raise measure.StepFailed("no local full backup to restore")
            target = self.restore_dir / "lamina-local.img"
            self.restore_timed(
                row, lambda: self.lamina.restore(str(lamina_repo), point[-1], target), target
            )
            self.check_restored(target, self.digest)
            row.extra["note"] = "content checked"

        def borg_extract(row: Row) -> None:
            target_dir = self.restore_dir / "borg"
            target_dir.mkdir(exist_ok=True)
            restored = target_dir / self.image.name
            self.restore_timed(row, lambda: borg.extract("full", target_dir), restored)
            self.check_restored(restored, self.digest)
            row.extra["note"] = "content checked"

        self.step("local.full.lamina", "local full backup", "lamina", lamina_full)
        self.step("local.full.borg", "local full backup", "borg", borg_create)
        self.step("local.restore.lamina", "local restore", "lamina", lamina_restore)
        self.step("local.restore.borg", "local restore", "borg", borg_extract)
        shutil.rmtree(lamina_repo, ignore_errors=True)
        shutil.rmtree(borg.repository, ignore_errors=True)

    def incrementals(self) -> None:
        change = volume.apply_changes(self.image, CHANGE_FRACTION, self.seed + 1000)
        ranges_file = self.folder / "changed-ranges.json"
        volume.write_ranges_json(ranges_file, change.ranges)
        changed_digest = volume.file_digest(self.image)
        self.results.facts.update(
            {
                "change_writes": len(change.ranges),
                "change_bytes": change.bytes_changed,
                "change_bytes_zstd": change.bytes_zstd,
            }
        )
        print(
            f"  [{format_size(self.size)}] changed {len(change.ranges)} x 64 KiB "
            f"({format_size(change.bytes_changed)}, {format_size(change.bytes_zstd)} after zstd)",
            flush=True,
        )

        def lamina_incremental(row: Row) -> None:
            self._need_point("full")
            before = ceiling.bucket_bytes(self.client, self.lamina_bucket)
            backup = self.lamina.backup(self.lamina_url, self.image, changed_ranges=ranges_file)
            self.fill(row, backup.measured)
            row.stored_bytes = ceiling.bucket_bytes(self.client, self.lamina_bucket) - before
            _expect_incremental(backup.point)
            self.lamina_points["incremental"] = str(backup.point["id"])
            self._note_point(row, backup.point)
            row.extra["note"] = f"{row.extra['note']}, with --changed-ranges"

        def restic_incremental(row: Row) -> None:
            restic = self._need_restic()
            before = ceiling.bucket_bytes(self.client, self.restic_bucket)
            self.fill(row, restic.backup(self.image))
            row.stored_bytes = ceiling.bucket_bytes(self.client, self.restic_bucket) - before
            row.extra["note"] = "re-reads the whole image"

        def lamina_restore_incremental(row: Row) -> None:
            point = self._need_point("incremental")
            target = self.restore_dir / "lamina-incremental.img"
            self.restore_timed(
                row, lambda: self.lamina.restore(self.lamina_url, point, target), target
            )
            self.check_restored(target, changed_digest)
            row.extra["note"] = "correctness check of the chain"

        self.step(
            "s3.incremental.lamina",
            "incremental 1% to S3",
            "lamina",
            lamina_incremental,
            repeat=False,
        )
        self.step(
            "s3.incremental.restic",
            "incremental 1% to S3",
            "restic",
            restic_incremental,
            repeat=False,
        )
        self.step(
            "s3.restore-incremental.lamina",
            "restore incremental from S3",
            "lamina",
            lamina_restore_incremental,
            repeat=False,
        )
        self.scan_incrementals()
        self.fixed_and_served_incrementals()

    def scan_incrementals(self) -> None:
        """The same kind of change again, backed up without changed ranges (a scan), by
        lamina and by restic, each on top of the previous backup."""
        change = volume.apply_changes(self.image, CHANGE_FRACTION, self.seed + 2000)
        changed_digest = volume.file_digest(self.image)
        self.results.facts.update(
            {"scan_change_bytes": change.bytes_changed, "scan_change_bytes_zstd": change.bytes_zstd}
        )

        def lamina_scan(row: Row) -> None:
            self._need_point("incremental")
            before = ceiling.bucket_bytes(self.client, self.lamina_bucket)
            backup = self.lamina.backup(self.lamina_url, self.image)
            self.fill(row, backup.measured)
            row.stored_bytes = ceiling.bucket_bytes(self.client, self.lamina_bucket) - before
            _expect_incremental(backup.point)
            self.lamina_points["scan"] = str(backup.point["id"])
            self._note_point(row, backup.point)
            row.extra["note"] = f"{row.extra['note']}, no changed ranges (scan)"

        def restic_scan(row: Row) -> None:
            restic = self._need_restic()
            before = ceiling.bucket_bytes(self.client, self.restic_bucket)
            self.fill(row, restic.backup(self.image))
            row.stored_bytes = ceiling.bucket_bytes(self.client, self.restic_bucket) - before
            row.extra["note"] = "re-reads the whole image"

        def lamina_restore_scan(row: Row) -> None:
            point = self._need_point("scan")
            target = self.restore_dir / "lamina-scan.img"
            self.restore_timed(
                row, lambda: self.lamina.restore(self.lamina_url, point, target), target
            )
            self.check_restored(target, changed_digest)
            row.extra["note"] = "correctness check of the chain"

        self.step(
            "s3.scan.lamina", "scan incremental 1% to S3", "lamina", lamina_scan, repeat=False
        )
        self.step(
            "s3.scan.restic", "scan incremental 1% to S3", "restic", restic_scan, repeat=False
        )
        self.step(
            "s3.restore-scan.lamina",
            "restore scan incremental from S3",
            "lamina",
            lamina_restore_scan,
            repeat=False,
        )

    def fixed_and_served_incrementals(self) -> None:
        """Two more changed-ranges incrementals: one of the same 10 MiB at every size (the
        time when only the volume grows), and one of 1% sent to a ``lamina serve`` that
        stays, as scheduled and scripted backups are (no interpreter start-up per job)."""
        fixed = volume.apply_changes(self.image, FIXED_CHANGE_BYTES / self.size, self.seed + 3000)
        fixed_ranges = self.folder / "fixed-ranges.json"
        volume.write_ranges_json(fixed_ranges, fixed.ranges)
        self.results.facts.update({"fixed_change_bytes": fixed.bytes_changed})

        def lamina_fixed(row: Row) -> None:
            self._need_point("scan")
            backup = self.lamina.backup(self.lamina_url, self.image, changed_ranges=fixed_ranges)
            self.fill(row, backup.measured)
            _expect_incremental(backup.point)
            self.lamina_points["fixed"] = str(backup.point["id"])
            self._note_point(row, backup.point)
            row.extra["note"] = (
                f"{row.extra['note']}, with --changed-ranges, "
                f"{format_size(fixed.bytes_changed)} changed"
            )

        self.step(
            "s3.incremental-fixed.lamina",
            "incremental 10 MiB to S3",
            "lamina",
            lamina_fixed,
            repeat=False,
        )

        change = volume.apply_changes(self.image, CHANGE_FRACTION, self.seed + 4000)
        ranges = self.folder / "served-ranges.json"
        volume.write_ranges_json(ranges, change.ranges)
        changed_digest = volume.file_digest(self.image)
        server: LaminaServer | None = None

        def lamina_served(row: Row) -> None:
            nonlocal server
            self._need_point("fixed")
            server = LaminaServer(
                self.lamina, self.lamina_url, self.folder, self.folder / "serve.log"
            )
            backup = self.lamina.backup("", self.image, changed_ranges=ranges, server=server)
            self.fill(row, backup.measured)
            _expect_incremental(backup.point)
            self.lamina_points["served"] = str(backup.point["id"])
            job = backup.point.get("job", {}).get("id")
            if job:
                row.extra["job_seconds"] = round(server.job_seconds(str(job)), 3)
            self._note_point(row, backup.point)
            row.extra["note"] = (
                f"lamina backup --server: the client's time; the server's job "
                f"{row.extra.get('job_seconds', '?')} s"
            )

        def lamina_restore_served(row: Row) -> None:
            point = self._need_point("served")
            target = self.restore_dir / "lamina-served.img"
            self.restore_timed(
                row, lambda: self.lamina.restore(self.lamina_url, point, target), target
            )
            self.check_restored(target, changed_digest)
            row.extra["note"] = "correctness check of the chain"

        try:
            self.step(
                "s3.served.lamina",
                "incremental 1% via lamina serve",
                "lamina",
                lamina_served,
                repeat=False,
            )
        finally:
            if server is not None:
                server.stop()
        self.step(
            "s3.restore-served.lamina",
            "restore served incremental from S3",
            "lamina",
            lamina_restore_served,
            repeat=False,
        )

    def _need_point(self, which: str) -> str:
        point = self.lamina_points.get(which)
        if point is None:
            raise measure.StepFailed(f"no lamina {which} backup to build on")
        return point

    def _need_restic(self) -> Restic:
        row = self.results.rows.get("s3.full.restic")
        if self.restic is None or row is None or not row.ok:
            raise measure.StepFailed("no restic full backup to build on")
        return self.restic


class SparseRun(SizeRun):
    """A large, mostly empty volume (64 GiB holding 2 GiB by default) backed up to a local
    folder: a scan incremental's time should follow the allocated bytes, a changed-ranges
    incremental's the changed bytes, and neither the volume size."""

    def __init__(self, folder: Path, server: S3Server, args: argparse.Namespace) -> None:
        super().__init__(args.sparse_size, {"sparse"}, folder, server, args)
        self.data_bytes: int = args.sparse_data

    def make_volume(self) -> None:
        started = time.perf_counter()
        layout = volume.plan_sparse_layout(self.size, self.data_bytes, self.seed)
        volume.write_image(self.image, layout, self.seed)
        self.results.facts.update(
            {
                "volume_bytes": self.size,
                "allocated_bytes": layout.allocated,
                "generate_seconds": round(time.perf_counter() - started, 2),
            }
        )
        print(
            f"  [{format_size(self.size)} sparse] volume: {format_size(layout.allocated)} "
            "allocated, rest holes",
            flush=True,
        )

    def run(self) -> SizeResults:
        self.make_volume()
        repo = self.folder / "lamina-sparse"
        points: dict[str, str] = {}

        def full(row: Row) -> None:
            shutil.rmtree(repo, ignore_errors=True)
            self.lamina.init(str(repo))
            backup = self.lamina.backup(str(repo), self.image)
            self.fill(row, backup.measured)
            row.stored_bytes = folder_bytes(repo)
            points["full"] = str(backup.point["id"])
            self._note_point(row, backup.point)

        def read_allocated(row: Row) -> None:
            script = str(Path(volume.__file__).resolve())
            self.fill(
                row,
                measure.run_measured(
                    [sys.executable, script, "read", str(self.image)], env=dict(os.environ)
                ),
            )
            row.extra["note"] = "reads every allocated byte once, 4 MiB at a time: a scan's floor"

        def incremental(row: Row, changed_ranges: bool, seed: int) -> None:
            if "full" not in points:
                raise measure.StepFailed("no full backup to build on")
            change = volume.apply_changes(self.image, CHANGE_FRACTION, seed, within_data=True)
            ranges = None
            if changed_ranges:
                ranges = self.folder / "changed-ranges.json"
                volume.write_ranges_json(ranges, change.ranges)
            before = folder_bytes(repo)
            backup = self.lamina.backup(str(repo), self.image, changed_ranges=ranges)
            self.fill(row, backup.measured)
            row.stored_bytes = folder_bytes(repo) - before
            row.extra["change_bytes"] = change.bytes_changed
            row.extra["change_bytes_zstd"] = change.bytes_zstd
            self._note_point(row, backup.point)
            row.extra["note"] = (
                f"{row.extra['note']}, {format_size(change.bytes_changed)} changed"
                + (", with --changed-ranges" if changed_ranges else ", no changed ranges (scan)")
            )

        label = f"{format_size(self.size)} sparse"
        self.step("sparse.full.lamina", f"{label}: full, local", "lamina", full, repeat=False)
        self.step("sparse.read.reference", f"{label}: read allocated", "python", read_allocated)
        self.step(
            "sparse.scan.lamina",
            f"{label}: scan incremental 1% of data",
            "lamina",
            lambda row: incremental(row, False, self.seed + 3000),
            repeat=False,
        )
        self.step(
            "sparse.changed.lamina",
            f"{label}: changed-ranges incremental",
            "lamina",
            lambda row: incremental(row, True, self.seed + 4000),
            repeat=False,
        )
        shutil.rmtree(repo, ignore_errors=True)
        return self.results


def machine_facts(args: argparse.Namespace) -> dict[str, Any]:
    def git(*command: str) -> str:
        try:
            return subprocess.run(
                ["git", *command], cwd=REPO_ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    return {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "engine_changes_uncommitted": bool(git("status", "--porcelain", "backend")),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "restic": tool_version(["restic", "version"]),
        "borg": tool_version(["borg", "--version"]),
        "seaweedfs": tool_version([find_weed(), "version"]).splitlines()[0],
        "seed": args.seed,
        "lamina_cache": not args.no_lamina_cache,
        "drop_caches": args.drop_caches,
        "change_fraction": CHANGE_FRACTION,
        "seaweedfs_volume_mb": args.weed_volume_mb,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size", type=parse_size, default=parse_size("2GiB"), help="volume size (default 2GiB)"
    )
    p.add_argument(
        "--sizes", type=parse_sizes, help="several sizes, e.g. 1GiB,4GiB (overrides --size)"
    )
    p.add_argument(
        "--only",
        type=parse_sections,
        default=set(SECTIONS),
        help=f"comma-separated sections: {', '.join(SECTIONS)} (default: all)",
    )
    p.add_argument(
        "--out", type=Path, help="JSON results file (default bench/results/bench-TIME.json)"
    )
    p.add_argument(
        "--workdir", type=Path, help="where images and repositories go (default: a temp dir)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    p.add_argument(
        "--sparse-size",
        type=parse_size,
        default=parse_size("64GiB"),
        help="volume size of the sparse section (default 64GiB)",
    )
    p.add_argument(
        "--sparse-data",
        type=parse_size,
        default=parse_size("2GiB"),
        help="data the sparse volume holds (default 2GiB)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the generated volume (default 1)")
    p.add_argument(
        "--weed-volume-mb",
        type=int,
        default=1024,
        help="SeaweedFS's volume size limit in MiB (default 1024; the tests' 64 makes a write "
        "wait about 1 s for a new volume every 64 MiB, for every tool)",
    )
    p.add_argument(
        "--no-lamina-cache",
        action="store_true",
        help="run lamina without its local cache (LAMINA_CACHE=off), to compare",
    )
    p.add_argument(
        "--drop-caches",
        action="store_true",
        help="drop the page cache before every timed step (root only; default: warm for every tool)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each repeatable step N times and keep the fastest (default 1)",
    )
    p.add_argument(
        "--pause",
        type=float,
        default=5.0,
        help="seconds of idling before every timed step (default 5; see README)",
    )
    p.add_argument(
        "--idle-target",
        type=float,
        default=0.85,
        help="before each step, wait until this share of CPU time is idle (default 0.85)",
    )
    p.add_argument(
        "--max-wait",
        type=float,
        default=60.0,
        help="longest wait for an idle machine before a step, in seconds (default 60)",
    )
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.drop_caches and os.geteuid() != 0:
        p.error("--drop-caches needs root")
    return args


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanups: servers stop, folders go


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    sizes: list[int] = args.sizes or [args.size]
    for program in ("restic", "borg"):
        if shutil.which(program) is None:
            print(f"note: {program} is not installed; its rows will be errors", file=sys.stderr)
    started = datetime.datetime.now(datetime.UTC)
    out = args.out or REPO_ROOT / "bench" / "results" / f"bench-{started:%Y%m%d-%H%M%S}.json"
    work_root = args.workdir or Path(tempfile.mkdtemp(prefix="lamina-bench-"))
    work_root.mkdir(parents=True, exist_ok=True)
    facts = machine_facts(args)
    print(
        f"lamina benchmark at {facts['commit']}: sizes {', '.join(format_size(s) for s in sizes)}; "
        f"sections {', '.join(s for s in SECTIONS if s in args.only)}; "
        f"page cache {'dropped before every step' if args.drop_caches else 'warm for every tool'}",
        flush=True,
    )
    all_results: list[SizeResults] = []
    sparse: SizeResults | None = None
    try:
        for size in sizes if args.only & PER_SIZE_SECTIONS else []:
            folder = work_root / f"size-{size // volume.MiB}MiB"
            folder.mkdir(parents=True, exist_ok=True)
            with seaweedfs_s3(folder / "s3", volume_size_limit_mb=args.weed_volume_mb) as server:
                results = SizeRun(size, args.only, folder, server, args).run()
            all_results.append(results)
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
        if "sparse" in args.only:
            folder = work_root / "sparse"
            folder.mkdir(parents=True, exist_ok=True)
            with seaweedfs_s3(folder / "s3", volume_size_limit_mb=args.weed_volume_mb) as server:
                sparse = SparseRun(folder, server, args).run()
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work_root, ignore_errors=True)
    scaling = scaling_verdicts(all_results)
    for results in all_results:
        print(f"\n=== {format_size(results.size)} volume: measurements ===")
        print(measurements_table(results))
        print(f"\n=== {format_size(results.size)} volume: targets ===")
        print(verdicts_table(results.verdicts()))
    if sparse is not None:
        print(f"\n=== {format_size(sparse.size)} sparse volume: measurements ===")
        print(measurements_table(sparse))
        print(f"\n=== {format_size(sparse.size)} sparse volume: targets ===")
        print(verdicts_table(sparse_verdicts(sparse, all_results)))
    if scaling:
        print("\n=== scaling ===")
        print(verdicts_table(scaling))
    facts["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    document: dict[str, Any] = {
        "machine": facts,
        "sizes": [as_json(r) for r in all_results],
        "scaling": [v.__dict__ for v in scaling],
    }
    if sparse is not None:
        document["sparse"] = {
            **as_json(sparse),
            "verdicts": [v.__dict__ for v in sparse_verdicts(sparse, all_results)],
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nresults written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
