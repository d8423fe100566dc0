"""The gRPC API from the command line: `lamina serve`, and --server for other commands.

`points`, `chain`, `backup`, `restore` and `verify` take ``--server ADDR`` instead of
``--repo``: the same command then runs through a lamina server (paths are the server's).
`copy` and `compare` take it too: the server's repository is then one of the two.
`files get --server` downloads over the API into a folder of this machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from ..display import PrintableFormatter, printable
from ..errors import UsageError
from ..service import BackupCaps, Service, default_local_root
from ..units import format_size, plural
from .commands_files import parse_duration
from .common import (
    add_catalog_arg,
    add_repo_args,
    elapsed,
    opened,
    print_json,
    service_options,
)

if TYPE_CHECKING:
    from lamina.backend.service.remote import ApiClient, RemoteService

SERVER_COMMANDS = ("points", "chain", "backup", "restore", "verify", "history")
# Between two repositories: with --server, the server's repository is one of them.
SERVER_PAIR_COMMANDS = ("copy", "compare")
DEFAULT_LISTEN = "127.0.0.1:7443"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the repository over gRPC (the lamina.v1 API, see docs/api.md)",
        description="Serve the repository to scripts, tools and remote terminal UIs over gRPC. "
        "Every call needs the bearer token of --token-file unless --insecure-no-auth is given "
        "(loopback addresses only). SIGTERM or Ctrl-C stops it gracefully: running tasks get "
        "--grace to finish, then they are cancelled.",
    )
    add_repo_args(p)
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="ADDR",
        help=f"HOST:PORT (default {DEFAULT_LISTEN})",
    )
    p.add_argument(
        "--token-file", metavar="FILE", help="file holding the bearer token clients send"
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="accept calls without a token (only on a loopback address)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain of the server")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of the server")
    p.add_argument(
        "--max-backups", type=int, default=2, metavar="N", help="backups at once (default 2)"
    )
    p.add_argument(
        "--max-backups-per-volume",
        type=int,
        default=1,
        metavar="N",
        help="backups of one volume at once (default 1: never interleaved)",
    )
    p.add_argument(
        "--allow-path",
        action="append",
        default=[],
        metavar="DIR",
        help="only read sources and write restores and extracts under DIR (repeatable)",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--local-root", help="folder of the local cluster (default: $LAMINA_LOCAL_ROOT)")
    add_catalog_arg(p)
    p.add_argument(
        "--metrics-listen",
        metavar="ADDR",
        help="also serve Prometheus metrics on http://HOST:PORT/metrics (docs/catalog.md)",
    )
    p.add_argument(
        "--grace",
        default="30s",
        help="on SIGTERM, how long running tasks may take to finish before they are cancelled",
    )
    p.add_argument("--log-file", help="append the server's log here (default: stderr)")
    p.set_defaults(func=cmd_serve)

    for name in SERVER_COMMANDS:
        parser = sub.choices.get(name)
        if parser is not None:
            _add_server_options(parser)
            parser.set_defaults(service_factory=service_for)
    for name in SERVER_PAIR_COMMANDS:
        parser = sub.choices.get(name)
        if parser is not None:
            _add_server_options(parser)
            parser.set_defaults(service_factory=service_for, repo=None)
    files_get = _subcommand(sub.choices.get("files"), "get")
    if files_get is not None:
        _add_server_options(files_get)
        local_handler = files_get.get_default("func")
        files_get.set_defaults(func=lambda args: cmd_files_get_remote(args, local_handler))


def _subcommand(
    parser: argparse.ArgumentParser | None, name: str
) -> argparse.ArgumentParser | None:
    if parser is None:
        return None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser | None = action.choices.get(name)
            return found
    return None


def _add_server_options(parser: argparse.ArgumentParser, instead: str = "--repo") -> None:
    parser.set_defaults(repo_required=False)  # --repo or --server, checked when it runs
    group = parser.add_argument_group(f"through a lamina server (instead of {instead})")
    group.add_argument("--server", metavar="ADDR", help="HOST:PORT of a `lamina serve`")
    # `backup` already has --token-file and --ca-file (for --cbt): with --server they name
    # the server's token and CA instead, so both options keep one spelling everywhere.
    dests = []
    for flag, own_dest, help_text, short in (
        (
            "--token-file",
            "server_token_file",
            "bearer token for --server (or $LAMINA_TOKEN_FILE)",
            "bearer token",
        ),
        ("--ca-file", "server_ca_file", "CA certificate: talk TLS to --server", "CA"),
    ):
        existing = parser._option_string_actions.get(flag)
        if existing is not None:
            existing.help = f"{existing.help} (with --server: the server's {short})"
            dests.append((flag, existing.dest, False))
        else:
            group.add_argument(flag, dest=own_dest, metavar="FILE", help=help_text)
            dests.append((flag, own_dest, True))
    parser.set_defaults(server_option_dests=tuple(dests))


def _server_files(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(token file, CA file) for --server; shared options are consumed so that their other
    owner (--cbt) does not see them."""
    values: list[str | None] = []
    for _, dest, _ in args.server_option_dests:
        values.append(getattr(args, dest, None))
        setattr(args, dest, None)
    token_file, ca_file = values
    return token_file or os.environ.get("LAMINA_TOKEN_FILE"), ca_file


def _refuse_stray_server_options(args: argparse.Namespace) -> None:
    stray = [flag for flag, dest, own in args.server_option_dests if own and getattr(args, dest)]
    if stray:
        raise UsageError(f"{' and '.join(stray)} go with --server")


