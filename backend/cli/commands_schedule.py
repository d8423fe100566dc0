"""Schedules on one machine: `lamina schedule add|ls|rm|pause|resume|run-now` and
`lamina controller --local`, which runs them (docs/schedules.md)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..display import printable
from ..errors import UsageError
from ..service import default_local_root

if TYPE_CHECKING:
    from ..service import ScheduleInfo, Schedules
from .commands_api import add_server_options, remote_service
from .common import add_catalog_arg, print_json

_KEEP = (
    ("last", "the newest N points"),
    ("hourly", "the newest point of each of the last N hours that have points"),
    ("daily", "... of each of the last N days"),
    ("weekly", "... of each of the last N weeks"),
    ("monthly", "... of each of the last N months"),
    ("yearly", "... of each of the last N years"),
)


def register(sub: Any) -> None:
    schedule = sub.add_parser(
        "schedule", help="backups and prunes that lamina controller --local runs by themselves"
    )
    actions = schedule.add_subparsers(dest="schedule_command", metavar="ACTION")
    actions.required = True

    p = actions.add_parser("add", help="add a schedule: a volume's backup, or a prune")
    p.add_argument("name", metavar="NAME", help="the schedule's name")
    p.add_argument(
        "--repo", help="repository URL: a path, file:///path or s3://bucket/prefix (or LAMINA_REPO)"
    )
    p.add_argument(
        "--password-file",
        help="file holding the repository's password, read at every run (or LAMINA_PASSWORD_FILE)",
    )
    p.add_argument("--volume", metavar="NAME", help="local-cluster volume: NAME or NAMESPACE/NAME")
    p.add_argument(
        "--source", metavar="IMAGE|DEVICE", help="the volume's image file or block device"
    )
    p.add_argument(
        "--local-root", metavar="DIR", help="local cluster folder (default: $LAMINA_LOCAL_ROOT)"
    )
    when = p.add_mutually_exclusive_group()
    when.add_argument("--every", metavar="INTERVAL", help="run every INTERVAL (30s, 5m, 1h, 2d)")
    when.add_argument(
        "--cron", metavar="EXPRESSION", help="run at the times of a cron expression, in UTC"
    )
    for name, what in _KEEP:
        p.add_argument(
            f"--keep-{name}", type=int, default=0, metavar="N", help=f"after a backup, keep {what}"
        )
    p.add_argument(
        "--keep-within",
        metavar="DURATION",
        help="after a backup, keep points within DURATION of the newest (30d, 12h, 1y6m)",
    )
    p.add_argument(
        "--prune",
        action="store_true",
        help="a prune of the repository instead of a backup (no --volume, --source or --keep-*)",
    )
    p.add_argument(
        "--copy-to",
        metavar="REPO",
        help="after each backup (and its forget), copy the volume's points to this repository",
    )
    p.add_argument(
        "--copy-password-file",
        metavar="FILE",
        help="file holding the --copy-to repository's password, read at every run",
    )
    add_catalog_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_add)

    p = actions.add_parser("ls", help="list schedules with their next and last run")
    add_catalog_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_server_options(p)
    p.set_defaults(func=cmd_ls)

    for action, text in (
        ("rm", "remove a schedule (its points and history stay)"),
        ("pause", "stop running a schedule until it is resumed"),
        ("resume", "run a paused schedule again, from its next slot"),
        ("run-now", "run a schedule at the controller's next pass, once, even when paused"),
    ):
        p = actions.add_parser(action, help=text)
        p.add_argument("name", metavar="NAME", help="the schedule's name")
        add_catalog_arg(p)
        add_server_options(p)
        p.set_defaults(func=cmd_change, action=action)

    p = sub.add_parser(
        "controller",
        help="run the due schedules (--local) or reconcile lamina's CRs in a cluster, until SIGTERM",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--local", action="store_true", help="over the local cluster, on this machine"
    )
    where.add_argument(
        "--kubeconfig", metavar="PATH", help="reconcile the CRs of this kubeconfig's cluster"
    )
    where.add_argument(
        "--in-cluster", action="store_true", help="reconcile as the pod's service account"
    )
    p.add_argument(
        "--poll",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="--local: look for due schedules at least this often (default 1)",
    )
    p.add_argument("--context", help="--kubeconfig: the context (default: the current one)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=2,
        metavar="N",
        help="Backups of one namespace at once unless its schedule says (default 2)",
    )
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="reconcile only this namespace (repeatable; default all)",
    )
    p.add_argument(
        "--lease-namespace",
        metavar="NS",
        help="elect a leader on a Lease in this namespace; only the leader acts",
    )
    p.add_argument("--lease-name", default="lamina-controller", help="the Lease's name")
    p.add_argument(
        "--lease-duration", type=float, default=15.0, metavar="SECONDS", help="default 15"
    )
    p.add_argument("--identity", help="this replica's name in the Lease (default host + random)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT", help="serve /metrics here")
    p.add_argument("--image", default="lamina:latest", help="the data mover's image")
    p.add_argument(
        "--service-account", default="lamina-datamover", help="the data mover's ServiceAccount"
    )
    p.add_argument("--cluster-name", help="the cluster part of volume names (default: context)")
    p.add_argument("--resync", type=float, default=30.0, metavar="SECONDS", help="default 30")
    p.add_argument(
        "--job-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="fail a data mover running longer (default 3600)",
    )
    add_catalog_arg(p)
    p.set_defaults(func=cmd_controller)


def _schedules(args: argparse.Namespace) -> Schedules:
    # Schedules live in the catalog: croniter and SQLAlchemy load for these commands only.
    from ..service import Schedules

    return Schedules(args.catalog)


@dataclass(frozen=True)
class _Steering:
    """The schedules of this machine's catalog, or of a lamina server's (--server)."""

    list: Callable[[], list[ScheduleInfo]]
    pause: Callable[[str], ScheduleInfo]
    resume: Callable[[str], ScheduleInfo]
    run_now: Callable[[str], ScheduleInfo]
    remove: Callable[[str], None]


def _steering(args: argparse.Namespace) -> _Steering:
    remote = remote_service(args)
    if remote is None:
        local = _schedules(args)
        return _Steering(local.list, local.pause, local.resume, local.run_now, local.remove)
    if args.catalog:
        remote.close()
        raise UsageError("--catalog is for this machine; a server uses its own catalog")
    return _Steering(
        remote.list_schedules,
        remote.pause_schedule,
        remote.resume_schedule,
        remote.run_schedule_now,
        remote.remove_schedule,
    )


def _repo_url(repo: str) -> str:
    """A plain path becomes absolute: the controller may run in another folder."""
    return repo if "://" in repo else os.path.abspath(repo)


def cmd_add(args: argparse.Namespace) -> int:
    repo = args.repo or os.environ.get("LAMINA_REPO")
    if not repo:
        raise UsageError("no repository: give --repo REPO or set LAMINA_REPO")
    from ..service import policy_from_options

    policy = policy_from_options(
        **{name: getattr(args, f"keep_{name}") for name, _ in _KEEP},
        within=args.keep_within,
    )
    info = _schedules(args).add(
        args.name,
        repository=_repo_url(repo),
        every=args.every,
        cron=args.cron,
        volume=args.volume,
        source=args.source,
        local_root=args.local_root or default_local_root(),
        policy=policy,
        prune=args.prune,
        password_file=args.password_file or os.environ.get("LAMINA_PASSWORD_FILE"),
        copy_to=args.copy_to,
        copy_password_file=args.copy_password_file,
    )
    if args.json:
        print_json(info.as_json())
    else:
        print(
            f"schedule {printable(info.name)}: {_what(info)}, {info.when}; next run {_at(info.next_run)}"
        )
    return 0


def _what(info: ScheduleInfo) -> str:
    if info.kind == "prune":
        return f"prune {printable(info.repository)}"
    what = f"back up {printable(info.volume)} ({printable(info.source)})"
    if info.copy_to:
        what += f" and copy to {printable(info.copy_to)}"
    return what


def _at(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_ls(args: argparse.Namespace) -> int:
    found = _steering(args).list()
    if args.json:
        print_json([s.as_json() for s in found])
        return 0
    if not found:
        print("no schedules")
        return 0
    print(
        f"{'NAME':<20} {'STATE':<7} {'WHEN':<20} {'NEXT RUN':<24} {'LAST RUN':<24} {'LAST':<10} WHAT"
    )
    for s in found:
        state = s.state + ("*" if s.run_now_pending else "")
        last = s.last_state or "-"
        print(
            f"{printable(s.name):<20} {state:<7} {printable(s.when):<20} {_at(s.next_run):<24} "
            f"{_at(s.last_run):<24} {printable(last):<10} {_what(s)}"
        )
        if s.last_error:
            print(f"    last error: {printable(s.last_error)}")
    return 0


def cmd_change(args: argparse.Namespace) -> int:
    schedules = _steering(args)
    name = printable(args.name)
    if args.action == "rm":
        schedules.remove(args.name)
        print(f"removed schedule {name}; its points and history stay")
    elif args.action == "pause":
        schedules.pause(args.name)
        print(f"paused schedule {name}")
    elif args.action == "resume":
        info = schedules.resume(args.name)
        print(f"resumed schedule {name}; next run {_at(info.next_run)}")
    else:
        schedules.run_now(args.name)
        print(f"schedule {name} is due now: a running 'lamina controller --local' starts it")
    return 0


def cmd_controller(args: argparse.Namespace) -> int:
    if not args.local:
        return _cluster_controller(args)
    if args.poll <= 0:
        raise UsageError("--poll must be more than 0 seconds")
    from ..service import Controller

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()  # the loop ends; running jobs are cancelled and waited for

    controller = Controller(args.catalog, poll=args.poll, say=_say)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        _say(f"controller running over the local cluster; schedules from {controller.catalog.url}")
        controller.serve(stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        controller.close()
    _say("controller stopped")
    sys.stdout.flush()
    return 0


def _say(line: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} {printable(line)}", flush=True)


def _cluster_controller(args: argparse.Namespace) -> int:
    """`lamina controller --kubeconfig PATH | --in-cluster` (docs/controller.md)."""
    from ..service.cluster_controller import ControllerOptions, open_cluster_controller
    from ..service.cluster_controller.metrics import serve_controller_metrics

    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    for name, value in (
        ("--lease-duration", args.lease_duration),
        ("--resync", args.resync),
        ("--job-timeout", args.job_timeout),
    ):
        if value <= 0:
            raise UsageError(f"{name} must be more than 0 seconds")
    options = ControllerOptions(
        concurrency=args.concurrency,
        resync=args.resync,
        image=args.image,
        service_account=args.service_account,
        catalog=args.catalog,
        job_timeout=args.job_timeout,
        namespaces=tuple(args.namespace),
        lease_namespace=args.lease_namespace,
        lease_name=args.lease_name,
        lease_duration=args.lease_duration,
        renew_period=max(0.2, min(2.0, args.lease_duration / 5)),
    )
    if args.identity:
        options.identity = args.identity
    if args.cluster_name:
        options.cluster_name = args.cluster_name
    controller = open_cluster_controller(
        kubeconfig=args.kubeconfig,
        context=args.context,
        in_cluster=args.in_cluster,
        options=options,
        say=_say,
    )
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    metrics = (
        serve_controller_metrics(controller, args.metrics_listen) if args.metrics_listen else None
    )
    try:
        if metrics is not None:
            _say(f"metrics on http://{args.metrics_listen}/metrics (port {metrics.port})")
        lease = f"; Lease {args.lease_namespace}/{args.lease_name}" if args.lease_namespace else ""
        _say(f"controller {options.identity} watching {controller.cluster.context}{lease}")
        if not args.lease_namespace:
            controller.resync()
        controller.serve(stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if metrics is not None:
            metrics.stop()
        controller.close()
    _say("controller stopped")
    sys.stdout.flush()
    return 0
