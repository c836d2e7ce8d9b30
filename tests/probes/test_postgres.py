"""The postgres probe against a real PostgreSQL server (and stubs that are not one)."""

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from harness.postgres import PostgresServer
from harness.postgres_corruption import checksummed_postgres, corrupt_first_page
from harness.tcp_stub import TcpStub
from harness.wait import wait_until
from spek_sentinel.config import load_config
from spek_sentinel.config.probes import PostgresProbe as PostgresConfig
from spek_sentinel.domain.errors import ConfigError
from spek_sentinel.domain.samples import Sample
from spek_sentinel.probes import postgres
from spek_sentinel.probes.base import observe

SHIPPED = Path(__file__).parents[2] / "thresholds.toml"
ENV = "SPEK_TEST_DSN"
PASSWORD = "Zq9-s3cr3t-pw"  # noqa: S105 -- a made-up secret the tests hunt for in errors


def config(signals: dict[str, dict[str, str]], timeout: str = "5s") -> PostgresConfig:
    return PostgresConfig.model_validate(
        {"kind": "postgres", "dsn_env": ENV, "timeout": timeout, "signals": signals}
    )


def probe(dsn: str, signals: dict[str, dict[str, str]], timeout: str = "5s") -> Any:
    return postgres.build("database", config(signals, timeout), 15.0, {ENV: dsn})


def observe_once(target: Any) -> dict[str, Sample]:
    return {s.signal: s for s in asyncio.run(observe(target))}


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


UP = {"db_up": {"unit": "bool", "measure": "up"}}
LATENCY = {"db_connect": {"unit": "seconds", "measure": "connect_latency"}}


def test_healthy_database_is_up_with_connect_and_query_latency(postgres_db: str) -> None:
    signals = {
        **UP,
        **LATENCY,
        "db_query": {"unit": "seconds", "measure": "query_latency", "sql": "SELECT 1"},
    }
    samples = observe_once(probe(postgres_db, signals))
    assert samples["db_up"].value == 1.0
    for name in ("db_connect", "db_query"):
        value = samples[name].value
        assert value is not None and 0 < value < 5, samples[name]


def test_stopped_server_reads_up_zero_and_errors_then_up_again(
    postgres_server: PostgresServer, postgres_db: str
) -> None:
    signals = {
        **UP,
        **LATENCY,
        "answer": {"unit": "count", "sql": "SELECT 42"},
        "db_conflicts": {"unit": "count", "measure": "conflicts"},
    }
    target = probe(postgres_db, signals)
    assert observe_once(target)["db_up"].value == 1.0
    try:
        postgres_server.stop()
        started = time.monotonic()
        down = observe_once(target)
        assert time.monotonic() - started < 5
        assert down["db_up"].value == 0.0 and down["db_up"].error is None
        for name in ("db_connect", "answer", "db_conflicts"):
            assert down[name].value is None
            assert "cannot connect to database" in str(down[name].error), down[name]
            assert "Connection refused" in str(down[name].error)
    finally:
        postgres_server.start()
    back = observe_once(target)
    assert back["db_up"].value == 1.0 and back["answer"].value == 42.0


def test_integrity_sql_counts_orphaned_rows(postgres_db: str) -> None:
    execute(
        postgres_db,
        "CREATE TABLE projects (id int PRIMARY KEY, name text)",
        "CREATE TABLE tasks (id int PRIMARY KEY, project_id int, kind text)",
        "INSERT INTO projects VALUES (1, 'a'), (2, 'b')",
        "INSERT INTO tasks VALUES (1, 1, 'agent:x'), (2, 2, 'agent:y'), (3, 2, 'manual')",
    )
    # '%' is sent as written: the SQL runs without parameters
    orphans = (
        "SELECT count(*) FROM tasks t LEFT JOIN projects p ON p.id = t.project_id"
        " WHERE p.id IS NULL AND t.kind LIKE 'agent:%'"
    )
    target = probe(postgres_db, {"integrity_violations": {"unit": "count", "sql": orphans}})
    assert observe_once(target)["integrity_violations"].value == 0.0
    execute(
        postgres_db,
        "INSERT INTO tasks VALUES (4, 99, 'agent:z'), (5, 98, 'agent:z'), (6, 97, 'manual')",
    )
    assert observe_once(target)["integrity_violations"].value == 2.0


