"""Phase 5 "Verify Rollback" against real services: health URL, database, Redis, validation."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from harness.redis_server import RedisServer
from harness.web_app import WebApp
from spek_sentinel.config import Config, load_config
from spek_sentinel.rollback.verify import verify_until

TABLE = """
[probes.app]
kind = "http"
url = "{http}"
start_grace = "0s"
timeout = "2s"
signals.app_up = {{ unit = "bool", measure = "up" }}

[probes.database]
kind = "postgres"
dsn_env = "VERIFY_DB_DSN"
signals.db_up = {{ unit = "bool", measure = "up" }}
signals.db_query_seconds = {{ unit = "seconds", measure = "query_latency", sql = "SELECT 1" }}

[probes.cache]
kind = "redis"
url_env = "VERIFY_REDIS_URL"
signals.redis_up = {{ unit = "bool", measure = "up" }}

[[rules]]
name = "app_wont_start"
signal = "app_up"
kind = "threshold"
severity = "evaluate"
below = 1

[validation]
[[validation.checks]]
name = "database_queries"
signal = "db_query_seconds"
below = "{query_limit}"
description = "Database queries should complete in <{query_limit}"
"""


def config_for(tmp_path: Path, app: WebApp, query_limit: str = "5s") -> Config:
    path = tmp_path / "thresholds.toml"
    path.write_text(TABLE.format(http=app.http_url, query_limit=query_limit), encoding="utf-8")
    return load_config(path, environ={})


@pytest.fixture
def environ(postgres_db: str, redis_server: RedisServer) -> dict[str, str]:
    return {"VERIFY_DB_DSN": postgres_db, "VERIFY_REDIS_URL": redis_server.url()}


def test_a_healthy_stack_verifies(tmp_path: Path, web_app: WebApp, environ: dict[str, str]) -> None:
    report = asyncio.run(verify_until(config_for(tmp_path, web_app), environ, timeout=5))
    assert report.passed, report.failures()
    names = [check.name for check in report.checks]
    assert names == [
        "app_up is up",
        "db_up is up",
        "redis_up is up",
        "Database queries should complete in <5s",
    ]


def test_an_app_that_stays_unhealthy_fails_verification_and_says_why(
    tmp_path: Path, web_app: WebApp, environ: dict[str, str]
) -> None:
    web_app.http_mode = "error"
    report = asyncio.run(
        verify_until(config_for(tmp_path, web_app), environ, timeout=1.5, interval=0.5)
    )
    assert not report.passed
    assert [check.name for check in report.failures()] == ["app_up is up"]
    assert report.attempts >= 2


def test_an_app_that_comes_up_during_the_window_verifies(
    tmp_path: Path, web_app: WebApp, environ: dict[str, str]
) -> None:
    web_app.http_mode = "error"
    recovered = threading.Timer(1.0, lambda: setattr(web_app, "http_mode", "healthy"))
    recovered.start()
    try:
        report = asyncio.run(
            verify_until(config_for(tmp_path, web_app), environ, timeout=20, interval=0.5)
        )
    finally:
        recovered.cancel()
    assert report.passed, report.failures()
    assert report.attempts >= 2


def test_a_validation_limit_that_is_crossed_fails_verification(
    tmp_path: Path, web_app: WebApp, environ: dict[str, str]
) -> None:
    config = config_for(tmp_path, web_app, query_limit="0ms")
    report = asyncio.run(verify_until(config, environ, timeout=1, interval=0.5))
    assert [check.name for check in report.failures()] == [
        "Database queries should complete in <0ms"
    ]


def test_a_database_that_is_down_fails_verification(
    tmp_path: Path, web_app: WebApp, environ: dict[str, str]
) -> None:
    environ["VERIFY_DB_DSN"] = "postgresql://postgres@127.0.0.1:1/nowhere"
    report = asyncio.run(
        verify_until(config_for(tmp_path, web_app), environ, timeout=1, interval=0.5)
    )
    failed = [check.name for check in report.failures()]
    assert failed == ["db_up is up", "Database queries should complete in <5s"]
