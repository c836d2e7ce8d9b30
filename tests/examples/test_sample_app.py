"""The sample SPEK app's good releases, run as local processes against real PostgreSQL and Redis:
health, Prometheus metrics, the WebSocket echo, tasks written by the API and the agents."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path
from typing import Any

import redis
from websockets.sync.client import connect

from harness.postgres import PostgresServer
from harness.redis_server import RedisServer, RedisTarget
from harness.spek_app import (
    GOOD,
    INTEGRITY_SQL,
    AppProcess,
    StartApp,
    admin_token,
    fingerprint,
    get,
    query_one,
    sample,
    scrape,
)
from harness.wait import wait_until
from spek_sentinel.rollback.secret_rotation import rotate_env_secrets


def finished(app: AppProcess, task_id: int) -> dict[str, Any] | None:
    task: dict[str, Any] = get(f"{app.url}/api/tasks/{task_id}").json()
    return task if task["status"] in {"succeeded", "failed"} else None


def test_good_release_serves_health_metrics_websocket_and_tasks(
    start_app: StartApp, postgres_db: str, redis_url: RedisTarget
) -> None:
    app = start_app("v1.0.0")

    health = get(f"{app.url}/healthz").json()
    assert health["status"] == "ok"
    assert (health["version"], health["schema"], health["database"], health["redis"]) == (
        "v1.0.0",
        2,
        "ok",
        "ok",
    )
    assert get(f"{app.url}/").body == b"spek-app v1.0.0\n"

    created = get(f"{app.url}/api/tasks", method="POST", body={"kind": "review", "agent": "coder"})
    assert created.status == 201
    task_id = created.json()["id"]
    task = wait_until(
        lambda: finished(app, task_id), timeout=10, message="the API's task run by an agent"
    )
    assert task is not None
    assert (task["agent"], task["kind"], task["attempts"]) == ("coder", "review", 1)
    assert task["duration_ms"] >= 1
    assert (
        query_one(postgres_db, "SELECT status FROM agent_tasks WHERE id = %s", task_id)
        == "succeeded"
    )
    # the agents' own tasks, without outside traffic
    wait_until(
        lambda: (
            query_one(postgres_db, "SELECT count(*) FROM agent_tasks WHERE finished_at IS NOT NULL")
            >= 5
        ),
        timeout=10,
        message="the agent loop finishing tasks",
    )
    assert query_one(postgres_db, INTEGRITY_SQL) == 0
    assert get(f"{app.url}/api/tasks/999999").status == 404
    assert get(f"{app.url}/api/tasks", method="POST", body={"kind": ""}).status == 400

    # Redis: the request counter and the cached summary, under the test's prefix
    first, second = get(f"{app.url}/api/stats").json(), get(f"{app.url}/api/stats").json()
    assert (first["cached"], second["cached"]) == (False, True)
    with redis.Redis.from_url(redis_url.url) as client:
        assert int(client.get(redis_url.key("api_requests")) or 0) == second["api_requests"] >= 5
        assert client.exists(redis_url.key("task_counts"))

    with connect(app.ws_url, open_timeout=5) as ws:
        ws.send("hello agents")
        assert ws.recv(timeout=5) == "hello agents"
        ws.send(b"\x00\x01\x02" * 1000)
        assert ws.recv(timeout=5) == b"\x00\x01\x02" * 1000

    assert get(f"{app.url}/api/admin/config").status == 401
    token = admin_token(app.jwt_secret)
    admin = get(f"{app.url}/api/admin/config", headers={"Authorization": f"Bearer {token}"})
    assert admin.status == 200
    assert admin.json()["version"] == "v1.0.0"

    families = scrape(app.url)
    for name, kind in {
        "http_requests": "counter",
        "http_request_duration_seconds": "histogram",
        "websocket_connection_attempts": "counter",
        "websocket_connection_failures": "counter",
        "agent_tasks": "counter",
        "process_resident_memory_bytes": "gauge",
        "security_unauthorized_access": "counter",
    }.items():
        assert families[name].type == kind, name
    assert sample(families, "http_requests_total", route="/api/tasks", status="201") == 1
    assert sample(families, "http_requests_total", route="/api/tasks/{id}", status="404") == 1
    assert sample(families, "http_requests_total", route="/api/admin/config", status="401") == 1
    assert sample(families, "http_request_duration_seconds_count", route="/api/stats") == 2
    assert sample(families, "websocket_connection_attempts_total") == 1
    assert sample(families, "websocket_connection_failures_total") == 0
    assert sample(families, "websocket_messages_total") == 2
    assert sample(families, "agent_tasks_total", outcome="succeeded") >= 5
    assert sample(families, "security_unauthorized_access_total") == 0
    assert sample(families, "security_auth_failures_total", route="/api/admin/config") == 1
    assert sample(families, "process_resident_memory_bytes") > 10_000_000
    assert sample(families, "spek_app_build_info", version="v1.0.0", schema="2") == 1
    assert no_server_errors(families)

    assert app.stop() == 0  # SIGTERM: a clean exit


def no_server_errors(families: dict[str, Any]) -> bool:
    return all(
        not s.labels.get("status", "").startswith("5") for s in families["http_requests"].samples
    )


def test_releases_roll_forward_and_back_on_one_database(
    start_app: StartApp, postgres_db: str
) -> None:
    """v1.0.0 migrates to 2; v1.1.0 adds 003 and audits API writes; v1.0.0 started again on the
    newer schema still serves (the database is ahead of it, which it tolerates)."""
    old = start_app("v1.0.0")
    assert old.stop() == 0

    new = start_app("v1.1.0")
    health = get(f"{new.url}/healthz").json()
    assert (health["version"], health["schema"]) == ("v1.1.0", 3)
    created = get(f"{new.url}/api/tasks", method="POST", body={"kind": "plan"})
    task_id = created.json()["id"]
    assert query_one(postgres_db, "SELECT action FROM audit_logs WHERE task_id = %s", task_id) == (
        "task.create"
    )
    assert new.stop() == 0

    back = start_app("v1.0.0")
    health = get(f"{back.url}/healthz").json()
    assert (health["version"], health["schema"], health["release_schema"]) == ("v1.0.0", 3, 2)
    assert get(f"{back.url}/api/tasks", method="POST", body={"kind": "code"}).status == 201
    assert query_one(postgres_db, INTEGRITY_SQL) == 0


def test_secrets_come_from_the_env_file_and_rotate_with_it(
    start_app: StartApp, tmp_path: Path
) -> None:
    """The runbook's .env: its values win over the environment, and spek-sentinel's rotation
    of SESSION_SECRET and JWT_SECRET takes effect at the next start; old tokens stop working."""
    env_file = tmp_path / "app.env"
    env_file.write_text("# the app's secrets\nSESSION_SECRET=session-one\nJWT_SECRET='jwt-one'\n")
    before = start_app(GOOD, env={"SPEK_APP_ENV_FILE": str(env_file)})
    health = get(f"{before.url}/healthz").json()
    assert health["secrets"] == {
        "SESSION_SECRET": fingerprint("session-one"),
        "JWT_SECRET": fingerprint("jwt-one"),
    }  # not the process environment's values
    old_token = {"Authorization": f"Bearer {admin_token('jwt-one')}"}
    assert get(f"{before.url}/api/admin/config", headers=old_token).status == 200
    assert before.stop() == 0

    assert rotate_env_secrets(env_file, ["SESSION_SECRET", "JWT_SECRET"]) == [
        "SESSION_SECRET",
        "JWT_SECRET",
    ]
    after = start_app(GOOD, env={"SPEK_APP_ENV_FILE": str(env_file)})
    rotated = get(f"{after.url}/healthz").json()["secrets"]
    assert rotated["SESSION_SECRET"] != fingerprint("session-one")
    assert rotated["JWT_SECRET"] != fingerprint("jwt-one")
    assert get(f"{after.url}/api/admin/config", headers=old_token).status == 401


def test_http_connections_behave(start_app: StartApp) -> None:
    """Keep-alive for HTTP/1.1, close for HTTP/1.0, 100-continue for curl-style bodies, 400
    for garbage: what load generators and probes rely on."""
    app = start_app(GOOD, agent_interval=0)
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=5)
    for _ in range(3):  # one connection, three requests
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() and conn.sock is not None
    conn.request(
        "POST",
        "/api/tasks",
        body=b'{"kind": "test"}',
        headers={"Content-Type": "application/json", "Expect": "100-continue"},
    )
    assert conn.getresponse().status == 201
    conn.close()

    for request, expected in (
        (b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.1 200 OK"),
        (b"NONSENSE\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
    ):
        with socket.create_connection(("127.0.0.1", app.port), timeout=5) as raw:
            raw.sendall(request)
            received = b""
            while chunk := raw.recv(4096):  # the server closes: HTTP/1.0 without keep-alive
                received += chunk
        assert received.startswith(expected), received


def test_health_follows_the_database_and_redis(
    start_app: StartApp, postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    """The runbook's "Database Failure": /healthz answers 503 while PostgreSQL or Redis is down,
    API calls 503, and the app recovers by itself once they are back."""
    app = start_app(GOOD)

    def health() -> tuple[int, dict[str, Any]]:
        answer = get(f"{app.url}/healthz")
        return answer.status, answer.json()

    postgres_server.stop()
    try:
        status, body = health()
        assert (status, body["status"], body["redis"]) == (503, "unhealthy", "ok")
        assert body["database"].startswith("error")
        assert get(f"{app.url}/api/tasks").status == 503
    finally:
        postgres_server.start()
    wait_until(lambda: health()[0] == 200, timeout=15, message="healthy with PostgreSQL back")
    assert get(f"{app.url}/api/tasks").status == 200

    redis_server.stop()
    try:
        status, body = health()
        assert (status, body["database"]) == (503, "ok")
        assert body["redis"].startswith("error")
    finally:
        redis_server.start()
    wait_until(lambda: health()[0] == 200, timeout=15, message="healthy with Redis back")
    assert app.proc is not None and app.proc.poll() is None  # it never stopped
