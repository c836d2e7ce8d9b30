"""One-shot judgement of every rule on the latest samples: what `check` reports.

A single sample cannot prove a sustained window, so this says "breaching now", not "firing";
relative and trend rules need history and are reported as not judged.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from spek_sentinel.domain.rules import Rule, RuleState, Severity
from spek_sentinel.domain.samples import Sample
from spek_sentinel.engine.checks import BREACH, INSUFFICIENT, check_for


class Status(enum.StrEnum):
    OK = "ok"
    BREACH = "breach"
    UNKNOWN = "unknown"
    NOT_JUDGED = "not judged"


# Nagios plugin exit codes
NAGIOS_OK = 0
NAGIOS_WARNING = 1
NAGIOS_CRITICAL = 2
NAGIOS_UNKNOWN = 3


@dataclass(frozen=True, slots=True)
class RuleCheck:
    rule: Rule
    sample: Sample | None
    status: Status
    detail: str


def judge_now(rule: Rule, sample: Sample | None) -> RuleCheck:
    if sample is None:
        return RuleCheck(
            rule, None, Status.UNKNOWN, f"no {rule.signal} sample: no probe reported it"
        )
    if not sample.usable:
        cause = sample.error or "no data"
        if rule.missing == "ok":
            return RuleCheck(rule, sample, Status.OK, f"{cause} (counts as ok for this rule)")
        if rule.missing == "breach":
            return RuleCheck(rule, sample, Status.BREACH, f"{cause} (counts as a breach)")
        return RuleCheck(rule, sample, Status.UNKNOWN, cause)
    check = check_for(rule)
    assert sample.value is not None
    outcome = check.judge(sample.at, sample.value, sample.volume, RuleState.OK)
    text, _ = check.explain(sample.value, sample.volume)
    if outcome is BREACH:
        return RuleCheck(rule, sample, Status.BREACH, text)
    if outcome is INSUFFICIENT:
        return RuleCheck(rule, sample, Status.NOT_JUDGED, text)
    return RuleCheck(rule, sample, Status.OK, text)


def judge_all(rules: Iterable[Rule], samples: Mapping[str, list[Sample]]) -> list[RuleCheck]:
    """Every watch rule on the samples of its signal; a split rule once per series."""
    checks = []
    for rule in rules:
        if rule.phase != "watch":
            continue
        seen = samples.get(rule.signal, [])
        per_series = [s for s in seen if s.series]
        if rule.split_by is not None and per_series:
            checks += [judge_now(rule.for_series(s.series), s) for s in per_series]
        else:
            checks.append(judge_now(rule, seen[0] if seen else None))
    return checks


def exit_code(checks: Iterable[RuleCheck]) -> int:
    """CRITICAL if an immediate rule breaches, else WARNING if an evaluate rule does, else
    UNKNOWN if any rule is blind, else OK."""
    checks = list(checks)
    breaching = {c.rule.severity for c in checks if c.status is Status.BREACH}
    if Severity.IMMEDIATE in breaching:
        return NAGIOS_CRITICAL
    if Severity.EVALUATE in breaching:
        return NAGIOS_WARNING
    if any(c.status is Status.UNKNOWN for c in checks):
        return NAGIOS_UNKNOWN
    return NAGIOS_OK
