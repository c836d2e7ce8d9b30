"""The recent values of every signal, in memory, for the console's sparklines.

The watch loop hands each probe's samples to ``SignalHistory.record``. Memory is bounded twice:
each signal keeps at most one point per ``window / max_points`` seconds (the latest sample in
that slot wins) and at most ``max_points`` of them, and at most ``max_signals`` signals are kept
(the one updated longest ago is dropped first: a split signal with a label per pod must not
grow without end). Nothing here survives a restart or a reload; a sparkline refills itself.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from spek_sentinel.domain.samples import Sample

WINDOW = 3600.0  # the last hour
MAX_POINTS = 720  # one point per 5 s over the hour
MAX_SIGNALS = 500
MAX_ERROR = 300  # characters of a probe error kept for display


@dataclass(frozen=True, slots=True)
class Point:
    at: float
    value: float | None  # None: the probe saw nothing usable (no data, or an error)


@dataclass(frozen=True, slots=True)
class LastError:
    at: float
    error: str


def series_key(signal: str, series: str = "") -> str:
    """The key a sample is kept under: the signal, or ``signal{series}`` for one series."""
    return f"{signal}{{{series}}}" if series else signal


class SignalHistory:
    def __init__(
        self,
        window: float = WINDOW,
        max_points: int = MAX_POINTS,
        max_signals: int = MAX_SIGNALS,
    ) -> None:
        if window <= 0 or max_points < 2 or max_signals < 1:
            raise ValueError("window must be positive, max_points at least 2, max_signals 1")
        self.window = window
        self.max_points = max_points
        self.max_signals = max_signals
        self.slot = window / max_points
        self._points: OrderedDict[str, deque[Point]] = OrderedDict()
        self._errors: dict[str, LastError] = {}

    def record(self, samples: Iterable[Sample]) -> None:
        for sample in samples:
            key = series_key(sample.signal, sample.series)
            value = sample.value if sample.usable else None
            self._add(key, Point(sample.at, value))
            if sample.error is not None:
                self._errors[key] = LastError(sample.at, sample.error[:MAX_ERROR])
            elif sample.usable:
                self._errors.pop(key, None)

    def _add(self, key: str, point: Point) -> None:
        points = self._points.get(key)
        if points is None:
            points = deque(maxlen=self.max_points)
            self._points[key] = points
            while len(self._points) > self.max_signals:
                dropped, _ = self._points.popitem(last=False)
                self._errors.pop(dropped, None)
        else:
            self._points.move_to_end(key)
        if points and point.at < points[-1].at:
            return  # out of order (a slow probe): the sparkline only moves forward
        if points and int(points[-1].at // self.slot) == int(point.at // self.slot):
            points[-1] = point  # same slot: the latest sample stands for it
        else:
            points.append(point)

    def points(self, key: str, now: float) -> list[Point]:
        """The points of the last ``window`` seconds before ``now``, oldest first."""
        since = now - self.window
        return [p for p in self._points.get(key, ()) if p.at >= since]

    def last_error(self, key: str) -> LastError | None:
        """The probe's error for this signal, while it has not seen a usable value since."""
        return self._errors.get(key)

    def signals(self) -> list[str]:
        return list(self._points)