def test_agent_failure_ratio_carries_the_task_count_as_volume(postgres_db: str) -> None:
    execute(postgres_db, "CREATE TABLE tasks (id serial, status text, finished_at timestamptz)")
    ratio = """
        SELECT CASE WHEN count(*) = 0 THEN NULL
                    ELSE count(*) FILTER (WHERE status = 'failed')::float / count(*) END,
               count(*)
        FROM tasks WHERE finished_at > now() - interval '15 minutes'
    """
    target = probe(postgres_db, {"agent_failure_ratio": {"unit": "ratio", "sql": ratio}})
    idle = observe_once(target)["agent_failure_ratio"]
    assert idle.kind == "no_data" and idle.volume == 0.0
    execute(
        postgres_db,
        "INSERT INTO tasks (status, finished_at) SELECT 'ok', now() FROM generate_series(1, 6)",
        "INSERT INTO tasks (status, finished_at) VALUES ('failed', now()), ('failed', now())",
        "INSERT INTO tasks (status, finished_at) VALUES ('failed', now() - interval '1 hour')",
    )
    busy = observe_once(target)["agent_failure_ratio"]
    assert (busy.value, busy.volume) == (0.25, 8.0)


def test_row_drop_is_the_fraction_lost_since_the_highest_count(postgres_db: str) -> None:
    execute(
        postgres_db,
        "CREATE TABLE projects (id int)",
        "INSERT INTO projects SELECT generate_series(1, 10)",
    )
    signals = {
        "projects_lost": {
            "unit": "ratio",
            "measure": "row_drop",
            "sql": "SELECT count(*) FROM projects",
        }
    }
    target = probe(postgres_db, signals)

    def drop() -> tuple[float | None, float | None]:
        sample = observe_once(target)["projects_lost"]
        return sample.value, sample.volume

    assert drop() == (0.0, 10.0)
    execute(postgres_db, "INSERT INTO projects SELECT generate_series(11, 20)")
    assert drop() == (0.0, 20.0)  # growing is not a drop
    execute(postgres_db, "DELETE FROM projects WHERE id > 5")
    assert drop() == (0.75, 20.0)  # 15 of the 20 rows seen are gone
    execute(postgres_db, "INSERT INTO projects SELECT generate_series(6, 15)")
    assert drop() == (0.25, 20.0)  # measured against the highest count, not the last one


def test_bad_sql_fails_only_its_own_signal(postgres_db: str) -> None:
    signals = {
        **UP,
        "broken": {"unit": "count", "sql": "SELECT count(*) FROM no_such_table"},
        "broken_latency": {
            "unit": "seconds",
            "measure": "query_latency",
            "sql": "SELEC 1",
        },
        "fine": {"unit": "count", "sql": "SELECT 7"},
    }
    samples = observe_once(probe(postgres_db, signals))
    assert samples["db_up"].value == 1.0
    assert samples["fine"].value == 7.0
    assert 'relation "no_such_table" does not exist' in str(samples["broken"].error)
    assert "syntax error" in str(samples["broken_latency"].error)


def test_results_of_the_wrong_shape_are_errors_and_empty_ones_no_data(postgres_db: str) -> None:
    signals = {
        "text": {"unit": "count", "sql": "SELECT 'seven'"},
        "rows": {"unit": "count", "sql": "SELECT * FROM generate_series(1, 3)"},
        "columns": {"unit": "count", "sql": "SELECT 1, 2, 3"},
        "no_result": {"unit": "count", "sql": "SET work_mem = '8MB'"},
        "no_row": {"unit": "count", "sql": "SELECT 1 WHERE false"},
        "null": {"unit": "count", "sql": "SELECT NULL::int"},
        "decimal": {"unit": "ratio", "sql": "SELECT 0.125::numeric"},
        "boolean": {"unit": "bool", "sql": "SELECT true"},
        "fine": {"unit": "count", "sql": "SELECT 3"},
    }
    samples = observe_once(probe(postgres_db, signals))
    assert "returned str, expected a number" in str(samples["text"].error)
    assert "more than one row" in str(samples["rows"].error)
    assert "returned 3 columns" in str(samples["columns"].error)
    assert "no result set" in str(samples["no_result"].error)
    assert samples["no_row"].kind == "no_data" and samples["null"].kind == "no_data"
    assert samples["decimal"].value == 0.125 and samples["boolean"].value == 1.0
    assert samples["fine"].value == 3.0


