"""High availability with three real replicas: ``spek-sentinel run`` three times as
subprocesses on one host, sharing a Redis lock (a private server the tests restart), a
PostgreSQL fence (ttl 2 s) and their state. Every case runs on both state back ends:

* ``sqlite``: the replicas share one ``state_dir`` and its SQLite file (replicas on one host);
* ``postgresql``: ``[sentinel] state_dsn_env`` names the test's fresh database (the fence's
  too) and each replica has a ``state_dir`` of its own, as on separate hosts: the journal,
  alerts, outbox and policy state are shared through PostgreSQL alone, and no SQLite state
  file is ever created. (``incidents_dir`` and ``backup_dir`` stay the table's: they are part
  of a rollback plan, and a replica resumes only a plan identical to its own, so replicas run
  the same table; on separate hosts the same path is a different disk.)

The test reads the journal, the alerts and the policy state back through the same back end.

The rollback is a command-backend application whose commands append to ``steps.log`` which
replica (the daemon's pid, ``$PPID`` of the command) ran them. The rollback command (and, for
the database playbook, the migrate-down command) waits at a gate the test opens, per replica
(``gates/<pid>``) or for all (``gates/all``), so a test can kill or pause a leader while a step
runs. What the replicas did is read back from the shared journal and that log: exactly one
rollback run per incident, and no step run again except the interrupted one, as the executor
documents (an idempotent step is run again; a non-idempotent one halts the run and pages).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest

from harness import log_tail
from harness.http_receiver import HttpReceiver
from harness.ports import free_port
from harness.postgres import PostgresServer
from harness.redis_server import RedisServer
from harness.wait import WaitTimeoutError, wait_until
from spek_sentinel.config import load_config
from spek_sentinel.paging.desk import AlertDesk
from spek_sentinel.rollback.journal import Journal, Owner, RunRecord, StepRecord
from spek_sentinel.store.db import STATE_FILE
from spek_sentinel.store.open import StateLocation, state_location
from spek_sentinel.store.records import StateStore
from spek_sentinel.store.state import POLICY, StateDocuments

T = TypeVar("T")

TTL = 2.0
RENEW = TTL / 3  # RedisLeadership renews every ttl/3
# A follower takes over at most ttl + one renewal interval after the leader's last renewal,
# settles for one ttl when the lock may have vanished, and acts on its next poll (1 s).
TAKEOVER = TTL + RENEW + TTL + 1.0 + 2.0  # the last 2 s: slack for a loaded 2-core machine
WEBHOOK_SECRET = "ha-test-webhook-secret"  # noqa: S105 -- a test value
APP_STEPS = ("document the incident", "pre-flight", "stop traffic")
AFTER_APP = ("restart", "verify")
CLI = (sys.executable, "-m", "spek_sentinel.cli")
BREACH = ("--value", "1", "--reason", "x")
STATE_DSN_ENV = "T_HA_STATE_DSN"


def gated(tmp: Path, what: str, then: str) -> list[str]:
    """A command that logs its start, waits for its gate, does ``then`` and logs its end."""
    log, gates = tmp / "steps.log", tmp / "gates"
    script = (
        f'echo "begin {what} $PPID" >> {log}\n'
        "i=0\n"
        f'while [ ! -e {gates}/all ] && [ ! -e {gates}/$PPID ] && [ "$i" -lt 600 ]; do\n'
        "  sleep 0.05; i=$((i+1))\n"
        "done\n"
        f"[ -e {gates}/all ] || [ -e {gates}/$PPID ] || exit 3\n"
        f"{then}\n"
        f'echo "end {what} $PPID" >> {log}\n'
    )
    return ["sh", "-c", script, "sh", "{release}"]


def logged(tmp: Path, what: str, then: str = "true") -> list[str]:
    return ["sh", "-c", f'{then} && echo "{what} $PPID" >> {tmp / "steps.log"}']


def table(tmp: Path, health: str, relay: str, *, database: bool, state_dsn: bool) -> str:
    app = {
        "kind": "command",
        "stop_command": logged(tmp, "stop"),
        "rollback_command": gated(tmp, "rollback", f'echo "$1" > {tmp / "app.release"}'),
        "start_command": logged(tmp, "start"),
        "current_release_command": ["cat", str(tmp / "app.release")],
        "target_exists_command": ["true"],
    }
    lines = [
        "[sentinel]",
        f'state_dir = "{tmp / "state"}"',
        f'state_dsn_env = "{STATE_DSN_ENV}"' if state_dsn else "",
        'veto_window = "0s"',
        "",
        "[api]",
        'listen = "127.0.0.1:9"  # each replica is given its own port',
        "",
        "[ha]",
        'backend = "redis"',
        'url_env = "T_HA_REDIS_URL"',
        'fence_dsn_env = "T_HA_FENCE_DSN"',
        'key = "spek-ha-test:leader"',
        f'ttl = "{TTL:g}s"',
        "",
        "[probes.client]",
        'kind = "pushed"',
        'interval = "1s"',
        'signals.security_breach = { unit = "count", measure = "event" }',
        "",
        "[probes.app]",
        'kind = "http"',
        f'url = "{health}/healthz"',
        'interval = "1s"',
        'start_grace = "0s"',
        'timeout = "2s"',
        'signals.app_up = { unit = "bool", measure = "up" }',
        "",
        "[playbooks.breach]",
        'scenario = "security breach (test: the previous release, nothing to rotate)"',
        "stop_first = true",
        'application = "previous_release"',
        'database = ["migrate_down"]' if database else "",
        "",
        "[[rules]]",
        'name = "security_breach"',
        'signal = "security_breach"',
        'kind = "event"',
        'severity = "immediate"',
        'playbook = "breach"',
        "",
        "[rollback]",
        f'backup_dir = "{tmp / "backups"}"',
        f'incidents_dir = "{tmp / "incidents"}"',
        'step_timeout = "40s"',
        "",
        "[rollback.application]",
        *(f"{key} = {json.dumps(value)}" for key, value in app.items()),
        "",
        "[pagers.relay]",
        'type = "webhook"',
        f'url = "{relay}/page"',
        'secret_env = "T_HA_WEBHOOK_SECRET"',
        "",
        "[[escalation.levels]]",
        'name = "development_team"',
        'contacts = ["#spek-oncall"]',
        'pagers = ["relay"]',
        'after = "0s"',
    ]
    if database:
        lines += [
            "",
            "[rollback.database]",
            'dsn_env = "T_HA_APP_DSN"',
            f"migrate_down_command = {json.dumps(gated(tmp, 'migrate', 'true'))}",
            'migrate_down_all_command = ["true"]',
            'migrate_status_command = ["true"]',
            f'migrate_cwd = "{tmp}"',
        ]
    return "\n".join(lines) + "\n"


# ---- processes --------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, whatever its session (commands run in their own)."""
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _send(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@dataclass(eq=False)
class Replica:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    frozen: set[int] = field(default_factory=set)  # paused processes (the daemon and below)
    dead: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url(path), timeout=2.0)

    def readyz(self) -> dict[str, Any] | None:
        if self.dead or self.frozen:
            return None
        try:
            body: dict[str, Any] = self.get("/readyz").json()
        except (httpx.HTTPError, ValueError):
            return None
        return body

    def leads(self) -> bool:
        body = self.readyz()
        return bool(body and body.get("leader"))

    def events(self) -> list[str]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found.append(str(json.loads(line).get("event", "")))
        return found

    def logged(self, fragment: str) -> list[str]:
        return [event for event in self.events() if fragment in event]

    def _stop_tree(self) -> set[int]:
        """SIGSTOP the daemon, then everything below it until nothing new appears (a paused
        daemon starts nothing; a paused command's running child is caught on the next pass)."""
        _send(self.pid, signal.SIGSTOP)
        stopped = {self.pid}
        while new := descendants(self.pid) - stopped:
            for pid in new:
                _send(pid, signal.SIGSTOP)
            stopped |= new
        return stopped

    def kill(self) -> None:
        """The host dies: the daemon and every command it started, at once."""
        for pid in self._stop_tree():
            _send(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.frozen = set()
        self.dead = True

    def pause(self) -> None:
        """The replica freezes (a VM paused, a GC stall): the daemon and its commands."""
        self.frozen = self._stop_tree()

    def resume(self) -> None:
        for pid in self.frozen:
            _send(pid, signal.SIGCONT)
        self.frozen = set()

    def terminate(self) -> None:
        self.resume()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def reap(self) -> None:
        below = descendants(self.pid)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            below |= self._stop_tree()
            _send(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        for pid in below:
            _send(pid, signal.SIGKILL)
        self.dead = True


class Cluster:
    """Three replicas of ``spek-sentinel run`` on one host; see the module docstring."""

    def __init__(
        self,
        tmp: Path,
        redis: RedisServer,
        fence_dsn: str,
        app_dsn: str | None,
        state_dsn: str | None,
    ) -> None:
        self.tmp = tmp
        self.redis = redis
        # SQLite: the shared state_dir's file; PostgreSQL: the database, each replica's
        # state_dir its own (``host_state_dir``)
        self.location = (
            StateLocation.sqlite(tmp / "state" / STATE_FILE)
            if state_dsn is None
            else StateLocation.postgres(state_dsn, STATE_DSN_ENV)
        )
        self.health = HttpReceiver()
        self.relay = HttpReceiver()
        (tmp / "gates").mkdir()
        (tmp / "steps.log").touch()
        (tmp / "app.release").write_text("v2-bad\n", encoding="utf-8")
        self.config = tmp / "thresholds.toml"
        self.config.write_text(
            table(
                tmp,
                self.health.url,
                self.relay.url,
                database=app_dsn is not None,
                state_dsn=state_dsn is not None,
            ),
            encoding="utf-8",
        )
        store = StateStore.open(self.location)
        try:  # v1-good is known good, v2-bad went out a minute ago
            now = time.time()
            store.record_release("v1-good", now - 7200, "deploy")
            store.mark_healthy(now - 7200, True, 0)
            store.record_release("v2-bad", now - 60, "deploy")
        finally:
            store.close()
        self.environ = {
            **os.environ,
            "T_HA_REDIS_URL": redis.url(),
            "T_HA_FENCE_DSN": fence_dsn,
            "T_HA_WEBHOOK_SECRET": WEBHOOK_SECRET,
            **({"T_HA_APP_DSN": app_dsn} if app_dsn is not None else {}),
            **({STATE_DSN_ENV: state_dsn} if state_dsn is not None else {}),
        }
        # the replicas, the test and the CLI read the table the same way
        assert state_location(load_config(self.config, self.environ), self.environ) == (
            self.location
        )
        self.replicas: list[Replica] = []

    @property
    def shared_dirs(self) -> bool:
        """SQLite: the replicas share the table's state_dir. PostgreSQL: each has its own."""
        return self.location.dialect == "sqlite"

    def host_state_dir(self, name: str) -> Path:
        """The state_dir of a replica on a host of its own (PostgreSQL: it holds nothing)."""
        return self.tmp / "hosts" / name / "state"

    # ---- running ----------------------------------------------------------------------------

    def start(self) -> None:
        for name in ("r1", "r2", "r3"):
            port = free_port()
            log_path = self.tmp / f"{name}.log"
            env = {
                **self.environ,
                "SPEK_SENTINEL_API__LISTEN": json.dumps(f"127.0.0.1:{port}"),
                "SPEK_SENTINEL_HA__REPLICA": json.dumps(name),
            }
            if not self.shared_dirs:
                state_dir = self.host_state_dir(name)
                env["SPEK_SENTINEL_SENTINEL__STATE_DIR"] = json.dumps(str(state_dir))
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [*CLI, "run", "-c", str(self.config), "--log-json"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.replicas.append(Replica(name, port, proc, log_path))
        self.wait(
            lambda: all(r.readyz() is not None for r in self.replicas), 30, "every replica serves"
        )
        if not self.shared_dirs:  # each replica made its own state_dir (and kept nothing there)
            assert all(self.host_state_dir(r.name).is_dir() for r in self), self.report()

    def state_files(self) -> list[Path]:
        """Every SQLite state file under the test's dirs (PostgreSQL: there must be none)."""
        return sorted(self.tmp.rglob(f"{STATE_FILE}*"))

    def close(self) -> None:
        self.open_gate("all")  # a stopping daemon waits for the step it runs
        for replica in self.replicas:
            replica.terminate()
        for replica in self.replicas:
            replica.reap()
        self.health.close()
        self.relay.close()

    def wait(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        """``wait_until`` that reports the journal, the steps and every replica's log."""
        try:
            found = wait_until(predicate, timeout=timeout, interval=0.1, message=what)
        except WaitTimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.report()}") from None
        assert found is not None
        return found

    def report(self) -> str:
        parts = [f"--- steps.log ---\n{self.steps_log()}", f"--- journal ---\n{self.journal()}"]
        parts += [f"--- {r.name} (pid {r.pid}) ---\n{log_tail(r.log_path, 40)}" for r in self]
        return "\n".join(parts)

    def __iter__(self) -> Iterator[Replica]:
        return iter(self.replicas)

    def by_pid(self, pid: int) -> Replica:
        [replica] = [r for r in self if r.pid == pid]
        return replica

    # ---- leadership -------------------------------------------------------------------------

    def leaders(self) -> list[Replica]:
        return [replica for replica in self if replica.leads()]

    def leader(self, timeout: float = 30.0, among: list[Replica] | None = None) -> Replica:
        """Wait until exactly one replica leads (and, with ``among``, it is one of those)."""

        def one() -> Replica | None:
            leaders = self.leaders()
            if len(leaders) == 1 and (among is None or leaders[0] in among):
                return leaders[0]
            return None

        return self.wait(one, timeout, "exactly one replica leads")

    # ---- the incident -----------------------------------------------------------------------

    def breach(self) -> None:
        """A human confirms a security breach: an immediate rule, a rollback at once."""
        done = subprocess.run(
            [*CLI, "signal", "-c", str(self.config), "security_breach", *BREACH],
            env=self.environ,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, f"spek-sentinel signal failed:\n{done.stdout}{done.stderr}"

    def open_gate(self, who: str | int) -> None:
        (self.tmp / "gates" / str(who)).touch()

    def steps_log(self) -> str:
        return (self.tmp / "steps.log").read_text(encoding="utf-8")

    def ran(self, what: str) -> list[int]:
        """The pids of the replicas that logged ``what`` ("begin rollback", "stop"...)."""
        found = []
        for line in self.steps_log().splitlines():
            head, _, pid = line.rpartition(" ")
            if head == what:
                found.append(int(pid))
        return found

    def runs(self) -> list[RunRecord]:
        journal = Journal.open(self.location)
        try:
            return journal.runs()
        finally:
            journal.close()

    def steps(self, incident: str) -> dict[str, StepRecord]:
        journal = Journal.open(self.location)
        try:
            return {step.name: step for step in journal.steps(incident).values()}
        finally:
            journal.close()

    def journal(self) -> str:
        lines = []
        for run in self.runs():
            lines.append(f"run {run.incident_id} {run.status} owner {run.owner}: {run.reason}")
            for name, step in self.steps(run.incident_id).items():
                lines.append(f"  {name}: {step.status} attempt {step.attempt} by {step.owner}")
        return "\n".join(lines) or "(empty)"

    def the_run(self) -> RunRecord:
        """The one rollback run (there must never be a second)."""
        runs = self.runs()
        assert len(runs) == 1, self.journal()
        return runs[0]

    def run_ended(self, timeout: float = 60.0) -> RunRecord:
        def ended() -> RunRecord | None:
            runs = self.runs()
            return runs[0] if runs and runs[0].status != "running" else None

        return self.wait(ended, timeout, "the rollback run ended")

    def policy(self) -> dict[str, Any]:
        documents = StateDocuments.open(self.location)
        try:
            saved = documents.load(POLICY)
        finally:
            documents.close()
        assert saved is not None
        return dict(saved)

    def alerts(self) -> dict[str, str]:
        """Alert dedup key -> summary."""
        config = load_config(str(self.config))
        desk = AlertDesk.open(self.location, config.escalation, config.notice_pagers)
        try:
            return {alert.dedup_key: alert.summary for alert in desk.store.alerts()}
        finally:
            desk.close()

    def pages(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.relay.received if r.path == "/page"]

    def evaluated_after(self, moment: float) -> bool:
        """Every live replica has evaluated its probes since ``moment`` (wall clock)."""
        for replica in self:
            if replica.dead or replica.frozen:
                continue
            body = replica.readyz()
            last = body.get("last_evaluation") if body else None
            if last is None or _iso_seconds(last) <= moment:
                return False
        return True


def _iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def owner_pid(owner: str) -> int:
    return Owner.parse(owner).pid


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A Redis of this test's own: the tests stop and start it."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def app_database(postgres_server: PostgresServer) -> Iterator[str]:
    """The application's database (the fence lives in ``postgres_db``), with one table."""
    postgres_server.ensure_running()
    name = f"t_ha_app_{uuid.uuid4().hex[:8]}"
    dsn = postgres_server.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int primary key)")
    yield dsn
    postgres_server.ensure_running()
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def state_backend(request: pytest.FixtureRequest) -> str:
    """Where the replicas share their state; see the module docstring."""
    backend: str = request.param
    return backend


@pytest.fixture
def make_cluster(
    tmp_path: Path, redis: RedisServer, postgres_db: str, state_backend: str
) -> Iterator[Callable[..., Cluster]]:
    """``postgres_db`` holds the fence, and on ``postgresql`` the state as well."""
    made: list[Cluster] = []
    state_dsn = postgres_db if state_backend == "postgresql" else None

    def make(app_dsn: str | None = None) -> Cluster:
        cluster = Cluster(tmp_path, redis, postgres_db, app_dsn, state_dsn)
        made.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.close()
    for cluster in made:  # nothing went to (or was shared through) a SQLite file
        if not cluster.shared_dirs:
            assert cluster.state_files() == []


# ---- the cases ----------------------------------------------------------------------------------


def test_exactly_one_leader_and_followers_still_serve(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    leader = cluster.leader()
    followers = [r for r in cluster if r is not leader]
    for follower in followers:
        health = follower.get("/healthz")
        assert health.status_code == 200, health.text
        assert health.json() == {"status": "alive"}
        ready = cluster.wait(follower.readyz, 10, "a follower answers /readyz")
        assert ready["leader"] is False
        rules = follower.get("/api/v1/rules")
        assert rules.status_code == 200, rules.text
        assert [rule["rule"] for rule in rules.json()["rules"]] == ["security_breach"]
    # followers evaluate too: every replica becomes ready (fresh evaluations), one leads
    cluster.wait(
        lambda: all((r.readyz() or {}).get("ready") for r in cluster), 15, "all replicas ready"
    )
    assert cluster.leaders() == [leader]
    metrics = {r.name: r.get("/metrics").text for r in cluster}
    for replica in cluster:
        expected = 1 if replica is leader else 0
        assert f"spek_sentinel_leader {expected}" in metrics[replica.name], metrics[replica.name]


def test_an_immediate_breach_is_rolled_back_once_by_the_leader(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    leader = cluster.leader()
    cluster.open_gate("all")
    cluster.breach()
    run = cluster.run_ended()
    assert run.status == "succeeded", cluster.report()
    assert owner_pid(run.owner) == leader.pid
    steps = cluster.steps(run.incident_id)
    assert all(step.done and step.attempt == 1 for step in steps.values()), cluster.journal()
    assert {owner_pid(step.owner) for step in steps.values()} == {leader.pid}
    # every command ran once, on the leader
    for what in ("stop", "begin rollback", "end rollback", "start"):
        assert cluster.ran(what) == [leader.pid], cluster.steps_log()
    # the followers keep evaluating the still-open event and never start a second run
    finished = time.time()
    cluster.wait(lambda: cluster.evaluated_after(finished + 2), 20, "replicas evaluated again")
    assert cluster.the_run().incident_id == run.incident_id
    assert cluster.ran("begin rollback") == [leader.pid]
    # the breach was paged once, by the leader alone
    cluster.wait(cluster.pages, 15, "the breach was paged")
    triggers = [p for p in cluster.pages() if p["kind"] == "trigger"]
    assert [p["incident"] for p in triggers] == [run.incident_id], triggers
    for follower in (r for r in cluster if r is not leader):
        assert not follower.logged("decision rollback"), follower.events()


def test_a_leader_killed_mid_rollback_is_taken_over_and_the_run_resumed(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    old = cluster.leader()
    cluster.breach()
    cluster.wait(lambda: cluster.ran("begin rollback"), 30, "the rollback command started")
    incident = cluster.the_run().incident_id
    assert cluster.steps(incident)["application rollback"].status == "claimed"
    old.kill()
    new = cluster.leader(timeout=TAKEOVER, among=[r for r in cluster if r is not old])
    # the new leader resumes the run from the journal: the application rollback was claimed
    # and never finished; it is idempotent and not destructive, so it runs again (attempt 2)
    cluster.wait(lambda: new.pid in cluster.ran("begin rollback"), 20, "the new leader resumed")
    cluster.open_gate(new.pid)
    run = cluster.run_ended()
    assert run.status == "succeeded", cluster.report()
    assert owner_pid(run.owner) == new.pid
    assert cluster.the_run().incident_id == incident
    steps = cluster.steps(incident)
    assert all(step.done for step in steps.values()), cluster.journal()
    for name in APP_STEPS:  # done before the kill: not run again
        assert (steps[name].attempt, owner_pid(steps[name].owner)) == (1, old.pid), name
    resumed = steps["application rollback"]
    assert (resumed.attempt, owner_pid(resumed.owner)) == (2, new.pid)
    for name in AFTER_APP:
        assert (steps[name].attempt, owner_pid(steps[name].owner)) == (1, new.pid), name
    assert cluster.ran("stop") == [old.pid]
    assert cluster.ran("begin rollback") == [old.pid, new.pid]
    assert cluster.ran("end rollback") == [new.pid]  # the killed attempt never finished
    assert cluster.ran("start") == [new.pid]
    assert new.logged("was running or decided at the restart: resuming"), new.events()


def test_an_interrupted_non_idempotent_step_halts_the_resumed_run_and_pages(
    make_cluster: Callable[..., Cluster], app_database: str
) -> None:
    cluster = make_cluster(app_database)
    old = cluster.leader()
    cluster.breach()
    cluster.wait(lambda: cluster.ran("begin migrate"), 30, "the migration started")
    incident = cluster.the_run().incident_id
    old.kill()
    new = cluster.leader(timeout=TAKEOVER, among=[r for r in cluster if r is not old])
    run = cluster.run_ended()
    # executor: "a step found claimed but not finished is run again only if it is idempotent
    # and not destructive. Otherwise the run halts ... and neither that step nor anything
    # after it runs."
    assert run.status == "halted", cluster.report()
    assert owner_pid(run.owner) == new.pid
    assert "cannot prove step migrate down one step finished; a human must check" in run.reason
    steps = cluster.steps(incident)
    migrate = steps["migrate down one step"]
    assert (migrate.status, migrate.attempt, owner_pid(migrate.owner)) == ("claimed", 1, old.pid)
    assert "application rollback" not in steps
    assert cluster.ran("begin migrate") == [old.pid]
    assert cluster.ran("begin rollback") == []
    assert cluster.ran("start") == []
    # the halt is a critical alert, paged by the new leader
    key = f"rollback:{incident}:run_halted"
    assert "HALTED at migrate down one step" in cluster.alerts()[key]
    cluster.wait(
        lambda: [p for p in cluster.pages() if p["dedup_key"] == key], 20, "the halt was paged"
    )
    assert cluster.the_run().status == "halted"


def test_a_paused_leader_is_fenced_when_it_wakes(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    old = cluster.leader()
    cluster.breach()
    cluster.wait(lambda: cluster.ran("begin rollback"), 30, "the rollback command started")
    incident = cluster.the_run().incident_id
    old.pause()  # past the lock's expiry, with its command (a paused VM)
    new = cluster.leader(timeout=TAKEOVER, among=[r for r in cluster if r is not old])
    cluster.wait(lambda: new.pid in cluster.ran("begin rollback"), 20, "the new leader resumed")
    assert owner_pid(cluster.the_run().owner) == new.pid
    # the old leader wakes; the command it had sent runs to its end (a fence protects only
    # what checks it), and then it must stop: its token is stale, the run is not its own
    old.resume()
    cluster.open_gate(old.pid)
    cluster.wait(lambda: old.logged(f"rollback of {incident} fenced"), 20, "the old one fenced")
    assert cluster.ran("end rollback") == [old.pid]
    # the fenced replica leaves the shared state to the leader, whose run is still going: if
    # that leader dies too, the next one must still find the run to resume
    assert cluster.the_run().status == "running"
    assert cluster.policy()["rollback_running"] is True, cluster.policy()
    [fenced] = old.logged(f"rollback of {incident} fenced")
    assert "no longer claimed" in fenced or "not the leader" in fenced, fenced
    assert cluster.ran("start") == []
    new.kill()
    last = cluster.leader(timeout=TAKEOVER, among=[r for r in cluster if r is not new])
    cluster.open_gate(last.pid)
    run = cluster.run_ended()
    assert run.status == "succeeded", cluster.report()
    assert owner_pid(run.owner) == last.pid
    steps = cluster.steps(incident)
    for name in APP_STEPS:
        assert (steps[name].attempt, owner_pid(steps[name].owner)) == (1, old.pid), name
    resumed = steps["application rollback"]
    assert (resumed.status, resumed.attempt, owner_pid(resumed.owner)) == ("succeeded", 3, last.pid)
    # the old leader's command had put v1-good in place: the third attempt finds it there
    assert "v1-good is already in place; nothing to do" in resumed.output, resumed.output
    for name in AFTER_APP:
        assert (steps[name].attempt, owner_pid(steps[name].owner)) == (1, last.pid), name
    assert cluster.ran("stop") == [old.pid]
    assert cluster.ran("begin rollback") == [old.pid, new.pid]
    assert cluster.ran("end rollback") == [old.pid]
    assert cluster.ran("start") == [last.pid]
    assert cluster.the_run().incident_id == incident


def test_a_redis_restart_mid_rollback_keeps_one_leader_and_one_run(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    old = cluster.leader()
    cluster.breach()
    cluster.wait(lambda: cluster.ran("begin rollback"), 30, "the rollback command started")
    incident = cluster.the_run().incident_id
    settled_before = {r.name: len(r.logged("leadership settled")) for r in cluster}
    cluster.redis.stop()  # no persistence: the lock and the token counter are gone
    cluster.redis.start()
    seen: list[list[str]] = []

    def settled_leader() -> Replica | None:
        leaders = cluster.leaders()
        seen.append([r.name for r in leaders])
        assert len(leaders) <= 1, f"two leaders at once: {seen[-1]}\n{cluster.report()}"
        # the lock was lost without expiring: whoever takes it settles for a ttl first
        if len(leaders) == 1:
            leader = leaders[0]
            if len(leader.logged("leadership settled")) > settled_before[leader.name]:
                return leader
        return None

    after = cluster.wait(settled_leader, 3 * TAKEOVER, "a leader after the restart")
    cluster.open_gate("all")
    run = cluster.run_ended()
    assert run.status == "succeeded", cluster.report()
    assert owner_pid(run.owner) == after.pid  # resumed by the leader after the restart
    assert cluster.the_run().incident_id == incident
    steps = cluster.steps(incident)
    assert all(step.done for step in steps.values()), cluster.journal()
    for name in APP_STEPS:
        assert steps[name].attempt == 1, name
    for name in AFTER_APP:
        assert steps[name].attempt == 1, name
    assert run.fencing_token > 1  # taken over (or taken back) under a newer token
    assert len(cluster.ran("stop")) == 1
    assert len(cluster.ran("start")) == 1
    finished = time.time()
    cluster.wait(lambda: cluster.evaluated_after(finished + 2), 20, "replicas evaluated again")
    assert len(cluster.leaders()) == 1
    assert len(cluster.runs()) == 1
    assert old.pid in cluster.ran("begin rollback")
