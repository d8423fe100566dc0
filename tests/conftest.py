"""Fixtures shared by every test suite.

Keep this file a thin list of fixtures: the machinery behind them lives in ``tests/support``.

S3 (SeaweedFS on 127.0.0.1, one server for the whole run, started on first use):
- ``s3_server``: how to reach it (endpoint, keys) and ``create_bucket()`` for a fresh bucket.
- ``s3_env``: points boto3 at it through the AWS_* variables of this test process, so that
  ``open_storage("s3://bucket/prefix")`` works; undone after the test.
- ``s3_repo_url``: ``s3://<a new, empty bucket>/repo``, with ``s3_env`` in force.
- ``s3_cli_env``: a full environment (dict) for running the ``lamina`` CLI as a subprocess.

The job-history catalog (docs/catalog.md):
- every test session keeps its default catalog (``$XDG_STATE_HOME/lamina/catalog.sqlite``)
  in a folder of its own, never the user's;
- ``postgres_server``: a throwaway PostgreSQL cluster for the run (tests/support/postgres.py);
- ``catalog_url``: a new, empty catalog, once on SQLite and once on PostgreSQL.

Kubernetes: ``real_kube`` is a real kube-apiserver, kube-controller-manager and etcd on
loopback for the run (tests/support/kube_cluster.py), and ``kube_namespace`` a fresh namespace
in it for one test. The strict fake server (tests/support/fake_kube.py) stays for fast tests.

The local cache of S3 repositories (backend/engine/cache.py) lives in a folder of this run
(``LAMINA_CACHE_DIR``, inherited by the CLI processes tests start), never in the user's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support.kube_cluster import RealKube, find_scripts, real_kube
from tests.support.postgres import PostgresServer, find_binaries, postgres_server
from tests.support.seaweedfs import S3Server, seaweedfs_s3, subprocess_environment

# The model tests must not fail because the machine is busy (CI shares two cores with the
# servers the tests start): no per-example deadline and no "too slow" health check.
settings.register_profile(
    "lamina", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("lamina")

# Before any test runs (and any CLI subprocess inherits it): jobs recorded by the tests go
# to a catalog of this run, never to the user's.
_STATE_HOME = tempfile.mkdtemp(prefix="lamina-test-state-")
os.environ["XDG_STATE_HOME"] = _STATE_HOME
os.environ.pop("LAMINA_CATALOG", None)
os.environ.pop("LAMINA_PRICES", None)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir_of_this_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAMINA_CACHE_DIR", str(tmp_path_factory.mktemp("lamina-cache")))
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With LAMINA_NO_SKIPS=1 (set by `make test`), a skipped test fails the run: a test that
    did not run proves nothing, so it must never pass silently."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (
        report.skipped
        and os.environ.get("LAMINA_NO_SKIPS") == "1"
        and not hasattr(report, "wasxfail")
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped, but make test allows no skips: {report.longrepr}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with seaweedfs_s3() as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_repo_url(s3_env: S3Server) -> str:
    return f"s3://{s3_env.create_bucket()}/repo"


@pytest.fixture
def s3_cli_env(s3_server: S3Server) -> dict[str, str]:
    return subprocess_environment(s3_server)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if find_binaries() is None:
        pytest.skip("PostgreSQL is not installed (make test installs the postgresql package)")
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty catalog: one SQLite file, or one database of the test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/catalog.sqlite"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture(scope="session")
def real_kube_cluster() -> Iterator[RealKube]:
    if find_scripts() is None:
        pytest.skip("the loopback Kubernetes scripts are not found ($LAMINA_KUBE_SCRIPTS)")
    with real_kube() as cluster:
        yield cluster


@pytest.fixture
def kube_namespace(real_kube_cluster: RealKube) -> Iterator[str]:
    name = real_kube_cluster.new_namespace()
    yield name
    real_kube_cluster.delete_namespace(name)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups off the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (make test), every test of the real Kubernetes control plane runs on
    one worker, so the run starts one cluster, not one per worker."""
    for item in items:
        if "real_kube_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("real-kube"))
