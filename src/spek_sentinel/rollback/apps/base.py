"""The application-backend contract (runbook phases 1, 3 and 4), its errors, and the one way
backends run external commands.

A backend stops the application, puts the last known-good release in place, and starts it
again. Each operation returns a ``StepOutput`` for the journal or raises an ``AppBackendError``
that says what failed and what state the application was left in. Operations are idempotent
where they can be (stop when stopped, rollback to the release already in place); the backend
modules document where they are not.

Commands run from argv lists, never through a shell, with an explicit environment (the
sentinel's own environment holds credentials that an application build has no business
seeing), a timeout, and only the redacted tail of their output kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Protocol

from spek_sentinel.domain.errors import RollbackError
from spek_sentinel.secrets import redact

DEFAULT_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
TAIL_LINES = 40
TAIL_CHARS = 4000
_TAIL_BYTES = 64 * 1024
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class StepOutput:
    """What one backend operation did, for the journal."""

    action: str  # one line: what the step achieved, or why nothing had to be done
    ran: tuple[str, ...]  # each command / engine call made, secrets redacted
    output: str  # tail of the commands' output, secrets redacted
    duration: float  # seconds
    changed: bool  # False when the application already was in the wanted state


class AppState(StrEnum):
    """Where a failed operation left the application."""

    UNCHANGED = "unchanged"  # as it was before the call: nothing was touched
    STOPPED = "stopped"
    RUNNING = "running"
    PARTIAL = "partial"  # part of the operation happened; the detail says which part
    UNKNOWN = "unknown"  # the backend could not tell (the engine or a command did not answer)


class AppBackendError(RollbackError):
    """An application operation failed: which one, why, and the state it left behind.

    Backends never destroy what the runbook keeps (an old container is renamed, not removed;
    a work tree with a human's edits is refused, not reset), so ``changed`` says only whether
    the application may differ from before the call (False only when the backend knows nothing
    changed), and ``detail`` says what is where and how to undo it.
    """

    def __init__(
        self,
        operation: str,
        reason: str,
        *,
        state: AppState,
        changed: bool,
        detail: str = "",
        output: str = "",
    ) -> None:
        self.operation = operation
        self.reason = reason
        self.state = state
        self.changed = changed
        self.detail = detail
        self.output = output
        message = f"{operation} failed: {reason}; application state: {state.value}"
        if detail:
            message += f" ({detail})"
        if output:
            message += f"\n--- output tail ---\n{output}"
        super().__init__(message)


class TargetMissingError(AppBackendError):
    """The release to roll back to does not exist (no such image or commit)."""


class DirtyWorkTreeError(AppBackendError):
    """The work tree has uncommitted changes: a human's edits are not ours to discard."""


class CommandFailedError(AppBackendError):
    """A configured or internal command exited non-zero, could not start, or timed out."""

    def __init__(
        self,
        operation: str,
        result: CommandResult,
        *,
        state: AppState,
        changed: bool,
        detail: str = "",
    ) -> None:
        self.result = result
        super().__init__(
            operation,
            f"`{result.command}` {result.failure}",
            state=state,
            changed=changed,
            detail=detail,
            output=result.output,
        )


class AppBackend(Protocol):
    """Stops, rolls back and starts one application. ``timeout`` bounds each external call
    (a command, or a request to the engine) in seconds."""

    @property
    def description(self) -> str:
        """What is managed, for messages: ``docker container web``, ``git repo /srv/app``."""
        ...

    def current_release(self, timeout: float = 30.0) -> str:
        """The release in place now: an image reference or id, a commit."""
        ...

    def target_exists(self, release: str, timeout: float = 30.0) -> bool:
        """Pre-flight: whether ``release`` is there to roll back to. No side effects."""
        ...

    def stop(self, timeout: float = 60.0) -> StepOutput:
        """Runbook phase 1. Stopping a stopped application is fine."""
        ...

    def rollback_to(self, release: str, timeout: float = 600.0) -> StepOutput:
        """Runbook phase 3: put ``release`` in place. Checks ``target_exists`` before touching
        anything; rolling back to the release already in place is fine."""
        ...

    def start(self, timeout: float = 60.0) -> StepOutput:
        """Runbook phase 4. Starting a running application is fine."""
        ...


# --- running commands ---


@dataclass(frozen=True, slots=True)
class CommandResult:
    command: str  # shell-quoted argv, redacted: for messages only, never executed
    started: bool  # False when it could not be started at all (then nothing it does happened)
    exit_code: int | None  # None when it could not start or timed out
    failure: str | None  # None on exit 0, else what went wrong ("exited with 2", ...)
    output: str  # redacted tail of stdout and stderr together
    stdout: str  # redacted stdout, only when asked for (``keep_stdout``)
    duration: float

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass(frozen=True, slots=True)
class CommandEnv:
    """How commands run: working directory, the complete environment, and what to redact.

    ``env`` replaces the sentinel's environment entirely. Values of variables whose names look
    secret (PASSWORD, SECRET, TOKEN, KEY, CREDENTIAL) are redacted like ``secrets``.
    """

    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ENV))
    secrets: tuple[str, ...] = ()

    def all_secrets(self) -> tuple[str, ...]:
        named = (value for name, value in self.env.items() if _SECRET_NAME.search(name))
        return (*self.secrets, *(value for value in named if len(value) >= 4))


