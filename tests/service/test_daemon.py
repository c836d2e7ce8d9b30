"""``spek-sentinel run`` as a real process against real services on one node: it serves every
endpoint (a real Prometheus scrapes it), pages a breach to a local webhook receiver and takes an
acknowledgement over HTTP, reloads on SIGHUP only a valid table, stops on SIGTERM, refuses to
start without a secret, and after a SIGKILL in the middle of a rollback step resumes the
rollback from its journal instead of starting it over.

The watched "application" is a command backend writing files under the test's directory; its
health URL and the pager are local HTTP receivers. Probe intervals are 1 s and the evaluate
rule holds for 3 s; the daemon's own tick (5 s) paces pages and answers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.daemon import DaemonProcess, daemon_environ, reap_group
from harness.http_receiver import HttpReceiver, Received
from harness.ports import free_port
from harness.prometheus_server import PrometheusServer
from harness.wait import wait_until
from spek_sentinel.paging.webhook import verify_signature
from spek_sentinel.rollback.journal import Journal, RunRecord, StepRecord
from spek_sentinel.store.sqlite import STATE_FILE, SqliteStore
from spek_sentinel.store.state import POLICY, StateDocuments

TOKEN = "daemon-test-api-token-7f3c1b9e"  # noqa: S105 -- test values
WEBHOOK_SECRET = "daemon-test-webhook-secret-42ab77"  # noqa: S105
SECRETS = {"T_API_TOKEN": TOKEN, "T_WEBHOOK_SECRET": WEBHOOK_SECRET}
AUTH = {"Authorization": f"Bearer {TOKEN}"}

TABLE = """
[sentinel]
state_dir = "{state}"
cooldown = "1h"
veto_window = "0s"

[api]
listen = "127.0.0.1:{port}"
token_env = "T_API_TOKEN"

[probes.client]
kind = "pushed"
interval = "1s"
signals.render_fps = {{ unit = "fps", measure = "value" }}
signals.security_breach = {{ unit = "count", measure = "event" }}
signals.migration_failed = {{ unit = "count", measure = "event" }}

[probes.app]
kind = "http"
url = "{health}/healthz"
interval = "1s"
start_grace = "0s"
timeout = "2s"
signals.app_up = {{ unit = "bool", measure = "up" }}

[playbooks.performance]
scenario = "Scenario 4: performance degradation"
stop_first = true
application = "previous_release"

[[rules]]
name = "low_render_fps"
signal = "render_fps"
kind = "threshold"
severity = "evaluate"
below = 30
for = "3s"
playbook = "performance"

[[rules]]
name = "security_breach"
signal = "security_breach"
kind = "event"
severity = "immediate"
playbook = "performance"

[rollback]
backup_dir = "{tmp}/backups"
incidents_dir = "{tmp}/incidents"
step_timeout = "60s"

[rollback.application]
kind = "command"
stop_command = ["sh", "-c", "echo stopped >> {tmp}/stops.log"]
rollback_command = ["sh", "{tmp}/rollback.sh", "{{release}}"]
start_command = ["sh", "-c", "echo running >> {tmp}/starts.log"]
current_release_command = ["cat", "{tmp}/app.release"]
target_exists_command = ["true"]

[pagers.relay]
type = "webhook"
url = "{relay}/page"
secret_env = "T_WEBHOOK_SECRET"

[escalation]
renotify_every = "0s"

[[escalation.levels]]
name = "development_team"
contacts = ["#spek-oncall"]
pagers = ["relay"]
after = "0s"

[notices]
pagers = ["relay"]
{extra}"""

# The rollback command: notes its start (and its pid), holds until the test creates "go",
# then puts the release in place. A daemon killed while it holds has not finished the step.
ROLLBACK_SCRIPT = """\
echo "started $$" >> "{tmp}/rollbacks.log"
i=0  # wait for the test's "go", at most 60 s; without it the step fails
until [ -e "{tmp}/go" ] || [ "$i" -ge 600 ]; do sleep 0.1; i=$((i+1)); done
[ -e "{tmp}/go" ] || exit 3
echo "$1" > "{tmp}/app.release"
"""

# The app's migrate command: notes each call (and its pid); "down" holds until "go" exists.
MIGRATE_SCRIPT = """\
echo "$1 $$" >> "{tmp}/migrations.log"
if [ "$1" = status ]; then exit 0; fi
i=0  # wait for the test's "go", at most 60 s; without it the step fails
until [ -e "{tmp}/go" ] || [ "$i" -ge 600 ]; do sleep 0.1; i=$((i+1)); done
[ -e "{tmp}/go" ] || exit 3
"""

# Scenario 1: migrate the database down one step (not idempotent, destructive: it needs the
# verified emergency backup first), then the previous release. A real PostgreSQL is backed up.
MIGRATION = """
[playbooks.migration]
scenario = "Scenario 1: migration failed during deployment"
database = ["migrate_down"]
application = "previous_release"

