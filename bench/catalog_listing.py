"""Listing 1,000 volumes x 30 points: through the catalog's point list, and without it.

A measurement, not a test. It makes a repository (a local folder, or with ``--s3`` a bucket
on a SeaweedFS started for the run, as the tests do), backs up one tiny volume for real,
then writes the other points synthetically through the repository code (each a copy of that
manifest with its own id, volume, parent and time, and an empty extent map). Every listing
is the real service call, ``Service.list_volumes``, on a new ``Service`` (a new process's
view: no in-memory cache helps). It reports:

* without the catalog (``--catalog none``): every manifest listed, read and decoded (with
  ``--s3``: once with this machine's local manifest cache warm, once with it off);
* the first listing with an empty catalog (it fills the point list);
* with the catalog, current (the marker unchanged: one GET, then SQL), on a new ``Service``
  (which opens the repository: on S3 that includes making the boto3 client) and again on
  one ``Service`` kept open (what a refresh of the TUI's volumes screen costs);
* with the catalog after another writer added a point (the marker changed: one LIST of
  ``manifests/`` and one GET of the new manifest, then SQL);
* the listing of one volume's points (the chain screen).

    .venv/bin/python bench/catalog_listing.py [--volumes 1000] [--points 30] [--runs 3] [--s3]
        [--cached-only] [--catalog URL]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lamina.backend.service import Service, init_repository

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.seaweedfs import seaweedfs_s3

MIB = 1024 * 1024


def build(repo_url: str, work: Path, volumes: int, points: int) -> str:
    init_repository(repo_url)
    image = work / "disk.img"
    image.write_bytes(b"lamina" * (MIB // 6))
    service = Service(repo_url, catalog="none")
    try:
        service.start_backup(str(image), "bench/v0000").wait()
        (template,) = service.repo.list_points()
        repo = service.repo

        def write_volume(v: int) -> None:
            parent = None
            for p in range(points):
                if v == 0 and p == 0:
                    parent = template.id
                    continue
                point_id = f"{v:08x}{p:08x}"
                manifest = {
                    **template.manifest,
                    "id": point_id,
                    "parent": parent,
                    "volume": {**template.volume, "name": f"v{v:04d}"},
                    "created": f"2026-11-{1 + p:02d}T{v % 24:02d}:{v // 24 % 60:02d}:00Z",
                }
                manifest.pop("map", None)
                manifest.pop("fingerprints", None)
                repo.save_point(manifest, [])
                parent = point_id

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(write_volume, range(volumes)))
    finally:
        service.close()
    return repo_url


def timed(runs: int, fn: Callable[[], object]) -> list[tuple[float, float]]:
    """Wall and CPU seconds (this process, every thread) of each run: on a machine shared
    with other work the CPU time is what the listing itself cost."""
    seconds = []
    for _ in range(runs):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        seconds.append((time.perf_counter() - start, time.process_time() - cpu))
    return seconds


def listing(repo_url: str, catalog: str, expected_volumes: int, expected_points: int) -> None:
    service = Service(repo_url, catalog=catalog)
    try:
        volumes = service.list_volumes()
        assert len(volumes) == expected_volumes, len(volumes)
        assert sum(v.points for v in volumes) == expected_points
    finally:
        service.close()


@contextlib.contextmanager
def repository_url(work: Path, s3: bool) -> Iterator[str]:
    if not s3:
        yield str(work / "repo")
        return
    with seaweedfs_s3(work / "s3") as server:
        os.environ.update(server.environment())
        os.environ["LAMINA_CACHE_DIR"] = str(work / "local-cache")
        yield f"s3://{server.create_bucket('bench')}/repo"


@contextlib.contextmanager
def local_cache_off() -> Iterator[None]:
    os.environ["LAMINA_CACHE"] = "off"
    try:
        yield
    finally:
        del os.environ["LAMINA_CACHE"]


def add_point(repo_url: str, points: int) -> None:
    """Another writer's backup: one more point after volume 1's newest, through the
    repository code (loaded by id: listing every point would be the uncached listing)."""
    service = Service(repo_url, catalog="none")
    try:
        newest = service.repo.load_point(f"{1:08x}{points - 1:08x}")
        manifest = {**newest.manifest, "id": "ff" * 8, "parent": newest.id}
        manifest["created"] = "2026-12-01T00:00:00Z"
        service.repo.save_point(manifest, [])
    finally:
        service.close()


def one_volume(repo_url: str, catalog: str, volume: str, points: int) -> None:
    service = Service(repo_url, catalog=catalog)
    try:
        assert len(service.list_points(volume)) == points
    finally:
        service.close()


def report(label: str, runs: list[tuple[float, float]]) -> None:
    wall = [w for w, _ in runs]
    cpu = [c for _, c in runs]
    print(
        f"{label}: median {statistics.median(wall):.2f} s (CPU {statistics.median(cpu):.2f} s), "
        f"min {min(wall):.2f} s over {len(runs)} runs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=1000)
    parser.add_argument("--points", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--catalog", help="catalog URL (default: an SQLite file of the run)")
    parser.add_argument("--s3", action="store_true", help="the repository on SeaweedFS")
    parser.add_argument(
        "--cached-only", action="store_true", help="skip the listings without the catalog"
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="lamina-bench-catalog-") as tmp,
        repository_url(Path(tmp), args.s3) as repo_url,
    ):
        work = Path(tmp)
        start = time.perf_counter()
        build(repo_url, work, args.volumes, args.points)
        total = args.volumes * args.points
        where = "SeaweedFS" if args.s3 else "a local folder"
        print(
            f"built {args.volumes} volumes x {args.points} points on {where} in "
            f"{time.perf_counter() - start:.1f} s",
            flush=True,
        )
        rows = [("list_volumes without the catalog", False)]
        if args.s3:
            rows = [
                ("list_volumes without the catalog, local manifest cache warm", False),
                ("list_volumes without the catalog, local manifest cache off", True),
            ]
        for label, cache_off in [] if args.cached_only else rows:
            with local_cache_off() if cache_off else contextlib.nullcontext():
                report(
                    label, timed(args.runs, lambda: listing(repo_url, "none", args.volumes, total))
                )
        catalog = args.catalog or f"sqlite:///{work}/catalog.sqlite"
        report(
            "list_volumes, first with an empty catalog (fills it)",
            timed(1, lambda: listing(repo_url, catalog, args.volumes, total)),
        )
        report(
            "list_volumes with the catalog, current",
            timed(args.runs, lambda: listing(repo_url, catalog, args.volumes, total)),
        )
        kept = Service(repo_url, catalog=catalog)
        try:
            kept.list_volumes()  # opens the repository and the catalog once, as the TUI does
            report(
                "list_volumes with the catalog, current, again on one Service (a TUI refresh)",
                timed(args.runs, kept.list_volumes),
            )
        finally:
            kept.close()
        add_point(repo_url, args.points)
        report(
            "list_volumes with the catalog, after another writer added a point",
            timed(1, lambda: listing(repo_url, catalog, args.volumes, total + 1)),
        )
        report(
            "list_points of one volume with the catalog",
            timed(
                args.runs,
                lambda: one_volume(
                    repo_url, catalog, f"bench/v{args.volumes // 2:04d}", args.points
                ),
            ),
        )


if __name__ == "__main__":
    main()
