"""Data-mover manifests: what the generator writes, checked as YAML, against the kubernetes
client's own models, and against the examples kept under deploy/."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from lamina.backend.kube.datamover import (
    CBT_CA_PATH,
    CBT_TOKEN_PATH,
    DEVICE_PATH,
    EXAMPLE_SPEC,
    DataMoverSpec,
    all_manifests,
    backup_command,
    cluster_volume_name,
    datamover_manifests,
    dump_yaml,
    example_manifests,
    main,
    rbac_manifests,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# kind -> (apiVersion, client model that must accept the document)
EXPECTED: dict[str, tuple[str, Any]] = {
    "ServiceAccount": ("v1", k8s.V1ServiceAccount),
    "Role": ("rbac.authorization.k8s.io/v1", k8s.V1Role),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", k8s.V1RoleBinding),
    "ClusterRole": ("rbac.authorization.k8s.io/v1", k8s.V1ClusterRole),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io/v1", k8s.V1ClusterRoleBinding),
    "PersistentVolumeClaim": ("v1", k8s.V1PersistentVolumeClaim),
    "Job": ("batch/v1", k8s.V1Job),
    "VolumeSnapshot": ("snapshot.storage.k8s.io/v1", None),
}

SPEC = DataMoverSpec(
    namespace="team-a",
    pvc="db",
    snapshot="db-lamina-20260101-000000",
    repo="s3://bucket/prefix",
    size="5Gi",
    volume="prod/team-a/db",
    storage_class="fast",
)


def check_documents(text: str) -> list[dict[str, Any]]:
    """Every document parses, has the right apiVersion for its kind, and (for built-in kinds)
    is accepted by the client's strict model."""
    docs = list(yaml.safe_load_all(text))
    assert docs, "no documents"
    for doc in docs:
        assert isinstance(doc, dict)
        kind = doc["kind"]
        assert kind in EXPECTED, kind
        api_version, model = EXPECTED[kind]
        assert doc["apiVersion"] == api_version, kind
        assert doc["metadata"]["name"]
        if model is not None:
            parsed = model.from_dict(doc)
            assert parsed.metadata.name == doc["metadata"]["name"]
    return docs


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs}


def test_deploy_folder_equals_the_generator() -> None:
    expected = example_manifests()
    assert set(expected) == {"rbac.yaml", "datamover-job.yaml"}
    for name, text in expected.items():
        on_disk = (REPO_ROOT / "deploy" / name).read_text()
        assert on_disk == text, (
            f"deploy/{name} is stale: run python -m lamina.backend.kube.datamover deploy"
        )
        check_documents(on_disk)


def test_generator_writes_the_examples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "out")]) == 0
    for name, text in example_manifests().items():
        assert (tmp_path / "out" / name).read_text() == text
    assert "rbac.yaml" in capsys.readouterr().out


def test_rbac_grants_what_the_data_mover_needs() -> None:
    docs = check_documents(dump_yaml(rbac_manifests("team-a", "mover")))
    kinds = by_kind(docs)
    assert [d["kind"] for d in docs] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
    ]
    role_rules = kinds["Role"]["rules"]
    snapshots = next(r for r in role_rules if r["resources"] == ["volumesnapshots"])
    assert snapshots["apiGroups"] == ["snapshot.storage.k8s.io"]
    assert set(snapshots["verbs"]) == {"get"}
    token = next(r for r in role_rules if r["resources"] == ["serviceaccounts/token"])
    assert token == {
        "apiGroups": [""],
        "resources": ["serviceaccounts/token"],
        "resourceNames": ["mover"],
        "verbs": ["create"],
    }
    cluster_rules = kinds["ClusterRole"]["rules"]
    contents = next(r for r in cluster_rules if r["resources"] == ["volumesnapshotcontents"])
    assert set(contents["verbs"]) == {"get"}
    services = next(r for r in cluster_rules if r["resources"] == ["snapshotmetadataservices"])
    assert services["apiGroups"] == ["cbt.storage.k8s.io"]
    assert set(services["verbs"]) == {"get"}
    # nothing that writes or deletes anything but its own token
    for rule in role_rules + cluster_rules:
        assert set(rule["verbs"]) <= {"get", "create"}
        if "create" in rule["verbs"]:
            assert rule["resources"] == ["serviceaccounts/token"]
    for binding in (kinds["RoleBinding"], kinds["ClusterRoleBinding"]):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "mover", "namespace": "team-a"}
        ]
    assert kinds["RoleBinding"]["roleRef"]["kind"] == "Role"
    assert kinds["ClusterRoleBinding"]["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "mover",
    }
    # one ClusterRoleBinding per namespace, so two namespaces do not overwrite each other
    assert (
        kinds["ClusterRoleBinding"]["metadata"]["name"]
        != by_kind(rbac_manifests("team-b", "mover"))["ClusterRoleBinding"]["metadata"]["name"]
    )