[[rules]]
name = "migration_failed"
signal = "migration_failed"
kind = "event"
severity = "immediate"
playbook = "migration"

[rollback.database]
dsn_env = "T_DATABASE_DSN"
migrate_down_command = ["sh", "{tmp}/migrate.sh", "down"]
migrate_down_all_command = ["sh", "{tmp}/migrate.sh", "down-all"]
migrate_status_command = ["sh", "{tmp}/migrate.sh", "status"]
migrate_cwd = "{tmp}"
"""

VERY_LOW_FPS = """
[[rules]]
name = "very_low_render_fps"
signal = "render_fps"
kind = "threshold"
severity = "evaluate"
below = 5
for = "3s"
playbook = "performance"
"""


class Site:
    """What the daemon watches and pages: a health URL, a webhook receiver, the command
    backend's files, a state dir with a release history, and the table."""

    def __init__(self, tmp: Path, secrets: dict[str, str]) -> None:
        self.tmp = tmp
        self.secrets = secrets
        self.state = tmp / "state"
        self.app = HttpReceiver()
        self.relay = HttpReceiver()
        self.port = free_port()
        self.config = tmp / "thresholds.toml"
        self.daemons: list[DaemonProcess] = []
        self.write_table()
        (tmp / "app.release").write_text("v2-bad\n", encoding="utf-8")
        (tmp / "rollback.sh").write_text(ROLLBACK_SCRIPT.format(tmp=tmp), encoding="utf-8")
        (tmp / "migrate.sh").write_text(MIGRATE_SCRIPT.format(tmp=tmp), encoding="utf-8")
        self.state.mkdir()
        store = SqliteStore.in_dir(self.state)
        try:
            now = time.time()
            store.record_release("v1-good", now - 7200, "deploy")
            store.mark_healthy(now - 7200, True, 0)
            store.record_release("v2-bad", now - 600, "deploy")
        finally:
            store.close()

    def table(self, extra: str = "") -> str:
        return TABLE.format(
            state=self.state,
            port=self.port,
            tmp=self.tmp,
            health=self.app.url,
            relay=self.relay.url,
            extra=extra.format(tmp=self.tmp),
        )

    def write_table(self, text: str | None = None) -> None:
        self.config.write_text(self.table() if text is None else text, encoding="utf-8")

    def daemon(self, secrets: dict[str, str] | None = None) -> DaemonProcess:
        log = self.tmp / f"daemon-{len(self.daemons) + 1}.log"
        made = DaemonProcess(self.config, self.port, secrets or self.secrets, log)
        self.daemons.append(made)
        return made

    def started(self) -> DaemonProcess:
        made = self.daemon()
        made.start()
        return made

    def lines(self, name: str) -> list[str]:
        path = self.tmp / name
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    def pages(self) -> list[Received]:
        return [r for r in self.relay.received if r.path == "/page"]

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()
        self.app.close()
        self.relay.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = Site(tmp_path, SECRETS)
    try:
        yield made
    finally:
        made.close()


def need(binary: str, package: str) -> str:
    found = shutil.which(binary)
    if found is None:
        pytest.fail(f"`{binary}` not found; install the Debian package `{package}`", pytrace=False)
    return found


def rules_by_name(daemon: DaemonProcess) -> dict[str, dict[str, Any]]:
    answer = daemon.get("/api/v1/rules")
    assert answer.status_code == 200
    return {rule["rule"]: rule for rule in answer.json()["rules"]}


def alerts(daemon: DaemonProcess, *, include_resolved: bool = False) -> list[dict[str, Any]]:
    answer = daemon.get("/api/v1/alerts", params={"all": "1" if include_resolved else "0"})
    assert answer.status_code == 200
    listed: list[dict[str, Any]] = answer.json()["alerts"]
    return listed


