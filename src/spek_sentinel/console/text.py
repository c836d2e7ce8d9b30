"""Text as the console shows it: escaped for HTML with every known secret masked first, values
in their signal's unit, times in UTC and relative to now."""

from __future__ import annotations

import html
from collections.abc import Iterable

from spek_sentinel.domain.rules import Condition, Threshold
from spek_sentinel.domain.units import format_duration, format_value, iso
from spek_sentinel.paging.text import condition_text

MASK = "********"
_MIN_SECRET = 4  # shorter values would mask ordinary words; secrets are never that short


class Escaper:
    """``esc(value)``: the text of ``value``, any secret the daemon holds replaced by a mask,
    then HTML-escaped (quotes too, so it is safe in attributes). Longest secrets first, so a
    secret that contains another is masked whole."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __call__(self, value: object) -> str:
        return html.escape(self.mask("" if value is None else str(value)), quote=True)


def value_in(unit: str | None, value: float | None) -> str:
    """A value as a person reads it in its unit: 0.0943 ratio -> 9.43%, 0.25 s -> 250ms."""
    if value is None:
        return "—"
    if unit == "bool":
        return "up" if value >= 0.5 else "down"
    return format_value(value, unit or "")


def condition_in(unit: str | None, condition: Condition) -> str:
    """A rule's condition with its threshold in the signal's unit."""
    if isinstance(condition, Threshold) and unit in ("ratio", "seconds", "bytes", "fps"):
        return f"{condition.op} {value_in(unit, condition.threshold)}"
    return condition_text(condition)


def ago(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    delta = now - at
    if delta < 0:
        return f"in {format_duration(-delta)}"
    if delta < 1:
        return "just now"
    return f"{format_duration(delta)} ago"


def when(at: float | None, now: float, esc: Escaper) -> str:
    """A ``<time>`` element: relative text, the exact UTC time on hover and in ``datetime``."""
    if at is None:
        return '<span class="muted">—</span>'
    exact = iso(at)
    return f'<time datetime="{exact}" title="{exact}">{esc(ago(at, now))}</time>'


def seconds(value: float | None) -> str:
    return "—" if value is None else format_duration(value) if value > 0 else "0s"