def test_source_pvc_is_a_block_volume_from_the_snapshot() -> None:
    docs = check_documents(dump_yaml(datamover_manifests(SPEC)))
    assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "Job"]
    pvc = by_kind(docs)["PersistentVolumeClaim"]
    assert pvc["metadata"]["namespace"] == "team-a"
    assert pvc["spec"]["volumeMode"] == "Block"
    assert pvc["spec"]["dataSource"] == {
        "apiGroup": "snapshot.storage.k8s.io",
        "kind": "VolumeSnapshot",
        "name": "db-lamina-20260101-000000",
    }
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvc["spec"]["storageClassName"] == "fast"


def test_job_runs_lamina_backup_on_the_raw_device() -> None:
    job = by_kind(check_documents(dump_yaml(datamover_manifests(SPEC))))["Job"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "lamina-datamover"
    assert "initContainers" not in pod  # no CBT service known: the backup reads everything
    (container,) = pod["containers"]
    assert container["image"] == "lamina:latest"
    assert container["command"] + container["args"] == backup_command(SPEC)
    assert container["command"] == ["lamina"]
    assert container["args"][:5] == [
        "backup",
        "--repo",
        "s3://bucket/prefix",
        "--volume",
        "prod/team-a/db",
    ]
    assert container["args"][-1] == DEVICE_PATH == "/dev/lamina-source"
    assert "--cbt" not in container["args"]
    assert container["volumeDevices"] == [{"name": "source", "devicePath": DEVICE_PATH}]
    source = next(v for v in pod["volumes"] if v["name"] == "source")
    assert (
        source["persistentVolumeClaim"]["claimName"]
        == by_kind(datamover_manifests(SPEC))["PersistentVolumeClaim"]["metadata"]["name"]
    )
    assert len(job["metadata"]["name"]) <= 63


def test_job_with_cbt_fetches_a_token_first_and_passes_it_to_backup() -> None:
    spec = replace(
        SPEC, cbt_address="cbt.example:6443", snapshot_handle="snap-123", image="reg/lamina:1"
    )
    job = by_kind(check_documents(dump_yaml(datamover_manifests(spec))))["Job"]
    pod = job["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "reg/lamina:1"
    init_args = init["args"]
    assert init_args[:3] == ["kube", "cbt-endpoint", "--in-cluster"]
    assert init_args[init_args.index("--snapshot") + 1] == spec.snapshot
    assert init_args[init_args.index("--token-file") + 1] == CBT_TOKEN_PATH
    args = pod["containers"][0]["args"]
    assert args[args.index("--cbt") + 1] == "cbt.example:6443"
    assert args[args.index("--snapshot-handle") + 1] == "snap-123"
    assert args[args.index("--token-file") + 1] == CBT_TOKEN_PATH
    assert args[args.index("--ca-file") + 1] == CBT_CA_PATH
    # the token is handed over through the shared scratch volume
    scratch = {m["mountPath"] for m in init["volumeMounts"]} & {
        m["mountPath"] for m in pod["containers"][0]["volumeMounts"]
    }
    assert CBT_TOKEN_PATH.startswith(scratch.pop() + "/")


def test_secrets_extra_args_and_snapshot_document() -> None:
    spec = replace(
        SPEC,
        env_secret="s3-keys",
        password_secret="repo-pass",
        backup_args=("--parent", "none"),
        snapshot_class="fast-snap",
    )
    docs = check_documents(all_manifests(spec))
    kinds = [d["kind"] for d in docs]
    assert kinds.index("VolumeSnapshot") < kinds.index("PersistentVolumeClaim") < kinds.index("Job")
    snapshot = by_kind(docs)["VolumeSnapshot"]
    assert snapshot["spec"] == {
        "source": {"persistentVolumeClaimName": "db"},
        "volumeSnapshotClassName": "fast-snap",
    }
    container = by_kind(docs)["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]
    args = container["args"]
    assert args[args.index("--password-file") + 1].startswith("/etc/lamina/password/")
    assert args[-3:] == ["--parent", "none", DEVICE_PATH]


def test_long_names_stay_valid_labels() -> None:
    spec = replace(SPEC, snapshot="x" * 200 + "-lamina-20260101-000000")
    job, pvc = (
        by_kind(datamover_manifests(spec))["Job"],
        by_kind(datamover_manifests(spec))["PersistentVolumeClaim"],
    )
    for name in (job["metadata"]["name"], pvc["metadata"]["name"]):
        assert len(name) <= 63
        assert name[-1].isalnum() and name[0].isalnum()
    for value in job["metadata"]["labels"].values():
        assert len(value) <= 63


def test_yaml_has_no_anchors_and_example_is_consistent() -> None:
    text = all_manifests(replace(EXAMPLE_SPEC, snapshot_class=None))
    assert "&id" not in text and "*id" not in text
    assert EXAMPLE_SPEC.volume.split("/")[1:] == [EXAMPLE_SPEC.namespace, EXAMPLE_SPEC.pvc]


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ("kind-prod", "kind-prod"),
        ("arn:aws:eks:eu-west-1:123:cluster/prod", "arn-aws-eks-eu-west-1-123-cluster-prod"),
        ("gke_proj_zone_name", "gke_proj_zone_name"),
    ],
)
def test_cluster_volume_name_has_no_slash(context: str, expected: str) -> None:
    assert cluster_volume_name(context) == expected


def test_job_command_lines_are_accepted_by_the_lamina_parser() -> None:
    """The Job runs lamina's own CLI: both command lines must parse as the CLI stands."""
    from lamina.backend.cli.main import build_parser

    spec = replace(
        SPEC,
        cbt_address="cbt.example:6443",
        snapshot_handle="snap-9",
        password_secret="pw",
        backup_args=("-q",),
    )
    pod = by_kind(datamover_manifests(spec))["Job"]["spec"]["template"]["spec"]
    parser = build_parser()
    backup = parser.parse_args(pod["containers"][0]["args"])
    assert backup.command == "backup"
    assert (backup.repo, backup.volume, backup.source) == (
        "s3://bucket/prefix",
        "prod/team-a/db",
        DEVICE_PATH,
    )
    assert backup.snapshot_handle == "snap-9" and backup.quiet
    assert (backup.cbt, backup.cbt_namespace, backup.cbt_snapshot) == (
        "cbt.example:6443",
        "team-a",
        spec.snapshot,
    )
    assert (backup.cbt_token_file, backup.cbt_ca_file) == (CBT_TOKEN_PATH, CBT_CA_PATH)
    assert backup.label == [f"kube.snapshot=team-a/{spec.snapshot}"]
    init = parser.parse_args(pod["initContainers"][0]["args"])
    assert (init.command, init.kube_command, init.in_cluster) == ("kube", "cbt-endpoint", True)
    assert (init.namespace, init.snapshot, init.service_account) == (
        "team-a",
        spec.snapshot,
        "lamina-datamover",
    )
    assert (init.token_file, init.ca_file) == (CBT_TOKEN_PATH, CBT_CA_PATH)


# ----- restore into a new PVC ------------------------------------------------------------------


def test_restore_job_writes_the_new_pvc_and_has_no_api_rights() -> None:
    from lamina.backend.cli.main import build_parser
    from lamina.backend.kube.datamover import (
        RESTORE_DEVICE_PATH,
        RESTORE_MOUNT_PATH,
        RestoreSpec,
        restore_job_manifest,
        restore_pvc_manifest,
    )

    spec = RestoreSpec(
        namespace="team-a", pvc="db-back", point="5f3a" * 8, repo="s3://bucket/prefix",
        size="64Mi", storage_class="fast", env_secret="s3", password_secret="pw",
    )  # fmt: skip
    pvc = restore_pvc_manifest(spec)
    assert pvc["spec"]["volumeMode"] == "Block"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "64Mi"
    assert pvc["spec"]["storageClassName"] == "fast" and "dataSource" not in pvc["spec"]
    job = restore_job_manifest(spec)
    model: Any = k8s.V1Job.from_dict(job)  # the client's model takes the manifest
    assert model.spec.template.spec.containers[0].name == "lamina"
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    (container,) = pod["containers"]
    assert container["volumeDevices"] == [{"name": "target", "devicePath": RESTORE_DEVICE_PATH}]
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]
    restore = build_parser().parse_args(container["args"])
    assert restore.command == "restore"
    assert (restore.repo, restore.point, restore.target) == (
        "s3://bucket/prefix",
        spec.point,
        RESTORE_DEVICE_PATH,
    )
    assert restore.overwrite and restore.password_file == "/etc/lamina/password/password"
    files = replace(spec, mode="filesystem")
    assert restore_pvc_manifest(files)["spec"]["volumeMode"] == "Filesystem"
    (container,) = restore_job_manifest(files)["spec"]["template"]["spec"]["containers"]
    assert "volumeDevices" not in container
    assert {"name": "target", "mountPath": RESTORE_MOUNT_PATH} in container["volumeMounts"]
    restore = build_parser().parse_args(container["args"])
    assert restore.target == f"{RESTORE_MOUNT_PATH}/volume.img" and not restore.overwrite


