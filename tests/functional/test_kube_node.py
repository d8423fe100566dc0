"""The test node (tests/support/kube_node.py) makes the real Job controller's Pods run: bound to
the node, the command run as a local process with the Pod's env and its block PVC as the image
file, and the Pod's status written so that the Job completes or fails."""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.support.kube_cluster import RealKube
from tests.support.kube_node import KubeNode, kube_node
from tests.support.kube_objects import block_pv_and_claim, wait_for

Obj = dict[str, Any]


@pytest.fixture
def node(real_kube_cluster: RealKube, kube_namespace: str, tmp_path: Path) -> Iterator[KubeNode]:
    with kube_node(
        real_kube_cluster.kubeconfig,
        tmp_path / "node",
        name=f"node-{kube_namespace}",
        namespaces=[kube_namespace],
    ) as started:
        yield started
    assert started.errors == []


def shell_job(name: str, script: str, env: list[Obj] | None = None, **spec: Any) -> Obj:
    container: Obj = {"name": "main", "image": "busybox", "command": ["sh", "-c", script]}
    if env:
        container["env"] = env
    template_spec: Obj = {"restartPolicy": "Never", "containers": [container], **spec}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": template_spec}},
    }


def job_condition(api: Any, namespace: str, name: str) -> str | None:
    batch: Any = kubernetes.client.BatchV1Api(api)
    job = batch.read_namespaced_job(name, namespace)
    for condition in job.status.conditions or []:
        if condition.status == "True" and condition.type in ("Complete", "Failed"):
            return str(condition.type)
    return None


def test_job_runs_on_the_node_with_secret_env_and_block_volume(
    real_kube_cluster: RealKube, kube_namespace: str, node: KubeNode, tmp_path: Path
) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 4096)
    with real_kube_cluster.api_client() as api:
        core: Any = kubernetes.client.CoreV1Api(api)
        block_pv_and_claim(api, kube_namespace, "disk", image)
        core.create_namespaced_secret(
            kube_namespace,
            {
                "metadata": {"name": "creds"},
                "data": {"TOKEN": base64.b64encode(b"s3cr3t").decode()},
            },
        )
        job = shell_job(
            "writer",
            'printf "%s:%s" "$TOKEN" "$GREETING" | dd of=/dev/xvda conv=notrunc 2>/dev/null',
            env=[{"name": "GREETING", "value": "hello-$(TOKEN)"}],
            volumes=[{"name": "disk", "persistentVolumeClaim": {"claimName": "disk"}}],
        )
        container = job["spec"]["template"]["spec"]["containers"][0]
        container["envFrom"] = [{"secretRef": {"name": "creds"}}]
        container["volumeDevices"] = [{"name": "disk", "devicePath": "/dev/xvda"}]
        batch: Any = kubernetes.client.BatchV1Api(api)
        batch.create_namespaced_job(kube_namespace, job)

        assert wait_for(lambda: job_condition(api, kube_namespace, "writer")) == "Complete"
        assert image.read_bytes().startswith(b"s3cr3t:hello-s3cr3t\0")
        assert image.stat().st_size == 4096
        (pod,) = core.list_namespaced_pod(kube_namespace, label_selector="job-name=writer").items
        assert pod.spec.node_name == node.name
        assert pod.status.phase == "Succeeded"
        (state,) = pod.status.container_statuses
        assert state.state.terminated.exit_code == 0
        assert state.state.terminated.started_at <= state.state.terminated.finished_at
        ready = core.read_node(node.name).status.conditions
        assert [(c.type, c.status) for c in ready] == [("Ready", "True")]


def test_failing_command_and_injected_failure_fail_the_job(
    real_kube_cluster: RealKube, kube_namespace: str, node: KubeNode
) -> None:
    with real_kube_cluster.api_client() as api:
        batch: Any = kubernetes.client.BatchV1Api(api)
        batch.create_namespaced_job(kube_namespace, shell_job("exits-3", "echo no >&2; exit 3"))
        batch.create_namespaced_job(
            kube_namespace,
            shell_job(
                "faulted", "exit 0", env=[{"name": "LAMINA_TEST_NODE_FAULT", "value": "fail:7"}]
            ),
        )
        for name, code in (("exits-3", 3), ("faulted", 7)):
            assert wait_for(partial(job_condition, api, kube_namespace, name)) == "Failed"
            core: Any = kubernetes.client.CoreV1Api(api)
            (pod,) = core.list_namespaced_pod(
                kube_namespace, label_selector=f"job-name={name}"
            ).items
            assert pod.status.phase == "Failed"
            assert pod.status.container_statuses[0].state.terminated.exit_code == code
        assert "no\n" in node.log(kube_namespace, pod_name(api, kube_namespace, "exits-3"))


