"""Results: measured rows, the targets they are judged against, a printed table and JSON."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB

PASS, MISS, ERROR, INFO = "PASS", "MISS", "ERROR", "info"
RSS_LIMIT = 300 * MiB
RSS_FLATNESS = 1.25  # peak RSS at the largest size / at the smallest
INCREMENTAL_FLATNESS = 0.10  # changed-ranges incremental time, largest size vs smallest
SCAN_STORED_LIMIT = 1.5  # scan incremental: stored / zstd(changed data)
SCAN_RESTIC_GOAL = 4.0  # scan incremental: restic time / lamina time, at 4 GiB and above


@dataclass
class Row:
    """One measured step of one tool at one volume size."""

    key: str  # e.g. "s3.full.lamina"
    step: str
    tool: str
    seconds: float | None = None
    peak_rss_bytes: int | None = None
    cpu_seconds: float | None = None
    stored_bytes: int | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.seconds is not None


@dataclass
class Verdict:
    target: str
    measured: str
    goal: str
    status: str
    value: float | None = None


def format_size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def restic_incremental_goal(size: int) -> float:
    """5x at 1 GiB and 15x at 4 GiB; linear in between, held flat outside."""
    low_size, low_goal, high_size, high_goal = 1 * GiB, 5.0, 4 * GiB, 15.0
    if size <= low_size:
        return low_goal
    if size >= high_size:
        return high_goal
    return low_goal + (high_goal - low_goal) * (size - low_size) / (high_size - low_size)


class SizeResults:
    """Every row measured at one volume size, plus the facts of that volume."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows: dict[str, Row] = {}
        self.facts: dict[str, Any] = {}

    def add(self, row: Row) -> Row:
        self.rows[row.key] = row
        return row

    def get(self, key: str) -> Row | None:
        row = self.rows.get(key)
        return row if row is not None and row.ok else None

    def verdicts(self) -> list[Verdict]:
        out: list[Verdict] = []
        self._speedup(out, "full backup to S3: restic time / lamina time", "s3.full", "restic", 1.3)
        self._ceiling(
            out,
            "full backup to S3: % of raw-PUT ceiling (stored bytes)",
            "s3.full.lamina",
            "put",
            0.90,
        )
        self._incremental(out)
        self._served(out)
        self._scan(out)
        self._speedup(
            out, "restore from S3: restic time / lamina time", "s3.restore", "restic", 2.0
        )
        self._ceiling(
            out,
            "restore from S3: % of raw-GET ceiling (stored bytes)",
            "s3.restore.lamina",
            "get",
            0.80,
        )
        self._speedup(out, "local full backup: borg time / lamina time", "local.full", "borg", 1.3)
        self._speedup(out, "local restore: borg time / lamina time", "local.restore", "borg", 1.5)
        rss = self.peak_rss()
        if rss is not None:
            out.append(
                Verdict(
                    "peak RSS of every lamina run",
                    format_size(rss),
                    f"<= {format_size(RSS_LIMIT)}",
                    PASS if rss <= RSS_LIMIT else MISS,
                    rss,
                )
            )
        return out

    def peak_rss(self) -> int | None:
        values = [
            r.peak_rss_bytes
            for r in self.rows.values()
            if r.tool == "lamina" and r.ok and r.peak_rss_bytes is not None
        ]
        return max(values) if values else None

    def _pair(self, prefix: str, peer: str) -> tuple[Row | None, Row | None, str | None]:
        ours, theirs = self.rows.get(f"{prefix}.lamina"), self.rows.get(f"{prefix}.{peer}")
        if ours is None and theirs is None:
            return None, None, None  # not part of this run
        for name, row in (("lamina", ours), (peer, theirs)):
            if row is None or not row.ok:
                return None, None, f"{name}: {row.error if row else 'not measured'}"
        return ours, theirs, None

    def _speedup(
        self, out: list[Verdict], target: str, prefix: str, peer: str, goal: float
    ) -> None:
        ours, theirs, problem = self._pair(prefix, peer)
        if problem is not None:
            out.append(Verdict(target, problem, f">= {goal:g}x", ERROR))
        elif ours is not None and theirs is not None:
            assert ours.seconds and theirs.seconds
            ratio = theirs.seconds / ours.seconds
            out.append(
                Verdict(
                    target, f"{ratio:.2f}x", f">= {goal:g}x", PASS if ratio >= goal else MISS, ratio
                )
            )

    def _ceiling(
        self, out: list[Verdict], target: str, key: str, direction: str, goal: float
    ) -> None:
        row = self.rows.get(key)
        if row is None:
            return
        rate = self.facts.get(f"ceiling_{direction}_rate")
        goal_text = f">= {goal * 100:.0f}%"
        if rate is None:
            out.append(Verdict(target, "no ceiling measured", goal_text, ERROR))
            return
        if not row.ok or not row.stored_bytes:
            out.append(
                Verdict(target, f"lamina: {row.error or 'no stored bytes'}", goal_text, ERROR)
            )
            return
        assert row.seconds
        share = (row.stored_bytes / rate) / row.seconds
        out.append(
            Verdict(
                target, f"{share * 100:.0f}%", goal_text, PASS if share >= goal else MISS, share
            )
        )

    def _incremental(self, out: list[Verdict]) -> None:
        incr = self.rows.get("s3.incremental.lamina")
        if incr is None:
            return
        goal = restic_incremental_goal(self.size)
        self._speedup(
            out, "incremental 1%: restic time / lamina time", "s3.incremental", "restic", goal
        )
        full = self.get("s3.full.lamina")
        applies = self.size >= 4 * GiB
        goal_text = "<= 3%" + ("" if applies else " (target at 4 GiB)")
        if incr.ok and full is not None:
            assert incr.seconds and full.seconds
            share = incr.seconds / full.seconds
            status = (PASS if share <= 0.03 else MISS) if applies else INFO
            out.append(
                Verdict(
                    "incremental 1%: time / full backup time",
                    f"{share * 100:.1f}%",
                    goal_text,
                    status,
                    share,
                )
            )
        else:
            out.append(
                Verdict(
                    "incremental 1%: time / full backup time",
                    incr.error or "no full backup",
                    goal_text,
                    ERROR,
                )
            )
        reference = self.facts.get("change_bytes_zstd")
        if incr.ok and incr.stored_bytes is not None and reference:
            ratio = incr.stored_bytes / reference
            out.append(
                Verdict(
                    "incremental 1%: bucket growth / zstd(changed data)",
                    f"{ratio:.2f}x ({format_size(incr.stored_bytes)} / {format_size(reference)})",
                    "<= 1.1x",
                    PASS if ratio <= 1.1 else MISS,
                    ratio,
                )
            )

    def _served(self, out: list[Verdict]) -> None:
        """The 1% incremental sent to ``lamina serve``: the client's time (what a script
        waits for), judged like the CLI's, and the server's job alone (what a schedule costs)."""
        served = self.rows.get("s3.served.lamina")
        if served is None:
            return
        full = self.get("s3.full.lamina")
        restic = self.get("s3.incremental.restic")
        applies = self.size >= 4 * GiB
        target = "incremental 1% via lamina serve: time / full backup time"
        goal_text = "<= 3%" + ("" if applies else " (target at 4 GiB)")
        if not served.ok or full is None or not full.seconds:
            problem = served.error or "no full backup"
            out.append(Verdict(target, problem, goal_text, ERROR))
            return
        assert served.seconds
        share = served.seconds / full.seconds
        status = (PASS if share <= 0.03 else MISS) if applies else INFO
        out.append(Verdict(target, f"{share * 100:.1f}%", goal_text, status, share))
        job = served.extra.get("job_seconds")
        if isinstance(job, int | float) and job > 0:
            out.append(
                Verdict(
                    "incremental 1% via lamina serve: the server's job / full backup time",
                    f"{job / full.seconds * 100:.1f}% ({job:.2f} s)",
                    "-",
                    INFO,
                    job / full.seconds,
                )
            )
        if restic is not None and restic.seconds:
            goal = restic_incremental_goal(self.size)
            ratio = restic.seconds / served.seconds
            out.append(
                Verdict(
                    "incremental 1% via lamina serve: restic time / lamina time",
                    f"{ratio:.2f}x (restic's incremental of an equal change)",
                    f">= {goal:g}x",
                    PASS if ratio >= goal else MISS,
                    ratio,
                )
            )

    def _scan(self, out: list[Verdict]) -> None:
        scan = self.rows.get("s3.scan.lamina")
        if scan is None:
            return
        applies = self.size >= 4 * GiB
        ours, theirs, problem = self._pair("s3.scan", "restic")
        goal_text = f">= {SCAN_RESTIC_GOAL:g}x" + ("" if applies else " (target at 4 GiB)")
        target = "scan incremental 1%: restic time / lamina time"
        if problem is not None:
            out.append(Verdict(target, problem, goal_text, ERROR))
        elif ours is not None and theirs is not None:
            assert ours.seconds and theirs.seconds
            ratio = theirs.seconds / ours.seconds
            status = (PASS if ratio >= SCAN_RESTIC_GOAL else MISS) if applies else INFO
            out.append(Verdict(target, f"{ratio:.2f}x", goal_text, status, ratio))
        reference = self.facts.get("scan_change_bytes_zstd")
        if scan.ok and scan.stored_bytes is not None and reference:
            ratio = scan.stored_bytes / reference
            out.append(
                Verdict(
                    "scan incremental 1%: bucket growth / zstd(changed data)",
                    f"{ratio:.2f}x ({format_size(scan.stored_bytes)} / {format_size(reference)})",
                    f"<= {SCAN_STORED_LIMIT:g}x",
                    PASS if ratio <= SCAN_STORED_LIMIT else MISS,
                    ratio,
                )
            )
        restic = self.get("s3.scan.restic")
        if restic is not None and restic.stored_bytes is not None and reference:
            out.append(
                Verdict(
                    "scan incremental 1%: restic bucket growth / zstd(changed data)",
                    f"{restic.stored_bytes / reference:.2f}x",
                    "-",
                    INFO,
                    restic.stored_bytes / reference,
                )
            )


