"""The background agents: a worker that takes task ids off the Redis queue, runs them and records
the outcome, and a generator that queues a synthetic task every ``agent_interval`` seconds so
that a release does work without outside traffic. About one task in twenty fails, on every
release: agent failures are part of normal life, the sentinel's threshold is 20%."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from spek_app.app import App
from spek_app.releases import Fault

log = logging.getLogger("spek_app.agent")

KINDS = ("plan", "code", "review", "test", "deploy")
AGENTS = ("planner", "coder", "reviewer")
FAIL_EVERY = 20
QUEUE_WAIT = 1.0  # seconds a worker blocks on the queue before looking again
RETRY_PAUSE = 1.0  # after a backend error


def fails(task_id: int) -> bool:
    return task_id % FAIL_EVERY == FAIL_EVERY - 1


async def worker(app: App, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            task_id = await app.cache.next_task(QUEUE_WAIT)
            if task_id is not None:
                await run_task(app, task_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("agent worker: %s: %s", type(exc).__name__, exc)
            await _pause(stop, RETRY_PAUSE)


async def run_task(app: App, task_id: int) -> None:
    kind = await app.store.start_task(task_id)
    if kind is None:
        return  # not queued any more (another worker, or deleted)
    started = time.perf_counter()
    await asyncio.sleep(0.005 + (task_id % 5) * 0.002)  # the work
    outcome = "failed" if fails(task_id) else "succeeded"
    duration_ms = max(1, round((time.perf_counter() - started) * 1000))
    if app.fault is Fault.CORRUPT:
        await app.store.finish_task_corrupted(task_id, outcome, duration_ms)
    else:
        await app.store.finish_task(task_id, outcome, duration_ms)
    app.metrics.agent_tasks.labels(outcome).inc()


async def generator(app: App, interval: float, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        try:
            task_id = await app.store.create_task(
                KINDS[n % len(KINDS)], AGENTS[n % len(AGENTS)], "agent", app.release.schema >= 3
            )
            await app.cache.enqueue(task_id)
            n += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("agent generator: %s: %s", type(exc).__name__, exc)
        await _pause(stop, interval)


async def leak(app: App, stop: asyncio.Event) -> None:
    """v2.0.0-leak: a request history that is never trimmed. Filled with non-zero bytes so the
    pages are really touched and resident memory grows by the configured rate, up to the
    configured ceiling (the leak stops there; the process keeps what it holds)."""
    history: list[bytes] = []
    tick = 0.25
    faults = app.settings.faults
    chunk = max(1, int(faults.leak_bytes_per_second * tick))
    while not stop.is_set():
        if (len(history) + 1) * chunk <= faults.leak_max_bytes:
            history.append(b"\x01" * chunk)
            app.metrics.leaked.set(len(history) * chunk)
        await _pause(stop, tick)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
