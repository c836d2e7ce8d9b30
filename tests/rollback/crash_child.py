"""A rollback executor in a process of its own, for the crash tests, which SIGKILL it mid-step.

    python crash_child.py STATE_FILE INCIDENT WORKDIR MODE

Every step appends a line to WORKDIR/steps.log. The step "block" waits until WORKDIR/release
exists; MODE "idempotent" makes it safe to run again, MODE "destructive" makes it not.
The tests import ``build_plan`` so that a resumed run uses exactly the same plan.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from spek_sentinel.rollback.executor import (
    Plan,
    Step,
    StepContext,
    StepFailedError,
    StepResult,
    run,
)
from spek_sentinel.rollback.journal import Journal, VerifiedBackup

STEP_NAMES = ("backup", "stop", "block", "start", "verify")


def build_plan(incident: str, workdir: Path, mode: str) -> Plan:
    log = workdir / "steps.log"

    def append(line: str) -> None:
        with log.open("a", encoding="utf-8") as file:
            file.write(line + "\n")

    def simple(name: str) -> Callable[[StepContext], str]:
        def action(context: StepContext) -> str:
            append(name)
            return f"{name} done"

        return action

    def backup(context: StepContext) -> StepResult:
        append("backup")
        made = VerifiedBackup(str(workdir / "dump.sql"), 1234, "ab" * 32, "pg_restore --list ok")
        return StepResult("dumped and verified", verified_backup=made)

    def block(context: StepContext) -> str:
        append("block started")
        while not (workdir / "release").exists():
            if context.cancelled.wait(0.02):
                raise StepFailedError("given up at the deadline")
            context.check()
        append("block done")
        return "block done"

    destructive = mode == "destructive"
    return Plan(
        incident,
        (
            Step(name="backup", action=backup, timeout=30, idempotent=True, destructive=False),
            Step(
                name="stop",
                action=simple("stop"),
                timeout=30,
                idempotent=True,
                destructive=False,
                requires_verified_backup=True,
                starts_downtime=True,
            ),
            Step(
                name="block",
                action=block,
                timeout=60,
                idempotent=not destructive,
                destructive=destructive,
                requires_verified_backup=True,
                detail=f"mode {mode}",
            ),
            Step(
                name="start", action=simple("start"), timeout=30, idempotent=True, destructive=False
            ),
            Step(
                name="verify",
                action=simple("verify"),
                timeout=30,
                idempotent=True,
                destructive=False,
                ends_downtime=True,
            ),
        ),
        playbook="crash-test",
    )


def main(argv: list[str]) -> int:
    state, incident, workdir, mode = argv
    journal = Journal(Path(state))
    outcome = run(build_plan(incident, Path(workdir), mode), journal)
    print(outcome.status, outcome.reason)
    return 0 if outcome.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
