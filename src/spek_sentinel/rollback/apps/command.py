"""The command backend: every operation is a configured argv list.

For deployments the other backends do not fit (a deploy tool, a symlink switch, a package
manager). ``{release}`` in any argument of ``rollback_command`` and ``target_exists_command``
is replaced by the release, which always stays one argument: nothing runs through a shell.
The release is also in the environment as ``SPEK_SENTINEL_RELEASE``.

- ``current_release_command``: its stdout, stripped, is the release in place (one line).
- ``target_exists_command``: exit 0 means the release exists, any other exit that it does not;
  a command that cannot start or times out is an error, not a "no".
- ``rollback_command``: puts the release in place. Skipped when ``current_release`` already
  names the release; otherwise it is as idempotent as the command itself. If it fails, what it
  did is unknown: the error says so.
- ``stop_command`` / ``start_command`` / ``running_command``: see ``ProcessCommands``.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from spek_sentinel.rollback.apps.base import (
    DEFAULT_ENV,
    AppBackendError,
    AppState,
    CommandEnv,
    CommandFailedError,
    ProcessCommands,
    ProcessControl,
    StepOutput,
    TargetMissingError,
    check_release,
    run_command,
)
from spek_sentinel.secrets import redact

PLACEHOLDER = "{release}"
RELEASE_ENV = "SPEK_SENTINEL_RELEASE"


@dataclass(frozen=True, slots=True)
class CommandAppSettings:
    stop_command: tuple[str, ...]
    start_command: tuple[str, ...]
    rollback_command: tuple[str, ...]
    current_release_command: tuple[str, ...]
    target_exists_command: tuple[str, ...]
    running_command: tuple[str, ...] | None = None
    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ENV))
    secrets: tuple[str, ...] = ()


def substitute(argv: tuple[str, ...], release: str) -> tuple[str, ...]:
    """``argv`` with ``{release}`` replaced in each argument; never split, never a shell."""
    return tuple(arg.replace(PLACEHOLDER, release) for arg in argv)


class CommandBackend:
    def __init__(self, settings: CommandAppSettings) -> None:
        self._settings = settings
        self._setup = CommandEnv(cwd=settings.cwd, env=settings.env, secrets=settings.secrets)
        self._process = ProcessControl(
            ProcessCommands(
                settings.stop_command, settings.start_command, settings.running_command
            ),
            self._setup,
        )

    @property
    def description(self) -> str:
        rollback = shlex.join(self._settings.rollback_command)
        return f"commands (rollback: {redact(rollback, self._setup.all_secrets())})"

    def current_release(self, timeout: float = 30.0) -> str:
        op = "current release"
        result = run_command(
            self._settings.current_release_command, self._setup, timeout, keep_stdout=True
        )
        if not result.ok:
            raise CommandFailedError(op, result, state=AppState.UNCHANGED, changed=False)
        lines = result.stdout.strip().splitlines()
        if len(lines) != 1 or not lines[0].strip():
            raise AppBackendError(
                op,
                f"`{result.command}` printed {len(lines)} lines, not one line naming the release",
                state=AppState.UNCHANGED,
                changed=False,
                output=result.output,
            )
        return lines[0].strip()

    def target_exists(self, release: str, timeout: float = 30.0) -> bool:
        if check_release(release) is not None:
            return False
        argv = substitute(self._settings.target_exists_command, release)
        result = run_command(argv, self._setup, timeout, extra_env={RELEASE_ENV: release})
        if result.exit_code is None:  # could not start or timed out: no answer is not a "no"
            raise CommandFailedError("pre-flight", result, state=AppState.UNCHANGED, changed=False)
        return result.exit_code == 0

    def stop(self, timeout: float = 60.0) -> StepOutput:
        return self._process.stop(timeout)

    def start(self, timeout: float = 60.0) -> StepOutput:
        return self._process.start(timeout)

    def rollback_to(self, release: str, timeout: float = 600.0) -> StepOutput:
        started = time.monotonic()
        op = f"rollback to {release}"
        why = check_release(release)
        if why is None and not self.target_exists(release, timeout):
            why = "does not exist (target_exists_command said no)"
        if why is not None:
            raise TargetMissingError(
                op, f"release {release!r} {why}", state=AppState.UNCHANGED, changed=False
            )
        current = self.current_release(timeout)
        if current == release:
            return StepOutput(
                f"{release} is already in place; nothing to do",
                (),
                "",
                time.monotonic() - started,
                changed=False,
            )
        argv = substitute(self._settings.rollback_command, release)
        result = run_command(argv, self._setup, timeout, extra_env={RELEASE_ENV: release})
        if not result.ok:
            raise CommandFailedError(
                op,
                result,
                state=AppState.UNKNOWN if result.started else AppState.UNCHANGED,
                changed=result.started,
                detail=f"release in place before: {current}",
            )
        return StepOutput(
            f"rolled back from {current} to {release}",
            (result.command,),
            result.output,
            time.monotonic() - started,
            changed=True,
        )
