"""lamina's custom resources, defined once: BackupSchedule, Backup and Restore.

Group ``lamina.dev`` (not under ``k8s.io``, which needs the API-approval annotation),
version ``v1alpha1`` (docs/controller.md). Each kind is a ``CustomResourceDefinition`` of
``apiextensions.k8s.io/v1`` with a structural OpenAPI v3 schema, the status subresource,
printer columns and short names. ``deploy/crds.yaml`` is generated from this module
(``make manifests`` or ``python -m lamina.backend.kube.crds deploy/crds.yaml``) and a test
regenerates it and compares.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GROUP = "lamina.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "lamina"

Schema = dict[str, Any]

#: What the controller may set as a Backup's phase, in order.
BACKUP_PHASES = ("Pending", "Snapshotting", "Transferring", "Succeeded", "Failed")
BACKUP_TERMINAL = ("Succeeded", "Failed")
BACKUP_MODES = ("cbt", "scan", "full")
MAX_DATAMOVER_RUNS = 3  # a Backup whose data-mover Job vanished runs again, this often in all
RESTORE_PHASES = ("Pending", "Restoring", "Succeeded", "Failed")
RESTORE_MODES = ("block", "filesystem")

# The interval syntax of `lamina schedule add --every` (30s, 5m, 1h30m, 2d, 1w).
EVERY_PATTERN = r"^([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$|^[0-9]+$"
# DNS-1123 subdomain (object names) and label (namespaces, PVCs in labels).
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _string(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _name(description: str) -> Schema:
    return _string(description, minLength=1, maxLength=253, pattern=NAME_PATTERN)


def _count(description: str, minimum: int = 0, maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer", "description": description, "minimum": minimum}
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def _object(
    description: str, properties: dict[str, Schema], required: tuple[str, ...] = ()
) -> Schema:
    schema: Schema = {"type": "object", "description": description, "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def _repository() -> Schema:
    return _object(
        "Where points are stored, and the Secret with its credentials.",
        {
            "url": _string(
                "Repository URL, s3://BUCKET/PREFIX or a path the data mover sees.",
                minLength=1,
                maxLength=2048,
            ),
            "secretRef": _object(
                "A Secret of this namespace: key 'password' (an encrypted repository) and "
                "any environment for the data mover, e.g. AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL.",
                {"name": _name("The Secret's name.")},
                ("name",),
            ),
        },
        ("url",),
    )


def _retention() -> Schema:
    keep = {
        f"keep{unit}": _count(f"Points kept: the newest {what}.")
        for unit, what in (
            ("Last", "N"),
            ("Hourly", "of each of the last N hours"),
            ("Daily", "of each of the last N days"),
            ("Weekly", "of each of the last N weeks"),
            ("Monthly", "of each of the last N months"),
            ("Yearly", "of each of the last N years"),
        )
    }
    keep["keepWithin"] = _string(
        "Points newer than this duration are kept (lamina forget --keep-within: 7d, 12h).",
        maxLength=32,
    )
    return _object(
        "Forget after each successful backup, with lamina forget's meaning. None: keep all.",
        keep,
    )


def _conditions() -> Schema:
    return {
        "type": "array",
        "description": "The latest observations of the object's state.",
        "items": _object(
            "One condition.",
            {
                "type": _string("Ready, Scheduled, Snapshotted, Transferred, Retained, ..."),
                "status": _string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
                "reason": _string("One CamelCase word for machines."),
                "message": _string("One line for people."),
                "lastTransitionTime": _string("When status last changed.", format="date-time"),
                "observedGeneration": _count("The generation this was set for."),
            },
            ("type", "status"),
        ),
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    }


def _schedule_schema() -> Schema:
    selector = _object(
        "Which PVCs are backed up. Empty lists select everything of that kind; at least the "
        "schedule's own namespace is searched.",
        {
            "namespaces": {
                "type": "array",
                "description": "Namespaces to look in (default: the schedule's own).",
                "items": _string("A namespace.", pattern=LABEL_PATTERN, maxLength=63),
            },
            "names": {
                "type": "array",
                "description": "PVC names (default: every PVC matching the labels).",
                "items": _name("A PVC name."),
            },
            "matchLabels": {
                "type": "object",
                "description": "Labels every selected PVC carries.",
                "additionalProperties": {"type": "string"},
            },
        },
    )
    spec = _object(
        "What to back up, when, to where, kept how long.",
        {
            "selector": selector,
            "cron": _string(
                "Five-field cron expression in UTC, e.g. '0 */4 * * *'. Exactly one of cron "
                "and every.",
                minLength=1,
                maxLength=128,
            ),
            "every": _string(
                "Interval: 30s, 5m, 1h, 1h30m, 2d, 1w. Exactly one of cron and every.",
                minLength=1,
                maxLength=32,
                pattern=EVERY_PATTERN,
            ),
            "repository": _repository(),
            "retention": _retention(),
            "concurrency": _count(
                "Backups of this schedule's namespace that may run at once (default: the "
                "controller's --concurrency, 2).",
                minimum=1,
                maximum=64,
            ),
            "snapshotClass": _name("VolumeSnapshotClass (default: the driver's default one)."),
            "suspend": {"type": "boolean", "description": "True: no new slots are started."},
        },
        ("selector", "repository"),
    )
    spec["oneOf"] = [{"required": ["cron"]}, {"required": ["every"]}]
    status = _object(
        "What the controller last did.",
        {
            "observedGeneration": _count("The generation the status is about."),
            "lastSlot": _string("The last slot a Backup was made for.", format="date-time"),
            "nextSlot": _string("The next slot.", format="date-time"),
            "lastBackup": _string("Name of the newest Backup of this schedule."),
            "conditions": _conditions(),
        },
    )
    return _object(
        "A policy: these PVCs, this often, kept this long.",
        {"spec": spec, "status": status},
        ("spec",),
    )


def _backup_schema() -> Schema:
    spec = _object(
        "One backup of one PVC.",
        {
            "source": _object(
                "The PVC (block mode) to back up.",
                {
                    "namespace": _string(
                        "Its namespace (default: the Backup's own).",
                        pattern=LABEL_PATTERN,
                        maxLength=63,
                    ),
                    "pvc": _name("The PVC's name."),
                },
                ("pvc",),
            ),
            "repository": _repository(),
            "retention": _retention(),
            "snapshotClass": _name("VolumeSnapshotClass (default: the driver's default one)."),
            "schedule": _name("The BackupSchedule that made this Backup, if any."),
            "slot": _string("The schedule slot this Backup is for.", format="date-time"),
        },
        ("source", "repository"),
    )
    status = _object(
        "Where the backup is.",
        {
            "phase": _string(
                "Pending, Snapshotting, Transferring, Succeeded or Failed.",
                enum=list(BACKUP_PHASES),
            ),
            "message": _string("One line on the last change."),
            "conditions": _conditions(),
            "snapshot": _string("The VolumeSnapshot taken."),
            "job": _string("The data-mover Job."),
            "volume": _string("lamina's name of the volume (CLUSTER/NAMESPACE/PVC)."),
            "pointId": _string("The point the backup wrote."),
            "bytes": _count("Bytes the point holds."),
            "requests": _count("Storage requests the backup made."),
            "attempts": _count("Times the controller retried after an error."),
            "mode": _string(
                "How the data mover chose what to read: cbt (the blocks changed since the base"
                " snapshot), scan (every block, stored where it differs from the parent point)"
                " or full (every allocated block, no parent).",
                enum=list(BACKUP_MODES),
            ),
            "base": _object(
                "The snapshot of the parent point that changed-block tracking compares with.",
                {
                    "snapshot": _string("Its VolumeSnapshot (in the PVC's namespace)."),
                    "handle": _string("Its CSI snapshot handle."),
                    "pointId": _string("The point made from it: the new point's parent."),
                },
            ),
            "bytesRead": _count("Bytes the data mover read from the snapshot."),
            "bytesStored": _count("Bytes the backup added to the repository (after compression)."),
            "runs": _count(
                "Data-mover runs so far: a Job deleted before it made a point runs again,"
                f" at most {MAX_DATAMOVER_RUNS} times."
            ),
            "startTime": _string(
                "When it left Pending: its snapshot was requested.", format="date-time"
            ),
            "completionTime": _string("When it reached Succeeded or Failed.", format="date-time"),
        },
    )
    return _object(
        "One run, made by a schedule or by hand.", {"spec": spec, "status": status}, ("spec",)
    )


def _restore_schema() -> Schema:
    spec = _object(
        "A point restored into a new PVC by a restore data-mover Job.",
        {
            "point": _string(
                "Point id or unique prefix.", minLength=4, maxLength=64, pattern="^[0-9a-f]+$"
            ),
            "repository": _repository(),
            "target": _object(
                "The new PVC; it must not exist yet.",
                {
                    "pvc": _name("Name of the new PVC."),
                    "storageClass": _name("StorageClass of the new PVC."),
                    "size": _string(
                        "Size request (default: the point's volume size).", maxLength=32
                    ),
                },
                ("pvc",),
            ),
            "mode": _string(
                "block: the PVC is a raw block volume; filesystem: a Filesystem-mode PVC.",
                enum=list(RESTORE_MODES),
                default="block",
            ),
        },
        ("point", "repository", "target"),
    )
    status = _object(
        "Where the restore is.",
        {
            "phase": _string("Pending, Restoring, Succeeded or Failed.", enum=list(RESTORE_PHASES)),
            "message": _string("One line on the last change."),
            "conditions": _conditions(),
            "job": _string("The restore data-mover Job."),
            "bytes": _count("Bytes restored."),
            "startTime": _string("When the controller took it up.", format="date-time"),
            "completionTime": _string("When it reached Succeeded or Failed.", format="date-time"),
        },
    )
    return _object("A point restored into a new PVC.", {"spec": spec, "status": status}, ("spec",))


@dataclass(frozen=True)
class Kind:
    """One custom resource kind and what `kubectl get` shows of it."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    schema: Schema
    columns: tuple[tuple[str, str, str], ...]  # (name, type, jsonPath)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


