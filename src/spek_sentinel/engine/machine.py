"""One rule's state machine: OK -> PENDING -> FIRING -> RESOLVED, and UNKNOWN when blind.

Semantics, in the order an on-call engineer would ask about them:

* FIRING needs the condition to hold for the whole ``for`` window with coverage: breach samples
  no further apart than ``max_gap``, and at least ``min_samples`` of them. A larger gap starts
  the window again, as Prometheus ``for`` does.
* A missing sample (probe error, no data, NaN) is tolerated for ``max_gap``; after that the rule
  is UNKNOWN and any PENDING window is lost. UNKNOWN never becomes FIRING by itself. A FIRING
  rule stays FIRING while blind: not seeing a problem is not seeing it fixed.
* Blind for ``blind_after`` raises one "blind" verdict, cleared by the next usable sample.
* Leaving FIRING needs values past the clear line (hysteresis) for ``keep_firing_for``.
"""

from __future__ import annotations

from spek_sentinel.domain.rules import Rule, RuleState
from spek_sentinel.domain.samples import Sample
from spek_sentinel.domain.units import format_duration
from spek_sentinel.domain.verdicts import Verdict
from spek_sentinel.engine.checks import BREACH, CLEAR, HOLD, INSUFFICIENT, Check, Outcome, check_for

_OK = RuleState.OK
_PENDING = RuleState.PENDING
_FIRING = RuleState.FIRING
_RESOLVED = RuleState.RESOLVED
_UNKNOWN = RuleState.UNKNOWN
_NEVER = float("inf")


