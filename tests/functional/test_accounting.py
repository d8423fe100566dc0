"""Requests counted per job, proved against what crossed the wire to a real SeaweedFS.

The counting proxy (tests/support/s3proxy.py) sees every HTTP request lamina sends and
can lose answers to force retries; lamina's own count of each job must equal it exactly,
by operation, with its retries and bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lamina.backend.catalog import Catalog
from lamina.backend.errors import UsageError
from lamina.backend.service import Job, Service, init_repository
from lamina.backend.service.accounting import PriceTable, RequestCounts, load_prices
from tests.support.s3proxy import S3Proxy, s3_proxy
from tests.support.seaweedfs import S3Server
from tests.support.volumes import make_volume

OPS = ("put", "get", "head", "list", "delete", "copy")


def _reset(proxy: S3Proxy) -> None:
    proxy.operations = Counter()
    proxy.requests = Counter()
    proxy.bytes_up = proxy.bytes_down = proxy.injected = 0


def _assert_equal(counts: RequestCounts | None, proxy: S3Proxy) -> None:
    assert counts is not None
    assert counts.by_op == {op: proxy.operations.get(op, 0) for op in OPS}
    assert sum(proxy.operations.values()) == counts.total
    assert counts.retries == proxy.injected
    assert counts.bytes_up == proxy.bytes_up
    assert counts.bytes_down == proxy.bytes_down


def _run(job: Job) -> Job:
    job.wait()
    assert job.error is None, job.error
    return job


@pytest.mark.s3
def test_job_requests_equal_the_wire_exactly_with_retries(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"s3://{s3_env.create_bucket()}/repo"
    init_repository(url)
    image = make_volume(tmp_path / "disk.img", 24 * 1024 * 1024, seed=11)
    with s3_proxy(s3_env.endpoint_url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
        service = Service(url, catalog=f"sqlite:///{tmp_path}/catalog.sqlite")
        try:
            # A backup whose first two PUTs and first GET lose their answers: retried.
            proxy.lose_answer_of("PUT", "", times=2)
            proxy.lose_answer_of("GET", "", times=1)
            backup = _run(service.start_backup(str(image), "ns/vol"))
            assert proxy.injected == 3
            counts = service.job_requests(backup.id)
            _assert_equal(counts, proxy)
            assert counts is not None and counts.by_op["put"] > 2 and counts.retries == 3

            # A restore and a deep verify, each counted on its own.
            point_id: str = backup.result.id
            _reset(proxy)
            restore = _run(service.start_restore(point_id, str(tmp_path / "out.img")))
            _assert_equal(service.job_requests(restore.id), proxy)
            _reset(proxy)
            verify = _run(service.start_verify(point_id, deep=True))
            _assert_equal(service.job_requests(verify.id), proxy)

            # Forget and prune delete: DELETE requests counted too.
            _run(service.start_backup(str(image), "ns/vol", parent="none"))
            _reset(proxy)
            from lamina.backend.engine.lifecycle import Policy

            forget = _run(service.start_forget(Policy(last=1), volume="ns/vol"))
            assert forget.result.removed == [backup.result.id]
            forgotten = service.job_requests(forget.id)
            _assert_equal(forgotten, proxy)
            assert forgotten is not None and forgotten.by_op["delete"] > 0
            _reset(proxy)
            prune = _run(service.start_prune())
            _assert_equal(service.job_requests(prune.id), proxy)
        finally:
            service.close()
    # The catalog holds the same figures as the job.
    catalog = Catalog.open(f"sqlite:///{tmp_path}/catalog.sqlite")
    try:
        recorded = catalog.job(backup.id)
    finally:
        catalog.close()
    assert recorded is not None and counts is not None
    assert recorded.requests == counts.by_op and recorded.retries == 3
    assert recorded.bytes_up == counts.bytes_up and recorded.cost_usd == pytest.approx(
        counts.cost_usd
    )


@pytest.mark.s3
def test_cli_summary_and_json_show_the_requests(
    s3_cli_env: dict[str, str], s3_server: S3Server, tmp_path: Path
) -> None:
    url = f"s3://{s3_server.create_bucket()}/repo"
    image = make_volume(tmp_path / "disk.img", 4 * 1024 * 1024, seed=12)
    lamina = [sys.executable, "-m", "lamina.backend.cli.main"]
    env = {**s3_cli_env, "LAMINA_CATALOG": f"sqlite:///{tmp_path}/c.sqlite"}
    subprocess.run([*lamina, "repo", "init", url], env=env, check=True, capture_output=True)
    text = subprocess.run(
        [*lamina, "backup", "--repo", url, "--volume", "ns/v", str(image)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert text.returncode == 0, text.stderr
    (line,) = [x for x in text.stdout.splitlines() if " up, " in x]
    assert " PUT" in line and "about $" in line
    out = subprocess.run(
        [*lamina, "backup", "--repo", url, "--volume", "ns/v", str(image), "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    requests = json.loads(out.stdout)["job"]["requests"]
    assert requests["by_operation"]["put"] >= 1 and requests["total"] == sum(
        requests["by_operation"].values()
    )
    history = json.loads(
        subprocess.run(
            [*lamina, "history", "--json", "--kind", "backup"],
            env=env,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert history[0]["requests"] == requests["by_operation"]


def test_price_table_defaults_and_an_override_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "none"))
    default = load_prices()
    assert default.date and default.per_thousand["put"] == 0.005
    counts = RequestCounts({"put": 1000, "get": 10000, "delete": 5}, 0, 0, 0)
    assert default.cost(counts) == pytest.approx(0.005 + 0.004)
    override = tmp_path / "prices.json"
    override.write_text(json.dumps({"date": "2030-01", "per_1000_requests": {"put": 0.01}}))
    monkeypatch.setenv("LAMINA_PRICES", str(override))
    table = load_prices()
    assert (table.date, table.per_thousand["put"], table.per_thousand["get"]) == (
        "2030-01",
        0.01,
        0.0004,
    )
    assert isinstance(table, PriceTable)
    override.write_text(json.dumps({"per_1000_requests": {"teleport": 1}}))
    with pytest.raises(UsageError, match="per_1000_requests takes only"):
        load_prices()
    override.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        load_prices()
    assert os.environ["LAMINA_PRICES"] == str(override)


def test_forget_and_prune_dry_runs_print_what_the_real_run_would_save(tmp_path: Path) -> None:
    lamina = [sys.executable, "-m", "lamina.backend.cli.main"]
    repo = str(tmp_path / "repo")
    init_repository(repo)
    env = {**os.environ, "LAMINA_CATALOG": "none"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*lamina, *args], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result

    for seed in (1, 2):
        image = make_volume(tmp_path / f"disk{seed}.img", 2 * 1024 * 1024, seed=seed)
        run("backup", "--repo", repo, "--volume", "ns/v", "--parent", "none", str(image))
    forget = run("forget", "--repo", repo, "--keep-last", "1", "--dry-run")
    assert "the real run would make about 3 requests (3 DELETE)" in forget.stdout
    would_forget = json.loads(
        run("forget", "--repo", repo, "--keep-last", "1", "--dry-run", "--json").stdout
    )["would"]
    run("forget", "--repo", repo, "--keep-last", "1")
    dry = json.loads(run("prune", "--repo", repo, "--dry-run", "--json").stdout)
    assert "save" in run("prune", "--repo", repo, "--dry-run").stdout
    real = json.loads(run("prune", "--repo", repo, "--json").stdout)
    assert dry["would"]["bytes_saved"] == real["bytes_reclaimed"] > 0
    assert dry["would"]["requests"]["delete"] >= real["packs_deleted"] > 0
    assert would_forget["bytes_saved_is_upper_bound"] is True
    assert would_forget["bytes_saved"] >= real["bytes_reclaimed"]
