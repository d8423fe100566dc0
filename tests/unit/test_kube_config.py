"""Kubeconfig reading and merging, Kubernetes quantities, and the errors of both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lamina.backend.kube.config import LOCAL_CLUSTER, list_clusters, load_kubeconfig
from lamina.backend.kube.errors import KubeconfigError, KubeInvalid, NoSuchContext
from lamina.backend.kube.objects import dns_label, parse_quantity
from lamina.backend.kube.snapshots import default_snapshot_name


def kubeconfig(
    contexts: dict[str, str], current: str | None = None, namespace: str | None = None
) -> dict[str, Any]:
    """contexts: name -> server."""
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": f"{n}-cluster", "cluster": {"server": s}} for n, s in contexts.items()
        ],
        "users": [{"name": f"{n}-user", "user": {"token": "t"}} for n in contexts],
        "contexts": [
            {
                "name": n,
                "context": {
                    "cluster": f"{n}-cluster",
                    "user": f"{n}-user",
                    **({"namespace": namespace} if namespace else {}),
                },
            }
            for n in contexts
        ],
    }
    if current:
        doc["current-context"] = current
    return doc


def write(path: Path, doc: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture(autouse=True)
def no_user_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_contexts_sorted_with_current_marked_and_local_last(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config",
        kubeconfig(
            {"prod": "https://10.0.0.1:6443", "dev": "https://10.0.0.2:6443"},
            current="prod",
            namespace="apps",
        ),
    )
    clusters = list_clusters(path)
    assert [c.name for c in clusters] == ["dev", "prod", LOCAL_CLUSTER]
    dev, prod, local = clusters
    assert prod.current and not dev.current and not local.current
    assert prod.server == "https://10.0.0.1:6443" and prod.cluster == "prod-cluster"
    assert prod.user == "prod-user" and prod.namespace == "apps"
    assert local.local and not prod.local and local.server is None
    assert [c.name for c in list_clusters(path, include_local=False)] == ["dev", "prod"]


def test_kubeconfig_variable_merges_files_first_one_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write(
        tmp_path / "a",
        kubeconfig({"shared": "https://first", "a-only": "https://a"}, current="a-only"),
    )
    second = write(
        tmp_path / "b",
        kubeconfig({"shared": "https://second", "b-only": "https://b"}, current="b-only"),
    )
    missing = str(tmp_path / "does-not-exist")
    monkeypatch.setenv("KUBECONFIG", ":".join([first, missing, second]))
    clusters = {c.name: c for c in list_clusters()}
    assert set(clusters) == {"shared", "a-only", "b-only", LOCAL_CLUSTER}
    assert clusters["shared"].server == "https://first"
    assert clusters["a-only"].current and not clusters["b-only"].current
    merged = load_kubeconfig()
    assert merged.client_path == f"{first}:{second}"


def test_default_file_and_no_file(tmp_path: Path) -> None:
    # no kubeconfig anywhere: only the local cluster, and commands that need one say so
    assert [c.name for c in list_clusters()] == [LOCAL_CLUSTER]
    with pytest.raises(KubeconfigError, match=r"no kubeconfig file at .*/home/\.kube/config"):
        load_kubeconfig()
    (tmp_path / "home" / ".kube").mkdir(parents=True)
    write(tmp_path / "home" / ".kube" / "config", kubeconfig({"home": "https://h"}, current="home"))
    assert [c.name for c in list_clusters()] == ["home", LOCAL_CLUSTER]


def test_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match="no kubeconfig file at"):
        list_clusters(str(tmp_path / "nope"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("contexts: {not: a list}\n", "'contexts' is not a list"),
        ("- just\n- a list\n", "is not a kubeconfig"),
        ("contexts:\n- context: {cluster: c}\n", "has no name"),
        ("clusters: [\n", "cannot read kubeconfig"),
    ],
)
def test_broken_kubeconfig_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config"
    path.write_text(text)
    with pytest.raises(KubeconfigError, match=message) as e:
        list_clusters(str(path))
    assert "\n" not in str(e.value)


def test_context_lookup(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config", kubeconfig({"prod": "https://p", "dev": "https://d"}, current="dev")
    )
    config = load_kubeconfig(path)
    assert config.context(None)[0] == "dev"
    assert config.context("prod")[0] == "prod"
    with pytest.raises(NoSuchContext, match=r"no context 'staging' in .* \(known: dev, prod\)"):
        config.context("staging")
    with pytest.raises(NoSuchContext, match="lamina's cluster of local image files"):
        config.context(LOCAL_CLUSTER)
    no_current = load_kubeconfig(write(tmp_path / "c2", kubeconfig({"x": "https://x"})))
    with pytest.raises(NoSuchContext, match="sets no current-context"):
        no_current.context(None)


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("64Mi", 64 * 2**20),
        ("10Gi", 10 * 2**30),
        ("1G", 10**9),
        ("500M", 500 * 10**6),
        ("1073741824", 2**30),
        ("1e9", 10**9),
        ("1.5Gi", 3 * 2**29),
        ("1500m", 2),  # milli-bytes round up to whole bytes
        (4096, 4096),
        (" 2Ki ", 2048),
    ],
)
def test_parse_quantity(quantity: str | int, expected: int) -> None:
    assert parse_quantity(quantity) == expected


@pytest.mark.parametrize("bad", ["", "Gi", "10GB", "ten", "1.2.3Gi", "5 Gi"])
def test_parse_quantity_refuses_garbage(bad: str) -> None:
    with pytest.raises(KubeInvalid, match="not a Kubernetes quantity"):
        parse_quantity(bad)


def test_names_are_dns_labels() -> None:
    assert dns_label("My_Volume.01") == "my-volume-01"
    assert dns_label("a" * 100) == "a" * 63
    assert dns_label("---") == "x"
    name = default_snapshot_name("Data_Volume" * 10)
    assert len(name) <= 63 and name == dns_label(name)
