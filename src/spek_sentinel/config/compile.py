"""Cross-checks between sections, and compilation of rule rows into engine rules.

Every problem is collected with its key path; nothing is compiled unless all rows are valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spek_sentinel.config.models import (
    ConfigModel,
    EventRule,
    RelativeRule,
    RuleModel,
    ThresholdRule,
    TrendRule,
)
from spek_sentinel.config.probes import SignalSpec
from spek_sentinel.config.types import ThresholdValue, Unit
from spek_sentinel.domain.rules import (
    Baseline,
    Condition,
    Event,
    Relative,
    Rule,
    Severity,
    Threshold,
    Trend,
)
from spek_sentinel.domain.units import parse_duration, parse_size


@dataclass(frozen=True, slots=True)
class SignalSource:
    probe: str
    spec: SignalSpec
    interval: float


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, reason: str) -> None:
        self.items.append((path, reason))


def signal_sources(model: ConfigModel, problems: _Problems) -> dict[str, SignalSource]:
    sources: dict[str, SignalSource] = {}
    for probe_name, probe in model.probes.items():
        interval = probe.interval or model.defaults.interval
        for signal, spec in probe.signals.items():
            if signal in sources:
                problems.add(
                    f"probes.{probe_name}.signals.{signal}",
                    f"signal {signal!r} is already produced by probe {sources[signal].probe!r}",
                )
                continue
            sources[signal] = SignalSource(probe_name, spec, interval)
    return sources


def to_unit(value: ThresholdValue, unit: Unit) -> float:
    """Read a threshold in the signal's unit; raises ValueError with the accepted forms."""
    if isinstance(value, str):
        text = value.strip()
        if unit == "ratio":
            if not re.fullmatch(r"\d+(\.\d+)?\s*%", text):
                raise ValueError(f"{value!r}: write a ratio as a number like 0.05 or as '5%'")
            number = float(text.rstrip("%")) / 100
        elif unit == "seconds":
            number = parse_duration(text)
        elif unit == "bytes":
            number = parse_size(text)
        else:
            raise ValueError(f"{value!r}: thresholds on a {unit} signal are plain numbers, no unit")
    else:
        number = float(value)
    if unit == "ratio" and not 0 <= number <= 1:
        raise ValueError(f"{value!r} is outside [0, 1] for a ratio signal (write 0.05 or '5%')")
    if number < 0:
        raise ValueError(f"{value!r} is negative; a {unit} signal is never below 0")
    return number


def _threshold(row: ThresholdRule, unit: Unit, path: str, problems: _Problems) -> Threshold | None:
    if (row.above is None) == (row.below is None):
        problems.add(path, "set exactly one of 'above' or 'below'")
        return None
    above = row.above is not None
    if above and row.clear_above is not None:
        problems.add(f"{path}.clear_above", "an 'above' rule clears with 'clear_below'")
        return None
    if not above and row.clear_below is not None:
        problems.add(f"{path}.clear_below", "a 'below' rule clears with 'clear_above'")
        return None
    key = "above" if above else "below"
    raw = row.above if above else row.below
    assert raw is not None
    clear_key = "clear_below" if above else "clear_above"
    clear_raw = row.clear_below if above else row.clear_above
    try:
        limit = to_unit(raw, unit)
    except ValueError as exc:
        problems.add(f"{path}.{key}", str(exc))
        return None
    clear = None
    if clear_raw is not None:
        try:
            clear = to_unit(clear_raw, unit)
        except ValueError as exc:
            problems.add(f"{path}.{clear_key}", str(exc))
            return None
        if (above and clear > limit) or (not above and clear < limit):
            side = "at or below" if above else "at or above"
            problems.add(f"{path}.{clear_key}", f"must be {side} the threshold {raw!r}")
            return None
    return Threshold(">" if above else "<", limit, clear, row.min_volume)


def _condition(row: RuleModel, unit: Unit, path: str, problems: _Problems) -> Condition | None:
    if isinstance(row, ThresholdRule):
        return _threshold(row, unit, path, problems)
    if isinstance(row, RelativeRule):
        if row.clear_increase is not None and row.clear_increase > row.increase:
            problems.add(f"{path}.clear_increase", "must not exceed 'increase'")
            return None
        spec = row.baseline
        return Relative(
            row.increase,
            Baseline(spec.method, spec.window, spec.min_samples),
            row.clear_increase,
            row.min_volume,
        )
    if isinstance(row, TrendRule):
        return Trend(
            window=row.window,
            min_growth=row.min_growth,
            min_rising=row.min_rising,
            min_slope=row.min_slope,
            min_samples=row.min_window_samples,
            warmup=row.warmup,
        )
    if row.for_ > 0:
        problems.add(
            f"{path}.for", "an event rule fires on the first confirmed event; remove 'for'"
        )
        return None
    return Event(row.at_least)


