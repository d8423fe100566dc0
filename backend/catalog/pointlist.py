"""The catalog's copy of each repository's point list (docs/catalog.md, "The point list").

The repository stays the source of truth: these rows spare the LIST and the GETs of every
manifest while the repository's point list marker still holds the token they were stored
under (backend/service/pointlist.py decides when). A row holds a point's manifest as JSON
and the few fields a volume summary needs, so that the volumes screen is one query and
point objects are built only for the chain that is opened.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .schema import point_list, point_list_state
from .store import Catalog, CatalogError

_CHUNK = 500  # ids per IN (...) and rows per INSERT


@dataclass(frozen=True)
class ListState:
    """What the catalog holds of one repository's point list."""

    marker: str  # the repository's point list marker the rows are current under
    points: int
    reconciled_at: float  # when the repository was last listed in full


@dataclass(frozen=True)
class VolumeRow:
    """One volume of a repository, summarised by one query."""

    cluster: str
    namespace: str
    name: str
    points: int
    stored_bytes: int
    newest: dict[str, Any]  # the manifest of its newest point
    chain_length: int  # points in the newest point's chain


@dataclass(frozen=True)
class ListStatus:
    repository_id: str
    marker: str
    points: int
    volumes: int
    reconciled_at: float


def read_state(catalog: Catalog, repository_id: str) -> ListState | None:
    with catalog._reading() as conn:
        row = conn.execute(
            sa.select(point_list_state).where(point_list_state.c.repository_id == repository_id)
        ).first()
    if row is None:
        return None
    m = row._mapping
    return ListState(str(m["marker"]), int(m["points"]), float(m["reconciled_at"]))


def held_etags(catalog: Catalog, repository_id: str) -> dict[str, str]:
    """The points the catalog holds of a repository, each with its manifest's etag."""
    with catalog._reading() as conn:
        rows = conn.execute(
            sa.select(point_list.c.point_id, point_list.c.etag).where(
                point_list.c.repository_id == repository_id
            )
        ).all()
    return {str(pid): str(etag) for pid, etag in rows}


def store_listing(
    catalog: Catalog,
    repository_id: str,
    marker: str,
    listed: Mapping[str, str],
    fetched: Mapping[str, Mapping[str, Any]],
) -> None:
    """Make the rows of a repository exactly what one full listing found, in one transaction:
    ``listed`` (point id -> etag) read after the marker's token ``marker``, and the manifests
    ``fetched`` of the listed points whose rows were missing or had another etag. Rows of
    points no longer listed, or listed but not fetched, go."""

    def write(conn: Connection) -> None:
        where = point_list.c.repository_id == repository_id
        if conn.dialect.name == "postgresql":
            # Two listings storing at once would both insert the same new rows.
            key = zlib.crc32(repository_id.encode()) & 0x7FFFFFFF
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7369747, :k)"), {"k": key})
        held = {
            str(pid): str(etag)
            for pid, etag in conn.execute(
                sa.select(point_list.c.point_id, point_list.c.etag).where(where)
            ).all()
        }
        kept = {pid for pid, etag in held.items() if etag and listed.get(pid) == etag}
        gone = [pid for pid in held if pid not in kept]
        for start in range(0, len(gone), _CHUNK):
            conn.execute(
                point_list.delete().where(
                    where, point_list.c.point_id.in_(gone[start : start + _CHUNK])
                )
            )
        new = [
            _row(repository_id, pid, listed[pid], manifest)
            for pid, manifest in fetched.items()
            if pid in listed and pid not in kept
        ]
        for start in range(0, len(new), _CHUNK):
            conn.execute(point_list.insert(), new[start : start + _CHUNK])
        state = {"marker": marker, "points": len(kept) + len(new), "reconciled_at": time.time()}
        state_where = point_list_state.c.repository_id == repository_id
        if conn.execute(sa.select(point_list_state.c.marker).where(state_where)).first():
            conn.execute(point_list_state.update().where(state_where).values(**state))
        else:
            conn.execute(point_list_state.insert().values(repository_id=repository_id, **state))

    catalog._write(write)


def _row(
    repository_id: str, point_id: str, etag: str, manifest: Mapping[str, Any]
) -> dict[str, Any]:
    volume = manifest["volume"]
    stats = manifest.get("stats") or {}
    return {
        "repository_id": repository_id,
        "point_id": point_id,
        "etag": etag,
        "cluster": str(volume["cluster"]),
        "namespace": str(volume["namespace"]),
        "name": str(volume["name"]),
        "parent": str(manifest["parent"]) if manifest.get("parent") else None,
        "created": str(manifest["created"]),
        "capacity": int(manifest.get("capacity", 0)),
        "bytes_uploaded": int(stats.get("bytes_uploaded", 0) or 0),
        "manifest": json.dumps(manifest, separators=(",", ":")),
    }


