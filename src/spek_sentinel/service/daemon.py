"""``spek-sentinel run``: the composition root. One asyncio process: APScheduler runs each probe
at its interval, a tick advances time, carries out answers, escalates and sends pages; uvicorn
serves the API, health, readiness and metrics; leadership is kept when replicas share a lock.

SIGTERM (and SIGINT) stop scheduling, let a running rollback reach the end of its current
step run (its journal makes any later resume safe), and exit 0. SIGHUP reloads: the new table
is validated first; an invalid one is reported and the running one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Generator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import uvicorn
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from starlette.applications import Starlette

from spek_sentinel.config import Config, load_config
from spek_sentinel.console import ConsoleRoutes
from spek_sentinel.domain.errors import ConfigError, ConfigProblem, RollbackError
from spek_sentinel.domain.rules import RuleState
from spek_sentinel.domain.samples import ReleaseMark
from spek_sentinel.domain.units import iso
from spek_sentinel.ha.leader import LeaderStatus, maintain
from spek_sentinel.paging.build import (
    inbound_secrets,
    pager_for,
    pager_secrets,
    pager_settings,
)
from spek_sentinel.paging.desk import AlertDesk
from spek_sentinel.probes.base import Probe
from spek_sentinel.probes.registry import build_probes
from spek_sentinel.service.api import api_token, create_app
from spek_sentinel.service.backups import LAST_KNOWN_GOOD, page_backup_failure, take_backup
from spek_sentinel.service.leadership import build_leadership
from spek_sentinel.service.metrics import Metrics
from spek_sentinel.service.rollback_targets import database_target
from spek_sentinel.service.sd_notify import Notifier
from spek_sentinel.service.status_routes import StatusRoutes
from spek_sentinel.service.watch import Watch
from spek_sentinel.store.open import state_location
from spek_sentinel.store.records import StateStore
from spek_sentinel.store.state import StateDocuments

log = logging.getLogger(__name__)

TICK = 5.0  # seconds between ticks: time-based verdicts, answers, escalation, the outbox
RELEASE_CHECK = 15.0  # seconds between release checks: a new release, and "known good"


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM, SIGINT and SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def listen_address(config: Config) -> tuple[str, int]:
    host, _, port = config.model.api.listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class Generation:
    """Everything built from one version of the table; a reload builds the next one."""

    def __init__(self, config: Config, environ: Mapping[str, str], clock: Callable[[], float]):
        self.config = config
        self.environ = environ
        self.clock = clock
        state_dir = Path(config.model.sentinel.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        # everything that reads a secret first: a missing one stops here, before any I/O
        settings = pager_settings(config, environ)
        self.pagers = {name: pager_for(name, one) for name, one in settings.items()}
        self.probes: list[Probe] = build_probes(config, environ)
        token = api_token(config, environ)
        inbound = inbound_secrets(config, environ)
        # the rollback's database: read now, not first when an incident needs a rollback
        database = database_target(config, environ)
        state = state_location(config, environ)  # SQLite under state_dir, or PostgreSQL
        self.secrets = [
            *state.secrets,
            *pager_secrets(settings),
            *(value for value in (token, inbound.pagerduty, inbound.slack) if value),
            *(database.secrets if database is not None else ()),
        ]
        self.leadership, guard = build_leadership(config, environ)
        self.metrics = Metrics(
            rules=[rule.name for rule in config.rules],
            probes=[probe.name for probe in self.probes],
            pagers=list(self.pagers),
            playbooks=list(config.model.playbooks),
        )
        self.desk = AlertDesk.open(state, config.escalation, config.notice_pagers)
        self.documents = StateDocuments.open(state)
        self.signals = StateStore.open(state)
        self.watch = Watch(
            config,
            environ,
            desk=self.desk,
            pagers=self.pagers,
            clock=clock,
            documents=self.documents,
            metrics=self.metrics,
            leadership=self.leadership,
            guard=guard,
        )
        shortest = min((probe.interval for probe in self.probes), default=TICK)
        status = StatusRoutes(self.watch, self.metrics, stale_after=max(3 * shortest, 60.0))
        console = ConsoleRoutes(self.watch, token, clock, secrets=self.secrets)
        self.app: Starlette = create_app(
            config,
            self.signals,
            token,
            clock,
            desk=self.desk,
            inbound=inbound,
            extra_routes=[*status.routes(), *console.routes()],
        )
        self._inbound_seen: dict[tuple[str, str], int] = {}
        self._release_seen: str | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self.server: _Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_leadership = asyncio.Event()

    # -- start and stop -----------------------------------------------------------------------

    async def start(self) -> None:
        """Schedule the jobs and serve. The watch takes back the saved state on its first
        decision as the leader (at once on a single node)."""
        scheduler = AsyncIOScheduler(timezone=UTC)
        now = datetime.now(UTC)
        for probe in self.probes:
            scheduler.add_job(
                self.watch.poll,
                IntervalTrigger(seconds=probe.interval, jitter=min(probe.interval * 0.1, 5.0)),
                args=[probe],
                id=f"probe:{probe.name}",
                name=f"probe {probe.name}",
                coalesce=True,
                max_instances=1,
                misfire_grace_time=max(1, int(probe.interval)),
                next_run_time=now,
            )
        scheduler.add_job(
            self._tick,
            IntervalTrigger(seconds=TICK),
            id="tick",
            name="tick",
            coalesce=True,
            max_instances=1,
            next_run_time=now,
        )
        scheduler.add_job(
            self._release_health,
            IntervalTrigger(seconds=RELEASE_CHECK),
            id="releases",
            name="release health",
            coalesce=True,
            max_instances=1,
            next_run_time=now,
        )
        every = self.config.model.rollback.backup_every
        if every > 0 and self.config.model.rollback.database is not None:
            scheduler.add_job(
                self._routine_backup,
                IntervalTrigger(seconds=every),
                id="backup",
                name="routine backup",
                coalesce=True,
                max_instances=1,
            )
        scheduler.add_listener(
            _log_job_event, EVENT_JOB_MISSED | EVENT_JOB_ERROR | EVENT_JOB_MAX_INSTANCES
        )
        self.scheduler = scheduler
        host, port = listen_address(self.config)
        self.server = _Server(
            uvicorn.Config(
                self.app,
                host=host,
                port=port,
                lifespan="off",
                log_config=None,
                access_log=False,
            )
        )
        self._tasks.append(asyncio.create_task(self._serve(), name="http"))
        self._tasks.append(
            asyncio.create_task(
                maintain(self.leadership, self._stop_leadership, self._leader_changed),
                name="leadership",
            )
        )
        scheduler.start()
        log.info(
            "watching: %d probes, %d rules, API on %s:%d, state in %s",
            len(self.probes),
            len(self.config.rules),
            host,
            port,
            self.config.model.sentinel.state_dir,
        )

    async def _serve(self) -> None:
        assert self.server is not None
        await self.server.serve()
        if not self.server.should_exit:
            log.error(
                "the HTTP server stopped on its own (is %s taken?)", self.config.model.api.listen
            )

    async def wait_serving(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server is not None and self.server.started:
                return True
            if self._tasks and self._tasks[0].done():
                return False
            await asyncio.sleep(0.05)
        return False

    async def stop(self) -> None:
        """Stop scheduling; a running rollback finishes its current step and stops there (its
        journal resumes it at the next start); then close everything."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        self.watch.stopping = True
        running = list(self.watch.state.rollbacks)
        if running:
            log.warning(
                "stopping: the rollback of %s stops after its current step and resumes at the "
                "next start",
                ", ".join(running),
            )
            await self.watch.rollbacks_done()
        self.watch.save(self.clock())
        if self.server is not None:
            self.server.should_exit = True
        self._stop_leadership.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.watch.aclose()
        await asyncio.gather(*(probe.aclose() for probe in self.probes), return_exceptions=True)
        self.desk.close()
        self.documents.close()
        self.signals.close()

    # -- jobs ---------------------------------------------------------------------------------

    async def _tick(self) -> None:
        await self.watch.tick()
        rejected = self.app.state.inbound_rejected
        for (source, reason), count in list(rejected.items()):
            seen = self._inbound_seen.get((source, reason), 0)
            for _ in range(count - seen):
                self.metrics.inbound_rejected(source, reason)
            self._inbound_seen[(source, reason)] = count

    def _healthy(self) -> bool:
        """Every watched rule OK, each judged on at least one usable sample: not pending,
        firing, resolving, blind, or not yet seen."""
        statuses = [s for s in self.watch.sentinel.engine.status() if s.rule.phase == "watch"]
        return bool(statuses) and all(
            status.state is RuleState.OK and status.last_usable_at is not None
            for status in statuses
        )

    async def _routine_backup(self) -> None:
        """A verified "last_known_good" backup while every rule is OK; a failure pages."""
        if not self.leadership.is_leader:
            return
        if not self._healthy():
            log.info("routine backup skipped: not every rule is OK")
            return
        history = await asyncio.to_thread(self.signals.releases)
        if history and history[0].known_good_at is None:
            # a release not yet proven good may already be damaging data: such a backup
            # must never become the "last known good" a restore playbook picks
            log.info("routine backup skipped: release %s is not known good yet", history[0].version)
            return
        try:
            record = await asyncio.to_thread(
                take_backup, self.config, self.environ, LAST_KNOWN_GOOD
            )
        except (RollbackError, ConfigError) as exc:
            failure = exc if isinstance(exc, RollbackError) else RollbackError(str(exc))
            page_backup_failure(self.config, LAST_KNOWN_GOOD, failure, self.clock(), self.environ)
            return
        if record is not None:
            log.info("routine backup verified: %s (sha256 %s)", record.path, record.sha256)

    async def _release_health(self) -> None:
        """A new release anchors the rules' release baselines and trend warm-ups; a release
        healthy (every watch rule OK) for ``known_good_after`` becomes known good, the leader's
        judgement only: followers write nothing."""
        history = await asyncio.to_thread(self.signals.releases)
        if history and history[0].version != self._release_seen:
            current = history[0]
            mark = ReleaseMark(current.first_seen, current.version)
            if self._release_seen is None:
                self.watch.sentinel.engine.release(mark)  # at start: anchor baselines only
            else:
                self.watch.sentinel.release(mark)  # may be a rollback landing
            self._release_seen = current.version
            log.info("release %s current since %s", current.version, iso(current.first_seen))
        if not self.leadership.is_leader:
            return
        healthy = self._healthy()
        known_good_after = self.config.model.rollback.known_good_after
        release = await asyncio.to_thread(
            self.signals.mark_healthy, self.clock(), healthy, known_good_after
        )
        if release is not None and release.known_good_at is not None:
            log.info("release %s is known good", release.version)

    def _leader_changed(self, status: LeaderStatus) -> None:
        self.metrics.set_leader(status.is_leader)


