"""End to end: a bad release goes out and production comes back by itself.

Each of the runbook's five scenarios (../shared/SEED-rollback-procedure.md, "Common Scenarios")
runs against a site of its own (tests/e2e/sites.py): the sample SPEK app as a container on real
PostgreSQL and Redis containers, a real Prometheus scraping it, spek-sentinel as a daemon
subprocess watching it all with windows of seconds, pages going to a local webhook receiver.
v1.1.0 is the known-good release (recorded with ``spek-sentinel release record``, marked known
good by the daemon); a deploy records the bad release (taking the pre-deployment backup) and
replaces the container with one of the bad image. Each test asserts what its scenario asks
for, the page, the incident report, the metrics and the downtime figure; the last one takes
Prometheus away during a healthy release: "sentinel blind", and no rollback.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from e2e.sites import AUTH, GOOD, Site
from harness.spek_app import admin_token, fingerprint, get, sample
from spek_sentinel.domain.units import format_duration

pytestmark = pytest.mark.timeout(600)

DOWNTIME_TARGET = 300.0  # the table's downtime_target (the runbook's "target: 5 minutes")
BEFORE = ["document the incident", "pre-flight", "emergency backup and verify", "stop traffic"]
AFTER = ["restart", "verify"]


# -- what every rollback leaves behind ------------------------------------------------------


def rolled_back(site: Site, playbook: str, steps: list[str]) -> tuple[str, float]:
    """The one rollback run ended well: the journal's steps, the incident report, the
    stakeholders' notices and the daemon's metrics agree on it and on its downtime. Returns
    the incident and the downtime in seconds."""
    run = site.wait_run()
    incident = run["incident"]
    report = site.report(incident)
    assert run["status"] == "succeeded", report
    downtime = run["downtime"]
    assert isinstance(downtime, float)
    assert 0 < downtime < DOWNTIME_TARGET, report

    record, journal = site.journal(incident)
    assert record is not None and record.downtime == downtime
    assert [(s.name, s.status) for s in journal.values()] == [(s, "succeeded") for s in steps]
    stop = next(s for s in journal.values() if s.name == "stop traffic")
    verify = next(s for s in journal.values() if s.name == "verify")
    assert stop.ended_at is not None and verify.ended_at is not None
    assert record.downtime_started_at == pytest.approx(stop.claimed_at, abs=0.5)
    assert record.downtime_ended_at == pytest.approx(verify.ended_at, abs=0.5)

    assert "- Status: **succeeded**" in report
    assert f"- Playbook: {playbook}" in report
    assert (
        f"- Downtime: {format_duration(downtime)} (within target; target 5m, budget 10m)" in report
    )
    for index, step in enumerate(steps, start=1):
        assert f"| {index} | {step} | succeeded |" in report, report
    assert "- Backup: `" in report and "emergency_" in report  # the backup it stood on

    def finished() -> list[str]:
        return [n for n in site.notices() if n.startswith(f"rollback of {incident} ({playbook})")]

    def told_finished() -> list[str] | None:
        said = finished()
        return said if any(" finished" in n for n in said) else None

    told = site.until(told_finished, "the stakeholders told the rollback finished", 30)
    assert told[0].startswith(f"rollback of {incident} ({playbook}) started; steps: ")
    [end] = [n for n in told if " finished" in n]
    assert f"downtime {downtime:.0f}s, within the target of 300s (budget 600s)" in end

    metrics = site.metrics()
    assert sample(metrics, "spek_sentinel_rollbacks_total", playbook=playbook, outcome="succeeded")
    assert counted_rollbacks(metrics) == {(playbook, "succeeded"): 1.0}
    assert sample(metrics, "spek_sentinel_downtime_seconds_count", playbook=playbook) == 1
    assert sample(metrics, "spek_sentinel_downtime_seconds_sum", playbook=playbook) == (
        pytest.approx(downtime, abs=1e-3)
    )
    return incident, downtime


def counted_rollbacks(metrics: dict[str, Any]) -> dict[tuple[str, str], float]:
    """spek_sentinel_rollbacks_total's non-zero series: (playbook, outcome) -> count."""
    return {
        (s.labels["playbook"], s.labels["outcome"]): s.value
        for s in metrics["spek_sentinel_rollbacks"].samples
        if s.name == "spek_sentinel_rollbacks_total" and s.value
    }


