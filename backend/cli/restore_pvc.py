"""`lamina restore POINT --to-pvc NAMESPACE/NAME`: a point restored into a new PVC of a
cluster by a restore data-mover Job (the policy lives in lamina.backend.service.kube)."""

from __future__ import annotations

import argparse
import sys

from ..display import printable
from ..errors import UsageError
from ..service import KubeSession, parse_pvc_ref, start_restore_to_pvc
from ..service.kube import DEFAULT_IMAGE
from .common import open_service, print_json, run_job

# dest -> flag of the options that only --to-pvc takes
_PVC_OPTIONS = {
    "storage_class": "--storage-class",
    "size": "--size",
    "mode": "--mode",
    "image": "--image",
    "env_secret": "--env-secret",
    "password_secret": "--password-secret",
    "kubeconfig": "--kubeconfig",
    "context": "--context",
    "timeout": "--timeout",
    "poll": "--poll",
}


def add_to_pvc_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("into a new PVC of a cluster")
    # a flag, so that TARGET stays a required positional and options may come between
    # POINT and TARGET (`restore POINT --to-pvc NS/NAME` reads as written)
    g.add_argument(
        "--to-pvc",
        action="store_true",
        help="TARGET is NAMESPACE/NAME of a new PVC: create it (it must not exist) and restore "
        "into it with a Job",
    )
    g.add_argument("--storage-class", metavar="CLASS", help="StorageClass of the new PVC")
    g.add_argument(
        "--size", help="request of the new PVC, e.g. 20Gi (default: the point's volume size)"
    )
    g.add_argument(
        "--mode",
        choices=["block", "filesystem"],
        help="block: the PVC is the volume (default); filesystem: the image file volume.img in it",
    )
    g.add_argument("--image", help=f"container image with lamina (default {DEFAULT_IMAGE})")
    g.add_argument(
        "--env-secret", metavar="SECRET", help="Secret with environment variables (S3 keys)"
    )
    g.add_argument(
        "--password-secret", metavar="SECRET", help="Secret with key 'password' for the repository"
    )
    g.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file (default: $KUBECONFIG)")
    g.add_argument("--context", metavar="CTX", help="kubeconfig context (default: the current)")
    g.add_argument("--timeout", type=float, metavar="S", help="seconds to wait for the Job (3600)")
    g.add_argument("--poll", type=float, metavar="S", help="seconds between checks (2)")


def pvc_only_options(args: argparse.Namespace) -> list[str]:
    """The --to-pvc options given without --to-pvc."""
    return [flag for dest, flag in _PVC_OPTIONS.items() if getattr(args, dest, None) is not None]


def restore_to_pvc(args: argparse.Namespace) -> int:
    for flag in ("overwrite", "delta"):
        if getattr(args, flag):
            raise UsageError(f"--{flag} does not apply to --to-pvc: the PVC is always new")
    if getattr(args, "server", None):
        raise UsageError("--to-pvc needs --repo: the Job in the cluster reads the repository")
    for value, flag in ((args.timeout, "--timeout"), (args.poll, "--poll")):
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be more than 0 seconds")
    namespace, name = parse_pvc_ref(args.target)
    service = open_service(args)
    with KubeSession.open(args.context, args.kubeconfig) as session:
        job = start_restore_to_pvc(
            service,
            session,
            args.point,
            namespace,
            name,
            repo=args.repo,
            storage_class=args.storage_class,
            size=args.size,
            mode=args.mode or "block",
            image=args.image or DEFAULT_IMAGE,
            env_secret=args.env_secret,
            password_secret=args.password_secret,
            job_timeout=args.timeout or 3600.0,
            poll=args.poll or 2.0,
        )
        print(f"restoring into new PVC {printable(args.target)}", file=sys.stderr)
        result = run_job(job, quiet=args.quiet)
    if args.json:
        print_json(result.as_json())
        return 0
    print(
        f"restored point {printable(result.point)} into new PVC "
        f"{printable(result.namespace)}/{printable(result.pvc)} ({result.mode} mode, "
        f"{printable(result.size)}) by Job {printable(result.job)} in {result.seconds:.1f}s; "
        "the Job is deleted, the PVC stays"
    )
    return 0
