"""The command app backend with real commands, and the command runner under it."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.wait import wait_until
from spek_sentinel.rollback.apps.base import (
    DEFAULT_ENV,
    AppBackend,
    AppBackendError,
    AppState,
    CommandFailedError,
)
from spek_sentinel.rollback.apps.command import CommandAppSettings, CommandBackend

PY = sys.executable
WEIRD = "v1; touch pwned $(touch pwned2) `touch pwned3` | cat && echo 'x' > pwned4"

CURRENT = (PY, "-c", "import pathlib; print(pathlib.Path('current').read_text())")
EXISTS = (
    PY,
    "-c",
    "import pathlib, sys; sys.exit(0 if pathlib.Path('releases', sys.argv[1]).is_dir() else 1)",
    "{release}",
)
ROLLBACK = (
    PY,
    "-c",
    "import json, os, pathlib, sys; pathlib.Path('current').write_text(sys.argv[1]); "
    "pathlib.Path('seen.json').write_text(json.dumps("
    "{'argv': sys.argv[1:], 'env': os.environ.get('SPEK_SENTINEL_RELEASE')}))",
    "{release}",
    "--tag=app:{release}",
)
STATE = "import pathlib, sys; p = pathlib.Path('state')"
STOP = (PY, "-c", f"{STATE}; p.write_text('stopped')")
START = (PY, "-c", f"{STATE}; p.write_text('running')")
RUNNING = (PY, "-c", f"{STATE}; sys.exit(0 if p.read_text() == 'running' else 1)")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A deployment: releases v1, v2 and the weird one on disk, v2 current and running."""
    for release in ("v1", "v2", WEIRD):
        (tmp_path / "releases" / release).mkdir(parents=True)
    (tmp_path / "current").write_text("v2")
    (tmp_path / "state").write_text("running")
    return tmp_path


def backend(site: Path, **overrides: object) -> AppBackend:  # the contract, checked by mypy
    settings: dict[str, object] = {
        "stop_command": STOP,
        "start_command": START,
        "running_command": RUNNING,
        "rollback_command": ROLLBACK,
        "current_release_command": CURRENT,
        "target_exists_command": EXISTS,
        "cwd": site,
        "env": dict(DEFAULT_ENV),
        **overrides,
    }
    return CommandBackend(CommandAppSettings(**settings))  # type: ignore[arg-type]


def test_each_operation_runs_its_command(site: Path) -> None:
    apps = backend(site)
    assert apps.current_release() == "v2"
    assert apps.target_exists("v1") and not apps.target_exists("v9")

    assert apps.stop().changed
    assert not apps.stop().changed, "stopped already: the running check skips the stop command"
    out = apps.rollback_to("v1")
    assert out.changed and "from v2 to v1" in out.action
    assert apps.current_release() == "v1"
    assert not apps.rollback_to("v1").changed, "the release in place: nothing to do"
    assert apps.start().changed
    assert not apps.start().changed
    assert (site / "state").read_text() == "running"


def test_the_release_is_one_argument_and_never_goes_through_a_shell(site: Path) -> None:
    apps = backend(site)
    assert apps.target_exists(WEIRD)

    apps.rollback_to(WEIRD)

    seen = json.loads((site / "seen.json").read_text())
    assert seen == {"argv": [WEIRD, f"--tag=app:{WEIRD}"], "env": WEIRD}
    assert not list(site.glob("pwned*")), "no shell ran any part of the release name"
    assert apps.current_release() == WEIRD


def test_a_release_that_could_pass_for_an_option_is_refused(site: Path) -> None:
    apps = backend(site)
    for release in ("--all", "", " v1", "v1\nv2"):
        assert not apps.target_exists(release)
    with pytest.raises(AppBackendError, match="read as an option"):
        apps.rollback_to("--all")
    assert apps.current_release() == "v2"


def test_a_command_past_its_timeout_is_killed_with_its_children(site: Path) -> None:
    hang = (
        PY,
        "-c",
        "import pathlib, subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "pathlib.Path('child.pid').write_text(str(child.pid)); time.sleep(60)",
    )
    apps = backend(site, rollback_command=hang)
    started = time.monotonic()
    with pytest.raises(CommandFailedError, match=r"timed out after 1s") as caught:
        apps.rollback_to("v1", timeout=1)

    assert time.monotonic() - started < 10
    assert caught.value.state is AppState.UNKNOWN and caught.value.changed
    assert "release in place before: v2" in caught.value.detail
    child = int((site / "child.pid").read_text())
    wait_until(
        lambda: (
            not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        ),
        timeout=10,
        message="the command's child outlived the timeout",
    )


def test_a_start_command_that_leaves_a_daemon_behind_returns_at_once(site: Path) -> None:
    daemonize = (
        PY,
        "-c",
        "import pathlib, subprocess, sys; "
        "d = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        "start_new_session=True); pathlib.Path('daemon.pid').write_text(str(d.pid)); "
        "pathlib.Path('state').write_text('running'); print('daemon up')",
    )
    (site / "state").write_text("stopped")
    apps = backend(site, start_command=daemonize)
    try:
        started = time.monotonic()
        out = apps.start(timeout=30)
        assert time.monotonic() - started < 10, "waited for the daemon, not for the command"
        assert "daemon up" in out.output
    finally:
        daemon = int((site / "daemon.pid").read_text())
        os.kill(daemon, signal.SIGKILL)  # the one process this test started


def test_commands_see_only_the_configured_environment_and_secrets_are_redacted(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPEK_SENTINEL_DB_PASSWORD", "sentinel-only-secret")
    show_env = (
        PY,
        "-c",
        "import os, sys; print(sorted(os.environ)); print('token', os.environ['DEPLOY_TOKEN']); "
        "sys.exit(1)",
    )
    apps = backend(
        site,
        env={**DEFAULT_ENV, "DEPLOY_TOKEN": "tok-123456"},
        rollback_command=show_env,
    )
    with pytest.raises(CommandFailedError) as caught:
        apps.rollback_to("v1")

    output = caught.value.output
    assert "SPEK_SENTINEL_DB_PASSWORD" not in output
    assert "DEPLOY_TOKEN" in output and "tok-123456" not in str(caught.value)
    assert "token ***" in output


def test_a_check_that_cannot_run_is_an_error_not_a_no(site: Path) -> None:
    apps = backend(site, target_exists_command=(str(site / "no-such-tool"), "{release}"))
    with pytest.raises(CommandFailedError, match="could not start") as caught:
        apps.target_exists("v1")
    assert caught.value.state is AppState.UNCHANGED

    two_lines = backend(site, current_release_command=(PY, "-c", "print('a'); print('b')"))
    with pytest.raises(AppBackendError, match="printed 2 lines"):
        two_lines.current_release()


def test_a_stop_command_that_fails_reports_the_state_it_left(site: Path) -> None:
    apps = backend(site, stop_command=(PY, "-c", "import sys; print('busy'); sys.exit(1)"))
    with pytest.raises(CommandFailedError) as caught:
        apps.stop()
    assert caught.value.state is AppState.RUNNING and not caught.value.changed
    assert "busy" in caught.value.output

    lying = backend(site, stop_command=(PY, "-c", "pass"))
    with pytest.raises(AppBackendError, match="running check says running"):
        lying.stop()
