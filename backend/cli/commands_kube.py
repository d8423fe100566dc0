"""Kubernetes commands: `lamina clusters`, `lamina volumes` and `lamina kube ...`.

The kubernetes client is imported by the handlers, not at start-up, so that commands which do
not talk to a cluster stay quick.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..display import printable
from ..errors import UsageError
from ..service import KubeSession, check_clusters, datamover_manifests, list_clusters
from ..units import format_size
from .common import print_json


def _add_context_args(p: argparse.ArgumentParser, *, namespace_help: str | None) -> None:
    p.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)",
    )
    p.add_argument(
        "--context", metavar="CTX", help="kubeconfig context (default: the current context)"
    )
    if namespace_help is not None:
        p.add_argument("-n", "--namespace", metavar="NS", help=namespace_help)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "clusters", help="list the Kubernetes contexts of the kubeconfig and the local cluster"
    )
    p.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)",
    )
    p.add_argument(
        "--no-check", action="store_true", help="do not ask each cluster for its version"
    )
    p.add_argument(
        "--timeout", type=float, default=3.0, metavar="S", help="seconds per check (default 3)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_clusters)

    p = sub.add_parser("volumes", help="list the PVCs of a cluster: mode, size, driver, CBT")
    _add_context_args(p, namespace_help="only this namespace (default: all namespaces)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_volumes)

    kube = sub.add_parser("kube", help="snapshots, CBT endpoints and data-mover Jobs in a cluster")
    kube_sub = kube.add_subparsers(dest="kube_command", metavar="ACTION")
    kube_sub.required = True
    ns_help = "namespace (default: the context's, else default)"

    p = kube_sub.add_parser("namespaces", help="list the namespaces of a cluster")
    _add_context_args(p, namespace_help=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_namespaces)

    p = kube_sub.add_parser(
        "snapshot", help="take a CSI VolumeSnapshot of a block PVC and wait until ready"
    )
    _add_context_args(p, namespace_help=ns_help)
    p.add_argument("pvc", metavar="PVC", help="the block PVC to snapshot")
    p.add_argument("--name", help="VolumeSnapshot name (default: PVC-lamina-TIMESTAMP)")
    p.add_argument("--class", dest="snapshot_class", metavar="CLASS", help="VolumeSnapshotClass")
    p.add_argument(
        "--timeout", type=float, default=300.0, metavar="S", help="seconds to wait (default 300)"
    )
    p.add_argument("--poll", type=float, default=1.0, metavar="S", help="seconds between checks")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_snapshot)

    p = kube_sub.add_parser("delete-snapshot", help="delete a VolumeSnapshot")
    _add_context_args(p, namespace_help=ns_help)
    p.add_argument("snapshot", metavar="NAME", help="the VolumeSnapshot to delete")
    p.set_defaults(func=cmd_delete_snapshot)

    p = kube_sub.add_parser(
        "cbt-endpoint", help="find a driver's SnapshotMetadataService and get a token for it"
    )
    _add_context_args(p, namespace_help=ns_help)
    p.add_argument(
        "--in-cluster",
        action="store_true",
        help="use the pod's service account instead of a kubeconfig",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--driver", help="CSI driver name")
    which.add_argument("--snapshot", metavar="NAME", help="VolumeSnapshot whose driver to use")
    p.add_argument(
        "--service-account", required=True, metavar="SA", help="service account the token is for"
    )
    p.add_argument(
        "--expiry", type=int, default=600, metavar="S", help="token lifetime (default 600)"
    )
    p.add_argument("--token-file", metavar="FILE", help="write the token to FILE (mode 0600)")
    p.add_argument("--ca-file", metavar="FILE", help="write the CA certificate (PEM) to FILE")
    p.add_argument("--show-token", action="store_true", help="print the token itself")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_cbt_endpoint)

    p = kube_sub.add_parser(
        "datamover",
        help="print (or --submit) a Job that backs up a PVC's snapshot inside the cluster",
    )
    _add_context_args(p, namespace_help=ns_help)
    p.add_argument("pvc", metavar="PVC", help="the block PVC to back up")
    p.add_argument(
        "--repo", help="repository URL as seen from inside the cluster (default: $LAMINA_REPO)"
    )
    p.add_argument(
        "--image",
        default="lamina:latest",
        help="container image with lamina (default lamina:latest)",
    )
    p.add_argument(
        "--snapshot",
        metavar="NAME",
        help="back up this existing VolumeSnapshot (default: take a new one)",
    )
    p.add_argument(
        "--class",
        dest="snapshot_class",
        metavar="CLASS",
        help="VolumeSnapshotClass of a new snapshot",
    )
    p.add_argument(
        "--service-account",
        default="lamina-datamover",
        metavar="SA",
        help="service account the Job runs as (default lamina-datamover)",
    )
    p.add_argument(
        "--cluster-name", help="cluster part of the volume name (default: from the context)"
    )
    p.add_argument(
        "--env-secret", metavar="SECRET", help="Secret with environment variables (S3 keys)"
    )
    p.add_argument(
        "--password-secret", metavar="SECRET", help="Secret with key 'password' for the repository"
    )
    p.add_argument(
        "--no-cbt", action="store_true", help="do not use changed-block tracking even if offered"
    )
    p.add_argument(
        "--backup-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `lamina backup`",
    )
    p.add_argument("--submit", action="store_true", help="create the objects and wait for the Job")
    p.add_argument(
        "--no-rbac", action="store_true", help="with --submit: do not create the RBAC objects"
    )
    p.add_argument(
        "--keep-source-pvc",
        action="store_true",
        help="with --submit: keep the PVC from the snapshot",
    )
    p.add_argument(
        "--timeout", type=float, default=3600.0, metavar="S", help="seconds to wait for the Job"
    )
    p.add_argument(
        "--snapshot-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds to wait for the snapshot to be ready (default 300)",
    )
    p.add_argument("--poll", type=float, default=2.0, metavar="S", help="seconds between checks")
    p.set_defaults(func=cmd_datamover, repo_from_env=True, repo_required=True)


# ----- helpers ---------------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> KubeSession:
    return KubeSession.open(
        args.context, args.kubeconfig, in_cluster=getattr(args, "in_cluster", False)
    )


def _table(rows: list[list[str]], header: list[str]) -> None:
    # Names, labels and replies come from the cluster: escaped before the widths are taken.
    rows = [[printable(str(c)) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _positive(value: float, what: str) -> None:
    if value <= 0:
        raise UsageError(f"{what} must be more than 0 seconds")


# ----- commands --------------------------------------------------------------------------------


def cmd_clusters(args: argparse.Namespace) -> int:
    _positive(args.timeout, "--timeout")
    clusters = list_clusters(args.kubeconfig, local_root=None)
    checks = {} if args.no_check else check_clusters(args.kubeconfig, None, timeout=args.timeout)
    checks.pop("local", None)  # the local cluster is image files: nothing to ask
    if args.json:
        out = []
        for c in clusters:
            check = checks.get(c.name)
            out.append(
                {
                    "name": c.name,
                    "cluster": c.cluster,
                    "user": c.user,
                    "namespace": c.namespace,
                    "server": c.server,
                    "current": c.current,
                    "local": c.kind == "local",
                    "reachable": (
                        {"ok": check.ok, "detail": check.detail, "seconds": check.seconds}
                        if check
                        else None
                    ),
                }
            )
        print_json(out)
        return 0
    rows = []
    for c in clusters:
        check = checks.get(c.name)
        if c.kind == "local":
            status = "local image files"
        elif check is None:
            status = "-"
        elif check.ok:
            status = f"ok ({check.detail})"
        else:
            status = f"unreachable: {check.detail}"
        rows.append(
            [
                "*" if c.current else "",
                c.name,
                c.cluster or "-",
                c.server or "-",
                c.namespace or "-",
                status,
            ]
        )
    _table(rows, ["CURRENT", "NAME", "CLUSTER", "SERVER", "NAMESPACE", "STATUS"])
    return 0


def cmd_volumes(args: argparse.Namespace) -> int:
    with _open(args) as cluster:
        listing = cluster.volumes(args.namespace)
    for note in listing.notes:
        print(f"lamina: note: {printable(note)}", file=sys.stderr)
    if args.json:
        print_json([v.as_json() for v in listing.volumes])
        return 0

    def cbt(value: bool | None) -> str:
        return "?" if value is None else ("yes" if value else "no")

    rows = [
        [
            v.namespace,
            v.name,
            v.phase,
            v.volume_mode,
            v.capacity or "-",
            v.storage_class or "-",
            v.driver or "-",
            cbt(v.cbt),
        ]
        for v in listing.volumes
    ]
    _table(
        rows, ["NAMESPACE", "NAME", "STATUS", "MODE", "CAPACITY", "STORAGECLASS", "DRIVER", "CBT"]
    )
    return 0


def cmd_namespaces(args: argparse.Namespace) -> int:
    with _open(args) as cluster:
        names = cluster.namespaces()
    if args.json:
        print_json(names)
    else:
        for name in names:
            print(printable(name))
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    _positive(args.timeout, "--timeout")
    _positive(args.poll, "--poll")
    with _open(args) as cluster:
        namespace = cluster.namespace(args.namespace)
        info = cluster.take_snapshot(
            namespace,
            args.pvc,
            name=args.name,
            snapshot_class=args.snapshot_class,
            timeout=args.timeout,
            poll=args.poll,
        )
    if args.json:
        print_json(info.as_json())
        return 0
    print(
        f"snapshot {printable(info.namespace)}/{printable(info.name)} "
        f"of PVC {printable(info.pvc)} is ready"
    )
    print(f"  handle        {printable(info.handle)}")
    print(f"  restore size  {format_size(info.restore_size)} ({info.restore_size} bytes)")
    print(f"  driver        {printable(info.driver)}")
    print(f"  class         {printable(info.snapshot_class or '-')}")
    print(f"  content       {printable(info.content_name)}")
    return 0


def cmd_delete_snapshot(args: argparse.Namespace) -> int:
    with _open(args) as cluster:
        namespace = cluster.namespace(args.namespace)
        cluster.delete_snapshot(namespace, args.snapshot)
    print(f"deleted VolumeSnapshot {namespace}/{args.snapshot}")
    return 0


def _write_private(path: str, data: bytes) -> None:
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(mode=0o600, exist_ok=True)
        target.chmod(0o600)
        target.write_bytes(data)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None


def cmd_cbt_endpoint(args: argparse.Namespace) -> int:
    if args.expiry < 600:
        raise UsageError("--expiry must be at least 600 seconds (the TokenRequest API minimum)")
    with _open(args) as cluster:
        endpoint = cluster.cbt_endpoint(
            cluster.namespace(args.namespace),
            driver=args.driver,
            snapshot=args.snapshot,
            service_account=args.service_account,
            expiry_seconds=args.expiry,
        )
    if args.token_file:
        _write_private(args.token_file, endpoint.token.encode())
    if args.ca_file:
        _write_private(args.ca_file, endpoint.ca_pem)
    if args.json:
        data: dict[str, Any] = {
            "address": endpoint.address,
            "audience": endpoint.audience,
            "ca_pem": endpoint.ca_pem.decode(),
            "token_length": len(endpoint.token),
        }
        if args.show_token:
            data["token"] = endpoint.token
        print_json(data)
        return 0
    print(f"address   {printable(endpoint.address)}")
    print(f"audience  {printable(endpoint.audience)}")
    print(
        f"token     {endpoint.token if args.show_token else f'({len(endpoint.token)} characters)'}"
    )
    print(f"ca        {len(endpoint.ca_pem)} bytes of PEM")
    return 0


def cmd_datamover(args: argparse.Namespace) -> int:
    for value, what in (
        (args.timeout, "--timeout"),
        (args.snapshot_timeout, "--snapshot-timeout"),
        (args.poll, "--poll"),
    ):
        _positive(value, what)
    with _open(args) as cluster:
        namespace = cluster.namespace(args.namespace)
        spec = cluster.datamover_spec(
            namespace,
            args.pvc,
            args.repo,
            snapshot=args.snapshot,
            snapshot_class=args.snapshot_class,
            image=args.image,
            service_account=args.service_account,
            cluster_name=args.cluster_name,
            env_secret=args.env_secret,
            password_secret=args.password_secret,
            backup_args=tuple(args.backup_arg),
            use_cbt=not args.no_cbt,
        )
        if not args.submit:
            sys.stdout.write(datamover_manifests(spec))
            return 0
        print(f"backing up PVC {namespace}/{args.pvc} with Job {spec.job_name}", file=sys.stderr)
        result = cluster.submit_datamover(
            spec,
            create_rbac=not args.no_rbac,
            snapshot_timeout=args.snapshot_timeout,
            job_timeout=args.timeout,
            poll=args.poll,
            keep_source_pvc=args.keep_source_pvc,
        )
    print(f"Job {printable(namespace)}/{printable(result.job)} completed in {result.seconds:.1f}s")
    print(
        f"  snapshot      {printable(result.snapshot.name)} "
        f"(handle {printable(result.snapshot.handle)})"
    )
    print(f"  restore size  {format_size(result.snapshot.restore_size)}")
    kept = "kept" if args.keep_source_pvc else "deleted"
    print(f"  source PVC    {printable(result.source_pvc)} ({kept})")
    return 0