def sparse_verdicts(sparse: SizeResults, sized: list[SizeResults]) -> list[Verdict]:
    """A sparse volume: scan time against the time to read its data; changed-ranges time
    against the same change on the smaller volumes."""
    out: list[Verdict] = []
    scan, read = sparse.get("sparse.scan.lamina"), sparse.get("sparse.read.reference")
    if scan and read and scan.seconds and read.seconds:
        out.append(
            Verdict(
                "sparse: scan incremental time / time to read the allocated bytes",
                f"{scan.seconds:.2f} s / {read.seconds:.2f} s ({scan.seconds / read.seconds:.2f}x)",
                "follows the allocated bytes (about 1x plus start-up)",
                INFO,
                scan.seconds / read.seconds,
            )
        )
    changed = sparse.get("sparse.changed.lamina")
    if changed and changed.seconds:
        others = [
            (r.size, row.seconds)
            for r in sized
            if (row := r.get("s3.incremental.lamina")) is not None and row.seconds
        ]
        compared = ", ".join(f"{format_size(size)}: {sec:.2f} s" for size, sec in others)
        out.append(
            Verdict(
                "sparse: changed-ranges incremental time",
                f"{changed.seconds:.2f} s" + (f" (S3 incrementals {compared})" if compared else ""),
                "follows the changed bytes, not the volume size",
                INFO,
                changed.seconds,
            )
        )
    for key in ("sparse.scan.lamina", "sparse.changed.lamina"):
        row = sparse.get(key)
        reference = row.extra.get("change_bytes_zstd") if row else None
        if row and row.stored_bytes is not None and reference:
            out.append(
                Verdict(
                    f"sparse: {row.step.split(': ', 1)[-1]}: stored / zstd(changed data)",
                    f"{row.stored_bytes / reference:.2f}x",
                    f"<= {SCAN_STORED_LIMIT:g}x",
                    PASS if row.stored_bytes / reference <= SCAN_STORED_LIMIT else MISS,
                    row.stored_bytes / reference,
                )
            )
    return out