def paged(site: Site, key: str, kind: str = "trigger", rule: str | None = None) -> dict[str, Any]:
    """The page of ``kind`` (about ``rule``) on-call got for the alert ``key``: there is one."""

    def found() -> list[dict[str, Any]]:
        return [
            p
            for p in site.pages()
            if p["dedup_key"] == key and p["kind"] == kind and rule in (None, p["rule"])
        ]

    [page] = site.until(found, f"a {kind} page for {key}", 30)
    return page


def rollback_page(site: Site, incident: str, rule: str, playbook: str) -> dict[str, Any]:
    page = paged(site, incident, rule=rule)
    assert (page["playbook"], page["urgency"]) == (playbook, "critical")
    assert page["summary"].startswith(f"{rule} firing: automatic rollback with playbook {playbook}")
    alert = next(a for a in site.alerts() if a["dedup_key"] == incident)
    assert alert["kind"] == "rollback" and rule in alert["rules"]
    return page


def resolved(site: Site, incident: str) -> dict[str, Any]:
    """The incident closed once its rules cleared, and on-call heard so."""
    page = paged(site, incident, "resolve")
    summary = page["summary"]
    assert summary.startswith("resolved: ") and f"incident {incident} closed" in summary
    return page


def restored_from(site: Site, incident: str) -> Path:
    """The backup the run's "database restore" step restored: the one dump of the backup dir
    its plan and its output name."""
    record, journal = site.journal(incident)
    assert record is not None
    [planned] = [s for s in json.loads(record.plan)["steps"] if s["name"] == "database restore"]
    [step] = [s for s in journal.values() if s.name == "database restore"]
    said = f"{planned['detail']}\n{step.output}"
    [source] = [dump for dump in site.backups.glob("*.dump") if dump.name in said]
    assert source.name in step.output, step.output
    return source


def step_output(site: Site, incident: str, name: str) -> str:
    _, journal = site.journal(incident)
    [step] = [s for s in journal.values() if s.name == name]
    return step.output


def pushed_signals(site: Site, name: str) -> list[dict[str, Any]]:
    """The open pushed signals named ``name`` (GET /api/v1/signals)."""
    return [s for s in site.api("/api/v1/signals")["signals"] if s["name"] == name]


