"""A test node for the real loopback API server: it stands in for the kubelet, and only the
kubelet (and the one scheduling step a one-node cluster needs).

The loopback control plane (tests/support/kube_cluster.py) has no kubelet, no scheduler and no
container runtime, so the Pods that the real Job controller creates would stay Pending. A
``KubeNode`` makes them run:

- it registers a Node object with condition Ready=True;
- it watches Pods, and binds each unscheduled one (``spec.nodeName`` empty, default
  scheduler) to itself through ``pods/binding``, once all the Pod's PVCs are Bound, as the
  scheduler's volume-binding step would;
- it runs each container's command (init containers first, in order) as a LOCAL process,
  not in a container: ``command`` + ``args`` with ``$(VAR)`` references expanded, the first
  word mapped through ``commands`` (by default the image entrypoint ``lamina`` becomes the
  ``lamina`` script of this venv); an empty ``command`` fails the container, since no image
  is there to give an entrypoint;
- the environment is only what the Pod says: ``env`` (values, ``secretKeyRef``,
  ``configMapKeyRef``, ``fieldRef``), ``envFrom`` (Secrets and ConfigMaps, read with the
  node's credentials as the kubelet reads them), ``KUBERNETES_SERVICE_HOST``/``PORT`` of the
  API server, plus ``base_env`` (PATH and what the test adds);
- volumes become local paths in the Pod's own folder under ``workdir``: ``emptyDir`` a new
  folder, ``secret``/``configMap`` a folder with one file per key (the ServiceAccount token
  Secret that v1.20 mounts included, so ``--in-cluster`` works: its mount path is also given
  as ``LAMINA_SERVICE_ACCOUNT_DIR``). A PVC is the local path of its bound PersistentVolume:
  **a PV of type ``hostPath`` (or ``local``) whose ``path`` is a local image file (Block mode)
  or folder (Filesystem mode), or a CSI PV whose ``volumeHandle`` is such a path** (what the
  test CSI stand-in, kube_csi.py, provisions). Since processes share the host's file system, every
  ``mountPath``/``devicePath`` that a container names is rewritten to its local path wherever
  it appears in the arguments, the env values and ``workingDir`` (as a whole word or as the
  start of a longer path);
- it writes the Pod's status as the kubelet does: phase Running, then Succeeded or Failed,
  ``containerStatuses``/``initContainerStatuses`` with ``running.startedAt`` and
  ``terminated.exitCode``/``reason``/``startedAt``/``finishedAt`` (and the log's last line as
  ``message`` under ``terminationMessagePolicy: FallbackToLogsOnError``), so the real Job
  controller marks the Job complete or failed;
- a Pod being deleted (``deletionTimestamp`` set, e.g. by the Job controller or the garbage
  collector) has its processes killed and is then removed with grace period 0, as the kubelet
  confirms a deletion.

Faults, for the tests of what lamina does when a data mover fails or hangs: a container whose
env has ``LAMINA_TEST_NODE_FAULT`` set to ``fail`` (or ``fail:CODE``) exits with that code
(default 1) without running its command, ``hang`` runs a process that never ends (until the
Pod is deleted or the node stops); ``KubeNode.fault`` is the same as a hook
``(pod, container) -> Fault | None`` for Pods whose manifest a test does not write.

A Secret, ConfigMap or key that the Pod needs and that is missing leaves it Pending with
``waiting.reason: CreateContainerConfigError`` and the kubelet's message, until it appears.
Only ``restartPolicy: Never`` is honoured: a failed container is not restarted, the Pod fails.

An API server that goes away (a restart, in the fault tests) is waited out: the watch is
listed and watched again (``watch_restarts``), and a Pod's reads (claims, Secrets,
ConfigMaps) and status writes are retried for ``api_outage`` seconds; only what still fails
lands in ``errors``.

Each process is bounded by ``process_timeout`` (killed, exit code 137); its stdout and stderr
go to ``<workdir>/<namespace>/<pod>/<container>.log`` (``KubeNode.log(namespace, pod)``).
Use it as a context manager; ``stop()`` ends the watch, kills what still runs and joins its
threads within seconds.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes
import urllib3

from tests.support.kube_cluster import new_api_client

Obj = dict[str, Any]

FAULT_ENV = "LAMINA_TEST_NODE_FAULT"
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_SCHEDULER = "default-scheduler"
VENV_BIN = Path(sys.executable).parent


def default_commands() -> dict[str, list[str]]:
    """Image entrypoints -> local command lines: `lamina` is this venv's lamina."""
    script = VENV_BIN / "lamina"
    if script.is_file():
        return {"lamina": [str(script)]}
    return {"lamina": [sys.executable, "-m", "lamina.backend.cli"]}


