"""A FAKE Kubernetes API server for tests. It is a test double, not Kubernetes.

A real API server does run in the tests (kube_cluster.py: kube-apiserver v1.20.2,
controller-manager and etcd on loopback, ~8 s to start, one per run), and the tests of
test_kube_real_*.py use it. This small, strict imitation stays for the fast tests and for
what the real one cannot be made to do on demand (a snapshot that never becomes ready, a
silent server, forbidden requests for the admin); it is spoken to over real HTTP on 127.0.0.1
through the real `kubernetes` Python client and a real kubeconfig file. Where it and the real
server disagree, it is wrong. What it imitates, it imitates the way
a real API server answers:

- complete objects: apiVersion, kind, metadata with uid, resourceVersion, creationTimestamp,
  generation and namespace; lists with their List kind and a list resourceVersion;
- errors as `Status` objects with the real reasons and codes: 400 BadRequest, 401
  Unauthorized (bearer token checked), 403 Forbidden (with the real message wording),
  404 NotFound, 405 MethodNotAllowed, 409 AlreadyExists, 422 Invalid (with causes);
- `GET /version/` with every field of version.Info;
- RBAC: `forbid(verb, resource, namespace)` denies requests, and SubjectAccessReview answers
  by the same rules; TokenRequest issues JWT-shaped, audience-scoped tokens and TokenReview
  checks them;
- controllers in a thread: the snapshot controller makes a VolumeSnapshotContent with a
  handle and restoreSize and marks the VolumeSnapshot ready after a delay (or never, or with
  an error); a provisioner binds PVCs whose StorageClass exists (PVCs from a snapshot only
  once it is ready); a Job controller completes (or fails) Jobs once their PVCs are bound.

What it does not do: watches, PATCH/PUT, label or field selectors, pagination, admission
webhooks, pods and real workloads. Requests for anything it does not serve get the 404 a real
server gives for an unknown resource.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import ipaddress
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

Obj = dict[str, Any]

SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
CBT_GROUP = "cbt.storage.k8s.io"
DEFAULT_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
DEFAULT_SNAPSHOT_CLASS_ANNOTATION = "snapshot.storage.kubernetes.io/is-default-class"
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

VERSION_INFO = {
    "major": "1",
    "minor": "34",
    "emulationMajor": "1",
    "emulationMinor": "34",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "33",
    "gitVersion": "v1.34.0+fake",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    builtin: bool = True  # built-in list items carry no apiVersion/kind; custom ones do
    verbs: tuple[str, ...] = ("get", "list", "create", "delete")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCE_TYPES = [
    ResourceType("", "v1", "namespaces", "Namespace", False),
    ResourceType("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True),
    ResourceType("", "v1", "persistentvolumes", "PersistentVolume", False),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True),
    ResourceType("storage.k8s.io", "v1", "storageclasses", "StorageClass", False),
    ResourceType("batch", "v1", "jobs", "Job", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    ResourceType(
        "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False
    ),
    ResourceType(
        "authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False, verbs=("create",)
    ),
    ResourceType(
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "SubjectAccessReview",
        False,
        verbs=("create",),
    ),
    ResourceType(SNAPSHOT_GROUP, "v1", "volumesnapshots", "VolumeSnapshot", True, builtin=False),
    ResourceType(
        SNAPSHOT_GROUP,
        "v1",
        "volumesnapshotcontents",
        "VolumeSnapshotContent",
        False,
        builtin=False,
    ),
    ResourceType(
        SNAPSHOT_GROUP, "v1", "volumesnapshotclasses", "VolumeSnapshotClass", False, builtin=False
    ),
    ResourceType(
        CBT_GROUP,
        "v1beta1",
        "snapshotmetadataservices",
        "SnapshotMetadataService",
        False,
        builtin=False,
    ),
]


class ApiError(Exception):
    """An error answer: the HTTP code and the Status object that goes with it."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def not_found(rt: ResourceType, name: str) -> ApiError:
    details: Obj = {"name": name, "kind": rt.plural}
    if rt.group:
        details["group"] = rt.group
    qualified = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found', details)


def invalid(rt: ResourceType, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid; causes are (field, reason, message)."""
    text = ", ".join(f"{f}: {m}" for f, _, m in causes)
    details: Obj = {
        "name": name,
        "kind": rt.kind,
        "causes": [{"reason": r, "message": m, "field": f} for f, r, m in causes],
    }
    if rt.group:
        details["group"] = rt.group
    return ApiError(422, "Invalid", f'{rt.kind} "{name}" is invalid: {text}', details)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_quantity(text: str) -> int:
    """Bytes of a Kubernetes quantity such as 1Gi, 500M or 1048576."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTPE]i|[kMGTPE])?", str(text).strip())
    if not match:
        raise ValueError(f"quantities must match the regular expression: {text!r}")
    factors = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
    factors.update({s + "i": 1024 ** (i + 1) for i, s in enumerate("KMGTPE")})
    return int(float(match.group(1)) * factors[match.group(2) or ""])


