"""Provides the one way sizes, rates and durations are read and written, for every front end.

It lives in the engine, not above it, because the engine's values (Progress, Report) are bytes
and seconds: the app and the command line both import it from here, and neither from the other.
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"^(\d+)\s*([KMG]?)(i?B)?$", re.IGNORECASE)
_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover - the loop returns at TiB


def human_rate(bytes_per_second: float) -> str:
    """1536.0 -> "1.5 KiB/s"."""
    return f"{human_bytes(bytes_per_second)}/s"


def rate(size: float, seconds: float) -> float:
    """Bytes per second; 0 for a run that took no measurable time."""
    return size / seconds if seconds > 0 else 0.0


def parse_size(text: str) -> int:
    """Parse "1048576", "64K", "1M", "4MiB" into bytes.

    Raises:
        ValueError: not a size.
    """
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 65536, 64K, 1M)")
    return int(match[1]) * _FACTORS[match[2].upper()]


def size_text(size: int) -> str:
    """4096 -> "4K", 1 << 26 -> "64M": the largest unit that divides the size."""
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def format_duration(seconds: float | None) -> str:
    """3725 -> "1:02:05"; None (an ETA that cannot be told) -> "–"."""
    if seconds is None:
        return "–"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
