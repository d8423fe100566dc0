"""lamina's CRDs on the real API server: they are established, valid objects are stored,
invalid ones get 422 from the schema, printer columns and short names are served."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import kubernetes
import pytest

from lamina.backend.kube.crds import GROUP, VERSION
from tests.support.kube_cluster import RealKube
from tests.support.kube_crds import install_crds

TABLE = "application/json;as=Table;g=meta.k8s.io;v=v1"
REPOSITORY = {"url": "s3://bucket/prod", "secretRef": {"name": "lamina-repo"}}


@pytest.fixture(scope="module")
def api(real_kube_cluster: RealKube) -> Iterator[Any]:
    with real_kube_cluster.api_client() as client:
        install_crds(client)
        yield client


def _body(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def _create(api: Any, namespace: str, plural: str, body: dict[str, Any]) -> dict[str, Any]:
    custom = kubernetes.client.CustomObjectsApi(api)
    created: Any = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
    return cast(dict[str, Any], created)


def _get_raw(api: Any, path: str, accept: str = "application/json") -> dict[str, Any]:
    request = api.param_serialize(
        "GET", path, header_params={"Accept": accept}, auth_settings=["BearerToken"]
    )
    response = api.call_api(*request)
    response.read()
    parsed: dict[str, Any] = json.loads(response.data)
    return parsed


def test_valid_objects_of_each_kind_are_stored(api: Any, kube_namespace: str) -> None:
    schedule = _create(
        api,
        kube_namespace,
        "backupschedules",
        _body(
            "BackupSchedule",
            "db-hourly",
            {
                "selector": {"names": ["db"], "matchLabels": {"tier": "data"}},
                "every": "1h30m",
                "repository": REPOSITORY,
                "retention": {"keepLast": 3, "keepDaily": 7, "keepWithin": "2d"},
                "concurrency": 2,
            },
        ),
    )
    assert schedule["spec"]["every"] == "1h30m"
    _create(
        api,
        kube_namespace,
        "backupschedules",
        _body(
            "BackupSchedule",
            "db-cron",
            {"selector": {}, "cron": "0 */4 * * *", "repository": {"url": "s3://b/p"}},
        ),
    )
    backup = _create(
        api,
        kube_namespace,
        "backups",
        _body("Backup", "db-by-hand", {"source": {"pvc": "db"}, "repository": REPOSITORY}),
    )
    restore = _create(
        api,
        kube_namespace,
        "restores",
        _body(
            "Restore",
            "db-back",
            {"point": "0123abcd", "repository": REPOSITORY, "target": {"pvc": "db-restored"}},
        ),
    )
    assert restore["spec"]["mode"] == "block", "the schema's default is applied"
    # the status subresource takes the controller's phases
    custom = kubernetes.client.CustomObjectsApi(api)
    backup["status"] = {"phase": "Transferring", "message": "data mover running"}
    updated: Any = custom.replace_namespaced_custom_object_status(
        GROUP, VERSION, kube_namespace, "backups", "db-by-hand", backup
    )
    assert updated["status"]["phase"] == "Transferring"


INVALID: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "backupschedules",
        "BackupSchedule",
        {"selector": {}, "cron": "* * * * *", "every": "1h", "repository": REPOSITORY},
        "both cron and every",
    ),
    ("backupschedules", "BackupSchedule", {"selector": {}, "repository": REPOSITORY}, "neither"),
    (
        "backupschedules",
        "BackupSchedule",
        {"selector": {}, "every": "soon", "repository": REPOSITORY},
        "spec.every",
    ),
    (
        "backupschedules",
        "BackupSchedule",
        {"selector": {}, "every": "1h", "repository": REPOSITORY, "concurrency": 0},
        "spec.concurrency",
    ),
    ("backupschedules", "BackupSchedule", {"selector": {}, "every": "1h"}, "spec.repository"),
    (
        "backupschedules",
        "BackupSchedule",
        {"selector": {}, "every": "1h", "repository": REPOSITORY, "retention": {"keepLast": -1}},
        "spec.retention.keepLast",
    ),
    ("backups", "Backup", {"source": {}, "repository": REPOSITORY}, "spec.source.pvc"),
    (
        "backups",
        "Backup",
        {"source": {"pvc": "Not_A_Name"}, "repository": REPOSITORY},
        "spec.source.pvc",
    ),
    (
        "restores",
        "Restore",
        {"point": "0123abcd", "repository": REPOSITORY, "target": {"pvc": "x"}, "mode": "tape"},
        "spec.mode",
    ),
    (
        "restores",
        "Restore",
        {"point": "not hex!", "repository": REPOSITORY, "target": {"pvc": "x"}},
        "spec.point",
    ),
]


def test_invalid_objects_get_422_naming_the_field(api: Any, kube_namespace: str) -> None:
    for number, (plural, kind, spec, field) in enumerate(INVALID):
        with pytest.raises(kubernetes.client.ApiException) as refused:
            _create(api, kube_namespace, plural, _body(kind, f"bad-{number}", spec))
        assert refused.value.status == 422, (kind, spec)
        message = json.loads(refused.value.body or "{}")["message"]
        if field.startswith("spec."):
            assert field in message, (field, message)
    # a phase the controller never sets is refused on the status subresource too
    backup = _create(
        api,
        kube_namespace,
        "backups",
        _body("Backup", "phase-check", {"source": {"pvc": "db"}, "repository": REPOSITORY}),
    )
    backup["status"] = {"phase": "Done"}
    with pytest.raises(kubernetes.client.ApiException) as refused_status:
        kubernetes.client.CustomObjectsApi(api).replace_namespaced_custom_object_status(
            GROUP, VERSION, kube_namespace, "backups", "phase-check", backup
        )
    assert refused_status.value.status == 422
    listed: Any = kubernetes.client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, "backupschedules"
    )
    assert listed["items"] == [], "no invalid schedule was stored"


def test_printer_columns_and_short_names_are_served(api: Any, kube_namespace: str) -> None:
    backup = _create(
        api,
        kube_namespace,
        "backups",
        _body(
            "Backup",
            "db-shown",
            {"source": {"pvc": "db"}, "repository": REPOSITORY, "schedule": "db-hourly"},
        ),
    )
    backup["status"] = {"phase": "Succeeded", "pointId": "0123abcd", "mode": "cbt", "bytes": 4096}
    kubernetes.client.CustomObjectsApi(api).replace_namespaced_custom_object_status(
        GROUP, VERSION, kube_namespace, "backups", "db-shown", backup
    )
    table = _get_raw(api, f"/apis/{GROUP}/{VERSION}/namespaces/{kube_namespace}/backups", TABLE)
    assert table["kind"] == "Table"
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns == [
        "Name", "Phase", "PVC", "Schedule", "Point", "Mode", "Bytes", "Message", "Age",
    ]  # fmt: skip
    (row,) = table["rows"]
    cells = dict(zip(columns, row["cells"], strict=True))
    assert cells["Name"] == "db-shown" and cells["Phase"] == "Succeeded"
    assert cells["PVC"] == "db" and cells["Point"] == "0123abcd" and cells["Bytes"] == 4096
    assert cells["Mode"] == "cbt"
    discovery = _get_raw(api, f"/apis/{GROUP}/{VERSION}")
    short = {r["name"]: r.get("shortNames") for r in discovery["resources"] if "/" not in r["name"]}
    assert short == {
        "backupschedules": ["lbs", "bsched"],
        "backups": ["lbk", "lbackup"],
        "restores": ["lrs", "lrestore"],
    }
