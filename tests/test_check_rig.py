"""`spek-sentinel check` against the whole test rig: one probe of every kind, real services,
and the Nagios exit code for an OK, a warning, a critical and a blind situation."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from harness.docker_engine import Containers
from harness.prometheus_server import PrometheusStack
from harness.redis_server import RedisServer
from harness.web_app import WebApp
from spek_sentinel.cli import main

TABLE = """
[sentinel]
state_dir = "{state}"

[probes.metrics]
kind = "prometheus"
url = "{prometheus}"
signals.error_rate = {{ unit = "ratio", query = "{error_query}" }}

[probes.app]
kind = "http"
url = "{http}"
start_grace = "0s"
signals.app_up = {{ unit = "bool", measure = "up" }}

[probes.live]
kind = "websocket"
url = "{ws}"
timeout = "2s"
signals.websocket_failure_ratio = {{ unit = "ratio", measure = "failure_ratio" }}

[probes.database]
kind = "postgres"
dsn_env = "RIG_DB_DSN"
signals.db_up = {{ unit = "bool", measure = "up" }}
signals.integrity_violations = {{ unit = "count", sql = "SELECT count(*) FROM orphans" }}

[probes.cache]
kind = "redis"
url_env = "RIG_REDIS_URL"
signals.redis_up = {{ unit = "bool", measure = "up" }}

[probes.container]
kind = "docker"
container = "{container}"
signals.container_up = {{ unit = "bool", measure = "up" }}
signals.container_memory = {{ unit = "bytes", measure = "memory_bytes" }}

[probes.worker]
kind = "process"
pid_file = "{pid_file}"
signals.worker_rss = {{ unit = "bytes", measure = "rss" }}

[probes.confirmed]
kind = "pushed"
signals.security_breach = {{ unit = "count", measure = "event" }}
signals.render_fps = {{ unit = "fps", measure = "value" }}

[playbooks.rollback]
scenario = "rig"

[[rules]]
name = "high_error_rate"
signal = "error_rate"
kind = "threshold"
severity = "immediate"
above = "5%"
for = "5m"
playbook = "rollback"

[[rules]]
name = "app_wont_start"
signal = "app_up"
kind = "threshold"
severity = "immediate"
below = 1
playbook = "rollback"

[[rules]]
name = "websocket_failures"
signal = "websocket_failure_ratio"
kind = "threshold"
severity = "evaluate"
above = "10%"

[[rules]]
name = "database_unreachable"
signal = "db_up"
kind = "threshold"
severity = "immediate"
below = 1
playbook = "rollback"

[[rules]]
name = "integrity_violations"
signal = "integrity_violations"
kind = "event"
severity = "immediate"
playbook = "rollback"

[[rules]]
name = "redis_down"
signal = "redis_up"
kind = "threshold"
severity = "evaluate"
below = 1

[[rules]]
name = "container_down"
signal = "container_up"
kind = "threshold"
severity = "immediate"
below = 1
playbook = "rollback"

[[rules]]
name = "container_memory"
signal = "container_memory"
kind = "threshold"
severity = "evaluate"
above = "1GB"

[[rules]]
name = "worker_memory"
signal = "worker_rss"
kind = "threshold"
severity = "evaluate"
above = "4GB"

[[rules]]
name = "security_breach"
signal = "security_breach"
kind = "event"
severity = "immediate"
playbook = "rollback"

[[rules]]
name = "low_render_fps"
signal = "render_fps"
kind = "threshold"
severity = "evaluate"
below = 30
"""


@dataclass
class Rig:
    table: Path
    dsn: str
    metric: str  # the exported error ratio the prometheus probe queries
    web: WebApp


@pytest.fixture
def rig(  # noqa: PLR0917 -- each parameter is a real service the rig needs
    tmp_path: Path,
    prometheus: PrometheusStack,
    web_app: WebApp,
    postgres_db: str,
    redis_server: RedisServer,
    containers: Containers,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Rig]:
    with psycopg.connect(postgres_db, autocommit=True) as db:
        db.execute("CREATE TABLE orphans (id int)")
    app = containers.run(["sleep", "600"])
    worker = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    pid_file = tmp_path / "worker.pid"
    pid_file.write_text(f"{worker.pid}\n", encoding="utf-8")
    metric = f"spek_rig_{uuid.uuid4().hex[:8]}_error_ratio"  # one Prometheus for the whole run
    prometheus.exporter.gauge(metric).set(0.01)
    prometheus.server.wait_for(f"{metric} == 0.01")
    table = tmp_path / "thresholds.toml"
    table.write_text(
        TABLE.format(
            state=tmp_path / "state",
            prometheus=prometheus.url,
            error_query=metric,
            http=web_app.http_url,
            ws=web_app.ws_url,
            container=app.name,
            pid_file=pid_file,
        ),
        encoding="utf-8",
    )
    monkeypatch.setenv("RIG_DB_DSN", postgres_db)
    monkeypatch.setenv("RIG_REDIS_URL", redis_server.url())
    try:
        assert (
            main(["signal", "-c", str(table), "render_fps", "--value", "58", "--reason", "p10"])
            == 0
        )
        yield Rig(table, postgres_db, metric, web_app)
    finally:
        worker.kill()
        worker.wait(timeout=10)


def check(rig: Rig, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, dict[str, object]]]:
    capsys.readouterr()
    code = main(["check", "-c", str(rig.table), "--json"])
    report = json.loads(capsys.readouterr().out)
    return code, {rule["rule"]: rule for rule in report["rules"]}


def test_healthy_rig_is_ok_with_every_probe_kinds_value(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    code, rules = check(rig, capsys)
    assert {name: rule["status"] for name, rule in rules.items() if rule["status"] != "ok"} == {}
    assert code == 0
    assert rules["high_error_rate"]["value"] == pytest.approx(0.01)
    assert rules["app_wont_start"]["value"] == 1
    assert rules["websocket_failures"]["value"] == 0
    assert rules["database_unreachable"]["value"] == 1
    assert rules["integrity_violations"]["value"] == 0
    assert rules["redis_down"]["value"] == 1
    assert rules["container_down"]["value"] == 1
    assert 0 < rules["container_memory"]["value"] < 1e9  # type: ignore[operator]
    assert 0 < rules["worker_memory"]["value"] < 4e9  # type: ignore[operator]
    assert rules["security_breach"]["value"] == 0
    assert rules["low_render_fps"]["value"] == 58


def test_an_evaluate_breach_is_a_warning(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    rig.web.ws_mode = "reject"
    code, rules = check(rig, capsys)
    assert (code, rules["websocket_failures"]["status"]) == (1, "breach")
    assert rules["websocket_failures"]["value"] == 1


def test_an_immediate_breach_is_critical(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(rig.dsn, autocommit=True) as db:
        db.execute("INSERT INTO orphans VALUES (1), (2)")
    code, rules = check(rig, capsys)
    assert (code, rules["integrity_violations"]["status"]) == (2, "breach")
    assert rules["integrity_violations"]["value"] == 2


def test_a_blind_probe_is_unknown(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    text = rig.table.read_text(encoding="utf-8")
    rig.table.write_text(text.replace(rig.metric, "spek_rig_nobody_exports"), "utf-8")
    code, rules = check(rig, capsys)
    assert (code, rules["high_error_rate"]["status"]) == (3, "unknown")
    assert [name for name, rule in rules.items() if rule["status"] != "ok"] == ["high_error_rate"]
