"""The policy: from verdicts to decisions. Pure; time comes from the verdicts.

IMMEDIATE firing -> Rollback(playbook), unless a guard holds it back, in which case a human is
paged with the reason: shadow mode, the incident already rolled back, a previous automatic
rollback not yet acknowledged, or the cooldown. EVALUATE firing -> Page. Resolved -> Resolve.
Rules that fire while an incident is open join it; the incident closes when none fires.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from spek_sentinel.domain.decisions import (
    Decision,
    Nothing,
    Page,
    PageKind,
    Refused,
    Resolve,
    Rollback,
)
from spek_sentinel.domain.incidents import Incident
from spek_sentinel.domain.rules import RuleState, Severity
from spek_sentinel.domain.settings import PolicySettings
from spek_sentinel.domain.units import format_duration, iso
from spek_sentinel.domain.verdicts import Verdict


class Policy:
    def __init__(self, settings: PolicySettings | None = None) -> None:
        self.settings = settings or PolicySettings()
        self.incident: Incident | None = None
        self.last_rollback_at: float | None = None
        self._last_rollback_before: float | None = None  # restored when a rollback is vetoed
        self.awaiting_ack = False  # an automatic rollback happened and no human has looked yet
        self.rollback_running = False  # decided, not yet reported finished by the executor
        self.monitor_until = float("-inf")
        self._validation_paged: set[str] = set()
        self._blind: dict[str, set[str]] = {}  # signal -> rules blind on it
        self._incident_count = 0

    # -- persistence --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """What must survive a restart, as JSON-able values: the open incident, the cooldown,
        the loop guard, a running rollback, the monitoring period. Rule states are not kept:
        the engine re-derives them from fresh samples (a rule firing before the restart fires
        again and joins the restored incident)."""
        incident = self.incident
        return {
            "version": 1,
            "incident": None
            if incident is None
            else {
                "id": incident.id,
                "opened_at": incident.opened_at,
                "rules": list(incident.rules),
                "firing": sorted(incident.firing),
                "playbook": incident.playbook,
                "rolled_back_at": incident.rolled_back_at,
                "held_by": incident.held_by,
            },
            "last_rollback_at": self.last_rollback_at,
            "last_rollback_before": self._last_rollback_before,
            "awaiting_ack": self.awaiting_ack,
            "rollback_running": self.rollback_running,
            "monitor_until": None if self.monitor_until == float("-inf") else self.monitor_until,
            "validation_paged": sorted(self._validation_paged),
            "incident_count": self._incident_count,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back a ``snapshot``; raises ValueError for one this version cannot read."""
        if state.get("version") != 1:
            raise ValueError(f"unknown policy state version {state.get('version')!r}")
        saved = state.get("incident")
        self.incident = (
            None
            if saved is None
            else Incident(
                id=str(saved["id"]),
                opened_at=float(saved["opened_at"]),
                rules=[str(r) for r in saved["rules"]],
                firing={str(r) for r in saved["firing"]},
                playbook=saved["playbook"],
                rolled_back_at=saved["rolled_back_at"],
                held_by=saved["held_by"],
            )
        )
        self.last_rollback_at = state["last_rollback_at"]
        self._last_rollback_before = state["last_rollback_before"]
        self.awaiting_ack = bool(state["awaiting_ack"])
        self.rollback_running = bool(state["rollback_running"])
        monitor_until = state["monitor_until"]
        self.monitor_until = float("-inf") if monitor_until is None else float(monitor_until)
        self._validation_paged = {str(name) for name in state["validation_paged"]}
        self._incident_count = int(state["incident_count"])

    # -- human input --------------------------------------------------------------------------

    def acknowledge(self, at: float) -> None:
        """A human has seen the last automatic rollback; the loop guard lifts (not the cooldown)."""
        self.awaiting_ack = False

    def approve(self, incident_id: str, by: str, at: float) -> Rollback | Refused:
        """A human answered "roll back now": run the playbook of the first rule that fired in
        the incident and has one. Overrides the cooldown and the loop guard (a human decided),
        never shadow mode, a rollback already running, or one already done in this incident."""
        incident = self.incident
        if incident is None or incident.id != incident_id:
            return Refused(f"incident {incident_id} is not open (nothing is firing)")
        if not self.settings.auto_rollback:
            return Refused("shadow mode (auto_rollback = false): the sentinel never rolls back")
        if self.rollback_running:
            return Refused("a rollback is already running")
        if incident.rolled_back_at is not None:
            return Refused(
                f"incident {incident.id} was already rolled back at "
                f"{iso(incident.rolled_back_at)} with playbook {incident.playbook}; "
                "run `spek-sentinel rollback` by hand for another"
            )
        chosen = next(
            (
                incident.verdicts[name]
                for name in incident.rules
                if incident.verdicts[name].rule.playbook
            ),
            None,
        )
        if chosen is None:
            return Refused(f"no rule firing in incident {incident.id} names a playbook")
        playbook = chosen.rule.playbook
        assert playbook is not None
        self._start_rollback(incident, playbook, at)
        return Rollback(
            chosen,
            incident.id,
            playbook,
            f"rollback with playbook {playbook} approved by {by} ({chosen.rule.name} firing)",
            approved_by=by,
        )

    def dismiss(self, incident_id: str, by: str, at: float) -> str | Refused:
        """A human answered "dismiss" (or vetoed a pending rollback): no automatic rollback in
        this incident; rules that fire in it page instead. Returns what was done."""
        incident = self.incident
        if incident is None or incident.id != incident_id:
            return Refused(f"incident {incident_id} is not open (nothing is firing)")
        incident.held_by = by
        self.awaiting_ack = False
        return f"incident {incident.id} dismissed by {by}: no automatic rollback in it"

    def veto(self, incident_id: str, by: str, at: float) -> str | Refused:
        """Cancel a rollback decided with a veto window that has not started yet."""
        incident = self.incident
        if incident is None or incident.id != incident_id or not self.rollback_running:
            return Refused(f"no pending rollback in incident {incident_id}")
        self.rollback_running = False
        self.awaiting_ack = False
        self.last_rollback_at = self._last_rollback_before
        incident.rolled_back_at = None
        incident.playbook = None
        incident.held_by = by
        return f"rollback of incident {incident.id} vetoed by {by}"

    def rollback_completed(self, at: float) -> None:
        """The executor finished the rollback: the post-rollback monitoring period starts."""
        self.rollback_running = False
        self.monitor_until = at + self.settings.monitor_for
        self._validation_paged.clear()

    # -- verdicts -----------------------------------------------------------------------------

    def _blindness(self, verdict: Verdict) -> Decision | None:
        """One blind page per signal, however many rules read it; resolved when all see."""
        signal = verdict.rule.signal
        blind_rules = self._blind.setdefault(signal, set())
        if verdict.sight_restored:
            blind_rules.discard(verdict.rule.name)
            if not blind_rules:
                del self._blind[signal]
                return Resolve(verdict, None, f"sentinel sees {signal} again (blind alert cleared)")
        if verdict.blind:
            first = not blind_rules
            blind_rules.add(verdict.rule.name)
            if first:
                incident = self.incident.id if self.incident else None
                reason = f"sentinel blind: {verdict.evidence}"
                return Page(verdict, incident, PageKind.BLIND, reason)
        if not blind_rules:
            self._blind.pop(signal, None)
        return None

    def decide(self, verdict: Verdict) -> list[Decision]:
        decisions: list[Decision] = []
        if verdict.blind or verdict.sight_restored:
            blindness = self._blindness(verdict)
            if blindness is not None:
                decisions.append(blindness)
        if verdict.rule.phase == "post_rollback":
            action = self._validation(verdict)
        elif verdict.state is RuleState.FIRING and verdict.previous is not RuleState.FIRING:
            action = self._firing(verdict)
        elif verdict.state is RuleState.RESOLVED and verdict.previous is RuleState.FIRING:
            action = self._resolved(verdict)
        else:
            action = None
        if action is not None:
            decisions.append(action)
        if not decisions:
            decisions.append(Nothing(verdict, _quiet_reason(verdict)))
        return decisions

    def _open_incident(self, at: float) -> Incident:
        if self.incident is None:
            self._incident_count += 1
            stamp = datetime.fromtimestamp(at, UTC).strftime("%Y%m%d-%H%M%S")
            self.incident = Incident(id=f"inc-{stamp}-{self._incident_count}", opened_at=at)
        return self.incident

    def _firing(self, verdict: Verdict) -> Decision:
        rule = verdict.rule
        at = verdict.at
        incident = self._open_incident(at)
        if rule.name not in incident.rules:
            incident.rules.append(rule.name)
        incident.verdicts[rule.name] = verdict
        incident.firing.add(rule.name)
        if rule.severity is Severity.EVALUATE:
            if incident.rolled_back_at is not None:
                advice = f"; incident already rolled back with playbook {incident.playbook}"
            elif rule.playbook:
                advice = f"; its playbook would be {rule.playbook}"
            else:
                advice = ""
            return Page(
                verdict,
                incident.id,
                PageKind.BREACH,
                f"{rule.name} firing: evaluate a rollback{advice}",
            )
        playbook = rule.playbook
        assert playbook is not None, "config validation requires a playbook on immediate rules"
        held = self._hold_reason(incident, at)
        if held is not None:
            kind, reason = held
            return Page(verdict, incident.id, kind, f"{rule.name} firing: {reason}")
        self._start_rollback(incident, playbook, at)
        monitoring = f"{format_duration(self.settings.monitor_for)} of post-rollback monitoring"
        veto = self.settings.veto_window
        if veto > 0:
            return Rollback(
                verdict,
                incident.id,
                playbook,
                f"{rule.name} firing: automatic rollback with playbook {playbook} in "
                f"{format_duration(veto)} unless vetoed; then {monitoring}",
                not_before=at + veto,
            )
        return Rollback(
            verdict,
            incident.id,
            playbook,
            f"{rule.name} firing: automatic rollback with playbook {playbook}; then {monitoring}",
        )

    def _start_rollback(self, incident: Incident, playbook: str, at: float) -> None:
        incident.playbook = playbook
        incident.rolled_back_at = at
        self._last_rollback_before = self.last_rollback_at
        self.last_rollback_at = at
        self.awaiting_ack = True
        self.rollback_running = True

    def _hold_reason(self, incident: Incident, at: float) -> tuple[PageKind, str] | None:
        settings = self.settings
        if not settings.auto_rollback:
            return PageKind.SHADOW, "shadow mode (auto_rollback = false): would roll back now"
        if incident.held_by is not None:
            return PageKind.HELD, (
                f"automatic rollback held: {incident.held_by} dismissed incident {incident.id}"
            )
        if incident.rolled_back_at is not None:
            return PageKind.JOINED, (
                f"joined incident {incident.id}, already rolled back at "
                f"{iso(incident.rolled_back_at)} with playbook {incident.playbook}; "
                "no second automatic rollback"
            )
        last = self.last_rollback_at
        if self.awaiting_ack and last is not None:
            return PageKind.HELD, (
                f"automatic rollback held: the automatic rollback at {iso(last)} "
                "has not been acknowledged"
            )
        if last is not None and at - last < settings.cooldown:
            return PageKind.HELD, (
                f"automatic rollback held: cooldown of {format_duration(settings.cooldown)} "
                f"after the rollback at {iso(last)} runs until {iso(last + settings.cooldown)}"
            )
        return None

    def _resolved(self, verdict: Verdict) -> Decision:
        name = verdict.rule.name
        incident = self.incident
        if incident is None or name not in incident.firing:
            return Resolve(verdict, None, f"{name} resolved")
        incident.firing.discard(name)
        closed = not incident.firing
        if closed:
            self.incident = None
        suffix = f"; incident {incident.id} closed" if closed else ""
        return Resolve(verdict, incident.id, f"{name} resolved{suffix}", incident_closed=closed)

    def _validation(self, verdict: Verdict) -> Decision | None:
        name = verdict.rule.name
        if verdict.state is RuleState.FIRING and verdict.previous is not RuleState.FIRING:
            if verdict.at > self.monitor_until or name in self._validation_paged:
                return None
            self._validation_paged.add(name)
            incident = self.incident.id if self.incident else None
            return Page(
                verdict,
                incident,
                PageKind.VALIDATION,
                f"post-rollback validation failed: {verdict.rule.description or name}",
            )
        if verdict.state is RuleState.RESOLVED and name in self._validation_paged:
            self._validation_paged.discard(name)
            return Resolve(verdict, None, f"post-rollback check {name} within limits again")
        return None


def _quiet_reason(verdict: Verdict) -> str:
    state = verdict.state
    if verdict.rule.phase == "post_rollback":
        return "post-rollback validation check; acts only during a monitoring period"
    if state is RuleState.PENDING:
        return "condition holds; waiting for the sustained window"
    if state is RuleState.UNKNOWN:
        return "blind: unknown never triggers a rollback"
    if state is RuleState.OK and verdict.previous is RuleState.PENDING:
        return "condition cleared before the window elapsed"
    return f"state {state.value}"
