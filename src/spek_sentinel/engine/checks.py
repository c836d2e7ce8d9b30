"""Per-rule conditions: judge one usable value as breach, hold, clear or insufficient.

A check may keep history (a baseline, a trend window); it never looks at the clock, only at the
sample times it is given. ``explain`` is called on state changes only, so the hot path stays
free of string formatting.
"""

from __future__ import annotations

import bisect
import enum
from collections import deque
from typing import Protocol

from spek_sentinel.domain.rules import (
    Event,
    Relative,
    Rule,
    RuleState,
    Threshold,
    Trend,
)
from spek_sentinel.domain.units import format_duration


class Outcome(enum.Enum):
    BREACH = "breach"
    HOLD = "hold"  # inside the hysteresis band: keeps FIRING, does not start PENDING
    CLEAR = "clear"
    INSUFFICIENT = "insufficient"  # the probe sees, but too little to judge (volume, history)


# Module-level names: an enum member lookup costs ~10x a global on the per-sample path.
BREACH = Outcome.BREACH
HOLD = Outcome.HOLD
CLEAR = Outcome.CLEAR
INSUFFICIENT = Outcome.INSUFFICIENT
_LEARNING_STATES = frozenset({RuleState.OK, RuleState.UNKNOWN, RuleState.RESOLVED})


class Check(Protocol):
    def judge(self, at: float, value: float, volume: float | None, state: RuleState) -> Outcome:
        """Classify one usable value. ``state`` is the rule's state before this sample."""

    def explain(self, value: float | None, volume: float | None) -> tuple[str, dict[str, object]]:
        """Evidence for the latest judgement: one readable line and machine-readable detail."""

    def release(self, at: float) -> None:
        """A new release of the application started at ``at``."""


def fmt(value: float) -> str:
    return f"{value:.4g}"


class ThresholdCheck:
    __slots__ = ("_above", "_clear", "_inclusive", "_limit", "_min_volume", "_signal")

    def __init__(self, signal: str, condition: Threshold) -> None:
        self._signal = signal
        self._above = condition.op in (">", ">=")
        self._inclusive = condition.op in (">=", "<=")
        self._limit = condition.threshold
        self._clear = condition.clear
        self._min_volume = condition.min_volume

    def judge(self, at: float, value: float, volume: float | None, state: RuleState) -> Outcome:
        if self._min_volume is not None and volume is not None and volume < self._min_volume:
            return INSUFFICIENT
        limit = self._limit
        if self._above:
            breach = value >= limit if self._inclusive else value > limit
        else:
            breach = value <= limit if self._inclusive else value < limit
        if breach:
            return BREACH
        clear = self._clear
        if clear is None:
            return CLEAR
        if self._above:
            return CLEAR if value <= clear else HOLD
        return CLEAR if value >= clear else HOLD

    def release(self, at: float) -> None:
        return None

    def explain(self, value: float | None, volume: float | None) -> tuple[str, dict[str, object]]:
        op = (
            (">=" if self._inclusive else ">")
            if self._above
            else ("<=" if self._inclusive else "<")
        )
        detail: dict[str, object] = {"threshold": self._limit, "op": op}
        if self._clear is not None:
            detail["clear"] = self._clear
        if volume is not None:
            detail["volume"] = volume
        if value is None:
            return f"{self._signal} (no value) vs {op} {fmt(self._limit)}", detail
        text = f"{self._signal} {fmt(value)} vs threshold {op} {fmt(self._limit)}"
        if self._min_volume is not None and volume is not None and volume < self._min_volume:
            text += f" (volume {fmt(volume)} below minimum {fmt(self._min_volume)}: not judged)"
        return text, detail


class RollingMedian:
    """Median of the values seen in the last ``window`` seconds."""

    __slots__ = ("_sorted", "_times", "_window")

    def __init__(self, window: float) -> None:
        self._window = window
        self._times: deque[tuple[float, float]] = deque()
        self._sorted: list[float] = []

    def add(self, at: float, value: float) -> None:
        self._times.append((at, value))
        bisect.insort(self._sorted, value)
        self.expire(at)

    def expire(self, now: float) -> None:
        horizon = now - self._window
        while self._times and self._times[0][0] < horizon:
            _, old = self._times.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    def __len__(self) -> int:
        return len(self._sorted)

    def median(self) -> float | None:
        values = self._sorted
        count = len(values)
        if not count:
            return None
        mid = count // 2
        return values[mid] if count % 2 else (values[mid - 1] + values[mid]) / 2


