"""Objects that tests create in the real loopback cluster, as a real cluster would have them.

- ``block_pv_and_claim``: a static CSI PersistentVolume of the test driver whose volumeHandle
  is a local image file (``volumeMode: Block``), pre-bound to a PVC of that name, and the PVC;
  the real PV binder binds the two. The test node (kube_node.py) maps such a PVC to the image
  file.
- ``wait_for``: poll a condition until it holds (bounded), for the asynchronous controllers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import kubernetes

from tests.support.kube_csi import TEST_DRIVER, TEST_STORAGE_CLASS, csi_pv

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 60.0, interval: float = 0.1) -> T:
    """The first truthy value of `condition()`; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g} s: {condition}")
        time.sleep(interval)


def quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity the API server keeps exactly (Ki at least)."""
    return f"{max(1, -(-size // 1024))}Ki"


def block_pv_and_claim(
    api: Any,
    namespace: str,
    name: str,
    image: Path,
    *,
    storage_class: str = TEST_STORAGE_CLASS,
    driver: str = TEST_DRIVER,
    mode: str = "Block",
    claim: bool = True,
) -> str:
    """Create a static PV for the local `image` (file, or folder for Filesystem mode) pre-bound
    to PVC `namespace/name`, and (with `claim`) the PVC; wait until the binder binds them.
    Returns the PV's name."""
    core: Any = kubernetes.client.CoreV1Api(api)
    size = quantity(image.stat().st_size) if image.is_file() else "1Gi"
    pv_name = f"{namespace}-{name}"[:253]
    claim_ref = {"namespace": namespace, "name": name}
    core.create_persistent_volume(
        csi_pv(pv_name, image, size, mode, claim_ref, storage_class, driver)
    )
    if claim:
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "volumeMode": mode,
                    "storageClassName": storage_class,
                    "resources": {"requests": {"storage": size}},
                },
            },
        )
        wait_for(
            lambda: (
                core.read_namespaced_persistent_volume_claim(name, namespace).status.phase
                == "Bound"
            )
        )
    return pv_name
