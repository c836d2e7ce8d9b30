"""How the daemon reports its scheduler's job events: a job cancelled by a stop is not an
error (it would trip a log alert on every restart); a job that fails is."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest
from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent

from spek_sentinel.service.daemon import _log_job_event


def event(exception: BaseException) -> JobExecutionEvent:
    return JobExecutionEvent(
        EVENT_JOB_ERROR, "probe:app", "default", datetime.now(UTC), exception=exception
    )


def test_a_job_cancelled_by_the_stop_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spek_sentinel.service.daemon")
    _log_job_event(event(asyncio.CancelledError()))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "job probe:app cancelled by the stop")
    ]


def test_a_job_that_fails_is_an_error(caplog: pytest.LogCaptureFixture) -> None:
    _log_job_event(event(RuntimeError("boom")))
    [record] = caplog.records
    assert record.levelno == logging.ERROR and "job probe:app failed" in record.getMessage()
