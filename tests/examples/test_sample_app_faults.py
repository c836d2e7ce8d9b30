"""Each bad release of the sample app shows its one fault, measurably, as a local process
against real PostgreSQL and Redis; the good release it is deployed over (v1.1.0) does not."""

from __future__ import annotations

import statistics
from typing import Any

import psycopg
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from harness.http_receiver import HttpReceiver
from harness.spek_app import (
    GOOD,
    INTEGRITY_SQL,
    RELEASES,
    Fault,
    StartApp,
    admin_token,
    get,
    query_one,
    sample,
    scrape,
)
from harness.wait import wait_until

MIB = 1024 * 1024


def test_every_bad_release_has_exactly_one_fault() -> None:
    bad = [r for r in RELEASES.values() if not r.good]
    assert sorted(r.fault for r in bad if r.fault) == sorted(Fault)
    assert all(r.version.startswith("v2.0.0-") and r.version.endswith(str(r.fault)) for r in bad)
    assert RELEASES[GOOD].good


def test_errors_release_answers_about_30_percent_500s(start_app: StartApp) -> None:
    app = start_app("v2.0.0-errors")
    statuses = [get(f"{app.url}/api/tasks").status for _ in range(200)]
    errors = statuses.count(500)
    assert statuses.count(200) + errors == 200
    assert 0.25 <= errors / 200 <= 0.35
    assert get(f"{app.url}/healthz").status == 200  # up, but failing its users

    failed_handshakes = 0
    for _ in range(20):
        try:
            with connect(app.ws_url, open_timeout=5) as ws:
                ws.send("ping")
                assert ws.recv(timeout=5) == "ping"
        except InvalidStatus as exc:
            assert exc.response.status_code == 500
            failed_handshakes += 1
    assert 4 <= failed_handshakes <= 8

    families = scrape(app.url)
    served = sum(
        s.value for s in families["http_requests"].samples if s.labels["route"] == "/api/tasks"
    )
    failed = sample(families, "http_requests_total", route="/api/tasks", status="500")
    assert failed == errors
    assert 0.25 <= failed / served <= 0.35
    assert sample(families, "websocket_connection_failures_total") == failed_handshakes
    assert sample(families, "websocket_connection_attempts_total") == 20


def test_crash_release_exits_at_start(start_app: StartApp) -> None:
    app = start_app("v2.0.0-crash", wait=False)
    assert app.wait_exit(timeout=30) == 1
    log = app.log()
    assert "Traceback" in log
    assert "StartupCrashError: v2.0.0-crash: startup check failed" in log
    assert "listening" not in log


def test_leak_release_grows_its_memory_steadily(start_app: StartApp) -> None:
    app = start_app("v2.0.0-leak", env={"SPEK_APP_LEAK_BYTES_PER_SECOND": str(32 * MIB)})
    readings = [app.rss()]
    for _ in range(4):  # each step: another 16 MiB resident, well within a second
        readings.append(
            wait_until(
                lambda: (rss := app.rss()) >= readings[-1] + 16 * MIB and rss,
                timeout=15,
                message=f"RSS growing past {readings[-1] + 16 * MIB} (readings {readings})",
            )
        )
    assert readings == sorted(readings)
    # the exporter's own figure (from /proc/self/stat, a moment later) tells the same story
    families = scrape(app.url)
    assert sample(families, "process_resident_memory_bytes") >= readings[-2]
    assert sample(families, "spek_app_retained_bytes") >= 64 * MIB


def test_good_release_memory_stays_flat(start_app: StartApp) -> None:
    app = start_app(GOOD)
    for _ in range(100):
        assert get(f"{app.url}/api/tasks").status == 200
    before = app.rss()
    for _ in range(200):
        assert get(f"{app.url}/api/tasks").status == 200
    assert app.rss() < before + 16 * MIB


def latencies(url: str, count: int = 8) -> list[float]:
    answers = [get(url) for _ in range(count)]
    assert {a.status for a in answers} == {200}
    return [a.seconds for a in answers]


def test_slow_release_answers_much_slower(start_app: StartApp) -> None:
    good = start_app(GOOD)
    baseline = statistics.median(latencies(f"{good.url}/api/tasks"))
    good.stop()

    slow = start_app("v2.0.0-slow")
    slowed = latencies(f"{slow.url}/api/tasks")
    assert min(slowed) >= 0.3  # SPEK_APP_SLOW_SECONDS' default
    assert statistics.median(slowed) > 1.5 * baseline  # the runbook's ">50% slower"
    families = scrape(slow.url)
    fast = sample(families, "http_request_duration_seconds_bucket", route="/api/tasks", le="0.25")
    assert fast == 0
    assert sample(families, "http_request_duration_seconds_count", route="/api/tasks") == 8
    assert get(f"{slow.url}/healthz").seconds < 0.3  # health stays quick: it is up


