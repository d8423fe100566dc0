"""The loopback control plane that the controller tests run against is a real one."""

from __future__ import annotations

import kubernetes
import pytest

from tests.support.kube_cluster import RealKube


def test_real_api_server_answers_and_keeps_optimistic_concurrency(
    real_kube_cluster: RealKube, kube_namespace: str
) -> None:
    with real_kube_cluster.api_client() as api:
        version = kubernetes.client.VersionApi(api).get_code()
        assert version.major == "1" and version.minor.startswith("20")
        leases = kubernetes.client.CoordinationV1Api(api)
        body = kubernetes.client.V1Lease(
            metadata=kubernetes.client.V1ObjectMeta(name="probe"),
            spec=kubernetes.client.V1LeaseSpec(holder_identity="a"),
        )
        created = leases.create_namespaced_lease(kube_namespace, body)
        assert created.metadata is not None and created.spec is not None
        stale = created.metadata.resource_version
        created.spec.holder_identity = "b"
        leases.replace_namespaced_lease("probe", kube_namespace, created)
        created.metadata.resource_version = stale
        created.spec.holder_identity = "c"
        with pytest.raises(kubernetes.client.ApiException) as conflict:
            leases.replace_namespaced_lease("probe", kube_namespace, created)
        assert conflict.value.status == 409
