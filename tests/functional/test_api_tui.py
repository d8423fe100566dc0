"""The service contract the terminal UI holds, over a real lamina server (RemoteService)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lamina.backend.errors import LaminaError
from lamina.backend.service import JobView, LaminaService, Service, init_repository
from lamina.backend.service.remote import ApiClient, RemoteService
from lamina.tui.client import mount_point, mounted_points
from tests.support.api_server import TOKEN, MiB, running_server
from tests.support.ext4_trees import make_source_tree, mkfs_ext4


def follow(client: LaminaService, job_id: str) -> list[JobView]:
    """Every view the watch delivers, up to the finished one."""
    views: list[JobView] = []
    done = threading.Event()

    def listen(view: JobView) -> None:
        views.append(view)
        if view.finished:
            done.set()

    unwatch = client.watch_job(job_id, listen)
    try:
        assert done.wait(60), f"job {job_id} did not finish"
    finally:
        unwatch()
    return views


def test_the_ui_client_interface_over_a_server(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    init_repository(url, grid_size=256 * 1024)
    source = make_source_tree(tmp_path / "tree")
    image = mkfs_ext4(source, tmp_path / "web.img", 8 * MiB)
    service = Service(url, local_root=str(tmp_path / "cluster"))
    service.add_local_volume("apps", "web", str(image))
    with running_server(service) as server:
        client: LaminaService = RemoteService(ApiClient(server.address, token=TOKEN))

        assert client.info().id == service.info().id
        caps = client.capabilities()
        assert (caps.browse, caps.extract, caps.delete, caps.protect, caps.mount) == (
            True,
            True,
            True,
            True,
            True,
        )
        assert "local" in [c.name for c in client.list_clusters()]
        assert client.check_clusters(["local"])["local"].ok
        (volume,) = client.list_cluster_volumes("local", with_backups=True)
        assert (volume.key, volume.in_cluster, volume.points) == ("local/apps/web", True, 0)

        backup = client.start_volume_backup("local", "apps", "web").id
        views = follow(client, backup)
        final = views[-1]
        assert final.state == "succeeded", final.error
        assert final.volume_key == "local/apps/web" and final.summary.startswith("point ")
        assert final.point is not None
        point = final.point
        (volume,) = client.list_cluster_volumes("local", with_backups=True)
        assert (volume.points, volume.last_point, volume.chain_length) == (1, point, 1)
        assert [p.id for p in client.chain(point)] == [point]

        verify = client.start_verify(point).id
        assert follow(client, verify)[-1].state == "succeeded"
        (listed,) = client.list_points("local/apps/web")
        assert listed.verify_state == "ok" and listed.kind == "full"

        client.protect(point)
        assert client.list_points()[0].protected
        refused = client.start_delete(point).id
        view = follow(client, refused)[-1]
        assert view.state == "failed" and "protected" in (view.error or "")
        client.unprotect(point)
        deleted = client.start_delete(point).id
        assert follow(client, deleted)[-1].state == "succeeded"
        assert client.list_points() == []

        # Browsing last: the service keeps browsed points open, which holds a shared
        # repository lock that a delete would wait for.
        again = client.start_volume_backup("local", "apps", "web").id
        point = follow(client, again)[-1].point or ""
        names = [e.name for e in client.list_files(point, "/etc")]
        assert names == ["hosts", "secret"]
        assert client.read_file(point, "/etc/hosts", length=9) == b"127.0.0.1"

        ids = [j.id for j in client.job_views()]
        assert ids == [backup, verify, refused, deleted, again]
        assert any("started" in line for line in client.job_view(backup).log)
        client.cancel_job(backup)  # finished: nothing changes
        assert client.job_view(backup).state == "succeeded"

        # mounts are the server's (tested for real in test_api_lifecycle.py)
        with pytest.raises(LaminaError, match="must be an absolute path on the server"):
            mount_point(client, point, "mnt")
        assert mounted_points(client) == {}
        with pytest.raises(LaminaError, match="no task"):
            client.watch_job("nope", lambda view: None)
