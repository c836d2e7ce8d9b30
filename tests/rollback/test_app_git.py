"""The git app backend on a real repository: check out the previous commit and build it."""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from spek_sentinel.rollback.apps.base import (
    DEFAULT_ENV,
    AppBackend,
    AppBackendError,
    AppState,
    CommandFailedError,
    DirtyWorkTreeError,
    TargetMissingError,
)
from spek_sentinel.rollback.apps.git import GitAppSettings, GitBackend

PY = sys.executable
CLEAN = (PY, "-c", "import shutil; shutil.rmtree('build', ignore_errors=True)")
BUILD = (
    PY,
    "-c",
    "import pathlib; pathlib.Path('build').mkdir(); "
    "pathlib.Path('build/out.txt').write_text('built from ' + pathlib.Path('app.txt').read_text())",
)
NPM_AUTH = "npm-tok-5ecr3t"
FAILING_BUILD = (
    PY,
    "-c",
    "import os, sys; print('compiling with', os.environ['NPM_TOKEN']); "
    "print('error: boom', file=sys.stderr); sys.exit(3)",
)
# stop/start flip a state file; "running" reads it: real commands standing in for systemctl
STATE = "import pathlib, sys; p = pathlib.Path('.app-state')"
STOP = (PY, "-c", f"{STATE}; p.write_text('stopped')")
START = (PY, "-c", f"{STATE}; p.write_text('running')")
RUNNING = (PY, "-c", f"{STATE}; sys.exit(0 if p.exists() and p.read_text() == 'running' else 1)")


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.invalid", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout.strip()


@dataclass
class Repo:
    path: Path
    c1: str
    c2: str

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD")

    def built(self) -> str:
        return (self.path / "build" / "out.txt").read_text()


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    path = tmp_path / "app"
    path.mkdir()
    git(path, "init", "--quiet", "--initial-branch=main")
    (path / ".gitignore").write_text("build/\n.app-state\n")
    commits = []
    for release in ("c1", "c2"):
        (path / "app.txt").write_text(f"release {release}\n")
        git(path, "add", ".")
        git(path, "commit", "--quiet", "-m", release)
        commits.append(git(path, "rev-parse", "HEAD"))
    return Repo(path, *commits)


def backend(
    repo: Repo, build: tuple[str, ...] = BUILD
) -> AppBackend:  # the contract, checked by mypy
    return GitBackend(
        GitAppSettings(
            repo=repo.path,
            stop_command=STOP,
            start_command=START,
            running_command=RUNNING,
            clean_commands=(CLEAN,),
            build_commands=(build,),
            env={**DEFAULT_ENV, "NPM_TOKEN": NPM_AUTH},
        )
    )


def test_rollback_checks_out_the_previous_commit_and_builds_it(repo: Repo) -> None:
    (repo.path / "notes.txt").write_text("untracked: a checkout leaves it alone\n")
    apps = backend(repo)
    assert apps.current_release() == repo.c2
    assert apps.target_exists(repo.c1) and apps.target_exists(repo.c1[:8])

    out = apps.rollback_to(repo.c1[:8])

    assert out.changed and repo.head() == repo.c1
    assert repo.built() == "built from release c1\n"
    assert apps.current_release() == repo.c1
    assert f"checked out {repo.c1[:12]} (was {repo.c2[:12]} on branch main)" in out.action
    assert any("checkout --detach" in command for command in out.ran)
    assert git(repo.path, "rev-parse", "main") == repo.c2, "the branch still names the release"
    assert (repo.path / "notes.txt").exists()

    again = apps.rollback_to(repo.c1)
    assert "already checked out" in again.action and repo.built() == "built from release c1\n"


def test_stop_and_start_run_the_configured_commands_and_are_idempotent(repo: Repo) -> None:
    apps = backend(repo)
    assert apps.start().changed
    assert not apps.start().changed
    assert (repo.path / ".app-state").read_text() == "running"
    assert apps.stop().changed
    second = apps.stop()
    assert not second.changed and "already stopped" in second.action


def test_uncommitted_changes_are_refused_and_the_tree_is_untouched(repo: Repo) -> None:
    (repo.path / "app.txt").write_text("a human's hotfix\n")
    with pytest.raises(DirtyWorkTreeError) as caught:
        backend(repo).rollback_to(repo.c1)

    assert caught.value.state is AppState.UNCHANGED and not caught.value.changed
    assert "app.txt" in caught.value.output and "not ours to discard" in str(caught.value)
    assert (repo.path / "app.txt").read_text() == "a human's hotfix\n"
    assert repo.head() == repo.c2
    assert not (repo.path / "build").exists(), "nothing was built"


def test_a_failing_build_fails_with_its_output_tail_and_says_where_the_tree_is(
    repo: Repo,
) -> None:
    with pytest.raises(CommandFailedError) as caught:
        backend(repo, build=FAILING_BUILD).rollback_to(repo.c1)

    error = caught.value
    assert error.state is AppState.PARTIAL and error.changed
    assert error.result.exit_code == 3
    assert "error: boom" in error.output and "exited with 3" in str(error)
    assert NPM_AUTH not in str(error) and "compiling with ***" in error.output
    assert "`git checkout main` returns to" in error.detail
    assert repo.head() == repo.c1, "checked out, not built: the error says so"


def test_a_missing_commit_is_refused_before_anything_happens(repo: Repo) -> None:
    apps = backend(repo)
    missing = "0" * 40
    assert not apps.target_exists(missing)
    assert not apps.target_exists("no-such-ref")
    assert not apps.target_exists("--help")
    with pytest.raises(TargetMissingError) as caught:
        apps.rollback_to(missing)
    assert caught.value.state is AppState.UNCHANGED
    assert repo.head() == repo.c2


def test_a_path_that_is_no_repository_is_an_error_not_a_missing_commit(tmp_path: Path) -> None:
    apps = GitBackend(GitAppSettings(repo=tmp_path, stop_command=STOP, start_command=START))
    with pytest.raises(AppBackendError, match="not a usable git work tree"):
        apps.target_exists("HEAD")
