"""Numbers and times as people read them. Pure functions: the clock is always passed in."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.text import Text

from lamina.backend.display import printable, printable_lines
from lamina.backend.units import format_size

__all__ = ["printable", "printable_lines", "shown"]


def shown(value: str | bytes | None, style: str = "") -> Text:
    """A string from a volume, repository or server, ready to draw.

    Escaped by the backend's one rule, and a ``Text``, never markup: a name such as
    ``[bold]x`` is drawn as it is written. Every screen draws such strings through here.
    """
    return Text(printable(value), style=style)


def size(n: int | float) -> str:
    """1536 -> '1.5 KiB': the backend's one size format (the CLI and the server use it too)."""
    return format_size(n)


def rate(bytes_per_second: float) -> str:
    return size(bytes_per_second) + "/s"


def duration(seconds: float | None) -> str:
    """3725 -> '1:02:05', 65 -> '1:05'."""
    if seconds is None:
        return "-"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def parse_time(iso: str) -> float:
    """An ISO 8601 time (as points record it, 'Z' for UTC) in seconds since the epoch."""
    text = iso[:-1] + "+00:00" if iso.endswith("Z") else iso
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def age(iso: str | None, now: float) -> str:
    """How long ago, in the largest unit that fits: 'just now', '5m ago', '3h ago', '2d ago'."""
    if not iso:
        return "never"
    try:
        return ago(parse_time(iso), now)
    except ValueError:
        return iso


def ago(moment: float, now: float) -> str:
    """``age`` of a moment in seconds since the epoch."""
    seconds = now - moment
    if seconds < 0:
        return "in the future"
    if seconds < 45:
        return "just now"
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{int(seconds // length)}{unit} ago"
    return f"{int(seconds)}s ago"


def relative(seconds: float, now: float) -> str:
    """A moment from now, to the second when near: 'in 5s', 'in 3m', '2h ago', 'now'."""
    delta = seconds - now
    span = abs(delta)
    if span < 1:
        return "now"
    text = f"{int(span)}s"
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if span >= length:
            text = f"{int(span // length)}{unit}"
            break
    return f"in {text}" if delta > 0 else f"{text} ago"


def timestamp(iso: str) -> str:
    """'2026-01-02T03:04:05.123Z' -> '2026-01-02 03:04:05 UTC'."""
    try:
        moment = datetime.fromtimestamp(parse_time(iso), UTC)
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def short_time(iso: str) -> str:
    """'2026-01-02T03:04:05.123Z' -> '2026-01-02 03:04' (UTC)."""
    try:
        moment = datetime.fromtimestamp(parse_time(iso), UTC)
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%d %H:%M")


def mtime(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")


def percent(fraction: float | None) -> str:
    if fraction is None:
        return "-"
    value = fraction * 100
    if 0 < value < 0.1:
        return "<0.1%"
    return f"{value:.1f}%"


def bar(fraction: float | None, width: int) -> str:
    """A text progress bar with eighth-cell resolution."""
    if fraction is None:
        return "·" * width
    cells = max(0.0, min(1.0, fraction)) * width
    full = int(cells)
    partial = " ▏▎▍▌▋▊▉"[int((cells - full) * 8)] if full < width else ""
    return ("█" * full + partial).ljust(width, " ")