def run_command(
    argv: Sequence[str],
    setup: CommandEnv,
    timeout: float,
    *,
    keep_stdout: bool = False,
    extra_env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run ``argv`` without a shell and wait for it to exit, at most ``timeout`` seconds.

    Output goes to temporary files, not pipes: a start command may leave a daemon behind that
    inherits them, and waiting for a pipe's end would then wait for the daemon. On timeout the
    command's whole process group is killed (a build's children too).
    """
    secrets = setup.all_secrets()
    command = redact(shlex.join(argv), secrets)
    env = {**setup.env, **(extra_env or {})}
    started = time.monotonic()
    if not argv:
        return CommandResult(command, False, None, "is an empty command", "", "", 0.0)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        stdout_target = out
        stderr_target = err if keep_stdout else out
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=setup.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout_target,
                stderr=stderr_target,
                start_new_session=True,
            )
        except OSError as exc:
            reason = redact(f"could not start: {exc.strerror or exc}", secrets)
            return CommandResult(command, False, None, reason, "", "", time.monotonic() - started)
        failure: str | None = None
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            code = None
            failure = f"timed out after {timeout:g}s (killed)"
        if code is not None and code != 0:
            failure = f"exited with {code}" if code > 0 else f"killed by signal {-code}"
        duration = time.monotonic() - started
        stdout = redact(_read_all(out), secrets) if keep_stdout else ""
        tail = _tail([out, err] if keep_stdout else [out], secrets)
    return CommandResult(command, True, code, failure, tail, stdout, duration)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _read_all(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read(_TAIL_BYTES).decode(errors="replace")


def _tail(handles: Iterable[IO[bytes]], secrets: Iterable[str]) -> str:
    lines: list[str] = []
    for handle in handles:
        size = handle.seek(0, os.SEEK_END)
        start = max(0, size - _TAIL_BYTES)
        handle.seek(start)
        chunk = handle.read().decode(errors="replace").splitlines()
        lines.extend(chunk[1:] if start > 0 else chunk)  # a cut first line is dropped
    return output_tail("\n".join(lines), secrets)


def output_tail(text: str, secrets: Iterable[str] = ()) -> str:
    """The last lines of ``text``, secrets redacted, bounded for a journal entry."""
    lines = redact(text, secrets).rstrip().splitlines()[-TAIL_LINES:]
    return "\n".join(lines)[-TAIL_CHARS:]


def join_outputs(*parts: tuple[str, str]) -> str:
    """One output tail from several commands', each headed by its command."""
    text = "\n".join(
        f"$ {command}\n{output}" if output else f"$ {command}" for command, output in parts
    )
    return output_tail(text)


