"""Which lamina mounts exist on this machine, for any process that asks (a restarted TUI).

A mount process records itself in a small file while it serves: mount point, point, pid and
repository. The kernel's mount table (/proc/self/mountinfo, FUSE type ``fuse.lamina``)
says whether it is still mounted; a record whose process is gone or whose mount is not
there is dropped. The records live in a folder only this user can write:
``$XDG_RUNTIME_DIR/lamina/mounts``, else ``/tmp/lamina-UID/mounts``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FS_TYPE = "fuse.lamina"


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    device: str  # major:minor


@dataclass(frozen=True)
class MountRecord:
    mountpoint: str
    point: str | None  # None: the whole repository
    pid: int
    repo: str
    made_mountpoint: bool = False  # the folder was made for the mount: removed on unmount


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_table() -> list[MountEntry]:
    """The kernel's mount table as this process sees it."""
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            entries.append(
                MountEntry(
                    mountpoint=_unescape(fields[4]),
                    fstype=fields[sep + 1],
                    source=_unescape(fields[sep + 2]),
                    device=fields[2],
                )
            )
    return entries


def mount_path(path: str) -> str:
    """An absolute, symlink-free path, as the mount table spells it, without stat-ing the
    last component (a dead mount)."""
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(parent), name)


def repo_key(url: str) -> str:
    """One spelling of a repository URL: an absolute path for local folders."""
    url = url.removeprefix("file://")
    return url if "://" in url else os.path.abspath(url)


def state_dir() -> Path:
    """The folder of the records, made private to this user (refused when it is not)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        base = Path(runtime) / "lamina"
    else:
        base = Path("/tmp") / f"lamina-{os.getuid()}"
    folder = base / "mounts"
    for path in (base, folder):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise OSError(f"{path} is not a private folder of this user")
    return folder


def _record_path(mountpoint: str) -> Path:
    return state_dir() / (
        hashlib.sha256(mountpoint.encode("utf-8", "surrogateescape")).hexdigest()[:24] + ".json"
    )


def write_record(record: MountRecord) -> None:
    """Record (or re-record) a mount; best effort: a mount works without its record."""
    with contextlib.suppress(OSError):
        path = _record_path(record.mountpoint)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(record.__dict__))
        os.replace(tmp, path)


def remove_record(mountpoint: str, pid: int) -> None:
    """Drop the record of ``mountpoint`` if process ``pid`` wrote it."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        path = _record_path(mountpoint)
        if int(json.loads(path.read_text())["pid"]) == pid:
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse(data: Any) -> MountRecord:
    point = data.get("point")
    return MountRecord(
        mountpoint=str(data["mountpoint"]),
        point=str(point) if point is not None else None,
        pid=int(data["pid"]),
        repo=str(data["repo"]),
        made_mountpoint=bool(data.get("made_mountpoint", False)),
    )


def live_records() -> list[MountRecord]:
    """The recorded mounts that are mounted and served; stale records are deleted."""
    try:
        folder = state_dir()
        files = sorted(folder.glob("*.json"))
    except OSError:
        return []
    mounted = {m.mountpoint for m in mount_table() if m.fstype == FS_TYPE}
    out = []
    for path in files:
        try:
            record = _parse(json.loads(path.read_text()))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            with contextlib.suppress(OSError):
                path.unlink()  # unreadable: no process can be using it
            continue
        if record.mountpoint in mounted and _alive(record.pid):
            out.append(record)
        elif not _alive(record.pid):
            with contextlib.suppress(OSError):
                path.unlink()
    return out
