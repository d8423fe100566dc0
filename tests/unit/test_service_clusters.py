"""The service's cluster listing: one way, for the CLI's `lamina clusters` and for Service."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.backend.service import Service, check_clusters, list_clusters
from tests.unit.test_kube_config import kubeconfig, write


@pytest.fixture(autouse=True)
def no_user_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_contexts_then_the_local_cluster_once(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config",
        kubeconfig({"prod": "https://10.0.0.1:6443", "dev": "https://d"}, current="prod"),
    )
    root = tmp_path / "cluster"
    clusters = list_clusters(path, str(root))
    assert [(c.name, c.kind) for c in clusters] == [
        ("dev", "kubernetes"),
        ("prod", "kubernetes"),
        ("local", "local"),
    ]
    dev, prod, local = clusters
    assert prod.current and not dev.current and not local.current
    assert (prod.cluster, prod.user, prod.server) == (
        "prod-cluster",
        "prod-user",
        "https://10.0.0.1:6443",
    )
    assert local.server == str(root)  # the local cluster's folder stands where a server would
    # The service lists exactly what the package function lists: there is one listing.
    service = Service(str(tmp_path / "no-repo"), kubeconfig=path, local_root=str(root))
    assert service.list_clusters() == clusters
    assert [c.name for c in list_clusters(None, None)] == ["local"]  # no kubeconfig at all


def test_checking_the_local_cluster_looks_at_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "cluster"
    missing = check_clusters(None, str(root), ["local"])
    assert not missing["local"].ok and "no local cluster folder" in missing["local"].detail
    root.mkdir()
    found = check_clusters(None, str(root))
    assert list(found) == ["local"] and found["local"].ok
    assert found["local"].detail == f"volumes under {root}"
