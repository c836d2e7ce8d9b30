"""A rule over a signal split by a label: one state machine per series, created on first sight.

A series that stops reporting while its siblings still report has ended (a pod replaced in a
deploy): it is retired, and a firing one resolves with that reason, instead of paging "blind".
A whole-signal error or no-data reaches every series. Before any series has been seen, the
group itself watches for blindness, so a query that never returns anything still pages.
"""

from __future__ import annotations

from spek_sentinel.domain.rules import Rule, RuleState
from spek_sentinel.domain.samples import Sample
from spek_sentinel.domain.units import format_duration
from spek_sentinel.domain.verdicts import Verdict
from spek_sentinel.engine.machine import RuleMachine

_NEVER = float("inf")


class SplitGroup:
    __slots__ = ("blind", "last_usable_at", "machines", "released_at", "rule", "watch_from")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.machines: dict[str, RuleMachine] = {}
        self.watch_from: float | None = None
        self.last_usable_at: float | None = None
        self.blind = False  # the group-level blindness of a signal with no series yet
        self.released_at: float | None = None  # the latest release, for series seen after it

    def _machine(self, series: str, at: float) -> RuleMachine:
        machine = self.machines.get(series)
        if machine is None:
            machine = self.machines[series] = RuleMachine(self.rule.for_series(series))
            machine.watch_from = at
            if self.released_at is not None:
                machine.check.release(self.released_at)
        return machine

    def observe(self, sample: Sample) -> list[Verdict]:
        if self.watch_from is None:
            self.watch_from = sample.at
        if sample.series == "" and not sample.usable:
            verdicts = [v for m in self.machines.values() if (v := m.observe(sample)) is not None]
            return verdicts or self.advance(sample.at)
        verdicts = []
        if sample.usable:
            self.last_usable_at = sample.at
            if self.blind:
                self.blind = False
                verdicts.append(self._group_verdict(sample.at, RuleState.OK, restored=True))
        verdict = self._machine(sample.series, sample.at).observe(sample)
        if verdict is not None:
            verdicts.append(verdict)
        return verdicts

    def _siblings_report(self, now: float) -> bool:
        return self.last_usable_at is not None and now - self.last_usable_at <= self.rule.max_gap

    def advance(self, now: float) -> list[Verdict]:
        verdicts: list[Verdict] = []
        for series, machine in list(self.machines.items()):
            if now - machine.last_seen_at > self.rule.max_gap and self._siblings_report(now):
                del self.machines[series]
                if machine.state is RuleState.FIRING:
                    verdicts.append(self._retired(machine, series, now))
                continue
            verdict = machine.advance(now)
            if verdict is not None:
                verdicts.append(verdict)
        reference = self.last_usable_at if self.last_usable_at is not None else self.watch_from
        if (
            not self.machines
            and not self.blind
            and reference is not None
            and now - reference >= self.rule.blind_after
        ):
            self.blind = True
            verdicts.append(self._group_verdict(now, RuleState.UNKNOWN, restored=False))
        return verdicts

    def next_deadline(self) -> float:
        deadline = min((m.next_deadline() for m in self.machines.values()), default=_NEVER)
        reference = self.last_usable_at if self.last_usable_at is not None else self.watch_from
        if not self.machines and not self.blind and reference is not None:
            deadline = min(deadline, reference + self.rule.blind_after)
        return deadline

    def release(self, at: float) -> None:
        self.released_at = at
        for machine in self.machines.values():
            machine.check.release(at)

    def rearm(self) -> None:
        for machine in self.machines.values():
            machine.rearm()

    def _retired(self, machine: RuleMachine, series: str, now: float) -> Verdict:
        label = f'{self.rule.split_by}="{series}"'
        return Verdict(
            rule=machine.rule,
            at=now,
            previous=RuleState.FIRING,
            state=RuleState.RESOLVED,
            value=None,
            evidence=f"series {label} is no longer reported while other series are: retired",
            detail={"retired": True},
        )

    def _group_verdict(self, at: float, state: RuleState, *, restored: bool) -> Verdict:
        reference = self.last_usable_at if self.last_usable_at is not None else self.watch_from
        silent = format_duration(at - reference) if reference is not None else "ever"
        source = f" from probe {self.rule.probe}" if self.rule.probe else ""
        evidence = (
            f"{self.rule.signal} reports series again"
            if restored
            else f"no series of {self.rule.signal}{source} for {silent}"
        )
        return Verdict(
            rule=self.rule,
            at=at,
            previous=RuleState.UNKNOWN if restored else RuleState.OK,
            state=state,
            value=None,
            evidence=evidence,
            blind=not restored,
            sight_restored=restored,
        )