class ConfigMissing(Exception):
    """A Secret, ConfigMap or key that a Pod needs is not there (yet): the kubelet's
    CreateContainerConfigError; the Pod waits for it."""


@dataclass(frozen=True)
class Fault:
    """What to do instead of a container's command: fail with `exit_code`, or hang."""

    kind: str  # "fail" | "hang"
    exit_code: int = 1

    @classmethod
    def parse(cls, text: str) -> Fault:
        kind, _, code = text.partition(":")
        if kind not in ("fail", "hang"):
            raise ValueError(f"{FAULT_ENV} must be fail, fail:CODE or hang, not {text!r}")
        return cls(kind, int(code) if code else 1)


@dataclass
class _PodRun:
    namespace: str
    name: str
    uid: str
    folder: Path
    thread: threading.Thread | None = None
    process: subprocess.Popen[bytes] | None = None
    deleted: threading.Event = field(default_factory=threading.Event)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are replaced, $$ escapes, others stay."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


def _rewrite(text: str, paths: list[tuple[str, str]]) -> str:
    """Replace each container path by its local path wherever it stands as a path of its own:
    the whole text, after '=', a blank or a quote, and followed by the end, '/', a blank or a
    quote (so `--file=/dev/x`, `/tmp/a/b` and `sh -c 'dd of=/dev/x'` are all rewritten)."""
    if not paths:
        return text
    local_of = {inside.rstrip("/") or "/": local for inside, local in paths}
    # one pass, longest path first: a local path put in is never rewritten again
    alternatives = "|".join(re.escape(p) for p in sorted(local_of, key=len, reverse=True))
    pattern = r"(?:(?<=^)|(?<=[=\s'\"]))(" + alternatives + r")(?=$|[/\s'\"])"
    return re.sub(pattern, lambda m: local_of[m.group(1)], text)