def test_restore_size_and_pvc_names_are_checked() -> None:
    from lamina.backend.errors import UsageError
    from lamina.backend.kube.datamover import restore_size
    from lamina.backend.service import parse_pvc_ref

    mib = 1 << 20
    assert restore_size(4 * mib, "block", None) == "4Mi"
    assert restore_size(4 * mib + 1, "block", None) == "5Mi"
    assert restore_size(4 * mib, "filesystem", None) == "20Mi"  # + 16 MiB for the file system
    assert restore_size(4 * mib, "block", "1Gi") == "1Gi"
    with pytest.raises(UsageError, match="smaller than the point's volume"):
        restore_size(4 * mib, "block", "1Mi")
    with pytest.raises(UsageError, match="not a Kubernetes quantity"):
        restore_size(4 * mib, "block", "lots")
    with pytest.raises(UsageError, match="--mode must be block or filesystem"):
        restore_size(4 * mib, "tape", None)
    assert parse_pvc_ref("apps/db-restored") == ("apps", "db-restored")
    from lamina.backend.kube import datamover
    from lamina.backend.service import kube

    assert kube.DEFAULT_IMAGE == datamover.DEFAULT_IMAGE  # the service's copy, not imported early
    for bad in ("db", "apps/", "/db", "Apps/db", "apps/db/x", "apps/\x1b[2Jdb"):
        with pytest.raises(UsageError, match="--to-pvc wants NAMESPACE/NAME") as e:
            parse_pvc_ref(bad)
        assert "\x1b" not in str(e.value)


def test_restore_parser_takes_options_between_point_and_target() -> None:
    """--to-pvc is a flag, so TARGET stays required and options may stand before it."""
    from lamina.backend.cli.main import build_parser

    parser = build_parser()
    plain = parser.parse_args(["restore", "5f3a", "--overwrite", "/srv/restored.img"])
    assert (plain.point, plain.target, plain.overwrite, plain.to_pvc) == (
        "5f3a",
        "/srv/restored.img",
        True,
        False,
    )
    into = parser.parse_args(["restore", "5f3a", "--to-pvc", "apps/db", "--size", "1Gi"])
    assert (into.point, into.target, into.to_pvc, into.size) == ("5f3a", "apps/db", True, "1Gi")