def pod_name(api: Any, namespace: str, job: str) -> str:
    core: Any = kubernetes.client.CoreV1Api(api)
    (pod,) = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    return str(pod.metadata.name)


def test_hanging_pod_is_killed_when_its_job_is_deleted(
    real_kube_cluster: RealKube, kube_namespace: str, node: KubeNode, tmp_path: Path
) -> None:
    started = threading.Event()
    pids: list[int] = []

    def hang(pod: Obj, container: Obj) -> Any:
        from tests.support.kube_node import Fault

        started.set()
        return Fault("hang")

    node.fault = hang
    with real_kube_cluster.api_client() as api:
        batch: Any = kubernetes.client.BatchV1Api(api)
        core: Any = kubernetes.client.CoreV1Api(api)
        batch.create_namespaced_job(kube_namespace, shell_job("stuck", "exit 0"))

        def running() -> bool:
            pods = core.list_namespaced_pod(kube_namespace, label_selector="job-name=stuck").items
            return bool(pods) and pods[0].status.phase == "Running"

        assert wait_for(running)
        assert started.is_set()
        # The node reports Running as it starts the process, as a kubelet does: the
        # process may come a moment after the status.
        pids.extend(wait_for(node.running_pids))
        assert pids
        batch.delete_namespaced_job("stuck", kube_namespace, propagation_policy="Foreground")

        def gone() -> bool:
            pods = core.list_namespaced_pod(kube_namespace).items
            return not pods

        assert wait_for(gone)
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def test_pod_waits_for_a_missing_secret_as_the_kubelet_does(
    real_kube_cluster: RealKube, kube_namespace: str, node: KubeNode
) -> None:
    with real_kube_cluster.api_client() as api:
        batch: Any = kubernetes.client.BatchV1Api(api)
        core: Any = kubernetes.client.CoreV1Api(api)
        job = shell_job(
            "needs-secret",
            'test "$KEY" = late',
            env=[{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "later", "key": "k"}}}],
        )
        batch.create_namespaced_job(kube_namespace, job)

        def waiting_reason() -> Any:
            pods = core.list_namespaced_pod(kube_namespace, label_selector="job-name=needs-secret")
            for pod in pods.items:
                for status in pod.status.container_statuses or []:
                    if status.state.waiting is not None and status.state.waiting.message:
                        return (status.state.waiting.reason, status.state.waiting.message)
            return None

        assert wait_for(waiting_reason) == (
            "CreateContainerConfigError",
            'secret "later" not found',
        )
        core.create_namespaced_secret(
            kube_namespace,
            {"metadata": {"name": "later"}, "data": {"k": base64.b64encode(b"late").decode()}},
        )
        assert wait_for(partial(job_condition, api, kube_namespace, "needs-secret")) == "Complete"


def test_pod_waiting_for_a_secret_outlasts_an_api_server_restart(
    real_kube_cluster: RealKube, kube_namespace: str, node: KubeNode
) -> None:
    """The node reads a Pod's Secrets through an API server that is away, as a kubelet does:
    the restart is waited out, not recorded as the Pod's end (the fixture checks errors)."""
    with real_kube_cluster.api_client() as api:
        batch: Any = kubernetes.client.BatchV1Api(api)
        core: Any = kubernetes.client.CoreV1Api(api)
        job = shell_job(
            "outage",
            'test "$KEY" = back',
            env=[{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "after", "key": "k"}}}],
        )
        batch.create_namespaced_job(kube_namespace, job)

        def waiting() -> bool:
            pods = core.list_namespaced_pod(kube_namespace, label_selector="job-name=outage")
            return any(
                status.state.waiting is not None
                and status.state.waiting.reason == "CreateContainerConfigError"
                for pod in pods.items
                for status in pod.status.container_statuses or []
            )

        assert wait_for(waiting)
        real_kube_cluster.restart_api_server(down_for=3.0)  # refused for 3 s: many reads
        core.create_namespaced_secret(
            kube_namespace,
            {"metadata": {"name": "after"}, "data": {"k": base64.b64encode(b"back").decode()}},
        )
        assert wait_for(partial(job_condition, api, kube_namespace, "outage")) == "Complete"
