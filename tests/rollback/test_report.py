"""The incident report rendered from the journal of a real executor run."""

from __future__ import annotations

from pathlib import Path

from spek_sentinel.rollback.executor import (
    ExecutorSettings,
    Plan,
    Step,
    StepContext,
    StepFailedError,
    StepResult,
    run,
)
from spek_sentinel.rollback.journal import Journal, VerifiedBackup
from spek_sentinel.rollback.report import render

BACKUP = VerifiedBackup("/backups/emergency_backup.dump", 40960, "ab" * 32, "3 tables")


class Clock:
    def __init__(self) -> None:
        self.now = 1_764_036_000.0

    def __call__(self) -> float:
        return self.now


def plan(clock: Clock, *, fail_database: bool = False) -> Plan:
    def took(seconds: float, result: StepResult | str = "ok"):  # type: ignore[no-untyped-def]
        def act(context: StepContext) -> StepResult | str:
            clock.now += seconds
            return result

        return act

    def database(context: StepContext) -> str:
        clock.now += 20
        if fail_database:
            raise StepFailedError("migration 003 down failed", "ERROR: relation missing")
        return "rolled back 003_add_audit_logs"

    def step(name: str, action, **flags: bool) -> Step:  # type: ignore[no-untyped-def]
        return Step(
            name=name,
            action=action,
            timeout=60,
            idempotent=flags.pop("idempotent", True),
            destructive=flags.pop("destructive", False),
            **flags,
        )

    return Plan(
        "inc-20251125-020500-1",
        (
            step("document the incident", took(1, "incident_2025-11-25.md written")),
            step("emergency backup", took(12, StepResult("pg_dump -Fc", verified_backup=BACKUP))),
            step("stop traffic", took(3), starts_downtime=True),
            step(
                "database rollback",
                database,
                idempotent=False,
                destructive=True,
                requires_verified_backup=True,
            ),
            step("restart", took(5)),
            step("verify", took(30, "health 200, db ok, redis PONG"), ends_downtime=True),
        ),
        playbook="migration_failed",
    )


def report(tmp_path: Path, *, fail_database: bool = False) -> str:
    clock = Clock()
    journal = Journal.in_dir(tmp_path)
    try:
        the_plan = plan(clock, fail_database=fail_database)
        run(the_plan, journal, clock=clock, settings=ExecutorSettings(poll_interval=0.05))
        record = journal.run(the_plan.incident_id)
        assert record is not None
        return render(
            record,
            journal.steps(the_plan.incident_id),
            downtime_budget=600,
            downtime_target=300,
            trigger="high_error_rate: error_rate 8% > 5% held 5m",
        )
    finally:
        journal.close()


def test_a_finished_rollback_reports_every_step_the_downtime_and_the_backup(
    tmp_path: Path,
) -> None:
    text = report(tmp_path)
    assert text.startswith("# Incident inc-20251125-020500-1")
    assert "- Status: **succeeded**" in text
    assert "- Playbook: migration_failed" in text
    assert "- Trigger: high_error_rate: error_rate 8% > 5% held 5m" in text
    # stop (3 s) + database (20 s) + restart (5 s) + verify (30 s)
    assert "- Downtime: 58s (within target; target 5m, budget 10m)" in text
    assert "`/backups/emergency_backup.dump` (40960 bytes" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[1:3] for row in rows[1:]] == [
        ["document the incident", "succeeded"],
        ["emergency backup", "succeeded"],
        ["stop traffic", "succeeded"],
        ["database rollback", "succeeded"],
        ["restart", "succeeded"],
        ["verify", "succeeded"],
    ]
    assert "| 12s |" in rows[2]
    assert "rolled back 003_add_audit_logs" in text


def test_a_halted_rollback_reports_where_it_stopped_and_what_did_not_run(
    tmp_path: Path,
) -> None:
    text = report(tmp_path, fail_database=True)
    assert "- Status: **halted**" in text
    assert "migration 003 down failed" in text
    assert "- Downtime: not measured" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[1:3] for row in rows[4:]] == [
        ["database rollback", "failed"],
        ["restart", "not run"],
        ["verify", "not run"],
    ]