def canonical_quantity(text: str) -> str:
    """A whole quantity as the API server stores it: the largest suffix of its kind (binary
    Ki, Mi, ... or decimal k, M, ...) that keeps it whole ("1024Ki" -> "1Mi", "1536Ki" stays,
    "2000000" -> "2M"). Fractions are kept as given."""
    match = re.fullmatch(r"(\d+)([KMGTPE]i|[kMGTPE])?", str(text).strip())
    if not match:
        return str(text)
    value = parse_quantity(text)
    binary = (match.group(2) or "").endswith("i")
    base = 1024 if binary else 1000
    suffixes = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"] if binary else ["k", "M", "G", "T", "P", "E"]
    suffix = ""
    for candidate in suffixes:
        if value == 0 or value % base:
            break
        value //= base
        suffix = candidate
    return f"{value}{suffix}"


@dataclass
class ForbidRule:
    verb: str
    resource: str  # plural, or plural/subresource; "*" for any
    namespace: str | None = None  # None: every namespace and the cluster scope
    user: str | None = None  # None: every user

    def matches(self, verb: str, resource: str, namespace: str | None, user: str) -> bool:
        return (
            self.verb in ("*", verb)
            and self.resource in ("*", resource)
            and (self.namespace is None or self.namespace == namespace)
            and (self.user is None or self.user == user)
        )


@dataclass
class IssuedToken:
    namespace: str
    service_account: str
    audiences: list[str]
    expires: float


