"""Mount a repository (or one point) with FUSE, and the process that serves one mount.

The mount runs in the foreground of its process: libfuse's own handlers turn SIGINT,
SIGTERM and SIGHUP into a clean unmount. `lamina mount` runs it in its own process;
`lamina mount --daemon` and ``Service.mount`` start ``python -m lamina.fs.mount``, this
module's small command (``main``), detached, through the service's mount supervision
(``backend/service/mounts.py``), which builds its argv and waits until it says ready.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from lamina.backend.display import PrintableFormatter, printable
from lamina.backend.errors import LaminaError, UsageError
from lamina.backend.service import (
    FS_TYPE,
    MountEntry,
    MountError,
    Service,
    find_mount,
    fusermount,
    mount_path,
    mount_table,
    read_password_file,
    unmount,
)

from .operations import LaminaOperations

log = logging.getLogger("lamina.fs")

# The kernel reads ahead at most min(max_readahead, the bdi's read_ahead_kb): raise both.
READ_AHEAD = 4 * 1024 * 1024
ATTR_TIMEOUT = 60.0  # points never change; new points still appear (no negative caching)


def mounts() -> list[MountEntry]:
    return mount_table()


def _check_mountpoint(mountpoint: str) -> str:
    path = mount_path(mountpoint)
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
                if fusermount(self.mountpoint).returncode == 0:
                    return


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


def setup_logging(log_file: str | None, *, quiet: bool) -> None:
    """Log lines to ``log_file``, else to stderr unless ``quiet`` (a daemon has no stderr)."""
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
    elif quiet:
        handler = logging.NullHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter("%(asctime)s lamina mount: %(levelname)s %(message)s"))
    root = logging.getLogger("lamina")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


# ---------------------------------------------------------------------- the mount process


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lamina.fs.mount",
        description="Serve one lamina mount in this process until it is unmounted "
        "(started by `lamina mount --daemon` and the service; see backend/service/mounts.py).",
    )
    p.add_argument("--repo", required=True, help="repository URL")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory")
    p.add_argument("--point", help="mount only this point")
    p.add_argument("--cache-size", type=int, required=True, metavar="BYTES")
    p.add_argument("--idle-timeout", type=float, metavar="SECONDS")
    p.add_argument("--log-file", help="append log lines here")
    p.add_argument("--password-file", help="file holding the repository's password")
    p.add_argument("--password-fd", type=int, metavar="FD", help="read the password from FD")
    p.add_argument("--ready-fd", type=int, metavar="FD", help="say 'ready' or 'error: ...' here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ready_fd: int | None = args.ready_fd
    setup_logging(args.log_file, quiet=ready_fd is not None)
    # libfuse turns SIGTERM into a clean unmount, but only where no handler is set: the
    # main thread stays inside libfuse, so a Python handler would never run.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def on_ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)

    service: Service | None = None
    try:
        if args.password_fd is not None:  # a parent that asked on its terminal
            with os.fdopen(args.password_fd, "rb") as pipe:
                password = pipe.read() or None
        else:
            password = read_password_file(args.password_file)
        service = Service(args.repo, password=password)
        run_mount(
            service,
            args.mountpoint,
            point=args.point,
            cache_bytes=args.cache_size,
            idle_timeout=args.idle_timeout,
            on_ready=on_ready,
        )
    except LaminaError as e:
        if ready_fd is not None:
            try:
                os.write(ready_fd, f"error: {e}\n".encode())
            except OSError:
                pass
        print(f"lamina: error: {printable(str(e))}", file=sys.stderr)
        return e.exit_code
    finally:
        if service is not None:
            service.close()
    return 0


__all__ = [
    "FS_TYPE",
    "MountEntry",
    "MountError",
    "find_mount",
    "main",
    "mounts",
    "run_mount",
    "setup_logging",
    "unmount",
]

if __name__ == "__main__":
    sys.exit(main())
