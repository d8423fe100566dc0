"""`lamina history`: the jobs the job-history catalog holds (docs/catalog.md)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from ..display import printable
from ..errors import UsageError
from ..service import (
    JOB_KINDS,
    HistoryQuery,
    JobRecord,
    LaminaService,
    format_cost,
    parse_volume,
    read_history,
)
from ..units import format_size, plural
from .commands_files import parse_duration
from .common import (
    add_catalog_arg,
    add_repo_args,
    elapsed,
    open_service,
    opened,
    print_json,
    service_options,
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "history",
        help="the jobs that ran: backups, restores, verifies, prunes... (the job catalog)",
        description="Every job the service ran, from the job-history catalog, newest first. "
        "With --repo (or $LAMINA_REPO), points of that repository that no job recorded (made "
        "while the catalog was down) are added first.",
    )
    p.add_argument(
        "--repo",
        help="also reconcile with this repository (a path, file:///path or s3://bucket/prefix; "
        "or set LAMINA_REPO)",
    )
    p.add_argument("--password-file", help="file holding the password of an encrypted --repo")
    p.add_argument("--volume", metavar="VOLUME", help="only jobs of this volume")
    p.add_argument("--kind", choices=JOB_KINDS, help="only jobs of this kind")
    p.add_argument(
        "--since", metavar="AGE", help="only jobs started within AGE (90s, 15m, 12h, 7d)"
    )
    p.add_argument("--failed", action="store_true", help="only failed and interrupted jobs")
    p.add_argument("--limit", type=int, metavar="N", help="at most N jobs (the newest)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_catalog_arg(p)
    p.set_defaults(func=cmd_history, repo_from_env=True, repo_required=False)
    register_catalog(sub)


def cmd_history(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    query = HistoryQuery(
        volume=str(parse_volume(args.volume)) if args.volume else None,
        kind=args.kind,
        since=time.time() - parse_duration(args.since) if args.since else None,
        failed=args.failed,
        limit=args.limit,
        with_events=args.json,
    )
    if getattr(args, "server", None):
        records = _through_service(open_service(args), query)
    elif args.repo:
        records = open_service(args).history(query, catalog=args.catalog)
    else:
        records = read_history(query, catalog=args.catalog)
    if args.json:
        print_json([r.as_json() for r in records])
        return 0
    for record in records:
        print(_line(record))
        if record.error:
            print(f"  error: {printable(record.error)}")
    print(plural(len(records), "job"))
    return 0


def _through_service(service: LaminaService, query: HistoryQuery) -> list[JobRecord]:
    """The jobs of ``query`` page by page through the service contract (a server's history);
    with --json, each with its state changes."""
    records: list[JobRecord] = []
    token = ""
    while True:
        wanted = None if query.limit is None else query.limit - len(records)
        page = service.list_history(
            volume=query.volume,
            kind=query.kind,
            since=query.since,
            failed=query.failed,
            limit=wanted,
            page_token=token,
        )
        records.extend(page.jobs)
        token = page.next_page_token
        if not token or (query.limit is not None and len(records) >= query.limit):
            break
    if query.with_events:
        records = [service.get_job(r.id) for r in records]
    return records


def _line(r: JobRecord) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
    duration = elapsed(r.duration) if r.duration is not None else "-"
    requests = sum(r.requests.values())
    figures = []
    if r.bytes_read:
        figures.append(f"read {format_size(r.bytes_read)}")
    if r.bytes_stored:
        figures.append(f"stored {format_size(r.bytes_stored)}")
    figures.append(plural(requests, "request"))
    if r.retries:
        figures.append(plural(r.retries, "retry", "retries"))
    if r.cost_usd:
        figures.append(f"about {format_cost(r.cost_usd)}")
    target = printable(r.volume or "-")
    point = printable(r.point[:16]) if r.point else "-"
    return (
        f"{when}  {printable(r.id):<12}  {printable(r.kind):<11}  {printable(r.state):<11}  "
        f"{target:<28}  {point:<16}  {duration:>8}  {', '.join(figures)}  "
        f"({_who(r)})"
    )


def _who(r: JobRecord) -> str:
    if r.origin == "repository":
        return "found in the repository"
    return f"{printable(r.origin)} on {printable(r.host)}, pid {r.pid}"


def register_catalog(sub: Any) -> None:
    catalog = sub.add_parser(
        "catalog", help="the job catalog's copy of the point list: rebuild, status"
    )
    actions = catalog.add_subparsers(dest="catalog_command", metavar="ACTION")
    actions.required = True
    p = actions.add_parser(
        "rebuild",
        help="recreate the catalog's copy of a repository's point list from the repository",
        description="Drop what the catalog holds of the repository's points and list them "
        "afresh from the repository, which stays the source of truth (docs/catalog.md).",
    )
    add_repo_args(p)
    add_catalog_arg(p)
    p.set_defaults(func=cmd_catalog_rebuild)
    p = actions.add_parser("status", help="what the catalog holds of each repository's points")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_catalog_arg(p)
    p.set_defaults(func=cmd_catalog_status)


def cmd_catalog_rebuild(args: argparse.Namespace) -> int:
    from ..service import Service  # loads the catalog's database layer: only here

    service = opened(Service(args.repo, catalog=args.catalog, **service_options(args)))
    points = service.rebuild_point_list()
    print(
        f"the catalog holds {plural(points, 'point')} of repository "
        f"{printable(service.info().id)}, listed from the repository"
    )
    return 0


def cmd_catalog_status(args: argparse.Namespace) -> int:
    from ..service import point_list_status  # loads the catalog's database layer: only here

    entries = point_list_status(args.catalog)
    if args.json:
        print_json([dataclasses.asdict(e) for e in entries])
        return 0
    for e in entries:
        listed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.reconciled_at))
        print(
            f"repository {printable(e.repository_id)}: {plural(e.points, 'point')} of "
            f"{plural(e.volumes, 'volume')}, listed in full {listed}, "
            f"marker {printable(e.marker[:12]) or '-'}"
        )
    print(plural(len(entries), "repository", "repositories") + " in the catalog")
    return 0