def test_sql_runs_read_only(postgres_db: str) -> None:
    execute(postgres_db, "CREATE TABLE t (id int)")
    sql = "WITH w AS (INSERT INTO t VALUES (1) RETURNING 1) SELECT count(*) FROM w"
    sample = observe_once(probe(postgres_db, {"writes": {"unit": "count", "sql": sql}}))["writes"]
    assert "read-only transaction" in str(sample.error)
    with psycopg.connect(postgres_db) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_query_slower_than_the_budget_fails_alone_within_the_timeout(postgres_db: str) -> None:
    signals = {
        **UP,
        "quick": {"unit": "count", "sql": "SELECT 1"},
        "slow": {"unit": "count", "sql": "SELECT 1 FROM pg_sleep(30)"},
        "after_slow": {"unit": "count", "sql": "SELECT 2"},
    }
    started = time.monotonic()
    samples = observe_once(probe(postgres_db, signals, timeout="1500ms"))
    assert time.monotonic() - started < 1.5
    assert samples["db_up"].value == 1.0 and samples["quick"].value == 1.0
    assert "ran past the probe's time budget" in str(samples["slow"].error)
    assert "time budget (1.2s) was spent" in str(samples["after_slow"].error)

    def sleepers() -> int:
        with psycopg.connect(postgres_db) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%'"
                " AND pid <> pg_backend_pid()"
            ).fetchone()
        return int(row[0]) if row else -1

    # the server cancelled the query itself (statement_timeout): nothing keeps sleeping
    wait_until(lambda: sleepers() == 0, timeout=5, message="pg_sleep still running")


def test_server_that_never_answers_reads_up_zero_within_the_timeout() -> None:
    with TcpStub(reply=None) as silent:
        dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{silent.port}/postgres"
        started = time.monotonic()
        samples = observe_once(probe(dsn, {**UP, **LATENCY}, timeout="1s"))
        assert time.monotonic() - started < 1.0
        assert silent.accepted >= 1
    assert samples["db_up"].value == 0.0
    assert "no answer within 0.8s" in str(samples["db_connect"].error)


def test_server_that_is_not_postgres_reads_up_zero() -> None:
    with TcpStub(reply=b"HTTP/1.1 400 Bad Request\r\n\r\nnot a database") as garbage:
        dsn = f"postgresql://postgres@127.0.0.1:{garbage.port}/postgres?sslmode=disable"
        samples = observe_once(probe(dsn, {**UP, **LATENCY}, timeout="2s"))
    assert samples["db_up"].value == 0.0
    assert "expected authentication request from server" in str(samples["db_connect"].error)


def test_rejected_login_is_unknown_not_database_down(postgres_server: PostgresServer) -> None:
    dsn = f"postgresql://intruder:{PASSWORD}@127.0.0.1:{postgres_server.port}/postgres"
    samples = observe_once(probe(dsn, {**UP, **LATENCY}))
    for sample in samples.values():
        assert sample.value is None
        assert "rejected the probe's login" in str(sample.error), sample
        assert 'role "intruder" does not exist' in str(sample.error)


def test_password_never_appears_in_samples(postgres_server: PostgresServer) -> None:
    signals = {**UP, **LATENCY, "answer": {"unit": "count", "sql": "SELECT 1"}}
    with TcpStub(reply=None) as silent, TcpStub(reply=b"garbage\n") as garbage:
        dsns = [
            f"postgresql://intruder:{PASSWORD}@127.0.0.1:{postgres_server.port}/postgres",
            f"postgresql://postgres:{PASSWORD}@127.0.0.1:{silent.port}/postgres",
            f"host=127.0.0.1 port={garbage.port} user=postgres password={PASSWORD}",
            f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/postgres",  # refused
        ]
        for dsn in dsns:
            target = probe(dsn, signals, timeout="1s")
            assert PASSWORD not in repr(target)
            samples = observe_once(target)
            assert any(s.error for s in samples.values())
            for sample in samples.values():
                assert PASSWORD not in repr(sample)


def test_missing_dsn_variable_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as raised:
        postgres.build("database", config(UP), 15.0, {})
    assert str(raised.value) == f"{ENV}: probes.database.dsn_env: environment variable is not set"
    with pytest.raises(ConfigError, match="environment variable is empty"):
        postgres.build("database", config(UP), 15.0, {ENV: "  "})


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=db user=app password={PASSWORD} sslmode",
        f"{PASSWORD}",
        f"postgresql://app:{PASSWORD}@db:notaport/app",
        f"postgresql://app:{PASSWORD}@db:5432/app?bogus_option=1",
    ],
)
def test_unparseable_dsn_is_a_config_error_without_the_secret(dsn: str) -> None:
    with pytest.raises(ConfigError) as raised:
        postgres.build("database", config(UP), 15.0, {ENV: dsn})
    message = str(raised.value)
    assert message.startswith(f"{ENV}: probes.database.dsn_env: the DSN")
    assert PASSWORD not in message and "the value is not shown" in message


