"""Installs lamina's CRDs (backend/kube/crds.py) into a real API server, as `kubectl apply
-f deploy/crds.yaml` would, and waits until the server serves them."""

from __future__ import annotations

import time
from typing import Any, cast

import kubernetes

from lamina.backend.kube.crds import crd_manifests

ESTABLISH_TIMEOUT = 60.0


def install_crds(api: Any) -> None:
    """Create (or replace) every lamina CRD and wait until each is Established."""
    extensions = kubernetes.client.ApiextensionsV1Api(api)
    for manifest in crd_manifests():
        name = manifest["metadata"]["name"]
        try:
            extensions.create_custom_resource_definition(cast(Any, manifest))
        except kubernetes.client.ApiException as error:
            if error.status != 409:
                raise
            current: Any = extensions.read_custom_resource_definition(name)
            manifest = {
                **manifest,
                "metadata": {
                    **manifest["metadata"],
                    "resourceVersion": current.metadata.resource_version,
                },
            }
            extensions.replace_custom_resource_definition(name, cast(Any, manifest))
    deadline = time.monotonic() + ESTABLISH_TIMEOUT
    for manifest in crd_manifests():
        name = manifest["metadata"]["name"]
        while True:
            crd: Any = extensions.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            if conditions.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} was not established within {ESTABLISH_TIMEOUT} s")
            time.sleep(0.1)
