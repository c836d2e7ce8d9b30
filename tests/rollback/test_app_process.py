"""The process app backend against real processes: spek-sentinel starts and stops a release's
process itself (tests/rollback/process_app.py), rolls back to a previous release, sees a crash at
start, ignores a stale pid file and never signals a process that is not its own, and stops the
whole process group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from harness.ports import free_port
from harness.wait import wait_until
from spek_sentinel.cli import main
from spek_sentinel.config import load_config
from spek_sentinel.domain.errors import ConfigError
from spek_sentinel.rollback.apps.base import (
    DEFAULT_ENV,
    AppBackend,
    AppBackendError,
    AppState,
    TargetMissingError,
)
from spek_sentinel.rollback.apps.process import ProcessAppSettings, ProcessBackend
from spek_sentinel.service.rollback_plan import app_backend
from spek_sentinel.store.records import StateStore

APP = Path(__file__).with_name("process_app.py")
SECRET = "s3cr3t-value-for-the-app"  # noqa: S105 - a test value


class Site:
    """One application: its port, its info file, and backends over the same state dir."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.info = tmp / "info.json"
        self.state = tmp / "apps"
        self.made: list[ProcessBackend] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def backend(self, **overrides: Any) -> ProcessBackend:
        settings: dict[str, Any] = {
            "command": (sys.executable, str(APP), "{release}", str(self.port), str(self.info)),
            "state_dir": self.state,
            "name": "web",
            "releases": ("v1", "v2", "crash", "forks", "stubborn"),
            "env": {**DEFAULT_ENV, "APP_SECRET": SECRET},
            "secrets": (SECRET,),
            "stop_grace": 5.0,
            "ready_url": self.url,
            "start_timeout": 20.0,
            **overrides,
        }
        backend = ProcessBackend(ProcessAppSettings(**settings))
        self.made.append(backend)
        return backend

    def app_info(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.info.read_text(encoding="utf-8"))
        return found

    def answer(self) -> str:
        with urllib.request.urlopen(self.url, timeout=5) as response:  # noqa: S310 - our app
            text: str = response.read().decode()
            return text


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = Site(tmp_path)
    yield made
    for backend in made.made:  # nothing a test started outlives it
        backend.stop(timeout=30)
    leaked = [
        process
        for process in psutil.process_iter(["cmdline"])
        if str(made.info) in " ".join(process.info["cmdline"] or [])
    ]
    for process in leaked:
        process.kill()
    assert leaked == [], "a release the backend's record no longer names was left running"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def deploy(backend: AppBackend, release: str) -> None:
    backend.rollback_to(release, timeout=30)
    backend.start(timeout=30)


def test_start_and_stop_a_release(site: Site) -> None:
    backend = site.backend()
    with pytest.raises(AppBackendError, match="no release is in place"):
        backend.start(timeout=10)

    placed = backend.rollback_to("v1", timeout=30)
    assert placed.changed and "v1 in place (was none)" in placed.action
    assert backend.running_pid() is None  # put in place, not started: start runs it
    started = backend.start(timeout=30)
    assert started.changed
    assert "answered 200" in started.action
    pid = backend.running_pid()
    assert pid is not None and pid == site.app_info()["pid"]
    assert backend.pid_file.read_text() == f"{pid}\n"
    assert site.answer() == "v1"
    assert backend.current_release() == "v1"
    # the process runs in its own session, with the environment the table gave it and no other
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid
    env = site.app_info()["env"]
    assert env["APP_SECRET"] == SECRET and env["SPEK_SENTINEL_RELEASE"] == "v1"
    assert "HOME" not in env or "HOME" in DEFAULT_ENV
    # the secret reaches the app but never the journal
    assert SECRET not in started.output and "secret is ***" in started.output
    assert "listening on" in started.output

    again = backend.start(timeout=10)
    assert not again.changed and "already running" in again.action

    stopped = backend.stop(timeout=30)
    assert stopped.changed and "SIGTERM" in stopped.action and "exited with 0" in stopped.action
    assert gone(pid)
    assert not backend.pid_file.exists()
    assert backend.current_release() == "v1"  # the release stays in place, stopped
    assert not backend.stop(timeout=10).changed

    # a new backend over the same state dir (the daemon restarted) finds the running release
    backend.start(timeout=30)
    later = site.backend()
    assert later.running_pid() == backend.running_pid() is not None
    assert later.stop(timeout=30).changed
    assert backend.running_pid() is None


def test_roll_back_to_the_previous_release(site: Site) -> None:
    backend = site.backend()
    deploy(backend, "v1")
    deploy(backend, "v2")
    bad = backend.running_pid()
    assert bad is not None and site.answer() == "v2"

    # the plan's order: stop, roll back, restart
    assert backend.stop(timeout=30).changed
    rolled = backend.rollback_to("v1", timeout=30)
    assert rolled.changed and "v1 in place (was v2)" in rolled.action
    assert backend.start(timeout=30).changed
    assert site.answer() == "v1" and backend.current_release() == "v1"
    assert gone(bad)

    # rolling back to the release in place changes nothing
    same = backend.rollback_to("v1", timeout=30)
    assert not same.changed and "already in place" in same.action

    # a running release is stopped before another is put in place
    running = backend.running_pid()
    assert running is not None
    switched = backend.rollback_to("v2", timeout=30)
    assert switched.action.startswith("stopped v1") and "v2 in place (was v1)" in switched.action
    assert gone(running) and backend.running_pid() is None


