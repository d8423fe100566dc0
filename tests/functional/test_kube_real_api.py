"""lamina's Kubernetes code against the REAL loopback API server (v1.20.2): what
tests/functional/test_kube_api.py checks against the fake server, where a real server can
show it. Contexts and reachability, namespaces and PVCs bound by the real PV binder, snapshots
made ready by the CSI stand-in (tests/support/kube_csi.py: the snapshot controller is not
Kubernetes code here), the SnapshotMetadataService lookup, real audience-scoped tokens from
TokenRequest (checked by a real TokenReview) and real RBAC refusals."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from lamina.backend.kube.cbt import cbt_endpoint, cbt_endpoint_for_snapshot
from lamina.backend.kube.cluster import KubeCluster
from lamina.backend.kube.config import check_reachability, list_clusters
from lamina.backend.kube.errors import (
    DriverWithoutCbt,
    FilesystemVolume,
    KubeConflict,
    KubeForbidden,
    KubeNotFound,
    KubeUnauthorized,
)
from lamina.backend.kube.snapshots import create_snapshot, delete_snapshot, get_snapshot
from lamina.backend.kube.volumes import list_namespaces, list_volumes
from tests.support.fake_kube import make_tls_files
from tests.support.kube_cluster import RealKube
from tests.support.kube_csi import (
    TEST_DRIVER,
    TEST_SNAPSHOT_CLASS,
    TEST_STORAGE_CLASS,
    CsiStandIn,
    ensure_classes,
    install_snapshot_crds,
)
from tests.support.kube_objects import block_pv_and_claim

AUDIENCE = "lamina-test-real-cbt"
META_DRIVER = "meta.hostpath.csi.lamina.test"  # a driver of these tests that offers CBT


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text
    return text


@pytest.fixture
def cluster(real_kube_cluster: RealKube) -> Iterator[KubeCluster]:
    with (
        real_kube_cluster.api_client() as api,
        KubeCluster.open(None, str(real_kube_cluster.kubeconfig)) as opened,
    ):
        install_snapshot_crds(api)
        ensure_classes(api)
        yield opened


@pytest.fixture
def csi(real_kube_cluster: RealKube, kube_namespace: str, tmp_path: Path) -> Iterator[CsiStandIn]:
    with CsiStandIn(real_kube_cluster.kubeconfig, tmp_path / "csi", [kube_namespace]) as stand_in:
        yield stand_in
    assert stand_in.errors == []


def image(path: Path, size: int = 1 << 20) -> Path:
    path.write_bytes(b"\1" * size)
    return path


def service_account_kubeconfig(real: RealKube, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig whose user is the ServiceAccount, with its legacy token Secret (v1.20)."""
    with real.api_client() as api:
        core: Any = kubernetes.client.CoreV1Api(api)
        from tests.support.kube_objects import wait_for

        secret_name = wait_for(
            lambda: (core.read_namespaced_service_account(name, namespace).secrets or [None])[0]
        ).name
        token = base64.b64decode(core.read_namespaced_secret(secret_name, namespace).data["token"])
    config = yaml.safe_load(real.kubeconfig.read_text())
    config["users"] = [{"name": "sa", "user": {"token": token.decode()}}]
    for context in config["contexts"]:
        context["context"]["user"] = "sa"
        context["context"]["namespace"] = namespace
    path.write_text(json.dumps(config))
    return path


def test_contexts_reachability_and_credentials(real_kube_cluster: RealKube, tmp_path: Path) -> None:
    config = yaml.safe_load(real_kube_cluster.kubeconfig.read_text())
    real_context = config["current-context"]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    config["clusters"].append({"name": "gone", "cluster": {"server": f"https://127.0.0.1:{port}"}})
    config["users"].append({"name": "wrong", "user": {"token": "not-a-token"}})
    config["contexts"] += [
        {"name": "gone", "context": {"cluster": "gone", "user": config["users"][0]["name"]}},
        {
            "name": "badtoken",
            "context": {"cluster": config["clusters"][0]["name"], "user": "wrong"},
        },
    ]
    path = tmp_path / "multi"
    path.write_text(json.dumps(config))
    clusters = list_clusters(str(path))
    assert sorted(c.name for c in clusters) == sorted([real_context, "gone", "badtoken", "local"])
    results = check_reachability(clusters, str(path), timeout=5.0)
    assert results[real_context].ok and results[real_context].detail == "v1.20.2"
    assert not results["gone"].ok and "refused" in results["gone"].detail.lower()
    assert not results["badtoken"].ok
    assert "rejected its credentials" in results["badtoken"].detail
    with KubeCluster.open("badtoken", str(path)) as bad, pytest.raises(KubeUnauthorized) as e:
        list_namespaces(bad)
    assert "rejected its credentials" in one_line(e.value)