def _rule(
    index: int,
    row: RuleModel,
    model: ConfigModel,
    sources: dict[str, SignalSource],
    problems: _Problems,
) -> Rule | None:
    path = f"rules[{index}]"
    if row.severity == "immediate" and row.playbook is None:
        problems.add(f"{path}.playbook", "an immediate rule must name the playbook to run")
    if row.playbook is not None and row.playbook not in model.playbooks:
        known = ", ".join(sorted(model.playbooks)) or "none"
        problems.add(f"{path}.playbook", f"unknown playbook {row.playbook!r}; defined: {known}")
    if row.severity == "immediate" and row.missing == "breach":
        problems.add(
            f"{path}.missing",
            "'breach' is not allowed on an immediate rule: missing data never starts a rollback",
        )
    source = sources.get(row.signal)
    if source is None:
        known = ", ".join(sorted(sources)) or "none"
        problems.add(f"{path}.signal", f"unknown signal {row.signal!r}; probes define: {known}")
        return None
    condition = _condition(row, source.spec.unit, path, problems)
    if condition is None:
        return None
    if isinstance(row, EventRule) and source.spec.unit not in ("count", "bool"):
        problems.add(
            f"{path}.signal", f"an event rule needs a count or bool signal, not {source.spec.unit}"
        )
        return None
    return Rule(
        name=row.name,
        signal=row.signal,
        severity=Severity(row.severity),
        condition=condition,
        for_=row.for_,
        keep_firing_for=row.keep_firing_for,
        min_samples=row.min_samples,
        max_gap=row.max_gap or source.interval * model.defaults.max_gap_intervals,
        blind_after=row.blind_after or model.defaults.blind_after,
        missing=row.missing,
        playbook=row.playbook,
        description=row.description,
        probe=source.probe,
        split_by=source.spec.split_by,
    )


def _validation_rules(
    model: ConfigModel, sources: dict[str, SignalSource], problems: _Problems
) -> list[Rule]:
    rules = []
    seen: set[str] = set()
    for index, check in enumerate(model.validation.checks):
        path = f"validation.checks[{index}]"
        if check.name in seen:
            problems.add(f"{path}.name", f"duplicate check name {check.name!r}")
        seen.add(check.name)
        source = sources.get(check.signal)
        if source is None:
            problems.add(f"{path}.signal", f"unknown signal {check.signal!r}")
            continue
        try:
            limit = to_unit(check.below, source.spec.unit)
        except ValueError as exc:
            problems.add(f"{path}.below", str(exc))
            continue
        rules.append(
            Rule(
                name=f"validation.{check.name}",
                signal=check.signal,
                severity=Severity.EVALUATE,
                condition=Threshold(">=", limit),
                for_=check.for_,
                max_gap=source.interval * model.defaults.max_gap_intervals,
                blind_after=model.defaults.blind_after,
                phase="post_rollback",
                probe=source.probe,
                split_by=source.spec.split_by,
                description=check.description or f"{check.signal} must stay below {check.below}",
            )
        )
    return rules


def compile_rules(model: ConfigModel) -> tuple[list[Rule], list[tuple[str, str]]]:
    """Rules (watch rules first, then post-rollback checks) and the problems found."""
    problems = _Problems()
    sources = signal_sources(model, problems)
    rules: list[Rule] = []
    names: dict[str, int] = {}
    for index, row in enumerate(model.rules):
        if row.name in names:
            problems.add(
                f"rules[{index}].name",
                f"duplicate rule name {row.name!r} (first at rules[{names[row.name]}])",
            )
            continue
        names[row.name] = index
        rule = _rule(index, row, model, sources, problems)
        if rule is not None:
            rules.append(rule)
    for name, playbook in model.playbooks.items():
        if "restore" in playbook.database and playbook.restore_from is None:
            problems.add(f"playbooks.{name}.restore_from", "a restore needs 'restore_from'")
    rules.extend(_validation_rules(model, sources, problems))
    return rules, problems.items
