"""`lamina tui`: the terminal UI over the service layer."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import UsageError
from ..service import Service, default_local_root, default_repo
from .common import opened, service_options


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tui",
        help="browse clusters, volumes, chains and files; back up, verify, restore, extract",
        description="The terminal UI. Keys: ? help, : go to a view, / filter, ctrl+p commands, q quit.",
    )
    p.add_argument(
        "--repo",
        help="repository URL: a path, file:///path or s3://bucket/prefix "
        "(default: $LAMINA_REPO, else ./demo/repo after `make demo`)",
    )
    p.add_argument(
        "--password-file",
        help="file holding the password of an encrypted repository (or set "
        "LAMINA_PASSWORD_FILE; on a terminal lamina asks for it)",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    p.add_argument(
        "--local-root",
        help="folder of the local cluster (default: $LAMINA_LOCAL_ROOT, else ./demo/cluster)",
    )
    p.add_argument(
        "--server",
        metavar="ADDR",
        help="use a remote lamina server (lamina serve) instead of opening a repository here",
    )
    p.add_argument("--token-file", help="with --server: file holding the server's bearer token")
    p.add_argument("--ca-file", help="with --server: CA certificate (PEM) of a TLS server")
    p.set_defaults(func=cmd_tui)


def cmd_tui(args: argparse.Namespace) -> int:
    if args.server:
        return _remote(args)
    if args.token_file or args.ca_file:
        raise UsageError("--token-file and --ca-file go with --server")
    repo = args.repo or default_repo()
    if not repo:
        raise UsageError(
            "no repository: give --repo REPO, set LAMINA_REPO, or run `make demo` in this folder"
        )
    local_root = args.local_root or default_local_root()
    if local_root and not os.path.isdir(local_root):
        raise UsageError(f"local cluster folder {local_root} does not exist")
    if not sys.stdout.isatty() or not sys.stdin.isatty():
        raise UsageError("lamina tui needs a terminal")
    service = opened(
        Service(
            repo,
            kubeconfig=args.kubeconfig,
            local_root=local_root,
            origin="tui",
            **service_options(args),
        )
    )
    service.info()  # a wrong URL or password is a one-line error here, before the screen opens
    from lamina.tui.app import make_app

    try:
        make_app(service).run()
    finally:
        service.close()
    return 0


def _remote(args: argparse.Namespace) -> int:
    """The same screens over the gRPC API: every call goes to the server."""
    if args.repo or args.local_root or args.kubeconfig or args.password_file:
        raise UsageError(
            "with --server the repository, clusters and password are the server's: "
            "drop --repo, --local-root, --kubeconfig and --password-file"
        )
    if not sys.stdout.isatty() or not sys.stdin.isatty():
        raise UsageError("lamina tui needs a terminal")
    from lamina.backend.service.remote import ApiClient, RemoteService
    from lamina.tui.app import make_app

    service = RemoteService(
        ApiClient.from_files(args.server, token_file=args.token_file, ca_file=args.ca_file)
    )
    try:
        service.info()  # an unreachable server or a wrong token is one line, before the screen
        make_app(service).run()
    finally:
        service.close()
    return 0
