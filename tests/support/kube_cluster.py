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
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
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

    def restart_api_server(self, timeout: float = 60.0, down_for: float = 0.0) -> float:
        """Kill the kube-apiserver (SIGKILL, as a crash would) and start it again with the same
        command line, environment and ports, `down_for` seconds later (a longer outage, whose
        connections are refused); return once its /readyz answers 200, with the seconds it
        was away. Etcd keeps the state, so clients see a server that went away and came back:
        cut connections and watches, then the same objects."""
        pid = int(self.env["APISERVER_PID"])
        proc = Path(f"/proc/{pid}")
        argv = [arg.decode() for arg in (proc / "cmdline").read_bytes().split(b"\0") if arg]
        environment = dict(
            entry.decode().partition("=")[::2]
            for entry in (proc / "environ").read_bytes().split(b"\0")
            if b"=" in entry
        )
        cwd = os.readlink(proc / "cwd")
        stopped = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, timeout)
        time.sleep(down_for)
        deadline = time.monotonic() + timeout
        while True:
            with (self.folder / "apiserver.log").open("ab") as log:
                restarted = subprocess.Popen(
                    argv,
                    env=environment,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,  # as setsid in start-cluster.sh
                )
            if self._wait_ready(restarted, deadline):
                break
            # the port can still be held for a moment by the killed server's socket
            if restarted.poll() is None or time.monotonic() > deadline:
                restarted.kill()
                raise RuntimeError("kube-apiserver did not come back after its restart")
        self._set_env("APISERVER_PID", str(restarted.pid))
        return time.monotonic() - stopped

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float) -> bool:
        """True once /readyz answers 200; False if the process exited first."""
        env = self.env
        context = ssl.create_default_context(cafile=env["CA_FILE"])
        token = Path(env["ADMIN_TOKEN_FILE"]).read_text().strip()
        request = urllib.request.Request(
            f"{env['API_SERVER']}/readyz", headers={"Authorization": f"Bearer {token}"}
        )
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(request, context=context, timeout=2) as answer:
                    if answer.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        return False

    def _set_env(self, name: str, value: str) -> None:
        """Replace one NAME=value line of DIR/env, atomically (stop-cluster.sh reads it)."""
        path = self.folder / "env"
        lines = [
            f"{name}={value}" if line.startswith(f"{name}=") else line
            for line in path.read_text().splitlines()
        ]
        spare = path.with_suffix(".tmp")
        spare.write_text("\n".join(lines) + "\n")
        spare.replace(path)

    def delete_namespace(self, name: str) -> None:
        import kubernetes

        with self.api_client() as api:
            try:
                kubernetes.client.CoreV1Api(api).delete_namespace(name)
            except kubernetes.client.ApiException as error:
                if error.status != 404:
                    raise


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait until process `pid` (not a child of ours) has exited and been reaped."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
        except FileNotFoundError:
            return
        if stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]:
            return  # dead; its parent reaps it when it will
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} did not exit")
        time.sleep(0.02)


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