def breach(daemon: DaemonProcess) -> dict[str, Any]:
    """Low FPS pushed over the API; after 3 s held, the evaluate rule fires and opens an alert."""
    pushed = daemon.post(
        "/api/v1/signals",
        headers=AUTH,
        json={"name": "render_fps", "value": 12, "reason": "client report", "by": "browser"},
    )
    assert pushed.status_code == 201, pushed.text

    def opened() -> dict[str, Any] | None:
        found = [a for a in alerts(daemon) if a["rules"] == ["low_render_fps"]]
        return found[0] if found else None

    alert = wait_until(opened, timeout=20, message="no alert for low_render_fps")
    assert alert["kind"] == "breach"
    assert alert["state"] == "open" and alert["incident"]
    return alert


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- 1. every endpoint, scraped by a real Prometheus --------------------------------------------


def test_the_daemon_serves_every_endpoint_and_a_real_prometheus_scrapes_it(site: Site) -> None:
    daemon = site.started()

    health = daemon.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "alive"})
    ready = daemon.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True and ready.json()["leader"] is True
    assert ready.json()["problems"] == []

    metrics = daemon.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    checked = subprocess.run(
        [need("promtool", "prometheus"), "check", "metrics"],
        input=metrics.content,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()

    rules = rules_by_name(daemon)
    assert set(rules) == {"low_render_fps", "security_breach"}
    assert rules["low_render_fps"]["severity"] == "evaluate"
    assert rules["security_breach"]["severity"] == "immediate"
    assert {rule["state"] for rule in rules.values()} <= {"ok", "unknown", "pending"}
    assert daemon.get("/api/v1/rules").json()["incident"] is None

    releases = daemon.get("/api/v1/releases")
    assert releases.status_code == 200
    versions = {r["version"]: r for r in releases.json()["releases"]}
    assert set(versions) == {"v1-good", "v2-bad"}
    assert versions["v1-good"]["known_good_at"] is not None
    assert versions["v2-bad"]["known_good_at"] is None

    incidents = daemon.get("/api/v1/incidents")
    assert (incidents.status_code, incidents.json()) == (200, {"incidents": []})
    missing = daemon.get("/api/v1/incidents/inc-nope")
    assert missing.status_code == 404 and "inc-nope" in missing.json()["error"]

    need("prometheus", "prometheus")
    prometheus = PrometheusServer([f"127.0.0.1:{site.port}"])
    try:
        prometheus.start()  # waits until up{job="exporter"} is 1: it scraped the daemon
        [built] = prometheus.wait_for("spek_sentinel_build_info")
        assert built["metric"]["instance"] == f"127.0.0.1:{site.port}"
        [up] = prometheus.wait_for(f'up{{instance="127.0.0.1:{site.port}"}} == 1')
        assert up["value"][1] == "1"
    finally:
        prometheus.close()


# -- 2. a breach is paged, acknowledged over the API; a wrong token changes nothing -------------


def test_an_evaluate_breach_is_paged_signed_and_acknowledged_over_the_api(site: Site) -> None:
    daemon = site.started()
    refused = daemon.post(
        "/api/v1/signals", json={"name": "render_fps", "value": 1, "reason": "no token"}
    )
    assert refused.status_code == 401

    alert = breach(daemon)
    incident = alert["incident"]

    def paged() -> Received | None:
        found = [p for p in site.pages() if p.json()["dedup_key"] == incident]
        return found[0] if found else None

    page = wait_until(paged, timeout=20, message="the webhook receiver got no page")
    assert verify_signature(
        WEBHOOK_SECRET,
        page.headers["x-spek-timestamp"],
        page.body,
        page.headers["x-spek-signature"],
        time.time(),
    )
    body = page.json()
    assert (body["kind"], body["rule"], body["urgency"]) == ("trigger", "low_render_fps", "warning")

    url = f"/api/v1/alerts/{alert['id']}/ack"
    for headers in ({}, {"Authorization": "Bearer a-guessed-token"}, {"Authorization": TOKEN}):
        denied = daemon.post(url, headers=headers, json={"by": "mallory"})
        assert denied.status_code == 401, denied.text
        assert denied.headers["www-authenticate"].startswith("Bearer")
    unchanged = daemon.get(f"/api/v1/alerts/{alert['id']}").json()
    assert unchanged["state"] == "open" and unchanged["acked_by"] is None
    assert unchanged["actions"] == []

    acked = daemon.post(url, headers=AUTH, json={"by": "alice", "note": "looking"})
    assert acked.status_code == 200, acked.text
    assert (acked.json()["state"], acked.json()["acked_by"]) == ("acknowledged", "alice")

    def carried_out() -> dict[str, Any] | None:
        shown: dict[str, Any] = daemon.get(f"/api/v1/alerts/{alert['id']}").json()
        [action] = shown["actions"]
        return shown if action["applied_at"] is not None else None

    shown = wait_until(carried_out, timeout=20, message="the daemon never applied the answer")
    assert shown["state"] == "acknowledged" and shown["ack_note"] == "looking"
    assert "acknowledged by alice" in shown["actions"][0]["outcome"]
    acks = wait_until(
        lambda: [p.json() for p in site.pages() if p.json()["kind"] == "acknowledge"],
        timeout=20,
        message="the pager was not told about the acknowledgement",
    )
    assert [a["dedup_key"] for a in acks] == [incident]


# -- 3. SIGHUP: an invalid table is refused, a valid one is taken, the incident is kept ----------


def test_sighup_refuses_an_invalid_table_and_takes_a_valid_one_keeping_the_incident(
    site: Site,
) -> None:
    daemon = site.started()
    alert = breach(daemon)

    site.write_table(site.table().replace("below = 30", 'below = "thirty"'))
    daemon.send(signal.SIGHUP)
    refusal = wait_until(
        lambda: daemon.logged("reload refused"), timeout=15, message="no 'reload refused' log"
    )
    assert refusal[0]["level"] == "error"
    assert "rules[0].below: 'thirty'" in refusal[0]["event"]
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert daemon.get("/readyz").status_code == 200
    assert set(rules_by_name(daemon)) == {"low_render_fps", "security_breach"}

    site.write_table(site.table(VERY_LOW_FPS))
    daemon.send(signal.SIGHUP)
    wait_until(lambda: daemon.logged("reloaded"), timeout=20, message="no 'reloaded' log")
    rules = wait_until(
        lambda: rules_by_name(daemon),
        timeout=10,
        message="the reloaded daemon does not answer",
        ignore=(httpx.HTTPError, AssertionError),
    )
    assert set(rules) == {"low_render_fps", "security_breach", "very_low_render_fps"}
    assert daemon.get("/api/v1/rules").json()["incident"] == alert["incident"]
    [still] = [a for a in alerts(daemon) if a["incident"] == alert["incident"]]
    assert (still["id"], still["state"]) == (alert["id"], "open")
    ready = wait_until(
        lambda: daemon.get("/readyz").status_code == 200,
        timeout=10,
        message="not ready after the reload",
        ignore=(httpx.HTTPError,),
    )
    assert ready


# -- 4. SIGTERM --------------------------------------------------------------------------------


def test_sigterm_stops_the_daemon_with_exit_0(site: Site) -> None:
    daemon = site.started()
    daemon.send(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0
    assert daemon.logged("stop requested") and daemon.logged("stopped")
    assert not listening(site.port)


# -- a missing secret ----------------------------------------------------------------------------


def test_a_missing_secret_stops_run_before_it_serves(site: Site) -> None:
    daemon = site.daemon(secrets={"T_API_TOKEN": TOKEN})  # no T_WEBHOOK_SECRET
    daemon.spawn()
    assert daemon.wait(timeout=15) == 1
    output = daemon.tail()
    assert "T_WEBHOOK_SECRET" in output and "not set" in output
    assert WEBHOOK_SECRET not in output
    assert not daemon.logged("Uvicorn running") and not daemon.logged("watching")
    assert not listening(site.port)


def test_a_missing_rollback_database_secret_stops_run_before_it_serves(site: Site) -> None:
    """Found at start, not in the middle of an incident when the rollback is planned."""
    site.write_table(site.table(MIGRATION))
    daemon = site.daemon()  # no T_DATABASE_DSN
    daemon.spawn()
    assert daemon.wait(timeout=15) == 1
    assert "T_DATABASE_DSN" in daemon.tail() and "rollback.database" in daemon.tail()
    assert not daemon.logged("watching")
    assert not listening(site.port)


# -- 5. SIGKILL in the middle of a rollback step -------------------------------------------------


def journal_state(state: Path, incident: str) -> tuple[RunRecord | None, dict[int, StepRecord]]:
    journal = Journal.in_dir(state)
    try:
        return journal.run(incident), journal.steps(incident)
    finally:
        journal.close()


def all_runs(state: Path) -> list[RunRecord]:
    journal = Journal.in_dir(state)
    try:
        return journal.runs()
    finally:
        journal.close()


def saved_policy(state: Path) -> dict[str, Any]:
    documents = StateDocuments.in_dir(state)
    try:
        saved = documents.load(POLICY)
    finally:
        documents.close()
    assert saved is not None
    return saved


def push_event(site: Site, name: str, reason: str) -> None:
    """The ``spek-sentinel signal`` command, as an operator runs it."""
    command = [sys.executable, "-m", "spek_sentinel.cli", "signal", "-c", str(site.config)]
    done = subprocess.run(
        [*command, name, "--reason", reason, "--by", "secops"],
        env=daemon_environ(site.secrets),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@dataclass(frozen=True)
class Crash:
    """What was true when the daemon was SIGKILLed inside the application rollback step."""

    incident: str
    alert_id: int
    steps: dict[int, StepRecord]
    policy: dict[str, Any]


def kill_inside(site: Site, daemon: DaemonProcess, event: str, step: str, marker: str) -> Crash:
    """A confirmed ``event`` starts an immediate rollback at once (veto window 0s); once the
    journal shows ``step`` claimed and its command has written its first line to ``marker``,
    SIGKILL the daemon, and the command with it."""
    push_event(site, event, f"{event} confirmed")

    def rollback_alert() -> dict[str, Any] | None:
        found = [a for a in alerts(daemon) if a["kind"] == "rollback"]
        return found[0] if found else None

    alert = wait_until(rollback_alert, timeout=20, message="no rollback alert")
    incident = alert["incident"]

    def inside() -> dict[int, StepRecord] | None:
        _, steps = journal_state(site.state, incident)
        claimed = [s for s in steps.values() if s.name == step and s.status == "claimed"]
        return steps if claimed and site.lines(marker) else None

    steps = wait_until(inside, timeout=30, message=f"the rollback never got to {step}")
    policy = saved_policy(site.state)
    daemon.kill()  # SIGKILL, then reaped: the executor's pid is certainly gone
    # a crash takes the step's command down with the daemon (same container or host)
    [started] = site.lines(marker)
    reap_group(int(started.split()[1]))
    return Crash(incident, alert["id"], steps, policy)


def test_a_rollback_killed_mid_step_is_resumed_from_its_journal_not_started_over(
    site: Site,
) -> None:
    crash = kill_inside(
        site, site.started(), "security_breach", "application rollback", "rollbacks.log"
    )
    incident = crash.incident
    assert [(s.name, s.status) for s in crash.steps.values()] == [
        ("document the incident", "succeeded"),
        ("pre-flight", "succeeded"),
        ("stop traffic", "succeeded"),
        ("application rollback", "claimed"),
    ]
    assert crash.policy["rollback_running"] is True
    assert crash.policy["incident"]["id"] == incident
    assert crash.policy["last_rollback_at"] is not None  # the cooldown runs from here
    assert site.lines("app.release") == ["v2-bad"]

    (site.tmp / "go").touch()  # from now on the rollback command finishes
    second = site.started()
    restored = wait_until(
        lambda: second.logged("policy state restored"), timeout=10, message="no restore log"
    )
    assert f"incident {incident}" in restored[0]["event"]
    assert second.logged(f"rollback of {incident} was running or decided at the restart")

    def ended() -> RunRecord | None:
        run, _ = journal_state(site.state, incident)
        return run if run is not None and run.status != "running" else None

    run = wait_until(ended, timeout=60, message="the resumed rollback never ended")
    assert [r.incident_id for r in all_runs(site.state)] == [incident]  # one run, not two
    # "application rollback" is idempotent and not destructive: the executor runs the
    # interrupted step again (attempt 2) and the run succeeds; no halt, no run_halted alert
    assert (run.status, run.reason) == ("succeeded", "")
    _, steps = journal_state(site.state, incident)
    assert [(s.name, s.status, s.attempt) for s in steps.values()] == [
        ("document the incident", "succeeded", 1),
        ("pre-flight", "succeeded", 1),
        ("stop traffic", "succeeded", 1),
        ("application rollback", "succeeded", 2),
        ("restart", "succeeded", 1),
        ("verify", "succeeded", 1),
    ]
    assert [steps[i] for i in range(3)] == [crash.steps[i] for i in range(3)]  # untouched
    assert site.lines("stops.log") == ["stopped"]  # a finished step did not run again
    assert [line.split()[0] for line in site.lines("rollbacks.log")] == ["started", "started"]
    assert site.lines("app.release") == ["v1-good"]
    assert site.lines("starts.log") == ["running"]

    everything = alerts(second, include_resolved=True)
    assert not [a for a in everything if a["dedup_key"].startswith(f"rollback:{incident}:")]
    [same] = [a for a in everything if a["kind"] == "rollback"]
    assert (same["id"], same["incident"]) == (crash.alert_id, incident)
    assert second.get("/api/v1/rules").json()["incident"] == incident
    policy = wait_until(
        lambda: (saved := saved_policy(site.state))["rollback_running"] is False and saved,
        timeout=10,
        message="the policy still says the rollback is running",
    )
    assert policy["last_rollback_at"] == crash.policy["last_rollback_at"]  # cooldown kept
    assert policy["incident"]["id"] == incident

    def told(what: str) -> list[str]:
        notices = [p.json()["summary"] for p in site.pages() if p.json()["kind"] == "info"]
        return [n for n in notices if what in n]

    [resumed] = wait_until(
        lambda: told("resumed after a restart"), timeout=20, message="no 'resumed' notice"
    )
    assert resumed.startswith(f"rollback of {incident} (performance) resumed after a restart")
    wait_until(lambda: told("finished"), timeout=20, message="no 'finished' notice")
    assert told(f"rollback of {incident} (performance) started")  # by the first daemon
    listed = second.get("/api/v1/incidents").json()["incidents"]
    assert [(i["incident"], i["status"]) for i in listed] == [(incident, "succeeded")]
    report = second.get(f"/api/v1/incidents/{incident}")
    assert report.status_code == 200 and "application rollback" in report.json()["report_markdown"]


def hand_run_to_a_live_pid(state: Path, incident: str) -> None:
    """Make the journal name a live process as the run's holder: the killed daemon's pid was
    reused by another process (here: this test's). The executor cannot tell it from a live
    executor, so it must not take the run over."""
    with closing(sqlite3.connect(state / STATE_FILE)) as db, db:
        [owner] = db.execute(
            "SELECT owner FROM rollback_runs WHERE incident_id = ?", (incident,)
        ).fetchone()
        host, _, nonce = owner.split(":")
        db.execute(
            "UPDATE rollback_runs SET owner = ? WHERE incident_id = ?",
            (f"{host}:{os.getpid()}:{nonce}", incident),
        )


def test_a_rollback_a_live_process_may_still_hold_is_left_alone_and_paged(site: Site) -> None:
    crash = kill_inside(
        site, site.started(), "security_breach", "application rollback", "rollbacks.log"
    )
    incident = crash.incident
    hand_run_to_a_live_pid(site.state, incident)
    (site.tmp / "go").touch()

    second = site.started()
    key = f"rollback:{incident}:refused"

    def paged() -> list[dict[str, Any]]:
        return [a for a in alerts(second) if a["dedup_key"] == key]

    [alert] = wait_until(paged, timeout=20, message=f"no {key} alert")
    assert (alert["urgency"], alert["incident"], alert["state"]) == ("critical", incident, "open")
    assert "may still be running" in alert["summary"]
    run, steps = journal_state(site.state, incident)
    assert run is not None and run.status == "running"  # fail closed: nothing taken over
    assert steps == crash.steps
    assert len(site.lines("rollbacks.log")) == 1 and site.lines("app.release") == ["v2-bad"]
    wait_until(
        lambda: [p for p in site.pages() if p.json()["dedup_key"] == key],
        timeout=20,
        message="the refusal was not paged",
    )


@pytest.fixture
def migration_site(tmp_path: Path, postgres_db: str) -> Iterator[Site]:
    made = Site(tmp_path, {**SECRETS, "T_DATABASE_DSN": postgres_db})
    try:
        made.write_table(made.table(MIGRATION))
        yield made
    finally:
        made.close()


def test_a_destructive_step_killed_mid_run_halts_the_rollback_and_pages(
    migration_site: Site,
) -> None:
    site = migration_site
    step = "migrate down one step"
    crash = kill_inside(site, site.started(), "migration_failed", step, "migrations.log")
    incident = crash.incident
    assert [(s.name, s.status) for s in crash.steps.values()] == [
        ("document the incident", "succeeded"),
        ("pre-flight", "succeeded"),
        ("emergency backup and verify", "succeeded"),
        ("stop traffic", "succeeded"),
        (step, "claimed"),
    ]
    [claimed] = [s for s in crash.steps.values() if s.name == step]
    assert (claimed.idempotent, claimed.destructive) == (False, True)
    (site.tmp / "go").touch()  # were the migration run again, it would finish now

    second = site.started()

    def ended() -> RunRecord | None:
        run, _ = journal_state(site.state, incident)
        return run if run is not None and run.status != "running" else None

    run = wait_until(ended, timeout=30, message="the resumed rollback never ended")
    # not idempotent: the executor cannot prove the migration finished, so the run halts
    # there and nothing after it runs
    assert run.status == "halted"
    assert run.reason.startswith(f"cannot prove step {step} finished; a human must check")
    assert [r.incident_id for r in all_runs(site.state)] == [incident]
    _, steps = journal_state(site.state, incident)
    assert steps == crash.steps  # the claimed step stays claimed; nothing else was claimed
    assert site.lines("migrations.log")[0].split()[0] == "down"
    assert len(site.lines("migrations.log")) == 1  # the migration did not run again
    assert site.lines("stops.log") == ["stopped"]
    assert site.lines("rollbacks.log") == [] and site.lines("app.release") == ["v2-bad"]
    assert len(list((site.tmp / "backups").glob("emergency_*.dump"))) == 1  # one backup

    key = f"rollback:{incident}:run_halted"
    [halted] = wait_until(
        lambda: [a for a in alerts(second) if a["dedup_key"] == key],
        timeout=20,
        message=f"no {key} alert",
    )
    assert (halted["urgency"], halted["incident"], halted["state"]) == (
        "critical",
        incident,
        "open",
    )
    assert f"HALTED at {step}" in halted["summary"] and "DO NOT PROCEED" in halted["summary"]
    [same] = [a for a in alerts(second) if a["dedup_key"] == incident]
    assert same["id"] == crash.alert_id  # the incident's own alert, not a second one
    policy = saved_policy(site.state)
    assert policy["last_rollback_at"] == crash.policy["last_rollback_at"]
    assert policy["incident"]["id"] == incident
    wait_until(
        lambda: [p for p in site.pages() if p.json()["dedup_key"] == key],
        timeout=20,
        message="the halt was not paged",
    )


def test_sigterm_mid_rollback_finishes_the_step_then_the_next_start_resumes_after_it(
    site: Site,
) -> None:
    first = site.started()
    push_event(site, "security_breach", "security_breach confirmed")
    [alert] = wait_until(lambda: [a for a in alerts(first) if a["kind"] == "rollback"], timeout=20)
    incident = alert["incident"]

    def inside() -> bool:
        _, steps = journal_state(site.state, incident)
        claimed = [s for s in steps.values() if s.name == "application rollback"]
        return bool(claimed) and bool(site.lines("rollbacks.log"))

    wait_until(inside, timeout=30, message="the rollback never got to the application step")
    first.send(signal.SIGTERM)
    wait_until(lambda: first.logged("stop requested"), timeout=10)
    (site.tmp / "go").touch()  # the step in flight finishes; the daemon stops after it
    assert first.wait(timeout=30) == 0
    assert first.logged(f"rollback of {incident} checkpointed for the stop")
    run, steps = journal_state(site.state, incident)
    assert run is not None and run.status == "running"  # checkpointed, not halted
    assert [(s.name, s.status) for s in steps.values()][-1] == (
        "application rollback",
        "succeeded",
    )

    second = site.started()

    def ended() -> RunRecord | None:
        found, _ = journal_state(site.state, incident)
        return found if found is not None and found.status != "running" else None

    assert wait_until(ended, timeout=60).status == "succeeded"
    _, steps = journal_state(site.state, incident)
    assert all(s.attempt == 1 for s in steps.values())  # nothing ran twice
    assert [line.split()[0] for line in site.lines("rollbacks.log")] == ["started"]
    assert site.lines("app.release") == ["v1-good"]

    def told(what: str) -> list[str]:
        notices = [p.json()["summary"] for p in site.pages() if p.json()["kind"] == "info"]
        return [n for n in notices if what in n]

    wait_until(lambda: told("resumed after a restart"), timeout=20, message="no resume notice")
    [restarted] = wait_until(lambda: told(": restart done"), timeout=20, message="no notice")
    assert "downtime so far" in restarted  # counted from the first daemon's stop
    assert second.get("/api/v1/rules").json()["incident"] == incident