def _client(args: argparse.Namespace) -> ApiClient:
    from lamina.backend.service.remote import ApiClient

    if args.repo:
        raise UsageError("give --repo or --server, not both")
    token_file, ca_file = _server_files(args)
    return ApiClient.from_files(args.server, token_file=token_file, ca_file=ca_file)


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """--server ADDR, --token-file and --ca-file for a command that has no --repo."""
    _add_server_options(parser, instead="--catalog")


def remote_service(args: argparse.Namespace) -> RemoteService | None:
    """The lamina server of --server, for a command that has no --repo (None: no --server)."""
    if not args.server:
        _refuse_stray_server_options(args)
        return None
    from lamina.backend.service.remote import ApiClient, RemoteService

    token_file, ca_file = _server_files(args)
    return RemoteService(ApiClient.from_files(args.server, token_file=token_file, ca_file=ca_file))


def service_for(args: argparse.Namespace) -> Service:
    """The local repository (--repo) or a lamina server (--server)."""
    if args.server:
        from lamina.backend.service.remote import RemoteService

        if getattr(args, "password_file", None):
            raise UsageError("--password-file is for --repo; a server opens its repository itself")
        return RemoteService(_client(args))
    _refuse_stray_server_options(args)
    if not args.repo:
        raise UsageError("give --repo REPO or set LAMINA_REPO (or --server ADDR)")
    return Service(args.repo, **service_options(args))


# ---------------------------------------------------------------------- files get --server


def cmd_files_get_remote(args: argparse.Namespace, local_handler: Any) -> int:
    if not args.server:
        _refuse_stray_server_options(args)
        if not args.repo:
            raise UsageError("give --repo REPO or set LAMINA_REPO (or --server ADDR)")
        return int(local_handler(args))
    from lamina.backend.service import ExtractReport

    started = time.monotonic()
    report = ExtractReport(target=args.to)
    with _client(args) as client:
        for path in args.paths:
            part = client.download(args.point, path, args.to)
            report.files += part.files
            report.directories += part.directories
            report.symlinks += part.symlinks
            report.others += part.others
            report.bytes += part.bytes
            report.skipped.extend(part.skipped)
    for skipped in report.skipped:
        print(
            f"lamina: warning: skipped {printable(skipped.path)}: {printable(skipped.reason)}",
            file=sys.stderr,
        )
    if args.json:
        print_json(report.as_json())
    else:
        print(
            f"downloaded {plural(report.files, 'file')}, "
            f"{plural(report.directories, 'directory', 'directories')} and "
            f"{plural(report.symlinks, 'symlink')} ({format_size(report.bytes)}) to {report.target} "
            f"in {elapsed(time.monotonic() - started)}"
            + (f"; {len(report.skipped)} skipped" if report.skipped else "")
        )
    return 0 if report.ok else 1


# ---------------------------------------------------------------------- serve


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from None


def _setup_logging(log_file: str | None) -> None:
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(PrintableFormatter("%(asctime)s lamina serve: %(message)s"))
    root = logging.getLogger("lamina")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def cmd_serve(args: argparse.Namespace) -> int:
    from lamina.backend.api.auth import MIN_TOKEN_LENGTH, is_loopback, read_token_file
    from lamina.backend.api.server import ServerOptions, serve

    grace = 0.0 if args.grace.strip() in ("0", "0s") else parse_duration(args.grace)
    if args.max_backups < 1 or args.max_backups_per_volume < 1:
        raise UsageError("--max-backups and --max-backups-per-volume must be at least 1")
    caps = BackupCaps(
        max_backups=args.max_backups, max_backups_per_volume=args.max_backups_per_volume
    )
    if args.insecure_no_auth:
        if args.token_file:
            raise UsageError("give --token-file or --insecure-no-auth, not both")
        if not is_loopback(args.listen):
            raise UsageError(
                f"--insecure-no-auth is only allowed on a loopback address, not {args.listen}"
            )
        token = None
    else:
        if not args.token_file:
            raise UsageError(
                "give --token-file FILE (clients send it as a bearer token), "
                "or --insecure-no-auth on a loopback address"
            )
        token = read_token_file(args.token_file)
        if len(token) < MIN_TOKEN_LENGTH:
            raise UsageError(
                f"the token in {args.token_file} is too short ({len(token)} characters); "
                f"use at least {MIN_TOKEN_LENGTH}, e.g. from `openssl rand -hex 32`"
            )
    for folder in args.allow_path:
        if not os.path.isdir(folder):
            raise UsageError(f"--allow-path {folder} is not a folder")
    local_root = args.local_root or default_local_root()
    if local_root and not os.path.isdir(local_root):
        raise UsageError(f"local cluster folder {local_root} does not exist")
    options = ServerOptions(
        listen=args.listen,
        token=token,
        tls_cert=_read(args.tls_cert, "TLS certificate"),
        tls_key=_read(args.tls_key, "TLS key"),
        allowed_paths=list(args.allow_path),
    )
    service = opened(
        Service(
            args.repo,
            kubeconfig=args.kubeconfig,
            local_root=local_root,
            backup_caps=caps,
            catalog=args.catalog,
            origin="api",
            **service_options(args),
        )
    )
    service.info()  # a wrong URL or password is a one-line error now, not on the first call
    _setup_logging(args.log_file)
    catalog_problem = service.open_catalog_now()
    if catalog_problem is not None:
        logging.getLogger("lamina.api").warning(
            "the job history cannot be opened now (%s); jobs run and are recorded once it can",
            printable(catalog_problem),
        )
    metrics = None
    if args.metrics_listen:
        from ..service.metrics import MetricsServer

        metrics = MetricsServer(service, args.metrics_listen)
        logging.getLogger("lamina.api").info(
            "metrics on http://%s/metrics", printable(args.metrics_listen)
        )
    try:
        return serve(service, options, grace=grace)
    finally:
        if metrics is not None:
            metrics.stop()
