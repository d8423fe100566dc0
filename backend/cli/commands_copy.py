"""Commands between two repositories: copy and compare."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..display import printable
from ..errors import UsageError
from ..service import Service, VolumeComparison, read_password_file
from ..service.copies import compare, start_copy
from ..units import format_size, plural
from .common import (
    _prompt,
    elapsed,
    open_service,
    opened,
    print_json,
    print_requests,
    run_job,
    with_requests,
)


def _add_password_option(p: argparse.ArgumentParser, side: str) -> None:
    p.add_argument(
        f"--{side}-password-file",
        metavar="FILE",
        help=f"password of the {side} repository when it is encrypted (else "
        "LAMINA_PASSWORD_FILE; on a terminal lamina asks)",
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "copy",
        help="copy restore points, with their chains, to another repository",
        description="Copy restore points with their chains from one repository to another "
        "(folders and S3, in any direction). Only what the destination lacks moves; a point "
        "is written there once every piece it needs is.",
    )
    # Not argparse-required: with --server, the server's repository is the other side.
    p.add_argument("--from", dest="source", metavar="REPO", help="source repository")
    p.add_argument("--to", dest="destination", metavar="REPO", help="destination")
    p.add_argument(
        "--volume", help="only the points of this volume (NAME, NS/NAME or CLUSTER/NS/NAME)"
    )
    p.add_argument("points", metavar="POINT", nargs="*", help="points to copy (default: all)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="re-read every piece of each copied point on the destination before writing it",
    )
    _add_password_option(p, "from")
    _add_password_option(p, "to")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_copy)

    p = sub.add_parser(
        "compare",
        help="compare the restore points of two repositories, volume by volume",
    )
    p.add_argument("left", metavar="REPO1", help="a repository (path, file:// or s3:// URL)")
    p.add_argument(
        "right",
        metavar="REPO2",
        nargs="?",
        help="another repository (with --server: give one REPO, compared with the server's)",
    )
    p.add_argument("--volume", help="only this volume")
    p.add_argument("--left-password-file", metavar="FILE", help="password of REPO1")
    p.add_argument("--right-password-file", metavar="FILE", help="password of REPO2")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_compare)


def _service(url: str, password_file: str | None) -> Service:
    ask = (lambda: _prompt(f"password of {printable(url)}: ")) if sys.stdin.isatty() else None
    return opened(Service(url, password=read_password_file(password_file), ask_password=ask))


def _through_server(args: argparse.Namespace) -> Service | None:
    """The server's service with --server (its repository is one side), else None."""
    if not getattr(args, "server", None):
        stray = [
            f
            for f, dest, own in getattr(args, "server_option_dests", ())
            if own and getattr(args, dest)
        ]
        if stray:
            raise UsageError(f"{' and '.join(stray)} go with --server")
        return None
    return open_service(args)


def cmd_copy(args: argparse.Namespace) -> int:
    server = _through_server(args)
    if server is not None:
        if bool(args.source) == bool(args.destination):
            raise UsageError(
                "with --server, the server's repository is one side: give --from REPO "
                "(copy into it) or --to REPO (copy from it), not both"
            )
        direction = "to" if args.destination else "from"
        other = args.destination or args.source
        password = read_password_file(
            args.to_password_file if direction == "to" else args.from_password_file
        )
        job = server.start_copy(
            other,
            direction=direction,
            points=args.points,
            volume=args.volume,
            verify=args.verify,
            other_password=password,
        )
        source: Service = server
    else:
        if not args.source or not args.destination:
            raise UsageError("give --from REPO and --to REPO (or --server ADDR and one of them)")
        source = _service(args.source, args.from_password_file)
        destination = _service(args.destination, args.to_password_file)
        job = start_copy(source, destination, args.points, volume=args.volume, verify=args.verify)
    report = run_job(job, quiet=args.quiet)
    if args.json:
        print_json(with_requests(report.as_json(), source, job))
        return 0
    print(
        f"copied {plural(len(report.copied), 'point')} to {printable(report.destination)} "
        f"({printable(report.mode)}); {plural(len(report.present), 'point')} already there"
    )
    print(
        f"  {plural(report.pieces_copied, 'piece')} moved: read {format_size(report.bytes_read)}, "
        f"uploaded {format_size(report.bytes_uploaded)} in {elapsed(report.duration_seconds)}"
        + ("; every piece re-read on the destination" if report.verified else "")
    )
    print_requests(source, job)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    server = _through_server(args)
    if server is not None:
        if args.right is not None:
            raise UsageError("with --server, give one REPO: it is compared with the server's")
        if args.left_password_file:
            raise UsageError(
                "with --server, REPO's password is --right-password-file; "
                "the server opens its own repository"
            )
        password = read_password_file(args.right_password_file)
        report = server.compare(args.left, volume=args.volume, other_password=password)
    else:
        if args.right is None:
            raise UsageError("give two repositories, REPO1 and REPO2 (or --server ADDR and one)")
        left = _service(args.left, args.left_password_file)
        right = _service(args.right, args.right_password_file)
        report = compare(left, right, volume=args.volume)
    if args.json:
        print_json(report.as_json())
    else:
        _print_comparison(report.volumes, args.volume)
    if any(v.differing for v in report.volumes):
        print("lamina: error: some points differ between the repositories", file=sys.stderr)
        return 1
    return 0


def _print_comparison(volumes: list[VolumeComparison], volume: str | None) -> None:
    if not volumes:
        print("neither repository holds restore points" + (" of that volume" if volume else ""))
    for v in volumes:
        print(f"volume {printable(v.volume)}")
        print(f"  on both sides   {plural(len(v.both), 'point')}")
        print(f"  only in REPO1   {_ids(v.only_left)}")
        print(f"  only in REPO2   {_ids(v.only_right)}")
        if v.differing:
            print(f"  DIFFERING       {_ids(v.differing)} (same id, other content)")
        print(f"  newest common   {printable(v.newest_common or '-')}")
        print(
            f"  REPO1 behind by {plural(v.left_behind_points, 'point')}, "
            f"{format_size(v.left_behind_bytes)} to move"
        )
        print(
            f"  REPO2 behind by {plural(v.right_behind_points, 'point')}, "
            f"{format_size(v.right_behind_bytes)} to move"
        )


def _ids(ids: list[str]) -> str:
    if not ids:
        return "-"
    shown = ", ".join(printable(i) for i in ids[:6])
    return shown + (f" and {len(ids) - 6} more" if len(ids) > 6 else "")
