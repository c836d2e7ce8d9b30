"""``spek-sentinel demo``: a bad deploy of the sample SPEK app, detected, rolled back and verified
on this machine, with nothing started by hand and nothing left behind.

It starts a throwaway PostgreSQL cluster and ``redis-server`` (demo_servers.py), writes a
threshold table with short windows into a temporary directory (SQLite state, backups,
incidents), deploys the sample app's good release through the process backend and records it in
the release history, and runs the daemon's watch loop (``Watch``, real probes) in this process
while a traffic generator uses the app. Once the release is known good, it takes the
pre-deployment backup and deploys the bad release. From there the sentinel is on its own: the
view shows each rule's state changes with their evidence, the decision, the executor's phases
with their timings and the verification. Then the incident report, the downtime, and the
cleanup, which also runs on Ctrl-C (SIGINT) or SIGTERM: a running rollback stops after its
current step, then the app, Redis and PostgreSQL are stopped and the temporary directories
removed.

The sample app is ``examples/spek_app`` of the checkout this package runs from (or the one
``--app-dir`` names, or an installed ``spek_app``); it runs under this interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO, TypeVar

import httpx
import psycopg

from spek_sentinel.config import Config, load_config
from spek_sentinel.domain.decisions import Decision, Resolve
from spek_sentinel.domain.errors import ConfigError, RollbackError
from spek_sentinel.domain.rules import Rule, RuleState
from spek_sentinel.domain.samples import Sample
from spek_sentinel.domain.settings import PolicySettings
from spek_sentinel.engine.sentinel import Sentinel
from spek_sentinel.paging.desk import AlertDesk
from spek_sentinel.probes.base import Probe
from spek_sentinel.probes.registry import build_probes
from spek_sentinel.rollback.apps.process import ProcessBackend
from spek_sentinel.rollback.executor import RunEvent
from spek_sentinel.rollback.journal import Journal
from spek_sentinel.service.backups import PRE_DEPLOYMENT, take_backup
from spek_sentinel.service.demo_app import (
    APP_NAME,
    BAD,
    GOOD,
    KNOWN_GOOD_AFTER,
    SampleApp,
    find_sample_app,
    render_table,
)
from spek_sentinel.service.demo_servers import (
    DemoUnavailableError,
    PostgresCluster,
    RedisServer,
    find_binaries,
    free_port,
)
from spek_sentinel.service.demo_traffic import Traffic, app_errors
from spek_sentinel.service.demo_view import DemoView
from spek_sentinel.service.logs import configure_logging
from spek_sentinel.service.narrator import RollbackNarrator
from spek_sentinel.service.rollback_plan import PlanRequest, app_backend
from spek_sentinel.service.rollback_run import (
    RollbackResult,
    execute,
    plan_rollback,
    target_release,
)
from spek_sentinel.service.watch import RollbackOrder, Watch
from spek_sentinel.store.open import StateLocation, state_location
from spek_sentinel.store.records import StateStore
from spek_sentinel.store.state import StateDocuments

log = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: something to install first
EXIT_INTERRUPTED = 130  # 128 + SIGINT

TICK = 1.0  # seconds between the watch's ticks
STATUS_EVERY = 5.0  # seconds between status lines
WAIT_KNOWN_GOOD = 60.0
WAIT_ROLLBACK = 90.0  # from the bad deploy to the end of the rollback
WAIT_RESOLVED = 30.0
CLEANUP_WAIT = 60.0  # for a running rollback to reach the end of its current step


@dataclass(frozen=True, slots=True)
class DemoOptions:
    app_dir: Path | None = None  # examples/spek_app; default: the checkout's, or an installed one
    keep: bool = False  # keep the work directory (state, report, logs) for a look afterwards


class _TappedSentinel(Sentinel):
    """The engine and the policy as the daemon runs them; every decision is also shown."""

    def __init__(
        self,
        rules: Sequence[Rule],
        settings: PolicySettings,
        tap: Callable[[Decision], None],
    ) -> None:
        super().__init__(rules, settings)
        self._tap = tap

    def observe(self, sample: Sample) -> list[Decision]:
        decisions = super().observe(sample)
        for decision in decisions:
            self._tap(decision)
        return decisions

    def advance(self, now: float) -> list[Decision]:
        decisions = super().advance(now)
        for decision in decisions:
            self._tap(decision)
        return decisions


class Demo:
    def __init__(self, out: TextIO, options: DemoOptions | None = None) -> None:
        self.view = DemoView(out)
        self.options = options or DemoOptions()
        self.work: Path | None = None
        self.postgres: PostgresCluster | None = None
        self.redis: RedisServer | None = None
        self.backend: ProcessBackend | None = None
        self.config: Config | None = None
        self.environ: dict[str, str] = {}
        self.state: StateLocation | None = None
        self.watch: Watch | None = None
        self.desk: AlertDesk | None = None
        self.documents: StateDocuments | None = None
        self.probes: list[Probe] = []
        self.traffic: Traffic | None = None
        self.app_url = ""
        self._background: list[asyncio.Task[None]] = []
        self._winding_down = False
        self._rollback_finished: asyncio.Event | None = None
        self._resolved: asyncio.Event | None = None
        self._result: RollbackResult | None = None
        self._rollback_window: tuple[float, float] | None = None
        self._interrupted = False
        self._log_file: IO[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- the whole run -----------------------------------------------------------------------

    async def run(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        self._rollback_finished = asyncio.Event()
        self._resolved = asyncio.Event()
        scenario = asyncio.create_task(self._scenario(), name="demo")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._interrupt, scenario)
        code = EXIT_FAILED
        try:
            code = await scenario
        except asyncio.CancelledError:
            code = EXIT_INTERRUPTED
        except DemoUnavailableError as exc:
            self.view.write(f"spek-sentinel demo: {exc}")
            code = EXIT_UNAVAILABLE
        except Exception as exc:
            log.exception("the demo failed")
            self.view.line("FAILED", f"{type(exc).__name__}: {exc}")
            self._show_logs()
            code = EXIT_FAILED
        finally:
            try:
                await self._cleanup()
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
        if code == EXIT_INTERRUPTED:
            self.view.write("demo interrupted; everything it started is stopped and removed")
        return code

    def _interrupt(self, scenario: asyncio.Task[int]) -> None:
        if self._interrupted:
            self.view.line("signal", "still cleaning up; the demo exits once it is done")
            return
        self._interrupted = True
        self.view.line("signal", "interrupted: stopping what the demo started")
        scenario.cancel()

    async def _scenario(self) -> int:
        view = self.view
        view.write(
            "spek-sentinel demo: a bad deploy of the sample SPEK app, watched by the sentinel,\n"
            "which detects it, rolls it back and verifies, on its own. Ctrl-C stops it cleanly."
        )
        app = await _blocking(find_sample_app, self.options.app_dir)
        binaries = find_binaries()
        await self._setup(app, binaries.postgres_bin, binaries.redis_server)
        backend = self.backend
        assert backend is not None

        view.heading(f"deploy {GOOD} (the good release)")
        await self._deploy(GOOD)
        self._record_release(GOOD, "deploy")
        view.line("release", f"{GOOD} recorded in the release history (spek-sentinel releases)")

        view.heading("the sentinel watches")
        self._start_watching()
        await self._wait_known_good()

        view.heading(f"deploy {BAD} (30% of API requests fail)")
        record = await _blocking(take_backup, self._config(), self.environ, PRE_DEPLOYMENT)
        if record is not None:
            view.line(
                "backup",
                f"pre-deployment backup verified: {record.path.name} ({record.size} bytes, "
                f"sha256 {record.sha256[:12]}…)",
            )
        self._record_release(BAD, "deploy")
        view.line("release", f"{BAD} recorded; the rollback target is {GOOD} (newest known good)")
        before = await _blocking(self._tasks_written)
        await self._deploy(BAD)
        view.line("watch", "from here on the sentinel acts alone")

        outcome = await self._wait_rollback()
        if outcome is None:
            return EXIT_FAILED
        await self._after_rollback(before)
        await self._stop_background()
        return self._report()

    # --- setting up --------------------------------------------------------------------------

    async def _setup(self, app: SampleApp, postgres_bin: Path, redis_server: Path) -> None:
        view = self.view
        work = Path(tempfile.mkdtemp(prefix="spek-demo-"))
        self.work = work
        self._log_file = (work / "sentinel.log").open("a", encoding="utf-8")
        configure_logging("info", json=True, stream=self._log_file)
        view.line("setup", f"work dir {work}: SQLite state, backups, incidents, the table, logs")
        view.line("setup", f"sample app: {app.where}")
        self.postgres = PostgresCluster(postgres_bin)
        view.line("setup", f"starting PostgreSQL (throwaway cluster in {self.postgres.base})")
        await _blocking(self.postgres.start)
        dsn = await _blocking(self.postgres.create_database, "spek_demo")
        view.line("setup", f"{self.postgres.version} on 127.0.0.1:{self.postgres.port}")
        self.redis = RedisServer(redis_server, work / "redis")
        await _blocking(self.redis.start)
        version = self.redis.version.split(" sha=")[0]
        view.line("setup", f"{version} on 127.0.0.1:{self.redis.port} (pid {self.redis.pid})")
        app_port = free_port()
        self.app_url = f"http://127.0.0.1:{app_port}"
        self.environ = {
            "SPEK_DEMO_DSN": dsn,
            "SPEK_DEMO_REDIS_URL": self.redis.url,
            "SPEK_DEMO_SESSION_SECRET": secrets.token_urlsafe(24),
            "SPEK_DEMO_JWT_SECRET": secrets.token_urlsafe(24),
        }
        table = work / "thresholds.toml"
        table.write_text(render_table(work, self.app_url, app, app_port), encoding="utf-8")
        self.config = config = load_config(str(table))
        self.state = state_location(config, self.environ)
        backend = app_backend(
            config.model.rollback, self.environ, Path(config.model.sentinel.state_dir)
        )
        assert isinstance(backend, ProcessBackend)
        self.backend = backend
        rules = ", ".join(
            f"{rule.name} ({rule.description or rule.signal})"
            for rule in config.rules
            if rule.phase == "watch"
        )
        view.line("setup", f"table {table}", [f"rules: {rules}"])

    def _config(self) -> Config:
        assert self.config is not None
        return self.config

    async def _deploy(self, release: str) -> None:
        backend = self.backend
        assert backend is not None
        placed = await _blocking(backend.rollback_to, release, 60.0)
        self.view.line("deploy", placed.action)
        started = await _blocking(backend.start, 60.0)
        self.view.line("deploy", started.action, [f"app on {self.app_url}, log {backend.log_path}"])

    def _record_release(self, version: str, source: str) -> None:
        assert self.state is not None
        store = StateStore.open(self.state)
        try:
            store.record_release(version, time.time(), source)
        finally:
            store.close()

    def _tasks_written(self) -> tuple[int, int]:
        """(rows in agent_tasks, highest id): the data written so far."""
        with psycopg.connect(self.environ["SPEK_DEMO_DSN"], connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*), coalesce(max(id), 0) FROM agent_tasks").fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    # --- watching ----------------------------------------------------------------------------

    def _start_watching(self) -> None:
        config, state = self._config(), self.state
        assert state is not None
        self.desk = AlertDesk.open(state, config.escalation, config.notice_pagers)
        self.documents = StateDocuments.open(state)
        watch = Watch(
            config,
            self.environ,
            desk=self.desk,
            pagers={},  # no pagers: pages are recorded and shown here
            documents=self.documents,
            runner=self._run_rollback,
        )
        watch.sentinel = _TappedSentinel(config.rules, config.policy, self._on_decision)
        self.watch = watch
        self.probes = build_probes(config, self.environ)
        self.traffic = Traffic(self.app_url)
        for probe in self.probes:
            self._background.append(asyncio.create_task(self._poll_loop(probe)))
        self._background.append(asyncio.create_task(self._tick_loop()))
        self._background.append(asyncio.create_task(self.traffic.run()))
        self._background.append(asyncio.create_task(self._status_loop()))
        probes = ", ".join(f"{probe.name} every {probe.interval:g}s" for probe in self.probes)
        self.view.line(
            "watch",
            f"the daemon's watch loop, in this process: {probes}",
            ["traffic: about 15 requests a second to /api/tasks and /api/agents"],
        )

    async def _poll_loop(self, probe: Probe) -> None:
        watch = self.watch
        assert watch is not None
        began = time.monotonic()
        runs = 0
        while not self._winding_down:
            await watch.poll(probe)
            runs += 1
            await asyncio.sleep(max(0.0, began + runs * probe.interval - time.monotonic()))

    async def _tick_loop(self) -> None:
        watch = self.watch
        assert watch is not None
        while not self._winding_down:
            await watch.tick()
            await asyncio.sleep(TICK)

    async def _status_loop(self) -> None:
        last = time.time()
        while not self._winding_down:
            await asyncio.sleep(STATUS_EVERY)
            now = time.time()
            self.view.line("status", await self._status(last), [])
            last = now

    async def _status(self, since: float) -> str:
        watch, traffic = self.watch, self.traffic
        assert watch is not None and traffic is not None
        rules = "  ".join(
            f"{s.rule.name} {s.state.value}"
            + (f" ({_value(s.rule, s.value)})" if s.value is not None else "")
            for s in watch.sentinel.engine.status()
            if s.rule.phase == "watch" and s.rule.name in ("high_error_rate", "app_wont_start")
        )
        requests, failed = traffic.since(since)
        exposition = await app_errors(self.app_url)
        return f"{rules} | traffic: {requests} requests, {failed} failed{exposition}"

    async def _wait_known_good(self) -> None:
        """The daemon's release health, every second: every rule OK for KNOWN_GOOD_AFTER makes
        the release known good, the target of a later rollback."""
        watch, state = self.watch, self.state
        assert watch is not None and state is not None
        deadline = time.monotonic() + WAIT_KNOWN_GOOD
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            statuses = [s for s in watch.sentinel.engine.status() if s.rule.phase == "watch"]
            seen = all(s.value is not None for s in statuses)
            healthy = seen and all(s.state is RuleState.OK for s in statuses)
            store = StateStore.open(state)
            try:
                release = store.mark_healthy(time.time(), healthy, KNOWN_GOOD_AFTER)
            finally:
                store.close()
            if release is not None and release.known_good_at is not None:
                self.view.line(
                    "release",
                    f"{release.version} healthy for {KNOWN_GOOD_AFTER:g}s: known good "
                    "(in production: known_good_after, 1h)",
                )
                return
        raise RollbackError(f"{GOOD} did not become healthy within {WAIT_KNOWN_GOOD:g}s")

    def _on_decision(self, decision: Decision) -> None:
        if decision.verdict.rule.phase != "watch" and decision.action.value == "none":
            return  # post-rollback checks arming and disarming: not news
        self.view.decision(decision)
        if isinstance(decision, Resolve) and decision.incident_closed:
            assert self._resolved is not None
            self._resolved.set()

    # --- the rollback, as the watch runs it --------------------------------------------------

    def _run_rollback(self, order: RollbackOrder, now: float) -> RollbackResult | None:
        """What the watch's own runner does (plan, narrate, execute), showing each event. Runs
        in a worker thread."""
        config, watch, desk = self._config(), self.watch, self.desk
        assert watch is not None and desk is not None and self.state is not None
        loop_finished = self._finished_callback()
        evidence = f" ({order.evidence})" if order.evidence else ""
        request = PlanRequest(
            order.incident,
            order.playbook,
            order.target_release or target_release(config, environ=self.environ),
            trigger=f"{order.reason}{evidence}",
            started_at=now,
        )
        try:
            plan = plan_rollback(config, request, self.environ)
        except (ConfigError, RollbackError) as exc:
            self.view.line("rollback", f"cannot roll back: {exc}")
            loop_finished(None)
            return None
        self.view.plan(step.name for step in plan.steps)
        self.view.line(
            "rollback",
            f"plan for {plan.incident_id}: back to {request.target_release}",
            [f"{index}. {step.name}" for index, step in enumerate(plan.steps, start=1)],
        )
        narrator = RollbackNarrator(desk, plan)
        journal = Journal.open(self.state)
        began = time.time()

        def on_event(event: RunEvent) -> None:
            narrator(event)
            output = ""
            if event.kind == "step_finished" and event.step is not None:
                steps = journal.steps(event.incident_id).values()
                output = next((s.output for s in steps if s.name == event.step), "")
            self.view.event(event, output)

        def guard(token: int) -> None:
            if watch.stopping:
                raise RollbackError("the demo is stopping: the rollback ends after this step")

        result: RollbackResult | None = None
        try:
            result = execute(config, plan, request, self.environ, on_event=on_event, guard=guard)
        finally:
            journal.close()
            self._rollback_window = (began, time.time())
            loop_finished(result)
        return result

    def _finished_callback(self) -> Callable[[RollbackResult | None], None]:
        loop = self._loop
        assert loop is not None

        def finished(result: RollbackResult | None) -> None:
            self._result = result
            assert self._rollback_finished is not None
            loop.call_soon_threadsafe(self._rollback_finished.set)

        return finished

    async def _wait_rollback(self) -> RollbackResult | None:
        finished = self._rollback_finished
        assert finished is not None
        try:
            await asyncio.wait_for(finished.wait(), WAIT_ROLLBACK)
        except TimeoutError:
            self.view.line("FAILED", f"no rollback within {WAIT_ROLLBACK:g}s of the bad deploy")
            self._show_logs()
            return None
        result = self._result
        if result is None or result.outcome.status != "succeeded":
            reason = result.outcome.reason if result is not None else "it could not be planned"
            self.view.line("FAILED", f"the rollback did not succeed: {reason}")
            self._show_logs()
            return None
        return result

    async def _after_rollback(self, before: tuple[int, int]) -> None:
        backend, view = self.backend, self.view
        assert backend is not None
        current = backend.current_release()
        pid = backend.running_pid()
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            health = await client.get(f"{self.app_url}/healthz")
        body = health.json() if health.status_code == 200 else {}
        view.line(
            "app",
            f"{current} runs again as pid {pid}: /healthz {health.status_code}, "
            f"version {body.get('version', '?')}, database {body.get('database', '?')}, "
            f"redis {body.get('redis', '?')}",
        )
        count, highest = before
        kept = await _blocking(self._tasks_kept, highest)
        view.line("data", f"{kept} of the {count} tasks written before the bad deploy are intact")
        view.line("release", f"history, newest first: {await _blocking(self._history)}")
        resolved = self._resolved
        assert resolved is not None
        view.line("watch", "waiting for the error rate to clear and the incident to close")
        try:
            await asyncio.wait_for(resolved.wait(), WAIT_RESOLVED)
        except TimeoutError:
            view.line("watch", f"the incident is still open after {WAIT_RESOLVED:g}s")

    def _history(self) -> str:
        assert self.state is not None
        store = StateStore.open(self.state)
        try:
            releases = store.releases()
        finally:
            store.close()
        return ", ".join(
            f"{r.version} ({r.source}{', known good' if r.known_good_at else ''})" for r in releases
        )

    def _tasks_kept(self, highest: int) -> int:
        with psycopg.connect(self.environ["SPEK_DEMO_DSN"], connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM agent_tasks WHERE id <= %s", (highest,))
            found = row.fetchone()
        assert found is not None
        return int(found[0])

    def _report(self) -> int:
        result, view = self._result, self.view
        assert result is not None
        outcome = result.outcome
        if result.report_path is not None:
            view.heading(f"incident report ({result.report_path})")
            view.write(result.report_path.read_text(encoding="utf-8").rstrip())
        view.heading("result")
        downtime = _seconds(outcome.downtime) if outcome.downtime is not None else "not measured"
        target = "within" if outcome.within_target else "over"
        view.line(
            "downtime",
            f"{downtime} from stopping {BAD} to {GOOD} verified healthy ({target} the runbook's "
            "5-minute target)",
        )
        if self._rollback_window is not None and self.traffic is not None:
            start, end = self._rollback_window
            gap = self.traffic.longest_gap(start, end)
            view.line(
                "downtime", f"users: longest stretch without a served request {_seconds(gap)}"
            )
        return EXIT_OK

    # --- cleaning up -------------------------------------------------------------------------

    async def _stop_background(self) -> None:
        """Stop the probe, tick, traffic and status loops. On Python 3.11 ``asyncio.wait_for``
        (inside every probe's observe) can swallow a cancellation that arrives as its inner
        call completes, so the loops also check a flag, and cancelling is repeated until each
        has ended."""
        self._winding_down = True
        tasks, self._background = self._background, []
        pending = set(tasks)
        for _ in range(20):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        if pending:
            log.error("demo: %d background tasks did not stop", len(pending))
        else:
            await asyncio.gather(*tasks, return_exceptions=True)  # collect their outcomes

    async def _cleanup(self) -> None:
        view = self.view
        if self.work is None:
            return  # nothing was started
        view.heading("cleanup")
        await self._stop_background()
        watch = self.watch
        if watch is not None:
            watch.stopping = True
            if watch.state.rollbacks:
                view.line("cleanup", "a rollback is running: it stops after its current step")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.rollbacks_done(), CLEANUP_WAIT)
            await watch.aclose()
        await asyncio.gather(*(probe.aclose() for probe in self.probes), return_exceptions=True)
        for closing in (self.desk, self.documents):
            if closing is not None:
                closing.close()
        if self.backend is not None:
            try:
                stopped = await _blocking(self.backend.stop, 30.0)
                view.line("cleanup", f"{APP_NAME}: {stopped.action}")
            except RollbackError as exc:
                view.line("cleanup", f"{APP_NAME} could not be stopped: {exc}")
        if self.redis is not None:
            view.line("cleanup", await _blocking(self.redis.close))
        if self.postgres is not None:
            try:
                view.line("cleanup", await _blocking(self.postgres.close))
            except DemoUnavailableError as exc:
                view.line("cleanup", f"PostgreSQL could not be stopped: {exc}")
        configure_logging("error", json=False, stream=sys.stderr)
        if self._log_file is not None:
            self._log_file.close()
        if self.work is not None:
            if self.options.keep:
                view.line("cleanup", f"kept {self.work} (--keep): state, report, logs, table")
            else:
                shutil.rmtree(self.work, ignore_errors=True)
                view.line("cleanup", f"removed {self.work} and {self._pg_base()}")
        view.line("done", f"the demo took {view.elapsed():.1f}s")

    def _pg_base(self) -> str:
        return str(self.postgres.base) if self.postgres is not None else "-"

    def _show_logs(self) -> None:
        """The last lines of the sentinel's and the app's logs, when something went wrong."""
        for name, path in (
            ("sentinel log", self.work / "sentinel.log" if self.work else None),
            (f"{APP_NAME} log", self.backend.log_path if self.backend else None),
        ):
            if path is not None and path.exists():
                lines = path.read_text(errors="replace").splitlines()[-15:]
                self.view.write("\n".join([f"--- {name} ({path}), last lines ---", *lines]))


async def _blocking(call: Callable[..., T], *args: object) -> T:
    """``call(*args)`` in a worker thread. When the demo is interrupted meanwhile, the call is
    still waited for (a server half started is then stopped by the cleanup, not during it)."""
    work = asyncio.ensure_future(asyncio.to_thread(call, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"


def _value(rule: Rule, value: float) -> str:
    return (
        f"{rule.signal} {value:.0%}" if rule.signal == "error_rate" else f"{rule.signal} {value:g}"
    )
