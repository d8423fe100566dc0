"""deploy/rbac.yaml is the data mover's least privilege, on the real API server: a data-mover
run with changed-block tracking, whose ServiceAccount has ONLY the rights of deploy/rbac.yaml,
succeeds; the API server's audit log shows every request it made was allowed, and that the
Roles grant nothing it did not use.

The CBT service is lamina's own SnapshotMetadata server (backend/cbt/server.py) over the
snapshots of the CSI stand-in (tests/support/kube_csi.py), with TLS, announced by a
SnapshotMetadataService as a CSI driver's sidecar is.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from lamina.backend.cbt.server import start_server
from lamina.backend.kube.datamover import DEFAULT_SERVICE_ACCOUNT
from lamina.backend.service import KubeSession, Service
from lamina.backend.service.service import init_repository
from tests.support.fake_kube import make_tls_files
from tests.support.kube_cluster import REPO_ROOT, RealKube
from tests.support.kube_objects import block_pv_and_claim
from tests.support.kube_rbac import accesses, granted, least_privilege
from tests.support.kube_stack import classes_of, cluster_parts, s3_secret, volume_image
from tests.support.seaweedfs import S3Server

CBT_DRIVER = "cbt.hostpath.csi.lamina.test"
CBT_AUDIENCE = "lamina-test-cbt"


def deploy_rbac(namespace: str) -> list[dict[str, Any]]:
    """deploy/rbac.yaml with its example namespace replaced by `namespace`."""
    docs = [d for d in yaml.safe_load_all((REPO_ROOT / "deploy" / "rbac.yaml").read_text()) if d]
    example = next(d["metadata"]["namespace"] for d in docs if d["kind"] == "ServiceAccount")
    for doc in docs:
        if doc["metadata"].get("namespace") == example:
            doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", []):
            subject["namespace"] = namespace
        if doc["kind"] == "ClusterRoleBinding":
            doc["metadata"]["name"] = doc["metadata"]["name"].replace(example, namespace)
    return docs


def apply(api: Any, docs: list[dict[str, Any]]) -> None:
    core: Any = kubernetes.client.CoreV1Api(api)
    rbac: Any = kubernetes.client.RbacAuthorizationV1Api(api)
    for doc in docs:
        kind, name, ns = doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace")
        if kind == "ServiceAccount":
            core.create_namespaced_service_account(ns, doc)
        elif kind == "Role":
            rbac.create_namespaced_role(ns, doc)
        elif kind == "RoleBinding":
            rbac.create_namespaced_role_binding(ns, doc)
        elif kind == "ClusterRoleBinding":
            rbac.create_cluster_role_binding(doc)
        else:  # the ClusterRole is the cluster's, shared by the tests: this file's version
            try:
                rbac.replace_cluster_role(name, doc)
            except kubernetes.client.ApiException as error:
                if error.status != 404:
                    raise
                rbac.create_cluster_role(doc)


def test_datamover_with_cbt_needs_exactly_the_rights_of_deploy_rbac(
    real_kube_cluster: RealKube, kube_namespace: str, s3_env: S3Server, tmp_path: Path
) -> None:
    tls = make_tls_files(tmp_path / "cbt-tls", "cbt")
    with (
        cluster_parts(real_kube_cluster, kube_namespace, tmp_path, CBT_DRIVER) as cluster,
        start_server(
            cluster.csi.local.root,
            tls_cert_pem=tls.cert_path.read_bytes(),
            tls_key_pem=tls.key_path.read_bytes(),
        ) as cbt,
    ):
        custom: Any = kubernetes.client.CustomObjectsApi(cluster.api)
        service_body: dict[str, Any] = {
            "apiVersion": "cbt.storage.k8s.io/v1beta1",
            "kind": "SnapshotMetadataService",
            "metadata": {"name": CBT_DRIVER},
            "spec": {
                "address": cbt.address,
                "audience": CBT_AUDIENCE,
                "caCert": base64.b64encode(tls.ca_pem).decode(),
            },
        }
        try:
            custom.create_cluster_custom_object(
                "cbt.storage.k8s.io", "v1beta1", "snapshotmetadataservices", service_body
            )
        except kubernetes.client.ApiException as error:
            assert error.status == 409
            current = custom.get_cluster_custom_object(
                "cbt.storage.k8s.io", "v1beta1", "snapshotmetadataservices", CBT_DRIVER
            )
            service_body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            custom.replace_cluster_custom_object(
                "cbt.storage.k8s.io",
                "v1beta1",
                "snapshotmetadataservices",
                CBT_DRIVER,
                service_body,
            )
        original = volume_image(tmp_path / "data.img")
        storage_class, _ = classes_of(CBT_DRIVER)
        block_pv_and_claim(
            cluster.api, kube_namespace, "data", tmp_path / "data.img",
            storage_class=storage_class, driver=CBT_DRIVER,
        )  # fmt: skip
        docs = deploy_rbac(kube_namespace)
        apply(cluster.api, docs)
        secret = s3_secret(cluster.api, kube_namespace, s3_env)
        repo = f"s3://{s3_env.create_bucket()}/repo"
        init_repository(repo)

        with KubeSession.open(kubeconfig=str(real_kube_cluster.kubeconfig)) as session:
            spec = session.datamover_spec(
                kube_namespace, "data", repo,
                snapshot=None, snapshot_class=None, image="lamina:latest",
                service_account=DEFAULT_SERVICE_ACCOUNT, cluster_name="real",
                env_secret=secret, password_secret=None, backup_args=(), use_cbt=True,
            )  # fmt: skip
            assert spec.cbt_address == cbt.address
            session.submit_datamover(
                spec, create_rbac=False, snapshot_timeout=60, job_timeout=120,
                poll=0.2, keep_source_pvc=False,
            )  # fmt: skip

        service = Service(repo)
        (point,) = service.list_points()
        restored = tmp_path / "restored.img"
        job = service.start_restore(point.id, str(restored))
        assert job.wait(60) and job.error is None
        service.close()
        assert restored.read_bytes() == original

    user = f"system:serviceaccount:{kube_namespace}:{DEFAULT_SERVICE_ACCOUNT}"
    used = accesses(real_kube_cluster.audit_events(user))
    assert used, "the data mover made no API request"
    refused = {str(a): codes for a, codes in used.items() if any(c >= 400 for c in codes)}
    assert refused == {}
    missing, unused = least_privilege(used, granted(docs, kube_namespace, DEFAULT_SERVICE_ACCOUNT))
    assert missing == set()
    assert sorted(map(str, unused)) == []
