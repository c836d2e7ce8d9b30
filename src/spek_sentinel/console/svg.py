"""Small inline SVG pictures: a sparkline, a step timeline, a downtime meter. Only presentation
attributes (no ``style``), so the console's Content-Security-Policy needs no 'unsafe-inline'.
Every piece of text is escaped by the caller's ``esc``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from spek_sentinel.console.history import Point

Escape = Callable[[object], str]


def sparkline(
    points: Sequence[Point],
    now: float,
    window: float,
    *,
    threshold: float | None = None,
    breach: Callable[[float], bool] | None = None,
    width: int = 180,
    height: int = 36,
    label: str = "",
    esc: Escape,
) -> str:
    """The last ``window`` seconds: a line through the usable values, gaps where the probe saw
    nothing (marked along the bottom), the threshold as a dashed line, breaching points red."""
    pad = 3.0
    values = [p.value for p in points if p.value is not None]
    bounds = [*values, *([threshold] if threshold is not None else [])]
    low, high = (min(bounds), max(bounds)) if bounds else (0.0, 1.0)
    if high == low:
        low, high = low - 1.0, high + 1.0
    span = high - low
    low, high = low - span * 0.08, high + span * 0.08

    def x(at: float) -> float:
        return pad + (width - 2 * pad) * min(max((at - (now - window)) / window, 0.0), 1.0)

    def y(value: float) -> float:
        return pad + (height - 2 * pad) * (1.0 - (value - low) / (high - low))

    parts = [
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{esc(label)}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" rx="3" fill="#f6f7f9"/>',
    ]
    if threshold is not None:
        ty = y(threshold)
        parts.append(
            f'<line x1="{pad}" x2="{width - pad}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#c0392b" '
            'stroke-width="1" stroke-dasharray="3 3"/>'
        )
    segment: list[str] = []
    segments: list[list[str]] = []
    for point in points:
        if point.value is None:
            parts.append(
                f'<rect x="{x(point.at) - 1:.1f}" y="{height - 3}" width="2" height="3" '
                'fill="#7f8c8d"/>'
            )
            if segment:
                segments.append(segment)
                segment = []
            continue
        segment.append(f"{x(point.at):.1f},{y(point.value):.1f}")
    if segment:
        segments.append(segment)
    for line in segments:
        if len(line) == 1:
            cx, cy = line[0].split(",")
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="1.6" fill="#2c3e50"/>')
        else:
            parts.append(
                f'<polyline points="{" ".join(line)}" fill="none" stroke="#2c3e50" '
                'stroke-width="1.4" stroke-linejoin="round"/>'
            )
    if breach is not None:
        for point in points:
            if point.value is not None and breach(point.value):
                parts.append(
                    f'<circle cx="{x(point.at):.1f}" cy="{y(point.value):.1f}" r="1.8" '
                    'fill="#c0392b"/>'
                )
    if not points:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2 + 4}" text-anchor="middle" font-size="10" '
            'fill="#7f8c8d">no samples yet</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    start: float | None  # None: not started
    end: float | None  # None: still running (drawn up to now)
    status: str  # succeeded, failed, skipped, claimed, not run


_BAR_COLOURS = {
    "succeeded": "#27ae60",
    "skipped": "#95a5a6",
    "failed": "#c0392b",
    "claimed": "#f39c12",
}


def timeline(bars: Sequence[Bar], start: float, end: float, *, esc: Escape) -> str:
    """One row per step, its bar placed on the run's time axis (a Gantt chart)."""
    width, row, label_w = 640, 20, 210
    height = row * len(bars) + 18
    span = max(end - start, 1.0)

    def x(at: float) -> float:
        return label_w + (width - label_w - 8) * min(max((at - start) / span, 0.0), 1.0)

    parts = [
        f'<svg class="timeline" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="timeline of the rollback steps">'
    ]
    for index, bar in enumerate(bars):
        top = index * row + 2
        parts.append(
            f'<text x="4" y="{top + 13}" font-size="11" fill="#2c3e50">'
            f"{index + 1}. {esc(bar.label)}</text>"
        )
        if bar.start is None:
            parts.append(
                f'<text x="{label_w}" y="{top + 13}" font-size="10" fill="#95a5a6">not run</text>'
            )
            continue
        left = x(bar.start)
        right = max(x(end if bar.end is None else bar.end), left + 2)
        colour = _BAR_COLOURS.get(bar.status, "#7f8c8d")
        parts.append(
            f'<rect x="{left:.1f}" y="{top + 3}" width="{right - left:.1f}" height="{row - 6}" '
            f'rx="2" fill="{colour}"><title>{esc(bar.label)}: {esc(bar.status)}</title></rect>'
        )
    axis = height - 6
    parts.append(
        f'<text x="{label_w}" y="{axis}" font-size="9" fill="#7f8c8d">0s</text>'
        f'<text x="{width - 8}" y="{axis}" font-size="9" fill="#7f8c8d" text-anchor="end">'
        f"{span:.0f}s</text></svg>"
    )
    return "".join(parts)


def meter(value: float, target: float, budget: float, *, esc: Escape) -> str:
    """Downtime against its target and budget: a bar, green within target, amber within
    budget, red beyond; the target and budget marked."""
    width, height = 320, 26
    full = max(budget * 1.25, value * 1.05, 1.0)

    def x(seconds: float) -> float:
        return 2 + (width - 4) * min(seconds / full, 1.0)

    colour = "#27ae60" if value <= target else "#f39c12" if value <= budget else "#c0392b"
    return (
        f'<svg class="meter" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{esc(f"downtime {value:.0f}s of a {budget:.0f}s budget")}">'
        f'<rect x="2" y="4" width="{width - 4}" height="12" rx="3" fill="#ecf0f1"/>'
        f'<rect x="2" y="4" width="{x(value) - 2:.1f}" height="12" rx="3" fill="{colour}"/>'
        f'<line x1="{x(target):.1f}" x2="{x(target):.1f}" y1="1" y2="19" stroke="#2c3e50" '
        'stroke-dasharray="2 2"/>'
        f'<line x1="{x(budget):.1f}" x2="{x(budget):.1f}" y1="1" y2="19" stroke="#c0392b" '
        'stroke-width="2"/>'
        f'<text x="{x(target):.1f}" y="25" font-size="8" text-anchor="middle" fill="#2c3e50">'
        "target</text>"
        f'<text x="{x(budget):.1f}" y="25" font-size="8" text-anchor="middle" fill="#c0392b">'
        "budget</text></svg>"
    )
