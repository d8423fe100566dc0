"""Changed-block tracking commands: `lamina cbt ...`, `lamina local ...` and `backup --cbt`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

# gRPC's C core logs TLS handshake failures at INFO on stderr; the one-line error says it all.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from ..display import printable
from ..errors import UsageError
from ..service import (
    Service,
    backup_options_from_cbt,
    default_local_root,
    list_local_snapshots,
    metadata_client,
    serve_snapshot_metadata,
    take_local_snapshot,
)
from ..units import format_size, plural
from .common import add_repo_args, open_service, opened, print_json, service_options

if TYPE_CHECKING:  # grpc costs 0.1 s to import: only the commands that speak it load it
    from ..service import MetadataMessage, MetadataStream, SnapshotMetadataClient

TABLE_COLUMNS = ("Record#", "VolCapBytes", "BlockMetadataType", "ByteOffset", "SizeBytes")
TABLE_WIDTHS = (7, 15, 17, 15, 15)


def register(sub: Any) -> None:
    cbt = sub.add_parser("cbt", help="changed-block tracking over the CSI SnapshotMetadata API")
    cbt_sub = cbt.add_subparsers(dest="cbt_command", metavar="ACTION")
    cbt_sub.required = True

    p = cbt_sub.add_parser("allocated", help="list the allocated blocks of a snapshot")
    _add_client_args(p)
    p.add_argument("--snapshot", required=True, metavar="NAME", help="VolumeSnapshot name")
    p.set_defaults(func=cmd_allocated)

    p = cbt_sub.add_parser("delta", help="list the blocks changed between two snapshots")
    _add_client_args(p)
    p.add_argument(
        "--base-snapshot-id",
        required=True,
        metavar="HANDLE",
        help="snapshot handle of the base (VolumeSnapshotContent status.snapshotHandle)",
    )
    p.add_argument(
        "--snapshot", required=True, metavar="NAME", help="VolumeSnapshot name of the target"
    )
    p.set_defaults(func=cmd_delta)

    p = cbt_sub.add_parser("serve", help="serve the snapshots of a local cluster over gRPC")
    p.add_argument("--root", required=True, metavar="DIR", help="local cluster folder")
    p.add_argument(
        "--listen", default="127.0.0.1:50051", metavar="HOST:PORT", help="port 0 picks one"
    )
    p.add_argument("--token-file", metavar="FILE", help="require this security token")
    p.add_argument("--tls-cert", metavar="FILE", help="server certificate (PEM); needs --tls-key")
    p.add_argument("--tls-key", metavar="FILE", help="server private key (PEM)")
    p.add_argument(
        "--block-type",
        choices=["fixed", "variable"],
        default="fixed",
        help="report fixed-length blocks or variable-length extents (default fixed)",
    )
    # For tests of stream resumption: abort streams after N messages.
    p.add_argument("--cut-streams-after", type=int, metavar="N", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)

    local = sub.add_parser("local", help="snapshots of local block volumes (the local cluster)")
    local_sub = local.add_subparsers(dest="local_command", metavar="ACTION")
    local_sub.required = True
    p = local_sub.add_parser("snapshot", help="take a snapshot of an image file or block device")
    p.add_argument("--root", required=True, metavar="DIR", help="local cluster folder")
    p.add_argument(
        "--namespace", default="default", metavar="NS", help="namespace of the snapshot (default)"
    )
    p.add_argument("source", metavar="SOURCE", help="image file or block device")
    p.add_argument("name", metavar="NAME", help="snapshot name")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_local_snapshot)
    p = local_sub.add_parser(
        "snapshots",
        help="list the snapshots of the local cluster (--prune: delete those no point needs)",
        description="Lists every snapshot of the local cluster. With a repository (--repo or "
        "LAMINA_REPO) it also says which point needs each one: a volume's newest point keeps "
        "its snapshot as the base of the next incremental; no other point needs one, since "
        "restores come from the repository. --prune deletes the snapshots no point needs, "
        "also those taken by hand; a snapshot a running backup reads is kept.",
    )
    p.add_argument(
        "--root",
        metavar="DIR",
        help="local cluster folder (default: $LAMINA_LOCAL_ROOT, else ./demo/cluster)",
    )
    add_repo_args(p, required=False)
    p.add_argument(
        "--prune", action="store_true", help="delete the snapshots no point of REPO needs"
    )
    p.add_argument("--json", action="store_true", help="print the snapshots as JSON")
    p.set_defaults(func=cmd_local_snapshots)

    backup = getattr(sub, "choices", {}).get("backup")
    if backup is not None:
        _add_backup_args(backup)


def _add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", required=True, metavar="HOST:PORT", help="SnapshotMetadata service")
    p.add_argument("--namespace", required=True, metavar="NS", help="namespace of the snapshots")
    p.add_argument("--token-file", metavar="FILE", help="file holding the security token")
    p.add_argument("--ca-file", metavar="FILE", help="CA certificate (PEM): use TLS, trust only it")
    p.add_argument(
        "--tls-server-name", metavar="NAME", help="name expected in the server certificate"
    )
    p.add_argument(
        "--max-results", type=int, default=0, metavar="N", help="tuples per message (0: server)"
    )
    p.add_argument(
        "--starting-offset", type=int, default=0, metavar="N", help="first byte of interest"
    )
    p.add_argument(
        "-o",
        "--output",
        choices=["table", "json"],
        default="table",
        help="a table (default) or JSON messages",
    )


def _add_backup_args(backup: argparse.ArgumentParser) -> None:
    group = backup.add_argument_group("changed-block tracking (CSI SnapshotMetadata)")
    group.add_argument("--cbt", metavar="ADDRESS", help="SnapshotMetadata service HOST:PORT")
    group.add_argument(
        "--namespace", dest="cbt_namespace", metavar="NS", help="namespace of the snapshot"
    )
    group.add_argument(
        "--snapshot", dest="cbt_snapshot", metavar="NAME", help="VolumeSnapshot being backed up"
    )
    group.add_argument(
        "--base-snapshot-id",
        dest="cbt_base",
        metavar="HANDLE",
        help="handle of the parent's snapshot (default: the handle recorded by the parent point)",
    )
    group.add_argument(
        "--token-file", dest="cbt_token_file", metavar="FILE", help="security token file"
    )
    group.add_argument(
        "--ca-file", dest="cbt_ca_file", metavar="FILE", help="CA certificate (PEM) for TLS"
    )
    backup.set_defaults(range_options_hook=backup_cbt_options)


# ---------------------------------------------------------------------------- helpers


def read_token_file(path: str | None) -> str:
    if not path:
        return ""
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise UsageError(f"cannot read token file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"token file {path} is not text") from None
    if not token:
        raise UsageError(f"token file {path} is empty")
    return token


def read_pem_file(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from None
    if b"-----BEGIN " not in data:
        raise UsageError(f"{what} {path} is not PEM")
    return data


def _client(args: argparse.Namespace) -> SnapshotMetadataClient:
    return metadata_client(
        args.address,
        token=read_token_file(args.token_file),
        ca_pem=read_pem_file(args.ca_file, "CA file"),
        tls_server_name=args.tls_server_name,
    )


def _print_table_header(out: TextIO) -> None:
    out.write(
        " ".join(f"{c:>{w}}" for c, w in zip(TABLE_COLUMNS, TABLE_WIDTHS, strict=True)) + "\n"
    )
    out.write(" ".join("-" * w for w in TABLE_WIDTHS) + "\n")


def print_stream(stream: MetadataStream, output: str, out: TextIO | None = None) -> int:
    """Print each message as it arrives: table rows, or one JSON array of message objects.

    Nothing is printed before the first message, so a refused request leaves stdout empty.
    """
    out = out or sys.stdout
    record = 0
    for message in stream.messages():
        record += 1
        if output == "json":
            out.write(("[\n  " if record == 1 else ",\n  ") + _message_json(message))
        else:
            if record == 1:
                _print_table_header(out)
            for offset, size in message.extents:
                cells = (record, message.capacity, message.block_type, offset, size)
                out.write(
                    " ".join(f"{c:>{w}}" for c, w in zip(cells, TABLE_WIDTHS, strict=True)) + "\n"
                )
        out.flush()
    if output == "json":
        out.write("\n]\n" if record else "[]\n")
    elif not record:
        _print_table_header(out)
    return 0


def _message_json(message: MetadataMessage) -> str:
    return json.dumps(
        {
            "block_metadata_type": message.block_type,
            "volume_capacity_bytes": message.capacity,
            "block_metadata": [{"byte_offset": o, "size_bytes": n} for o, n in message.extents],
        }
    )


# ---------------------------------------------------------------------------- commands


def cmd_allocated(args: argparse.Namespace) -> int:
    with _client(args) as client:
        stream = client.allocated(
            args.namespace,
            args.snapshot,
            starting_offset=args.starting_offset,
            max_results=args.max_results,
        )
        return print_stream(stream, args.output)


def cmd_delta(args: argparse.Namespace) -> int:
    with _client(args) as client:
        stream = client.delta(
            args.namespace,
            args.base_snapshot_id,
            args.snapshot,
            starting_offset=args.starting_offset,
            max_results=args.max_results,
        )
        return print_stream(stream, args.output)


def cmd_serve(args: argparse.Namespace) -> int:
    if not Path(args.root).is_dir():
        raise UsageError(f"local cluster folder {args.root} does not exist")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    token = read_token_file(args.token_file) if args.token_file else None
    server = serve_snapshot_metadata(
        args.root,
        args.listen,
        token=token,
        tls_cert_pem=read_pem_file(args.tls_cert, "TLS certificate"),
        tls_key_pem=read_pem_file(args.tls_key, "TLS key"),
        block_type=args.block_type,
        cut_after_messages=args.cut_streams_after,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    extras = [f"{args.block_type}-length blocks"]
    extras.append("token required" if token else "no token check")
    extras.append("TLS" if server.tls else "plaintext")
    print(f"serving SnapshotMetadata on {server.address} ({', '.join(extras)})", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop(grace=1.0)
    return 0


def cmd_local_snapshot(args: argparse.Namespace) -> int:
    snap = take_local_snapshot(args.root, args.source, args.namespace, args.name)
    if args.json:
        print_json(snap.as_json())
    else:
        print(snap.handle)
    return 0


def cmd_local_snapshots(args: argparse.Namespace) -> int:
    root = args.root or default_local_root()
    if not root:
        raise UsageError("no local cluster folder: give --root DIR or set LAMINA_LOCAL_ROOT")
    if not Path(root).is_dir():
        raise UsageError(f"local cluster folder {root} does not exist")
    if args.prune and not args.repo:
        raise UsageError("--prune needs the repository whose points keep snapshots: give --repo")
    if args.repo:
        service = opened(Service(args.repo, local_root=root, **service_options(args)))
        removed = service.prune_local_snapshots() if args.prune else []
        snapshots = service.list_local_snapshots()
    else:
        removed, snapshots = [], list_local_snapshots(root)
    if args.json:
        data: Any = [s.as_json() for s in snapshots]
        print_json(
            {"removed": [s.as_json() for s in removed], "kept": data} if args.prune else data
        )
        return 0
    for gone in removed:
        print(
            f"deleted snapshot {printable(gone.namespace)}/{printable(gone.name)} "
            f"({format_size(gone.size)})"
        )
    if args.prune:
        print(f"{plural(len(removed), 'snapshot')} deleted, {len(snapshots)} kept")
    if not snapshots:
        if not args.prune:
            print(f"no snapshots in {root}")
        return 0
    needed = f"  {'NEEDED BY':<16}" if args.repo else ""
    print(
        f"{'NAMESPACE':<16} {'NAME':<24} {'HANDLE':<36} {'SIZE':>10} {'CREATED (UTC)':<19}"
        f"{needed}  SOURCE"
    )
    for s in snapshots:
        needed = f"  {printable(s.needed_by or '-'):<16}" if args.repo else ""
        print(
            f"{printable(s.namespace):<16} {printable(s.name):<24} {printable(s.handle):<36} "
            f"{format_size(s.size):>10} {printable(s.created[:19]).replace('T', ' '):<19}{needed}  "
            f"{printable(s.source)}"
        )
    return 0


# ---------------------------------------------------------------------------- backup --cbt


def _source_size(path: str) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None  # the backup itself reports a missing source
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def backup_cbt_options(args: argparse.Namespace) -> dict[str, Any]:
    """`lamina backup --cbt ...`: range sources for Service.start_backup."""
    if not args.cbt:
        stray = [
            flag
            for flag, value in (
                ("--namespace", args.cbt_namespace),
                ("--snapshot", args.cbt_snapshot),
                ("--base-snapshot-id", args.cbt_base),
                ("--token-file", args.cbt_token_file),
                ("--ca-file", args.cbt_ca_file),
            )
            if value
        ]
        if stray:
            raise UsageError(f"{', '.join(stray)} only apply with --cbt ADDRESS")
        return {}
    if not args.cbt_namespace or not args.cbt_snapshot:
        raise UsageError(
            "--cbt needs --namespace and --snapshot (the VolumeSnapshot being backed up)"
        )
    if getattr(args, "changed_ranges", None):
        raise UsageError("--cbt and --changed-ranges cannot be used together")
    base = _base_handle(args)
    return backup_options_from_cbt(
        args.cbt,
        args.cbt_namespace,
        args.cbt_snapshot,
        base,
        read_token_file(args.cbt_token_file),
        read_pem_file(args.cbt_ca_file, "CA file"),
        _source_size(args.source),
    )


def _base_handle(args: argparse.Namespace) -> str | None:
    """The delta base: the snapshot handle the parent point recorded.

    A delta from any other snapshot would describe changes against content the parent does not
    hold, so an explicit --base-snapshot-id that disagrees with the parent is refused.
    """
    if args.parent == "none":
        return None
    service = open_service(args)
    if args.parent == "auto":
        points = service.list_points(args.volume)
        parent = points[-1] if points else None
    else:
        parent = service.get_point(args.parent)
    recorded = parent.snapshot_handle if parent is not None else None
    if args.cbt_base and recorded and args.cbt_base != recorded:
        assert parent is not None
        raise UsageError(
            f"--base-snapshot-id {args.cbt_base} is not the snapshot of parent point {parent.id} "
            f"({recorded})"
        )
    if parent is None:
        return None
    return args.cbt_base or recorded