def test_bad_migration_fails_halfway_and_leaves_003(start_app: StartApp, postgres_db: str) -> None:
    good = start_app(GOOD)
    get(f"{good.url}/api/tasks", method="POST", body={"kind": "plan"})
    assert good.stop() == 0

    with HttpReceiver(status=201, reply=b"{}") as sentinel:
        bad = start_app(
            "v2.0.0-badmigration",
            wait=False,
            env={"SPEK_APP_SIGNAL_URL": sentinel.url, "SPEK_APP_SIGNAL_TOKEN": "t0ken-for-test"},
        )
        assert bad.wait_exit(timeout=30) == 1
        pushed = list(sentinel.received)
    log = bad.log()
    assert "Migration failed: 004_add_task_priority.up.sql" in log
    assert 'relation "task_priority" does not exist' in log
    assert "the database is at version 3" in log
    assert "listening" not in log

    assert query_one(postgres_db, "SELECT max(version) FROM schema_migrations") == 3
    # the statements before the failing one ran, and were rolled back with it
    assert query_one(postgres_db, "SELECT to_regclass('task_priorities') IS NULL")
    assert (
        query_one(
            postgres_db,
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_name = 'agent_tasks' AND column_name = 'priority'",
        )
        == 0
    )
    assert query_one(postgres_db, "SELECT count(*) FROM agent_tasks") >= 1  # data untouched

    assert [(r.method, r.path) for r in pushed] == [("POST", "/api/v1/signals")]
    assert pushed[0].headers["authorization"] == "Bearer t0ken-for-test"
    body = pushed[0].json()
    assert (body["name"], body["value"], body["by"]) == (
        "migration_failed",
        1,
        "spek-app v2.0.0-badmigration",
    )
    assert "004_add_task_priority" in body["reason"]

    status = bad.migrate("status")
    assert status.returncode == 0, status.stderr
    assert "003_add_audit_logs: applied" in status.stdout
    assert "004_add_task_priority: pending" in status.stdout


def integrity_violations(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT"
            " count(*) FILTER (WHERE NOT EXISTS"
            "   (SELECT 1 FROM agents a WHERE a.id = t.agent_id)) AS orphaned,"
            " count(*) FILTER (WHERE t.finished_at < t.created_at) AS finished_before_created,"
            " count(*) FILTER (WHERE t.duration_ms < 0) AS negative_duration,"
            " count(*) FILTER (WHERE t.status NOT IN"
            "   ('queued', 'running', 'succeeded', 'failed')) AS unknown_status"
            " FROM agent_tasks t"
        ).fetchone()
    assert row is not None
    names = ("orphaned", "finished_before_created", "negative_duration", "unknown_status")
    return dict(zip(names, (int(v) for v in row), strict=True))


def every_kind(dsn: str) -> dict[str, int] | None:
    found = integrity_violations(dsn)
    return found if all(found.values()) else None


def test_corrupt_release_writes_rows_the_integrity_query_finds(
    start_app: StartApp, postgres_db: str
) -> None:
    good = start_app(GOOD)
    wait_until(
        lambda: (
            query_one(postgres_db, "SELECT count(*) FROM agent_tasks WHERE finished_at IS NOT NULL")
            >= 4
        ),
        timeout=10,
        message="v1.1.0's agents finishing tasks",
    )
    assert query_one(postgres_db, INTEGRITY_SQL) == 0
    assert good.stop() == 0

    start_app("v2.0.0-corrupt")
    kinds = wait_until(
        lambda: every_kind(postgres_db), timeout=15, message="every kind of corrupted row written"
    )
    assert kinds is not None
    assert sum(kinds.values()) >= 4
    assert query_one(postgres_db, INTEGRITY_SQL) >= 4


@pytest.mark.parametrize("version", [GOOD, "v2.0.0-breach"])
def test_breach_release_serves_admin_without_credentials_and_signals_it(
    start_app: StartApp, version: str
) -> None:
    with HttpReceiver(status=201, reply=b"{}") as sentinel:
        app = start_app(
            version,
            env={"SPEK_APP_SIGNAL_URL": sentinel.url, "SPEK_APP_SIGNAL_TOKEN": "t0ken-for-test"},
        )
        anonymous = [get(f"{app.url}/api/admin/config").status for _ in range(3)]
        forged = get(f"{app.url}/api/admin/config", headers={"Authorization": "Bearer forged"})
        token = admin_token(app.jwt_secret)
        admin = get(f"{app.url}/api/admin/config", headers={"Authorization": f"Bearer {token}"})
        pushed = list(sentinel.received)
    families = scrape(app.url)
    breached = sample(families, "security_unauthorized_access_total", route="/api/admin/config")
    assert (forged.status, admin.status) == (401, 200)
    if version == GOOD:
        assert anonymous == [401, 401, 401]
        assert breached == 0
        assert pushed == []
        return
    assert anonymous == [200, 200, 200]
    assert breached == 3
    # one push, not one per request: the app holds further pushes of a signal for 10 s
    assert [(r.method, r.path) for r in pushed] == [("POST", "/api/v1/signals")]
    body: dict[str, Any] = pushed[0].json()
    assert (body["name"], body["value"], body["by"]) == (
        "security_breach",
        1,
        f"spek-app {version}",
    )
    assert "/api/admin/config served without credentials" in body["reason"]
    assert pushed[0].headers["authorization"] == "Bearer t0ken-for-test"
    assert "SECURITY: unauthorized access" in app.log()
