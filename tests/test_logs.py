"""The daemon's logs: stdlib and structlog lines as JSON objects, secrets masked, reloadable."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from spek_sentinel.service.logs import QUIET_LOGGERS, configure_logging

DSN = "postgresql://sentinel:s3cr3t-pw@db.internal:5432/spek"
WEBHOOK = "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
        for name, previous in quiet.items():
            logging.getLogger(name).setLevel(previous)
        structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line of ``stream`` as a JSON object (fails on a line that is not one)."""
    text = stream.getvalue()
    assert text.endswith("\n")
    parsed = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(obj, dict) for obj in parsed)
    return parsed


def test_stdlib_lines_are_json_objects_with_level_logger_event() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)  # a StringIO is no TTY: JSON
    log = logging.getLogger("spek_sentinel.service.watch")
    log.warning("page via %s not delivered: %s", "slack", "HTTP 503")
    log.info("alert %s opened\nsecond line", "a-1", extra={"incident": "inc-7"})

    first, second = lines(stream)
    assert list(first)[:4] == ["timestamp", "level", "logger", "event"]
    assert first["level"] == "warning"
    assert first["logger"] == "spek_sentinel.service.watch"
    assert first["event"] == "page via slack not delivered: HTTP 503"
    stamp = datetime.fromisoformat(first["timestamp"])
    assert stamp.utcoffset() == timedelta(0)
    assert first["timestamp"].endswith("Z")
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=5)
    # a newline in a message stays inside its object: one object per line
    assert second["event"] == "alert a-1 opened\nsecond line"
    assert second["incident"] == "inc-7"  # extra= becomes a field


def test_structlog_loggers_carry_bound_values() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    log = structlog.get_logger("spek_sentinel.rollback").bind(incident="inc-1")
    log.info("step %s finished", "stop traffic", seconds=2.5)

    (line,) = lines(stream)
    assert line["event"] == "step stop traffic finished"
    assert line["logger"] == "spek_sentinel.rollback"
    assert line["level"] == "info"
    assert line["incident"] == "inc-1"
    assert line["seconds"] == 2.5


def test_an_exception_carries_its_traceback_in_a_field() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    log = logging.getLogger("spek_sentinel.rollback.executor")

    def connect() -> None:
        raise ConnectionError(f"cannot connect to {DSN}")

    try:
        connect()
    except ConnectionError:
        log.exception("rollback of %s: executor error", "inc-9")

    (line,) = lines(stream)
    assert line["level"] == "error"
    assert line["event"] == "rollback of inc-9: executor error"
    trace = line["exception"]
    assert trace.startswith("Traceback (most recent call last):")
    assert "in connect" in trace
    assert "ConnectionError: cannot connect to postgresql://sentinel:***@db.internal" in trace
    assert "s3cr3t-pw" not in stream.getvalue()


def test_secrets_are_masked_in_messages_tracebacks_and_values() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, secrets=[WEBHOOK, "pd-routing-key-123"])
    log = logging.getLogger("spek_sentinel.paging")
    log.info("database at %s", DSN)  # a DSN password: masked by pattern
    log.info("psql args: host=db password=hunter2 dbname=spek")  # keyword password
    log.info("posting to %s", WEBHOOK)  # a listed secret, wherever it appears
    structlog.get_logger("spek_sentinel.paging").warning(
        "delivery failed", url=WEBHOOK, request={"routing_key": "pd-routing-key-123", "n": 1}
    )

    text = stream.getvalue()
    for secret in ("s3cr3t-pw", "hunter2", "XXXXXXXXXXXXXXXXXXXXXXXX", "pd-routing-key-123"):
        assert secret not in text
    dsn, keyword, webhook, bound = lines(stream)
    assert dsn["event"] == "database at postgresql://sentinel:***@db.internal:5432/spek"
    assert keyword["event"] == "psql args: host=db password=*** dbname=spek"
    assert webhook["event"] == "posting to ***"
    assert bound["url"] == "***"
    assert bound["request"] == {"routing_key": "***", "n": 1}


def test_level_filters_and_noisy_libraries_stay_quiet() -> None:
    stream = io.StringIO()
    configure_logging("WARNING", stream=stream)
    logging.getLogger("spek_sentinel.x").info("dropped")
    structlog.get_logger("spek_sentinel.x").info("dropped too")
    logging.getLogger("spek_sentinel.x").error("kept")
    assert [line["event"] for line in lines(stream)] == ["kept"]

    stream = io.StringIO()
    configure_logging("debug", stream=stream)
    logging.getLogger("httpx").info("HTTP Request: POST %s", WEBHOOK)
    logging.getLogger("apscheduler.executors.default").info("Running job")
    logging.getLogger("spek_sentinel.x").debug("debug kept")
    logging.getLogger("httpx").warning("httpx warning kept")
    assert [line["event"] for line in lines(stream)] == ["debug kept", "httpx warning kept"]

    with pytest.raises(ValueError, match="unknown log level 'verbose'"):
        configure_logging("verbose", stream=io.StringIO())


def test_configuring_twice_replaces_only_its_own_handler() -> None:
    other = logging.NullHandler()  # such as pytest's or uvicorn's: left alone
    logging.getLogger().addHandler(other)
    first, second = io.StringIO(), io.StringIO()
    configure_logging(stream=first)
    configure_logging(stream=first)
    logging.getLogger("spek_sentinel.x").warning("once")
    assert [line["event"] for line in lines(first)] == ["once"]

    configure_logging(stream=second)  # SIGHUP: a new stream, the old one gets nothing more
    before = structlog.get_logger("spek_sentinel.early")
    configure_logging(stream=second, secrets=["late-secret"])
    logging.getLogger("spek_sentinel.x").warning("twice")
    before.warning("made before the reload: late-secret")
    assert [line["event"] for line in lines(first)] == ["once"]
    assert [line["event"] for line in lines(second)] == ["twice", "made before the reload: ***"]
    assert other in logging.getLogger().handlers


def test_a_tty_gets_console_lines_unless_json_is_asked_for() -> None:
    tty = Tty()
    configure_logging(stream=tty)
    logging.getLogger("spek_sentinel.x").warning("on a terminal %s", DSN)
    text = tty.getvalue()
    assert "on a terminal postgresql://sentinel:***@" in text
    assert "spek_sentinel.x" in text
    assert not text.lstrip().startswith("{")

    forced = Tty()
    configure_logging(stream=forced, json=True)
    logging.getLogger("spek_sentinel.x").warning("json anyway")
    assert [line["event"] for line in lines(forced)] == ["json anyway"]

    plain = io.StringIO()
    configure_logging(stream=plain, json=False)
    logging.getLogger("spek_sentinel.x").warning("console without colours")
    assert "\x1b[" not in plain.getvalue()
    assert "console without colours" in plain.getvalue()
