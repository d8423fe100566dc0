"""The catalog's copy of the point list, on SQLite and PostgreSQL, over a real SeaweedFS
repository shared by two "hosts" (this process, and ``lamina`` processes with their own
catalog and local cache): what the other host adds, replaces or deletes is picked up on the
next listing, never shown stale; a writer that died before its marker write is picked up by
the next full listing; ``lamina catalog rebuild`` puts back what the repository holds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from lamina.backend.catalog import Catalog
from lamina.backend.catalog.schema import point_list, point_list_state
from lamina.backend.cli.main import main
from lamina.backend.engine.repository import Repository
from lamina.backend.engine.storage import open_storage
from lamina.backend.service import PointInfo, Service, init_repository
from lamina.backend.service.pointlist import RECONCILE_SECONDS
from tests.support.postgres import PostgresServer
from tests.support.volumes import make_volume

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]
MiB = 1024 * 1024


def lamina(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*LAMINA, *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def other_catalog_url(catalog_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The other host's own catalog, of the same kind as ``catalog_url``."""
    if catalog_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path}/other-catalog.sqlite"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
def other_host(
    s3_cli_env: dict[str, str], other_catalog_url: str, tmp_path: Path
) -> dict[str, str]:
    return {
        **s3_cli_env,
        "LAMINA_CACHE_DIR": str(tmp_path / "other-cache"),
        "LAMINA_CATALOG": other_catalog_url,
    }


def backup(repo: str, volume: str, image: Path, env: dict[str, str]) -> str:
    out = lamina("backup", "--repo", repo, "--volume", volume, str(image), "--json", env=env)
    return str(json.loads(out.stdout)["id"])


def other_listing(repo: str, env: dict[str, str]) -> list[tuple[str, str | None]]:
    points = json.loads(lamina("points", "--repo", repo, "--json", env=env).stdout)
    return [(p["id"], p["parent"]) for p in points]


def backed_up(service: Service, image: Path, volume: str) -> str:
    job = service.start_backup(str(image), volume)
    job.wait()
    assert isinstance(job.result, PointInfo), job.error
    return job.result.id


def listing(service: Service) -> list[tuple[str, str | None]]:
    return [(p.id, p.parent) for p in service.list_points()]


def catalog_rows(url: str, repository_id: str) -> set[str]:
    catalog = Catalog.open(url, reap=False)
    try:
        with catalog.engine.connect() as conn:
            rows = conn.execute(
                sa.select(point_list.c.point_id).where(point_list.c.repository_id == repository_id)
            ).all()
    finally:
        catalog.close()
    return {str(r[0]) for r in rows}


def execute(url: str, statement: sa.Executable) -> None:
    catalog = Catalog.open(url, reap=False)
    try:
        with catalog.engine.begin() as conn:
            conn.execute(statement)
    finally:
        catalog.close()


def test_what_another_host_adds_replaces_or_deletes_is_never_shown_stale(
    catalog_url: str,
    other_catalog_url: str,
    s3_repo_url: str,
    other_host: dict[str, str],
    tmp_path: Path,
) -> None:
    init_repository(s3_repo_url)
    image = make_volume(tmp_path / "disk.img", 2 * MiB, seed=5)
    first = backup(s3_repo_url, "ns/a", image, other_host)
    service = Service(s3_repo_url, catalog=catalog_url)
    try:
        repository_id = service.info().id
        assert listing(service) == [(first, None)]
        assert catalog_rows(catalog_url, repository_id) == {first}

        # The other host adds a point: this host's next listing shows it.
        make_volume(image, 2 * MiB, seed=6)
        second = backup(s3_repo_url, "ns/a", image, other_host)
        assert listing(service) == [(first, None), (second, first)]
        (volume,) = service.list_volumes()
        assert (volume.points, volume.last_point.id, volume.chain_length) == (2, second, 2)

        # Deleting the parent folds it into the child, whose manifest is replaced: the
        # child shows its new parent, and the deleted point is gone.
        lamina("delete", "--repo", s3_repo_url, first, env=other_host)
        assert listing(service) == [(second, None)]
        assert catalog_rows(catalog_url, repository_id) == {second}
        (volume,) = service.list_volumes()
        assert (volume.points, volume.chain_length) == (1, 1)

        # And the other way round: this host writes, the other host's catalog follows.
        third = backed_up(service, image, "ns/b")
        assert other_listing(s3_repo_url, other_host) == listing(service)
        assert catalog_rows(other_catalog_url, repository_id) == {second, third}
    finally:
        service.close()