def test_namespaces_and_volumes_bound_by_the_real_binder(
    cluster: KubeCluster, real_kube_cluster: RealKube, kube_namespace: str, tmp_path: Path
) -> None:
    with real_kube_cluster.api_client() as api:
        block_pv_and_claim(api, kube_namespace, "data", image(tmp_path / "data.img"))
        files = tmp_path / "files"
        files.mkdir()
        block_pv_and_claim(api, kube_namespace, "files", files, mode="Filesystem")
        core: Any = kubernetes.client.CoreV1Api(api)
        core.create_namespaced_persistent_volume_claim(
            kube_namespace,
            {
                "metadata": {"name": "waiting"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "volumeMode": "Block",
                    "storageClassName": "no-such-class",
                    "resources": {"requests": {"storage": "1Mi"}},
                },
            },
        )
    assert kube_namespace in list_namespaces(cluster)
    assert {"default", "kube-system"} <= set(list_namespaces(cluster))
    listing = list_volumes(cluster, kube_namespace)
    assert listing.notes == []
    volumes = {v.name: v for v in listing.volumes}
    assert sorted(volumes) == ["data", "files", "waiting"]
    data = volumes["data"]
    assert (data.volume_mode, data.phase, data.capacity, data.capacity_bytes) == (
        "Block",
        "Bound",
        "1Mi",  # the real server keeps the quantity as given, normalised (1024Ki -> 1Mi)
        1 << 20,
    )
    assert (data.storage_class, data.driver, data.cbt) == (TEST_STORAGE_CLASS, TEST_DRIVER, False)
    assert volumes["files"].volume_mode == "Filesystem"
    waiting = volumes["waiting"]
    assert (waiting.phase, waiting.driver, waiting.cbt, waiting.volume_name) == (
        "Pending",
        None,
        None,
        None,
    )
    with pytest.raises(FilesystemVolume):
        create_snapshot(cluster, kube_namespace, "files", timeout=5, poll=0.05)