@dataclass
class FakeKube:
    """The fake API server's state and its knobs. Start it with `run_fake_kube()`."""

    token: str = "fake-admin-token"
    user: str = "kubernetes-admin"
    snapshot_ready_delay: float = 0.2
    snapshot_mode: str = "ready"  # "ready", "stuck" (never ready) or "fail"
    snapshot_error: str = "Failed to create snapshot: storage backend refused"
    job_delay: float = 0.2
    job_outcome: str = "succeed"  # or "fail"
    serve_cbt_crd: bool = True  # False: the SnapshotMetadataService CRD is not installed
    port: int = 0
    ca_pem: bytes | None = None  # set when serving TLS
    forbidden: list[ForbidRule] = field(default_factory=list)
    issued_tokens: dict[str, IssuedToken] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    _store: dict[str, dict[tuple[str, str], Obj]] = field(default_factory=dict)
    _created_at: dict[str, float] = field(default_factory=dict)  # uid -> monotonic time
    _resource_version: int = 1000
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _signing_key: bytes = field(default_factory=lambda: uuid.uuid4().bytes)

    # ----- knobs and seeding -------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_pem else 'http'}://127.0.0.1:{self.port}"

    def forbid(
        self, verb: str, resource: str, namespace: str | None = None, user: str | None = None
    ) -> None:
        """Deny `verb` on `resource` (e.g. "persistentvolumeclaims", "serviceaccounts/token")."""
        with self._lock:
            self.forbidden.append(ForbidRule(verb, resource, namespace, user))

    def allow_all(self) -> None:
        with self._lock:
            self.forbidden.clear()

    def kubeconfig(self, context: str = "fake", namespace: str | None = None) -> Obj:
        ctx: Obj = {"cluster": f"{context}-cluster", "user": f"{context}-user"}
        cluster: Obj = {"server": self.url}
        if self.ca_pem:
            cluster["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode()
        if namespace:
            ctx["namespace"] = namespace
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": f"{context}-cluster", "cluster": cluster}],
            "users": [{"name": f"{context}-user", "user": {"token": self.token}}],
            "contexts": [{"name": context, "context": ctx}],
            "current-context": context,
        }

    def write_kubeconfig(
        self, path: Path, context: str = "fake", namespace: str | None = None
    ) -> Path:
        path.write_text(yaml.safe_dump(self.kubeconfig(context, namespace), sort_keys=False))
        return path

    def type_of(self, plural: str) -> ResourceType:
        for rt in RESOURCE_TYPES:
            if rt.plural == plural:
                return rt
        raise KeyError(plural)

    def objects(self, plural: str, namespace: str | None = None) -> list[Obj]:
        """Copies of the stored objects of one type (for test assertions)."""
        with self._lock:
            bucket = self._store.get(plural, {})
            return [
                copy.deepcopy(o)
                for (ns, _), o in sorted(bucket.items())
                if namespace is None or ns == namespace
            ]

    def get(self, plural: str, name: str, namespace: str = "") -> Obj | None:
        with self._lock:
            found = self._store.get(plural, {}).get((namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def seed(self, body: Obj) -> Obj:
        """Store an object as if created through the API (no RBAC), filling in what the
        server fills in."""
        kind = body["kind"]
        rt = next(rt for rt in RESOURCE_TYPES if rt.kind == kind)
        namespace = body.get("metadata", {}).get("namespace", "default") if rt.namespaced else ""
        with self._lock:
            return self._create(rt, namespace, copy.deepcopy(body))

    def add_namespace(self, name: str) -> Obj:
        return self.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def add_storage_class(self, name: str, provisioner: str, *, default: bool = False) -> Obj:
        annotations = {DEFAULT_CLASS_ANNOTATION: "true"} if default else {}
        return self.seed(
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": name, "annotations": annotations},
                "provisioner": provisioner,
                "reclaimPolicy": "Delete",
                "volumeBindingMode": "Immediate",
                "allowVolumeExpansion": True,
            }
        )

    def add_snapshot_class(
        self, name: str, driver: str, *, default: bool = False, deletion_policy: str = "Delete"
    ) -> Obj:
        annotations = {DEFAULT_SNAPSHOT_CLASS_ANNOTATION: "true"} if default else {}
        return self.seed(
            {
                "apiVersion": f"{SNAPSHOT_GROUP}/v1",
                "kind": "VolumeSnapshotClass",
                "metadata": {"name": name, "annotations": annotations},
                "driver": driver,
                "deletionPolicy": deletion_policy,
            }
        )

    def add_snapshot_metadata_service(
        self, driver: str, address: str, ca_pem: bytes, audience: str
    ) -> Obj:
        return self.seed(
            {
                "apiVersion": f"{CBT_GROUP}/v1beta1",
                "kind": "SnapshotMetadataService",
                "metadata": {"name": driver},
                "spec": {
                    "address": address,
                    "caCert": base64.b64encode(ca_pem).decode(),
                    "audience": audience,
                },
            }
        )

    def add_service_account(self, namespace: str, name: str) -> Obj:
        return self.seed(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": namespace},
            }
        )

    def add_pvc(
        self,
        namespace: str,
        name: str,
        *,
        size: str = "1Gi",
        mode: str = "Block",
        storage_class: str | None = None,
    ) -> Obj:
        """A PVC; the provisioner binds it at once if its StorageClass exists."""
        spec: Obj = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}},
            "volumeMode": mode,
        }
        if storage_class is not None:
            spec["storageClassName"] = storage_class
        self.seed(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            }
        )
        self.reconcile()
        return self.get("persistentvolumeclaims", name, namespace) or {}

    # ----- storage ---------------------------------------------------------------------------

    def _next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _bucket(self, rt: ResourceType) -> dict[tuple[str, str], Obj]:
        return self._store.setdefault(rt.plural, {})

    def _create(self, rt: ResourceType, namespace: str, body: Obj) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        if (
            body.get("apiVersion", rt.api_version) != rt.api_version
            or body.get("kind", rt.kind) != rt.kind
        ):
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({body.get('apiVersion')}) does not match the expected "
                f"API version ({rt.api_version})"
                if body.get("apiVersion", rt.api_version) != rt.api_version
                else f"the kind in the data ({body.get('kind')}) does not match the expected kind ({rt.kind})",
            )
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        if not name:
            raise invalid(
                rt,
                "",
                [
                    (
                        "metadata.name",
                        "FieldValueRequired",
                        "Required value: name or generateName is required",
                    )
                ],
            )
        if len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
            raise invalid(
                rt,
                name,
                [
                    (
                        "metadata.name",
                        "FieldValueInvalid",
                        f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
                        "case alphanumeric characters, '-' or '.', and must start and end with an "
                        "alphanumeric character",
                    )
                ],
            )
        if rt.namespaced:
            if meta.get("namespace", namespace) != namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            if (("", namespace)) not in self._bucket(self.type_of("namespaces")):
                raise not_found(self.type_of("namespaces"), namespace)
        else:
            meta.pop("namespace", None)
        if (namespace, name) in self._bucket(rt):
            details: Obj = {"name": name, "kind": rt.plural}
            if rt.group:
                details["group"] = rt.group
            qualified = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
            raise ApiError(409, "AlreadyExists", f'{qualified} "{name}" already exists', details)
        self._validate(rt, name, body)
        uid = str(uuid.uuid4())
        body["apiVersion"] = rt.api_version
        body["kind"] = rt.kind
        meta.update(
            {
                "name": name,
                "uid": uid,
                "resourceVersion": self._next_version(),
                "creationTimestamp": now_rfc3339(),
                "generation": 1,
            }
        )
        if rt.namespaced:
            meta["namespace"] = namespace
        self._apply_defaults(rt, body)
        self._bucket(rt)[(namespace, name)] = body
        self._created_at[uid] = time.monotonic()
        return copy.deepcopy(body)

    def _validate(self, rt: ResourceType, name: str, body: Obj) -> None:
        causes: list[tuple[str, str, str]] = []
        spec = body.get("spec") or {}
        if rt.kind == "PersistentVolumeClaim":
            if not spec.get("accessModes"):
                causes.append(("spec.accessModes", "FieldValueRequired", "Required value"))
            storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
            if storage is None:
                causes.append(("spec.resources[storage]", "FieldValueRequired", "Required value"))
            else:
                try:
                    parse_quantity(storage)
                except ValueError as e:
                    causes.append(("spec.resources[storage]", "FieldValueInvalid", str(e)))
            mode = spec.get("volumeMode", "Filesystem")
            if mode not in ("Block", "Filesystem"):
                causes.append(
                    (
                        "spec.volumeMode",
                        "FieldValueNotSupported",
                        f'Unsupported value: "{mode}": supported values: "Block", "Filesystem"',
                    )
                )
        elif rt.kind == "VolumeSnapshot":
            source = spec.get("source") or {}
            if bool(source.get("persistentVolumeClaimName")) == bool(
                source.get("volumeSnapshotContentName")
            ):
                causes.append(
                    (
                        "spec.source",
                        "FieldValueInvalid",
                        "Invalid value: exactly one of persistentVolumeClaimName and volumeSnapshotContentName must be set",
                    )
                )
        elif rt.kind == "Job":
            pod = (spec.get("template") or {}).get("spec") or {}
            if not pod.get("containers"):
                causes.append(
                    ("spec.template.spec.containers", "FieldValueRequired", "Required value")
                )
            if pod.get("restartPolicy") not in ("Never", "OnFailure"):
                causes.append(
                    (
                        "spec.template.spec.restartPolicy",
                        "FieldValueNotSupported",
                        f'Unsupported value: "{pod.get("restartPolicy")}": supported values: "OnFailure", "Never"',
                    )
                )
        elif rt.kind in ("Role", "ClusterRole"):
            for i, rule in enumerate(body.get("rules") or []):
                if not rule.get("verbs"):
                    causes.append(
                        (
                            f"rules[{i}].verbs",
                            "FieldValueRequired",
                            "Required value: verbs must contain at least one value",
                        )
                    )
        elif rt.kind in ("RoleBinding", "ClusterRoleBinding") and not (
            body.get("roleRef") or {}
        ).get("name"):
            causes.append(("roleRef.name", "FieldValueRequired", "Required value"))
        if causes:
            raise invalid(rt, name, causes)

    def _apply_defaults(self, rt: ResourceType, body: Obj) -> None:
        if rt.kind == "Namespace":
            body["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = body[
                "metadata"
            ]["name"]
            body.setdefault("spec", {"finalizers": ["kubernetes"]})
            body["status"] = {"phase": "Active"}
        elif rt.kind == "PersistentVolumeClaim":
            requests = (body["spec"].get("resources") or {}).get("requests") or {}
            if "storage" in requests:  # a real server stores quantities canonical: 1024Ki is 1Mi
                requests["storage"] = canonical_quantity(requests["storage"])
            body["spec"].setdefault("volumeMode", "Filesystem")
            if "storageClassName" not in body["spec"]:
                default = self._default_storage_class()
                if default:
                    body["spec"]["storageClassName"] = default
            body["status"] = {"phase": "Pending"}
        elif rt.kind == "Job":
            spec = body["spec"]
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)
            uid = body["metadata"]["uid"]
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            labels = spec["template"].setdefault("metadata", {}).setdefault("labels", {})
            labels["batch.kubernetes.io/controller-uid"] = uid
            labels["batch.kubernetes.io/job-name"] = body["metadata"]["name"]
            body["status"] = {}
        elif rt.kind == "ServiceAccount":
            pass

    def _default_storage_class(self) -> str | None:
        for (_, name), sc in sorted(self._bucket(self.type_of("storageclasses")).items()):
            if (sc["metadata"].get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true":
                return name
        return None

    def _update(self, rt: ResourceType, obj: Obj) -> None:
        obj["metadata"]["resourceVersion"] = self._next_version()
        ns = obj["metadata"].get("namespace", "")
        self._bucket(rt)[(ns, obj["metadata"]["name"])] = obj

    def _delete(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self._bucket(rt).pop((namespace, name), None)
        if obj is None:
            raise not_found(rt, name)
        if rt.kind == "VolumeSnapshot":
            content = str((obj.get("status") or {}).get("boundVolumeSnapshotContentName") or "")
            vsc = self._bucket(self.type_of("volumesnapshotcontents")).get(("", content))
            if vsc is not None and vsc["spec"].get("deletionPolicy") == "Delete":
                del self._bucket(self.type_of("volumesnapshotcontents"))[("", content)]
        if rt.kind == "PersistentVolumeClaim":
            volume = str((obj.get("spec") or {}).get("volumeName") or "")
            pv = self._bucket(self.type_of("persistentvolumes")).get(("", volume))
            if pv is not None and pv["spec"].get("persistentVolumeReclaimPolicy") == "Delete":
                del self._bucket(self.type_of("persistentvolumes"))[("", volume)]
        obj["metadata"]["resourceVersion"] = self._next_version()
        obj["metadata"]["deletionTimestamp"] = now_rfc3339()
        return obj

    # ----- controllers ---------------------------------------------------------------------

    def _age(self, obj: Obj) -> float:
        return time.monotonic() - self._created_at.get(obj["metadata"]["uid"], time.monotonic())

    def reconcile(self) -> None:
        """One pass of every controller (the controller thread calls this every 50 ms)."""
        with self._lock:
            self._reconcile_snapshots()
            self._reconcile_claims()
            self._reconcile_jobs()

    def _reconcile_snapshots(self) -> None:
        vs_type = self.type_of("volumesnapshots")
        for (ns, name), vs in list(self._bucket(vs_type).items()):
            status = vs.setdefault("status", {})
            if status.get("readyToUse") or status.get("error"):
                continue
            if "readyToUse" not in status:
                status["readyToUse"] = False
                self._update(vs_type, vs)
            if self._age(vs) < self.snapshot_ready_delay or self.snapshot_mode == "stuck":
                continue
            error = self.snapshot_error if self.snapshot_mode == "fail" else None
            pvc_name = vs["spec"]["source"].get("persistentVolumeClaimName")
            pvc = self._bucket(self.type_of("persistentvolumeclaims")).get((ns, pvc_name or ""))
            pv = None
            if pvc is not None and pvc["status"].get("phase") == "Bound":
                pv = self._bucket(self.type_of("persistentvolumes")).get(
                    ("", pvc["spec"]["volumeName"])
                )
            if error is None and pv is None:
                error = f"Failed to get input parameters to create snapshot {name}: persistentvolumeclaim {pvc_name!r} is not bound"
            snapshot_class = None
            if error is None and pv is not None:
                driver = pv["spec"]["csi"]["driver"]
                snapshot_class = self._snapshot_class_for(
                    vs["spec"].get("volumeSnapshotClassName"), driver
                )
                if snapshot_class is None:
                    error = f"Failed to get snapshot class with error: no VolumeSnapshotClass for driver {driver}"
            if error is not None:
                status["error"] = {"message": error, "time": now_rfc3339()}
                self._update(vs_type, vs)
                continue
            assert pv is not None and snapshot_class is not None and pvc is not None
            size = parse_quantity(pvc["status"]["capacity"]["storage"])
            content_name = f"snapcontent-{vs['metadata']['uid']}"
            content = self._create(
                self.type_of("volumesnapshotcontents"),
                "",
                {
                    "metadata": {
                        "name": content_name,
                        "finalizers": [
                            "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"
                        ],
                    },
                    "spec": {
                        "deletionPolicy": snapshot_class["deletionPolicy"],
                        "driver": pv["spec"]["csi"]["driver"],
                        "source": {"volumeHandle": pv["spec"]["csi"]["volumeHandle"]},
                        "volumeSnapshotClassName": snapshot_class["metadata"]["name"],
                        "volumeSnapshotRef": {
                            "apiVersion": f"{SNAPSHOT_GROUP}/v1",
                            "kind": "VolumeSnapshot",
                            "name": name,
                            "namespace": ns,
                            "uid": vs["metadata"]["uid"],
                        },
                    },
                },
            )
            created_ns = time.time_ns()
            content["status"] = {
                "creationTime": created_ns,
                "readyToUse": True,
                "restoreSize": size,
                "snapshotHandle": f"snap-{uuid.uuid4()}",
            }
            self._update(self.type_of("volumesnapshotcontents"), content)
            vs["spec"]["volumeSnapshotClassName"] = snapshot_class["metadata"]["name"]
            vs["status"] = {
                "boundVolumeSnapshotContentName": content_name,
                "creationTime": now_rfc3339(),
                "readyToUse": True,
                "restoreSize": pvc["status"]["capacity"]["storage"],
            }
            self._update(vs_type, vs)

    def _snapshot_class_for(self, requested: str | None, driver: str) -> Obj | None:
        classes = self._bucket(self.type_of("volumesnapshotclasses"))
        if requested:
            found = classes.get(("", requested))
            return found if found is not None and found["driver"] == driver else None
        for _, vsc in sorted(classes.items()):
            annotations = vsc["metadata"].get("annotations") or {}
            if (
                vsc["driver"] == driver
                and annotations.get(DEFAULT_SNAPSHOT_CLASS_ANNOTATION) == "true"
            ):
                return vsc
        return None

    def _reconcile_claims(self) -> None:
        pvc_type = self.type_of("persistentvolumeclaims")
        for (ns, name), pvc in list(self._bucket(pvc_type).items()):
            if pvc["status"].get("phase") != "Pending":
                continue
            sc = self._bucket(self.type_of("storageclasses")).get(
                ("", pvc["spec"].get("storageClassName") or "")
            )
            if sc is None:
                continue
            size = pvc["spec"]["resources"]["requests"]["storage"]
            source = pvc["spec"].get("dataSource") or pvc["spec"].get("dataSourceRef")
            if source and source.get("kind") == "VolumeSnapshot":
                vs = self._bucket(self.type_of("volumesnapshots")).get((ns, source.get("name", "")))
                if vs is None or not (vs.get("status") or {}).get("readyToUse"):
                    continue
                if parse_quantity(size) < parse_quantity(vs["status"]["restoreSize"]):
                    continue  # a real provisioner refuses a claim smaller than the snapshot
            pv_name = f"pvc-{pvc['metadata']['uid']}"
            self._create(
                self.type_of("persistentvolumes"),
                "",
                {
                    "metadata": {
                        "name": pv_name,
                        "annotations": {"pv.kubernetes.io/provisioned-by": sc["provisioner"]},
                    },
                    "spec": {
                        "accessModes": pvc["spec"]["accessModes"],
                        "capacity": {"storage": size},
                        "claimRef": {
                            "apiVersion": "v1",
                            "kind": "PersistentVolumeClaim",
                            "name": name,
                            "namespace": ns,
                            "uid": pvc["metadata"]["uid"],
                        },
                        "csi": {"driver": sc["provisioner"], "volumeHandle": f"vol-{uuid.uuid4()}"},
                        "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy", "Delete"),
                        "storageClassName": sc["metadata"]["name"],
                        "volumeMode": pvc["spec"]["volumeMode"],
                    },
                },
            )
            pv = self._bucket(self.type_of("persistentvolumes"))[("", pv_name)]
            pv["status"] = {"phase": "Bound"}
            pvc["spec"]["volumeName"] = pv_name
            pvc["status"] = {
                "phase": "Bound",
                "accessModes": pvc["spec"]["accessModes"],
                "capacity": {"storage": size},
            }
            self._update(pvc_type, pvc)

    def _reconcile_jobs(self) -> None:
        job_type = self.type_of("jobs")
        for (ns, _), job in list(self._bucket(job_type).items()):
            status = job["status"]
            if status.get("completionTime") or status.get("failed"):
                continue
            pod = job["spec"]["template"]["spec"]
            claims = [
                v["persistentVolumeClaim"]["claimName"]
                for v in pod.get("volumes", [])
                if "persistentVolumeClaim" in v
            ]
            pvcs = self._bucket(self.type_of("persistentvolumeclaims"))
            if not all(
                (pvcs.get((ns, c)) or {}).get("status", {}).get("phase") == "Bound" for c in claims
            ):
                continue  # the pod cannot start before its volumes exist
            stamp = now_rfc3339()
            if not status.get("startTime"):
                job["status"] = {"startTime": stamp, "active": 1, "ready": 0, "terminating": 0}
                self._created_at[job["metadata"]["uid"]] = time.monotonic()
                self._update(job_type, job)
                continue
            if self._age(job) < self.job_delay:
                continue
            if self.job_outcome == "succeed":
                job["status"] = {
                    "startTime": status["startTime"],
                    "completionTime": stamp,
                    "succeeded": 1,
                    "ready": 0,
                    "terminating": 0,
                    "conditions": [
                        {
                            "type": "SuccessCriteriaMet",
                            "status": "True",
                            "lastProbeTime": stamp,
                            "lastTransitionTime": stamp,
                        },
                        {
                            "type": "Complete",
                            "status": "True",
                            "lastProbeTime": stamp,
                            "lastTransitionTime": stamp,
                        },
                    ],
                }
            else:
                job["status"] = {
                    "startTime": status["startTime"],
                    "failed": 1,
                    "ready": 0,
                    "terminating": 0,
                    "conditions": [
                        {
                            "type": "FailureTarget",
                            "status": "True",
                            "reason": "BackoffLimitExceeded",
                            "message": "Job has reached the specified backoff limit",
                            "lastProbeTime": stamp,
                            "lastTransitionTime": stamp,
                        },
                        {
                            "type": "Failed",
                            "status": "True",
                            "reason": "BackoffLimitExceeded",
                            "message": "Job has reached the specified backoff limit",
                            "lastProbeTime": stamp,
                            "lastTransitionTime": stamp,
                        },
                    ],
                }
            self._update(job_type, job)

    # ----- tokens ----------------------------------------------------------------------------

    def _issue_token(
        self, namespace: str, service_account: str, audiences: list[str], seconds: int
    ) -> tuple[str, float]:
        expires = time.time() + seconds

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {
            "aud": audiences,
            "exp": int(expires),
            "iat": int(time.time()),
            "iss": DEFAULT_AUDIENCE,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "jti": str(uuid.uuid4()),
        }
        payload = b64(json.dumps(claims).encode())
        signature = b64(
            hmac.new(self._signing_key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        )
        token = f"{header}.{payload}.{signature}"
        self.issued_tokens[token] = IssuedToken(namespace, service_account, audiences, expires)
        return token, expires

    def _token_request(self, namespace: str, name: str, body: Obj) -> Obj:
        sa_type = self.type_of("serviceaccounts")
        sa = self._bucket(sa_type).get((namespace, name))
        if sa is None:
            raise not_found(sa_type, name)
        if (
            body.get("kind", "TokenRequest") != "TokenRequest"
            or body.get("apiVersion", "authentication.k8s.io/v1") != "authentication.k8s.io/v1"
        ):
            raise ApiError(
                400,
                "BadRequest",
                "the body of the request must be an authentication.k8s.io/v1 TokenRequest",
            )
        spec = body.get("spec") or {}
        seconds = spec.get("expirationSeconds", 3600)
        token_rt = ResourceType(
            "authentication.k8s.io", "v1", "serviceaccounts/token", "TokenRequest", True
        )
        if not isinstance(seconds, int) or seconds < 600:
            raise invalid(
                token_rt,
                name,
                [
                    (
                        "spec.expirationSeconds",
                        "FieldValueInvalid",
                        f"Invalid value: {seconds}: may not specify a duration less than 10 minutes",
                    )
                ],
            )
        if seconds > 2**32:
            raise invalid(
                token_rt,
                name,
                [
                    (
                        "spec.expirationSeconds",
                        "FieldValueTooLong",
                        f"Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds",
                    )
                ],
            )
        audiences = list(spec.get("audiences") or [DEFAULT_AUDIENCE])
        token, expires = self._issue_token(namespace, name, audiences, seconds)
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": now_rfc3339()},
            "spec": {
                "audiences": audiences,
                "expirationSeconds": seconds,
                "boundObjectRef": spec.get("boundObjectRef"),
            },
            "status": {
                "token": token,
                "expirationTimestamp": datetime.fromtimestamp(expires, UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                ),
            },
        }

    def _token_review(self, body: Obj) -> Obj:
        spec = body.get("spec") or {}
        token = spec.get("token", "")
        wanted = list(spec.get("audiences") or [DEFAULT_AUDIENCE])
        issued = self.issued_tokens.get(token)
        status: Obj
        if issued is None or issued.expires < time.time():
            status = {"authenticated": False, "error": "invalid bearer token"}
        else:
            common = [a for a in wanted if a in issued.audiences]
            if not common:
                status = {
                    "authenticated": False,
                    "error": "token audiences do not match the requested audiences",
                }
            else:
                sa = self._bucket(self.type_of("serviceaccounts")).get(
                    (issued.namespace, issued.service_account)
                )
                status = {
                    "authenticated": True,
                    "audiences": common,
                    "user": {
                        "username": f"system:serviceaccount:{issued.namespace}:{issued.service_account}",
                        "uid": sa["metadata"]["uid"] if sa else "",
                        "groups": [
                            "system:serviceaccounts",
                            f"system:serviceaccounts:{issued.namespace}",
                            "system:authenticated",
                        ],
                    },
                }
        return {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }

    def _subject_access_review(self, body: Obj) -> Obj:
        spec = body.get("spec") or {}
        attrs = spec.get("resourceAttributes") or {}
        resource = attrs.get("resource", "")
        if attrs.get("subresource"):
            resource = f"{resource}/{attrs['subresource']}"
        denied = any(
            rule.matches(
                attrs.get("verb", ""),
                resource,
                attrs.get("namespace") or None,
                spec.get("user", ""),
            )
            for rule in self.forbidden
        )
        status: Obj = {"allowed": not denied}
        if denied:
            status["denied"] = True
            status["reason"] = "forbidden by the fake server's rules"
        return {
            "kind": "SubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }

    # ----- request handling ------------------------------------------------------------------

    def _check_rbac(
        self,
        verb: str,
        rt: ResourceType,
        resource: str,
        namespace: str | None,
        name: str | None,
        user: str,
    ) -> None:
        if not any(rule.matches(verb, resource, namespace, user) for rule in self.forbidden):
            return
        subject = f'{rt.plural} "{name}"' if name else rt.plural
        where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        details: Obj = {"kind": rt.plural}
        if name:
            details["name"] = name
        if rt.group:
            details["group"] = rt.group
        raise ApiError(
            403,
            "Forbidden",
            f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" '
            f'in API group "{rt.group}" {where}',
            details,
        )

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Obj]:
        path = urlsplit(raw_path).path
        with self._lock:
            self.requests.append((method, path))
        user = self.authenticate(headers.get("authorization", ""))
        if user is None:
            return 401, ApiError(401, "Unauthorized", "Unauthorized").status()
        if path.rstrip("/") == "/version":
            if method != "GET":
                return 405, ApiError(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                ).status()
            return 200, dict(VERSION_INFO)
        try:
            with self._lock:
                return self._route(method, path, body, user)
        except ApiError as e:
            return e.code, e.status()

    def authenticate(self, authorization: str) -> str | None:
        """The user a bearer token stands for: the admin token of the kubeconfig, or a
        service-account token issued with the API server's audience (as pods get)."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        if hmac.compare_digest(token, self.token):
            return self.user
        with self._lock:
            issued = self.issued_tokens.get(token)
        if (
            issued is None
            or issued.expires < time.time()
            or DEFAULT_AUDIENCE not in issued.audiences
        ):
            return None
        return f"system:serviceaccount:{issued.namespace}:{issued.service_account}"

    def pod_token(self, namespace: str, service_account: str, seconds: int = 3600) -> str:
        """The token kubelet would mount into a pod running as this service account."""
        with self._lock:
            return self._issue_token(namespace, service_account, [DEFAULT_AUDIENCE], seconds)[0]

    def _route(self, method: str, path: str, raw_body: bytes, user: str) -> tuple[int, Obj]:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        plural, name, subresource = (
            rest[0],
            rest[1] if len(rest) > 1 else None,
            rest[2] if len(rest) > 2 else None,
        )
        rt = next(
            (
                r
                for r in RESOURCE_TYPES
                if r.group == group
                and r.version == version
                and r.plural == plural
                and (self.serve_cbt_crd or r.group != CBT_GROUP)
            ),
            None,
        )
        if rt is None or (namespace is not None and not rt.namespaced):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if subresource is not None and not (
            rt.plural == "serviceaccounts" and subresource == "token"
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        verb = {"GET": "get" if name else "list", "POST": "create", "DELETE": "delete"}.get(method)
        if (
            verb is None
            or (verb == "create" and name and subresource is None)
            or verb not in rt.verbs
        ):
            raise ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        if verb == "create":
            self._check_rbac(
                verb,
                rt,
                rt.plural + (f"/{subresource}" if subresource else ""),
                namespace,
                name,
                user,
            )
        else:
            self._check_rbac(verb, rt, rt.plural, namespace, name, user)
        if rt.namespaced and namespace is None and verb != "list":
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        body: Obj = {}
        if verb == "create":
            try:
                body = json.loads(raw_body or b"null")
            except ValueError:
                raise ApiError(
                    400, "BadRequest", "the body of the request was in an unknown format"
                ) from None
            if not isinstance(body, dict):
                raise ApiError(
                    400, "BadRequest", "the body of the request was in an unknown format"
                )
        if subresource == "token":
            assert namespace is not None and name is not None
            return 201, self._token_request(namespace, name, body)
        if rt.plural == "tokenreviews":
            return 201, self._token_review(body)
        if rt.plural == "subjectaccessreviews":
            return 201, self._subject_access_review(body)
        ns_key = namespace or ""
        if verb == "list":
            items = [
                copy.deepcopy(o)
                for (ns, _), o in sorted(self._bucket(rt).items())
                if namespace is None or ns == namespace
            ]
            if rt.builtin:
                for item in items:
                    item.pop("apiVersion", None)
                    item.pop("kind", None)
            return 200, {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self._resource_version)},
                "items": items,
            }
        assert name is not None or verb == "create"
        if verb == "get":
            found = self._bucket(rt).get((ns_key, name or ""))
            if found is None:
                raise not_found(rt, name or "")
            return 200, copy.deepcopy(found)
        if verb == "delete":
            return 200, self._delete(rt, ns_key, name or "")
        return 201, self._create(rt, ns_key, body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-kube-apiserver"
    fake: FakeKube  # set on a subclass per server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: requests are recorded in FakeKube.requests

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        code, doc = self.fake.handle(self.command, self.path, headers, body)
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve
    do_POST = _serve
    do_DELETE = _serve
    do_PUT = _serve
    do_PATCH = _serve


@dataclass(frozen=True)
class TlsFiles:
    ca_pem: bytes
    cert_path: Path
    key_path: Path


def make_tls_files(directory: Path, common_name: str = "fake-kube") -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    cert_path = directory / f"{common_name}.crt"
    key_path = directory / f"{common_name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TlsFiles(ca_pem, cert_path, key_path)


@contextmanager
def run_fake_kube(
    fake: FakeKube | None = None, *, controller_period: float = 0.05, tls_dir: Path | None = None
) -> Iterator[FakeKube]:
    """Serve `fake` on 127.0.0.1 (a free port) with its controllers running; stop on exit.

    With `tls_dir` it serves HTTPS with a certificate made there (its CA in `fake.ca_pem`).
    The namespaces default and kube-system exist from the start, as on a new cluster.
    """
    fake = fake or FakeKube()
    handler = type("FakeKubeHandler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if tls_dir is not None:
        tls = make_tls_files(tls_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert_path, tls.key_path)
        # the handshake happens in the connection's own thread, on its first read
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        fake.ca_pem = tls.ca_pem
    fake.port = server.server_address[1]
    for ns in ("default", "kube-system"):
        if fake.get("namespaces", ns) is None:
            fake.add_namespace(ns)
    stop = threading.Event()

    def controllers() -> None:
        while not stop.wait(controller_period):
            fake.reconcile()

    threads = [
        threading.Thread(
            target=server.serve_forever, args=(0.05,), name="fake-kube-http", daemon=True
        ),
        threading.Thread(target=controllers, name="fake-kube-controllers", daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        yield fake
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        for t in threads:
            t.join(5)


# ----- a small cluster most tests start from ---------------------------------------------------

CBT_DRIVER = "hostpath.csi.k8s.io"
OTHER_DRIVER = "other.csi.example.com"
CBT_AUDIENCE = "lamina-test-audience"
CBT_ADDRESS = "127.0.0.1:50051"


def seed_standard_cluster(fake: FakeKube, ca_pem: bytes) -> None:
    """Namespace apps with a block PVC `data` (64Mi, driver with CBT), a Filesystem PVC `files`
    and a PVC `waiting` that never binds; in default a block PVC `plain` of a driver that has
    neither a VolumeSnapshotClass nor CBT; the service account apps/backup."""
    fake.add_namespace("apps")
    fake.add_storage_class("csi-hostpath-sc", CBT_DRIVER, default=True)
    fake.add_storage_class("plain", OTHER_DRIVER)
    fake.add_snapshot_class("csi-hostpath-snapclass", CBT_DRIVER, default=True)
    fake.add_snapshot_metadata_service(CBT_DRIVER, CBT_ADDRESS, ca_pem, CBT_AUDIENCE)
    fake.add_service_account("apps", "backup")
    fake.add_pvc("apps", "data", size="64Mi")
    fake.add_pvc("apps", "files", mode="Filesystem")
    fake.add_pvc("apps", "waiting", storage_class="no-such-class")
    fake.add_pvc("default", "plain", storage_class="plain")
