"""Runs a rollback plan step by step: journalled, under timeouts, with a downtime budget.

For each step in order: a step the journal shows finished is not run again (resume); a step
that needs a verified backup (every destructive step does) runs only if an earlier step of
this run recorded one in the journal (so it survives a resume); the step is claimed in the
journal, its action runs in a worker thread under the step's timeout, and its outcome,
output (bounded, redacted) and duration are recorded. The first failure halts the run with a
reason; the caller pages with it. Nothing is ever started over from step 1.

After a crash, a step found claimed but not finished is run again only if it is idempotent
and not destructive. Otherwise the run halts ("cannot prove step X finished; a human must
check") and neither that step nor anything after it runs.

Timeouts: a Python thread cannot be killed. When a step's time is up the executor records
the step as failed, sets ``context.cancelled`` and halts; the action itself must respect
``context.deadline``: pass ``context.remaining()`` as the timeout of every subprocess or
network call and check ``context.check()`` between stages. Worker threads are daemons, so a
stuck action never keeps the process from exiting.

Downtime runs from the start of the ``starts_downtime`` step (stop traffic) to the successful
end of the ``ends_downtime`` step (verified healthy) and is recorded in the run. Exceeding the
budget emits ``budget_exceeded`` once; the run continues, because stopping halfway through a
rollback would leave production worse off than finishing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from spek_sentinel.domain.errors import RollbackError
from spek_sentinel.rollback.journal import (
    FinishedStep,
    Journal,
    JournalRefusedError,
    LostRunError,
    Owner,
    RunRecord,
    StaleTokenError,
    StepRecord,
    VerifiedBackup,
    bound_text,
    holding,
)
from spek_sentinel.secrets import redact

log = logging.getLogger(__name__)


class StepFailedError(RollbackError):
    """Raised by a step's action: the reason, and the output worth keeping (command stderr)."""

    def __init__(self, reason: str, output: str = "") -> None:
        self.reason = reason
        self.output = output
        super().__init__(reason)


class RollbackHaltedError(RollbackError):
    """A rollback that did not finish: why, and whether anything destructive had started."""

    def __init__(self, incident_id: str, reason: str, destructive_started: bool) -> None:
        self.incident_id = incident_id
        self.reason = reason
        self.destructive_started = destructive_started
        touched = (
            "a destructive step had started"
            if destructive_started
            else "nothing destructive had started"
        )
        super().__init__(f"rollback of incident {incident_id} stopped: {reason} ({touched})")


@dataclass(frozen=True, slots=True)
class StepContext:
    """What an action gets: where it is, its deadline, and the verified backup so far."""

    incident_id: str
    step: str
    attempt: int
    deadline: float  # time.monotonic() by which the action must have returned
    cancelled: threading.Event  # set when the deadline passed and the step was given up
    verified_backup: VerifiedBackup | None

    def remaining(self) -> float:
        """Seconds left; the timeout to pass to a subprocess or a network call."""
        return max(0.0, self.deadline - time.monotonic())

    def check(self) -> None:
        """Raise if the step's time is up; call it between stages of a long action."""
        if self.cancelled.is_set() or time.monotonic() >= self.deadline:
            raise StepFailedError(f"step {self.step}: deadline passed, stopping")


@dataclass(frozen=True, slots=True)
class StepResult:
    output: str = ""
    verified_backup: VerifiedBackup | None = None  # set by the step that made and verified one
    skipped: bool = False  # nothing to do (e.g. no migration to roll back); counts as done


Action = Callable[[StepContext], "StepResult | str"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One step of a rollback. ``idempotent`` and ``destructive`` have no defaults on purpose:
    whoever writes a step says whether it is safe to repeat and whether it destroys data."""

    name: str
    action: Action
    timeout: float
    idempotent: bool
    destructive: bool
    requires_verified_backup: bool = False
    starts_downtime: bool = False  # the stop-traffic step
    ends_downtime: bool = False  # the verify step: healthy again
    detail: str = ""  # what exactly it does (target release, backup file); fingerprinted

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "detail": self.detail,
            "idempotent": self.idempotent,
            "destructive": self.destructive,
            "requires_verified_backup": self.requires_verified_backup,
            "starts_downtime": self.starts_downtime,
            "ends_downtime": self.ends_downtime,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """An incident's rollback: its steps in order. Built from a playbook elsewhere."""

    incident_id: str
    steps: tuple[Step, ...]
    playbook: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))  # a list would do, and stay mutable
        problems = _plan_problems(self)
        if problems:
            raise ValueError(f"rollback plan for {self.incident_id!r}: " + "; ".join(problems))

    def describe(self) -> str:
        """Canonical JSON of what the plan does (not how long it may take)."""
        return json.dumps(
            {
                "incident": self.incident_id,
                "playbook": self.playbook,
                "steps": [step.describe() for step in self.steps],
            },
            sort_keys=True,
        )

    def fingerprint(self) -> str:
        return hashlib.sha256(self.describe().encode()).hexdigest()


