"""`lamina clusters`, `lamina volumes` and `lamina kube ...` as a user runs them: real
processes against the fake API server (a test double, tests/support/fake_kube.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lamina.backend.kube.datamover import rbac_manifests
from tests.support.fake_kube import (
    CBT_ADDRESS,
    CBT_AUDIENCE,
    CBT_DRIVER,
    FakeKube,
    make_tls_files,
    run_fake_kube,
    seed_standard_cluster,
)

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


@pytest.fixture
def cbt_ca(tmp_path: Path) -> bytes:
    return make_tls_files(tmp_path / "cbt-ca", "cbt-service").ca_pem


@pytest.fixture
def fake(cbt_ca: bytes, tmp_path: Path) -> Iterator[FakeKube]:
    with run_fake_kube(tls_dir=tmp_path / "tls") as server:
        seed_standard_cluster(server, cbt_ca)
        yield server


@pytest.fixture
def env(fake: FakeKube, tmp_path: Path) -> dict[str, str]:
    """The user's environment: $KUBECONFIG names the fake as context `test` (namespace apps)."""
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", context="test", namespace="apps")
    out = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "LAMINA_"))}
    out.update({"KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path / "home")})
    return out


def lamina(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*LAMINA, *args], capture_output=True, text=True, env=env, timeout=120)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def fails(env: dict[str, str], *args: str) -> str:
    """Run a command that must fail with exactly one `lamina: error:` line; return it."""
    result = lamina(env, *args, ok=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("lamina: error: ")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().endswith(errors[0]), result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def test_clusters_lists_contexts_checks_them_and_adds_local(
    fake: FakeKube, env: dict[str, str], tmp_path: Path
) -> None:
    table = lamina(env, "clusters").stdout.splitlines()
    assert table[0].split() == ["CURRENT", "NAME", "CLUSTER", "SERVER", "NAMESPACE", "STATUS"]
    assert table[1].split()[:5] == ["*", "test", "test-cluster", fake.url, "apps"]
    assert "ok (v1.34.0+fake)" in table[1]
    assert table[2].split()[0] == "local" and "local image files" in table[2]
    # a second kubeconfig with an unreachable cluster, named with --kubeconfig
    other = fake.kubeconfig("down")
    other["clusters"][0]["cluster"] = {"server": "https://127.0.0.1:9"}
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    data = json.loads(
        lamina(env, "clusters", "--kubeconfig", str(path), "--json", "--timeout", "2").stdout
    )
    assert [c["name"] for c in data] == ["down", "local"]
    assert data[0]["current"] is True and data[0]["local"] is False
    assert (
        data[0]["reachable"]["ok"] is False and "refused" in data[0]["reachable"]["detail"].lower()
    )
    assert data[1]["local"] is True and data[1]["reachable"] is None
    assert "STATUS" not in lamina(env, "clusters", "--no-check").stdout.splitlines()[1]
    assert "no kubeconfig file at" in fails(env, "clusters", "--kubeconfig", str(tmp_path / "none"))


def test_volumes_table_and_json(env: dict[str, str]) -> None:
    rows = [line.split() for line in lamina(env, "volumes").stdout.splitlines()]
    assert rows[0] == [
        "NAMESPACE",
        "NAME",
        "STATUS",
        "MODE",
        "CAPACITY",
        "STORAGECLASS",
        "DRIVER",
        "CBT",
    ]
    assert rows[1] == [
        "apps",
        "data",
        "Bound",
        "Block",
        "64Mi",
        "csi-hostpath-sc",
        CBT_DRIVER,
        "yes",
    ]
    assert rows[2][:4] == ["apps", "files", "Bound", "Filesystem"]
    assert rows[4][:2] == ["default", "plain"] and rows[4][-1] == "no"
    data = json.loads(lamina(env, "volumes", "--context", "test", "-n", "default", "--json").stdout)
    assert [(v["namespace"], v["name"], v["cbt"]) for v in data] == [("default", "plain", False)]
    assert "no context 'nope'" in fails(env, "volumes", "--context", "nope")
    assert "cluster of local image files" in fails(env, "volumes", "--context", "local")


def test_volumes_forbidden_and_namespaces(fake: FakeKube, env: dict[str, str]) -> None:
    assert lamina(env, "kube", "namespaces").stdout.split() == ["apps", "default", "kube-system"]
    fake.forbid("list", "persistentvolumeclaims")
    line = fails(env, "volumes")
    assert line == (
        'lamina: error: RBAC forbids user "kubernetes-admin" to list persistentvolumeclaims '
        "at cluster scope (context 'test')"
    )


def test_kube_snapshot_prints_handle_and_size(fake: FakeKube, env: dict[str, str]) -> None:
    out = lamina(env, "kube", "snapshot", "data", "--name", "cli-snap", "--poll", "0.05").stdout
    content = fake.objects("volumesnapshotcontents")[0]
    assert f"handle        {content['status']['snapshotHandle']}" in out
    assert "restore size  64.0 MiB (67108864 bytes)" in out
    assert "snapshot apps/cli-snap of PVC data is ready" in out
    again = fails(env, "kube", "snapshot", "data", "--name", "cli-snap")
    assert 'volumesnapshots "cli-snap" already exists' in again
    assert "in Filesystem mode" in fails(env, "kube", "snapshot", "files")
    assert "is Pending, not Bound" in fails(env, "kube", "snapshot", "waiting")
    assert "no VolumeSnapshotClass for CSI driver" in fails(
        env, "kube", "snapshot", "-n", "default", "plain"
    )
    fake.snapshot_mode = "stuck"
    assert "not ready within 0.3 s" in fails(
        env, "kube", "snapshot", "data", "--name", "slow", "--timeout", "0.3", "--poll", "0.05"
    )
    lamina(env, "kube", "delete-snapshot", "cli-snap")
    assert fake.get("volumesnapshots", "cli-snap", "apps") is None
    assert 'volumesnapshots "cli-snap" not found' in fails(
        env, "kube", "delete-snapshot", "cli-snap"
    )
    assert "--timeout must be more than 0" in fails(
        env, "kube", "snapshot", "data", "--timeout", "0"
    )


def test_cbt_endpoint_from_a_pod(
    fake: FakeKube, env: dict[str, str], tmp_path: Path, cbt_ca: bytes
) -> None:
    """The data mover's init step: in-cluster config, token and CA written to files."""
    lamina(env, "kube", "snapshot", "data", "--name", "pod-snap", "--poll", "0.05")
    account = tmp_path / "sa"
    account.mkdir()
    (account / "token").write_text(fake.pod_token("apps", "backup"))
    (account / "ca.crt").write_bytes(fake.ca_pem or b"")
    (account / "namespace").write_text("apps")
    pod_env = {
        **env,
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(fake.port),
        "LAMINA_SERVICE_ACCOUNT_DIR": str(account),
    }
    token_file, ca_file = tmp_path / "out" / "token", tmp_path / "out" / "ca.pem"
    out = lamina(
        pod_env,
        "kube", "cbt-endpoint", "--in-cluster", "--snapshot", "pod-snap", "--service-account", "backup",
        "--token-file", str(token_file), "--ca-file", str(ca_file), "--json",
    ).stdout  # fmt: skip
    data = json.loads(out)
    assert data["address"] == CBT_ADDRESS and data["audience"] == CBT_AUDIENCE
    assert "token" not in data
    token = token_file.read_text()
    assert fake.issued_tokens[token].audiences == [CBT_AUDIENCE]
    assert fake.issued_tokens[token].service_account == "backup"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert ca_file.read_bytes() == cbt_ca
    fake.forbid("create", "serviceaccounts/token", user="system:serviceaccount:apps:backup")
    line = fails(
        pod_env,
        "kube",
        "cbt-endpoint",
        "--in-cluster",
        "--driver",
        CBT_DRIVER,
        "--service-account",
        "backup",
    )
    assert (
        'user "system:serviceaccount:apps:backup" to create serviceaccounts/token "backup"' in line
    )
    no_pod = {k: v for k, v in pod_env.items() if not k.startswith("KUBERNETES_")}
    assert "not inside a Kubernetes pod" in fails(
        no_pod,
        "kube",
        "cbt-endpoint",
        "--in-cluster",
        "--driver",
        CBT_DRIVER,
        "--service-account",
        "backup",
    )
    assert "offers no changed-block tracking" in fails(
        env,
        "kube",
        "cbt-endpoint",
        "--driver",
        "other.csi.example.com",
        "--service-account",
        "backup",
    )


def test_datamover_prints_yaml_then_submits(fake: FakeKube, env: dict[str, str]) -> None:
    text = lamina(
        env, "kube", "datamover", "data", "--repo", "s3://bucket/repo", "--image", "reg/lamina:1"
    ).stdout
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == [d["kind"] for d in rbac_manifests("apps")] + [
        "VolumeSnapshot",
        "PersistentVolumeClaim",
        "Job",
    ]
    assert (
        fake.objects("jobs") == [] and fake.objects("volumesnapshots") == []
    )  # printing creates nothing
    job = docs[-1]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "reg/lamina:1"
    assert container["args"][container["args"].index("--volume") + 1] == "test/apps/data"
    assert container["args"][container["args"].index("--cbt") + 1] == CBT_ADDRESS
    assert docs[-2]["spec"]["dataSource"]["name"] == docs[-3]["metadata"]["name"]

    result = lamina(
        env, "kube", "datamover", "data", "--repo", "s3://bucket/repo", "--submit", "--poll", "0.05"
    )
    assert "completed in" in result.stdout
    (stored,) = fake.objects("jobs", "apps")
    (snapshot,) = fake.objects("volumesnapshots", "apps")
    handle = fake.get(
        "volumesnapshotcontents", snapshot["status"]["boundVolumeSnapshotContentName"]
    )
    assert handle is not None
    args = stored["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--snapshot-handle") + 1] == handle["status"]["snapshotHandle"]
    assert f"handle {handle['status']['snapshotHandle']}" in result.stdout
    claims = [p["metadata"]["name"] for p in fake.objects("persistentvolumeclaims", "apps")]
    assert claims == ["data", "files", "waiting"]  # the PVC from the snapshot is gone
    fake.job_outcome = "fail"
    line = fails(
        env, "kube", "datamover", "data", "--repo", "s3://bucket/repo", "--submit", "--poll", "0.05"
    )
    assert "failed: Job has reached the specified backoff limit" in line
    assert "in Filesystem mode" in fails(env, "kube", "datamover", "files", "--repo", "s3://b/r")
