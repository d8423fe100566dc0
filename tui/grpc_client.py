"""The terminal UI's client interface over the lamina.v1 API: a remote `lamina serve`.

``GrpcClient`` implements ``LaminaClient`` (tui/client.py) call for call with the API's
RPCs, so every screen works the same against a server. Paths the UI asks for (restore
targets, extract folders, mountpoints) are the server's: a mount happens on its machine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import grpc

from lamina.backend.api.client import ApiClient, TaskInfo, task_info
from lamina.backend.api.convert import point_info
from lamina.backend.errors import UsageError
from lamina.protos import lamina_v1_pb2 as pb

from .client import (
    Capabilities,
    Cluster,
    ClusterCheck,
    FileEntry,
    JobView,
    Point,
    RepositorySummary,
    Volume,
    volume_key,
    volumes_with_backups,
)

__all__ = ["GrpcClient"]

_FILE_KINDS = {"file": "file", "dir": "dir", "symlink": "symlink"}


def _point(message: pb.Point) -> Point:
    info = point_info(message)
    s = message.stats
    return Point(
        id=info.id,
        parent=info.parent,
        kind=info.kind,
        volume=volume_key(info.volume.cluster, info.volume.namespace, info.volume.name),
        created=info.created,
        capacity=info.capacity,
        bytes_read=s.bytes_read,
        bytes_new=s.bytes_new,
        bytes_stored=s.bytes_stored,
        bytes_deduplicated=s.bytes_deduplicated,
        bytes_uploaded=s.bytes_uploaded,
        duration=s.duration_seconds,
        image_digest=info.image_digest,
        snapshot_handle=info.snapshot_handle,
        verify_state=message.verify_state,
        protected=message.protected,
        manifest=info.manifest,
    )


def _job_view(task: TaskInfo) -> JobView:
    p = task.progress
    if task.done and task.finished is not None:
        elapsed = task.finished - (task.started or task.created)
    else:
        elapsed = p.elapsed if p is not None else 0.0
    volume = task.volume
    return JobView(
        id=task.id,
        kind=task.kind,
        description=task.description,
        state=task.state,
        phase=p.phase if p else ("queued" if task.state == "queued" else ""),
        done=p.done if p else 0,
        total=p.total if p else None,
        rate=p.rate if p else 0.0,
        eta=p.eta if p else None,
        read=p.read if p else 0,
        stored=p.stored if p else 0,
        deduplicated=p.deduplicated if p else 0,
        elapsed=elapsed,
        error=task.error or None,
        summary=task.summary if task.done else "",
        log=task.log,
        volume=volume_key(volume.cluster, volume.namespace, volume.name) if volume else None,
        point=task.point or None,
        created=task.created,
        unit=p.unit if p else "bytes",
    )


class GrpcClient:
    """``LaminaClient`` over a lamina server."""

    def __init__(self, client: ApiClient) -> None:
        self.api = client

    @classmethod
    def connect(
        cls, address: str, *, token_file: str | None = None, ca_file: str | None = None
    ) -> GrpcClient:
        return cls(ApiClient.from_files(address, token_file=token_file, ca_file=ca_file))

    def close(self) -> None:
        self.api.close()

    # ------------------------------------------------------------------ repository

    def repository(self) -> RepositorySummary:
        info = self.api.info()
        return RepositorySummary(
            info.url, info.id, info.encrypted, info.compression, server=self.api.address
        )

    def capabilities(self) -> Capabilities:
        c = self.api.server_info().capabilities
        return Capabilities(
            browse=c.browse,
            extract=c.extract,
            mount=c.mount,
            delete=c.delete,
            protect=c.protect,
        )

    # ------------------------------------------------------------------ clusters

    def list_clusters(self) -> list[Cluster]:
        return [
            Cluster(c.name, c.kind, c.current, c.server, c.namespace)
            for c in self.api.list_clusters()
        ]

    def check_clusters(
        self, names: Sequence[str] | None = None, timeout: float = 3.0
    ) -> dict[str, ClusterCheck]:
        results = self.api.check_clusters(names, timeout=timeout)
        return {name: ClusterCheck(r.ok, r.detail, r.seconds) for name, r in results.items()}

    def list_volumes(self, cluster: str, namespace: str | None = None) -> list[Volume]:
        listed = self.api.list_cluster_volumes(cluster, namespace)
        return volumes_with_backups(cluster, namespace, listed, self.api.list_points())

    # ------------------------------------------------------------------ points

    def list_points(self, volume: str | None = None) -> list[Point]:
        return [_point(m) for m in self.api.point_messages(volume, include_manifest=True)]

    def chain(self, point_id: str) -> list[Point]:
        return [_point(m) for m in self.api.chain_messages(point_id, include_manifest=True)]

    def set_protected(self, point_id: str, protected: bool) -> None:
        self.api.set_protection(point_id, protected)

    # ------------------------------------------------------------------ jobs

    def start_backup(self, cluster: str, namespace: str, name: str) -> str:
        return self.api.start_volume_backup(cluster, namespace, name).id

    def start_verify(self, point_id: str, deep: bool = False) -> str:
        return self.api.start_verify(point_id, deep=deep).id

    def start_restore(self, point_id: str, target: str, overwrite: bool = False) -> str:
        if not target.strip():
            raise UsageError("give a file or device (on the server) to restore to")
        return self.api.start_restore(point_id, target, overwrite=overwrite).id

    def start_extract(self, point_id: str, paths: Sequence[str], to_dir: str) -> str:
        if not paths:
            raise UsageError("mark files or folders to extract first")
        if not to_dir.strip():
            raise UsageError("give a folder (on the server) to extract to")
        return self.api.start_extract(point_id, paths, to_dir).id

    def start_delete(self, point_id: str) -> str:
        return self.api.start_delete(point_id).id

    def jobs(self) -> list[JobView]:
        return [_job_view(t) for t in self.api.tasks()]

    def job(self, job_id: str) -> JobView:
        return _job_view(self.api.task(job_id, include_log=True))

    def cancel_job(self, job_id: str) -> None:
        self.api.cancel(job_id)

    def watch_job(self, job_id: str, listener: Callable[[JobView], None]) -> Callable[[], None]:
        """Follow the task on a thread of its own; the first call gives its state now."""
        self.api.task(job_id)  # an unknown id fails here, in the caller's thread
        call = self.api.stub.WatchTask(
            pb.WatchTaskRequest(id=job_id, include_log=True), metadata=self.api.metadata
        )
        stopped = threading.Event()

        def follow() -> None:
            try:
                for message in call:
                    if stopped.is_set():
                        return
                    listener(_job_view(task_info(message)))
            except grpc.RpcError:
                return  # unwatched, or the server went away: the UI keeps the last state

        threading.Thread(target=follow, name=f"lamina-watch-{job_id}", daemon=True).start()

        def unwatch() -> None:
            stopped.set()
            call.cancel()

        return unwatch

    # ------------------------------------------------------------------ files

    def list_files(self, point_id: str, path: str) -> list[FileEntry]:
        folder = "/" + path.strip("/")
        return [
            FileEntry(
                path=folder.rstrip("/") + "/" + e.name,
                name=e.name,
                kind=_FILE_KINDS.get(e.kind, "other"),
                size=e.size,
                mtime=e.mtime_ns / 1e9,
                mode=e.mode,
                target=e.link_target,
            )
            for e in self.api.list_files(point_id, path)
        ]

    def read_file(self, point_id: str, path: str, limit: int) -> bytes:
        if limit <= 0:
            return b""
        return self.api.read_file(point_id, path, length=limit)

    # ------------------------------------------------------------------ mounts

    def mount(self, point_id: str, mountpoint: str) -> str:
        if not mountpoint.strip():
            raise UsageError("give a folder (on the server) to mount on")
        return self.api.mount(point_id, mountpoint).mountpoint

    def unmount(self, point_id: str) -> None:
        # The server's own list: mounts made by other clients of it count too.
        where = self.mounts().get(point_id)
        if where is None:
            raise UsageError(f"point {point_id} is not mounted")
        self.api.unmount(where)

    def mounts(self) -> dict[str, str]:
        return {m.point: m.mountpoint for m in self.api.list_mounts() if m.point is not None}