class RelativeCheck:
    """Breach when the value exceeds a baseline by ``increase``.

    The baseline learns only from samples judged while the rule is OK, so a slow release
    cannot drag its own baseline up. ``before_release`` freezes the median of the window that
    ended when the current release started; until a release is seen it falls back to the
    rolling median, and the evidence says which one was used.
    """

    __slots__ = ("_baseline", "_condition", "_frozen", "_frozen_count", "_rolling", "_signal")

    def __init__(self, signal: str, condition: Relative) -> None:
        self._signal = signal
        self._condition = condition
        self._rolling = RollingMedian(condition.baseline.window)
        self._frozen: float | None = None
        self._frozen_count = 0
        self._baseline: float | None = None

    def _current_baseline(self, at: float) -> float | None:
        if self._frozen is not None:
            return self._frozen
        self._rolling.expire(at)
        if len(self._rolling) < self._condition.baseline.min_samples:
            return None
        return self._rolling.median()

    def judge(self, at: float, value: float, volume: float | None, state: RuleState) -> Outcome:
        condition = self._condition
        min_volume = condition.min_volume
        if min_volume is not None and volume is not None and volume < min_volume:
            return INSUFFICIENT
        baseline = self._baseline = self._current_baseline(at)
        if state in _LEARNING_STATES:
            self._rolling.add(at, value)
        if baseline is None or baseline <= 0:
            return INSUFFICIENT
        if value > baseline * (1 + condition.increase):
            return BREACH
        clear_increase = condition.clear_increase
        if clear_increase is None or value <= baseline * (1 + clear_increase):
            return CLEAR
        return HOLD

    def release(self, at: float) -> None:
        if self._condition.baseline.method != "before_release":
            return
        self._rolling.expire(at)
        if len(self._rolling) >= self._condition.baseline.min_samples:
            self._frozen = self._rolling.median()
            self._frozen_count = len(self._rolling)

    def explain(self, value: float | None, volume: float | None) -> tuple[str, dict[str, object]]:
        spec = self._condition.baseline
        window = format_duration(spec.window)
        if self._frozen is not None:
            source = (
                f"median of the {window} before the current release ({self._frozen_count} samples)"
            )
        elif spec.method == "before_release":
            source = f"rolling median over {window} (no release seen yet)"
        else:
            source = f"rolling median over {window} ({len(self._rolling)} samples)"
        baseline = self._baseline
        detail: dict[str, object] = {
            "baseline": baseline,
            "baseline_source": source,
            "increase": self._condition.increase,
        }
        if baseline is None or baseline <= 0:
            return (
                f"{self._signal}: baseline not established yet "
                f"({len(self._rolling)} of {spec.min_samples} samples); not judged",
                detail,
            )
        if value is None:
            return f"{self._signal} (no value) vs baseline {fmt(baseline)} ({source})", detail
        change = value / baseline - 1
        detail["change"] = change
        return (
            f"{self._signal} {fmt(value)} is {change:+.0%} against baseline {fmt(baseline)} "
            f"({source}); limit +{self._condition.increase:.0%}",
            detail,
        )


