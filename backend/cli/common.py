"""What every command shares: opening the service, JSON output, progress on a terminal."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from ..display import printable
from ..errors import LaminaError, UsageError
from ..progress import Progress
from ..service import Job, JobState, RequestCounts, Service, read_password_file
from ..units import format_rate, format_size

REPO_ENV = "LAMINA_REPO"


def add_repo_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    # Not argparse-required: $LAMINA_REPO stands in for --repo (see resolve_repo).
    p.add_argument(
        "--repo",
        help=f"repository URL: a path, file:///path or s3://bucket/prefix (or set {REPO_ENV})",
    )
    p.add_argument(
        "--password-file",
        help="file holding the password of an encrypted repository (or set "
        "LAMINA_PASSWORD_FILE; on a terminal lamina asks for it)",
    )
    p.set_defaults(repo_from_env=True, repo_required=required)


def add_catalog_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--catalog",
        metavar="URL",
        help="job-history catalog: sqlite:///PATH or postgresql://USER@HOST/DB, 'none' to "
        "record nothing (or set LAMINA_CATALOG; default: "
        "$XDG_STATE_HOME/lamina/catalog.sqlite, see docs/catalog.md)",
    )


def resolve_repo(args: argparse.Namespace) -> None:
    """--repo, else $LAMINA_REPO (like restic's RESTIC_REPOSITORY); not with --server."""
    if not getattr(args, "repo_from_env", False) or getattr(args, "server", None):
        return
    if not args.repo:
        args.repo = os.environ.get(REPO_ENV) or None
    if not args.repo and getattr(args, "repo_required", False):
        raise UsageError(f"no repository: give --repo REPO or set {REPO_ENV}")


def _prompt(prompt: str) -> bytes:
    try:
        password = getpass.getpass(f"lamina: {prompt}")
    except EOFError:
        raise UsageError("no password given") from None
    if not password:
        raise UsageError("no password given")
    return password.encode()


def ask_password() -> Callable[[], bytes] | None:
    """A prompt on the terminal for the password, or None when there is no terminal."""
    if not sys.stdin.isatty():
        return None
    return lambda: _prompt("password of the repository: ")


def new_password() -> bytes | None:
    """A new repository's password, asked twice on the terminal (None: no terminal)."""
    if not sys.stdin.isatty():
        return None
    first = _prompt("password for the new repository: ")
    if _prompt("the same password again: ") != first:
        raise UsageError("the two passwords differ; nothing was created")
    return first


def service_options(args: argparse.Namespace) -> dict[str, Any]:
    """password= and ask_password= for a Service of --repo."""
    fd = getattr(args, "password_fd", None)
    if fd is not None:  # a daemon whose parent asked on the terminal
        with os.fdopen(fd, "rb") as pipe:
            return {"password": pipe.read() or None}
    return {
        "password": read_password_file(getattr(args, "password_file", None)),
        "ask_password": ask_password(),
    }


# Services this command opened: main() closes them on every way out, so that browsing views
# give back their repository locks at once.
_opened: list[Any] = []


def opened(service: Service) -> Service:
    """Register a service for close_services(); returns it."""
    _opened.append(service)
    return service


def close_services() -> None:
    while _opened:
        service = _opened.pop()
        try:
            service.close()
        except Exception:  # the command's own outcome is what the user needs to see
            pass
        problem = getattr(service, "catalog_problem", None)
        if problem:  # the job itself went on: say so, in one line
            print(
                f"lamina: warning: not recorded in the job history: {printable(problem)}",
                file=sys.stderr,
            )


def open_service(args: argparse.Namespace) -> Service:
    # A command module may give a parser another way to reach a service (--server).
    factory = getattr(args, "service_factory", None)
    if factory is not None:
        service: Service = factory(args)
        return opened(service)
    return opened(Service(args.repo, **service_options(args)))


class PrintableOutput:
    """A text stream that lets only visible characters, newlines and tabs through.

    Every command prints names, notes and replies that others wrote. Each command makes
    the fields it prints ``printable`` (so that a name stays on its line); this wrapper
    around stdout is the net under them: no control character reaches the terminal.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(printable(text, keep="\n\t"))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def print_json(data: Any, out: TextIO | None = None) -> None:
    json.dump(data, out or sys.stdout, indent=2, sort_keys=True)
    (out or sys.stdout).write("\n")


def _bar(p: Progress, width: int = 28) -> str:
    frac = p.fraction
    phase = printable(p.phase)
    if p.counts_bytes:
        amount, rate = format_size(p.done), format_rate(p.rate)
    else:  # items (a quick verify checks points): a count, and no byte rate
        amount = f"{p.done}/{p.total} {printable(p.unit)}" if p.total else f"{p.done} {p.unit}"
        rate = ""
    if frac is None:
        return f"{phase:<17} {amount:>10}  {rate:>12}"
    filled = int(frac * width)
    eta = f"ETA {int(p.eta // 60):d}:{int(p.eta % 60):02d}" if p.eta is not None else ""
    return (
        f"{phase:<17} [{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}% "
        f"{amount:>10} {rate:>12} {eta}"
    )


def run_job(job: Job, *, quiet: bool = False) -> Any:
    """Wait for a job, drawing a progress line on a terminal. Ctrl-C cancels the job cleanly."""
    tty = sys.stderr.isatty() and not quiet
    last_len = 0

    def draw(j: Job) -> None:
        nonlocal last_len
        if j.progress is None or j.done:
            return
        line = _bar(j.progress)
        sys.stderr.write("\r" + line + " " * max(0, last_len - len(line)))
        sys.stderr.flush()
        last_len = len(line)

    unsubscribe = job.subscribe(draw) if tty else (lambda: None)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        job.cancel()

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        previous = None
    try:
        while not job.wait(0.2):
            pass
    except KeyboardInterrupt:
        job.cancel()
        job.wait()
    finally:
        unsubscribe()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if tty and last_len:
            sys.stderr.write("\r" + " " * last_len + "\r")
            sys.stderr.flush()
    if job.state == JobState.SUCCEEDED:
        return job.result
    if job.state == JobState.CANCELLED:
        from ..errors import Cancelled

        raise Cancelled(job.error or "cancelled")
    raise LaminaError(job.error or "failed")


def job_requests(service: Service, job: Job) -> RequestCounts | None:
    """The requests a job of this process made and their cost (None: a server ran it)."""
    return service.job_requests(job.id)


def with_requests(data: dict[str, Any], service: Service, job: Job) -> dict[str, Any]:
    """A job's JSON with its requests (docs/catalog.md, "Requests and cost")."""
    counts = job_requests(service, job)
    if counts is None:
        return data
    return {**data, "job": {"id": job.id, "requests": counts.as_json()}}


def print_requests(service: Service, job: Job) -> None:
    counts = job_requests(service, job)
    if counts is not None:
        print(f"  {counts.summary()}")


def elapsed(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    return time.strftime("%H:%M:%S", time.gmtime(seconds))