def docker_time(text: str) -> float:
    """Docker's RFC 3339 time with nanoseconds, as Unix seconds."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*Z$", r"\1+00:00", text)).timestamp()


def damaged_databases(site: Site) -> list[str]:
    return [name for name in site.databases() if name.startswith("spek_db_damaged_")]


# -- the monitoring backend goes away during a healthy release -------------------------------


@pytest.mark.parametrize("site", ["blind"], indirect=True)
def test_prometheus_down_pages_sentinel_blind_and_never_rolls_back(site: Site) -> None:
    assert site.prometheus is not None
    container = site.inspect()["Id"]
    site.prometheus.stop()
    # the rules on Prometheus' signals lose sight; the validation checks only watch after a
    # rollback, so the signal only they read may or may not page
    watched = {"blind:error_rate", "blind:api_latency_p95_floored"}
    blind = {*watched, "blind:api_latency_p95"}

    def blind_pages() -> list[dict[str, Any]]:
        found = [p for p in site.pages() if p["dedup_key"] in blind and p["kind"] == "trigger"]
        return found if watched <= {p["dedup_key"] for p in found} else []

    pages = site.until(blind_pages, "blind pages", 60)
    for page in pages:
        assert page["urgency"] == "critical" and page["incident"] is None
        assert page["summary"].startswith("sentinel blind"), page
    rules = site.rules()
    assert rules["high_error_rate"]["state"] == "unknown" and rules["high_error_rate"]["blind"]
    assert site.health()["version"] == GOOD  # the app itself is fine all along

    site.prometheus.start()
    for key in sorted({page["dedup_key"] for page in pages}):
        paged(site, key, "resolve")
    site.wait_rules_ok()

    # not seeing is not a breach: nothing was rolled back, nothing but blindness was paged
    assert site.incidents() == []
    assert not [a for a in site.alerts() if a["kind"] == "rollback"]
    assert {p["dedup_key"] for p in site.pages() if p["urgency"] == "critical"} <= blind
    assert counted_rollbacks(site.metrics()) == {}
    assert site.inspect()["Id"] == container and site.inspect()["State"]["Running"]
    assert site.replaced() == []
    assert site.traffic is not None and site.traffic.statuses[500] == 0


# -- scenario 1: migration failed during deployment ------------------------------------------


@pytest.mark.parametrize("site", ["migration_failed"], indirect=True)
def test_a_failed_migration_is_rolled_back_with_the_pre_migration_data_and_release(
    site: Site,
) -> None:
    markers = site.write_markers()
    assert site.audited(markers) == [m.id for m in markers]
    deployed = time.time()
    # release record takes the pre-deployment backup; the new container runs migration 004,
    # which fails halfway: the app pushes migration_failed to the sentinel and exits 1
    app = site.deploy("v2.0.0-badmigration", wait=False)

    steps = [*BEFORE, "migrate down one step", "database restore", "application rollback", *AFTER]
    incident, _ = rolled_back(site, "migration_failed", steps)
    rollback_page(site, incident, "migration_failed", "migration_failed")
    [pushed] = pushed_signals(site, "migration_failed")
    assert pushed["by"] == "spek-app v2.0.0-badmigration"
    assert "004_add_task_priority" in pushed["reason"]
    app.container.reload()
    assert app.container.attrs["State"]["ExitCode"] == 1

    # the previous release runs on the schema it knows, with the data from before the deploy
    health = site.wait_serving(GOOD)
    assert (health["schema"], health["database"]) == (3, "ok")
    versions = site.sql("SELECT version FROM schema_migrations ORDER BY version")
    assert versions == [(1,), (2,), (3,)]
    assert not site.sql(
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'agent_tasks'"
        " AND column_name = 'priority'"
    )
    assert site.markers_present(markers) == markers
    assert site.audited(markers) == [m.id for m in markers]  # 003's table and rows are back
    migrated = step_output(site, incident, "migrate down one step")
    assert migrated.startswith("migrated down 3 -> 2 (1 step: 003_add_audit_logs.down.sql)")
    source = restored_from(site, incident)  # taken by release record, before 004 ran
    assert source.name.startswith("pre_deployment_") and source.stat().st_mtime > deployed
    assert len(damaged_databases(site)) == 1  # what the failed deploy left, kept for forensics

    # the operator confirms the failure is handled: the incident closes
    site.cli(["signal"], "migration_failed", "--resolve", "--reason", "rolled back", "--by", "ops")
    resolved(site, incident)


# -- scenario 2: high error rate after deployment --------------------------------------------


@pytest.mark.parametrize("site", ["high_error_rate"], indirect=True)
def test_a_high_error_rate_brings_back_the_previous_image_with_the_data_intact(
    site: Site,
) -> None:
    markers = site.write_markers()
    [(rows_before, last_id)] = site.sql("SELECT count(*), max(id) FROM agent_tasks")
    site.deploy("v2.0.0-errors")  # 30% of /api/* answer 500

    steps = [*BEFORE, "application rollback", *AFTER]
    incident, _ = rolled_back(site, "high_error_rate", steps)
    page = rollback_page(site, incident, "high_error_rate", "high_error_rate")
    assert float(page["value"]) > 0.05 and "held 5s" in page["evidence"]

    assert site.wait_serving(GOOD)["version"] == GOOD
    assert site.inspect()["Config"]["Image"] == f"spek-sample/app:{GOOD}"
    [kept] = site.replaced()  # the bad release's container, stopped and kept
    assert kept["Config"]["Image"] == "spek-sample/app:v2.0.0-errors"
    assert kept["State"]["Status"] == "exited"
    assert kept["HostConfig"]["RestartPolicy"]["Name"] in ("", "no")
    # nothing written before the deploy was lost
    assert site.markers_present(markers) == markers
    assert site.audited(markers) == [m.id for m in markers]
    [(still_there,)] = site.sql("SELECT count(*) FROM agent_tasks WHERE id <= %s", last_id)
    assert still_there == rows_before
    # and the error rate comes down: the rule clears and the incident closes by itself
    resolved(site, incident)


# -- scenario 3: data corruption detected ----------------------------------------------------


@pytest.mark.parametrize("site", ["data_corruption"], indirect=True)
def test_corrupted_data_is_replaced_by_the_last_known_good_backup_and_the_damage_kept(
    site: Site,
) -> None:
    markers = site.write_markers()
    written = time.time()
    # the daemon's routine last-known-good backup (every 20 s while every rule is OK) holding
    # the markers; the deploy follows it at once, so the next one cannot catch corrupt rows
    backup = site.wait_routine_backup(newer_than=written)
    deployed = time.time()
    site.deploy("v2.0.0-corrupt")  # every task its agents finish is written wrong

    steps = [*BEFORE, "database restore", "application rollback", *AFTER]
    incident, _ = rolled_back(site, "data_corruption", steps)
    page = rollback_page(site, incident, "integrity_violations", "data_corruption")
    assert float(page["value"]) >= 1

    _, journal = site.journal(incident)
    by_name = {s.name: s for s in journal.values()}
    stopped, restore = by_name["stop traffic"], by_name["database restore"]
    assert "stopped" in stopped.output
    assert stopped.ended_at is not None and stopped.ended_at <= restore.claimed_at  # app first
    source = restored_from(site, incident)
    assert source.name.startswith("last_known_good_")
    assert backup.stat().st_mtime <= source.stat().st_mtime < deployed
    # restored into a new database, swapped in for the live one, which is kept under a new name
    assert "spek_db_restore_" in restore.output and "spek_db_damaged_" in restore.output

    # the damaged database is kept under another name, with its corruption
    [damaged] = damaged_databases(site)
    assert site.integrity_violations(damaged) > 0
    # the live database is the backup's: consistent, with what was written before
    site.wait_serving(GOOD)
    assert site.integrity_violations() == 0
    assert site.markers_present(markers) == markers

    def integrity_green() -> dict[str, Any] | None:
        rule = site.rules()["integrity_violations"]
        return rule if rule["state"] == "ok" and rule["value"] == 0 else None

    site.until(integrity_green, "the integrity rule cleared", 30)
    resolved(site, incident)


# -- scenario 4: performance degradation -----------------------------------------------------


@pytest.mark.parametrize("site", ["performance_degradation"], indirect=True)
def test_slow_responses_page_on_call_who_approves_the_rollback(site: Site) -> None:
    markers = site.write_markers()
    already = {a["id"] for a in site.alerts()}
    site.deploy("v2.0.0-slow")  # every /api/* answer waits 1 s more (SPEK_APP_SLOW_SECONDS)

    def slow_alert() -> dict[str, Any] | None:
        fresh = [
            a
            for a in site.alerts()
            if a["id"] not in already and "slow_responses" in a["rules"] and a["state"] == "open"
        ]
        return fresh[0] if fresh else None

    alert = site.until(slow_alert, "a slow_responses alert", 60)
    incident = alert["incident"]
    page = paged(site, incident, rule="slow_responses")
    assert (page["rule"], page["urgency"], page["playbook"]) == (
        "slow_responses",
        "warning",
        "performance_degradation",
    )
    assert page["summary"].startswith("slow_responses firing: evaluate a rollback")
    assert float(page["value"]) > 0.9  # p95 of /api/* with 1 s more per answer
    assert (alert["kind"], alert["urgency"]) == ("breach", "warning")
    # evaluate: a human decides; nothing was rolled back on its own
    assert site.incidents() == []
    assert site.inspect()["Config"]["Image"] == "spek-sample/app:v2.0.0-slow"

    acked_answer = site.sentinel.post(
        f"/api/v1/alerts/{alert['id']}/ack",
        headers=AUTH,
        json={"by": "alice", "answer": "rollback", "note": "p95 far above v1.1.0's"},
    )
    assert acked_answer.status_code == 200, acked_answer.text
    acked_alert = acked_answer.json()
    assert (acked_alert["state"], acked_alert["acked_by"]) == ("acknowledged", "alice")

    steps = [*BEFORE, "application rollback", *AFTER]
    got, _ = rolled_back(site, "performance_degradation", steps)
    assert got == incident
    acted = site.api(f"/api/v1/alerts/{alert['id']}")
    [action] = acted["actions"]
    assert (action["answer"], action["by"], action["source"]) == ("rollback", "alice", "api")
    assert action["outcome"] == "rollback with playbook performance_degradation started"
    acked = paged(site, incident, "acknowledge")
    assert acked["summary"] == "alice approved a rollback: p95 far above v1.1.0's"
    approved = [p for p in site.pages() if p["dedup_key"] == incident and p["kind"] == "trigger"]
    assert [p["summary"] for p in approved] == [
        "slow_responses firing: evaluate a rollback; its playbook would be performance_degradation",
        "rollback with playbook performance_degradation approved by alice (slow_responses firing)",
    ]

    health = site.wait_serving(GOOD)
    assert health["version"] == GOOD
    assert site.markers_present(markers) == markers
    assert site.app is not None
    answer = get(f"{site.app.url}/api/agents")
    assert answer.status == 200 and answer.seconds < 0.9  # no second more per answer


# -- scenario 5: security breach detected ----------------------------------------------------


@pytest.mark.parametrize("site", ["security_breach"], indirect=True)
def test_a_breach_stops_the_app_rotates_the_secrets_restores_the_database_and_restarts(
    site: Site,
) -> None:
    old = dict(site.app_secrets)
    markers = site.write_markers()
    written = time.time()
    backup = site.wait_routine_backup(newer_than=written)
    deployed = time.time()
    app = site.deploy("v2.0.0-breach")
    assert site.health()["secrets"] == {k: fingerprint(v) for k, v in old.items()}
    # the intruder: tampers with the data, then reads the admin config without credentials
    site.sql("UPDATE agents SET name = name || '-pwned' RETURNING id")
    leaked = get(f"{app.url}/api/admin/config")
    assert leaked.status == 200  # served: the app counts it and pushes security_breach

    steps = [*BEFORE, "database restore", "rotate secrets", *AFTER]
    incident, _ = rolled_back(site, "security_breach", steps)
    rollback_page(site, incident, "security_breach", "security_breach")
    [pushed] = pushed_signals(site, "security_breach")
    assert pushed["by"] == "spek-app v2.0.0-breach"

    # the app was stopped, then restarted: the same container, a new start
    _, journal = site.journal(incident)
    by_name = {s.name: s for s in journal.values()}
    assert by_name["stop traffic"].output.startswith(f"{site.container} stopped")
    now = site.inspect()
    assert now["Id"] == app.container.id and now["State"]["Running"]
    stop_ended = by_name["stop traffic"].ended_at
    assert stop_ended is not None and docker_time(now["State"]["StartedAt"]) > stop_ended

    # secrets rotated: new values in the env file (mode and group kept), in use by the app
    text = site.env_file.read_text(encoding="utf-8")
    new = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert set(new) == set(old)
    assert all(new[key] != old[key] and len(new[key]) >= 32 for key in old)
    mode = site.env_file.stat()
    assert (mode.st_mode & 0o777, mode.st_gid) == (0o640, 10002)
    health = site.wait_serving("v2.0.0-breach")
    assert health["secrets"] == {k: fingerprint(v) for k, v in new.items()}
    assert health["secrets"] != {k: fingerprint(v) for k, v in old.items()}
    config_url = f"{app.url}/api/admin/config"
    stolen = {"Authorization": f"Bearer {admin_token(old['JWT_SECRET'])}"}
    assert get(config_url, headers=stolen).status == 401  # a token signed with a leaked key
    fresh = {"Authorization": f"Bearer {admin_token(new['JWT_SECRET'])}"}
    assert get(config_url, headers=fresh).status == 200
    report = site.report(incident)
    for value in [*old.values(), *new.values()]:
        assert value not in report and value not in site.sentinel.log_path.read_text()

    # the database is the last known-good backup's: the tampering is gone, kept aside
    source = restored_from(site, incident)
    assert source.name.startswith("last_known_good_")
    assert backup.stat().st_mtime <= source.stat().st_mtime < deployed
    assert not site.sql("SELECT name FROM agents WHERE name LIKE %s", "%-pwned")
    assert site.markers_present(markers) == markers
    [damaged] = damaged_databases(site)
    tampered = site.sql("SELECT name FROM agents WHERE name LIKE %s", "%-pwned", dbname=damaged)
    assert len(tampered) == 3

    # security confirms the breach is handled: the incident closes
    site.cli(["signal"], "security_breach", "--resolve", "--reason", "keys rotated", "--by", "soc")
    resolved(site, incident)