def test_snapshot_ready_with_handle_and_size_then_deleted(
    cluster: KubeCluster, csi: CsiStandIn, real_kube_cluster: RealKube, kube_namespace: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    with real_kube_cluster.api_client() as api:
        block_pv_and_claim(api, kube_namespace, "data", image(tmp_path / "data.img"))
    info = create_snapshot(cluster, kube_namespace, "data", name="snap-1", timeout=30, poll=0.05)
    local = csi.local.snapshot(kube_namespace, "snap-1")
    assert (info.name, info.pvc, info.snapshot_class, info.driver) == (
        "snap-1",
        "data",
        TEST_SNAPSHOT_CLASS,
        TEST_DRIVER,
    )
    assert info.handle == local.handle and info.restore_size == 1 << 20
    with pytest.raises(KubeConflict) as e:
        create_snapshot(cluster, kube_namespace, "data", name="snap-1", timeout=5, poll=0.05)
    assert f'volumesnapshots "snap-1" already exists in namespace "{kube_namespace}"' in one_line(
        e.value
    )
    delete_snapshot(cluster, kube_namespace, "snap-1")
    with pytest.raises(KubeNotFound) as gone:
        get_snapshot(cluster, kube_namespace, "snap-1")
    assert f'volumesnapshots "snap-1" not found in namespace "{kube_namespace}"' in one_line(
        gone.value
    )


def test_cbt_endpoint_with_a_real_audience_scoped_token(
    cluster: KubeCluster, real_kube_cluster: RealKube, kube_namespace: str, tmp_path: Path
) -> None:
    ca_pem = make_tls_files(tmp_path / "tls", "cbt").ca_pem
    with real_kube_cluster.api_client() as api:
        ensure_classes(api, META_DRIVER, f"{META_DRIVER}-sc", f"{META_DRIVER}-snapclass")
        custom: Any = kubernetes.client.CustomObjectsApi(api)
        body = {
            "apiVersion": "cbt.storage.k8s.io/v1beta1",
            "kind": "SnapshotMetadataService",
            "metadata": {"name": META_DRIVER},
            "spec": {
                "address": "cbt.example:6443",
                "audience": AUDIENCE,
                "caCert": base64.b64encode(ca_pem).decode(),
            },
        }
        try:
            custom.create_cluster_custom_object(
                "cbt.storage.k8s.io", "v1beta1", "snapshotmetadataservices", body
            )
        except kubernetes.client.ApiException as error:
            assert error.status == 409
        core: Any = kubernetes.client.CoreV1Api(api)
        core.create_namespaced_service_account(kube_namespace, {"metadata": {"name": "backup"}})
        endpoint = cbt_endpoint(
            cluster, META_DRIVER, namespace=kube_namespace, service_account="backup"
        )
        assert (endpoint.address, endpoint.audience, endpoint.ca_pem) == (
            "cbt.example:6443",
            AUDIENCE,
            ca_pem,
        )
        assert endpoint.token not in repr(endpoint)
        # what the CBT sidecar does with it: a TokenReview for its audience
        auth: Any = kubernetes.client.AuthenticationV1Api(api)
        review = auth.create_token_review(
            {"spec": {"token": endpoint.token, "audiences": [AUDIENCE]}}
        )
        assert review.status.authenticated is True
        assert review.status.user.username == f"system:serviceaccount:{kube_namespace}:backup"
        wrong = auth.create_token_review(
            {"spec": {"token": endpoint.token, "audiences": ["someone-else"]}}
        )
        assert not wrong.status.authenticated
    with pytest.raises(DriverWithoutCbt):
        cbt_endpoint(cluster, TEST_DRIVER, namespace=kube_namespace, service_account="backup")
    with pytest.raises(Exception) as missing:
        cbt_endpoint_for_snapshot(cluster, kube_namespace, "nope", service_account="backup")
    assert "nope" in one_line(missing.value)


def test_rbac_refusals_name_the_real_user_verb_and_resource(
    cluster: KubeCluster, real_kube_cluster: RealKube, kube_namespace: str, tmp_path: Path
) -> None:
    with real_kube_cluster.api_client() as api:
        block_pv_and_claim(api, kube_namespace, "data", image(tmp_path / "data.img"))
        core: Any = kubernetes.client.CoreV1Api(api)
        rbac: Any = kubernetes.client.RbacAuthorizationV1Api(api)
        core.create_namespaced_service_account(kube_namespace, {"metadata": {"name": "viewer"}})
        rbac.create_namespaced_role(
            kube_namespace,
            {
                "metadata": {"name": "pvcs-only"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["persistentvolumeclaims"],
                        "verbs": ["get", "list"],
                    }
                ],
            },
        )
        rbac.create_namespaced_role_binding(
            kube_namespace,
            {
                "metadata": {"name": "viewer"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "pvcs-only",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "viewer", "namespace": kube_namespace}
                ],
            },
        )
    path = service_account_kubeconfig(real_kube_cluster, kube_namespace, "viewer", tmp_path / "kc")
    user = f"system:serviceaccount:{kube_namespace}:viewer"
    with KubeCluster.open(None, str(path)) as viewer:
        # PVCs of its namespace: yes; PVs, StorageClasses, CBT services (cluster scope): no
        listing = list_volumes(viewer, kube_namespace)
        assert [v.name for v in listing.volumes] == ["data"]
        assert listing.volumes[0].cbt is None  # unknown, not "no"
        assert any("list persistentvolumes at cluster scope" in n for n in listing.notes)
        with pytest.raises(KubeForbidden) as e:
            list_volumes(viewer, "default")
        assert one_line(e.value) == (
            f'RBAC forbids user "{user}" to list persistentvolumeclaims in namespace "default" '
            f"(context {viewer.context!r})"
        )
        with pytest.raises(KubeForbidden) as e:
            create_snapshot(viewer, kube_namespace, "data", name="x", timeout=5, poll=0.05)
        assert f'RBAC forbids user "{user}"' in one_line(e.value)
