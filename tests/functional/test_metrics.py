"""/metrics: values from the catalog and the running jobs, read with prometheus_client's
own parser, surviving a restart of the server; the example alert rules in deploy/."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lamina.backend.catalog import Catalog, JobRecord
from lamina.backend.service import Service, init_repository
from lamina.backend.service.metrics import registry_for
from tests.support.volumes import make_volume

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "lamina-alerts.yaml"
LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(service: Service) -> str:
    registry, collector = registry_for(service)
    try:
        return generate_latest(registry).decode()
    finally:
        collector.close()


def test_metrics_come_from_the_catalog_and_survive_a_restart(
    catalog_url: str, tmp_path: Path
) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    image = make_volume(tmp_path / "disk.img", 2 * 1024 * 1024, seed=21)
    service = Service(repo, catalog=catalog_url, origin="api")
    try:
        backup = service.start_backup(str(image), "prod/db")
        backup.wait()
        failed = service.start_restore("ffffffffffff", str(tmp_path / "out.img"))
        failed.wait()
        counts = service.job_requests(backup.id)
        restore_counts = service.job_requests(failed.id)
    finally:
        service.close()
    assert counts is not None and restore_counts is not None
    point = backup.result

    # A new service on the same catalog: a restarted server.
    restarted = Service(repo, catalog=catalog_url, origin="api")
    try:
        got = samples(scrape(restarted))
    finally:
        restarted.close()
    assert got[("lamina_catalog_up", ())] == 1
    assert got[("lamina_jobs_total", (("kind", "backup"), ("state", "succeeded")))] == 1
    assert got[("lamina_jobs_total", (("kind", "restore"), ("state", "failed")))] == 1
    assert got[("lamina_job_duration_seconds_count", (("kind", "backup"),))] == 1
    assert got[("lamina_job_duration_seconds_bucket", (("kind", "backup"), ("le", "+Inf")))] == 1
    assert got[("lamina_bytes_read_total", ())] == point.stats["bytes_read"]
    assert got[("lamina_bytes_stored_total", ())] == point.stats["bytes_stored"]
    for op in ("put", "get", "list", "head", "delete"):
        expected = counts.by_op[op] + restore_counts.by_op[op]
        assert got[("lamina_s3_requests_total", (("op", op),))] == expected, op
    last = got[("lamina_last_success_timestamp_seconds", (("volume", "local/prod/db"),))]
    assert last == pytest.approx(backup.finished)
    assert got[("lamina_repository_stored_bytes", ())] == point.stats["bytes_uploaded"]
    # Bounded labels: no point or job id anywhere.
    for _name, labels in got:
        for _label, value in labels:
            assert point.id not in value and backup.id not in value


def test_lamina_serve_serves_metrics_over_http(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    catalog = f"sqlite:///{tmp_path}/catalog.sqlite"
    image = make_volume(tmp_path / "disk.img", 1024 * 1024, seed=22)
    backup = subprocess.run(
        [*LAMINA, "backup", "--repo", repo, "--volume", "ns/v", str(image)],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "LAMINA_CATALOG": catalog},
    )
    assert backup.returncode == 0, backup.stderr
    port = _free_port()
    server = subprocess.Popen(
        [
            *LAMINA,
            "serve",
            "--repo",
            repo,
            "--listen",
            f"127.0.0.1:{_free_port()}",
            "--insecure-no-auth",
            "--catalog",
            catalog,
            "--metrics-listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        text = _get(f"http://127.0.0.1:{port}/metrics", server)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    got = samples(text)
    assert got[("lamina_jobs_total", (("kind", "backup"), ("state", "succeeded")))] == 1
    assert ("lamina_last_success_timestamp_seconds", (("volume", "local/ns/v"),)) in got


def test_alert_rules_use_exposed_metrics_and_fire_as_described(
    tmp_path: Path,
) -> None:
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert set(rules) == {"LaminaVolumeNotBackedUp", "LaminaJobsFailed", "LaminaCatalogDown"}
    catalog_url = f"sqlite:///{tmp_path}/catalog.sqlite"
    now = time.time()
    catalog = Catalog.open(catalog_url)
    try:
        for job_id, volume, ended, state in (
            ("old", "local/ns/stale", now - 27 * 3600, "succeeded"),
            ("new", "local/ns/fresh", now - 3600, "succeeded"),
            ("bad", "local/ns/fresh", now - 60, "failed"),
        ):
            catalog.record_job(
                JobRecord(
                    id=job_id,
                    kind="backup",
                    state=state,
                    repository="",
                    volume=volume,
                    created_at=ended - 10,
                    started_at=ended - 10,
                    ended_at=ended,
                )
            )
    finally:
        catalog.close()
    service = Service("", catalog=catalog_url)
    try:
        text = scrape(service)
    finally:
        service.close()
    exposed = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    for rule in rules.values():
        for name in re.findall(r"\blamina_[a-z_]+", rule["expr"]):
            assert name in exposed, (rule["alert"], name)
    got = samples(text)

    # time() - lamina_last_success_timestamp_seconds > 26 * 3600
    stale = rules["LaminaVolumeNotBackedUp"]["expr"]
    hours = int(re.search(r"> (\d+) \* 3600", stale).group(1))  # type: ignore[union-attr]
    firing = {
        dict(labels)["volume"]
        for (name, labels), value in got.items()
        if name == "lamina_last_success_timestamp_seconds" and now - value > hours * 3600
    }
    assert firing == {"local/ns/stale"}
    # increase(lamina_jobs_total{state=~"failed|interrupted"}[1h]) > 0: a failed job counted.
    assert got[("lamina_jobs_total", (("kind", "backup"), ("state", "failed")))] == 1
    assert got[("lamina_catalog_up", ())] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, server: subprocess.Popen[str], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return str(answer.read().decode())
        except OSError:
            if server.poll() is not None:
                raise AssertionError(
                    f"lamina serve exited: {server.stderr.read() if server.stderr else ''}"
                ) from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