def test_a_point_whose_writer_died_before_the_marker_is_found_by_the_next_full_listing(
    catalog_url: str, s3_repo_url: str, tmp_path: Path
) -> None:
    init_repository(s3_repo_url)
    image = make_volume(tmp_path / "disk.img", 2 * MiB, seed=7)
    service = Service(s3_repo_url, catalog=catalog_url)
    try:
        made = backed_up(service, image, "ns/a")
        assert [p.id for p in service.list_points()] == [made]
        repository_id = service.info().id
        # A writer on another host put its manifest and died before writing the marker.
        repo = Repository.open(open_storage(s3_repo_url))
        try:
            point = repo.load_point(made)
            orphan = {**point.manifest, "id": "0123456789abcdef", "parent": made}
            orphan["created"] = "2099-01-01T00:00:00Z"
            repo.storage.put("manifests/0123456789abcdef", json.dumps(orphan).encode())
        finally:
            repo.close()
        # The marker holds its token: the listing trusts the catalog, for a while...
        assert [p.id for p in service.list_points()] == [made]
        # ...until the last full listing is older than the bound: then the point shows.
        execute(
            catalog_url,
            point_list_state.update()
            .where(point_list_state.c.repository_id == repository_id)
            .values(reconciled_at=time.time() - RECONCILE_SECONDS - 1),
        )
        assert [p.id for p in service.list_points()] == [made, "0123456789abcdef"]
    finally:
        service.close()


def test_the_listing_reads_the_catalog_and_a_rebuild_puts_back_the_repository(
    catalog_url: str, s3_repo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_repository(s3_repo_url)
    image = make_volume(tmp_path / "disk.img", 2 * MiB, seed=8)
    service = Service(s3_repo_url, catalog=catalog_url)
    try:
        made = backed_up(service, image, "ns/a")
        truth = service.list_volumes()
        repository_id = service.info().id
        # Change the row's manifest only: shown, so the listing served the catalog.
        catalog = Catalog.open(catalog_url, reap=False)
        try:
            with catalog.engine.connect() as conn:
                text = conn.execute(
                    sa.select(point_list.c.manifest).where(point_list.c.point_id == made)
                ).scalar_one()
        finally:
            catalog.close()
        marked = {**json.loads(text), "created": "2000-01-01T00:00:00Z"}
        execute(
            catalog_url,
            point_list.update()
            .where(point_list.c.point_id == made)
            .values(manifest=json.dumps(marked)),
        )
        assert [p.created for p in service.list_points()] == ["2000-01-01T00:00:00Z"]

        def cli(*args: str) -> str:
            capsys.readouterr()
            assert main([*args, "--catalog", catalog_url]) == 0
            return capsys.readouterr().out

        out = cli("catalog", "rebuild", "--repo", s3_repo_url)
        assert out == (
            f"the catalog holds 1 point of repository {repository_id}, listed from the repository\n"
        )
        assert service.list_volumes() == truth
        status = json.loads(cli("catalog", "status", "--json"))
        assert [(s["repository_id"], s["points"], s["volumes"]) for s in status] == [
            (repository_id, 1, 1)
        ]
        text_status = cli("catalog", "status")
        assert text_status.startswith(f"repository {repository_id}: 1 point of 1 volume, ")
        assert text_status.endswith("1 repository in the catalog\n")
    finally:
        service.close()


def test_volume_summaries_from_the_catalog_equal_those_from_the_repository(
    catalog_url: str, tmp_path: Path
) -> None:
    repo_url = str(tmp_path / "repo")
    init_repository(repo_url)
    image = make_volume(tmp_path / "disk.img", 2 * MiB, seed=9)
    service = Service(repo_url, catalog=catalog_url)
    try:
        for volume, seed in [("ns/a", 1), ("ns/a", 2), ("ns/a", 3), ("ns/b", 4), ("x/c", 5)]:
            make_volume(image, 2 * MiB, seed=seed)
            backed_up(service, image, volume)
        cached = service.list_volumes()
        points = service.list_points("ns/a")
    finally:
        service.close()
    uncached = Service(repo_url, catalog="none")
    try:
        assert cached == uncached.list_volumes()
        assert points == uncached.list_points("ns/a")
        assert [(v.points, v.chain_length) for v in cached] == [(3, 3), (1, 1), (1, 1)]
    finally:
        uncached.close()