def _manifest(point_id: str, text: str) -> dict[str, Any]:
    """A row's manifest; a damaged row (not JSON, or naming another point) is an error, so
    that the caller lists the repository instead of showing it."""
    try:
        manifest = json.loads(text)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or str(manifest.get("id")) != point_id:
        raise CatalogError(f"the catalog's row of point {point_id} is damaged")
    return manifest


def volume_summaries(catalog: Catalog, repository_id: str) -> list[VolumeRow]:
    """Every volume of a repository with its point count, bytes stored, newest point and
    that point's chain length, ordered by volume."""
    c = point_list.c
    volume = (c.cluster, c.namespace, c.name)
    # Grouped over the volume index (cheaper than a window over every row); only each
    # volume's newest row is joined back for its manifest. Two newest points created in the
    # same microsecond both come back: the greater id wins, as in the points' order.
    grouped = (
        sa.select(
            *volume,
            sa.func.max(c.created).label("newest"),
            sa.func.count().label("points"),
            sa.func.sum(c.bytes_uploaded).label("stored"),
        )
        .where(c.repository_id == repository_id)
        .group_by(*volume)
        .subquery()
    )
    query = sa.select(
        c.point_id, c.cluster, c.namespace, c.name, c.manifest, grouped.c.points, grouped.c.stored
    ).join(
        grouped,
        sa.and_(
            c.repository_id == repository_id,
            c.cluster == grouped.c.cluster,
            c.namespace == grouped.c.namespace,
            c.name == grouped.c.name,
            c.created == grouped.c.newest,
        ),
    )
    with catalog._reading() as conn:
        newest = conn.execute(query).all()
        parents: dict[str, str | None] = {
            str(pid): (str(parent) if parent else None)
            for pid, parent in conn.execute(
                sa.select(c.point_id, c.parent).where(c.repository_id == repository_id)
            ).all()
        }
    by_volume: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in newest:
        m = dict(row._mapping)
        key = (str(m["cluster"]), str(m["namespace"]), str(m["name"]))
        held = by_volume.get(key)
        if held is None or str(m["point_id"]) > str(held["point_id"]):
            by_volume[key] = m
    out = []
    for m in by_volume.values():
        point_id = str(m["point_id"])
        out.append(
            VolumeRow(
                cluster=str(m["cluster"]),
                namespace=str(m["namespace"]),
                name=str(m["name"]),
                points=int(m["points"]),
                stored_bytes=int(m["stored"] or 0),
                newest=_manifest(point_id, str(m["manifest"])),
                chain_length=_chain_length(point_id, parents),
            )
        )
    return out


def _chain_length(point_id: str, parents: Mapping[str, str | None]) -> int:
    length, current, seen = 0, point_id, set()
    while current not in seen:
        seen.add(current)
        length += 1
        parent = parents.get(current)
        if parent is None or parent not in parents:
            break
        current = parent
    return length


def manifests(
    catalog: Catalog, repository_id: str, volume: tuple[str, str, str] | None = None
) -> list[dict[str, Any]]:
    """The manifests of a repository's points (of one volume: cluster, namespace, name),
    oldest first."""
    c = point_list.c
    query = sa.select(c.point_id, c.manifest).where(c.repository_id == repository_id)
    if volume is not None:
        cluster, namespace, name = volume
        query = query.where(c.cluster == cluster, c.namespace == namespace, c.name == name)
    with catalog._reading() as conn:
        rows = conn.execute(query.order_by(c.created, c.point_id)).all()
    return [_manifest(str(pid), str(text)) for pid, text in rows]


def drop(catalog: Catalog, repository_id: str) -> None:
    """Forget a repository's point list (the next listing reads the repository in full)."""

    def write(conn: Connection) -> None:
        conn.execute(point_list.delete().where(point_list.c.repository_id == repository_id))
        conn.execute(
            point_list_state.delete().where(point_list_state.c.repository_id == repository_id)
        )

    catalog._write(write)


def status(catalog: Catalog) -> list[ListStatus]:
    """What the catalog holds, one entry per repository."""
    c = point_list.c
    distinct = sa.select(c.repository_id, c.cluster, c.namespace, c.name).distinct().subquery()
    with catalog._reading() as conn:
        states = conn.execute(
            sa.select(point_list_state).order_by(point_list_state.c.repository_id)
        ).all()
        volumes = {
            str(rid): int(n)
            for rid, n in conn.execute(
                sa.select(distinct.c.repository_id, sa.func.count()).group_by(
                    distinct.c.repository_id
                )
            ).all()
        }
    return [
        ListStatus(
            repository_id=str(s._mapping["repository_id"]),
            marker=str(s._mapping["marker"]),
            points=int(s._mapping["points"]),
            volumes=volumes.get(str(s._mapping["repository_id"]), 0),
            reconciled_at=float(s._mapping["reconciled_at"]),
        )
        for s in states
    ]
