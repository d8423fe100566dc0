"""`lamina demo`: a whole backup chain on the embedded default, checked byte for byte.

1. Build an ext4 volume image with real files (mkfs.ext4 -d) and register it as a volume of
   a local cluster; back it up: snapshot, CBT allocated blocks over gRPC, full point.
2. Change files inside the image (debugfs -w), back up again: snapshot, CBT delta against
   the previous snapshot's handle over gRPC, incremental point of exactly those blocks.
3. Repeat, print the chain, restore every point and compare it with the volume it came from.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from .errors import LaminaError
from .service import Controller, PointInfo, Schedules, Service, init_repository, policy_from_options
from .units import format_size

NAMESPACE = "demo"
VOLUME = "app-data"
CAPACITY = 256 * 1024 * 1024
BLOCK = 4096


def _tool(name: str) -> str:
    for folder in ("", "/usr/sbin/", "/sbin/"):
        path = shutil.which(folder + name) if not folder else folder + name
        if path and os.path.exists(path):
            return path
    raise LaminaError(f"the demo needs {name} (Debian package e2fsprogs); 'make demo' installs it")


def _run(*cmd: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise LaminaError(
            f"{cmd[0]} failed: {(result.stderr or result.stdout).strip().splitlines()[-1:]}"
        )


def _seed_files(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/app.conf").write_text("listen = 0.0.0.0:8080\nworkers = 4\nlog_level = info\n")
    docs = root / "docs"
    docs.mkdir()
    for i in range(40):
        (docs / f"note-{i:03d}.txt").write_text(
            "".join(
                f"line {j} of note {i}: the quick brown fox jumps over the lazy dog\n"
                for j in range(200)
            )
        )
    data = root / "data"
    data.mkdir()
    rng = hashlib.sha256(b"lamina-demo")
    blob = bytearray()
    while len(blob) < 24 * 1024 * 1024:  # incompressible, deterministic
        rng.update(b"+")
        blob += rng.digest() * 1
    (data / "table.db").write_bytes(bytes(blob[: 24 * 1024 * 1024]))
    (data / "zeros.bin").write_bytes(bytes(4 * 1024 * 1024))
    os.symlink("../etc/app.conf", docs / "config-link")


def _make_image(path: Path, content: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(CAPACITY)
    _run(
        _tool("mkfs.ext4"),
        "-q",
        "-F",
        "-b",
        "4096",
        "-L",
        "demo",
        "-E",
        "root_owner=0:0",
        "-d",
        str(content),
        str(path),
    )


def _debugfs_write(image: Path, files: dict[str, bytes], work: Path) -> None:
    """Replace files inside the image without mounting it."""
    commands = []
    for i, (dest, data) in enumerate(files.items()):
        local = work / f"upload-{i}"
        local.write_bytes(data)
        commands.append(f"rm {dest}")
        commands.append(f"write {local} {dest}")
    script = work / "debugfs.cmd"
    script.write_text("\n".join(commands) + "\n")
    _run(_tool("debugfs"), "-w", "-f", str(script), str(image))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * 1024 * 1024):
            h.update(block)
    return h.hexdigest()


def run_demo(directory: str) -> int:
    work = Path(directory).absolute()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    repo_url = str(work / "repo")
    cluster_root = work / "cluster"
    volume_image = work / "volume.img"
    started = time.monotonic()

    print(f"lamina demo in {work}")
    content = work / "content"
    _seed_files(content)
    _make_image(volume_image, content)
    print(
        f"1. built an ext4 volume of {format_size(CAPACITY)} with real files ({volume_image.name})"
    )
    info = init_repository(repo_url)
    service = Service(repo_url, local_root=str(cluster_root))
    service.add_local_volume(NAMESPACE, VOLUME, str(volume_image))
    print(f"   repository {info.url}")
    print(f"   local cluster {cluster_root}: volume {NAMESPACE}/{VOLUME}")
    print("   each backup: snapshot the volume, ask the SnapshotMetadata gRPC service (CBT) which")
    print("   blocks are allocated or changed, read and store exactly those")

    points: list[tuple[PointInfo, str]] = []

    def backup() -> None:
        expected = _sha256(volume_image)  # the volume does not change during the backup
        job = service.start_volume_backup("local", NAMESPACE, VOLUME)
        job.wait()
        if job.error:
            raise LaminaError(job.error)
        point: PointInfo = job.result
        s = point.stats
        print(
            f"   {point.kind:<11} point {point.id}: read {format_size(s['bytes_read'])}, "
            f"stored {format_size(s['bytes_stored'])}, deduplicated {format_size(s['bytes_deduplicated'])}, "
            f"{s['requests']} requests, {s['duration_seconds']:.2f}s"
        )
        points.append((point, expected))

    backup()
    edits: list[tuple[str, dict[str, bytes]]] = [
        (
            "rewrote the config file",
            {"/etc/app.conf": b"listen = 0.0.0.0:9090\nworkers = 8\nlog_level = debug\n"},
        ),
        (
            "rewrote 6 notes",
            {
                f"/docs/note-{i:03d}.txt": f"note {i} rewritten\n".encode() * 500
                for i in range(0, 40, 7)
            },
        ),
        ("changed 1% of the database's 8 KiB pages", {"/data/table.db": _patched_table()}),
    ]
    for step, (what, files) in enumerate(edits, start=2):
        _debugfs_write(volume_image, files, work)
        print(f"{step}. {what} (debugfs -w, no mount)")
        backup()

    _scheduled_backup(work, repo_url, cluster_root, volume_image, step + 1, points)

    newest = points[-1][0]
    print(f"\nchain of {newest.id} (newest first):")
    for depth, p in enumerate(service.chain(newest.id)):
        changed = p.stats["bytes_read"] / p.capacity * 100
        print(
            f"   {'   ' * depth}{p.id}  {p.kind:<11}  read {changed:6.2f}% of the volume, "
            f"stored {format_size(p.stats['bytes_stored'])}"
        )

    print("\nrestoring every point and comparing it with the volume it was taken from:")
    ok = True
    for point, expected in points:
        target = work / f"restored-{point.id}.img"
        job = service.start_restore(point.id, str(target))
        job.wait()
        if job.error:
            raise LaminaError(job.error)
        same = _sha256(target) == expected
        ok = ok and same
        print(f"   {point.id}: {'byte-identical' if same else 'DIFFERENT'}")
        target.unlink()
    verify = service.start_verify(deep=True)
    verify.wait()
    if verify.error:
        raise LaminaError(verify.error)
    report = verify.result
    ok = ok and report.ok
    total_stored = sum(p.stats["bytes_uploaded"] for p, _ in points)
    print(
        f"\nsummary: {len(points)} points of a {format_size(CAPACITY)} volume take "
        f"{format_size(total_stored)} in the repository; every restore byte-identical: "
        f"{'yes' if ok else 'NO'}; verify --deep {'clean' if report.ok else 'FAILED'}; "
        f"{time.monotonic() - started:.1f}s"
    )
    print("demo " + ("passed" if ok else "FAILED"))
    print(f"\nnext: lamina points --repo {repo_url}")
    print(
        "      lamina tui          (from this folder: it finds the demo's repository and cluster)"
    )
    return 0 if ok else 1


def _scheduled_backup(
    work: Path,
    repo_url: str,
    cluster_root: Path,
    volume_image: Path,
    step: int,
    points: list[tuple[PointInfo, str]],
) -> None:
    """A one-second schedule, run by the controller (here in a thread), backs up the volume."""
    catalog = f"sqlite:///{work / 'catalog.sqlite'}"
    _debugfs_write(volume_image, {"/etc/motd": b"backed up by a schedule\n"}, work)
    expected = _sha256(volume_image)
    schedules = Schedules(catalog)
    schedules.add(
        "every-second",
        repository=repo_url,
        every="1s",
        volume=f"{NAMESPACE}/{VOLUME}",
        source=str(volume_image),
        local_root=str(cluster_root),
        policy=policy_from_options(last=10),
    )
    print(f"{step}. wrote /etc/motd; schedule 'every-second': every 1s, keep the last 10 points")
    controller = Controller(catalog, poll=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=controller.serve, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    paused = False
    try:
        while (fired := schedules.get("every-second")).last_state in (None, "running"):
            if fired.last_state == "running" and not paused:
                schedules.pause("every-second")  # one run is enough for the demo
                paused = True
            if time.monotonic() > deadline:
                raise LaminaError("the schedule did not fire within 2 minutes")
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
        controller.close()
    if fired.last_state != "succeeded":
        raise LaminaError(f"the scheduled backup failed: {fired.last_error}")
    service = Service(repo_url, local_root=str(cluster_root), catalog="none")
    point = service.list_points()[-1]
    service.close()
    print(
        f"   lamina controller --local fired it: point {point.id}, then forget by the "
        f"retention ({len(fired.last_jobs)} jobs, origin controller, in the catalog)"
    )
    points.append((point, expected))


def _patched_table() -> bytes:
    """The database file with 1% of its 8 KiB pages rewritten (scattered)."""
    rng = hashlib.sha256(b"lamina-demo")
    blob = bytearray()
    while len(blob) < 24 * 1024 * 1024:
        rng.update(b"+")
        blob += rng.digest()
    table = bytearray(blob[: 24 * 1024 * 1024])
    pages = len(table) // 8192
    for page in range(0, pages, 100):
        table[page * 8192 : page * 8192 + 8192] = hashlib.shake_256(str(page).encode()).digest(8192)
    return bytes(table)
