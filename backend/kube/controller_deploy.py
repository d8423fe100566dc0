"""The cluster controller's manifests: ServiceAccount, least-privilege RBAC and a Deployment of
two replicas that elect a leader on a Lease (docs/controller.md).

``deploy/controller.yaml`` is generated from here (``make manifests``); a test compares it,
and another runs the controller with exactly these rights on the real API server and checks
the audit log against them. The rules list what the controller's code sends, and no more.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .crds import GROUP
from .objects import CBT_GROUP, CBT_PLURAL, SNAPSHOT_GROUP

Manifest = dict[str, Any]

NAMESPACE = "lamina-system"
NAME = "lamina-controller"
IMAGE = "lamina:latest"
METRICS_PORT = 9090
LABELS = {"app.kubernetes.io/name": "lamina", "app.kubernetes.io/component": "controller"}


def cluster_rules() -> list[Manifest]:
    """What the controller does across namespaces (watches, the data mover's objects)."""
    return [
        {
            "apiGroups": [GROUP],
            "resources": ["backupschedules", "restores"],
            "verbs": ["get", "list", "watch"],
        },
        # a schedule makes its slots' Backups
        {
            "apiGroups": [GROUP],
            "resources": ["backups"],
            "verbs": ["get", "list", "watch", "create"],
        },
        {
            "apiGroups": [GROUP],
            "resources": ["backupschedules/status", "backups/status", "restores/status"],
            "verbs": ["patch"],
        },
        # a Backup's snapshot, the next one's CBT base, deleted once a newer point replaces it
        {
            "apiGroups": [SNAPSHOT_GROUP],
            "resources": ["volumesnapshots"],
            "verbs": ["get", "list", "watch", "create", "delete"],
        },
        # the driver's changed-block-tracking service, for the data mover's CBT
        {"apiGroups": [CBT_GROUP], "resources": [CBT_PLURAL], "verbs": ["get"]},
        {"apiGroups": [SNAPSHOT_GROUP], "resources": ["volumesnapshotcontents"], "verbs": ["get"]},
        {"apiGroups": [SNAPSHOT_GROUP], "resources": ["volumesnapshotclasses"], "verbs": ["list"]},
        # the PVCs it backs up (selected, checked) and the data mover's PVC from the snapshot
        {
            "apiGroups": [""],
            "resources": ["persistentvolumeclaims"],
            "verbs": ["get", "list", "create", "delete"],
        },
        {"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get"]},
        # the repository's password and the data mover's environment
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        # a hung data mover is deleted after --job-timeout
        {
            "apiGroups": ["batch"],
            "resources": ["jobs"],
            "verbs": ["get", "list", "watch", "create", "delete"],
        },
    ]


#: Granted for paths the least-privilege test does not take: the driver of a PV that names no
#: CSI driver is its StorageClass's provisioner; the Pods of a data-mover Job that someone
#: deleted are listed before it runs again.
RARELY_USED = (("get", "storage.k8s.io", "storageclasses"), ("list", "", "pods"))


def lease_rules() -> list[Manifest]:
    return [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "update"],
        }
    ]


def controller_manifests(
    namespace: str = NAMESPACE, *, image: str = IMAGE, replicas: int = 2
) -> list[Manifest]:
    """ServiceAccount, ClusterRole + binding, Role + binding (the Lease), Deployment."""
    subject = [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}]
    rules = cluster_rules() + [
        {"apiGroups": [group], "resources": [resource], "verbs": [verb]}
        for verb, group, resource in RARELY_USED
    ]
    binding_name = f"{NAME}-{namespace}"
    command = [
        "lamina", "controller", "--in-cluster",
        "--lease-namespace", namespace, "--lease-name", NAME,
        "--metrics-listen", f"0.0.0.0:{METRICS_PORT}",
    ]  # fmt: skip
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": NAME, "namespace": namespace, "labels": LABELS},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": NAME, "labels": LABELS},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": binding_name, "labels": LABELS},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": NAME,
            },
            "subjects": subject,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": NAME, "namespace": namespace, "labels": LABELS},
            "rules": lease_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": NAME, "namespace": namespace, "labels": LABELS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            "subjects": subject,
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": namespace, "labels": LABELS},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": LABELS},
                "template": {
                    "metadata": {"labels": LABELS},
                    "spec": {
                        "serviceAccountName": NAME,
                        "containers": [
                            {
                                "name": "controller",
                                "image": image,
                                "command": command[:1],
                                "args": command[1:],
                                # a shared history: PostgreSQL, from a Secret (docs/catalog.md)
                                "env": [
                                    {
                                        "name": "LAMINA_CATALOG",
                                        "valueFrom": {
                                            "secretKeyRef": {
                                                "name": "lamina-catalog",
                                                "key": "url",
                                                "optional": True,
                                            }
                                        },
                                    },
                                    {"name": "HOME", "value": "/tmp"},
                                ],
                                "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
                                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                                "securityContext": {
                                    "runAsNonRoot": True,
                                    "runAsUser": 65532,
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                            }
                        ],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                    },
                },
            },
        },
    ]


HEADER = (
    "# Generated by `python -m lamina.backend.kube.controller_deploy` from\n"
    "# backend/kube/controller_deploy.py: edit that, then run `make manifests`.\n"
    "# The cluster controller (docs/controller.md); apply deploy/crds.yaml first.\n"
)


def controller_yaml() -> str:
    from .datamover import dump_yaml

    return dump_yaml(controller_manifests(), HEADER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the cluster controller's manifests.")
    parser.add_argument("output", type=Path, help="the YAML file to write (deploy/controller.yaml)")
    args = parser.parse_args(argv)
    partial = args.output.with_name(args.output.name + ".lamina-partial")
    partial.write_text(controller_yaml())
    os.replace(partial, args.output)
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
