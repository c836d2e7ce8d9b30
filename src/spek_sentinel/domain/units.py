"""Parsing and printing of durations and byte sizes as they appear in thresholds.toml."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_BYTES = {
    None: 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


def parse_duration(text: str) -> float:
    """``"1h30m"`` -> 5400.0 seconds. Raises ValueError with the accepted forms."""
    stripped = text.strip()
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(stripped):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
        pos = match.end()
    if not stripped or pos != len(stripped):
        raise ValueError(
            f"{text!r} is not a duration; write it like '30s', '5m', '1h30m' or '250ms'"
        )
    return total


def format_duration(seconds: float) -> str:
    """5400 -> ``"1h30m"``; sub-second values in ms. Used in evidence and logs."""
    if 0 < seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def parse_size(text: str) -> float:
    """``"100MB"`` -> 100_000_000.0 bytes; ``"1GiB"`` -> 2**30."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size; write it like '100MB', '512MiB' or '1GB'")
    return float(match.group(1)) * _SIZE_BYTES[match.group(2)]


def format_size(size: float) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if abs(size) >= scale:
            return f"{size / scale:.3g}{unit}"
    return f"{size:.0f}B"


def format_value(value: float, unit: str) -> str:
    """A value as an on-call engineer reads it: 5.2%, 180ms, 96MB, 57 fps."""
    if unit == "ratio":
        return f"{value:.2%}"
    if unit == "seconds":
        return f"{value * 1000:.0f}ms" if value < 10 else format_duration(value)
    if unit == "bytes":
        return format_size(value)
    if unit == "fps":
        return f"{value:.4g} fps"
    return f"{value:.4g}"


def iso(at: float) -> str:
    """Unix seconds as RFC 3339 UTC to the second: how every time is shown to people."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
