"""The runbook's own migration command (`node scripts/migrate.js down`) as a Migrator: argv
without a shell, its own environment, a timeout, a redacted output tail."""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spek_sentinel.rollback.apps.base import (
    DEFAULT_ENV,
    CommandEnv,
    CommandResult,
    join_outputs,
    run_command,
)
from spek_sentinel.rollback.migrations import (
    AppCommandError,
    MigrationRefusedError,
    MigratorOutcome,
    _dsn_secrets,
    _since,
)
from spek_sentinel.secrets import redact

_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|KEY|CREDENTIAL|DSN|DATABASE_URL", re.I)


@dataclass(frozen=True, slots=True)
class AppCommands:
    """The application's migrate commands, as argv lists run without a shell.

    ``env`` is the child's whole environment (the sentinel's own holds credentials the app's
    script has no business seeing); put the database password or DSN there, never in argv.
    Values of variables named like secrets (PASSWORD, SECRET, TOKEN, KEY, DSN, DATABASE_URL),
    passwords inside URLs or DSNs, and ``secrets`` are kept out of argv (refused) and out of
    every output and message (redacted). ``timeout`` bounds each run, in seconds.
    """

    down: tuple[str, ...]  # rolls back one migration: ("node", "scripts/migrate.js", "down")
    down_all: tuple[str, ...]  # ("node", "scripts/migrate.js", "down", "--all")
    status: tuple[str, ...]  # ("node", "scripts/migrate.js", "status")
    cwd: Path
    env: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ENV), repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)
    timeout: float = 300.0

    def all_secrets(self) -> tuple[str, ...]:
        found = list(self.secrets)
        for name, value in self.env.items():
            if _SECRET_NAME.search(name) and len(value) >= 4:
                found.append(value)
            if "://" in value or "password" in value.lower():
                found.extend(_dsn_secrets(value))
        return tuple(found)


class AppCommandMigrator:
    """The ``Migrator`` that runs the application's own migrate command (runbook option A/B
    as written: ``node scripts/migrate.js down``). ``down(steps)`` runs the one-step down
    command ``steps`` times and stops at the first failure."""

    def __init__(self, commands: AppCommands) -> None:
        self._commands = commands
        self._secrets = commands.all_secrets()
        self._setup = CommandEnv(cwd=commands.cwd, env=dict(commands.env), secrets=self._secrets)
        for label, argv in (
            ("down", commands.down),
            ("down_all", commands.down_all),
            ("status", commands.status),
        ):
            if not argv:
                raise MigrationRefusedError(f"the app's {label} command is empty")
            shown = redact(shlex.join(argv), self._secrets)
            if shown != shlex.join(argv):
                raise MigrationRefusedError(
                    f"the app's {label} command carries a secret in its arguments ({shown}); "
                    "pass the password or DSN through the environment"
                )

    @property
    def description(self) -> str:
        return f"`{redact(shlex.join(self._commands.down), self._secrets)}` in {self._commands.cwd}"

    def down(self, steps: int = 1) -> MigratorOutcome:
        if steps < 1:
            raise MigrationRefusedError(f"steps must be 1 or more, not {steps}")
        started = time.monotonic()
        outputs: list[tuple[str, str]] = []
        for index in range(steps):
            ran = self._run(self._commands.down)
            outputs.append((ran.command, ran.output))
            if ran.failure is not None:
                raise self._failed(ran, f"run {index + 1} of {steps}", completed=index)
        summary = f"`{outputs[0][0]}` succeeded" + (f" {steps} times" if steps > 1 else "")
        return MigratorOutcome(f"down {steps}", summary, join_outputs(*outputs), _since(started))

    def down_all(self) -> MigratorOutcome:
        ran = self._run(self._commands.down_all)
        if ran.failure is not None:
            raise self._failed(ran, "down --all", completed=0)
        return MigratorOutcome("down --all", f"`{ran.command}` succeeded", ran.output, ran.duration)

    def status(self) -> MigratorOutcome:
        ran = self._run(self._commands.status)
        if ran.failure is not None:
            raise AppCommandError(
                f"`{ran.command}` {ran.failure}; output tail:\n{ran.output}",
                destructive=False,
                output=ran.output,
            )
        return MigratorOutcome("status", f"`{ran.command}` succeeded", ran.output, ran.duration)

    def _failed(self, ran: CommandResult, which: str, *, completed: int) -> AppCommandError:
        if not ran.started:
            effect = "it did not start, so it changed nothing"
        else:
            # Only the app's script knows whether its failed run left anything behind.
            effect = "whether it changed the database is unknown: check its status"
        before = (
            f"{completed} earlier run{'s' if completed != 1 else ''} succeeded; "
            if completed
            else ""
        )
        return AppCommandError(
            f"`{ran.command}` ({which}) {ran.failure}; {before}{effect}. Output tail:\n"
            f"{ran.output or '(no output)'}",
            destructive=completed > 0 or ran.started,
            output=ran.output,
            completed=completed,
        )

    def _run(self, argv: Sequence[str]) -> CommandResult:
        return run_command(argv, self._setup, self._commands.timeout)