def scaling_verdicts(results: list[SizeResults]) -> list[Verdict]:
    """How lamina's peak RSS and incremental time move as the volume grows."""
    if len(results) < 2:
        return []
    out: list[Verdict] = []
    smallest, largest = results[0], results[-1]
    growth = largest.size / smallest.size
    span = f"{format_size(smallest.size)} -> {format_size(largest.size)}"
    low, high = smallest.peak_rss(), largest.peak_rss()
    if low and high:
        ratio = high / low
        out.append(
            Verdict(
                f"peak RSS flat, {span}",
                f"{format_size(low)} -> {format_size(high)} ({ratio:.2f}x)",
                f"<= {RSS_FLATNESS:g}x",
                PASS if ratio <= RSS_FLATNESS else MISS,
                ratio,
            )
        )
    first, last = smallest.get("s3.incremental.lamina"), largest.get("s3.incremental.lamina")
    if first and last and first.seconds and last.seconds:
        ratio = last.seconds / first.seconds
        flat = abs(ratio - 1) <= INCREMENTAL_FLATNESS
        out.append(
            Verdict(
                f"lamina changed-ranges incremental 1% time, {span} "
                f"(volume and change x{growth:g})",
                f"{first.seconds:.2f} s -> {last.seconds:.2f} s ({ratio:.2f}x)",
                f"flat, within +-{INCREMENTAL_FLATNESS:.0%}",
                PASS if flat else MISS,
                ratio,
            )
        )
    first, last = (
        smallest.get("s3.incremental-fixed.lamina"),
        largest.get("s3.incremental-fixed.lamina"),
    )
    if first and last and first.seconds and last.seconds:
        ratio = last.seconds / first.seconds
        out.append(
            Verdict(
                f"lamina changed-ranges incremental of the same 10 MiB, {span} "
                f"(volume x{growth:g})",
                f"{first.seconds:.2f} s -> {last.seconds:.2f} s ({ratio:.2f}x)",
                f"flat, within +-{INCREMENTAL_FLATNESS:.0%}",
                PASS if abs(ratio - 1) <= INCREMENTAL_FLATNESS else MISS,
                ratio,
            )
        )
    first, last = smallest.get("s3.served.lamina"), largest.get("s3.served.lamina")
    if first and last and first.seconds and last.seconds:
        ratio = last.seconds / first.seconds
        out.append(
            Verdict(
                f"lamina incremental 1% via lamina serve, {span} (volume and change x{growth:g})",
                f"{first.seconds:.2f} s -> {last.seconds:.2f} s ({ratio:.2f}x)",
                "-",
                INFO,
                ratio,
            )
        )
    first, last = smallest.get("s3.scan.lamina"), largest.get("s3.scan.lamina")
    if first and last and first.seconds and last.seconds:
        out.append(
            Verdict(
                f"lamina scan incremental time, {span} (volume x{growth:g})",
                f"{first.seconds:.2f} s -> {last.seconds:.2f} s "
                f"({last.seconds / first.seconds:.2f}x)",
                "follows the allocated bytes",
                INFO,
                last.seconds / first.seconds,
            )
        )
    restic_first, restic_last = (
        smallest.get("s3.incremental.restic"),
        largest.get("s3.incremental.restic"),
    )
    if restic_first and restic_last and restic_first.seconds and restic_last.seconds:
        ratio = restic_last.seconds / restic_first.seconds
        out.append(
            Verdict(
                f"restic incremental time, {span}",
                f"{restic_first.seconds:.2f} s -> {restic_last.seconds:.2f} s ({ratio:.2f}x)",
                "-",
                INFO,
                ratio,
            )
        )
    return out


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _num(value: float | None, fmt: Callable[[float], str]) -> str:
    return "-" if value is None else fmt(value)


