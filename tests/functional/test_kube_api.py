"""lamina's Kubernetes code through the real `kubernetes` client, over real HTTP, against the
fake API server of tests/support/fake_kube.py (a test double: no real API server runs here)."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.backend.errors import UsageError
from lamina.backend.kube.cbt import (
    cbt_endpoint,
    cbt_endpoint_for_snapshot,
    find_metadata_service,
    request_token,
)
from lamina.backend.kube.cluster import KubeCluster
from lamina.backend.kube.config import check_reachability, list_clusters
from lamina.backend.kube.datamover import (
    ensure_rbac,
    prepare_spec,
    rbac_manifests,
    submit_datamover,
)
from lamina.backend.kube.errors import (
    ClusterUnreachable,
    DataMoverFailed,
    DriverWithoutCbt,
    FilesystemVolume,
    KubeConflict,
    KubeForbidden,
    KubeInvalid,
    KubeNotFound,
    KubeUnauthorized,
    NoSnapshotClass,
    NoSuchContext,
    SnapshotFailed,
    SnapshotTimeout,
    VolumeNotBound,
)
from lamina.backend.kube.snapshots import create_snapshot, delete_snapshot, get_snapshot
from lamina.backend.kube.volumes import get_volume, list_namespaces, list_volumes
from tests.support.fake_kube import (
    CBT_ADDRESS,
    CBT_AUDIENCE,
    CBT_DRIVER,
    OTHER_DRIVER,
    FakeKube,
    make_tls_files,
    run_fake_kube,
    seed_standard_cluster,
)

POLL = 0.05


@pytest.fixture
def cbt_ca(tmp_path: Path) -> bytes:
    return make_tls_files(tmp_path / "cbt-ca", "cbt-service").ca_pem


@pytest.fixture
def fake(cbt_ca: bytes) -> Iterator[FakeKube]:
    with run_fake_kube() as server:
        seed_standard_cluster(server, cbt_ca)
        yield server


@pytest.fixture
def kubeconfig(fake: FakeKube, tmp_path: Path) -> str:
    return str(fake.write_kubeconfig(tmp_path / "kubeconfig", context="fake"))


@pytest.fixture
def cluster(kubeconfig: str) -> Iterator[KubeCluster]:
    with KubeCluster.open("fake", kubeconfig, timeout=5) as c:
        yield c


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text
    return text


# ----- clusters and reachability --------------------------------------------------------------


def test_reachability_ok_refused_timeout_and_bad_token(fake: FakeKube, tmp_path: Path) -> None:
    good = fake.kubeconfig("good")
    refused_port = socket.socket()
    refused_port.bind(("127.0.0.1", 0))
    closed = refused_port.getsockname()[1]
    refused_port.close()
    # a server that accepts connections and never answers
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    docs = [
        good,
        {
            **fake.kubeconfig("refused"),
            "clusters": [
                {"name": "refused-cluster", "cluster": {"server": f"http://127.0.0.1:{closed}"}}
            ],
        },
        {
            **fake.kubeconfig("silent"),
            "clusters": [
                {
                    "name": "silent-cluster",
                    "cluster": {"server": f"http://127.0.0.1:{silent.getsockname()[1]}"},
                }
            ],
        },
        {
            **fake.kubeconfig("badtoken"),
            "users": [{"name": "badtoken-user", "user": {"token": "wrong"}}],
        },
    ]
    merged = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [c for d in docs for c in d["clusters"]],
        "users": [u for d in docs for u in d["users"]],
        "contexts": [c for d in docs for c in d["contexts"]],
        "current-context": "good",
    }
    path = tmp_path / "multi"
    path.write_text(json.dumps(merged))  # JSON is YAML too
    try:
        clusters = list_clusters(str(path))
        assert [c.name for c in clusters] == ["badtoken", "good", "refused", "silent", "local"]
        start = time.monotonic()
        results = check_reachability(clusters, str(path), timeout=1.0)
        elapsed = time.monotonic() - start
    finally:
        silent.close()
    # side by side, bounded by the 1 s timeout: seconds, never a client default of minutes
    assert elapsed < 20.0, f"the checks took {elapsed:.1f}s"
    assert "local" not in results
    assert results["good"].ok and results["good"].detail == "v1.34.0+fake"
    assert not results["refused"].ok and "refused" in results["refused"].detail.lower()
    assert not results["silent"].ok and "timed out" in results["silent"].detail
    assert results["silent"].seconds >= 0.9
    assert not results["badtoken"].ok and "rejected its credentials" in results["badtoken"].detail
    for r in results.values():
        assert "\n" not in r.detail


def test_errors_for_context_and_credentials(
    fake: FakeKube, kubeconfig: str, tmp_path: Path
) -> None:
    with pytest.raises(NoSuchContext, match="no context 'prod'"):
        KubeCluster.open("prod", kubeconfig)
    bad = fake.kubeconfig("fake")
    bad["users"][0]["user"]["token"] = "not-the-token"
    path = tmp_path / "bad"
    path.write_text(json.dumps(bad))
    with KubeCluster.open(None, str(path)) as c, pytest.raises(KubeUnauthorized) as e:
        list_namespaces(c)
    assert "rejected its credentials" in one_line(e.value)


def test_silent_server_costs_seconds_not_minutes(fake: FakeKube, tmp_path: Path) -> None:
    """A server that takes connections and never answers costs one timeout and one retry: two
    connections of `timeout` each, counted by the server, never the client's minutes."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    silent.settimeout(0.1)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def take_and_keep_quiet() -> None:
        while not done.is_set():
            try:
                accepted.append(silent.accept()[0])
            except TimeoutError:
                continue

    taker = threading.Thread(target=take_and_keep_quiet, daemon=True)
    taker.start()
    doc = fake.kubeconfig("silent")
    doc["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{silent.getsockname()[1]}"
    path = tmp_path / "silent"
    path.write_text(json.dumps(doc))
    try:
        with (
            KubeCluster.open(None, str(path), timeout=0.5) as c,
            pytest.raises(ClusterUnreachable) as e,
        ):
            list_volumes(c)
    finally:
        done.set()
        taker.join()
        for connection in accepted:
            connection.close()
        silent.close()
    assert len(accepted) == 2  # one try and one retry, each bounded by the 0.5 s timeout
    assert one_line(e.value).endswith("is unreachable: no answer (read timed out)")


def test_tls_cluster_with_certificate_authority_data(tmp_path: Path) -> None:
    with run_fake_kube(tls_dir=tmp_path / "tls") as server:
        assert server.url.startswith("https://")
        path = str(server.write_kubeconfig(tmp_path / "config"))
        with KubeCluster.open(None, path) as c:
            assert c.server_version() == "v1.34.0+fake"
        # a client that does not trust the fake's CA refuses it
        untrusting = server.kubeconfig()
        untrusting["clusters"][0]["cluster"].pop("certificate-authority-data")
        other = tmp_path / "untrusting"
        other.write_text(json.dumps(untrusting))
        with (
            KubeCluster.open(None, str(other), timeout=3, retries=0) as c,
            pytest.raises(ClusterUnreachable) as e,
        ):
            c.server_version()
        assert "certificate" in one_line(e.value).lower()


# ----- namespaces and volumes -------------------------------------------------------------------


def test_namespaces_and_volumes(cluster: KubeCluster, fake: FakeKube) -> None:
    assert list_namespaces(cluster) == ["apps", "default", "kube-system"]
    listing = list_volumes(cluster)
    assert listing.notes == []
    volumes = {(v.namespace, v.name): v for v in listing.volumes}
    assert list(volumes) == [
        ("apps", "data"),
        ("apps", "files"),
        ("apps", "waiting"),
        ("default", "plain"),
    ]
    data = volumes["apps", "data"]
    pv = fake.get("persistentvolumes", data.volume_name or "")
    assert pv is not None and pv["spec"]["csi"]["driver"] == CBT_DRIVER
    assert (data.volume_mode, data.phase, data.capacity, data.capacity_bytes) == (
        "Block",
        "Bound",
        "64Mi",
        64 << 20,
    )
    assert (data.storage_class, data.driver, data.cbt) == ("csi-hostpath-sc", CBT_DRIVER, True)
    assert volumes["apps", "files"].volume_mode == "Filesystem"
    waiting = volumes["apps", "waiting"]
    assert (waiting.phase, waiting.driver, waiting.cbt, waiting.volume_name) == (
        "Pending",
        None,
        None,
        None,
    )
    plain = volumes["default", "plain"]
    assert (plain.driver, plain.cbt) == (OTHER_DRIVER, False)
    only_default = list_volumes(cluster, "default").volumes
    assert [v.name for v in only_default] == ["plain"]
    assert json.loads(json.dumps(data.as_json()))["driver"] == CBT_DRIVER


def test_quantities_are_stored_canonical_as_a_real_server_does(
    cluster: KubeCluster, fake: FakeKube
) -> None:
    # test_kube_real_api.py sees the real v1.20 server turn a 1024Ki request into 1Mi
    fake.add_pvc("apps", "odd", size="1024Ki")
    fake.add_pvc("apps", "uneven", size="1536Ki")
    volumes = {v.name: v for v in list_volumes(cluster, "apps").volumes}
    assert (volumes["odd"].capacity, volumes["odd"].capacity_bytes) == ("1Mi", 1 << 20)
    assert volumes["uneven"].capacity == "1536Ki"


def test_driver_from_the_bound_volume_beats_the_storage_class(
    cluster: KubeCluster, fake: FakeKube
) -> None:
    # The StorageClass now names another provisioner; the PV keeps the driver it was made by.
    with fake._lock:
        fake._store["storageclasses"][("", "csi-hostpath-sc")]["provisioner"] = (
            "changed.example.com"
        )
    volumes = {v.name: v for v in list_volumes(cluster, "apps").volumes}
    assert volumes["data"].driver == CBT_DRIVER
    assert get_volume(cluster, "apps", "data").driver == CBT_DRIVER


def test_volumes_without_cluster_scope_rights(cluster: KubeCluster, fake: FakeKube) -> None:
    fake.forbid("list", "persistentvolumes")
    fake.forbid("list", "snapshotmetadataservices")
    listing = list_volumes(cluster, "apps")
    data = next(v for v in listing.volumes if v.name == "data")
    assert data.driver == CBT_DRIVER  # from the StorageClass
    assert data.cbt is None  # unknown, not "no"
    assert len(listing.notes) == 2
    assert any("list persistentvolumes at cluster scope" in n for n in listing.notes)
    assert any("changed-block tracking unknown" in n for n in listing.notes)


def test_forbidden_listing_names_verb_resource_namespace(
    cluster: KubeCluster, fake: FakeKube
) -> None:
    fake.forbid("list", "persistentvolumeclaims", "apps")
    with pytest.raises(KubeForbidden) as e:
        list_volumes(cluster, "apps")
    assert one_line(e.value) == (
        'RBAC forbids user "kubernetes-admin" to list persistentvolumeclaims in namespace "apps" '
        "(context 'fake')"
    )
    assert [v.name for v in list_volumes(cluster, "default").volumes] == ["plain"]


def test_missing_cbt_crd_means_no_cbt(cluster: KubeCluster, fake: FakeKube) -> None:
    fake.serve_cbt_crd = False
    volumes = {v.name: v for v in list_volumes(cluster, "apps").volumes}
    assert volumes["data"].cbt is False
    with pytest.raises(DriverWithoutCbt):
        find_metadata_service(cluster, CBT_DRIVER)


# ----- snapshots --------------------------------------------------------------------------------


def test_snapshot_becomes_ready_with_handle_and_size(cluster: KubeCluster, fake: FakeKube) -> None:
    fake.snapshot_ready_delay = 0.3
    start = time.monotonic()
    info = create_snapshot(cluster, "apps", "data", name="data-snap-1", timeout=10, poll=POLL)
    assert time.monotonic() - start >= 0.3
    stored = fake.get("volumesnapshots", "data-snap-1", "apps")
    assert (
        stored is not None and stored["spec"]["volumeSnapshotClassName"] == "csi-hostpath-snapclass"
    )
    content = fake.get("volumesnapshotcontents", stored["status"]["boundVolumeSnapshotContentName"])
    assert content is not None
    assert info.handle == content["status"]["snapshotHandle"] and info.handle.startswith("snap-")
    assert info.restore_size == content["status"]["restoreSize"] == 64 << 20
    assert (info.driver, info.pvc, info.snapshot_class) == (
        CBT_DRIVER,
        "data",
        "csi-hostpath-snapclass",
    )
    assert info.content_name == content["metadata"]["name"]
    assert get_snapshot(cluster, "apps", "data-snap-1") == info
    # the same name again: the API server's 409, named
    with pytest.raises(KubeConflict) as e:
        create_snapshot(cluster, "apps", "data", name="data-snap-1", timeout=5, poll=POLL)
    assert one_line(e.value) == (
        'volumesnapshots "data-snap-1" already exists in namespace "apps" (context \'fake\')'
    )


def test_snapshot_class_choice(cluster: KubeCluster, fake: FakeKube) -> None:
    fake.add_snapshot_class("second", CBT_DRIVER)
    fake.add_snapshot_class("foreign", OTHER_DRIVER)
    info = create_snapshot(
        cluster, "apps", "data", name="s-explicit", snapshot_class="second", timeout=5, poll=POLL
    )
    assert info.snapshot_class == "second"
    with pytest.raises(NoSnapshotClass, match=r"is for driver 'other\.csi\.example\.com'"):
        create_snapshot(cluster, "apps", "data", snapshot_class="foreign", timeout=5, poll=POLL)
    with pytest.raises(NoSnapshotClass, match="no VolumeSnapshotClass named 'nope'"):
        create_snapshot(cluster, "apps", "data", snapshot_class="nope", timeout=5, poll=POLL)
    # two classes and no default: lamina does not guess
    fake.add_snapshot_class("third", CBT_DRIVER)
    with fake._lock:
        del fake._store["volumesnapshotclasses"][("", "csi-hostpath-snapclass")]
    with pytest.raises(NoSnapshotClass, match="none is marked default"):
        create_snapshot(cluster, "apps", "data", timeout=5, poll=POLL)


def test_snapshot_refusals(cluster: KubeCluster) -> None:
    with pytest.raises(FilesystemVolume) as fs:
        create_snapshot(cluster, "apps", "files", timeout=5, poll=POLL)
    assert "lamina backs up block volumes" in one_line(fs.value)
    with pytest.raises(VolumeNotBound, match="apps/waiting is Pending"):
        create_snapshot(cluster, "apps", "waiting", timeout=5, poll=POLL)
    with pytest.raises(
        NoSnapshotClass, match=r"no VolumeSnapshotClass for CSI driver 'other\.csi\.example\.com'"
    ):
        create_snapshot(cluster, "default", "plain", timeout=5, poll=POLL)
    with pytest.raises(KubeNotFound) as e:
        create_snapshot(cluster, "apps", "ghost", timeout=5, poll=POLL)
    assert (
        one_line(e.value)
        == 'persistentvolumeclaims "ghost" not found in namespace "apps" (context \'fake\')'
    )


def test_snapshot_timeout_leaves_it_and_says_so(cluster: KubeCluster, fake: FakeKube) -> None:
    fake.snapshot_mode = "stuck"
    start = time.monotonic()
    with pytest.raises(SnapshotTimeout) as e:
        create_snapshot(cluster, "apps", "data", name="stuck-1", timeout=0.5, poll=POLL)
    assert 0.5 <= time.monotonic() - start < 20  # waited for its timeout, not for ever
    assert "not ready within 0.5 s" in one_line(e.value)
    assert "lamina kube delete-snapshot" in str(e.value)
    assert fake.get("volumesnapshots", "stuck-1", "apps") is not None


def test_snapshot_error_is_reported(cluster: KubeCluster, fake: FakeKube) -> None:
    fake.snapshot_mode = "fail"
    fake.snapshot_error = "Failed to create snapshot: quota exceeded"
    with pytest.raises(SnapshotFailed) as e:
        create_snapshot(cluster, "apps", "data", name="bad-1", timeout=5, poll=POLL)
    assert (
        one_line(e.value)
        == "VolumeSnapshot apps/bad-1 failed: Failed to create snapshot: quota exceeded"
    )


def test_snapshot_forbidden_and_delete(cluster: KubeCluster, fake: FakeKube) -> None:
    fake.forbid("create", "volumesnapshots", "apps")
    with pytest.raises(KubeForbidden) as e:
        create_snapshot(cluster, "apps", "data", name="nope", timeout=5, poll=POLL)
    assert 'to create volumesnapshots "nope" in namespace "apps"' in one_line(e.value)
    fake.allow_all()
    info = create_snapshot(cluster, "apps", "data", name="to-delete", timeout=5, poll=POLL)
    assert fake.get("volumesnapshotcontents", info.content_name) is not None
    delete_snapshot(cluster, "apps", "to-delete")
    assert fake.get("volumesnapshots", "to-delete", "apps") is None
    assert fake.get("volumesnapshotcontents", info.content_name) is None  # deletionPolicy Delete
    with pytest.raises(KubeNotFound, match='volumesnapshots "to-delete" not found'):
        delete_snapshot(cluster, "apps", "to-delete")


# ----- CBT endpoint -------------------------------------------------------------------------------


def test_cbt_endpoint_with_audience_scoped_token(
    cluster: KubeCluster, fake: FakeKube, cbt_ca: bytes
) -> None:
    endpoint = cbt_endpoint(cluster, CBT_DRIVER, namespace="apps", service_account="backup")
    assert (endpoint.address, endpoint.audience, endpoint.ca_pem) == (
        CBT_ADDRESS,
        CBT_AUDIENCE,
        cbt_ca,
    )
    assert endpoint.token not in repr(endpoint)
    issued = fake.issued_tokens[endpoint.token]
    assert (issued.namespace, issued.service_account, issued.audiences) == (
        "apps",
        "backup",
        [CBT_AUDIENCE],
    )
    assert 590 <= issued.expires - time.time() <= 600
    # what the CBT service would do with it: a TokenReview for its audience
    with fake._lock:
        review = fake._token_review(
            {"spec": {"token": endpoint.token, "audiences": [CBT_AUDIENCE]}}
        )
        wrong = fake._token_review(
            {"spec": {"token": endpoint.token, "audiences": ["someone-else"]}}
        )
    assert review["status"]["authenticated"] is True
    assert review["status"]["user"]["username"] == "system:serviceaccount:apps:backup"
    assert wrong["status"]["authenticated"] is False
    # the same through the snapshot's content
    create_snapshot(cluster, "apps", "data", name="for-cbt", timeout=5, poll=POLL)
    via_snapshot = cbt_endpoint_for_snapshot(cluster, "apps", "for-cbt", service_account="backup")
    assert via_snapshot.address == CBT_ADDRESS and via_snapshot.token != endpoint.token


def test_cbt_endpoint_errors(cluster: KubeCluster, fake: FakeKube) -> None:
    with pytest.raises(DriverWithoutCbt) as e:
        cbt_endpoint(cluster, OTHER_DRIVER, namespace="apps", service_account="backup")
    assert "offers no changed-block tracking" in one_line(e.value)
    with pytest.raises(KubeNotFound, match='serviceaccounts "ghost" not found in namespace "apps"'):
        cbt_endpoint(cluster, CBT_DRIVER, namespace="apps", service_account="ghost")
    with pytest.raises(KubeInvalid) as invalid:
        request_token(cluster, "apps", "backup", CBT_AUDIENCE, expiry_seconds=60)
    assert "may not specify a duration less than 10 minutes" in one_line(invalid.value)
    fake.forbid("create", "serviceaccounts/token", "apps")
    with pytest.raises(KubeForbidden) as forbidden:
        cbt_endpoint(cluster, CBT_DRIVER, namespace="apps", service_account="backup")
    assert 'to create serviceaccounts/token "backup" in namespace "apps"' in one_line(
        forbidden.value
    )
    fake.forbid("get", "snapshotmetadataservices")
    with pytest.raises(KubeForbidden, match="get snapshotmetadataservices"):
        find_metadata_service(cluster, CBT_DRIVER)


def test_malformed_metadata_service(cluster: KubeCluster, fake: FakeKube) -> None:
    fake.seed(
        {
            "apiVersion": "cbt.storage.k8s.io/v1beta1",
            "kind": "SnapshotMetadataService",
            "metadata": {"name": "broken.example.com"},
            "spec": {
                "address": "x:1",
                "audience": "a",
                "caCert": base64.b64encode(b"not pem").decode(),
            },
        }
    )
    with pytest.raises(Exception, match="does not hold a PEM certificate"):
        find_metadata_service(cluster, "broken.example.com")


def test_in_cluster_service_account(
    fake: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod's view: TLS, the mounted token of its service account, RBAC on that account."""
    with run_fake_kube(FakeKube(), tls_dir=tmp_path / "tls") as server:
        seed_standard_cluster(server, make_tls_files(tmp_path / "ca2", "cbt").ca_pem)
        account = tmp_path / "serviceaccount"
        account.mkdir()
        (account / "token").write_text(server.pod_token("apps", "backup"))
        (account / "ca.crt").write_bytes(server.ca_pem or b"")
        (account / "namespace").write_text("apps\n")
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
        with KubeCluster.in_cluster(service_account_dir=str(account)) as pod:
            assert pod.default_namespace == "apps"
            endpoint = cbt_endpoint(pod, CBT_DRIVER, namespace="apps", service_account="backup")
            assert server.issued_tokens[endpoint.token].audiences == [CBT_AUDIENCE]
            server.forbid(
                "get", "snapshotmetadataservices", user="system:serviceaccount:apps:backup"
            )
            with pytest.raises(KubeForbidden) as e:
                find_metadata_service(pod, CBT_DRIVER)
            assert 'user "system:serviceaccount:apps:backup"' in str(e.value)
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
        with pytest.raises(Exception, match="not inside a Kubernetes pod"):
            KubeCluster.in_cluster(service_account_dir=str(account))


# ----- data mover -------------------------------------------------------------------------------


def test_datamover_submit_runs_the_job_and_cleans_up(cluster: KubeCluster, fake: FakeKube) -> None:
    spec = prepare_spec(cluster, "apps", "data", "s3://bucket/repo", image="lamina:test")
    assert spec.snapshot_class == "csi-hostpath-snapclass" and spec.cbt_address == CBT_ADDRESS
    assert spec.volume == "fake/apps/data" and spec.size == "64Mi" and spec.snapshot_handle is None
    result = submit_datamover(cluster, spec, poll=POLL, job_timeout=10, snapshot_timeout=10)
    # RBAC objects exist as generated
    for doc in rbac_manifests("apps"):
        plural = {
            "ServiceAccount": "serviceaccounts",
            "Role": "roles",
            "RoleBinding": "rolebindings",
            "ClusterRole": "clusterroles",
            "ClusterRoleBinding": "clusterrolebindings",
        }[doc["kind"]]
        stored = fake.get(plural, doc["metadata"]["name"], doc["metadata"].get("namespace", ""))
        assert stored is not None, doc["metadata"]["name"]
        assert stored.get("rules") == doc.get("rules")
    job = fake.get("jobs", result.job, "apps")
    assert job is not None and job["status"]["succeeded"] == 1
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--snapshot-handle") + 1] == result.snapshot.handle
    assert args[args.index("--cbt") + 1] == CBT_ADDRESS
    # the PVC from the snapshot was made (the Job could start) and is gone again
    assert fake.get("persistentvolumeclaims", result.source_pvc, "apps") is None
    assert any(m == "POST" and p.endswith("/persistentvolumeclaims") for m, p in fake.requests)
    # the snapshot stays: the next incremental needs it
    assert fake.get("volumesnapshots", result.snapshot.name, "apps") is not None
    # a second run finds the RBAC objects in place (409s are fine) and makes a new snapshot
    assert ensure_rbac(cluster, "apps") == []
    spec2 = prepare_spec(cluster, "apps", "data", "s3://bucket/repo", snapshot=result.snapshot.name)
    assert spec2.snapshot_handle == result.snapshot.handle and spec2.snapshot_class is None


def test_datamover_job_failure(cluster: KubeCluster, fake: FakeKube) -> None:
    fake.job_outcome = "fail"
    spec = prepare_spec(cluster, "apps", "data", "s3://bucket/repo", use_cbt=False)
    assert spec.cbt_address is None
    with pytest.raises(DataMoverFailed) as e:
        submit_datamover(cluster, spec, poll=POLL, job_timeout=10, snapshot_timeout=10)
    assert "Job has reached the specified backoff limit" in one_line(e.value)
    assert fake.get("persistentvolumeclaims", spec.source_pvc_name, "apps") is None


def test_datamover_refuses_filesystem_and_rbac_denial(cluster: KubeCluster, fake: FakeKube) -> None:
    with pytest.raises(FilesystemVolume):
        prepare_spec(cluster, "apps", "files", "s3://b/r")
    spec = prepare_spec(cluster, "apps", "data", "s3://b/r")
    fake.forbid("create", "clusterrolebindings")
    with pytest.raises(
        KubeForbidden, match='create clusterrolebindings "lamina-datamover-apps" at cluster scope'
    ):
        submit_datamover(cluster, spec, poll=POLL, job_timeout=5, snapshot_timeout=5)


def test_datamover_existing_snapshot_must_be_of_the_pvc(
    cluster: KubeCluster, fake: FakeKube
) -> None:
    fake.add_pvc("apps", "other", size="64Mi")
    create_snapshot(cluster, "apps", "other", name="of-other", timeout=5, poll=POLL)
    with pytest.raises(UsageError, match="is a snapshot of 'other', not of 'data'"):
        prepare_spec(cluster, "apps", "data", "s3://b/r", snapshot="of-other")
    with pytest.raises(KubeNotFound, match='volumesnapshots "ghost" not found'):
        prepare_spec(cluster, "apps", "data", "s3://b/r", snapshot="ghost")
