"""lamina's CRDs: deploy/crds.yaml is what backend/kube/crds.py generates, every schema is
structural (what apiextensions.k8s.io/v1 demands), and the client's model accepts them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from lamina.backend.kube import crds

REPO_ROOT = Path(__file__).resolve().parents[2]
# what a structural schema may not set inside oneOf/anyOf/allOf/not
_NOT_IN_JUNCTORS = {"type", "description", "default", "additionalProperties", "nullable"}


def test_deploy_crds_yaml_is_generated_from_the_definition(tmp_path: Path) -> None:
    out = tmp_path / "crds.yaml"
    assert crds.main([str(out)]) == 0
    assert out.read_text() == (REPO_ROOT / "deploy" / "crds.yaml").read_text(), (
        "deploy/crds.yaml is stale: run `make manifests`"
    )
    assert not list(tmp_path.glob("*.lamina-partial"))


def _check_structural(schema: dict[str, Any], where: str) -> None:
    for junctor in ("oneOf", "anyOf", "allOf"):
        for branch in schema.get(junctor, []):
            assert not _NOT_IN_JUNCTORS & set(branch), f"{where}.{junctor} sets {set(branch)}"
    assert "type" in schema, f"{where} has no type"
    for name, child in (schema.get("properties") or {}).items():
        _check_structural(child, f"{where}.{name}")
    if isinstance(schema.get("items"), dict):
        _check_structural(schema["items"], f"{where}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        _check_structural(schema["additionalProperties"], f"{where}{{}}")


def test_each_kind_is_a_structural_crd_with_status_columns_and_short_names() -> None:
    docs = list(yaml.safe_load_all((REPO_ROOT / "deploy" / "crds.yaml").read_text()))
    assert [d["spec"]["names"]["kind"] for d in docs] == ["BackupSchedule", "Backup", "Restore"]
    short_names: set[str] = set()
    for doc in docs:
        k8s.ApiClient()._ApiClient__deserialize(doc, "V1CustomResourceDefinition")  # type: ignore[attr-defined]
        spec = doc["spec"]
        assert spec["group"] == "lamina.dev" and not spec["group"].endswith("k8s.io")
        assert doc["metadata"]["name"] == f"{spec['names']['plural']}.lamina.dev"
        (version,) = spec["versions"]
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
        assert version["subresources"] == {"status": {}}
        _check_structural(version["schema"]["openAPIV3Schema"], spec["names"]["kind"])
        columns = [c["name"] for c in version["additionalPrinterColumns"]]
        assert "Age" in columns
        names = set(spec["names"]["shortNames"])
        assert names and not names & short_names, "short names must be unique"
        short_names |= names
    backup = docs[1]["spec"]["versions"][0]
    phases = backup["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"]
    assert phases["enum"] == ["Pending", "Snapshotting", "Transferring", "Succeeded", "Failed"]
    assert {"Phase", "PVC", "Point", "Bytes"} <= {
        c["name"] for c in backup["additionalPrinterColumns"]
    }


def test_deploy_controller_yaml_is_generated_and_the_client_accepts_it(tmp_path: Path) -> None:
    from lamina.backend.kube import controller_deploy

    out = tmp_path / "controller.yaml"
    assert controller_deploy.main([str(out)]) == 0
    assert out.read_text() == (REPO_ROOT / "deploy" / "controller.yaml").read_text(), (
        "deploy/controller.yaml is stale: run `make manifests`"
    )
    docs = list(yaml.safe_load_all(out.read_text()))
    models = {
        "ServiceAccount": "V1ServiceAccount",
        "ClusterRole": "V1ClusterRole",
        "ClusterRoleBinding": "V1ClusterRoleBinding",
        "Role": "V1Role",
        "RoleBinding": "V1RoleBinding",
        "Deployment": "V1Deployment",
    }
    assert [d["kind"] for d in docs] == list(models)
    for doc in docs:
        k8s.ApiClient()._ApiClient__deserialize(doc, models[doc["kind"]])  # type: ignore[attr-defined]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--in-cluster" in args and "--lease-namespace" in args
    for doc in docs:
        for rule in doc.get("rules", []):
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
