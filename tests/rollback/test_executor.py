"""The journalled step executor: order, halts, the backup guard, timeouts, racing and fenced
executors, the downtime budget, bounded and redacted output, and real crashes (SIGKILL)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from harness.wait import wait_until
from spek_sentinel.rollback.executor import (
    ExecutorSettings,
    Plan,
    RollbackHaltedError,
    RunEvent,
    RunOutcome,
    Step,
    StepContext,
    StepFailedError,
    StepResult,
    run,
)
from spek_sentinel.rollback.journal import Journal, Owner, VerifiedBackup

CHILD = Path(__file__).with_name("crash_child.py")
BACKUP = VerifiedBackup("/backups/emergency.dump", 4096, "cd" * 32, "pg_restore --list: 3 tables")


def load_child() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crash_child", CHILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeClock:
    """Wall time that moves only when a test says so (thread-safe: actions advance it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class Calls:
    """Which actions ran, in order; an action is built per step name."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._lock = threading.Lock()

    def action(
        self, name: str, then: Callable[[StepContext], StepResult | str] | None = None
    ) -> Callable[[StepContext], StepResult | str]:
        def act(context: StepContext) -> StepResult | str:
            with self._lock:
                self.names.append(name)
            return then(context) if then is not None else f"{name} ok"

        return act


def backup_made(context: StepContext) -> StepResult:
    return StepResult("dumped, checksummed, listed", verified_backup=BACKUP)


def step(
    calls: Calls,
    name: str,
    then: Callable[[StepContext], StepResult | str] | None = None,
    *,
    timeout: float = 10.0,
    idempotent: bool = True,
    destructive: bool = False,
    needs_backup: bool = False,
    starts_downtime: bool = False,
    ends_downtime: bool = False,
) -> Step:
    return Step(
        name=name,
        action=calls.action(name, then),
        timeout=timeout,
        idempotent=idempotent,
        destructive=destructive,
        requires_verified_backup=needs_backup or destructive,
        starts_downtime=starts_downtime,
        ends_downtime=ends_downtime,
    )


def runbook_plan(calls: Calls, incident: str = "inc-1", **overrides: Step) -> Plan:
    """backup+verify > stop > db (destructive) > app > start > verify, as in the runbook."""
    steps = {
        "backup": step(calls, "backup", backup_made),
        "stop": step(calls, "stop", needs_backup=True, starts_downtime=True),
        "db": step(calls, "db", idempotent=False, destructive=True),
        "app": step(calls, "app"),
        "start": step(calls, "start"),
        "verify": step(calls, "verify", ends_downtime=True),
    }
    steps.update(overrides)
    return Plan(incident, tuple(steps.values()), playbook="migration_failed")


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "sentinel.sqlite3"
    Journal(path).close()  # migrated once, before any test starts executors in parallel
    return path


@pytest.fixture
def journal(state_file: Path) -> Iterator[Journal]:
    opened = Journal(state_file)
    yield opened
    opened.close()


def kinds(events: list[RunEvent]) -> list[tuple[str, str | None]]:
    return [(event.kind, event.step) for event in events]


def test_every_step_runs_once_in_order_and_is_journalled(journal: Journal) -> None:
    calls, events = Calls(), list[RunEvent]()
    clock = FakeClock()
    outcome = run(runbook_plan(calls), journal, clock, events.append)
    assert outcome.status == "succeeded" and outcome.reason == ""
    assert calls.names == ["backup", "stop", "db", "app", "start", "verify"]
    assert outcome.done == tuple(calls.names)
    assert outcome.destructive_started
    steps = journal.steps("inc-1")
    assert [(s.name, s.status, s.attempt) for s in steps.values()] == [
        (name, "succeeded", 1) for name in calls.names
    ]
    assert steps[0].verified_backup == BACKUP and steps[3].output == "app ok"
    assert all(s.claimed_at == 1000.0 and s.duration == 0.0 for s in steps.values())
    record = journal.run("inc-1")
    assert record is not None and record.status == "succeeded" and record.ended_at == 1000.0
    assert kinds(events)[:3] == [
        ("run_started", None),
        ("step_started", "backup"),
        ("step_finished", "backup"),
    ]
    assert kinds(events)[-1] == ("run_finished", None)


def test_a_failed_step_halts_and_nothing_after_it_runs(journal: Journal) -> None:
    calls, events = Calls(), list[RunEvent]()

    def dump_fails(context: StepContext) -> str:
        raise StepFailedError("pg_dump exited 1", output="pg_dump: error: connection refused")

    plan = runbook_plan(calls, backup=step(calls, "backup", dump_fails))
    outcome = run(plan, journal, FakeClock(), events.append)
    assert outcome.status == "halted"
    assert outcome.reason == "step backup failed: pg_dump exited 1"
    assert outcome.stopped_at == "backup" and outcome.done == ()
    assert not outcome.destructive_started
    assert calls.names == ["backup"]
    steps = journal.steps("inc-1")
    assert list(steps) == [0]
    assert steps[0].status == "failed" and steps[0].output == "pg_dump: error: connection refused"
    assert kinds(events)[-2:] == [("step_failed", "backup"), ("run_halted", "backup")]
    with pytest.raises(RollbackHaltedError, match="nothing destructive had started") as caught:
        outcome.raise_for_status()
    assert caught.value.reason == outcome.reason

    again = run(plan, journal, FakeClock())  # at most once per incident: nothing runs again
    assert again.status == "halted" and again.already_finished and calls.names == ["backup"]


def test_no_destructive_step_without_a_verified_backup(journal: Journal) -> None:
    calls = Calls()
    # the backup step "succeeds" but never says it verified a backup
    plan = runbook_plan(calls, backup=step(calls, "backup", lambda context: "dump written"))
    outcome = run(plan, journal, FakeClock())
    assert outcome.status == "halted" and outcome.stopped_at == "stop"
    assert "no destructive step without a verified backup: step stop" in outcome.reason
    assert calls.names == ["backup"]
    assert list(journal.steps("inc-1")) == [0]  # stop was never even claimed

    with pytest.raises(ValueError, match="step db is destructive: it must require a verified"):
        Plan(
            "inc-2",
            (Step(name="db", action=backup_made, timeout=1, idempotent=False, destructive=True),),
        )


def test_a_destructive_step_sees_the_backup_an_earlier_step_verified(journal: Journal) -> None:
    calls, seen = Calls(), list[VerifiedBackup | None]()

    def restore(context: StepContext) -> str:
        seen.append(context.verified_backup)
        return "restored"

    plan = runbook_plan(calls, db=step(calls, "db", restore, idempotent=False, destructive=True))
    assert run(plan, journal, FakeClock()).status == "succeeded"
    assert seen == [BACKUP]


def test_a_step_that_overruns_its_timeout_fails_and_is_told_to_stop(journal: Journal) -> None:
    calls, told_to_stop = Calls(), threading.Event()

    def hangs(context: StepContext) -> str:
        if context.cancelled.wait(30):  # respects the deadline the executor passed in
            told_to_stop.set()
        return "too late"

    plan = runbook_plan(calls, app=step(calls, "app", hangs, timeout=0.3))
    outcome = run(plan, journal, FakeClock(), settings=ExecutorSettings(poll_interval=0.05))
    assert outcome.status == "halted" and outcome.stopped_at == "app"
    assert "step app failed: timed out after 0.3s" in outcome.reason
    assert "start" not in calls.names
    assert journal.steps("inc-1")[3].status == "failed"
    wait_until(told_to_stop.is_set, timeout=5, message="the action never saw cancelled")


def dead_owner() -> Owner:
    """An owner on this host whose process has exited (a crashed executor)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    return Owner(Owner.new().host, process.pid, "crashed")


def test_a_resumed_run_refuses_a_different_plan(journal: Journal) -> None:
    calls = Calls()
    original = runbook_plan(calls)
    journal.begin(
        "inc-1",
        fingerprint=original.fingerprint(),
        plan=original.describe(),
        owner=dead_owner(),
        token=0,
        at=1.0,
    )
    other = runbook_plan(calls, app=step(calls, "app", idempotent=False))  # app no longer safe
    outcome = run(other, journal, FakeClock())
    assert outcome.status == "refused" and "different plan" in outcome.reason
    assert calls.names == [] and journal.steps("inc-1") == {}

    resumed = run(original, journal, FakeClock())  # the same plan resumes from a dead owner
    assert resumed.status == "succeeded" and len(calls.names) == 6


def test_two_executors_racing_on_one_incident_only_one_proceeds(state_file: Path) -> None:
    calls = Calls()
    outcomes: list[RunOutcome] = []
    first_outcome = threading.Event()
    start = threading.Barrier(2)

    def backup_waits_for_the_loser(context: StepContext) -> StepResult:
        first_outcome.wait(10)  # keeps the winner's run alive until the loser has answered
        return backup_made(context)

    plan = runbook_plan(calls, backup=step(calls, "backup", backup_waits_for_the_loser))

    def executor() -> None:
        journal = Journal(state_file)
        try:
            start.wait(10)
            outcomes.append(run(plan, journal, FakeClock()))
            first_outcome.set()
        finally:
            journal.close()

    threads = [threading.Thread(target=executor) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(o.status for o in outcomes) == ["refused", "succeeded"]
    refused = next(o for o in outcomes if o.status == "refused")
    assert "may still be running" in refused.reason
    assert sorted(calls.names) == sorted(["backup", "stop", "db", "app", "start", "verify"])


def test_an_executor_fenced_out_by_a_higher_token_stops(state_file: Path) -> None:
    calls = Calls()
    new_leader = Journal(state_file)
    leader_owner = Owner.new()

    def app_while_leadership_moves(context: StepContext) -> str:
        plan_now = runbook_plan(Calls())
        new_leader.begin(
            "inc-1",
            fingerprint=plan_now.fingerprint(),
            plan=plan_now.describe(),
            owner=leader_owner,
            token=8,
            at=5.0,
        )
        return "app rolled back"

    old = Journal(state_file)
    plan = runbook_plan(calls, app=step(calls, "app", app_while_leadership_moves))
    outcome = run(plan, old, FakeClock(), fencing_token=7)
    assert outcome.status == "fenced" and "fencing token 7 is lower than 8" in outcome.reason
    assert calls.names == ["backup", "stop", "db", "app"]  # start was never claimed
    steps = old.steps("inc-1")
    assert steps[3].status == "succeeded"  # what really happened is still recorded
    assert 4 not in steps
    record = old.run("inc-1")
    assert record is not None and record.status == "running"
    assert record.owner == str(leader_owner) and record.fencing_token == 8

    stale = run(plan, old, FakeClock(), fencing_token=7)
    assert stale.status == "refused" and "lower than 8" in stale.reason
    assert len(calls.names) == 4
    old.close()
    new_leader.close()


def test_downtime_is_recorded_and_the_budget_pages_once_while_the_run_goes_on(
    journal: Journal,
) -> None:
    calls, events = Calls(), list[RunEvent]()
    clock = FakeClock(1000.0)
    budget_seen = threading.Event()

    def on_event(event: RunEvent) -> None:
        events.append(event)
        if event.kind == "budget_exceeded":
            budget_seen.set()

    def takes(seconds: float) -> Callable[[StepContext], str]:
        def action(context: StepContext) -> str:
            clock.advance(seconds)
            return "ok"

        return action

    def slow_app(context: StepContext) -> str:
        clock.advance(700)  # past the 600 s budget, while the step is still running
        budget_seen.wait(10)  # the budget is watched during a step, not only between steps
        return "built"

    plan = runbook_plan(
        calls,
        stop=step(calls, "stop", takes(20), needs_backup=True, starts_downtime=True),
        app=step(calls, "app", slow_app),
        start=step(calls, "start", takes(100)),
        verify=step(calls, "verify", takes(30), ends_downtime=True),
    )
    settings = ExecutorSettings(downtime_budget=600, downtime_target=300, poll_interval=0.02)
    outcome = run(plan, journal, clock, on_event, settings=settings)
    assert outcome.status == "succeeded" and calls.names[-1] == "verify"
    assert outcome.downtime == 850.0 and outcome.downtime_started_at == 1000.0
    assert outcome.budget_exceeded and outcome.within_target is False
    budget = [e for e in events if e.kind == "budget_exceeded"]
    assert len(budget) == 1 and "exceeds the budget of 600s" in budget[0].detail
    assert kinds(events).index(("budget_exceeded", None)) < kinds(events).index(
        ("step_finished", "app")
    )
    record = journal.run("inc-1")
    assert record is not None and record.downtime == 850.0 and record.budget_exceeded_at == 1720.0
    assert "over the target of 300s" in events[-1].detail


def test_output_and_errors_are_bounded_and_redacted(journal: Journal) -> None:
    calls = Calls()
    dsn = "postgresql://spek_user:s3cret-pw@db:5432/spek_db"

    def noisy(context: StepContext) -> str:
        # the listed secret straddles the cut after the head (output_limit // 4 = 500)
        return "a" * 495 + "hunter2" + "x" * 100_000 + f"\nconnecting to {dsn}\nEND"

    def leaks(context: StepContext) -> str:
        raise RuntimeError(f"psql failed: password=s3cret-pw token hunter2 ({dsn})")

    plan = runbook_plan(calls, app=step(calls, "app", noisy), start=step(calls, "start", leaks))
    settings = ExecutorSettings(output_limit=2000, secrets=("hunter2",))
    outcome = run(plan, journal, FakeClock(), settings=settings)
    steps = journal.steps("inc-1")
    output, error = steps[3].output, steps[4].error
    assert (
        len(output) < 2100 and "characters cut" in output and output.startswith("a" * 495 + "***")
    )
    assert output.endswith("postgresql://spek_user:***@db:5432/spek_db\nEND")
    assert error.startswith("RuntimeError: psql failed: password=***")
    for text in (output, error, outcome.reason):
        assert "s3cret-pw" not in text and "hunter2" not in text
    assert "hunter2" not in repr(settings)


def test_a_journal_that_breaks_fails_the_run_closed(state_file: Path) -> None:
    calls = Calls()
    unusable = Journal(state_file)
    unusable.close()
    outcome = run(runbook_plan(calls), unusable, FakeClock())
    assert outcome.status == "failed" and "journal is not usable" in outcome.reason
    assert calls.names == []

    breaking = Journal(state_file)

    def journal_dies(context: StepContext) -> str:
        breaking.close()  # the disk went away mid-rollback, say
        return "app rolled back"

    outcome = run(runbook_plan(calls, app=step(calls, "app", journal_dies)), breaking, FakeClock())
    assert outcome.status == "failed" and outcome.reason.startswith("executor error:")
    assert "the journal could not record it" in outcome.reason
    assert calls.names == ["backup", "stop", "db", "app"]


def test_a_broken_event_subscriber_does_not_stop_the_rollback(journal: Journal) -> None:
    def subscriber(event: RunEvent) -> None:
        raise RuntimeError("pager module crashed")

    assert run(runbook_plan(Calls()), journal, FakeClock(), subscriber).status == "succeeded"


# ---- real crashes: the executor in a child process, killed with SIGKILL mid-step -----------


def start_child(state_file: Path, workdir: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(state_file), "inc-crash", str(workdir), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_mid_block(child: subprocess.Popen[str], journal: Journal, workdir: Path) -> None:
    """Wait until the journal shows "block" claimed and the action is inside it; SIGKILL."""
    log = workdir / "steps.log"

    def blocking() -> bool:
        if child.poll() is not None:
            _, err = child.communicate(timeout=10)
            raise AssertionError(f"the child exited early ({child.returncode}): {err}")
        block = journal.steps("inc-crash").get(2)
        return (
            block is not None
            and block.status == "claimed"
            and log.exists()
            and "block started" in log.read_text()
        )

    wait_until(blocking, timeout=30, message="the child never got into the blocking step")
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)  # reaped: its pid is gone, as after a real crash
    assert child.returncode == -signal.SIGKILL


def lines(workdir: Path) -> list[str]:
    return (workdir / "steps.log").read_text().splitlines()


@pytest.fixture
def child_dir(tmp_path: Path) -> Path:
    workdir = tmp_path / "work"
    workdir.mkdir()
    return workdir


def test_crash_in_an_idempotent_step_resumes_without_repeating_done_steps(
    state_file: Path, journal: Journal, child_dir: Path
) -> None:
    plan = load_child().build_plan("inc-crash", child_dir, "idempotent")
    child = start_child(state_file, child_dir, "idempotent")
    try:
        kill_mid_block(child, journal, child_dir)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    assert lines(child_dir) == ["backup", "stop", "block started"]

    (child_dir / "release").touch()
    events: list[RunEvent] = []
    outcome = run(plan, journal, on_event=events.append)  # same token: the holder is dead
    assert outcome.status == "succeeded", outcome.reason
    assert lines(child_dir) == [
        "backup",
        "stop",
        "block started",  # the child, killed inside block
        "block started",
        "block done",
        "start",
        "verify",  # the resumed run
    ]
    steps = journal.steps("inc-crash")
    assert [(s.name, s.status, s.attempt) for s in steps.values()] == [
        ("backup", "succeeded", 1),
        ("stop", "succeeded", 1),
        ("block", "succeeded", 2),
        ("start", "succeeded", 1),
        ("verify", "succeeded", 1),
    ]
    assert kinds(events)[:3] == [
        ("run_resumed", None),
        ("step_already_done", "backup"),
        ("step_already_done", "stop"),
    ]
    # the backup the child verified guards the resumed step; downtime counts from the child's stop
    assert steps[0].verified_backup is not None
    assert outcome.downtime is not None and outcome.downtime_started_at == steps[1].claimed_at


def test_crash_in_a_destructive_step_halts_and_runs_nothing_after_it(
    state_file: Path, journal: Journal, child_dir: Path
) -> None:
    plan = load_child().build_plan("inc-crash", child_dir, "destructive")
    child = start_child(state_file, child_dir, "destructive")
    try:
        wait_until(lambda: journal.run("inc-crash"), timeout=30, message="child never began")
        live = run(plan, journal)  # while the child lives, it holds the run
        assert live.status == "refused" and "may still be running" in live.reason
        kill_mid_block(child, journal, child_dir)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)

    (child_dir / "release").touch()  # even if it could finish now, it must not be run again
    events: list[RunEvent] = []
    outcome = run(plan, journal, on_event=events.append)
    assert outcome.status == "halted" and outcome.stopped_at == "block"
    assert outcome.reason.startswith("cannot prove step block finished; a human must check")
    assert outcome.destructive_started and outcome.done == ("backup", "stop")
    assert lines(child_dir) == ["backup", "stop", "block started"]  # nothing ran again
    steps = journal.steps("inc-crash")
    assert steps[2].status == "claimed" and steps[2].attempt == 1 and set(steps) == {0, 1, 2}
    assert kinds(events)[-1] == ("run_halted", "block")
    record = journal.run("inc-crash")
    assert record is not None and record.status == "halted"

    again = run(plan, journal)  # a halted rollback stays halted until a human acts
    assert again.status == "halted" and again.already_finished
    assert lines(child_dir) == ["backup", "stop", "block started"]


def test_a_guard_that_refuses_the_token_stops_the_run_before_the_next_step(
    journal: Journal,
) -> None:
    calls = Calls()
    allowed = {"steps": 2}

    def guard(token: int) -> None:
        assert token == 7
        if len(calls.names) >= allowed["steps"]:
            raise RuntimeError("leadership lost to replica-b (token 8)")

    outcome = run(runbook_plan(calls), journal, FakeClock(), fencing_token=7, guard=guard)
    assert outcome.status == "fenced"
    assert "not the leader any more" in outcome.reason and "replica-b" in outcome.reason
    assert len(calls.names) == 2  # nothing ran after the guard refused
