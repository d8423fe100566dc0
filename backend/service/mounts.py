"""Mount supervision: starting the process that serves a mount, unmounting, and which
lamina mounts exist on this machine, for any process that asks (a restarted TUI).

The process that serves a mount is ``python -m lamina.fs.mount`` (``MOUNT_PROCESS``), run
detached in a session of its own; ``start_mount_process`` starts it and returns once the
mount answers. `lamina mount --daemon` and ``Service.mount`` both go through it.

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
import select
import shutil
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LaminaError

FS_TYPE = "fuse.lamina"
# The module that serves one mount in its own process (its argv: ``mount_command``).
MOUNT_PROCESS = "lamina.fs.mount"


class MountError(LaminaError):
    """A mount or unmount that cannot be done as asked."""


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


# ---------------------------------------------------------------------- the mount process


def mount_command(
    repo_url: str,
    mountpoint: str,
    *,
    point: str | None = None,
    cache_bytes: int,
    idle_timeout: float | None = None,
    log_file: str | None = None,
    password_file: str | None = None,
    password_fd: int | None = None,
    ready_fd: int | None = None,
) -> list[str]:
    """The argv of the process that serves a mount (see ``lamina.fs.mount``). Paths are made
    absolute: the daemon runs from / so that it keeps no folder busy."""
    repo = repo_url if "://" in repo_url else os.path.abspath(repo_url)
    command = [sys.executable, "-m", MOUNT_PROCESS, "--repo", repo, os.path.abspath(mountpoint)]
    command += ["--cache-size", str(cache_bytes)]
    for flag, value in (
        ("--point", point),
        ("--idle-timeout", None if idle_timeout is None else repr(idle_timeout)),
        ("--log-file", log_file and os.path.abspath(log_file)),
        ("--password-file", password_file and os.path.abspath(password_file)),
        ("--password-fd", None if password_fd is None else str(password_fd)),
        ("--ready-fd", None if ready_fd is None else str(ready_fd)),
    ):
        if value:
            command += [flag, value]
    return command


def start_mount_process(
    repo_url: str,
    mountpoint: str,
    *,
    point: str | None = None,
    cache_bytes: int,
    idle_timeout: float | None = None,
    log_file: str | None = None,
    password_file: str | None = None,
    password: bytes | None = None,
    timeout: float | None = None,
) -> int:
    """Start a mount in a detached process of its own session; return its pid once the
    mount answers. A password is handed over through a pipe, never a file or the argv.

    The process says ``ready`` or ``error: ...`` on a pipe; its error becomes this
    call's ``LaminaError``. With ``timeout``, a process that says nothing in time is ended.
    """
    read_fd, write_fd = os.pipe()
    passed = [write_fd]
    secret_fd = None
    if password is not None and not password_file:
        secret_fd, secret_write = os.pipe()
        os.write(secret_write, password)  # a password is far smaller than a pipe's buffer
        os.close(secret_write)
        passed.append(secret_fd)
    command = mount_command(
        repo_url,
        mountpoint,
        point=point,
        cache_bytes=cache_bytes,
        idle_timeout=idle_timeout,
        log_file=log_file,
        password_file=password_file,
        password_fd=secret_fd,
        ready_fd=write_fd,
    )
    try:
        child = subprocess.Popen(
            command,
            pass_fds=tuple(passed),
            start_new_session=True,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    finally:
        for fd in passed:
            os.close(fd)
    with os.fdopen(read_fd, "rb") as pipe:
        answer = _read_answer(pipe.fileno(), timeout)
    if answer is None:
        child.kill()
        child.wait()
        raise MountError(f"the mount process did not answer within {timeout:.0f} s")
    if answer == "ready":
        return child.pid
    child.wait()
    if answer.startswith("error: "):
        raise LaminaError(answer[len("error: ") :])
    raise LaminaError(
        f"the mount process exited (status {child.returncode}) before the mount was ready"
        + ("" if log_file else "; give --log-file to see why")
    )


def _read_answer(fd: int, timeout: float | None) -> str | None:
    """Everything written to the pipe until it closes; None when ``timeout`` passes first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks).decode(errors="replace").strip()
        chunks.append(chunk)


# ---------------------------------------------------------------------- unmounting


def find_mount(path: str) -> MountEntry | None:
    target = mount_path(path)
    found = [m for m in mount_table() if m.mountpoint == target]
    return found[-1] if found else None


def fusermount(mountpoint: str, *extra: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("fusermount") or shutil.which("fusermount3")
    command = [tool, "-u", *extra, mountpoint] if tool else ["umount", *extra, mountpoint]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def unmount(mountpoint: str) -> None:
    """Unmount a lamina mount, a live one or one whose process died."""
    entry = find_mount(mountpoint)
    if entry is None:
        raise MountError(f"{mountpoint} is not mounted")
    if entry.fstype != FS_TYPE:
        raise MountError(
            f"{mountpoint} is not a lamina mount (it is {entry.fstype} from {entry.source})"
        )
    result = fusermount(entry.mountpoint)
    if result.returncode == 0:
        return
    message = (result.stderr or result.stdout).strip().splitlines()
    detail = message[-1] if message else f"exit status {result.returncode}"
    if "busy" in detail.lower():
        users = _loop_mounts_inside(entry.mountpoint)
        hint = f"; unmount {', '.join(users)} first" if users else "; close the files open there"
        raise MountError(f"{mountpoint} is busy{hint}")
    raise MountError(f"cannot unmount {mountpoint}: {detail}")


def _loop_mounts_inside(mountpoint: str) -> list[str]:
    """Mount points of loop devices whose backing file lies inside ``mountpoint``."""
    inside = []
    for m in mount_table():
        if not m.source.startswith("/dev/loop"):
            continue
        backing = Path("/sys/block") / os.path.basename(m.source) / "loop" / "backing_file"
        try:
            file = backing.read_text().strip()
        except OSError:
            continue
        if file.startswith(mountpoint.rstrip("/") + "/"):
            inside.append(m.mountpoint)
    return inside
