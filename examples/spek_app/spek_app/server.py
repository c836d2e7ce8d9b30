"""``spek-app serve``: migrate up to the release's schema, then serve HTTP and WebSocket and
run the agents until SIGTERM or SIGINT (exit 0). A failed migration exits 1 after logging
"Migration failed" (and pushing ``migration_failed`` when a sentinel URL is set); v2.0.0-crash
exits 1 with a traceback before it listens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import redis.asyncio

from spek_app import agent
from spek_app.app import App
from spek_app.http import connection_handler
from spek_app.metrics import Metrics
from spek_app.migrate import MigrateError, Migrator
from spek_app.releases import Fault
from spek_app.settings import Settings
from spek_app.signals import SignalPusher
from spek_app.store import Cache, Pool, Store

log = logging.getLogger("spek_app")

WORKERS = 2


class StartupCrashError(RuntimeError):
    pass


def serve(settings: Settings) -> int:
    release = settings.release
    signals = SignalPusher(
        settings.signal_url, settings.signal_token, f"spek-app {release.version}"
    )
    log.info("starting spek-app %s (schema %d)", release.version, release.schema)
    if settings.migrate:
        try:
            migrator = Migrator(settings.dsn)
            applied = migrator.up(release.schema)
            log.info(
                "migrations: %s; database at version %d",
                ", ".join(applied) or "none pending",
                migrator.version(),
            )
        except MigrateError as exc:
            log.error("%s", exc)
            if "Migration failed" in str(exc):
                signals.push("migration_failed", f"{release.version}: {exc}")
            return 1
    if release.fault is Fault.CRASH:
        raise StartupCrashError(
            f"{release.version}: startup check failed: feature flag table 'agent_flags_v2' "
            "is missing"
        )
    return asyncio.run(_serve(settings, signals))


async def _serve(settings: Settings, signals: SignalPusher) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    pool = Pool(settings.dsn)
    client = redis.asyncio.Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=3
    )
    app = App(settings, Store(pool), Cache(client, settings.redis_prefix), Metrics(), signals)
    server = await asyncio.start_server(
        connection_handler(app), settings.host, settings.port, limit=64 * 1024
    )
    tasks = [asyncio.create_task(agent.worker(app, stop)) for _ in range(WORKERS)]
    if settings.agent_interval > 0:
        tasks.append(asyncio.create_task(agent.generator(app, settings.agent_interval, stop)))
    if settings.release.fault is Fault.LEAK:
        tasks.append(asyncio.create_task(agent.leak(app, stop)))
    port = server.sockets[0].getsockname()[1]
    log.info("spek-app %s listening on http://%s:%d", settings.release.version, settings.host, port)
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        server.close()
        stop.set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)
        await client.aclose()
        await pool.close()
    return 0
