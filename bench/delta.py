"""Delta restore against full restore from S3: a volume with 1% changed since the target's copy.

    python bench/delta.py [--size 4GiB] [--out bench/results/NAME.json] [--drop-caches] [--keep]

The target holds the volume's older point (an earlier restore, which left its restore
record); the volume then changes by 1% in 64 KiB writes and is backed up again with its
changed ranges. Timed, each through lamina's real command line against a fresh SeaweedFS on
127.0.0.1, each result checked against the volume's digest:

* ``full``: the full restore of the new point into a new file;
* ``delta``: ``restore --delta`` of it onto the target, as a user runs it: the record of the
  earlier restore matches, so the two points' maps are compared and a sample is read;
* ``assume_from``: ``--delta --assume-from NEW`` back to the older point (ranges of its raw
  pieces are fetched, not whole pieces);
* ``delta_read``: ``--delta`` forward again with the records removed: the target is read and
  hashed where both sides hold data.

Targets (the issue's): the delta restore takes at most 25% of the full restore's time and
downloads at most twice the changed data. Each row also gives the restore's own time
(``duration_seconds``, inside the process: without start-up). See bench/README.md ("Delta
restore").
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import measure
import volume
from peers import Lamina
from report import format_size
from run import parse_size

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from tests.support.seaweedfs import seaweedfs_s3  # noqa: E402

CHANGE_FRACTION = 0.01
TIME_TARGET = 0.25  # delta time / full restore time
DOWNLOAD_TARGET = 2.0  # bytes downloaded / bytes changed


def _restore(
    lamina: Lamina, repo: str, point: str, target: Path, *extra: str, profile: Path | None = None
) -> tuple[float, dict[str, Any]]:
    """One timed `lamina restore` up to the data reaching the disk; its JSON report.
    ``profile``: run it under cProfile, its statistics written there (slower: not a figure)."""
    command = [lamina.binary, "restore", "--repo", repo, point, str(target), *extra]
    if profile is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), *command]
    measured = measure.run_measured([*command, "--json", "-q"], env=lamina.env)
    started = time.perf_counter()
    measure.fsync_path(target)
    report: dict[str, Any] = json.loads(measured.stdout)
    report["peak_rss_bytes"] = measured.peak_rss_bytes
    report["cpu_seconds"] = round(measured.cpu_seconds, 2)
    return measured.seconds + time.perf_counter() - started, report


def _downloaded(report: dict[str, Any]) -> int:
    requests = report.get("job", {}).get("requests", {})
    return int(requests.get("bytes_down", report.get("bytes_downloaded", 0)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("4GiB"))
    parser.add_argument("--out", help="JSON results (default bench/results/delta-TIME.json)")
    parser.add_argument("--workdir", help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the images and the bucket")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--drop-caches", action="store_true", help="drop the page cache first")
    parser.add_argument("--pause", type=float, default=5.0)
    parser.add_argument("--idle-target", type=float, default=0.85)
    parser.add_argument("--max-wait", type=float, default=120.0)
    parser.add_argument(
        "--profile",
        help="folder for a cProfile of each timed restore (ROW.prof; its times are not figures)",
    )
    args = parser.parse_args()

    folder = Path(args.workdir or tempfile.mkdtemp(prefix="lamina-delta-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out or REPO_ROOT / "bench" / "results" / f"delta-{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"size": args.size, "started": stamp, "seed": args.seed}
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)

    def settle() -> float:
        return measure.settle(args.drop_caches, args.pause, args.idle_target, args.max_wait)

    try:
        image, target, fresh = folder / "volume.img", folder / "target.img", folder / "full.img"
        layout = volume.plan_layout(args.size, args.seed)
        volume.write_image(image, layout, args.seed)
        results["allocated_bytes"] = layout.allocated
        print(f"volume: {format_size(args.size)}, {format_size(layout.allocated)} allocated")
        with seaweedfs_s3(folder / "s3") as server:
            lamina = Lamina({**server.environment(), "LAMINA_CACHE_DIR": str(folder / "cache")})
            repo = f"s3://{server.create_bucket('delta')}/repo"
            lamina.init(repo)
            old = str(lamina.backup(repo, image).point["id"])
            # The target: the volume as it was, restored earlier (untimed set-up).
            _restore(lamina, repo, old, target)
            old_digest = volume.file_digest(target)

            change = volume.apply_changes(image, CHANGE_FRACTION, args.seed + 1000)
            ranges = folder / "changed.json"
            volume.write_ranges_json(ranges, change.ranges)
            new = str(lamina.backup(repo, image, changed_ranges=ranges).point["id"])
            new_digest = volume.file_digest(image)
            results["bytes_changed"] = change.bytes_changed
            print(f"changed {len(change.ranges)} x 64 KiB ({format_size(change.bytes_changed)})")

            rows: dict[str, dict[str, Any]] = {}
            for key, point, path, extra, expected in (
                ("full", new, fresh, (), new_digest),
                ("delta", new, target, ("--delta",), new_digest),
                ("assume_from", old, target, ("--delta", "--assume-from", new), old_digest),
                ("delta_read", new, target, ("--delta",), new_digest),
            ):
                if key == "delta_read":  # no record: the target is read and hashed
                    shutil.rmtree(folder / "cache" / "restores", ignore_errors=True)
                idle = settle()
                profile = Path(args.profile) / f"{key}.prof" if args.profile else None
                seconds, report = _restore(lamina, repo, point, path, *extra, profile=profile)
                if volume.file_digest(path) != expected:
                    raise measure.StepFailed(f"the {key} restore differs from the volume")
                if key == "full":
                    path.unlink()
                rows[key] = {
                    "seconds": round(seconds, 3),
                    "in_process_seconds": report.get("duration_seconds"),
                    "bytes_downloaded": _downloaded(report),
                    "basis": report.get("basis", "full"),
                    "cpu_idle_before": round(idle, 2),
                    "report": report,
                }
                print(
                    f"  {key:<12} {seconds:8.2f} s ({report.get('duration_seconds', 0):.2f} s in "
                    f"the restore)  downloaded {format_size(rows[key]['bytes_downloaded'])}  "
                    f"basis {rows[key]['basis']}  (content checked)",
                    flush=True,
                )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    full, delta = rows["full"], rows["delta"]
    time_share = delta["seconds"] / full["seconds"]
    download_share = delta["bytes_downloaded"] / change.bytes_changed
    shares = {
        key: {
            "time": round(row["seconds"] / full["seconds"], 4),
            "in_process_time": round(row["in_process_seconds"] / full["in_process_seconds"], 4),
            "download_per_changed": round(row["bytes_downloaded"] / change.bytes_changed, 4),
        }
        for key, row in rows.items()
        if key != "full"
    }
    results.update(
        rows=rows,
        shares=shares,
        delta_time_share=round(time_share, 4),
        delta_download_per_changed=round(download_share, 4),
        time_target_met=time_share <= TIME_TARGET,
        download_target_met=download_share <= DOWNLOAD_TARGET,
        load_after=round(os.getloadavg()[0], 2),
    )
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    for key, share in shares.items():
        print(
            f"  {key:<12} {share['time']:7.1%} of the full restore's time "
            f"({share['in_process_time']:.1%} in the restore), downloaded "
            f"{share['download_per_changed']:.2f}x the changed data"
        )
    print(
        f"delta restore: {time_share:.1%} of the full restore's time (target <= "
        f"{TIME_TARGET:.0%}: {'met' if time_share <= TIME_TARGET else 'MISSED'}), downloaded "
        f"{download_share:.2f}x the changed data (target <= {DOWNLOAD_TARGET:g}x: "
        f"{'met' if download_share <= DOWNLOAD_TARGET else 'MISSED'})"
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
