"""What a probe saw at one moment: a value, no data, or an error."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    """One observation of a signal at ``at`` (unix seconds).

    Exactly one of three things: ``value`` is a finite number; ``value`` is None and
    ``error`` is None (NO_DATA: the source answered with nothing); or ``error`` says why the
    probe could not see. ``volume`` is the traffic behind a ratio (requests in the window), so
    a rule can refuse to judge 0/0.
    """

    signal: str
    at: float
    value: float | None = None
    error: str | None = None
    volume: float | None = None
    # one series of a signal split by a label (pod="a" -> "a"); "" is the whole signal, and a
    # whole-signal error or no-data applies to every series of it
    series: str = ""

    @property
    def usable(self) -> bool:
        """True when the sample carries a finite number. NaN and Inf count as no data."""
        return self.error is None and self.value is not None and math.isfinite(self.value)

    @property
    def kind(self) -> str:
        if self.error is not None:
            return "error"
        return "value" if self.usable else "no_data"


@dataclass(frozen=True, slots=True)
class ReleaseMark:
    """A release of the watched application started at ``at`` (anchors release baselines)."""

    at: float
    version: str
