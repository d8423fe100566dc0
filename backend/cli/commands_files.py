"""Files inside restore points: mount, umount, files ls, files get."""

from __future__ import annotations

import argparse
import os
import signal
import stat
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..display import printable
from ..errors import UsageError
from ..service import start_mount_process, unmount
from ..units import format_size, parse_size, plural
from .common import (
    add_repo_args,
    elapsed,
    open_service,
    print_json,
    run_job,
)

if TYPE_CHECKING:
    from ..service import Entry, ExtractReport

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90s', '15m', '1h', '2d' or plain seconds."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in DURATION_UNITS else "s"
    number = value[:-1] if value[-1:] in DURATION_UNITS else value
    try:
        seconds = float(number) * DURATION_UNITS[unit]
    except ValueError:
        raise UsageError(f"not a duration: {text!r} (examples: 90s, 15m, 1h)") from None
    if seconds <= 0:
        raise UsageError(f"the duration {text!r} must be positive")
    return seconds


def register(sub: Any) -> None:
    p = sub.add_parser(
        "mount",
        help="mount the repository (or one point) read-only with FUSE",
        description="Every point appears as CLUSTER/NAMESPACE/VOLUME/TIME-ID/ with disk.img, "
        "manifest.json and files/ (the volume's filesystem). Runs in the foreground "
        "until Ctrl-C, SIGTERM or `lamina umount`, unless --daemon is given.",
    )
    add_repo_args(p)
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory")
    p.add_argument("--point", help="mount only this point (id or unique prefix) at MOUNTPOINT")
    p.add_argument(
        "--cache-size", default="512MiB", help="memory for fetched pieces (default 512MiB)"
    )
    p.add_argument(
        "--idle-timeout", help="unmount after this long without any access (e.g. 15m, 1h)"
    )
    p.add_argument(
        "--daemon", action="store_true", help="run in the background; print its pid when ready"
    )
    p.add_argument("--log-file", help="append log lines (read errors with volume offsets) here")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount a lamina mount (also one whose process died)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the lamina mount is")
    p.set_defaults(func=cmd_umount)

    files = sub.add_parser("files", help="list and extract files of a point without mounting")
    files_sub = files.add_subparsers(dest="files_command", metavar="ACTION")
    files_sub.required = True
    p = files_sub.add_parser("ls", help="list a directory of a point's filesystem")
    add_repo_args(p)
    p.add_argument("point", metavar="POINT", help="point id or unique prefix")
    p.add_argument(
        "path",
        metavar="PATH",
        nargs="?",
        default="/",
        help="folder or file in the point (default /)",
    )
    p.add_argument("-l", dest="long", action="store_true", help="long listing, like ls -l")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_files_ls)

    p = files_sub.add_parser(
        "get",
        help="copy files or directories out of a point",
        description="Each PATH is copied into DIR under its own name (a directory with all it "
        "holds), keeping modes, times and symlinks. Nothing is written outside DIR; entries "
        "with unsafe names are skipped with a warning and make the exit status 1.",
    )
    add_repo_args(p)
    p.add_argument("point", metavar="POINT", help="point id or unique prefix")
    p.add_argument("paths", metavar="PATH", nargs="+", help="files or folders in the point")
    p.add_argument("--to", required=True, metavar="DIR", help="folder to extract into")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_files_get)


# ---------------------------------------------------------------------- mount


def cmd_mount(args: argparse.Namespace) -> int:
    cache_bytes = parse_size(args.cache_size)
    idle = parse_duration(args.idle_timeout) if args.idle_timeout else None
    if args.daemon:
        return _start_daemon(args, cache_bytes, idle)
    from lamina.fs.mount import run_mount, setup_logging

    setup_logging(args.log_file, quiet=False)

    def on_ready() -> None:
        what = f"point {args.point}" if args.point else args.repo
        print(f"mounted {what} at {args.mountpoint}; Ctrl-C to unmount", file=sys.stderr)

    # libfuse turns SIGTERM into a clean unmount, but only where no handler is set: the
    # main thread stays inside libfuse, so a Python handler would never run.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    run_mount(
        open_service(args),
        args.mountpoint,
        point=args.point,
        cache_bytes=cache_bytes,
        idle_timeout=idle,
        on_ready=on_ready,
    )
    return 0


def _start_daemon(args: argparse.Namespace, cache_bytes: int, idle: float | None) -> int:
    """Start the mount in a process of its own session (the service's mount supervision);
    print its pid once the mount answers."""
    password_file = args.password_file or os.environ.get("LAMINA_PASSWORD_FILE")
    password = None
    if not password_file and sys.stdin.isatty():
        # The daemon has no terminal: ask here (only if the repository is encrypted); the
        # password goes over through a pipe, never a file or the command line.
        service = open_service(args)
        service.info()
        password = service.password
    pid = start_mount_process(
        args.repo,
        args.mountpoint,
        point=args.point,
        cache_bytes=cache_bytes,
        idle_timeout=idle,
        log_file=args.log_file,
        password_file=password_file,
        password=password,
    )
    print(pid)
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    unmount(args.mountpoint)
    return 0


# ---------------------------------------------------------------------- files


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "kind": entry.kind,
        "size": entry.size,
        "mode": f"{stat.S_IMODE(entry.mode):04o}",
        "uid": entry.uid,
        "gid": entry.gid,
        "nlink": entry.nlink,
        "inode": entry.inode,
        "mtime": datetime.fromtimestamp(entry.mtime_ns / 1e9, UTC).isoformat(),
        "mtime_ns": entry.mtime_ns,
        "link_target": entry.link_target,
    }


def cmd_files_ls(args: argparse.Namespace) -> int:
    entries = open_service(args).list_files(args.point, args.path)
    if args.json:
        print_json([_entry_json(e) for e in entries])
        return 0
    for e in entries:
        name = printable(e.name)
        if not args.long:
            print(name)
            continue
        link = f" -> {printable(e.link_target)}" if e.link_target is not None else ""
        print(
            f"{stat.filemode(e.mode)} {e.nlink:>3} {e.uid:>5} {e.gid:>5} {e.size:>12} "
            f"{_time(e.mtime_ns)} {name}{link}"
        )
    return 0


def cmd_files_get(args: argparse.Namespace) -> int:
    started = time.monotonic()
    job = open_service(args).start_extract(args.point, args.paths, args.to)
    report: ExtractReport = run_job(job, quiet=args.quiet)
    for skipped in report.skipped:
        print(
            f"lamina: warning: skipped {printable(skipped.path)}: {printable(skipped.reason)}",
            file=sys.stderr,
        )
    if args.json:
        print_json(report.as_json())
    else:
        print(
            f"extracted {plural(report.files, 'file')}, "
            f"{plural(report.directories, 'directory', 'directories')} and "
            f"{plural(report.symlinks, 'symlink')} ({format_size(report.bytes)}) to {report.target} "
            f"in {elapsed(time.monotonic() - started)}"
            + (f"; {len(report.skipped)} skipped" if report.skipped else "")
        )
    return 0 if report.ok else 1