class RuleMachine:
    __slots__ = (
        "blind",
        "breach_count",
        "check",
        "clear_since",
        "last_breach_at",
        "last_error",
        "last_seen_at",
        "last_usable_at",
        "last_value",
        "last_volume",
        "pending_since",
        "rule",
        "state",
        "watch_from",
    )

    def __init__(self, rule: Rule, check: Check | None = None) -> None:
        self.rule = rule
        self.check = check if check is not None else check_for(rule)
        self.state = _OK
        self.blind = False
        self.watch_from: float | None = None  # when the sentinel started looking
        self.last_seen_at = float("-inf")
        self.last_usable_at: float | None = None
        self.last_breach_at = float("-inf")
        self.pending_since = 0.0
        self.breach_count = 0
        self.clear_since: float | None = None
        self.last_value: float | None = None
        self.last_volume: float | None = None
        self.last_error: str | None = None

    # -- time passing -----------------------------------------------------------------------

    def _sight_reference(self) -> float | None:
        return self.last_usable_at if self.last_usable_at is not None else self.watch_from

    def next_deadline(self) -> float:
        """The earliest time at which ``advance`` could change something without a sample."""
        reference = self._sight_reference()
        if reference is None:
            return _NEVER
        deadline = _NEVER
        if self.state in (_OK, _PENDING, _RESOLVED):
            deadline = reference + self.rule.max_gap
        if not self.blind:
            deadline = min(deadline, reference + self.rule.blind_after)
        return deadline

    def advance(self, now: float) -> Verdict | None:
        """Let time pass with no usable sample: maybe UNKNOWN, maybe blind."""
        reference = self._sight_reference()
        if reference is None:
            return None
        silent_for = now - reference
        previous = self.state
        lost_sight = previous in (_OK, _PENDING, _RESOLVED) and silent_for > self.rule.max_gap
        goes_blind = not self.blind and silent_for >= self.rule.blind_after
        if not (lost_sight or goes_blind):
            return None
        if lost_sight:
            self.state = _UNKNOWN
            self.breach_count = 0
        if goes_blind:
            self.blind = True
        return Verdict(
            rule=self.rule,
            at=now,
            previous=previous,
            state=self.state,
            value=None,
            evidence=self._blind_evidence(silent_for),
            blind=goes_blind,
            detail={"silent_for": silent_for, "last_error": self.last_error},
        )

    def _blind_evidence(self, silent_for: float) -> str:
        cause = f"last error: {self.last_error}" if self.last_error else "no data"
        source = f" from probe {self.rule.probe}" if self.rule.probe else ""
        silent = format_duration(silent_for)
        return f"no usable {self.rule.signal} sample{source} for {silent} ({cause})"

    # -- samples ----------------------------------------------------------------------------

    def observe(self, sample: Sample) -> Verdict | None:
        at = sample.at
        if at < self.last_seen_at:
            return None  # out of order: the engine counts it; judging it would rewrite history
        self.last_seen_at = at
        if self.watch_from is None:
            self.watch_from = at
        if sample.usable:
            value = sample.value
            assert value is not None
            outcome = self.check.judge(at, value, sample.volume, self.state)
            return self._apply(at, outcome, value, sample.volume)
        self.last_error = sample.error
        missing = self.rule.missing
        if missing == "unknown":
            return self.advance(at)
        return self._apply(at, CLEAR if missing == "ok" else BREACH, None, None)

    def _apply(
        self, at: float, outcome: Outcome, value: float | None, volume: float | None
    ) -> Verdict | None:
        previous = self.state
        sight_restored = self.blind
        self.blind = False
        self.last_usable_at = at
        self.last_value = value
        self.last_volume = volume
        if value is not None:
            self.last_error = None
        rule = self.rule

        if outcome is BREACH:
            if previous is _FIRING:
                self.clear_since = None
            else:
                if previous is not _PENDING or at - self.last_breach_at > rule.max_gap:
                    self.pending_since = at
                    self.breach_count = 0
                self.breach_count += 1
                ready = (
                    at - self.pending_since >= rule.for_ and self.breach_count >= rule.min_samples
                )
                self.state = _FIRING if ready else _PENDING
                if ready:
                    self.clear_since = None
            self.last_breach_at = at
        elif previous is _FIRING:
            if outcome is CLEAR:
                if self.clear_since is None:
                    self.clear_since = at
                if at - self.clear_since >= rule.keep_firing_for:
                    self.state = _RESOLVED
            elif outcome is HOLD:
                self.clear_since = None
        elif outcome is INSUFFICIENT:
            # The probe sees but cannot judge (no traffic, no baseline): neither breach nor clear.
            if (previous is _PENDING and at - self.last_breach_at > rule.max_gap) or previous in (
                _UNKNOWN,
                _RESOLVED,
            ):
                self.state = _OK
        else:
            self.state = _OK

        if self.state is previous and not sight_restored:
            return None
        return self._verdict(at, previous, sight_restored)

    def _verdict(self, at: float, previous: RuleState, sight_restored: bool) -> Verdict:
        text, detail = self.check.explain(self.last_value, self.last_volume)
        rule = self.rule
        state = self.state
        if state is _PENDING:
            held = format_duration(at - self.pending_since)
            text += f"; pending {held} of {format_duration(rule.for_)}"
        elif state is _FIRING:
            text += (
                f"; held {format_duration(at - self.pending_since)} "
                f"({self.breach_count} breach samples, window {format_duration(rule.for_)})"
            )
        elif state is _RESOLVED and self.clear_since is not None:
            text += f"; clear for {format_duration(at - self.clear_since)}"
        if sight_restored:
            text += "; sentinel sees again"
        detail = dict(detail)
        detail["breach_samples"] = self.breach_count
        return Verdict(
            rule=rule,
            at=at,
            previous=previous,
            state=state,
            value=self.last_value,
            evidence=text,
            sight_restored=sight_restored,
            detail=detail,
        )

    def rearm(self) -> None:
        """Forget the current episode (after a rollback): the next breach starts a new window."""
        if self.state is not _UNKNOWN:
            self.state = _OK
        self.breach_count = 0
        self.clear_since = None
        self.last_breach_at = float("-inf")

    def resume_firing(self) -> None:
        """Start as FIRING (after a restart, for a rule that was firing): the next clear
        samples resolve it through ``keep_firing_for`` as if the process had never stopped."""
        self.state = _FIRING
        self.clear_since = None
