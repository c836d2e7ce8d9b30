"""The harness itself, against the real throwaway servers it starts."""

from pathlib import Path

import psycopg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from harness import HarnessError
from harness.postgres import PostgresServer, find_bin_dir
from harness.redis_server import RedisServer, RedisTarget, find_redis_server
from harness.wait import wait_until

_seen_databases: list[str] = []
_seen_prefixes: list[str] = []


def _query_one(dsn: str, query: str, params: tuple[object, ...] = ()) -> object:
    with psycopg.connect(dsn, connect_timeout=2) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _redis(url: str) -> redis.Redis:
    # No retries: redis-py 8 otherwise retries a refused connection 10 times with backoff.
    return redis.Redis.from_url(url, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))


def _pings(url: str) -> bool:
    with _redis(url) as client:
        return bool(client.ping())


# --- wait_until ---


def test_wait_until_returns_the_first_truthy_value() -> None:
    calls = iter([0, None, "ready"])
    assert wait_until(lambda: next(calls), timeout=2, interval=0.001) == "ready"


def test_wait_until_times_out_with_the_message_and_last_error() -> None:
    def boom() -> bool:
        raise ConnectionRefusedError("nope")

    with pytest.raises(AssertionError, match=r"db never came up.*nope") as caught:
        wait_until(boom, timeout=0.05, interval=0.01, message="db never came up", ignore=(OSError,))
    assert isinstance(caught.value, TimeoutError)


# --- PostgreSQL ---


def test_postgres_db_runs_queries_and_ddl(postgres_db: str) -> None:
    assert _query_one(postgres_db, "SELECT 1") == 1
    with psycopg.connect(postgres_db, connect_timeout=2) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO t VALUES (1, 'hello')")
    assert _query_one(postgres_db, "SELECT note FROM t WHERE id = 1") == "hello"


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_database(
    run: int, postgres_db: str, postgres_server: PostgresServer
) -> None:
    name = str(_query_one(postgres_db, "SELECT current_database()"))
    assert name not in _seen_databases
    tables = _query_one(postgres_db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    assert tables == 0, "a fresh database already holds tables"
    still_there = _query_one(
        postgres_server.dsn(),
        "SELECT count(*) FROM pg_database WHERE datname = ANY(%s)",
        (_seen_databases,),
    )
    assert still_there == 0, "an earlier test's database was not dropped"
    with psycopg.connect(postgres_db, connect_timeout=2) as conn:
        conn.execute(f"CREATE TABLE marker_{run} (x int)")
    _seen_databases.append(name)


def test_postgres_stop_makes_it_unreachable_and_start_brings_data_back(
    postgres_server: PostgresServer, postgres_db: str
) -> None:
    with psycopg.connect(postgres_db, connect_timeout=2) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('survives restart')")
    port = postgres_server.port

    postgres_server.stop()
    assert not postgres_server.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres_db, connect_timeout=2)

    postgres_server.start()
    assert postgres_server.port == port
    wait_until(
        lambda: _query_one(postgres_db, "SELECT v FROM kept") == "survives restart",
        timeout=10,
        message="PostgreSQL did not come back with the data",
        ignore=(psycopg.OperationalError,),
    )


def test_a_test_may_leave_postgres_stopped(postgres_server: PostgresServer) -> None:
    postgres_server.stop()
    assert not postgres_server.is_running()


def test_postgres_db_restarts_a_stopped_server(
    postgres_server: PostgresServer, postgres_db: str
) -> None:
    assert postgres_server.is_running()
    assert _query_one(postgres_db, "SELECT 1") == 1


def test_missing_postgres_binaries_say_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HarnessError, match=r"initdb.*apt-get install postgresql"):
        find_bin_dir(root=tmp_path)


def test_postgres_startup_failure_reports_the_server_log(
    postgres_server: PostgresServer,
) -> None:
    with (
        pytest.raises(HarnessError, match=r"(?s)tail of .*Address already in use"),
        PostgresServer(port=postgres_server.port),
    ):
        pass


# --- Redis ---


def test_redis_pings_and_keeps_keys_under_the_prefix(redis_url: RedisTarget) -> None:
    with _redis(redis_url.url) as client:
        assert client.ping()
        client.set(redis_url.key("greeting"), "hello")
        assert client.get(redis_url.key("greeting")) == b"hello"


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_prefix_cleaned_afterwards(run: int, redis_url: RedisTarget) -> None:
    assert redis_url.prefix not in _seen_prefixes
    with _redis(redis_url.url) as client:
        for prefix in _seen_prefixes:
            assert list(client.scan_iter(match=f"{prefix}*")) == []
        client.set(redis_url.key(f"run{run}"), "x")
    _seen_prefixes.append(redis_url.prefix)


def test_redis_stop_makes_it_unreachable_and_start_brings_it_back(
    redis_server: RedisServer, redis_url: RedisTarget
) -> None:
    port = redis_server.port
    redis_server.stop()
    assert not redis_server.is_running()
    with pytest.raises(redis.exceptions.ConnectionError), _redis(redis_url.url) as client:
        client.ping()

    redis_server.start()
    assert redis_server.port == port
    wait_until(
        lambda: _pings(redis_url.url),
        timeout=10,
        message="Redis did not come back",
        ignore=(redis.exceptions.ConnectionError,),
    )
    with _redis(redis_url.url) as client:
        client.set(redis_url.key("after"), "restart")
        assert client.get(redis_url.key("after")) == b"restart"


def test_a_test_may_leave_redis_stopped(redis_server: RedisServer) -> None:
    redis_server.stop()
    assert not redis_server.is_running()


def test_redis_url_restarts_a_stopped_server(
    redis_server: RedisServer, redis_url: RedisTarget
) -> None:
    assert redis_server.is_running()
    assert _pings(redis_url.url)


def test_missing_redis_server_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HarnessError, match=r"apt-get install redis-server"):
        find_redis_server()


def test_redis_startup_failure_reports_the_server_log(redis_server: RedisServer) -> None:
    with (
        pytest.raises(HarnessError, match=r"(?s)tail of .*Address already in use"),
        RedisServer(port=redis_server.port),
    ):
        pass
