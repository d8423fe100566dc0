"""Mount a repository (or one point) with FUSE, and unmount it again.

The mount runs in the foreground of its process: libfuse's own handlers turn SIGINT,
SIGTERM and SIGHUP into a clean unmount. `lamina mount --daemon` runs this same code in a
child process of its own session and returns once the mount answers.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from lamina.backend.errors import LaminaError, UsageError
from lamina.backend.service import FS_TYPE, MountEntry, Service, mount_path, mount_table

from .operations import LaminaOperations

log = logging.getLogger("lamina.fs")

# The kernel reads ahead at most min(max_readahead, the bdi's read_ahead_kb): raise both.
READ_AHEAD = 4 * 1024 * 1024
ATTR_TIMEOUT = 60.0  # points never change; new points still appear (no negative caching)


class MountError(LaminaError):
    """A mount or unmount that cannot be done as asked."""


def mounts() -> list[MountEntry]:
    return mount_table()


absolute = mount_path


def find_mount(path: str) -> MountEntry | None:
    target = absolute(path)
    found = [m for m in mounts() if m.mountpoint == target]
    return found[-1] if found else None


def _check_mountpoint(mountpoint: str) -> str:
    path = absolute(mountpoint)
    if find_mount(path) is not None:
        raise MountError(f"{mountpoint} is already a mount point (lamina umount {mountpoint})")
    if not os.path.isdir(path):
        raise UsageError(f"mount point {mountpoint} is not an existing directory")
    if os.listdir(path):
        raise UsageError(f"mount point {mountpoint} is not empty")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise MountError(
            "FUSE is not available: /dev/fuse is missing or not accessible "
            "(install the Debian packages fuse and libfuse2; /dev/fuse needs root or the fuse group)"
        )
    return path


def _load_fuse() -> object:
    try:
        import mfusepy
    except (ImportError, OSError) as e:
        raise MountError(
            f"libfuse2 cannot be loaded ({e}): install the Debian packages fuse and libfuse2"
        ) from None
    return mfusepy


def _raise_read_ahead(mountpoint: str) -> None:
    """Let the kernel read ahead 4 MiB on this mount (root only; best effort)."""
    try:
        dev = os.stat(mountpoint).st_dev
        path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        path.write_text(str(READ_AHEAD // 1024))
    except OSError as e:
        log.debug("read-ahead of %s left as it is: %s", mountpoint, e)


class _IdleWatch(threading.Thread):
    """Unmounts when nothing used the mount for ``timeout`` seconds and no file is open."""

    def __init__(self, ops: LaminaOperations, mountpoint: str, timeout: float) -> None:
        super().__init__(name="lamina-idle", daemon=True)
        self.ops = ops
        self.mountpoint = mountpoint
        self.timeout = timeout
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = max(0.2, min(self.timeout / 10, 10.0))
        while not self.stopped.wait(interval):
            if self.ops.idle_seconds() >= self.timeout and self.ops.open_handles == 0:
                log.info("idle for %.0f s: unmounting %s", self.ops.idle_seconds(), self.mountpoint)
                if _fusermount(self.mountpoint).returncode == 0:
                    return


def _fusermount(mountpoint: str, *extra: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("fusermount") or shutil.which("fusermount3")
    command = [tool, "-u", *extra, mountpoint] if tool else ["umount", *extra, mountpoint]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def run_mount(
    service: Service,
    mountpoint: str,
    *,
    point: str | None = None,
    cache_bytes: int,
    idle_timeout: float | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Mount and serve until unmounted (umount, a signal or the idle timeout)."""
    path = _check_mountpoint(mountpoint)
    fuse = _load_fuse()
    view = service.open_view(point, cache_bytes=cache_bytes)
    initialised = threading.Event()
    ops = LaminaOperations(view, on_init=initialised.set)

    def announce() -> None:
        initialised.wait()
        _raise_read_ahead(path)  # the first stat also proves the mount answers
        service.record_mount(path, point)  # so that a later process finds it
        if on_ready is not None:
            on_ready()

    threading.Thread(target=announce, name="lamina-ready", daemon=True).start()
    watch = _IdleWatch(ops, path, idle_timeout) if idle_timeout else None
    if watch is not None:
        watch.start()
    try:
        fuse.FUSE(  # type: ignore[attr-defined]
            ops,
            path,
            foreground=True,
            nothreads=False,
            ro=True,
            fsname="lamina",
            subtype="lamina",
            kernel_cache=True,
            attr_timeout=ATTR_TIMEOUT,
            entry_timeout=ATTR_TIMEOUT,
            max_readahead=READ_AHEAD,
        )
    except RuntimeError as e:
        raise MountError(f"cannot mount at {mountpoint} (libfuse said {e})") from None
    finally:
        service.forget_mount(path)
        if watch is not None:
            watch.stopped.set()
        view.close()


def unmount(mountpoint: str) -> None:
    """Unmount a lamina mount, a live one or one whose process died."""
    entry = find_mount(mountpoint)
    if entry is None:
        raise MountError(f"{mountpoint} is not mounted")
    if entry.fstype != FS_TYPE:
        raise MountError(
            f"{mountpoint} is not a lamina mount (it is {entry.fstype} from {entry.source})"
        )
    result = _fusermount(entry.mountpoint)
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
    for m in mounts():
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


__all__ = ["FS_TYPE", "MountEntry", "MountError", "find_mount", "mounts", "run_mount", "unmount"]