def _plan_problems(plan: Plan) -> list[str]:
    problems = []
    if not plan.incident_id:
        problems.append("no incident id")
    if not plan.steps:
        problems.append("no steps")
    names = [step.name for step in plan.steps]
    if len(set(names)) != len(names):
        problems.append(f"step names repeat: {names}")
    for step in plan.steps:
        if not (step.timeout > 0 and math.isfinite(step.timeout)):
            problems.append(f"step {step.name}: timeout must be a positive number of seconds")
        if step.destructive and not step.requires_verified_backup:
            problems.append(f"step {step.name} is destructive: it must require a verified backup")
    starts = [i for i, step in enumerate(plan.steps) if step.starts_downtime]
    ends = [i for i, step in enumerate(plan.steps) if step.ends_downtime]
    if len(starts) > 1 or len(ends) > 1:
        problems.append("at most one step starts downtime and at most one ends it")
    elif ends and (not starts or ends[0] < starts[0]):
        problems.append("the step that ends downtime must come after the one that starts it")
    return problems


@dataclass(frozen=True, slots=True)
class ExecutorSettings:
    downtime_budget: float = 600.0  # runbook: "Maximum Downtime: 10 minutes"
    downtime_target: float = 300.0  # "(target: 5 minutes)"
    output_limit: int = 16_000  # characters of output and error kept per step
    poll_interval: float = 1.0  # how often the budget is checked while a step runs
    secrets: tuple[str, ...] = field(default=(), repr=False)  # redacted from output and errors

    def __post_init__(self) -> None:
        if not (self.downtime_budget > 0 and self.downtime_target > 0):
            raise ValueError("the downtime budget and target must be positive")
        if self.output_limit < 100 or self.poll_interval <= 0:
            raise ValueError("output_limit must be at least 100 and poll_interval positive")


EventKind = Literal[
    "run_started",
    "run_resumed",
    "step_started",
    "step_already_done",
    "step_finished",
    "step_failed",
    "budget_exceeded",
    "run_finished",
    "run_halted",
    "run_failed",
]


@dataclass(frozen=True, slots=True)
class RunEvent:
    kind: EventKind
    incident_id: str
    at: float
    step: str | None = None
    detail: str = ""


