"""Rules: the rows of the threshold table, compiled from thresholds.toml."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Literal


class Severity(enum.StrEnum):
    IMMEDIATE = "immediate"  # run the rule's rollback playbook
    EVALUATE = "evaluate"  # page a human, who decides


class RuleState(enum.StrEnum):
    OK = "ok"
    PENDING = "pending"  # condition holds, the sustained window has not elapsed yet
    FIRING = "firing"
    RESOLVED = "resolved"  # was firing, condition cleared; becomes OK on the next clear sample
    UNKNOWN = "unknown"  # blind: no usable sample within the rule's max gap


Comparison = Literal[">", ">=", "<", "<="]
MissingData = Literal["unknown", "ok", "breach"]
Phase = Literal["watch", "post_rollback"]


@dataclass(frozen=True, slots=True)
class Threshold:
    """Breach when ``value <op> threshold``; while firing, clear only past ``clear``."""

    op: Comparison
    threshold: float
    clear: float | None = None  # hysteresis line; None means the threshold itself
    min_volume: float | None = None


@dataclass(frozen=True, slots=True)
class Baseline:
    method: Literal["rolling_median", "before_release"]
    window: float  # seconds of history the median is taken over
    min_samples: int


@dataclass(frozen=True, slots=True)
class Relative:
    """Breach when the value exceeds the baseline by more than ``increase`` (0.5 = 50%)."""

    increase: float
    baseline: Baseline
    clear_increase: float | None = None
    min_volume: float | None = None


@dataclass(frozen=True, slots=True)
class Trend:
    """Breach when the signal grew steadily over the whole window: a leak, not warm-up."""

    window: float
    min_growth: float  # total growth over the window as a fraction of its start (0.2 = 20%)
    min_rising: float  # fraction of consecutive steps that rise, in [0, 1]
    min_slope: float = 0.0  # least-squares slope in units per second
    min_samples: int = 5
    warmup: float = 0.0  # seconds after a release during which growth is expected


@dataclass(frozen=True, slots=True)
class Event:
    """A confirmed condition (data corruption, security breach): one breach fires at once."""

    at_least: float = 1.0


Condition = Threshold | Relative | Trend | Event


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    signal: str
    severity: Severity
    condition: Condition
    for_: float = 0.0  # seconds the condition must hold, with coverage, before FIRING
    keep_firing_for: float = 0.0  # seconds of clear samples before FIRING resolves
    min_samples: int = 1  # breach samples needed within the window before FIRING
    max_gap: float = 60.0  # longest gap between usable samples that still counts as coverage
    blind_after: float = 300.0  # UNKNOWN this long becomes a "sentinel blind" page
    missing: MissingData = "unknown"
    playbook: str | None = None
    phase: Phase = "watch"
    description: str = ""
    probe: str = ""  # the probe that produces the signal, named when the sentinel is blind
    split_by: str | None = None  # the signal is split by this label: judged per series

    def for_series(self, series: str) -> Rule:
        """This rule judging one series of a split signal, named after it."""
        return replace(self, name=f'{self.name}{{{self.split_by}="{series}"}}')