def _log_job_event(event: JobExecutionEvent) -> None:
    if event.code == EVENT_JOB_MISSED:
        log.warning(
            "job %s missed its run at %s (the loop was busy)",
            event.job_id,
            event.scheduled_run_time,
        )
    elif event.code == EVENT_JOB_MAX_INSTANCES:
        log.warning("job %s still running at its next run: skipped", event.job_id)
    elif isinstance(event.exception, asyncio.CancelledError):
        # a job still running when the daemon stops: expected, and not worth an alert
        log.info("job %s cancelled by the stop", event.job_id)
    elif event.exception is not None:
        log.error("job %s failed: %r", event.job_id, event.exception, exc_info=event.exception)


class Daemon:
    def __init__(
        self,
        config_path: str,
        environ: Mapping[str, str],
        clock: Callable[[], float] = time.time,
        on_secrets: Callable[[list[str]], None] | None = None,
    ) -> None:
        """``on_secrets``: told the secret values each loaded table uses (the log redactor)."""
        self.on_secrets = on_secrets
        self.config_path = config_path
        self.environ = environ
        self.clock = clock
        self.notifier = Notifier.from_environment()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.generation: Generation | None = None

    def request_stop(self) -> None:
        log.info("stop requested")
        self._stop.set()

    def request_reload(self) -> None:
        log.info("reload requested")
        self._reload.set()

    async def run(self) -> int:
        """Serve until asked to stop. A table or secret that cannot be loaded at start is a
        ConfigError for the caller (exit 1); after that, nothing but a signal ends the loop."""
        generation = Generation(load_config(self.config_path), self.environ, self.clock)
        if self.on_secrets is not None:
            self.on_secrets(generation.secrets)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        await generation.start()
        self.generation = generation
        if not await generation.wait_serving():
            await generation.stop()
            reason = "the HTTP server did not start (address in use?)"
            raise ConfigError([ConfigProblem(self.config_path, "api.listen", reason)])
        self.notifier.ready()
        self.notifier.status("watching")
        watchdog = asyncio.create_task(self._watchdog(), name="watchdog")
        try:
            while not self._stop.is_set():
                waiters = [
                    asyncio.create_task(self._stop.wait()),
                    asyncio.create_task(self._reload.wait()),
                ]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    await self._reload_config()
        finally:
            self.notifier.stopping()
            watchdog.cancel()
            if self.generation is not None:
                await self.generation.stop()
        log.info("stopped")
        return 0

    async def _reload_config(self) -> None:
        old = self.generation
        assert old is not None
        try:  # the table and its secrets are read before anything running is stopped
            new = Generation(load_config(self.config_path), self.environ, self.clock)
        except ConfigError as exc:
            log.error("reload refused, the running table is kept: %s", exc)
            self.notifier.status(f"reload refused: {exc}")
            return
        self.notifier.reloading()
        if self.on_secrets is not None:
            self.on_secrets(new.secrets)
        await old.stop()
        new.watch.sentinel.restore(old.watch.sentinel.snapshot())
        new.watch.save(self.clock())
        await new.start()
        await new.wait_serving()
        self.generation = new
        self.notifier.ready()
        log.info("reloaded %s", self.config_path)

    async def _watchdog(self) -> None:
        """WATCHDOG=1 from the main loop itself: if the loop stalls, systemd restarts us."""
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)
