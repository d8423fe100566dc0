"""Chain lifecycle commands: forget, prune, protect, unprotect, consolidate, delete, unlock."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from ..display import printable
from ..service import (
    ForgetReport,
    LockInfo,
    PointInfo,
    Policy,
    PruneReport,
    forget_savings,
    parse_keep_within,
    prune_savings,
)
from ..units import format_size, plural
from .common import add_repo_args, open_service, print_json, run_job


def register(sub: Any) -> None:
    p = sub.add_parser(
        "forget", help="remove points by a retention policy (restic's --keep-* meaning)"
    )
    add_repo_args(p)
    p.add_argument("--volume", help="only this volume (default: every volume, each on its own)")
    for name, what in (
        ("last", "the newest N points"),
        ("hourly", "the newest point of each of the last N hours that have points"),
        ("daily", "... of each of the last N days"),
        ("weekly", "... of each of the last N weeks"),
        ("monthly", "... of each of the last N months"),
        ("yearly", "... of each of the last N years"),
    ):
        p.add_argument(f"--keep-{name}", type=int, default=0, metavar="N", help=f"keep {what}")
    p.add_argument(
        "--keep-within",
        metavar="DURATION",
        help="keep points within DURATION of the newest (30d, 12h, 1y6m)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print what would go and why; change nothing"
    )
    p.add_argument("--prune", action="store_true", help="prune right after forgetting")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("prune", help="delete data no point references; repack sparse packs")
    add_repo_args(p)
    p.add_argument(
        "--dry-run", action="store_true", help="print what would be freed; change nothing"
    )
    p.add_argument(
        "--repack-below",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="repack packs whose live share is below SHARE (default 0.5)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_prune)

    for name, text in (
        ("protect", "never forget or delete a point"),
        ("unprotect", "lift a protection"),
    ):
        p = sub.add_parser(name, help=text)
        add_repo_args(p)
        p.add_argument("point", metavar="POINT", help="point id or unique prefix")
        p.set_defaults(func=cmd_protect, protect=name == "protect")

    p = sub.add_parser(
        "consolidate", help="fold a point's ancestors into it (maps only, no data copied)"
    )
    add_repo_args(p)
    p.add_argument("point", metavar="POINT", help="point id or unique prefix")
    p.add_argument(
        "--until", metavar="ANCESTOR", help="fold down to this ancestor (default: the full point)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_consolidate)

    p = sub.add_parser("delete", help="delete one point; its children keep resolving as before")
    add_repo_args(p)
    p.add_argument("point", metavar="POINT", help="point id or unique prefix")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("locks", help="list repository locks")
    add_repo_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_locks)

    p = sub.add_parser("unlock", help="remove locks left by crashed processes")
    add_repo_args(p)
    p.add_argument(
        "--all", action="store_true", help="remove live locks too (only when no lamina runs)"
    )
    p.set_defaults(func=cmd_unlock)


def cmd_forget(args: argparse.Namespace) -> int:
    policy = Policy(
        last=args.keep_last,
        hourly=args.keep_hourly,
        daily=args.keep_daily,
        weekly=args.keep_weekly,
        monthly=args.keep_monthly,
        yearly=args.keep_yearly,
        within=parse_keep_within(args.keep_within) if args.keep_within else None,
    )
    service = open_service(args)
    report: ForgetReport = run_job(
        service.start_forget(policy, volume=args.volume, dry_run=args.dry_run)
    )
    if args.json:
        print_json(
            {
                "dry_run": report.dry_run,
                **({"would": forget_savings(report).as_json()} if report.dry_run else {}),
                "removed": report.removed,
                "points": [
                    {
                        "id": d.point.id,
                        "volume": str(d.point.volume),
                        "created": d.point.created,
                        "keep": d.keep,
                        "reasons": d.reasons,
                    }
                    for d in report.decisions
                ],
            }
        )
    else:
        volume = None
        for d in report.decisions:
            if str(d.point.volume) != volume:
                volume = str(d.point.volume)
                print(f"{printable(volume)}:")
            verdict = "keep  " if d.keep else ("would remove" if report.dry_run else "remove")
            print(
                f"  {d.point.id}  {d.point.created[:19].replace('T', ' ')}  {verdict:<12}  {', '.join(d.reasons) or 'no policy keeps it'}"
            )
        gone = sum(1 for d in report.decisions if not d.keep)
        print(
            f"{plural(gone, 'point')} {'would be ' if report.dry_run else ''}removed, "
            f"{len(report.decisions) - gone} kept"
        )
        if not report.dry_run and gone and not args.prune:
            print("run 'lamina prune' to free the space they used")
        if report.dry_run:
            print(forget_savings(report).summary())
    if args.prune and not args.dry_run:
        return cmd_prune(
            argparse.Namespace(**{**vars(args), "dry_run": False, "repack_below": 0.5})
        )
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    report: PruneReport = run_job(
        open_service(args).start_prune(dry_run=args.dry_run, repack_below=args.repack_below)
    )
    if getattr(args, "json", False):
        extra = {"would": prune_savings(report).as_json()} if report.dry_run else {}
        print_json({**report.__dict__, **extra})
        return 0
    verb = "would free" if report.dry_run else "freed"
    print(
        f"{plural(report.points, 'point')} {'uses' if report.points == 1 else 'use'} "
        f"{report.pieces_live} of {plural(report.pieces_total, 'piece')}; "
        f"{report.packs_deleted} of {plural(report.packs_total, 'pack')} "
        f"{'would go' if report.dry_run else 'deleted'} "
        f"({report.packs_repacked} repacked, {format_size(report.bytes_rewritten)} rewritten); "
        f"{verb} {format_size(report.bytes_reclaimed)} of {format_size(report.bytes_total)}; "
        f"{plural(report.maps_deleted, 'stray map')}; {plural(report.requests, 'request')}"
    )
    if report.dry_run:
        print(prune_savings(report).summary())
    if report.packs_kept_locked:
        print(
            f"{plural(report.packs_kept_locked, 'pack')} "
            f"{'is' if report.packs_kept_locked == 1 else 'are'} kept until their Object Lock "
            "retention ends"
        )
    return 0


def cmd_protect(args: argparse.Namespace) -> int:
    service = open_service(args)
    point: PointInfo = (
        service.protect(args.point) if args.protect else service.unprotect(args.point)
    )
    print(f"point {point.id} is {'protected' if point.protected else 'no longer protected'}")
    return 0


def cmd_consolidate(args: argparse.Namespace) -> int:
    point: PointInfo = run_job(open_service(args).start_consolidate(args.point, args.until))
    if args.json:
        print_json(point.as_json())
    else:
        folded = point.manifest.get("consolidated", [])
        print(
            f"point {point.id} now holds the extents of {plural(len(folded), 'ancestor')}; parent {point.parent or '- (full)'}"
        )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    service = open_service(args)
    point = service.get_point(args.point)  # the full id to echo, not the prefix typed
    children: list[str] = run_job(service.start_delete(point.id))
    print(
        f"deleted point {point.id}" + (f"; folded into {', '.join(children)}" if children else "")
    )
    print("run 'lamina prune' to free the space it used")
    return 0


def cmd_locks(args: argparse.Namespace) -> int:
    found = open_service(args).list_locks()
    if args.json:
        print_json([_lock_json(lock) for lock in found])
    elif not found:
        print("no locks")
    for lock in found if not args.json else []:
        print(printable(lock.describe()))
    return 0


def _iso(seconds: float) -> str:
    """Seconds since the epoch as the ISO time the rest of the JSON output uses."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lock_json(lock: LockInfo) -> dict[str, Any]:
    return lock.__dict__ | {
        "created": _iso(lock.created),
        "expires": _iso(lock.expires),
        "stale": lock.stale,
    }


def cmd_unlock(args: argparse.Namespace) -> int:
    removed = open_service(args).unlock(all_locks=args.all)
    for lock in removed:
        print(f"removed {printable(lock.describe())}")
    print(f"{plural(len(removed), 'lock')} removed")
    return 0