_AGE = ("Age", "date", ".metadata.creationTimestamp")

BACKUP_SCHEDULE = Kind(
    "BackupSchedule",
    "backupschedules",
    ("lbs", "bsched"),
    _schedule_schema(),
    (
        ("Cron", "string", ".spec.cron"),
        ("Every", "string", ".spec.every"),
        ("Repository", "string", ".spec.repository.url"),
        ("Suspend", "boolean", ".spec.suspend"),
        ("Last", "date", ".status.lastSlot"),
        ("Next", "date", ".status.nextSlot"),
        _AGE,
    ),
)
BACKUP = Kind(
    "Backup",
    "backups",
    ("lbk", "lbackup"),
    _backup_schema(),
    (
        ("Phase", "string", ".status.phase"),
        ("PVC", "string", ".spec.source.pvc"),
        ("Schedule", "string", ".spec.schedule"),
        ("Point", "string", ".status.pointId"),
        ("Mode", "string", ".status.mode"),
        ("Bytes", "integer", ".status.bytes"),
        ("Message", "string", ".status.message"),
        _AGE,
    ),
)
RESTORE = Kind(
    "Restore",
    "restores",
    ("lrs", "lrestore"),
    _restore_schema(),
    (
        ("Phase", "string", ".status.phase"),
        ("Point", "string", ".spec.point"),
        ("Target", "string", ".spec.target.pvc"),
        ("Mode", "string", ".spec.mode"),
        ("Message", "string", ".status.message"),
        _AGE,
    ),
)
KINDS = (BACKUP_SCHEDULE, BACKUP, RESTORE)


def crd_manifest(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind (apiextensions.k8s.io/v1)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {"app.kubernetes.io/name": "lamina", "app.kubernetes.io/part-of": "lamina"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": kind.schema},
                    "additionalPrinterColumns": [
                        {"name": name, "type": kind_of, "jsonPath": path}
                        for name, kind_of, path in kind.columns
                    ],
                }
            ],
        },
    }


def crd_manifests() -> list[dict[str, Any]]:
    return [crd_manifest(kind) for kind in KINDS]


HEADER = (
    "# Generated by `python -m lamina.backend.kube.crds` from backend/kube/crds.py: edit that,\n"
    "# then run `make manifests`. lamina's custom resources (docs/controller.md).\n"
)


def crds_yaml() -> str:
    from .datamover import dump_yaml

    return dump_yaml(crd_manifests(), HEADER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write lamina's CustomResourceDefinitions.")
    parser.add_argument("output", type=Path, help="the YAML file to write (deploy/crds.yaml)")
    args = parser.parse_args(argv)
    # written beside the target and renamed: a failed run leaves the old file whole
    partial = args.output.with_name(args.output.name + ".lamina-partial")
    partial.write_text(crds_yaml())
    os.replace(partial, args.output)
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
