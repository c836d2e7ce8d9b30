"""How a rule's condition and value read in a page."""

from __future__ import annotations

from spek_sentinel.domain.rules import Condition, Event, Relative, Threshold, Trend
from spek_sentinel.domain.units import format_duration


def condition_text(condition: Condition) -> str:
    if isinstance(condition, Threshold):
        return f"{condition.op} {condition.threshold:g}"
    if isinstance(condition, Relative):
        return f"> {condition.increase:.0%} above the {condition.baseline.method} baseline"
    if isinstance(condition, Trend):
        return f"grew {condition.min_growth:.0%} or more over {format_duration(condition.window)}"
    assert isinstance(condition, Event)
    return f">= {condition.at_least:g} event(s)"


def value_text(value: float | None) -> str | None:
    return None if value is None else f"{value:g}"
