"""`lamina demo`: a whole backup chain on the embedded default, checked byte for byte.

1. Build an ext4 volume image with real files (mkfs.ext4 -d), back it up (full).
2. Change files inside the image (debugfs -w), freeze a snapshot copy, compute the changed
   4 KiB blocks against the previous snapshot, back up an incremental with those ranges.
3. Repeat, print the chain, restore every point and compare it with its snapshot.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from .errors import LaminaError
from .service import PointInfo, Service, init_repository
from .units import format_size

VOLUME = "demo/app-data"
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


def changed_blocks(old: Path, new: Path) -> list[tuple[int, int]]:
    """4 KiB blocks where two images differ, adjacent blocks merged."""
    ranges: list[tuple[int, int]] = []
    chunk = 4 * 1024 * 1024
    with open(old, "rb") as a, open(new, "rb") as b:
        offset = 0
        while True:
            x, y = a.read(chunk), b.read(chunk)
            if not x and not y:
                break
            if x != y:
                for i in range(0, max(len(x), len(y)), BLOCK):
                    if x[i : i + BLOCK] != y[i : i + BLOCK]:
                        start = offset + i
                        if ranges and ranges[-1][0] + ranges[-1][1] == start:
                            ranges[-1] = (ranges[-1][0], ranges[-1][1] + BLOCK)
                        else:
                            ranges.append((start, BLOCK))
            offset += max(len(x), len(y))
    return ranges


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
    volume_image = work / "volume.img"
    snapshots = work / "snapshots"
    snapshots.mkdir()
    started = time.monotonic()

    print(f"lamina demo in {work}")
    content = work / "content"
    _seed_files(content)
    _make_image(volume_image, content)
    print(
        f"1. built an ext4 volume of {format_size(CAPACITY)} with real files ({volume_image.name})"
    )
    info = init_repository(repo_url)
    print(f"   created repository at {info.url}")
    service = Service(repo_url)

    points: list[tuple[PointInfo, Path]] = []

    def backup(step: int, ranges: list[tuple[int, int]] | None) -> None:
        snap = snapshots / f"snap-{step}.img"
        shutil.copyfile(volume_image, snap)
        job = service.start_backup(
            str(snap),
            VOLUME,
            changed_ranges=ranges,
            changed_ranges_origin="4 KiB block comparison with the previous snapshot",
        )
        job.wait()
        if job.error:
            raise LaminaError(job.error)
        point: PointInfo = job.result
        s = point.stats
        print(
            f"   {point.kind:<11} point {point.id}: read {format_size(s['bytes_read'])}, "
            f"stored {format_size(s['bytes_stored'])}, deduplicated {format_size(s['bytes_deduplicated'])}, "
            f"{s['requests']} requests"
        )
        points.append((point, snap))

    backup(0, None)
    edits: list[dict[str, bytes]] = [
        {"/etc/app.conf": b"listen = 0.0.0.0:9090\nworkers = 8\nlog_level = debug\n"},
        {
            f"/docs/note-{i:03d}.txt": f"note {i} rewritten\n".encode() * 500
            for i in range(0, 40, 7)
        },
        {"/data/table.db": _patched_table(volume_image)},
    ]
    for step, files in enumerate(edits, start=1):
        _debugfs_write(volume_image, files, work)
        ranges = changed_blocks(points[-1][1], volume_image)
        changed = sum(n for _, n in ranges)
        print(
            f"{step + 1}. changed {len(files)} file(s): {len(ranges)} ranges, {format_size(changed)} differ"
        )
        backup(step, ranges)

    newest = points[-1][0]
    print(f"\nchain of {newest.id} (newest first):")
    for depth, p in enumerate(service.chain(newest.id)):
        print(f"   {'  ' * depth}{p.id}  {p.kind:<11}  parent {p.parent or '-'}")

    print("\nrestoring every point and comparing it with its snapshot:")
    ok = True
    for point, snap in points:
        target = work / f"restored-{point.id}.img"
        job = service.start_restore(point.id, str(target))
        job.wait()
        if job.error:
            raise LaminaError(job.error)
        same = _sha256(target) == _sha256(snap)
        ok = ok and same
        print(f"   {point.id}: {'byte-identical' if same else 'DIFFERENT'} ({snap.name})")
        target.unlink()
    verify = service.start_verify(deep=True)
    verify.wait()
    if verify.error:
        raise LaminaError(verify.error)
    report = verify.result
    ok = ok and report.ok
    total_stored = sum(p.stats["bytes_uploaded"] for p, _ in points)
    print(
        f"\nsummary: {len(points)} points, {format_size(total_stored)} in the repository for "
        f"{len(points)} x {format_size(CAPACITY)} of volume; verify --deep "
        f"{'clean' if report.ok else 'FAILED'}; {time.monotonic() - started:.1f}s"
    )
    print("demo " + ("passed: every restore is byte-identical" if ok else "FAILED"))
    print(f"try: lamina points --repo {repo_url}")
    return 0 if ok else 1


def _patched_table(image: Path) -> bytes:
    """The database file with 1% of its 8 KiB pages rewritten (scattered)."""
    del image
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
