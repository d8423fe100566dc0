"""How a job looks: one line in the strip under every screen, a full card on the jobs screen."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from lamina.backend.service import JobView

from .. import formatting as fmt
from ..formatting import printable, shown

STATE_COLORS = {
    "queued": "grey50",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
}


def plain_log(line: str) -> str:
    """A job log entry for the screen, escaped: an internal error's trace shrinks to its last line."""
    if "Traceback (most recent call last)" not in line:
        return printable(line)
    stamp = line.split(" ", 1)[0]
    last = [part for part in line.strip().splitlines() if part.strip()][-1].strip()
    return printable(f"{stamp} internal error: {last}")


def shown_rate(view: JobView) -> float | None:
    """While running, the current rate; once finished, the average over the whole job.

    None when the job counts items (a quick verify checks points), not bytes.
    """
    if view.finished and view.elapsed > 0:
        if view.read:
            return view.read / view.elapsed
        return view.done / view.elapsed if view.unit == "bytes" else None
    return view.rate if view.unit == "bytes" else None


def rate_text(view: JobView) -> str:
    rate = shown_rate(view)
    if rate is None or (not view.finished and not view.done):
        return "-"  # counting items, or nothing counted yet (taking a snapshot)
    return fmt.rate(rate)


def amount_text(view: JobView) -> str:
    """What the phase has done: bytes, or items counted ('3/4 points')."""
    if view.unit == "bytes":
        return fmt.size(view.done)
    total = f"/{view.total}" if view.total is not None else ""
    return f"{view.done}{total} {printable(view.unit)}"


PHASE_WIDTH = 17  # "taking a snapshot", "resolving chain": phases are never cut


def state_text(state: str) -> Text:
    return shown(state, style=f"bold {STATE_COLORS.get(state, 'white')}")


def progress_cell(view: JobView, width: int = 12) -> Text:
    """A short bar and percentage, or the phase when the total is not known yet."""
    fraction = view.fraction
    if view.state == "succeeded":
        fraction = 1.0
    text = Text()
    if fraction is None:  # a streamed range list: the total is not known yet
        # Nothing counted yet (taking a snapshot): the phase says it all, not "0 B".
        amount = amount_text(view) if view.done or view.finished else ""
        text.append(f"{amount:>{width + 7}}", style=STATE_COLORS.get(view.state, "white"))
        return text
    text.append(fmt.bar(fraction, width), style=STATE_COLORS.get(view.state, "white"))
    text.append(f" {fmt.percent(fraction):>6}")
    return text


def job_line(view: JobView) -> Text:
    """'backup local/demo/app-data  backing up ████▌ 45.0%  120.0 MiB/s ETA 0:03  read … stored … dedup …'"""
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(f"{view.kind:<7}", style="bold")
    target = printable(view.volume_key or view.point or view.description)
    line.append(f"{target[:23]:<24}")
    phase = printable(view.phase or view.state)[:PHASE_WIDTH]
    line.append(f"{phase:<{PHASE_WIDTH + 1}}", style="italic")
    line.append_text(progress_cell(view, 10))
    line.append(f" {rate_text(view):>12}")
    line.append(f" ETA {fmt.duration(view.eta)}")
    line.append(f"  read {fmt.size(view.read)}", style="dim")
    line.append(f"  stored {fmt.size(view.stored)}", style="dim")
    line.append(f"  dedup {fmt.size(view.deduplicated)}", style="dim")
    return line


class JobStrip(Static):
    """The running jobs, under every screen: work goes on while the user browses."""

    DEFAULT_CLASSES = "-empty"
    text = ""  # what it shows, as plain text

    def show_jobs(self, views: list[JobView]) -> None:
        running = [v for v in views if not v.finished]
        self.set_class(not running, "-empty")
        lines = [job_line(v) for v in running[:4]]
        if len(running) > 4:
            lines.append(Text(f"… and {len(running) - 4} more (:jobs)", style="dim"))
        self.text = "\n".join(line.plain for line in lines)
        self.update(Group(*lines) if lines else "")


class JobCard(Static):
    """Everything about one job: progress, throughput, ETA, bytes read, stored, deduplicated."""

    def show_job(self, view: JobView | None) -> None:
        if view is None:
            self.update(Text("no job selected", style="dim"))
            return
        head = Text()
        head.append_text(shown(view.description, style="bold"))
        head.append("  ")
        head.append_text(state_text(view.state))
        bar = Text()
        bar.append(f"{printable(view.phase or '-'):<{PHASE_WIDTH + 1}}", style="italic")
        bar.append_text(progress_cell(view, 40))
        facts = Table.grid(padding=(0, 2))
        for _ in range(4):
            facts.add_column()
        facts.add_row(
            Text("throughput", style="dim"),
            rate_text(view),
            Text("ETA", style="dim"),
            "-" if view.finished else fmt.duration(view.eta),
        )
        facts.add_row(
            Text("read", style="dim"),
            fmt.size(view.read),
            Text("elapsed", style="dim"),
            fmt.duration(view.elapsed),
        )
        facts.add_row(
            Text("stored", style="dim"),
            fmt.size(view.stored),
            Text("deduplicated", style="dim"),
            fmt.size(view.deduplicated),
        )
        parts: list[Text | Table] = [head, bar, facts]
        if view.summary and view.state == "succeeded":
            parts.append(shown(view.summary, style="green"))
        if view.error:
            parts.append(shown(view.error, style="bold red"))
        self.update(Group(*parts))
