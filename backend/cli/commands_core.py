"""Core commands: repo init, backup, points, chain, restore, verify, demo."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..display import printable, tree_rows
from ..errors import UsageError
from ..service import (
    PointInfo,
    RestoreReport,
    VerifyReport,
    init_repository,
    ranges_from_json_file,
    read_password_file,
)
from ..units import format_rate, format_size, parse_size, plural
from .common import (
    add_repo_args,
    elapsed,
    new_password,
    open_service,
    print_json,
    print_requests,
    run_job,
    with_requests,
)
from .restore_pvc import add_to_pvc_args, pvc_only_options, restore_to_pvc


def register(sub: Any) -> None:
    repo = sub.add_parser("repo", help="create and inspect repositories")
    repo_sub = repo.add_subparsers(dest="repo_command", metavar="ACTION")
    repo_sub.required = True
    p = repo_sub.add_parser("init", help="create a new repository")
    p.add_argument(
        "repo",
        metavar="REPO",
        nargs="?",
        help="a path, file:///path or s3://bucket/prefix (default: $LAMINA_REPO)",
    )
    p.add_argument(
        "--grid-size", default="4MiB", help="grid for full backups (power of two >= 64KiB)"
    )
    p.add_argument(
        "--fingerprint-block",
        default="64KiB",
        help="block a scan incremental compares and stores (power of two, 4KiB to the grid; "
        "0: none, cell hashes only)",
    )
    p.add_argument("--compression-level", type=int, default=3, help="zstd level, 1-19 (default 3)")
    p.add_argument(
        "--encrypt",
        action="store_true",
        help="encrypt with AES-256-GCM (the password from --password-file, or asked twice)",
    )
    p.add_argument("--password-file", help="file holding the password (or LAMINA_PASSWORD_FILE)")
    p.add_argument(
        "--object-lock-days",
        type=int,
        default=0,
        metavar="DAYS",
        help="S3 only: keep every object under Object Lock (COMPLIANCE) retention for DAYS",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_repo_init, repo_from_env=True, repo_required=True)
    p = repo_sub.add_parser("info", help="show a repository's settings")
    add_repo_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_repo_info)

    p = sub.add_parser("backup", help="back up a volume image or block device")
    add_repo_args(p)
    p.add_argument("--volume", required=True, help="volume name: NAME, NS/NAME or CLUSTER/NS/NAME")
    p.add_argument("source", metavar="SOURCE", help="image file or block device to read")
    p.add_argument(
        "--parent",
        default="auto",
        help="auto (newest point of the volume), none (full) or a point id",
    )
    p.add_argument(
        "--changed-ranges",
        metavar="FILE.json",
        help='byte ranges changed since the parent: [{"byte_offset": N, "size_bytes": N}, ...]',
    )
    p.add_argument("--snapshot-handle", help="record the handle of the snapshot being backed up")
    p.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="attach a label"
    )
    p.add_argument("--json", action="store_true", help="print the new point as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("points", help="list restore points")
    add_repo_args(p)
    p.add_argument("--volume", help="only this volume")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_points)

    p = sub.add_parser("chain", help="show a point and its ancestors down to the full backup")
    add_repo_args(p)
    p.add_argument("point", metavar="POINT", help="point id or unique prefix")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_chain)

    p = sub.add_parser("restore", help="restore a point to an image file or block device")
    add_repo_args(p)
    p.add_argument("point", metavar="POINT", help="point id or unique prefix")
    p.add_argument(
        "target",
        metavar="TARGET",
        help="new image file, or a block device (with --to-pvc: NAMESPACE/NAME of a new PVC)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing image file")
    p.add_argument(
        "--delta",
        action="store_true",
        help="TARGET holds some version of the volume: read it and write only what differs",
    )
    p.add_argument(
        "--assume-from",
        metavar="POINT",
        help="with --delta: TARGET holds this point; skip reading it (checked by sampling)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    add_to_pvc_args(p)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser(
        "verify", help="check that points are complete (--deep: re-read every piece)"
    )
    add_repo_args(p)
    p.add_argument("point", metavar="POINT", nargs="?", help="one point (default: all)")
    p.add_argument("--deep", action="store_true", help="download and re-hash every piece")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "demo", help="build a volume, back up a chain, restore and check every point"
    )
    p.add_argument("--dir", default="demo", help="working folder (default ./demo)")
    p.set_defaults(func=cmd_demo)


def cmd_repo_init(args: argparse.Namespace) -> int:
    password = read_password_file(args.password_file)
    if args.encrypt and password is None:
        password = new_password()
    if args.encrypt and password is None:
        raise UsageError(
            "--encrypt needs --password-file (or LAMINA_PASSWORD_FILE), or a terminal to ask on"
        )
    if password is not None and not args.encrypt:
        raise UsageError(
            "a password was given without --encrypt; add --encrypt to encrypt the repository"
        )
    info = init_repository(
        args.repo,
        grid_size=parse_size(args.grid_size),
        password=password if args.encrypt else None,
        zstd_level=args.compression_level,
        object_lock_days=args.object_lock_days,
        fingerprint_block=parse_size(args.fingerprint_block),
    )
    if args.json:
        print_json(info.as_json())
    else:
        print(
            f"created repository {info.id[:8]} at {info.url} "
            f"(grid {format_size(info.grid_size)}, {info.compression}, "
            f"{'encrypted' if info.encrypted else 'not encrypted'})"
        )
    return 0


def cmd_repo_info(args: argparse.Namespace) -> int:
    info = open_service(args).info()
    if args.json:
        print_json(info.as_json())
    else:
        shown = {
            **info.as_json(),
            "grid_size": format_size(info.grid_size),
            "fingerprint_block": (
                format_size(info.fingerprint_block) if info.fingerprint_block else "off"
            ),
            "encrypted": "yes" if info.encrypted else "no",
            "object_lock_days": (
                plural(info.object_lock_days, "day") if info.object_lock_days else "off"
            ),
        }
        for k, v in shown.items():
            print(f"{k:17} {printable(str(v))}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    service = open_service(args)
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"label {item!r} is not KEY=VALUE")
        labels[key] = value
    extra = backup_range_options(args)
    if args.changed_ranges:
        extra["changed_ranges"] = ranges_from_json_file(args.changed_ranges)
        extra["changed_ranges_origin"] = f"file {args.changed_ranges}"
    job = service.start_backup(
        args.source,
        args.volume,
        parent=args.parent,
        snapshot_handle=args.snapshot_handle,
        labels=labels,
        **extra,
    )
    point: PointInfo = run_job(job, quiet=args.quiet)
    if args.json:
        print_json(with_requests(point.as_json(), service, job))
        return 0
    s = point.stats
    print(
        f"{point.kind} point {printable(point.id)} of {printable(str(point.volume))} "
        f"({format_size(point.capacity)})"
    )
    for note in point.notes:
        print(f"  note: {printable(note)}")
    rate = s["bytes_read"] / s["duration_seconds"] if s.get("duration_seconds") else 0
    print(
        f"  read {format_size(s['bytes_read'])} in {elapsed(s['duration_seconds'])} ({format_rate(rate)}); "
        f"new {format_size(s['bytes_new'])} stored as {format_size(s['bytes_stored'])}; "
        f"deduplicated {format_size(s['bytes_deduplicated'])}; zero {format_size(s['bytes_zero'])}; "
        f"{plural(s['requests'], 'request')}"
    )
    print_requests(service, job)
    return 0


def backup_range_options(args: argparse.Namespace) -> dict[str, Any]:
    """Hook for range sources added by other command modules (CBT); none by default."""
    hook = getattr(args, "range_options_hook", None)
    return dict(hook(args)) if hook else {}


def _point_row(p: PointInfo) -> str:
    s = p.stats
    return (
        f"{printable(p.id)}  {printable(p.created[:19]).replace('T', ' ')}  "
        f"{printable(p.kind):<11}  {printable(str(p.volume)):<30}  "
        f"{format_size(p.capacity):>10}  {format_size(s.get('bytes_stored', 0)):>10}  "
        f"{printable(p.parent or '-'):<16}"
    )


_POINT_HEADER = (
    f"{'ID':<16}  {'CREATED (UTC)':<19}  {'KIND':<11}  {'VOLUME':<30}  {'CAPACITY':>10}  "
    f"{'STORED':>10}  {'PARENT':<16}"
)


def cmd_points(args: argparse.Namespace) -> int:
    points = open_service(args).list_points(args.volume)
    if args.json:
        print_json([p.as_json() for p in points])
        return 0
    if not points:
        print("no restore points" + (f" for volume {args.volume}" if args.volume else ""))
        return 0
    # One write for the whole table: 30,000 rows printed one by one cost 0.25 s.
    print("\n".join([_POINT_HEADER, *(_point_row(p) for p in points)]))
    return 0


def cmd_chain(args: argparse.Namespace) -> int:
    chain = open_service(args).chain(args.point)
    if args.json:
        print_json([p.as_json() for p in chain])
        return 0
    newest = chain[0]
    print(
        f"chain of {printable(newest.id)} ({printable(str(newest.volume))}), each point under "
        f"its parent, {plural(len(chain), 'point')}:"
    )
    rows = tree_rows(
        chain, key=lambda p: p.id, parent=lambda p: p.parent, order=lambda p: p.created
    )
    cells = [
        (f"{connector}{'●' if p.kind == 'full' else '○'} {printable(p.id)}", p)
        for p, connector in rows
    ]
    width = max(len(cell) for cell, _ in cells)
    print(
        f"  {'POINT':<{width}}  {'CREATED (UTC)':<19}  {'KIND':<11}  {'READ':>10}  {'CHANGED':>8}  "
        f"{'STORED':>10}"
    )
    for cell, p in cells:
        s = p.stats
        changed = s.get("bytes_read", 0) / p.capacity * 100 if p.capacity else 0
        print(
            f"  {cell:<{width}}  {printable(p.created[:19]).replace('T', ' '):<19}  "
            f"{printable(p.kind):<11}  {format_size(s.get('bytes_read', 0)):>10}  "
            f"{changed:>7.2f}%  {format_size(s.get('bytes_stored', 0)):>10}"
        )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    if args.assume_from and not args.delta:
        raise UsageError("--assume-from needs --delta")
    if args.to_pvc:
        return restore_to_pvc(args)
    if pvc_only_options(args):
        raise UsageError(f"{pvc_only_options(args)[0]} applies to --to-pvc only")
    service = open_service(args)
    if args.delta:
        job = service.start_restore(
            args.point,
            args.target,
            overwrite=args.overwrite,
            delta=True,
            assume_from=args.assume_from,
        )
        result = run_job(job, quiet=args.quiet)
        if args.json:
            print_json(with_requests(result, service, job))
            return 0
        how = ""
        if result.get("basis") == "record":  # the record of the last restore onto it matched
            how = f" (it held point {printable(result['assumed_from'] or '')}, as recorded)"
        print(
            f"restored point {printable(result['point'])} onto {printable(result['target'])}"
            f"{how}: read {format_size(result['bytes_read_target'])} of the target, wrote "
            f"{format_size(result['bytes_written'])} ({plural(result['blocks_differing'], 'block')} "
            f"differed), downloaded {format_size(result['bytes_downloaded'])} in "
            f"{elapsed(result['duration_seconds'])}; the image digest checked"
        )
        print_requests(service, job)
        return 0
    job = service.start_restore(args.point, args.target, overwrite=args.overwrite)
    report: RestoreReport = run_job(job, quiet=args.quiet)
    if args.json:
        print_json(with_requests(report.as_json(), service, job))
        return 0
    print(
        f"restored point {printable(report.point)} to {printable(report.target)}: "
        f"{format_size(report.capacity)} volume, "
        f"{format_size(report.bytes_written)} of data in {elapsed(report.duration_seconds)} "
        f"({format_rate(report.rate)}); every piece and the image digest checked"
    )
    print_requests(service, job)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    job = open_service(args).start_verify(args.point, deep=args.deep)
    report: VerifyReport = run_job(job, quiet=args.quiet)
    if args.json:
        print_json(
            {
                "ok": report.ok,
                "points": report.points,
                "pieces": report.pieces,
                "deep": report.deep,
                "bytes_checked": report.bytes_checked,
                "problems": report.problems,
            }
        )
    else:
        for problem in report.problems:
            print(f"problem: {printable(problem)}")
        what = f"{plural(report.points, 'point')}, {plural(report.pieces, 'piece')}"
        if report.deep:
            what += f", {format_size(report.bytes_checked)} re-read and re-hashed"
        print(
            (
                "verify clean: "
                if report.ok
                else f"verify found {plural(len(report.problems), 'problem')}: "
            )
            + what
        )
    if not report.ok:
        print(
            f"lamina: error: verify found {plural(len(report.problems), 'problem')}",
            file=sys.stderr,
        )
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from ..service import run_demo

    return run_demo(args.dir)
