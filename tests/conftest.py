import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from harness import HarnessError
from harness.alertmanager_server import alertmanager
from harness.docker_engine import busybox_image, containers, docker_engine
from harness.postgres import PostgresServer
from harness.prometheus_server import prometheus
from harness.redis_server import RedisServer, RedisTarget
from harness.web_app import certificate, tls_web_app, web_app
from spek_sentinel.store.db import STATE_FILE
from spek_sentinel.store.open import StateLocation

# The shared servers' fixtures, registered once here so that each starts once per run (a
# fixture imported into several test modules would be a fixture per module).
__all__ = [
    "alertmanager",
    "busybox_image",
    "certificate",
    "containers",
    "docker_engine",
    "prometheus",
    "tls_web_app",
    "web_app",
]

T = TypeVar("T")


def _require(provide: Callable[[], T]) -> T:
    """A missing service fails the test with what to install; it is never a skip."""
    try:
        return provide()
    except HarnessError as exc:
        failure = str(exc)
    # Outside the except block, so the report is the message, not a chained traceback.
    pytest.fail(failure, pytrace=False)


def _unique_name(request: pytest.FixtureRequest) -> str:
    test = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")
    return f"t_{test[:40]}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = _require(PostgresServer)
    try:
        _require(server.start)
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = _require(RedisServer)
    try:
        _require(server.start)
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_db(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of a fresh database for this test alone, dropped afterwards."""
    _require(postgres_server.ensure_running)
    name = _unique_name(request)
    yield postgres_server.create_database(name)
    _require(postgres_server.ensure_running)
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> StateLocation:
    """A fresh state on each back end: a new SQLite file, or a new PostgreSQL database on the
    suite's server. The store contract tests run on both; ``state.open()`` is a new
    connection (another process, as far as locking goes)."""
    if request.param == "sqlite":
        return StateLocation.sqlite(tmp_path / "state" / STATE_FILE)
    dsn = request.getfixturevalue("postgres_db")
    assert isinstance(dsn, str)
    return StateLocation.postgres(dsn, "the test's database")


@pytest.fixture
def redis_url(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[RedisTarget]:
    """The Redis URL and a key prefix for this test; keys under it are deleted afterwards."""
    _require(redis_server.ensure_running)
    target = RedisTarget(url=redis_server.url(), prefix=f"{_unique_name(request)}:")
    yield target
    _require(redis_server.ensure_running)
    with redis.Redis.from_url(target.url) as client:
        keys = list(client.scan_iter(match=f"{target.prefix}*"))
        if keys:
            client.delete(*keys)
