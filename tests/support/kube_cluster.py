"""A REAL Kubernetes control plane for tests: kube-apiserver, kube-controller-manager and etcd
on 127.0.0.1, started by the loopback-cluster scripts (``start-cluster.sh DIR`` and
``stop-cluster.sh DIR``).

The scripts are looked up in ``$LAMINA_KUBE_SCRIPTS``, then in ``../shared/kube`` beside the
repository. The server is v1.20.2; what that version has and lacks is documented beside the
scripts. No kubelet and no scheduler run: Pods stay Pending unless a test stands in for the
node (``tests/support/kube_node.py``, where it exists, says so).

One cluster serves the whole test run (it takes about 8 s to start); each test gets a fresh
namespace of its own from ``RealKube.new_namespace()``.

The API server keeps an audit log (``RealKube.audit_events()``) of the requests that
ServiceAccounts make, and only of those (the admin and the controller-manager are not
ServiceAccounts here): the RBAC tests compare what a component's account asked for with
what its Role grants (tests/support/kube_rbac.py).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

# Metadata of every request a ServiceAccount makes, once, when its answer is complete.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts"]
- level: None
"""


def find_scripts() -> Path | None:
    """The folder holding start-cluster.sh and stop-cluster.sh, or None."""
    candidates = []
    if os.environ.get("LAMINA_KUBE_SCRIPTS"):
        candidates.append(Path(os.environ["LAMINA_KUBE_SCRIPTS"]))
    candidates.append(REPO_ROOT.parent / "shared" / "kube")
    for folder in candidates:
        if (folder / "start-cluster.sh").is_file() and (folder / "stop-cluster.sh").is_file():
            return folder
    return None


def new_api_client(kubeconfig: Path | str) -> Any:
    """A kubernetes.client.ApiClient for a kubeconfig file (the client's loader is untyped)."""
    import kubernetes

    config: Any = kubernetes.config
    return config.new_client_from_config(config_file=str(kubeconfig))


def _read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = " ".join(shlex.split(value)) if value else ""
    return values


@dataclass
class RealKube:
    """A running loopback cluster: its folder, kubeconfig and the servers' pids and ports."""

    folder: Path
    scripts: Path

    @property
    def kubeconfig(self) -> Path:
        return self.folder / "kubeconfig"

    @property
    def env(self) -> dict[str, str]:
        """DIR/env of the running cluster (API_SERVER, API_PORT, *_PID, CA_FILE, ...)."""
        return _read_env(self.folder / "env")

    @property
    def api_server(self) -> str:
        return self.env["API_SERVER"]

    @property
    def audit_log(self) -> Path:
        return self.folder / "audit.log"

    def audit_events(self, user: str | None = None) -> list[dict[str, Any]]:
        """The audit events (audit.k8s.io/v1 Event, stage ResponseComplete) so far, of one
        user (``system:serviceaccount:NS:NAME``) or of all ServiceAccounts."""
        if not self.audit_log.exists():
            return []
        events = []
        for line in self.audit_log.read_text().splitlines():
            if not line.strip():
                continue
            event = json.loads(line)
            if user is None or event.get("user", {}).get("username") == user:
                events.append(event)
        return events

    def api_client(self) -> Any:
        """A new kubernetes.client.ApiClient with the admin credentials."""
        return new_api_client(self.kubeconfig)

    def new_namespace(self, prefix: str = "t") -> str:
        """Create a namespace with a fresh name and return the name."""
        import kubernetes

        name = f"{prefix}-{secrets.token_hex(4)}"
        with self.api_client() as api:
            core: Any = kubernetes.client.CoreV1Api(api)
            core.create_namespace(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )
        return name

    def delete_namespace(self, name: str) -> None:
        import kubernetes

        with self.api_client() as api:
            try:
                kubernetes.client.CoreV1Api(api).delete_namespace(name)
            except kubernetes.client.ApiException as error:
                if error.status != 404:
                    raise


@contextmanager
def real_kube(scripts: Path | None = None) -> Iterator[RealKube]:
    """Start a fresh loopback cluster; stop it (and remove its folder) afterwards."""
    found = scripts or find_scripts()
    if found is None:
        raise FileNotFoundError(
            "the loopback-cluster scripts were not found ($LAMINA_KUBE_SCRIPTS or ../shared/kube)"
        )
    folder = Path(tempfile.mkdtemp(prefix="lamina-kube-"))
    policy = folder / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    audit = f"--audit-policy-file={policy} --audit-log-path={folder / 'audit.log'}"
    environment = dict(os.environ)
    environment["LAMINA_KUBE_APISERVER_FLAGS"] = (
        environment.get("LAMINA_KUBE_APISERVER_FLAGS", "") + " " + audit
    ).strip()
    started = subprocess.run(
        [str(found / "start-cluster.sh"), str(folder)],
        capture_output=True,
        text=True,
        env=environment,
    )
    if started.returncode != 0:
        raise RuntimeError(
            f"start-cluster.sh failed ({started.returncode}): "
            + (started.stderr.strip().splitlines() or ["no output"])[-1]
        )
    try:
        yield RealKube(folder=folder, scripts=found)
    finally:
        subprocess.run(
            [str(found / "stop-cluster.sh"), str(folder)], capture_output=True, check=False
        )
        subprocess.run(["rm", "-rf", str(folder)], check=False)
