"""One namespace of the real loopback cluster made ready for lamina's data movers: the
VolumeSnapshot CRDs, a StorageClass and VolumeSnapshotClass for a test CSI driver, the CSI
stand-in (kube_csi.py) and a test node (kube_node.py) for that namespace; and small helpers
around them (an image with data, an S3 Secret, the local file behind a PVC).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes

from tests.support.kube_cluster import RealKube
from tests.support.kube_csi import (
    TEST_DRIVER,
    TEST_SNAPSHOT_CLASS,
    TEST_STORAGE_CLASS,
    CsiStandIn,
    ensure_classes,
    install_snapshot_crds,
)
from tests.support.kube_node import KubeNode
from tests.support.seaweedfs import S3Server

MiB = 1 << 20


@dataclass
class Cluster:
    real: RealKube
    namespace: str
    node: KubeNode
    csi: CsiStandIn
    api: Any
    folder: Path  # for images outside /tmp's mapping: the pods' /tmp is their scratch volume


@contextmanager
def cluster_parts(
    real: RealKube, namespace: str, folder: Path, driver: str = TEST_DRIVER
) -> Iterator[Cluster]:
    """CRDs and classes for `driver`, its CSI stand-in and a test node, for one namespace."""
    with real.api_client() as api:
        install_snapshot_crds(api)
        ensure_classes(api, driver, *classes_of(driver))
        csi = CsiStandIn(real.kubeconfig, folder / "csi", [namespace], driver=driver)
        node = KubeNode(
            real.kubeconfig, folder / "node", name=f"node-{namespace}", namespaces=[namespace]
        )
        with csi, node:
            yield Cluster(real, namespace, node, csi, api, folder)
        assert node.errors == [] and csi.errors == []


def classes_of(driver: str) -> tuple[str, str]:
    """(StorageClass, VolumeSnapshotClass) of a test driver."""
    if driver == TEST_DRIVER:
        return TEST_STORAGE_CLASS, TEST_SNAPSHOT_CLASS
    return f"{driver}-sc", f"{driver}-snapclass"


def volume_image(path: Path, size: int = 4 * MiB) -> bytes:
    """An image with data, zeros and a hole, so that a wrong restore shows."""
    data = bytearray(size)
    data[: MiB // 2] = os.urandom(MiB // 2)
    data[2 * MiB : 2 * MiB + 4096] = b"lamina!\n" * 512
    path.write_bytes(bytes(data))
    return bytes(data)


def local_path_of(api: Any, namespace: str, pvc: str) -> Path:
    """The image file (or folder) behind a PVC of the CSI stand-in."""
    core: Any = kubernetes.client.CoreV1Api(api)
    claim = core.read_namespaced_persistent_volume_claim(pvc, namespace)
    return Path(core.read_persistent_volume(claim.spec.volume_name).spec.csi.volume_handle)


def s3_secret(api: Any, namespace: str, server: S3Server, name: str = "lamina-s3") -> str:
    core: Any = kubernetes.client.CoreV1Api(api)
    data = {k: base64.b64encode(v.encode()).decode() for k, v in server.environment().items()}
    core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "data": data})
    return name
