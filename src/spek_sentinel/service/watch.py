"""The watch loop's parts, wired: probes -> engine and policy -> alerts and pages -> rollbacks.

``poll`` runs one probe and acts on what its samples decide; ``tick`` advances time (sustained
windows, blindness), carries out humans' answers, starts rollbacks whose veto window is over,
escalates and delivers the outbox. The daemon schedules both; tests call them directly with an
injected clock. Every decision is logged with its reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from spek_sentinel.config import Config
from spek_sentinel.domain.alerts import Answer, HumanAction
from spek_sentinel.domain.decisions import Action, Decision, Refused, Rollback
from spek_sentinel.domain.errors import ConfigError, RollbackError
from spek_sentinel.domain.samples import Sample
from spek_sentinel.engine.sentinel import Sentinel
from spek_sentinel.ha.leader import Leadership, SingleNode
from spek_sentinel.paging.base import Delivery, Pager
from spek_sentinel.paging.desk import AlertDesk
from spek_sentinel.probes.base import Probe, observe
from spek_sentinel.rollback.journal import Journal
from spek_sentinel.service.metrics import Metrics
from spek_sentinel.service.narrator import RollbackNarrator
from spek_sentinel.service.rollback_plan import PlanRequest
from spek_sentinel.service.rollback_run import (
    RollbackResult,
    execute,
    plan_rollback,
    target_release,
)
from spek_sentinel.store.records import StateStore
from spek_sentinel.store.state import POLICY, StateDocuments

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RollbackOrder:
    """A rollback to run: decided by the policy now, or recovered from the state after a
    restart (then its target release is the one the incident record names)."""

    incident: str
    playbook: str
    reason: str
    evidence: str = ""
    target_release: str | None = None

    @classmethod
    def of(cls, decision: Rollback) -> RollbackOrder:
        return cls(decision.incident, decision.playbook, decision.reason, decision.verdict.evidence)


RollbackRunner = Callable[[RollbackOrder, float], RollbackResult | None]


@dataclass
class WatchState:
    """What the loop is doing now, for /readyz and metrics."""

    last_evaluation: float | None = None
    rollbacks: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # incident -> task
    waiting: dict[str, RollbackOrder] = field(default_factory=dict)  # incident -> veto window
    orphan_blind: set[str] = field(default_factory=set)  # blind alerts from before a restart
    deliveries: list[Delivery] = field(default_factory=list)  # the last tick's


class Watch:
    def __init__(
        self,
        config: Config,
        environ: Mapping[str, str],
        *,
        desk: AlertDesk,
        pagers: Mapping[str, Pager],
        clock: Callable[[], float] = time.time,
        runner: RollbackRunner | None = None,
        documents: StateDocuments | None = None,
        metrics: Metrics | None = None,
        leadership: Leadership | None = None,
        guard: Callable[[int], None] | None = None,
    ) -> None:
        """``leadership``: under high availability only the leader starts rollbacks,
        escalates and sends pages; a follower evaluates and records. Default: single node."""
        self.config = config
        self.environ = environ
        self.desk = desk
        self.pagers = pagers
        self.clock = clock
        self.sentinel = Sentinel(config.rules, config.policy)
        self.state = WatchState()
        self._runner = runner or self._run_rollback
        self.documents = documents
        self.metrics = metrics
        self.leadership: Leadership = leadership or SingleNode()
        # checked before every rollback step: the leader's lease, and the fence when one is set
        self.guard = guard or self.leadership.assert_current
        self.stopping = False  # set on SIGTERM: a running rollback stops after its current step
        # replicas that share a lock share the state dir: a new leader starts from its state
        self.leadership_shared = not isinstance(self.leadership, SingleNode)
        self._was_leader = False
        self._recovered = False
        # told every probe's samples as they arrive (the console's sparklines)
        self.sample_observers: list[Callable[[Sequence[Sample]], None]] = []

    async def aclose(self) -> None:
        await asyncio.gather(*(pager.aclose() for pager in self.pagers.values()))

    # -- evaluation ---------------------------------------------------------------------------

    async def poll(self, probe: Probe) -> list[Decision]:
        """Run one probe and act on what its samples decide."""
        self.leading(self.clock())  # a new leader takes over the state before judging
        started = time.monotonic()
        samples = await observe(probe, self.clock)
        for observer in self.sample_observers:
            observer(samples)
        now = self.clock()
        decisions = self.sentinel.observe_many(samples)
        self.state.last_evaluation = now
        if self.metrics is not None:
            self._measure_poll(probe.name, time.monotonic() - started, samples, decisions, now)
        self.act(decisions, now)
        if self.state.orphan_blind:
            self._resolve_orphan_blindness(samples, now)
        return decisions

    async def poll_all(self, probes: Sequence[Probe]) -> list[Decision]:
        batches = await asyncio.gather(*(self.poll(probe) for probe in probes))
        return [decision for batch in batches for decision in batch]

    def _measure_poll(
        self,
        probe: str,
        duration: float,
        samples: Sequence[Sample],
        decisions: Sequence[Decision],
        now: float,
    ) -> None:
        metrics = self.metrics
        assert metrics is not None
        metrics.probe_observed(probe, duration, sum(s.error is not None for s in samples))
        for sample in samples:
            if not sample.series:  # split signals have a value per series, not one
                metrics.signal_observed(sample.signal, sample.value if sample.usable else None)
        for decision in decisions:
            verdict = decision.verdict
            metrics.rule_changed(verdict.rule.name, verdict.state.value, verdict.previous.value)
        metrics.evaluated(now)

    def leading(self, now: float) -> bool:
        """Whether this replica acts. On becoming the leader it first takes over the shared
        state: a fresh engine, the policy as the former leader saved it, and its rollback
        resumed from the journal (never started over)."""
        leader = self.leadership.is_leader
        if leader and not self._was_leader:
            if self.leadership_shared:
                # the state may have moved on while this replica followed
                self.sentinel = Sentinel(self.config.rules, self.config.policy)
                self.recover(now)
            elif not self._recovered:
                self.recover(now)
        elif self._was_leader and not leader:
            log.warning("leadership lost: this replica stops acting and only evaluates")
        self._was_leader = leader
        return leader

    def act(self, decisions: Iterable[Decision], now: float) -> None:
        """Carry out decisions: alerts and pages, rollbacks. A follower only evaluates."""
        if not self.leading(now):
            for decision in decisions:
                if decision.action is not Action.NONE:
                    log.debug("follower: %s left to the leader", decision.reason)
            return
        acted = False
        for decision in decisions:
            if decision.action is Action.NONE:
                continue
            log.info(
                "decision %s on %s (%s): %s",
                decision.action.value,
                decision.verdict.rule.name,
                decision.verdict.evidence,
                decision.reason,
            )
            self.desk.handle(decision, now)
            if isinstance(decision, Rollback):
                order = RollbackOrder.of(decision)
                if decision.not_before is not None and decision.not_before > now:
                    self.state.waiting[decision.incident] = order
                else:
                    self._start(order, now)
            acted = True
        if acted:
            self.save(now)

    # -- time and humans ----------------------------------------------------------------------

    async def tick(self) -> list[Delivery]:
        now = self.clock()
        self.leading(now)
        verdict_decisions = self.sentinel.advance(now)
        if self.metrics is not None:
            for decision in verdict_decisions:
                verdict = decision.verdict
                self.metrics.rule_changed(
                    verdict.rule.name, verdict.state.value, verdict.previous.value
                )
        self.act(verdict_decisions, now)
        deliveries: list[Delivery] = []
        if self.leading(now):
            self.apply_answers(now)
            self._start_due(now)
            self.desk.escalate(now)
            deliveries = await self.desk.outbox.deliver_due(self.pagers, now)
        for delivery in deliveries:
            if not delivery.ok:
                log.warning("page via %s not delivered: %s", delivery.pager, delivery.detail)
            if self.metrics is not None:
                self.metrics.page_delivered(delivery.pager, delivery.ok, delivery.retryable)
        if self.metrics is not None:
            alerts_open, unacknowledged = self.desk.store.counts()
            self.metrics.set_queue(self.desk.outbox.pending_count(), alerts_open, unacknowledged)
            self.metrics.set_leader(self.leadership.is_leader)
        self.state.deliveries = deliveries
        return deliveries

    def apply_answers(self, now: float) -> None:
        """Carry out every answer humans gave (from any process) exactly once."""
        actions = self.desk.pending_actions()
        for action in actions:
            outcome = self._apply(action, now)
            self.desk.mark_applied(action, outcome, now)
        if actions:
            self.save(now)

    def _apply(self, action: HumanAction, now: float) -> str:
        alert = self.desk.store.get(action.alert_id)
        incident = alert.incident if alert is not None else None
        if action.answer is Answer.ACKNOWLEDGE:
            self.sentinel.acknowledge(now)
            return f"acknowledged by {action.by}: automatic rollbacks are no longer held for it"
        if incident is None:
            return f"{action.answer.value} needs an incident; only acknowledged"
        if action.answer is Answer.DISMISS:
            waiting = self.state.waiting.pop(incident, None)
            said = (
                self.sentinel.veto(incident, action.by, now)
                if waiting is not None
                else self.sentinel.dismiss(incident, action.by, now)
            )
            return said.reason if isinstance(said, Refused) else said
        decision = self.sentinel.approve(incident, action.by, now)
        if isinstance(decision, Refused):
            log.warning("rollback approved by %s refused: %s", action.by, decision.reason)
            return f"refused: {decision.reason}"
        self.act([decision], now)
        return f"rollback with playbook {decision.playbook} started"

    # -- restarts -----------------------------------------------------------------------------

    def save(self, now: float) -> None:
        if self.documents is not None:
            self.documents.save(POLICY, self.sentinel.snapshot(), now)

    def recover(self, now: float) -> None:
        """After a restart: take back the policy's state, resume a rollback that was running
        (the executor continues it from its journal, never from the first step), wait again
        for one in its veto window, and start one decided but never started."""
        self._recovered = True
        saved = self.documents.load(POLICY) if self.documents is not None else None
        self.state.orphan_blind = {
            alert.dedup_key for alert in self.desk.store.alerts() if alert.kind == "blind"
        }
        if saved is None:
            return
        closed = self.sentinel.restore(saved)
        if closed is not None:
            self.desk.resolve(closed, "closed after a restart: none of its rules fires", now)
        policy = self.sentinel.policy
        incident = policy.incident
        log.info(
            "policy state restored: incident %s, last rollback %s, awaiting acknowledgement %s",
            incident.id if incident else None,
            policy.last_rollback_at,
            policy.awaiting_ack,
        )
        if not policy.rollback_running:
            return
        if incident is None or incident.playbook is None:
            self.sentinel.rollback_completed(now)
            return
        order = self._recovered_order(incident.id, incident.playbook)
        waiting = self.desk.store.live(incident.id)
        if order is None:
            log.info("rollback of %s already ended before the restart", incident.id)
            self.sentinel.rollback_completed(now)
        elif waiting is not None and waiting.rollback_at is not None:
            log.info("rollback of %s waits for its veto window again", incident.id)
            self.state.waiting[incident.id] = order
        else:
            log.warning(
                "rollback of %s was running or decided at the restart: resuming", order.incident
            )
            self._start(order, now)
        self.save(now)

    def _recovered_order(self, incident: str, playbook: str) -> RollbackOrder | None:
        """The order to resume, or None when the journal says the run already ended."""
        journal = Journal.open(self.config, self.environ)
        try:
            run = journal.run(incident)
        finally:
            journal.close()
        if run is not None and run.status != "running":
            return None
        store = StateStore.open(self.config, self.environ)
        try:
            record = store.incident(incident)
        finally:
            store.close()
        if record is not None:
            return RollbackOrder(
                incident, record.playbook, record.trigger, target_release=record.target_release
            )
        return RollbackOrder(incident, playbook, "decided before a restart")

    def _resolve_orphan_blindness(self, samples: Iterable[Sample], now: float) -> None:
        for sample in samples:
            key = f"blind:{sample.signal}"
            if sample.usable and key in self.state.orphan_blind:
                self.state.orphan_blind.discard(key)
                self.desk.resolve(key, f"sentinel sees {sample.signal} again", now)

    def _start_due(self, now: float) -> None:
        for alert in self.desk.store.due_rollbacks(now):
            self.desk.rollback_started(alert, now)
            waiting = self.state.waiting.pop(alert.incident or "", None)
            if waiting is None:
                log.warning(
                    "alert %s waited for a rollback this process did not decide (restarted?):"
                    " not started; a human decides",
                    alert.id,
                )
                continue
            self._start(waiting, now)

    # -- rollbacks ----------------------------------------------------------------------------

    def _start(self, order: RollbackOrder, now: float) -> None:
        if order.incident in self.state.rollbacks:
            log.warning("rollback of %s already running: not started twice", order.incident)
            return
        task = asyncio.get_running_loop().create_task(self._rollback(order, now))
        self.state.rollbacks[order.incident] = task

    async def rollbacks_done(self) -> None:
        """Wait for every running rollback (tests, shutdown)."""
        while self.state.rollbacks:
            await asyncio.gather(*self.state.rollbacks.values(), return_exceptions=True)

    async def _rollback(self, decision: RollbackOrder, now: float) -> None:
        started = time.monotonic()
        token = self.leadership.token  # the leadership term this run starts in
        fenced = False
        try:
            result = await asyncio.to_thread(self._runner, decision, now)
            fenced = result is not None and result.outcome.status == "fenced"
            if result is not None and self.metrics is not None:
                outcome = result.outcome
                self.metrics.rollback_finished(
                    decision.playbook, outcome.status, time.monotonic() - started, outcome.downtime
                )
            if result is not None:
                log.info(
                    "rollback of %s %s: %s",
                    decision.incident,
                    result.outcome.status,
                    result.outcome.reason,
                )
            if result is not None and result.outcome.status == "refused":
                self._refused(decision, result.outcome.reason)
        except Exception as exc:
            log.exception("rollback of %s broke", decision.incident)
            self.desk.raise_alert(
                f"rollback:{decision.incident}:run_failed",
                f"rollback of {decision.incident} broke before it finished: {exc}",
                incident=decision.incident,
                now=self.clock(),
            )
        finally:
            self.state.rollbacks.pop(decision.incident, None)
            self._rollback_ended(decision, token, fenced)

    def _rollback_ended(self, order: RollbackOrder, token: int | None, fenced: bool) -> None:
        """Only the leader records that a rollback ended. A run that was fenced, or that ended
        after this replica lost the lead, belongs to the leader now, which resumes it from the
        journal: saving "no rollback running" here would overwrite the leader's state, and a
        later takeover would never resume the run. If this replica leads again under a newer
        token (it took the lock back, e.g. after a Redis restart), its recovery found this
        stale run still going and did not start it twice: it resumes the run now."""
        now = self.clock()
        leader = self.leadership.is_leader
        if leader and not fenced:
            self.sentinel.rollback_completed(now)
            self.save(now)
        elif leader and self.leadership.token != token:
            log.warning(
                "rollback of %s was fenced by this replica's newer leadership: resuming it "
                "with fencing token %s",
                order.incident,
                self.leadership.token,
            )
            self._start(order, now)
        elif self.stopping:
            log.warning(
                "rollback of %s checkpointed for the stop: it resumes at the next start",
                order.incident,
            )
        else:
            log.warning(
                "rollback of %s stopped here: %s; the run is the leader's to resume",
                order.incident,
                "fenced" if fenced else "this replica no longer leads",
            )

    def _refused(self, order: RollbackOrder, reason: str) -> None:
        """The executor left the run alone (an executor that may be alive holds it, or the
        plan differs): fail closed, and page, since nothing else will resume it. Not on a
        replica that lost the lead: the new leader holds the run then."""
        if not self.leadership.is_leader:
            return
        self.desk.raise_alert(
            f"rollback:{order.incident}:refused",
            f"rollback of {order.incident} not run: {reason}. Check the journal "
            f"(spek-sentinel incidents show {order.incident}) before acting by hand",
            incident=order.incident,
            now=self.clock(),
        )

    def _run_rollback(self, decision: RollbackOrder, now: float) -> RollbackResult | None:
        """Plan and execute; a plan that cannot be made is a critical alert, nothing runs."""
        evidence = f" ({decision.evidence})" if decision.evidence else ""
        request = PlanRequest(
            decision.incident,
            decision.playbook,
            decision.target_release or target_release(self.config, environ=self.environ),
            trigger=f"{decision.reason}{evidence}",
            started_at=now,
        )
        try:
            plan = plan_rollback(self.config, request, self.environ)
        except (ConfigError, RollbackError) as exc:
            self.desk.raise_alert(
                f"rollback:{decision.incident}:refused",
                f"cannot roll back {decision.incident} with playbook {decision.playbook}: {exc}",
                incident=decision.incident,
                now=self.clock(),
            )
            return None
        narrator = RollbackNarrator(self.desk, plan, self._downtime_started(decision.incident))
        token = self.leadership.fencing_token()
        result = execute(
            self.config,
            plan,
            request,
            self.environ,
            on_event=narrator,
            fencing_token=token,
            guard=self._step_guard,
        )
        if self.metrics is not None:
            self._measure_steps(decision.incident)
        return result

    def _step_guard(self, token: int) -> None:
        """Checked before each rollback step is claimed: stopping (SIGTERM) checkpoints the run
        here, leaving it to resume at the next start; then the leader's lease and fence."""
        if self.stopping:
            raise RuntimeError(
                "the daemon is stopping: the run resumes from here at the next start"
            )
        self.guard(token)

    def _downtime_started(self, incident: str) -> float | None:
        """When a resumed run stopped traffic (the journal has it); None for a new run."""
        journal = Journal.open(self.config, self.environ)
        try:
            run = journal.run(incident)
        finally:
            journal.close()
        return run.downtime_started_at if run is not None else None

    def _measure_steps(self, incident: str) -> None:
        assert self.metrics is not None
        journal = Journal.open(self.config, self.environ)
        try:
            steps = journal.steps(incident)
        finally:
            journal.close()
        for step in steps.values():
            if step.duration is not None:
                self.metrics.step_finished(step.name, step.duration)
