"""Read a recorded series (JSON lines) into samples, release marks and acknowledgements.

Each line is one object with ``ts`` (unix seconds or RFC 3339) and one of:
``signal`` with ``value`` (a number, or null for no data) or ``error`` (probe error text),
optionally ``volume`` and ``series`` (the label value of a split signal); ``release`` (a
version string: a deploy started); ``ack`` (who acknowledged). The whole file is checked
before anything is replayed; every bad line is reported with its number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from spek_sentinel.domain.errors import InputError
from spek_sentinel.domain.samples import ReleaseMark, Sample

MAX_REPORTED = 20


@dataclass(frozen=True, slots=True)
class Ack:
    at: float
    by: str


Event = Sample | ReleaseMark | Ack

_SAMPLE_KEYS = {"ts", "signal", "value", "error", "volume", "series"}


def parse_ts(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("'ts' must be unix seconds or an RFC 3339 time")
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            raise ValueError("'ts' must be finite")
        return float(raw)
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"'ts' {raw!r} is not an RFC 3339 time") from None
        if parsed.tzinfo is None:
            raise ValueError(f"'ts' {raw!r} has no time zone (add Z or an offset)")
        return parsed.timestamp()
    raise ValueError("'ts' must be unix seconds or an RFC 3339 time")


def _number(obj: dict[str, Any], key: str) -> float | None:
    raw = obj.get(key)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"'{key}' must be a number or null, not {raw!r}")
    return float(raw)


def parse_line(text: str) -> Event:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    if "ts" not in obj:
        raise ValueError("missing 'ts'")
    at = parse_ts(obj["ts"])
    if "release" in obj:
        if set(obj) != {"ts", "release"} or not isinstance(obj["release"], str):
            raise ValueError('a release line is {"ts": ..., "release": "<version>"}')
        return ReleaseMark(at, obj["release"])
    if "ack" in obj:
        if set(obj) != {"ts", "ack"} or not isinstance(obj["ack"], str):
            raise ValueError('an ack line is {"ts": ..., "ack": "<who>"}')
        return Ack(at, obj["ack"])
    unknown = set(obj) - _SAMPLE_KEYS
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
    signal = obj.get("signal")
    if not isinstance(signal, str) or not signal:
        raise ValueError("missing 'signal' (or 'release' / 'ack')")
    series = obj.get("series", "")
    if not isinstance(series, str):
        raise ValueError("'series' must be a string (the split label's value)")
    error = obj.get("error")
    if error is not None:
        if not isinstance(error, str):
            raise ValueError("'error' must be a string")
        if obj.get("value") is not None:
            raise ValueError("give either 'value' or 'error', not both")
        return Sample(signal, at, error=error, series=series)
    if "value" not in obj:
        raise ValueError("missing 'value' (null means no data) or 'error'")
    value, volume = _number(obj, "value"), _number(obj, "volume")
    return Sample(signal, at, value=value, volume=volume, series=series)


def parse_series(lines: Iterable[str], source: str) -> list[Event]:
    events: list[Event] = []
    problems: list[str] = []
    last_at = float("-inf")
    last_line = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = parse_line(line)
        except ValueError as exc:
            problems.append(f"{source}:{number}: {exc}")
            continue
        if event.at < last_at:
            problems.append(
                f"{source}:{number}: out of order: ts {event.at:g} is before line "
                f"{last_line}'s {last_at:g}; sort the series by time"
            )
            continue
        last_at, last_line = event.at, number
        events.append(event)
    if problems:
        shown = problems[:MAX_REPORTED]
        if len(problems) > MAX_REPORTED:
            shown.append(f"... and {len(problems) - MAX_REPORTED} more bad lines")
        raise InputError("\n".join(shown))
    return events


def read_series(path: str | Path) -> list[Event]:
    file = Path(path)
    try:
        with file.open(encoding="utf-8") as handle:
            return parse_series(handle, str(file))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{file}: cannot read: {exc}") from None