def test_dsn_from_a_file(postgres_db: str, tmp_path: Path) -> None:
    secret = tmp_path / "dsn"
    secret.write_text(postgres_db + "\n")
    model = PostgresConfig.model_validate(
        {"kind": "postgres", "dsn_file": str(secret), "signals": UP}
    )
    assert observe_once(postgres.build("database", model, 15.0, {}))["db_up"].value == 1.0
    missing = model.model_copy(update={"dsn_file": str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match=r"absent: probes.database.dsn_file: file not found"):
        postgres.build("database", missing, 15.0, {})


def test_config_refuses_dsn_in_the_table_and_misplaced_sql() -> None:
    pasted = {"SPEK_SENTINEL_PROBES__DATABASE__DSN_ENV": f"postgresql://u:{PASSWORD}@db/app"}
    with pytest.raises(ConfigError) as raised:
        load_config(SHIPPED, environ=pasted)
    assert str(raised.value).endswith(
        "(overridden by SPEK_SENTINEL_PROBES__DATABASE__DSN_ENV): probes.database: "
        "dsn_env: give the name of an environment variable, not the DSN"
    )
    assert PASSWORD not in str(raised.value)
    base = {"kind": "postgres", "signals": UP}
    with pytest.raises(ValidationError, match="set exactly one of dsn_env or dsn_file"):
        PostgresConfig.model_validate({**base, "dsn_env": "A", "dsn_file": "/run/dsn"})
    cases = {
        "needs 'sql'": {"unit": "ratio", "measure": "row_drop"},
        "takes no 'sql'": {"unit": "bool", "measure": "up", "sql": "SELECT 1"},
        "'sql' is empty": {"unit": "count", "sql": "  "},
    }
    for reason, spec in cases.items():
        with pytest.raises(ValidationError, match=reason):
            config({"x": spec})


def test_pg_stat_database_conflicts_and_checksums_off(postgres_db: str) -> None:
    signals = {
        "db_conflicts": {"unit": "count", "measure": "conflicts"},
        "db_checksum_failures": {"unit": "count", "measure": "checksum_failures"},
    }
    samples = observe_once(probe(postgres_db, signals))
    assert samples["db_conflicts"].value == 0.0  # a primary has no recovery conflicts
    assert "data checksums are off" in str(samples["db_checksum_failures"].error)


def test_checksum_failures_count_a_damaged_page() -> None:
    signals = {
        "db_checksum_failures": {"unit": "count", "measure": "checksum_failures"},
        "rows": {"unit": "count", "sql": "SELECT count(*) FROM projects"},
    }
    with checksummed_postgres() as server:
        dsn = server.create_database("checksums")
        execute(dsn, "CREATE TABLE projects (id int, name text)")
        execute(dsn, "INSERT INTO projects SELECT i, 'project ' || i FROM generate_series(1, 50) i")
        target = probe(dsn, signals)
        healthy = observe_once(target)
        assert healthy["db_checksum_failures"].value == 0.0 and healthy["rows"].value == 50.0
        corrupt_first_page(server, dsn, "projects")

        def failures() -> float:
            samples = observe_once(target)
            assert "DataCorrupted: invalid page in block 0" in str(samples["rows"].error)
            return samples["db_checksum_failures"].value or 0.0

        assert wait_until(failures, timeout=10, message="no checksum failure counted") >= 1


def test_shipped_database_probe_reads_a_spek_schema(postgres_db: str) -> None:
    execute(
        postgres_db,
        "CREATE TABLE projects (id int PRIMARY KEY)",
        "CREATE TABLE agents (id int PRIMARY KEY)",
        "CREATE TABLE tasks (id serial, project_id int, agent_id int, status text,"
        " finished_at timestamptz)",
        "INSERT INTO projects VALUES (1)",
        "INSERT INTO agents VALUES (1)",
        "INSERT INTO tasks (project_id, agent_id, status, finished_at) VALUES"
        " (1, 1, 'ok', now()), (1, 1, 'ok', now()), (1, 1, 'failed', now()),"
        " (2, 1, 'ok', now()), (1, 9, 'failed', now())",  # one orphan of each kind
    )
    model = load_config(SHIPPED, environ={}).model.probes["database"]
    target = postgres.build("database", model, 15.0, {"SPEK_DB_DSN": postgres_db})
    samples = observe_once(target)
    assert samples["db_up"].value == 1.0
    query_seconds = samples["db_query_seconds"].value
    assert query_seconds is not None and query_seconds > 0
    assert samples["integrity_violations"].value == 2.0
    ratio = samples["agent_failure_ratio"]
    assert ratio.value == 0.4 and ratio.volume in (None, 5.0)
