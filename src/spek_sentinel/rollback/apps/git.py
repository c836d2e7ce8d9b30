"""The git backend: the runbook's phase 3 option A as code.

``git checkout --detach <previous commit>``, then the configured clean commands (the runbook's
``Remove-Item -Recurse -Force .next``) and build commands (``npm install``, ``npm run build``),
each an argv list run in the repository with its own timeout. Stop and start go through
configured commands (``systemctl stop app``, a launcher script), see ``ProcessCommands``.

A work tree with uncommitted changes to tracked files is refused before anything happens: a
human's edits are not ours to discard. Untracked files are left alone by a checkout (git itself
refuses one that would overwrite them).

Idempotence: rolling back to the commit already checked out skips the checkout but runs the
clean and build commands again, since a checked-out commit says nothing about whether its build
finished (a retry after a failed build must build). A build that fails leaves the new commit
checked out and unbuilt: the error says so and names the commit (and branch) to return to.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from spek_sentinel.rollback.apps.base import (
    DEFAULT_ENV,
    AppBackendError,
    AppState,
    CommandEnv,
    CommandFailedError,
    CommandResult,
    DirtyWorkTreeError,
    ProcessCommands,
    ProcessControl,
    StepOutput,
    TargetMissingError,
    check_release,
    join_outputs,
    run_command,
)

# Stable, parseable output; never a prompt for credentials; no index refresh written by the
# pre-flight's read-only commands.
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"}
_SHOWN_DIRTY_PATHS = 20


@dataclass(frozen=True, slots=True)
class GitAppSettings:
    repo: Path
    stop_command: tuple[str, ...]
    start_command: tuple[str, ...]
    running_command: tuple[str, ...] | None = None  # exit 0 = running; see ProcessCommands
    clean_commands: tuple[tuple[str, ...], ...] = ()
    build_commands: tuple[tuple[str, ...], ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ENV))
    secrets: tuple[str, ...] = ()
    git: str = "git"


class GitBackend:
    def __init__(self, settings: GitAppSettings) -> None:
        self._settings = settings
        self._setup = CommandEnv(cwd=settings.repo, env=settings.env, secrets=settings.secrets)
        self._process = ProcessControl(
            ProcessCommands(
                settings.stop_command, settings.start_command, settings.running_command
            ),
            self._setup,
        )

    @property
    def description(self) -> str:
        return f"git repo {self._settings.repo}"

    def current_release(self, timeout: float = 30.0) -> str:
        return self._rev_parse("HEAD", "current release", timeout)

    def target_exists(self, release: str, timeout: float = 30.0) -> bool:
        if check_release(release) is not None:
            return False
        self._ensure_work_tree("pre-flight", timeout)
        return self._git("cat-file", "-e", f"{release}^{{commit}}", timeout=timeout).ok

    def stop(self, timeout: float = 60.0) -> StepOutput:
        return self._process.stop(timeout)

    def start(self, timeout: float = 60.0) -> StepOutput:
        return self._process.start(timeout)

    def rollback_to(self, release: str, timeout: float = 600.0) -> StepOutput:
        started = time.monotonic()
        op = f"rollback to {release}"
        why = check_release(release)
        if why is None and not self.target_exists(release, timeout):
            why = f"is not a commit in {self._settings.repo}"
        if why is not None:
            raise TargetMissingError(
                op, f"release {release!r} {why}", state=AppState.UNCHANGED, changed=False
            )
        target = self._rev_parse(f"{release}^{{commit}}", op, timeout)
        head = self._rev_parse("HEAD", op, timeout)
        branch = self._branch(timeout)
        self._refuse_dirty(op, timeout)
        was = f"{head[:12]} on branch {branch}" if branch else f"{head[:12]} (detached)"
        undo = f"`git checkout {branch or head}` returns to {was}"
        parts: list[tuple[str, str]] = []
        ran: list[str] = []
        moved = head != target
        if moved:
            checkout = self._git("checkout", "--detach", target, timeout=timeout)
            ran.append(checkout.command)
            parts.append((checkout.command, checkout.output))
            if not checkout.ok:
                now = self._rev_parse("HEAD", op, timeout)
                raise CommandFailedError(
                    op,
                    checkout,
                    state=AppState.UNCHANGED if now == head else AppState.PARTIAL,
                    changed=now != head,
                    detail=f"HEAD is {now[:12]}; {undo}",
                )
        for argv in (*self._settings.clean_commands, *self._settings.build_commands):
            result = run_command(argv, self._setup, timeout)
            ran.append(result.command)
            parts.append((result.command, result.output))
            if not result.ok:
                raise CommandFailedError(
                    op,
                    # the failed command's tail, after every command that led up to it
                    replace(result, output=join_outputs(*parts)),
                    state=AppState.PARTIAL,
                    changed=True,
                    detail=f"{target[:12]} is checked out but not built; {undo}",
                )
        what = (
            f"checked out {target[:12]} (was {was})"
            if moved
            else f"{target[:12]} already checked out"
        )
        steps = len(self._settings.clean_commands) + len(self._settings.build_commands)
        return StepOutput(
            f"{what}; ran {steps} clean/build command(s)",
            tuple(ran),
            join_outputs(*parts),
            time.monotonic() - started,
            changed=moved or steps > 0,
        )

    # --- git plumbing ---

    def _git(self, *args: str, timeout: float, keep_stdout: bool = False) -> CommandResult:
        return run_command(
            [self._settings.git, *args],
            self._setup,
            timeout,
            keep_stdout=keep_stdout,
            extra_env=_GIT_ENV,
        )

    def _ensure_work_tree(self, op: str, timeout: float) -> None:
        result = self._git("rev-parse", "--is-inside-work-tree", timeout=timeout, keep_stdout=True)
        if not result.ok or result.stdout.strip() != "true":
            raise AppBackendError(
                op,
                f"{self._settings.repo} is not a usable git work tree",
                state=AppState.UNCHANGED,
                changed=False,
                output=result.output,
            )

    def _rev_parse(self, rev: str, op: str, timeout: float) -> str:
        result = self._git(
            "rev-parse", "--verify", "--quiet", rev, timeout=timeout, keep_stdout=True
        )
        commit = result.stdout.strip()
        if not result.ok or not commit:
            raise CommandFailedError(op, result, state=AppState.UNCHANGED, changed=False)
        return commit

    def _branch(self, timeout: float) -> str | None:
        result = self._git(
            "symbolic-ref", "--quiet", "--short", "HEAD", timeout=timeout, keep_stdout=True
        )
        return (result.stdout.strip() or None) if result.ok else None

    def _refuse_dirty(self, op: str, timeout: float) -> None:
        result = self._git(
            "status", "--porcelain=v1", "--untracked-files=no", timeout=timeout, keep_stdout=True
        )
        if not result.ok:
            raise CommandFailedError(op, result, state=AppState.UNCHANGED, changed=False)
        dirty = result.stdout.splitlines()
        if dirty:
            shown = "\n".join(dirty[:_SHOWN_DIRTY_PATHS])
            more = len(dirty) - _SHOWN_DIRTY_PATHS
            raise DirtyWorkTreeError(
                op,
                f"{self._settings.repo} has uncommitted changes to {len(dirty)} tracked file(s); "
                "a human's edits are not ours to discard: commit, stash or revert them first",
                state=AppState.UNCHANGED,
                changed=False,
                output=shown + (f"\n... and {more} more" if more > 0 else ""),
            )