def test_the_target_must_exist_before_anything_is_touched(site: Site) -> None:
    backend = site.backend()
    deploy(backend, "v2")
    pid = backend.running_pid()
    assert backend.target_exists("v1") and not backend.target_exists("v9")
    assert not backend.target_exists("-rf")
    with pytest.raises(TargetMissingError) as caught:
        backend.rollback_to("v9", timeout=10)
    assert caught.value.state is AppState.UNCHANGED and not caught.value.changed
    assert "not one of the releases configured" in str(caught.value)
    assert backend.running_pid() == pid and site.answer() == "v2"

    releases = site.tmp / "releases"
    (releases / "v1").mkdir(parents=True)
    by_command = site.backend(
        releases=None,
        target_exists_command=("test", "-d", f"{releases}/{{release}}"),
    )
    assert by_command.target_exists("v1")
    assert not by_command.target_exists("v2")


def test_a_crash_at_start_is_a_failed_start_with_the_exit_status_and_the_log(
    site: Site,
) -> None:
    backend = site.backend()
    backend.rollback_to("crash", timeout=30)
    with pytest.raises(AppBackendError) as caught:
        backend.start(timeout=30)
    error = caught.value
    assert error.state is AppState.STOPPED and error.changed
    assert "exited with 3" in error.reason and "crashed at start" in error.reason
    assert "StartupCrashError: boom" in error.output
    assert SECRET not in str(error)
    assert backend.running_pid() is None and not backend.pid_file.exists()
    # the log keeps the whole story for a human
    assert "StartupCrashError" in backend.log_path.read_text()

    # without a ready URL, a process must stay up start_check seconds
    quick = site.backend(ready_url=None, start_check=1.0)
    with pytest.raises(AppBackendError, match="exited with 3"):
        quick.start(timeout=30)
    quick.rollback_to("v1", timeout=30)
    ok = quick.start(timeout=30)
    assert "still running after 1s" in ok.action


def test_a_stale_pid_file_is_removed_and_a_stranger_is_never_signalled(site: Site) -> None:
    backend = site.backend()
    deploy(backend, "v1")
    record_path = site.state / "web.json"
    record = json.loads(record_path.read_text())
    backend.stop(timeout=30)

    # the pid of a process that has exited since
    dead = subprocess.Popen(["true"])
    dead.wait()
    record_path.write_text(json.dumps({**record, "pid": dead.pid}))
    stopped = backend.stop(timeout=10)
    assert not stopped.changed and "stale pid file removed" in stopped.action

    # the pid now belongs to another program (started later than the record says ours was)
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        record_path.write_text(json.dumps({**record, "pid": stranger.pid}))
        site.state.joinpath("web.pid").write_text(f"{stranger.pid}\n")
        assert backend.running_pid() is None
        result = backend.stop(timeout=10)
        assert not result.changed and "stale pid file removed" in result.action
        assert stranger.poll() is None  # still running: not ours, not signalled
        record_path.write_text(json.dumps({**record, "pid": stranger.pid}))
        started = backend.start(timeout=30)
        assert started.changed and site.answer() == "v1"
        assert stranger.poll() is None
        assert backend.stop(timeout=30).changed  # our own, the one the record names now
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()

    record = json.loads(record_path.read_text())
    record_path.write_text("{not json")
    with pytest.raises(AppBackendError, match="cannot read"):
        site.backend().current_release()
    record_path.write_text(json.dumps({**record, "pid": "12"}))
    with pytest.raises(AppBackendError, match="not a record spek-sentinel wrote"):
        site.backend().stop(timeout=10)
    record_path.write_text(json.dumps(record))


def test_stop_ends_the_whole_process_group(site: Site) -> None:
    backend = site.backend()
    deploy(backend, "forks")
    info = site.app_info()
    pid, child = info["pid"], info["child"]
    assert os.getpgid(child) == pid
    stopped = backend.stop(timeout=30)
    assert "2 processes" in stopped.action
    wait_until(lambda: gone(pid) and gone(child), timeout=10, message="group gone")

    # a process that ignores SIGTERM is killed after the grace
    patient = site.backend(stop_grace=0.5)
    deploy(patient, "stubborn")
    stubborn = patient.running_pid()
    assert stubborn is not None
    result = patient.stop(timeout=30)
    assert "SIGKILL after 0.5s" in result.action and "killed by signal 9" in result.action
    assert gone(stubborn)

    # a crashed server's children still in its group are stopped too, also before a start
    deploy(backend, "forks")
    info = site.app_info()
    os.kill(info["pid"], signal.SIGKILL)
    wait_until(lambda: backend.running_pid() is None, timeout=10, message="leader gone")
    assert not gone(info["child"])
    restarted = backend.start(timeout=30)
    assert "1 process left in the group of exited pid" in restarted.action
    assert gone(info["child"])


