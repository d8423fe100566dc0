"""The clusters a user can reach: the contexts of their kubeconfig, as kubectl and k9s show them.

The kubeconfig is `--kubeconfig FILE`, else the files listed in $KUBECONFIG (joined with the
path separator), else `~/.kube/config`. Several files merge as kubectl merges them: the first
file that names a context, cluster or user wins, and so does the first `current-context`.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import KubeconfigError, KubeError, NoSuchContext

# The pseudo-cluster of volumes kept as local image files and local snapshots.
LOCAL_CLUSTER = "local"
DEFAULT_KUBECONFIG = "~/.kube/config"


@dataclass(frozen=True)
class ClusterInfo:
    """One entry of `lamina clusters`: a kubeconfig context, or the local pseudo-cluster."""

    name: str
    cluster: str
    user: str
    namespace: str | None
    server: str | None
    current: bool
    local: bool = False

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Reachability:
    """Outcome of asking a cluster's API server for its version."""

    ok: bool
    detail: str  # the server's gitVersion when ok, else what went wrong
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Kubeconfig:
    """The merged view of one or more kubeconfig files."""

    paths: list[Path]
    contexts: dict[str, dict[str, Any]]
    clusters: dict[str, dict[str, Any]]
    users: dict[str, dict[str, Any]]
    current_context: str | None

    @property
    def client_path(self) -> str:
        """The path string the kubernetes client loader understands (separator-joined)."""
        return os.pathsep.join(str(p) for p in self.paths)

    def context(self, name: str | None) -> tuple[str, dict[str, Any]]:
        """The context called `name`, or the current one; NoSuchContext otherwise."""
        if name is None:
            if not self.current_context:
                raise NoSuchContext(
                    f"no context given and the kubeconfig ({self.client_path}) sets no current-context"
                )
            name = self.current_context
        if name not in self.contexts:
            known = ", ".join(sorted(self.contexts)) or "none"
            hint = ""
            if name == LOCAL_CLUSTER:
                hint = (
                    " ('local' is lamina's cluster of local image files, not a Kubernetes context)"
                )
            raise NoSuchContext(f"no context {name!r} in {self.client_path} (known: {known}){hint}")
        return name, self.contexts[name]

    def server_of(self, context: dict[str, Any]) -> str | None:
        cluster = self.clusters.get(str(context.get("cluster", "")), {})
        server = cluster.get("server")
        return str(server) if server else None


def kubeconfig_paths(explicit: str | None = None) -> list[Path]:
    """The kubeconfig files to read: the flag, else $KUBECONFIG, else the default file."""
    if explicit:
        return [Path(explicit).expanduser()]
    env = os.environ.get("KUBECONFIG", "")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path(DEFAULT_KUBECONFIG).expanduser()]


def _named_entries(
    doc: dict[str, Any], key: str, inner: str, path: Path
) -> list[tuple[str, dict[str, Any]]]:
    entries = doc.get(key) or []
    if not isinstance(entries, list):
        raise KubeconfigError(f"{path}: '{key}' is not a list")
    result = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise KubeconfigError(f"{path}: an entry of '{key}' has no name")
        body = entry.get(inner) or {}
        if not isinstance(body, dict):
            raise KubeconfigError(f"{path}: {key} entry {entry['name']!r} has no '{inner}' map")
        result.append((entry["name"], body))
    return result


def load_kubeconfig(explicit: str | None = None, *, required: bool = True) -> Kubeconfig:
    """Read and merge the kubeconfig files. With required=False a missing file gives an empty
    config (as kubectl treats it), unless the file was named with --kubeconfig."""
    paths = kubeconfig_paths(explicit)
    existing = [p for p in paths if p.is_file()]
    if not existing and (required or explicit):
        where = os.pathsep.join(str(p) for p in paths)
        raise KubeconfigError(f"no kubeconfig file at {where}")
    merged = Kubeconfig(paths=existing, contexts={}, clusters={}, users={}, current_context=None)
    for path in existing:
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise KubeconfigError(f"cannot read kubeconfig {path}: {first_line}") from None
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise KubeconfigError(f"{path} is not a kubeconfig (not a YAML map)")
        for target, key, inner in (
            (merged.contexts, "contexts", "context"),
            (merged.clusters, "clusters", "cluster"),
            (merged.users, "users", "user"),
        ):
            for name, body in _named_entries(doc, key, inner, path):
                target.setdefault(name, body)
        current = doc.get("current-context")
        if current and merged.current_context is None:
            merged.current_context = str(current)
    return merged


def list_clusters(explicit: str | None = None, *, include_local: bool = True) -> list[ClusterInfo]:
    """The contexts of the kubeconfig (sorted by name), then the local pseudo-cluster."""
    config = load_kubeconfig(explicit, required=False)
    clusters = [
        ClusterInfo(
            name=name,
            cluster=str(ctx.get("cluster", "")),
            user=str(ctx.get("user", "")),
            namespace=str(ctx["namespace"]) if ctx.get("namespace") else None,
            server=config.server_of(ctx),
            current=name == config.current_context,
        )
        for name, ctx in sorted(config.contexts.items())
    ]
    if include_local:
        clusters.append(
            ClusterInfo(
                name=LOCAL_CLUSTER,
                cluster=LOCAL_CLUSTER,
                user="",
                namespace=None,
                server=None,
                current=False,
                local=True,
            )
        )
    return clusters


def check_reachability(
    clusters: list[ClusterInfo], explicit: str | None = None, *, timeout: float = 3.0
) -> dict[str, Reachability]:
    """Ask every Kubernetes cluster for GET /version, all at once, each within `timeout`.

    A probe that does not return (an auth plugin that hangs, say) is reported as such after
    a grace period instead of blocking the caller: probes run in daemon threads.
    """
    from .cluster import KubeCluster

    results: dict[str, Reachability] = {}
    lock = threading.Lock()

    def probe(info: ClusterInfo) -> None:
        start = time.monotonic()
        try:
            cluster = KubeCluster.open(info.name, explicit, timeout=timeout, retries=0)
            try:
                version = cluster.server_version()
            finally:
                cluster.close()
            outcome = Reachability(True, version, time.monotonic() - start)
        except KubeError as e:
            outcome = Reachability(False, str(e), time.monotonic() - start)
        except Exception as e:  # a probe reports, it never raises
            outcome = Reachability(False, f"{type(e).__name__}: {e}", time.monotonic() - start)
        with lock:
            results[info.name] = outcome

    threads = []
    for info in clusters:
        if info.local:
            continue
        thread = threading.Thread(
            target=probe, args=(info,), daemon=True, name=f"probe-{info.name}"
        )
        thread.start()
        threads.append((info, thread))
    deadline = time.monotonic() + 2 * timeout + 1.0
    for info, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        with lock:
            if info.name not in results:
                results[info.name] = Reachability(
                    False, f"no answer within {2 * timeout + 1.0:.0f} s", 2 * timeout + 1.0
                )
    return results
