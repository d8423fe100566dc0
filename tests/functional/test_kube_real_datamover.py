"""The data mover end to end on the REAL loopback API server: `lamina kube datamover --submit`
snapshots a block PVC backed by a local image file, the real Job controller runs the Job, the
test node (kube_node.py, the kubelet's stand-in) runs its `lamina backup` as a local process
into a SeaweedFS repository, and the point restores byte-identically.

The snapshot controller, the CSI provisioner and the driver are the test stand-in of
tests/support/kube_csi.py; the API server, the PV binder and the Job controller are real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from lamina.backend.catalog import HistoryQuery
from lamina.backend.service import KubeSession, Service, start_restore_to_pvc
from lamina.backend.service.recorder import read_history
from lamina.backend.service.service import init_repository
from tests.support.kube_cluster import RealKube
from tests.support.kube_csi import (
    TEST_STORAGE_CLASS,
)
from tests.support.kube_node import Fault
from tests.support.kube_objects import block_pv_and_claim, wait_for
from tests.support.kube_stack import (
    Cluster,
    cluster_parts,
    local_path_of,
    s3_secret,
    volume_image,
)
from tests.support.seaweedfs import S3Server, subprocess_environment

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]
MiB = 1 << 20


@pytest.fixture
def cluster(real_kube_cluster: RealKube, kube_namespace: str, tmp_path: Path) -> Iterator[Cluster]:
    with cluster_parts(real_kube_cluster, kube_namespace, tmp_path) as parts:
        yield parts


def lamina(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*LAMINA, *args], capture_output=True, text=True, env=env, timeout=180)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def fails(env: dict[str, str], *args: str) -> str:
    """Run a command that must fail with exactly one `lamina: error:` line; return it."""
    result = lamina(env, *args, ok=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("lamina: error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def test_datamover_backup_then_restore_to_new_pvcs_byte_identical(
    cluster: Cluster, s3_env: S3Server, tmp_path: Path
) -> None:
    original = volume_image(tmp_path / "data.img")
    block_pv_and_claim(cluster.api, cluster.namespace, "data", tmp_path / "data.img")
    secret = s3_secret(cluster.api, cluster.namespace, s3_env)
    repo = f"s3://{s3_env.create_bucket()}/repo"
    init_repository(repo)
    env = subprocess_environment(s3_env)

    result = lamina(
        env,
        "kube", "datamover", "data",
        "--kubeconfig", str(cluster.real.kubeconfig),
        "--namespace", cluster.namespace,
        "--repo", repo, "--env-secret", secret, "--cluster-name", "real",
        "--submit", "--poll", "0.2", "--timeout", "120",
    )  # fmt: skip
    assert "completed in" in result.stdout, result.stdout
    service = Service(repo)
    (point,) = service.list_points()
    assert str(point.volume) == f"real/{cluster.namespace}/data"

    # the real Job controller saw the Pod succeed; the PVC from the snapshot is gone again
    batch: Any = kubernetes.client.BatchV1Api(cluster.api)
    core: Any = kubernetes.client.CoreV1Api(cluster.api)
    (job,) = batch.list_namespaced_job(cluster.namespace).items
    assert job.status.succeeded == 1

    def claims() -> list[tuple[str, bool]]:
        listed = core.list_namespaced_persistent_volume_claim(cluster.namespace).items
        return [(c.metadata.name, c.metadata.deletion_timestamp is not None) for c in listed]

    # v1.20's pvc-protection keeps a claim while a Pod that used it exists, even a finished
    # one: the PVC from the snapshot is Terminating until the Job (kept for its logs) goes.
    source = f"lamina-source-{job.metadata.labels['lamina.io/snapshot']}"
    assert claims() == [("data", False), (source, True)]
    batch.delete_namespaced_job(
        job.metadata.name, cluster.namespace, propagation_policy="Background"
    )
    assert wait_for(lambda: claims() == [("data", False)])

    # restore --to-pvc: a new PVC, written by a restore Job, byte-identical; the Job is gone
    to_pvc = [
        "--repo", repo, "--kubeconfig", str(cluster.real.kubeconfig),
        "--storage-class", TEST_STORAGE_CLASS, "--env-secret", secret, "--poll", "0.2",
    ]  # fmt: skip
    short = point.id[:12]
    result = lamina(env, "restore", short, "--to-pvc", f"{cluster.namespace}/back", *to_pvc)
    assert f"into new PVC {cluster.namespace}/back (block mode" in result.stdout, result.stdout
    assert local_path_of(cluster.api, cluster.namespace, "back").read_bytes() == original
    assert batch.list_namespaced_job(cluster.namespace).items == []

    # an existing PVC is refused before anything is written or created
    before = local_path_of(cluster.api, cluster.namespace, "data").read_bytes()
    line = fails(env, "restore", point.id, "--to-pvc", f"{cluster.namespace}/data", *to_pvc)
    assert line == (
        f"lamina: error: PVC {cluster.namespace}/data already exists; restore --to-pvc creates "
        "a new PVC and writes nothing into an existing one (choose another name)"
    )
    assert local_path_of(cluster.api, cluster.namespace, "data").read_bytes() == before
    assert batch.list_namespaced_job(cluster.namespace).items == []

    # the service's function (what the controller calls for a Restore): filesystem mode, the
    # image file volume.img in a new Filesystem-mode PVC
    with KubeSession.open(kubeconfig=str(cluster.real.kubeconfig)) as session:
        job_of_service = start_restore_to_pvc(
            service, session, point.id, cluster.namespace, "files",
            repo=repo, storage_class=TEST_STORAGE_CLASS, mode="filesystem",
            env_secret=secret, poll=0.2,
        )  # fmt: skip
        assert job_of_service.wait(120)
    assert job_of_service.error is None
    assert job_of_service.result.mode == "filesystem"
    folder = local_path_of(cluster.api, cluster.namespace, "files")
    assert (folder / "volume.img").read_bytes() == original
    service.close()

    restores = read_history(HistoryQuery(kind="restore"))
    described = {r.description: r.state for r in restores}
    for name in ("back", "files"):
        assert described[f"restore {point.id} to PVC {cluster.namespace}/{name}"] == "succeeded"


def test_failed_restore_to_pvc_leaves_neither_job_nor_pvc(cluster: Cluster, tmp_path: Path) -> None:
    repo = str(cluster.folder / "repo")
    init_repository(repo)
    service = Service(repo)
    backup = service.start_backup(str(image_file(tmp_path / "small.img")), "real/apps/small")
    assert backup.wait(60) and backup.error is None
    (point,) = service.list_points()
    cluster.node.fault = lambda pod, container: Fault("fail", 3)
    with KubeSession.open(kubeconfig=str(cluster.real.kubeconfig)) as session:
        job = start_restore_to_pvc(
            service, session, point.id, cluster.namespace, "broken",
            repo=repo, storage_class=TEST_STORAGE_CLASS, poll=0.2,
        )  # fmt: skip
        assert job.wait(120)
    service.close()
    assert job.error is not None and "\n" not in job.error
    assert job.error.startswith(
        f"data-mover Job {cluster.namespace}/lamina-restore-broken failed: "
    ), job.error
    batch: Any = kubernetes.client.BatchV1Api(cluster.api)
    core: Any = kubernetes.client.CoreV1Api(cluster.api)
    assert wait_for(lambda: batch.list_namespaced_job(cluster.namespace).items == [])
    assert wait_for(
        lambda: core.list_namespaced_persistent_volume_claim(cluster.namespace).items == []
    )
    (record,) = [
        r
        for r in read_history(HistoryQuery(kind="restore"))
        if r.description == f"restore {point.id} to PVC {cluster.namespace}/broken"
    ]
    assert record.state == "failed" and record.error == job.error


def image_file(path: Path) -> Path:
    path.write_bytes(os.urandom(64 << 10) + bytes(64 << 10))
    return path