OutcomeStatus = Literal["succeeded", "halted", "failed", "refused", "fenced"]


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a call to ``run`` ended.

    ``succeeded``: every step done. ``halted``: stopped on purpose (a step failed or timed
    out, no verified backup, a step that cannot be proved finished): page with ``reason``.
    ``failed``: the executor itself broke (journal unwritable...): page. ``refused``: this
    executor did nothing because another holds the run, the token is stale or the plan differs.
    ``fenced``: another executor took the run over while this one held it; this one stopped.
    """

    incident_id: str
    status: OutcomeStatus
    reason: str
    done: tuple[str, ...]  # steps finished (now or earlier), in plan order
    stopped_at: str | None  # the step the run halted at or before
    destructive_started: bool  # a destructive step was claimed at some point
    downtime: float | None  # stop-traffic to verified-healthy; None until both happened
    downtime_started_at: float | None
    budget_exceeded: bool
    within_target: bool | None
    already_finished: bool = False  # the run had ended before this call; nothing was run

    def raise_for_status(self) -> None:
        if self.status != "succeeded":
            raise RollbackHaltedError(self.incident_id, self.reason, self.destructive_started)


def run(
    plan: Plan,
    journal: Journal,
    clock: Callable[[], float] = time.time,
    on_event: Callable[[RunEvent], None] | None = None,
    *,
    fencing_token: int = 0,
    settings: ExecutorSettings | None = None,
    guard: Callable[[int], None] | None = None,
) -> RunOutcome:
    """Run (or resume) the plan's rollback. Never raises for a failed rollback: the outcome
    says what happened, and the caller pages on anything but ``succeeded``. ``guard`` is
    called with the fencing token before each step is claimed and raises when this process
    is no longer the leader (high availability): the run then stops as ``fenced``."""
    with holding(Owner.new()) as owner:
        runner = _Runner(
            plan,
            journal,
            clock=clock,
            on_event=on_event,
            token=fencing_token,
            settings=settings or ExecutorSettings(),
            owner=owner,
            guard=guard,
        )
        return runner.execute()


class _Halt(Exception):  # noqa: N818 - control flow inside the runner, never escapes
    def __init__(self, reason: str, step: str) -> None:
        self.reason = reason
        self.step = step
        super().__init__(reason)


class _Runner:
    def __init__(
        self,
        plan: Plan,
        journal: Journal,
        *,
        clock: Callable[[], float],
        on_event: Callable[[RunEvent], None] | None,
        token: int,
        settings: ExecutorSettings,
        owner: Owner,
        guard: Callable[[int], None] | None = None,
    ) -> None:
        self.guard = guard
        self.plan = plan
        self.journal = journal
        self.clock = clock
        self.on_event = on_event
        self.token = token
        self.settings = settings
        self.owner = owner
        self.incident = plan.incident_id

    # ---- the run ---------------------------------------------------------------------------

    def execute(self) -> RunOutcome:
        try:
            record = self.journal.begin(
                self.incident,
                fingerprint=self.plan.fingerprint(),
                plan=self.plan.describe(),
                owner=self.owner,
                token=self.token,
                at=self.clock(),
            )
        except JournalRefusedError as exc:
            return self._outcome("refused", self._clean(exc.reason), None)
        except Exception as exc:  # no journal, no rollback: fail closed before any step
            log.exception("rollback of %s: the journal is not usable", self.incident)
            reason = self._clean(f"the rollback journal is not usable: {_describe(exc)}")
            return self._outcome("failed", reason, None)
        if record.status != "running":
            ended: OutcomeStatus = "succeeded" if record.status == "succeeded" else "halted"
            if record.status == "failed":
                ended = "failed"
            return self._outcome(ended, record.reason, None, already_finished=True, record=record)
        try:
            return self._resume_or_start()
        except _Halt as halt:
            return self._stop("halted", halt.reason, halt.step)
        except (LostRunError, StaleTokenError) as exc:
            log.warning("rollback of %s: %s; stopping", self.incident, exc.reason)
            return self._outcome("fenced", self._clean(exc.reason), None)
        except Exception as exc:  # the executor itself broke: fail closed, say so
            log.exception("rollback of %s: executor error", self.incident)
            return self._stop("failed", self._clean(f"executor error: {_describe(exc)}"), None)

    def _resume_or_start(self) -> RunOutcome:
        resumed = bool(self.journal.steps(self.incident))
        self._emit("run_resumed" if resumed else "run_started", detail=f"owner {self.owner}")
        self._steps()
        record = self.journal.finish_run(
            self.incident,
            owner=self.owner,
            token=self.token,
            status="succeeded",
            reason="",
            at=self.clock(),
        )
        outcome = self._outcome("succeeded", "", None, record=record)
        self._emit("run_finished", detail=_downtime_text(outcome, self.settings))
        return outcome

    def _stop(
        self, status: Literal["halted", "failed"], reason: str, step: str | None
    ) -> RunOutcome:
        try:
            self.journal.finish_run(
                self.incident,
                owner=self.owner,
                token=self.token,
                status=status,
                reason=reason,
                at=self.clock(),
            )
        except Exception as exc:  # the reason still reaches the caller through the outcome
            log.exception("rollback of %s: could not record the %s run", self.incident, status)
            reason = f"{reason}; the journal could not record it: {_describe(exc)}"
        self._emit("run_halted" if status == "halted" else "run_failed", step, reason)
        return self._outcome(status, reason, step)

    def _steps(self) -> None:
        records = self.journal.steps(self.incident)
        backup = _latest_backup(records.values())
        for index, step in enumerate(self.plan.steps):
            found = records.get(index)
            if found is not None and found.done:
                self._emit("step_already_done", step.name, f"{found.status} earlier")
                continue
            again = self._may_run_again(step, found)
            if (step.requires_verified_backup or step.destructive) and backup is None:
                raise _Halt(
                    f"no destructive step without a verified backup: step {step.name} needs "
                    "one and no earlier step recorded it",
                    step.name,
                )
            finished = self._run_step(index, step, again, backup)
            if finished.verified_backup is not None:
                backup = finished.verified_backup

    def _may_run_again(self, step: Step, found: StepRecord | None) -> bool:
        if found is None:
            return False
        if found.status == "failed":
            raise _Halt(f"step {step.name} failed earlier: {found.error}", step.name)
        if step.idempotent and not step.destructive:
            return True
        raise _Halt(
            f"cannot prove step {step.name} finished; a human must check (claimed by "
            f"{found.owner} at {found.claimed_at:.3f}, attempt {found.attempt}, never recorded "
            "as finished)",
            step.name,
        )

    # ---- one step --------------------------------------------------------------------------

    def _run_step(
        self, index: int, step: Step, again: bool, backup: VerifiedBackup | None
    ) -> StepRecord:
        if self.guard is not None:
            try:
                self.guard(self.token)
            except Exception as exc:
                raise StaleTokenError(f"not the leader any more: {_describe(exc)}") from exc
        claimed = self.journal.claim_step(
            self.incident,
            index,
            step.name,
            idempotent=step.idempotent,
            destructive=step.destructive,
            owner=self.owner,
            token=self.token,
            at=self.clock(),
            again=again,
            starts_downtime=step.starts_downtime,
        )
        self._emit("step_started", step.name, f"attempt {claimed.attempt}")
        context = StepContext(
            incident_id=self.incident,
            step=step.name,
            attempt=claimed.attempt,
            deadline=time.monotonic() + step.timeout,
            cancelled=threading.Event(),
            verified_backup=backup,
        )
        called = self._call(step, context)
        result = called if isinstance(called, StepResult) else None
        if isinstance(called, StepResult):
            output, error = called.output, ""
        else:
            error, output = called
        at = self.clock()
        with contextlib.suppress(JournalRefusedError):  # recording the outcome comes first
            self._check_budget(at)
        status: FinishedStep = "failed"
        if result is not None:
            status = "skipped" if result.skipped else "succeeded"
        finished = self.journal.finish_step(
            self.incident,
            index,
            owner=self.owner,
            attempt=claimed.attempt,
            status=status,
            at=at,
            output=self._clean(output),
            error=self._clean(error),
            verified_backup=None if result is None else result.verified_backup,
            ends_downtime=step.ends_downtime,
        )
        if result is None:
            self._emit("step_failed", step.name, finished.error)
            raise _Halt(f"step {step.name} failed: {finished.error}", step.name)
        self._emit("step_finished", step.name, f"{status} in {finished.duration or 0:.1f}s")
        return finished

    def _call(self, step: Step, context: StepContext) -> StepResult | tuple[str, str]:
        """Run the action in a daemon thread and wait for it until its deadline. Returns its
        result, or why it failed and its output. Errors of the executor's own (the journal)
        and interrupts of this thread propagate: the step then stays claimed, as in a crash."""
        box: list[object] = []
        done = threading.Event()

        def work() -> None:
            try:
                box.append(step.action(context))
            except BaseException as exc:  # any failure of the action is the step's
                box.append(exc)
            finally:
                done.set()

        worker = threading.Thread(target=work, name=f"rollback-{step.name}", daemon=True)
        worker.start()
        while not done.wait(min(self.settings.poll_interval, context.remaining())):
            if context.remaining() <= 0:
                context.cancelled.set()
                return (
                    f"timed out after {step.timeout:g}s; the action was told to stop, but a "
                    "thread cannot be killed: it may still be running",
                    "",
                )
            self._check_budget(self.clock())
        value = box[0]
        if isinstance(value, StepResult):
            return value
        if isinstance(value, str):
            return StepResult(output=value)
        if isinstance(value, StepFailedError):
            return value.reason, value.output
        if isinstance(value, BaseException):
            return _describe(value), ""
        return f"the action returned {type(value).__name__}, not StepResult or str", ""

    # ---- downtime --------------------------------------------------------------------------

    def _check_budget(self, now: float) -> None:
        record = self.journal.run(self.incident)
        if (
            record is None
            or record.downtime_started_at is None
            or record.downtime_ended_at is not None
            or record.budget_exceeded_at is not None
        ):
            return
        elapsed = now - record.downtime_started_at
        if elapsed <= self.settings.downtime_budget:
            return
        first = self.journal.mark_budget_exceeded(
            self.incident, owner=self.owner, token=self.token, at=now
        )
        if first:
            self._emit(
                "budget_exceeded",
                detail=(
                    f"downtime {elapsed:.0f}s exceeds the budget of "
                    f"{self.settings.downtime_budget:g}s; the rollback continues"
                ),
            )

    # ---- reporting -------------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        return clean_text(text, self.settings.output_limit, self.settings.secrets)

    def _emit(self, kind: EventKind, step: str | None = None, detail: str = "") -> None:
        if self.on_event is None:
            return
        event = RunEvent(kind, self.incident, self.clock(), step, self._clean(detail))
        try:
            self.on_event(event)
        except Exception:  # a broken subscriber must not break a rollback
            log.exception("rollback of %s: event subscriber failed on %s", self.incident, kind)

    def _outcome(
        self,
        status: OutcomeStatus,
        reason: str,
        stopped_at: str | None,
        *,
        already_finished: bool = False,
        record: RunRecord | None = None,
    ) -> RunOutcome:
        steps: dict[int, StepRecord] = {}
        try:
            record = record or self.journal.run(self.incident)
            steps = self.journal.steps(self.incident)
        except Exception:  # the outcome must reach the caller even when the journal cannot
            log.exception("rollback of %s: could not read the journal", self.incident)
        names = {index: step.name for index, step in enumerate(self.plan.steps)}
        done = tuple(names.get(i, found.name) for i, found in sorted(steps.items()) if found.done)
        downtime = None if record is None else record.downtime
        if stopped_at is None and status in ("halted", "failed") and already_finished:
            stopped_at = _first_unfinished(self.plan, steps)
        return RunOutcome(
            incident_id=self.incident,
            status=status,
            reason=reason,
            done=done,
            stopped_at=stopped_at,
            destructive_started=any(found.destructive for found in steps.values()),
            downtime=downtime,
            downtime_started_at=None if record is None else record.downtime_started_at,
            budget_exceeded=record is not None and record.budget_exceeded_at is not None,
            within_target=None if downtime is None else downtime <= self.settings.downtime_target,
            already_finished=already_finished,
        )


# A secret straddling the cut of long output is still seen whole if it is shorter than this.
_REDACT_MARGIN = 1024


def clean_text(text: str, limit: int, secrets: tuple[str, ...] = ()) -> str:
    """Redacted, then bounded to about ``limit`` characters (head and tail). Long text is cut
    before it is redacted, with a margin: redaction must not cost time in proportion to
    whatever a command printed, and ``redact``'s URL pattern is slow on very long words."""
    if len(text) <= limit + 2 * _REDACT_MARGIN:
        return bound_text(redact(text, secrets), limit)
    head = limit // 4
    tail = limit - head
    first = redact(text[: head + _REDACT_MARGIN], secrets)[:head]
    last = redact(text[-(tail + _REDACT_MARGIN) :], secrets)[-tail:]
    return f"{first}\n[... {len(text) - head - tail} characters cut ...]\n{last}"


def _latest_backup(records: Iterable[StepRecord]) -> VerifiedBackup | None:
    backup = None
    for found in sorted(records, key=lambda r: r.index):
        if found.done and found.verified_backup is not None:
            backup = found.verified_backup
    return backup


def _first_unfinished(plan: Plan, steps: dict[int, StepRecord]) -> str | None:
    for index, step in enumerate(plan.steps):
        found = steps.get(index)
        if found is None or not found.done:
            return step.name
    return None


def _describe(exc: BaseException) -> str:
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _downtime_text(outcome: RunOutcome, settings: ExecutorSettings) -> str:
    if outcome.downtime is None:
        return "no downtime recorded"
    verdict = "within" if outcome.within_target else "over"
    return (
        f"downtime {outcome.downtime:.0f}s, {verdict} the target of "
        f"{settings.downtime_target:g}s (budget {settings.downtime_budget:g}s)"
    )