def _note(row: Row) -> str:
    note = str(row.extra.get("note", ""))
    if row.extra.get("busy_machine"):
        note = f"MACHINE BUSY ({row.extra.get('cpu_idle_before', 0):.0%} idle before); {note}"
    return note


def measurements_table(results: SizeResults) -> str:
    rows = []
    for r in results.rows.values():
        volume_rate = results.size / r.seconds / MiB if r.ok and r.seconds else None
        rows.append(
            [
                r.step,
                r.tool,
                _num(r.seconds if r.ok else None, lambda v: f"{v:.2f}"),
                _num(volume_rate, lambda v: f"{v:.0f}"),
                _num(r.stored_bytes if r.ok else None, lambda v: f"{v / MiB:.1f}"),
                _num(r.peak_rss_bytes if r.ok else None, lambda v: f"{v / MiB:.0f}"),
                _num(r.cpu_seconds if r.ok else None, lambda v: f"{v:.1f}"),
                _short(f"ERROR: {r.error}") if r.error else _note(r),
            ]
        )
    headers = ["step", "tool", "seconds", "vol MiB/s", "stored MiB", "RSS MiB", "CPU s", "note"]
    return _table(headers, rows, {2, 3, 4, 5, 6})


def verdicts_table(verdicts: list[Verdict]) -> str:
    rows = [[v.target, _short(v.measured, 70), v.goal, v.status] for v in verdicts]
    return _table(["target", "measured", "goal", "result"], rows, set())


def as_json(results: SizeResults) -> dict[str, Any]:
    return {
        "size_bytes": results.size,
        "facts": results.facts,
        "rows": [asdict(r) for r in results.rows.values()],
        "verdicts": [asdict(v) for v in results.verdicts()],
    }