def check_release(release: str) -> str | None:
    """Why ``release`` cannot be a release name (passed as an argument), or None if it can."""
    if not release or release != release.strip():
        return "is empty or has surrounding whitespace"
    if release.startswith("-"):
        return "starts with '-' and would be read as an option"
    if any(ch in release for ch in "\0\n\r"):
        return "contains a NUL or line break"
    return None


# --- stop/start through configured commands (the git and command backends) ---


@dataclass(frozen=True, slots=True)
class ProcessCommands:
    """How to stop and start an application that is not a container.

    ``stop`` and ``start`` are argv lists; ``start`` must return once the application is
    started (``systemctl start app``, a launcher that daemonizes), not run in the foreground.
    ``running``, if given, is an argv whose exit status 0 means "the application runs": with
    it, stop skips a stopped application and start a running one. Without it, stop and start
    are exactly as idempotent as the configured commands (``systemctl`` is).
    """

    stop: tuple[str, ...]
    start: tuple[str, ...]
    running: tuple[str, ...] | None = None


class ProcessControl:
    """Runs a ``ProcessCommands`` for the git and command backends."""

    def __init__(self, commands: ProcessCommands, setup: CommandEnv) -> None:
        self._commands = commands
        self._setup = setup

    def stop(self, timeout: float) -> StepOutput:
        return self._switch("stop", self._commands.stop, want_running=False, timeout=timeout)

    def start(self, timeout: float) -> StepOutput:
        return self._switch("start", self._commands.start, want_running=True, timeout=timeout)

    def state(self, timeout: float) -> tuple[AppState, CommandResult | None]:
        """RUNNING or STOPPED by the ``running`` command; UNKNOWN without one or when it
        cannot answer (could not start, timed out)."""
        if self._commands.running is None:
            return AppState.UNKNOWN, None
        result = run_command(self._commands.running, self._setup, timeout)
        if result.exit_code is None:
            return AppState.UNKNOWN, result
        return (AppState.RUNNING if result.exit_code == 0 else AppState.STOPPED), result

    def _switch(
        self, operation: str, argv: tuple[str, ...], *, want_running: bool, timeout: float
    ) -> StepOutput:
        started = time.monotonic()
        wanted = AppState.RUNNING if want_running else AppState.STOPPED
        before, check = self.state(timeout)
        ran = [check.command] if check else []
        if check is not None and check.exit_code is None:  # no answer is not "no"
            raise CommandFailedError(
                f"{operation} (running check)", check, state=before, changed=False
            )
        if before is wanted:
            return StepOutput(
                f"already {wanted.value}; {operation} not needed",
                tuple(ran),
                check.output if check else "",
                time.monotonic() - started,
                changed=False,
            )
        result = run_command(argv, self._setup, timeout)
        ran.append(result.command)
        after, verify = self.state(timeout)
        if verify is not None:
            ran.append(verify.command)
        changed = result.started and (AppState.UNKNOWN in (before, after) or after is not before)
        if not result.ok:
            raise CommandFailedError(operation, result, state=after, changed=changed)
        # Stopped must mean stopped: traffic has to be off before the rollback goes on. A start
        # is judged by phase 5 (verify), which gives a starting application time.
        if not want_running and after is AppState.RUNNING:
            raise AppBackendError(
                operation,
                f"`{result.command}` succeeded but the running check says {after.value}",
                state=after,
                changed=changed,
                output=result.output,
            )
        note = f"; running check says {after.value}" if verify is not None else ""
        return StepOutput(
            f"{operation}: `{result.command}` succeeded{note}",
            tuple(ran),
            result.output,
            time.monotonic() - started,
            changed=True,
        )