class KubeNode:
    """One Ready node that runs the Pods bound to it as local processes (see the module)."""

    def __init__(
        self,
        kubeconfig: Path | str,
        workdir: Path,
        *,
        name: str = "lamina-test-node",
        namespaces: Collection[str] | None = None,
        commands: dict[str, list[str]] | None = None,
        base_env: dict[str, str] | None = None,
        process_timeout: float = 300.0,
        volume_timeout: float = 60.0,
        api_outage: float = 30.0,
        fault: Callable[[Obj, Obj], Fault | None] | None = None,
    ) -> None:
        self.kubeconfig = str(kubeconfig)
        self.workdir = Path(workdir)
        self.name = name
        self.namespaces = set(namespaces) if namespaces is not None else None
        self.commands = commands if commands is not None else default_commands()
        self.base_env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        self.base_env.update(base_env or {})
        self.process_timeout = process_timeout
        self.volume_timeout = volume_timeout
        self.fault = fault
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._runs: dict[str, _PodRun] = {}
        self._watcher: threading.Thread | None = None
        self._api: Any = None
        self.api_outage = api_outage
        self.errors: list[str] = []  # what went wrong inside the node itself, for the test
        self.watch_restarts = 0  # watches that broke and were listed again
        self.last_watch_error = ""

    # ----- life cycle --------------------------------------------------------------------

    def __enter__(self) -> KubeNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._api = new_api_client(self.kubeconfig)
        self._register()
        self._watcher = threading.Thread(target=self._watch, name=f"node-{self.name}", daemon=True)
        self._watcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.deleted.set()
            self._kill(run)
        deadline = time.monotonic() + timeout
        for thread in [self._watcher, *(r.thread for r in runs)]:
            if thread is not None:
                thread.join(max(0.1, deadline - time.monotonic()))
        try:
            self.core.delete_node(self.name)
        except kubernetes.client.ApiException:
            pass
        self._api.close()

    @property
    def core(self) -> Any:
        return kubernetes.client.CoreV1Api(self._api)

    def running_pids(self) -> list[int]:
        """Process ids of the containers running now."""
        with self._lock:
            processes = [run.process for run in self._runs.values()]
        return [p.pid for p in processes if p is not None and p.poll() is None]

    def log(self, namespace: str, pod: str, container: str | None = None) -> str:
        """The output of a Pod's containers (all of them, in the order they ran)."""
        folder = self.workdir / namespace / pod
        names = [f"{container}.log"] if container else sorted(p.name for p in folder.glob("*.log"))
        return "".join(
            (folder / n).read_text(errors="replace") for n in names if (folder / n).exists()
        )

    def _register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": {"kubernetes.io/hostname": self.name}},
        }
        try:
            self.core.create_node(body)
        except kubernetes.client.ApiException as error:
            if error.status != 409:
                raise
        node = self._api.sanitize_for_serialization(self.core.read_node(self.name))
        now = _now()
        node["status"] = {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "lamina test node stands in for the kubelet",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "nodeInfo": {
                "kubeletVersion": "v1.20.2-lamina-test-node",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "local-process://",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": "",
                "osImage": "",
            },
        }
        self.core.replace_node_status(self.name, node)

    # ----- the watch ---------------------------------------------------------------------

    def _watch(self) -> None:
        version = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listed = self.core.list_pod_for_all_namespaces(_request_timeout=10)
                    version = listed.metadata.resource_version
                    for pod in listed.items:
                        self._on_pod(self._api.sanitize_for_serialization(pod), "ADDED")
                watch: Any = kubernetes.watch
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    resource_version=version,
                    timeout_seconds=1,
                    _request_timeout=10,
                )
                for event in stream:
                    raw = event["raw_object"]
                    if event["type"] == "ERROR":
                        version = None  # 410 Gone: list again
                        break
                    version = raw["metadata"]["resourceVersion"]
                    self._on_pod(raw, event["type"])
                    if self._stop.is_set():
                        break
            except Exception as error:  # a dropped watch: list and watch again
                if self._stop.is_set():
                    return
                self.watch_restarts += 1  # expected while the API server restarts
                self.last_watch_error = repr(error)[:300]
                version = None
                self._stop.wait(0.5)

    def _on_pod(self, pod: Obj, event: str) -> None:
        meta, spec = pod["metadata"], pod.get("spec", {})
        if self.namespaces is not None and meta["namespace"] not in self.namespaces:
            return
        mine = spec.get("nodeName") == self.name
        unscheduled = not spec.get("nodeName") and (
            spec.get("schedulerName", DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER
        )
        uid = meta["uid"]
        with self._lock:
            run = self._runs.get(uid)
        if run is not None:
            if event == "DELETED" or meta.get("deletionTimestamp"):
                run.deleted.set()
                self._kill(run)
                if run.thread is None or not run.thread.is_alive():
                    self._confirm_deletion(pod)
            return
        if event == "DELETED":
            return
        if mine and meta.get("deletionTimestamp"):
            self._confirm_deletion(pod)  # a Pod of ours from before, never run here
            return
        phase = pod.get("status", {}).get("phase", "Pending")
        if (mine or unscheduled) and phase == "Pending" and not meta.get("deletionTimestamp"):
            folder = self.workdir / meta["namespace"] / meta["name"]
            run = _PodRun(meta["namespace"], meta["name"], uid, folder)
            run.thread = threading.Thread(
                target=self._run_pod, args=(run, pod), name=f"pod-{meta['name']}", daemon=True
            )
            with self._lock:
                self._runs[uid] = run
            run.thread.start()

    # ----- one Pod -----------------------------------------------------------------------

    def _run_pod(self, run: _PodRun, pod: Obj) -> None:
        try:
            # as a kubelet does, wait out an API server that is away (restarting) before
            # the containers start
            deadline = time.monotonic() + self.api_outage
            while True:
                try:
                    volumes = self._wait_for_volumes(run, pod)
                    if volumes is None:
                        return
                    if not pod["spec"].get("nodeName") and not self._bind(run):
                        return
                    break
                except kubernetes.client.ApiException as error:
                    if error.status < 500 or not self._wait_out(deadline):
                        raise
                except urllib3.exceptions.HTTPError:  # unanswered
                    if not self._wait_out(deadline):
                        raise
            self._execute(run, pod, volumes)
        except Exception as error:
            self.errors.append(f"pod {run.namespace}/{run.name}: {error!r}"[:500])
        finally:
            if run.deleted.is_set():
                self._confirm_deletion(
                    {"metadata": {"namespace": run.namespace, "name": run.name, "uid": run.uid}}
                )

    def _bind(self, run: _PodRun) -> bool:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": run.name, "namespace": run.namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.name},
        }
        try:
            # the answer is a Status the client cannot read as a V1Binding: take it raw
            self.core.create_namespaced_pod_binding(
                run.name, run.namespace, body, _preload_content=False
            )
        except kubernetes.client.ApiException as error:
            if error.status == 409:  # bound already: by a try of ours whose answer was lost?
                bound = self.core.read_namespaced_pod(run.name, run.namespace)
                return bool(bound.metadata.uid == run.uid and bound.spec.node_name == self.name)
            if error.status == 404:  # gone
                return False
            raise
        return True

    def _wait_for_volumes(self, run: _PodRun, pod: Obj) -> dict[str, Path] | None:
        """Volume name -> local path for the PVC volumes, once every claim is Bound."""
        deadline = time.monotonic() + self.volume_timeout
        while True:
            paths: dict[str, Path] = {}
            pending = None
            for volume in pod["spec"].get("volumes") or []:
                claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
                if not claim:
                    continue
                pvc = self.core.read_namespaced_persistent_volume_claim(claim, run.namespace)
                if pvc.status.phase != "Bound" or not pvc.spec.volume_name:
                    pending = claim
                    break
                pv = self.core.read_persistent_volume(pvc.spec.volume_name)
                paths[volume["name"]] = self._local_path(pv, claim)
            if pending is None:
                return paths
            if run.deleted.is_set() or self._stop.is_set():
                return None
            if time.monotonic() > deadline:
                self.errors.append(f"pod {run.namespace}/{run.name}: PVC {pending} never Bound")
                return None
            self._stop.wait(0.1)

    @staticmethod
    def _local_path(pv: Any, claim: str) -> Path:
        """hostPath and local PVs: their path; CSI PVs (of the test CSI stand-in): a volumeHandle
        that is an absolute local path."""
        source = pv.spec.host_path or pv.spec.local
        if source is not None:
            return Path(source.path)
        csi = pv.spec.csi
        if csi is not None and str(csi.volume_handle).startswith("/"):
            return Path(csi.volume_handle)
        raise RuntimeError(
            f"PV {pv.metadata.name} of claim {claim} is not hostPath, local or a CSI volume "
            "whose handle is a local path: the test node cannot map it to a local file"
        )

    def _local_volumes(self, run: _PodRun, pod: Obj, claims: dict[str, Path]) -> dict[str, Path]:
        local: dict[str, Path] = dict(claims)
        for volume in pod["spec"].get("volumes") or []:
            name = volume["name"]
            if name in local:
                continue
            folder = run.folder / "volumes" / name
            folder.mkdir(parents=True, exist_ok=True)
            if "secret" in volume:
                mode = volume["secret"].get("defaultMode", 0o644)
                secret = self._secret_bytes(run.namespace, volume["secret"]["secretName"])
                for key, content in secret.items():
                    path = folder / key
                    path.write_bytes(content)
                    path.chmod(mode)
            elif "configMap" in volume:
                for key, value in self._config_data(
                    run.namespace, volume["configMap"]["name"]
                ).items():
                    (folder / key).write_text(value)
            local[name] = folder
        return local

    def _env(self, run: _PodRun, pod: Obj, container: Obj) -> dict[str, str]:
        host = urlsplit(self._api.configuration.host)
        env = dict(self.base_env)
        env.update(
            {
                "HOSTNAME": run.name,
                "KUBERNETES_SERVICE_HOST": host.hostname or "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(host.port or 443),
            }
        )
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            selector = source.get("secretRef") or source.get("configMapRef") or {}
            try:
                if "secretRef" in source:
                    data = self._secret_data(run.namespace, selector["name"])
                else:
                    data = self._config_data(run.namespace, selector["name"])
            except ConfigMissing:
                if selector.get("optional"):
                    continue
                raise
            env.update({prefix + k: v for k, v in data.items()})
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = _expand(item["value"], env)
                continue
            ref = item.get("valueFrom") or {}
            for field_name, kind, read in (
                ("secretKeyRef", "Secret", self._secret_data),
                ("configMapKeyRef", "ConfigMap", self._config_data),
            ):
                if field_name not in ref:
                    continue
                selector = ref[field_name]
                try:
                    data = read(run.namespace, selector["name"])
                    value = self._key(data, selector["key"], kind, run.namespace, selector["name"])
                except ConfigMissing:
                    if selector.get("optional"):
                        break
                    raise
                env[item["name"]] = value
            if "fieldRef" in ref:
                env[item["name"]] = self._field(pod, ref["fieldRef"]["fieldPath"])
            elif not ref and item["name"] not in env:
                env[item["name"]] = ""
        return env

    def _field(self, pod: Obj, path: str) -> str:
        values = {
            "metadata.name": pod["metadata"]["name"],
            "metadata.namespace": pod["metadata"]["namespace"],
            "metadata.uid": pod["metadata"]["uid"],
            "spec.nodeName": self.name,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.hostIP": "127.0.0.1",
            "status.podIP": "127.0.0.1",
        }
        return str(values.get(path, ""))

    def _secret_bytes(self, namespace: str, name: str) -> dict[str, bytes]:
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                raise ConfigMissing(f'secret "{name}" not found') from None
            raise
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def _secret_data(self, namespace: str, name: str) -> dict[str, str]:
        return {
            k: v.decode(errors="replace") for k, v in self._secret_bytes(namespace, name).items()
        }

    def _config_data(self, namespace: str, name: str) -> dict[str, str]:
        try:
            return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                raise ConfigMissing(f'configmap "{name}" not found') from None
            raise

    @staticmethod
    def _key(data: dict[str, str], key: str, kind: str, namespace: str, name: str) -> str:
        if key not in data:
            raise ConfigMissing(f"couldn't find key {key} in {kind} {namespace}/{name}")
        return data[key]

    def _execute(self, run: _PodRun, pod: Obj, claims: dict[str, Path]) -> None:
        if run.folder.exists():
            shutil.rmtree(run.folder)
        run.folder.mkdir(parents=True)
        init = pod["spec"].get("initContainers") or []
        containers = pod["spec"].get("containers") or []
        init_statuses = [self._waiting(c) for c in init]
        statuses = [self._waiting(c) for c in containers]
        started = _now()
        # as the kubelet: wait for the Secrets and ConfigMaps the Pod needs, and wait out an
        # API server that is away while they are read
        deadline = time.monotonic() + self.api_outage
        while True:
            try:
                volumes = self._local_volumes(run, pod, claims)
                for container in [*init, *containers]:
                    self._env(run, pod, container)
                break
            except kubernetes.client.ApiException as error:
                if error.status < 500 or not self._wait_out(deadline):
                    raise
            except urllib3.exceptions.HTTPError:  # unanswered
                if not self._wait_out(deadline):
                    raise
            except ConfigMissing as missing:
                waiting = {"reason": "CreateContainerConfigError", "message": str(missing)}
                first = [*init_statuses, *statuses][0]
                if first["state"] != {"waiting": waiting}:  # a status write on each change
                    first["state"] = {"waiting": waiting}
                    self._write_status(run, "Pending", init_statuses, statuses, started)
                if self._stop.wait(0.5) or run.deleted.is_set():
                    return
                deadline = time.monotonic() + self.api_outage  # it answered: a new outage
        self._write_status(run, "Pending", init_statuses, statuses, started)
        for index, container in enumerate(init):
            init_statuses[index] = self._run_container(run, pod, container, volumes, init_statuses)
            code = init_statuses[index]["state"]["terminated"]["exitCode"]
            if code != 0 or run.deleted.is_set():
                self._write_status(run, "Failed", init_statuses, statuses, started)
                return
        # the app containers run side by side, as in a Pod
        threads = []
        for index, container in enumerate(containers):

            def one(i: int = index, c: Obj = container) -> None:
                statuses[i] = self._run_container(run, pod, c, volumes, statuses, i, init_statuses)

            thread = threading.Thread(target=one, daemon=True)
            threads.append(thread)
            thread.start()
        for thread in threads:
            thread.join()
        codes = [s["state"].get("terminated", {}).get("exitCode", 137) for s in statuses]
        phase = "Succeeded" if all(c == 0 for c in codes) else "Failed"
        self._write_status(run, phase, init_statuses, statuses, started)

    @staticmethod
    def _waiting(container: Obj) -> Obj:
        return {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "started": False,
            "state": {"waiting": {"reason": "PodInitializing"}},
        }

    def _run_container(
        self,
        run: _PodRun,
        pod: Obj,
        container: Obj,
        volumes: dict[str, Path],
        statuses: list[Obj],
        index: int | None = None,
        init_statuses: list[Obj] | None = None,
    ) -> Obj:
        name = container["name"]
        started = _now()
        status = {
            **self._waiting(container),
            "started": True,
            "state": {"running": {"startedAt": started}},
        }
        if index is None:
            statuses[[s["name"] for s in statuses].index(name)] = status
            self._write_status(run, "Pending", statuses, None, started)
        else:
            statuses[index] = {**status, "ready": True}
            self._write_status(run, "Running", init_statuses or [], statuses, started)
        paths: list[tuple[str, str]] = []
        for mount in container.get("volumeMounts") or []:
            local = volumes[mount["name"]]
            if mount.get("subPath"):
                local = local / mount["subPath"]
            paths.append((mount["mountPath"], str(local)))
        for device in container.get("volumeDevices") or []:
            paths.append((device["devicePath"], str(volumes[device["name"]])))
        paths.sort(key=lambda p: len(p[0]), reverse=True)
        env = {k: _rewrite(v, paths) for k, v in self._env(run, pod, container).items()}
        for inside, local_path in paths:
            if inside.rstrip("/") == SERVICE_ACCOUNT_MOUNT:
                env.setdefault("LAMINA_SERVICE_ACCOUNT_DIR", local_path)
        fault = None
        if env.get(FAULT_ENV):
            fault = Fault.parse(env[FAULT_ENV])
        elif self.fault is not None:
            fault = self.fault(pod, container)
        command = [_expand(a, env) for a in (container.get("command") or [])]
        args = [_expand(a, env) for a in (container.get("args") or [])]
        log_path = run.folder / f"{name}.log"
        cwd = _rewrite(container.get("workingDir") or "", paths) or str(run.folder)
        if fault is not None and fault.kind == "fail":
            log_path.write_text(f"test node: fault injected, exit {fault.exit_code}\n")
            code = fault.exit_code
        elif not command and fault is None:
            log_path.write_text("test node: the container has no command (no image entrypoint)\n")
            code = 128
        else:
            if fault is not None:  # hang
                argv = [sys.executable, "-c", "import signal; signal.pause()"]
            else:
                argv = [*self.commands.get(command[0], [command[0]]), *command[1:], *args]
                argv = [_rewrite(a, paths) for a in argv]
            code = self._spawn(run, argv, env, cwd, log_path)
        finished = _now()
        terminated: Obj = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started,
            "finishedAt": finished,
        }
        if code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = log_path.read_text(errors="replace").strip().splitlines()
            terminated["message"] = lines[-1] if lines else ""
        return {
            **self._waiting(container),
            "started": False,
            "state": {"terminated": terminated},
        }

    def _spawn(
        self, run: _PodRun, argv: list[str], env: dict[str, str], cwd: str, log_path: Path
    ) -> int:
        if run.deleted.is_set() or self._stop.is_set():
            return 137
        with open(log_path, "ab") as log:
            try:
                process = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as error:
                log.write(f"test node: cannot start {argv[0]}: {error}\n".encode())
                return 127
            run.process = process
            if run.deleted.is_set() or self._stop.is_set():
                self._kill(run)
            try:
                return process.wait(timeout=self.process_timeout)
            except subprocess.TimeoutExpired:
                self._kill(run)
                log.write(f"test node: killed after {self.process_timeout:g} s\n".encode())
                return 137
            finally:
                run.process = None

    @staticmethod
    def _kill(run: _PodRun) -> None:
        process = run.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def _write_status(
        self,
        run: _PodRun,
        phase: str,
        init_statuses: list[Obj],
        statuses: list[Obj] | None,
        started: str,
    ) -> None:
        if run.deleted.is_set():
            return
        # a status must get through an API server restart (the fault tests make them): retry
        # unanswered requests and 5xx answers for `api_outage` seconds, conflicts 10 times
        deadline = time.monotonic() + self.api_outage
        conflicts = 0
        while conflicts < 10:
            try:
                pod = self.core.read_namespaced_pod(run.name, run.namespace)
            except kubernetes.client.ApiException as error:
                if error.status == 404:
                    return
                if error.status < 500 or not self._wait_out(deadline):
                    raise
                continue
            except urllib3.exceptions.HTTPError:
                if not self._wait_out(deadline):
                    raise
                continue
            if pod.metadata.uid != run.uid:
                return
            body = self._api.sanitize_for_serialization(pod)
            status = body.setdefault("status", {})
            status["phase"] = phase
            status["hostIP"] = "127.0.0.1"
            status["podIP"] = "127.0.0.1"
            status["startTime"] = status.get("startTime") or started
            if init_statuses:
                status["initContainerStatuses"] = init_statuses
            if statuses is not None:
                status["containerStatuses"] = statuses
            ready = "True" if phase == "Running" else "False"
            now = _now()
            status["conditions"] = [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
                {
                    "type": "Initialized",
                    "status": "True" if phase != "Pending" else "False",
                    "lastTransitionTime": now,
                },
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                {"type": "Ready", "status": ready, "lastTransitionTime": now},
            ]
            try:
                self.core.replace_namespaced_pod_status(
                    run.name, run.namespace, body, _preload_content=False
                )
                return
            except kubernetes.client.ApiException as error:
                if error.status == 409:
                    conflicts += 1
                    continue  # changed under us: read again
                if error.status == 404:
                    return
                if error.status < 500 or not self._wait_out(deadline):
                    raise
            except urllib3.exceptions.HTTPError:
                if not self._wait_out(deadline):
                    raise

    def _wait_out(self, deadline: float) -> bool:
        """Wait a little for the API server to come back; False once `deadline` is past."""
        if time.monotonic() > deadline or self._stop.is_set():
            return False
        self._stop.wait(0.2)
        return True

    def _confirm_deletion(self, pod: Obj) -> None:
        meta = pod["metadata"]
        with self._lock:
            self._runs.pop(meta["uid"], None)
        try:
            self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                grace_period_seconds=0,
                body={"preconditions": {"uid": meta["uid"]}, "gracePeriodSeconds": 0},
                _preload_content=False,
            )
        except kubernetes.client.ApiException as error:
            if error.status not in (404, 409):
                self.errors.append(f"delete pod {meta['name']}: {error.status}")


@contextmanager
def kube_node(kubeconfig: Path | str, workdir: Path, **options: Any) -> Iterator[KubeNode]:
    """A started KubeNode for the block; stopped afterwards."""
    node = KubeNode(kubeconfig, workdir, **options)
    node.start()
    try:
        yield node
    finally:
        node.stop()