class TrendCheck:
    """Growth over a full window, judged by least-squares slope, share of rising steps and total
    growth; and growth that goes on: the later half of the window must still rise at half the
    overall rate or more, which tells a leak from a warm-up that has levelled off. Sums are kept
    incrementally so each sample costs O(1) amortised; the later-half fit runs only when the
    other tests already pass."""

    __slots__ = (
        "_condition",
        "_max_gap",
        "_n",
        "_points",
        "_rises",
        "_signal",
        "_st",
        "_stt",
        "_stv",
        "_sv",
        "_t0",
        "_warm_until",
    )

    def __init__(self, signal: str, condition: Trend, max_gap: float) -> None:
        self._signal = signal
        self._condition = condition
        self._max_gap = max_gap
        self._points: deque[tuple[float, float]] = deque()
        self._t0: float | None = None
        self._n = 0
        self._st = self._sv = self._stt = self._stv = 0.0
        self._rises = 0
        self._warm_until = float("-inf")

    def _add(self, at: float, value: float) -> None:
        if self._t0 is None:
            self._t0 = at
        t = at - self._t0
        if self._points and value > self._points[-1][1]:
            self._rises += 1
        self._points.append((at, value))
        self._n += 1
        self._st += t
        self._sv += value
        self._stt += t * t
        self._stv += t * value

    def _evict(self, horizon: float) -> None:
        points = self._points
        t0 = self._t0 if self._t0 is not None else 0.0
        while points and points[0][0] < horizon:
            at, value = points.popleft()
            if points and points[0][1] > value:
                self._rises -= 1
            t = at - t0
            self._n -= 1
            self._st -= t
            self._sv -= value
            self._stt -= t * t
            self._stv -= t * value

    def _fit(self) -> tuple[float, float] | None:
        """(slope per second, fitted value at the window start)."""
        n = self._n
        if n < 2:
            return None
        denominator = n * self._stt - self._st * self._st
        if denominator <= 0:
            return None
        slope = (n * self._stv - self._st * self._sv) / denominator
        intercept = (self._sv - slope * self._st) / n
        t0 = self._t0 if self._t0 is not None else 0.0
        return slope, intercept + slope * (self._points[0][0] - t0)

    def _window_full(self) -> bool:
        points = self._points
        return (
            self._n >= self._condition.min_samples
            and points[-1][0] - points[0][0] >= self._condition.window - self._max_gap
        )

    def judge(self, at: float, value: float, volume: float | None, state: RuleState) -> Outcome:
        if at < self._warm_until:
            return INSUFFICIENT
        self._add(at, value)
        self._evict(at - self._condition.window)
        if not self._window_full():
            return INSUFFICIENT
        fit = self._fit()
        if fit is None:
            return CLEAR
        slope, start = fit
        condition = self._condition
        span = self._points[-1][0] - self._points[0][0]
        growth = slope * span / start if start > 0 else 0.0
        rising = self._rises / (self._n - 1)
        if (
            slope > condition.min_slope
            and rising >= condition.min_rising
            and growth >= condition.min_growth
            and self._later_half_slope() >= slope / 2
        ):
            return BREACH
        return CLEAR

    def _later_half_slope(self) -> float:
        points = self._points
        middle = (points[0][0] + points[-1][0]) / 2
        recent = [(at - middle, value) for at, value in points if at >= middle]
        n = len(recent)
        st = sum(t for t, _ in recent)
        sv = sum(v for _, v in recent)
        stt = sum(t * t for t, _ in recent)
        stv = sum(t * v for t, v in recent)
        denominator = n * stt - st * st
        if n < 2 or denominator <= 0:
            return 0.0
        return (n * stv - st * sv) / denominator

    def release(self, at: float) -> None:
        # Growth across a deploy is a restart, not a leak: start the window afresh.
        self._points.clear()
        self._t0 = None
        self._n = self._rises = 0
        self._st = self._sv = self._stt = self._stv = 0.0
        self._warm_until = at + self._condition.warmup

    def explain(self, value: float | None, volume: float | None) -> tuple[str, dict[str, object]]:
        condition = self._condition
        window = format_duration(condition.window)
        if not self._points or not self._window_full():
            return f"{self._signal}: trend window of {window} not filled yet; not judged", {}
        fit = self._fit()
        slope, start = fit if fit is not None else (0.0, 0.0)
        span = self._points[-1][0] - self._points[0][0]
        growth = slope * span / start if start > 0 else 0.0
        rising = self._rises / (self._n - 1)
        later = self._later_half_slope()
        detail: dict[str, object] = {
            "slope_per_s": slope,
            "later_half_slope_per_s": later,
            "growth": growth,
            "rising_share": rising,
            "samples": self._n,
            "window": condition.window,
        }
        return (
            f"{self._signal} grew {growth:+.0%} over {format_duration(span)} "
            f"(slope {fmt(slope)}/s, later half {fmt(later)}/s, "
            f"{rising:.0%} of {self._n - 1} steps rising; "
            f"limits: growth {condition.min_growth:.0%}, rising {condition.min_rising:.0%})",
            detail,
        )


class EventCheck:
    __slots__ = ("_at_least", "_signal")

    def __init__(self, signal: str, condition: Event) -> None:
        self._signal = signal
        self._at_least = condition.at_least

    def judge(self, at: float, value: float, volume: float | None, state: RuleState) -> Outcome:
        return BREACH if value >= self._at_least else CLEAR

    def release(self, at: float) -> None:
        return None

    def explain(self, value: float | None, volume: float | None) -> tuple[str, dict[str, object]]:
        shown = "no value" if value is None else fmt(value)
        return (
            f"{self._signal} = {shown} (confirmed event when >= {fmt(self._at_least)})",
            {"at_least": self._at_least},
        )


def check_for(rule: Rule) -> Check:
    condition = rule.condition
    if isinstance(condition, Threshold):
        check: Check = ThresholdCheck(rule.signal, condition)
    elif isinstance(condition, Relative):
        check = RelativeCheck(rule.signal, condition)
    elif isinstance(condition, Trend):
        check = TrendCheck(rule.signal, condition, rule.max_gap)
    else:
        check = EventCheck(rule.signal, condition)
    return check
