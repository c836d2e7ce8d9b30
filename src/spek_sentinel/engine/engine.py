"""The engine: routes samples to rule machines and lets time pass. Deterministic and I/O-free."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from spek_sentinel.domain.rules import Rule, RuleState
from spek_sentinel.domain.samples import ReleaseMark, Sample
from spek_sentinel.domain.verdicts import Verdict
from spek_sentinel.engine.machine import RuleMachine
from spek_sentinel.engine.split import SplitGroup


@dataclass(frozen=True, slots=True)
class RuleStatus:
    rule: Rule
    state: RuleState
    blind: bool
    value: float | None
    last_usable_at: float | None


class Engine:
    """Feeds samples through one state machine per rule.

    ``observe`` first lets time pass up to the sample (so silent rules go UNKNOWN at the right
    moment), then applies the sample to the rules watching its signal. Staleness is checked only
    when the earliest deadline of any rule has passed, which keeps the per-sample cost flat as
    the rule count grows.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._machines = [RuleMachine(rule) for rule in rules if rule.split_by is None]
        self._groups = [SplitGroup(rule) for rule in rules if rule.split_by is not None]
        self._by_signal: dict[str, list[RuleMachine]] = {}
        for machine in self._machines:
            self._by_signal.setdefault(machine.rule.signal, []).append(machine)
        self._groups_by_signal: dict[str, list[SplitGroup]] = {}
        for group in self._groups:
            self._groups_by_signal.setdefault(group.rule.signal, []).append(group)
        self._started = False
        self._next_deadline = float("inf")
        self.now = float("-inf")
        self._last_at: dict[str, float] = {}
        self.out_of_order = 0
        self.unrouted = 0

    @property
    def signals(self) -> frozenset[str]:
        return frozenset(self._by_signal) | frozenset(self._groups_by_signal)

    def _start(self, now: float) -> None:
        self._started = True
        for machine in self._machines:
            machine.watch_from = now
        for group in self._groups:
            group.watch_from = now
        deadlines = [m.next_deadline() for m in self._machines]
        deadlines += [g.next_deadline() for g in self._groups]
        self._next_deadline = min(deadlines, default=float("inf"))

    def advance(self, now: float) -> list[Verdict]:
        """Let time pass to ``now``; returns the rules that lost sight or went blind."""
        if not self._started:
            self._start(now)
        self.now = max(self.now, now)
        if now < self._next_deadline:
            return []
        verdicts = []
        earliest = float("inf")
        for machine in self._machines:
            verdict = machine.advance(now)
            if verdict is not None:
                verdicts.append(verdict)
            deadline = machine.next_deadline()
            earliest = min(earliest, deadline)
        for group in self._groups:
            verdicts.extend(group.advance(now))
            earliest = min(earliest, group.next_deadline())
        self._next_deadline = earliest
        return verdicts

    def observe(self, sample: Sample) -> list[Verdict]:
        """Judge one sample. Order matters per signal only: probes run concurrently, so a
        sample may be a little older than another signal's newest one."""
        at = sample.at
        signal = sample.signal
        last = self._last_at.get(signal)
        if last is not None and at < last:
            self.out_of_order += 1
            return []
        self._last_at[signal] = at
        verdicts = self.advance(at) if at >= self._next_deadline or not self._started else []
        machines = self._by_signal.get(signal)
        groups = self._groups_by_signal.get(signal)
        if machines is None and groups is None:
            self.unrouted += 1
            return verdicts
        for machine in machines or ():
            verdict = machine.observe(sample)
            if verdict is not None:
                verdicts.append(verdict)
                # a rule that sees again has deadlines earlier than the cached minimum
                deadline = machine.next_deadline()
                self._next_deadline = min(self._next_deadline, deadline)
        for group in groups or ():
            verdicts.extend(group.observe(sample))
            # a new series brings deadlines of its own
            self._next_deadline = min(self._next_deadline, group.next_deadline())
        return verdicts

    def observe_many(self, samples: Iterable[Sample]) -> list[Verdict]:
        verdicts: list[Verdict] = []
        for sample in samples:
            verdicts.extend(self.observe(sample))
        return verdicts

    def release(self, mark: ReleaseMark) -> None:
        """A new release started: anchors release baselines and restarts trend windows."""
        for machine in self._machines:
            machine.check.release(mark.at)
        for group in self._groups:
            group.release(mark.at)

    def rearm(self, phase: str) -> None:
        """Start every rule of ``phase`` afresh, silently (post-rollback validation after a
        rollback: a check that was already failing during the incident must fail again after
        the rollback to page)."""
        for machine in self._all_machines():
            if machine.rule.phase == phase:
                machine.rearm()

    def resume_firing(self, names: Iterable[str]) -> set[str]:
        """Put the named rules back in FIRING after a restart; returns those it could (a split
        rule's series exist only once seen again)."""
        wanted = set(names)
        resumed = set()
        for machine in self._machines:
            if machine.rule.name in wanted:
                machine.resume_firing()
                resumed.add(machine.rule.name)
        return resumed

    def _all_machines(self) -> list[RuleMachine]:
        return self._machines + [m for g in self._groups for m in g.machines.values()]

    def status(self) -> list[RuleStatus]:
        return [
            RuleStatus(m.rule, m.state, m.blind, m.last_value, m.last_usable_at)
            for m in self._all_machines()
        ]