def test_the_table_names_the_backend_and_its_secrets(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.toml"
    table = f"""
[sentinel]
state_dir = "{tmp_path}/state"

[probes.app]
kind = "http"
url = "http://127.0.0.1:1/"
signals.app_up = {{ unit = "bool", measure = "up" }}

[[rules]]
name = "app_wont_start"
signal = "app_up"
kind = "threshold"
severity = "immediate"
below = 1
playbook = "high_error_rate"

[playbooks.high_error_rate]
scenario = "Scenario 2"
application = "previous_release"

[rollback.application]
kind = "process"
name = "spek-app"
command = ["python3", "-m", "spek_app", "serve", "--version", "{{release}}"]
env = {{ SPEK_APP_PORT = "3000" }}
env_from = {{ SPEK_APP_DSN = "SPEK_DB_DSN" }}
releases = ["v1.0.0", "v1.1.0"]
stop_grace = "3s"
ready_url = "http://127.0.0.1:3000/healthz"
"""
    path.write_text(table, encoding="utf-8")
    config = load_config(str(path))
    with pytest.raises(ConfigError) as caught:
        app_backend(config.model.rollback, {}, tmp_path / "state")
    [problem] = caught.value.problems
    assert "rollback.application.env_from.SPEK_APP_DSN" in str(problem)
    backend = app_backend(config.model.rollback, {"SPEK_DB_DSN": "postgresql://x"}, tmp_path)
    assert isinstance(backend, ProcessBackend)
    assert backend.pid_file == tmp_path / "apps" / "spek-app.pid"
    assert backend.target_exists("v1.1.0") and not backend.target_exists("v2.0.0-errors")

    for wrong, reason in (
        ('releases = ["v1.0.0", "v1.1.0"]', "exactly one"),
        ('env = { SPEK_APP_PORT = "3000" }', "env and env_from take environment variable names"),
    ):
        broken = {
            'releases = ["v1.0.0", "v1.1.0"]': table.replace(
                "releases =", 'target_exists_command = ["true"]\nreleases ='
            ),
            'env = { SPEK_APP_PORT = "3000" }': table.replace(
                "env_from = { SPEK_APP_DSN", 'env_from = { "postgresql://u:p@h/db"'
            ),
        }[wrong]
        path.write_text(broken, encoding="utf-8")
        with pytest.raises(ConfigError, match=reason) as error:
            load_config(str(path))
        assert "postgresql://u:p@h/db" not in str(error.value)


def test_spek_sentinel_rollback_with_the_process_backend(site: Site) -> None:
    """``spek-sentinel rollback`` end to end: stop, put the previous release in place, restart,
    verify with the table's own health probe; the release history records where it landed."""
    state = site.tmp / "state"
    path = site.tmp / "thresholds.toml"
    path.write_text(
        f"""
[sentinel]
state_dir = "{state}"

[probes.app]
kind = "http"
url = "{site.url}"
timeout = "2s"
start_grace = "0s"
signals.app_up = {{ unit = "bool", measure = "up" }}

[[rules]]
name = "app_wont_start"
signal = "app_up"
kind = "threshold"
severity = "immediate"
below = 1
playbook = "high_error_rate"

[playbooks.high_error_rate]
scenario = "Scenario 2: high error rate after deployment"
application = "previous_release"

[rollback]
backup_dir = "{site.tmp}/backups"
incidents_dir = "{site.tmp}/incidents"
step_timeout = "60s"

[rollback.application]
kind = "process"
name = "web"
command = ["{sys.executable}", "{APP}", "{{release}}", "{site.port}", "{site.info}"]
env_from = {{ APP_SECRET = "T_APP_SECRET" }}
releases = ["v1", "v2"]
ready_url = "{site.url}"
""",
        encoding="utf-8",
    )
    backend = site.backend(state_dir=state / "apps")
    deploy(backend, "v2")
    store = StateStore.in_dir(state)
    try:
        store.record_release("v1", 1000.0, "deploy")
        store.mark_healthy(1000.0, True, 0)
        store.record_release("v2", 2000.0, "deploy")
    finally:
        store.close()
    os.environ["T_APP_SECRET"] = SECRET
    try:
        code = main(["rollback", "-c", str(path), "--playbook", "high_error_rate", "--yes"])
    finally:
        del os.environ["T_APP_SECRET"]
    assert code == 0
    assert site.answer() == "v1" and backend.current_release() == "v1"
    [report] = (site.tmp / "incidents").glob("*.md")
    text = report.read_text()
    for step in ("stop traffic", "application rollback", "restart", "verify"):
        assert f"| {step} | succeeded |" in text
    assert SECRET not in text
    store = StateStore.in_dir(state)
    try:
        assert [(r.version, r.source) for r in store.releases()][:1] == [("v1", "rollback")]
    finally:
        store.close()
