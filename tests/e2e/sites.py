"""One production site for an end-to-end scenario: the sample SPEK app deployed as a container
on a user network next to PostgreSQL and Redis containers (``harness.spek_app.AppStack``), a
real Prometheus scraping the app's /metrics, spek-sentinel running as a daemon subprocess
(``spek-sentinel run``) that watches all of it with short windows, a webhook receiver standing in
for on-call and the stakeholders' channel, and a load generator.

``Site.warm_up()`` brings the site to the state every runbook scenario starts from: release
v1.1.0 deployed and recorded with ``spek-sentinel release record`` (which takes the
pre-deployment backup), traffic flowing, and the daemon having marked v1.1.0 known good. The
daemon checks release health once a minute (``RELEASE_CHECK`` in service/daemon.py), so that
takes about a minute whatever ``known_good_after`` says: the scenario tests warm their sites up
side by side (tests/e2e/conftest.py).

The daemon's API listens on the network's gateway address, not on 127.0.0.1, so that the app
containers can push the signals they confirm themselves (``security_breach``,
``migration_failed``) to ``POST /api/v1/signals``, as a deployment on one host would.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, TypeVar

import docker
import docker.errors
import httpx
import psycopg

from harness.daemon import DaemonProcess, daemon_environ
from harness.http_receiver import HttpReceiver
from harness.ports import free_port
from harness.prometheus_server import PrometheusServer
from harness.spek_app import (
    INTEGRITY_SQL,
    MIGRATIONS_DIR,
    AppContainer,
    AppStack,
    app_image,
    get,
    scrape,
    write_env_dir,
)
from harness.wait import WaitTimeoutError, wait_until
from spek_sentinel.paging.webhook import verify_signature
from spek_sentinel.rollback.journal import Journal, RunRecord, StepRecord

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
GOOD = "v1.1.0"  # the release every scenario starts from (schema 003)
TOKEN = "e2e-api-token-" + "5d1f0c7a9b3e"  # test values
WEBHOOK_SECRET = "e2e-webhook-secret-" + "c4e2a8f1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
_NOT_YET = (httpx.HTTPError, urllib.error.URLError, OSError)


def playbooks_toml(overrides: dict[str, dict[str, Any]]) -> str:
    """The shipped table's [playbooks] (thresholds.toml), as TOML, with ``overrides`` applied:
    the scenarios run the playbooks users get, not copies that could drift."""
    with (REPO / "thresholds.toml").open("rb") as shipped:
        playbooks: dict[str, dict[str, Any]] = tomllib.load(shipped)["playbooks"]
    lines = []
    for name, playbook in playbooks.items():
        lines.append(f"[playbooks.{name}]")
        for key, value in {**playbook, **overrides.get(name, {})}.items():
            text = ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)


# The data-corruption playbook as shipped restarts the release that was running
# (application = "none", the runbook's scenario 3 literally). When that release is what corrupts
# the data, its restart corrupts the restored database again at once; the site rolls the code
# back too (runbook phase 3), so the restored data stays consistent.
PLAYBOOKS = playbooks_toml({"data_corruption": {"application": "previous_release"}})

# Every rule of the shipped table that the sample app can feed, with windows of seconds.
# error_rate: "or vector(0)" because a healthy app has no 5xx series at all, and a sum over no
# series is no data, not 0 (the rule would never be judged on a healthy release).
TABLE = Template(
    """
[sentinel]
state_dir = "$state"
cooldown = "1h"
veto_window = "0s"

[api]
listen = "$listen"
token_env = "E2E_API_TOKEN"

[defaults]
interval = "1s"
blind_after = "$blind_after"

[probes.app_metrics]
kind = "prometheus"
url = "$prometheus"
interval = "1s"
timeout = "3s"

[probes.app_metrics.signals.error_rate]
unit = "ratio"
query = '''
(sum(rate(http_requests_total{status=~"5.."}[10s])) or vector(0))
  / sum(rate(http_requests_total[10s]))'''
volume_query = 'sum(increase(http_requests_total[10s]))'

[probes.app_metrics.signals.api_latency_p95]
unit = "seconds"
query = '''
histogram_quantile(0.95,
  sum by (le) (rate(http_request_duration_seconds_bucket{route=~"/api/.*"}[15s])))'''

# The same p95 floored at 200 ms (the runbook's API target) for the relative rule: on a busy
# 2-core host a few ms of scheduling jitter is +50% of a 10 ms baseline, and nobody's page
# got slower. v2.0.0-slow is sized to 1 s more per answer (SPEK_APP_SLOW_SECONDS).
[probes.app_metrics.signals.api_latency_p95_floored]
unit = "seconds"
query = '''
clamp_min(histogram_quantile(0.95,
  sum by (le) (rate(http_request_duration_seconds_bucket{route=~"/api/.*"}[15s]))), 0.2)'''

[probes.app]
kind = "http"
url = "$app/healthz"
interval = "1s"
timeout = "2s"
start_grace = "0s"
expect_json = { path = "status", equals = "ok" }
signals.app_up = { unit = "bool", measure = "up" }

[probes.database]
kind = "postgres"
dsn_env = "E2E_DB_DSN"
interval = "1s"
timeout = "3s"
signals.db_up = { unit = "bool", measure = "up" }

[probes.database.signals.integrity_violations]
unit = "count"
description = "agent_tasks rows no good release writes (examples/spek_app integrity query)"
sql = '''
$integrity_sql
'''

[probes.cache]
kind = "redis"
url_env = "E2E_REDIS_URL"
interval = "1s"
timeout = "2s"
signals.redis_up = { unit = "bool", measure = "up" }

[probes.confirmed]
kind = "pushed"
interval = "1s"
signals.data_corruption = { unit = "count", measure = "event" }
signals.security_breach = { unit = "count", measure = "event" }
signals.migration_failed = { unit = "count", measure = "event" }

$playbooks

[[rules]]
name = "high_error_rate"
signal = "error_rate"
kind = "threshold"
severity = "immediate"
above = "5%"
clear_below = "4%"
for = "5s"
keep_firing_for = "3s"
min_samples = 3
min_volume = 20
playbook = "high_error_rate"

[[rules]]
name = "data_corruption"
signal = "data_corruption"
kind = "event"
severity = "immediate"
playbook = "data_corruption"

[[rules]]
name = "integrity_violations"
signal = "integrity_violations"
kind = "event"
severity = "immediate"
min_samples = 2
playbook = "data_corruption"

[[rules]]
name = "security_breach"
signal = "security_breach"
kind = "event"
severity = "immediate"
playbook = "security_breach"

[[rules]]
name = "migration_failed"
signal = "migration_failed"
kind = "event"
severity = "immediate"
playbook = "migration_failed"

[[rules]]
name = "app_wont_start"
signal = "app_up"
kind = "threshold"
severity = "immediate"
below = 1
for = "1m"
min_samples = 3
playbook = "high_error_rate"

[[rules]]
name = "database_unreachable"
signal = "db_up"
kind = "threshold"
severity = "immediate"
below = 1
for = "1m"
min_samples = 3
playbook = "high_error_rate"

[[rules]]
name = "slow_responses"
signal = "api_latency_p95_floored"
kind = "relative"
severity = "evaluate"
increase = 0.5
clear_increase = 0.25
baseline = { method = "before_release", window = "10m", min_samples = 20 }
for = "8s"
min_samples = 6
playbook = "performance_degradation"

[validation]
monitor_for = "30s"

[[validation.checks]]
name = "error_rate"
signal = "error_rate"
below = "1%"

[[validation.checks]]
name = "api_response_time"
signal = "api_latency_p95"
below = "200ms"

[rollback]
backup_dir = "$root/backups"
incidents_dir = "$root/incidents"
downtime_budget = "10m"
downtime_target = "5m"
step_timeout = "90s"
known_good_after = "0s"
backup_every = "$backup_every"
env_file = "$env_file"

[rollback.database]
dsn_env = "E2E_DB_DSN"
migrations_dir = "$migrations"

[rollback.application]
kind = "docker"
container = "$container"

[pagers.oncall]
type = "webhook"
url = "$receiver/page"
secret_env = "E2E_WEBHOOK_SECRET"

[pagers.stakeholders]
type = "webhook"
url = "$receiver/notice"
secret_env = "E2E_WEBHOOK_SECRET"

[escalation]
renotify_every = "0s"

[[escalation.levels]]
name = "development_team"
contacts = ["#spek-oncall"]
pagers = ["oncall"]
after = "0s"

[notices]
pagers = ["stakeholders"]
"""
)


class SiteDaemon(DaemonProcess):
    """``spek-sentinel run`` listening on ``host`` (the app network's gateway)."""

    def __init__(
        self, config: Path, host: str, port: int, secrets: dict[str, str], log: Path
    ) -> None:
        super().__init__(config, port, secrets, log)
        self.host = host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Traffic:
    """Users: one thread cycling through the API (create a task, list tasks, agents, stats)
    at about ``rate`` requests a second, whatever answers. Counts the statuses it got."""

    def __init__(self, url: str, rate: float = 10.0) -> None:
        self.url = url
        self.pause = 1.0 / rate
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"traffic {url}", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def _run(self) -> None:
        calls: list[tuple[str, str, Any]] = [
            ("POST", "/api/tasks", {"kind": "traffic"}),
            ("GET", "/api/tasks?limit=5", None),
            ("GET", "/api/agents", None),
            ("GET", "/api/stats", None),
        ]
        turn = 0
        while not self._stop.wait(self.pause):
            method, path, body = calls[turn % len(calls)]
            turn += 1
            try:
                answer = get(f"{self.url}{path}", method=method, body=body, timeout=3)
            except (urllib.error.URLError, OSError):
                self.statuses[0] += 1  # refused or timed out: the app is down
            else:
                self.statuses[answer.status] += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass(frozen=True)
class Marker:
    """A task created through the API before the deploy: the data the rollback must keep."""

    id: int
    kind: str


class Site:
    def __init__(
        self,
        client: docker.DockerClient,
        base_image: str,
        root: Path,
        label: str,
        *,
        backup_every: str = "0s",
        blind_after: str = "1m",
    ) -> None:
        self.client = client
        self.root = root
        self.label = label
        self.stack = AppStack(client, f"e2e-{label}", base_image)
        self.container = f"{self.stack.name}-app"
        self.app_port = free_port()
        self.daemon_port = free_port()
        self.backup_every = backup_every
        self.blind_after = blind_after
        self.config = root / "thresholds.toml"
        self.state = root / "state"
        self.backups = root / "backups"
        self.env_dir = root / "spek-app"
        self.env_file = self.env_dir / "app.env"
        self.receiver = HttpReceiver()
        self.prometheus: PrometheusServer | None = None
        self.daemon: SiteDaemon | None = None
        self.traffic: Traffic | None = None
        self.app: AppContainer | None = None
        self.gateway = ""
        self.secrets = {
            "E2E_API_TOKEN": TOKEN,
            "E2E_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        self.app_secrets = {
            "SESSION_SECRET": secrets.token_urlsafe(32),
            "JWT_SECRET": secrets.token_urlsafe(32),
        }
        self.timings: dict[str, float] = {}
        self._closed = False

    # -- bringing it up -----------------------------------------------------------------------

    def warm_up(self, *, known_good: bool = True) -> Site:
        """v1.1.0 deployed, recorded and watched, traffic flowing; with ``known_good``, until
        the daemon has marked v1.1.0 known good (about a minute: its release-health check)."""
        started = time.monotonic()
        self.stack.start()
        self.network_gateway()
        self.secrets |= {
            "E2E_DB_DSN": self.stack.host_dsn(),
            "E2E_REDIS_URL": self.stack.host_redis_url,
        }
        write_env_dir(self.env_dir, self.app_secrets)
        self.app = self.run_app(GOOD, wait=True)
        self.prometheus = PrometheusServer([f"127.0.0.1:{self.app_port}"])
        self.prometheus.start()
        self.write_table()
        self.cli(["release", "record"], app_image(GOOD))
        self.daemon = SiteDaemon(
            self.config, self.gateway, self.daemon_port, self.secrets, self.root / "daemon.log"
        )
        self.daemon.start(timeout=60)
        self.traffic = Traffic(self.app.url).start()
        self.timings["up"] = time.monotonic() - started
        if known_good:
            self.wait_known_good(app_image(GOOD))
        else:
            self.wait_rules_ok()
        self.timings["warm"] = time.monotonic() - started
        return self

    def network_gateway(self) -> str:
        self.stack.network.reload()
        self.gateway = str(self.stack.network.attrs["IPAM"]["Config"][0]["Gateway"])
        return self.gateway

    def write_table(self) -> None:
        text = TABLE.substitute(
            state=self.state,
            listen=f"{self.gateway}:{self.daemon_port}",
            blind_after=self.blind_after,
            prometheus=self.prometheus_url,
            app=f"http://127.0.0.1:{self.app_port}",
            integrity_sql=INTEGRITY_SQL,
            playbooks=PLAYBOOKS,
            root=self.root,
            backup_every=self.backup_every,
            env_file=self.env_file,
            migrations=MIGRATIONS_DIR,
            container=self.container,
            receiver=self.receiver.url,
        )
        self.config.write_text(text, encoding="utf-8")

    @property
    def prometheus_url(self) -> str:
        assert self.prometheus is not None
        return self.prometheus.url

    def run_app(self, version: str, *, wait: bool) -> AppContainer:
        """A container of ``version`` under the site's container name and port, with the
        site's env file and the sentinel's signal URL: what a deploy script runs."""
        return self.stack.run_app(
            version,
            name=self.container,
            port=self.app_port,
            env={
                "SPEK_APP_SIGNAL_URL": f"http://{self.gateway}:{self.daemon_port}",
                "SPEK_APP_SIGNAL_TOKEN": TOKEN,
                "SPEK_APP_AGENT_INTERVAL": "1",  # the agents' own tasks: one a second
                "SPEK_APP_SLOW_SECONDS": "1",  # sizes v2.0.0-slow's fault only
            },
            env_dir=self.env_dir,
            wait=wait,
        )

    def deploy(self, version: str, *, wait: bool = True) -> AppContainer:
        """The deploy of a new release: ``release record`` (the pre-deployment backup first),
        then the container replaced by one of the new image with the same settings."""
        self.cli(["release", "record"], app_image(version))
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.stop(self.container, timeout=10)
            self.client.api.remove_container(self.container, v=True)
        self.app = self.run_app(version, wait=wait)
        return self.app

    def cli(self, command: list[str], *args: str) -> str:
        """``spek-sentinel COMMAND -c <table> ARGS`` with the daemon's secrets, as an operator
        (or a deploy script) runs it."""
        done = subprocess.run(
            [sys.executable, "-m", "spek_sentinel.cli", *command, "-c", str(self.config), *args],
            env=daemon_environ(self.secrets),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        said = f"spek-sentinel {' '.join([*command, *args])}:\n{done.stdout}{done.stderr}"
        assert done.returncode == 0, said
        return done.stdout + done.stderr

    # -- reading the daemon -------------------------------------------------------------------

    @property
    def sentinel(self) -> SiteDaemon:
        assert self.daemon is not None, "the site was not warmed up"
        return self.daemon

    def api(self, path: str, **params: str) -> Any:
        answer = self.sentinel.get(path, params=params)
        assert answer.status_code == 200, f"GET {path}: {answer.status_code} {answer.text}"
        return answer.json()

    def releases(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api("/api/v1/releases")["releases"]
        return found

    def rules(self) -> dict[str, dict[str, Any]]:
        return {rule["rule"]: rule for rule in self.api("/api/v1/rules")["rules"]}

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api("/api/v1/alerts", all="1")["alerts"]
        return found

    def incidents(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api("/api/v1/incidents")["incidents"]
        return found

    def report(self, incident: str) -> str:
        text: str = self.api(f"/api/v1/incidents/{incident}")["report_markdown"]
        return text

    def metrics(self) -> dict[str, Any]:
        return scrape(self.sentinel.url)

    def journal(self, incident: str) -> tuple[RunRecord | None, dict[int, StepRecord]]:
        journal = Journal.in_dir(self.state)
        try:
            return journal.run(incident), journal.steps(incident)
        finally:
            journal.close()

    def pages(self, path: str = "/page") -> list[dict[str, Any]]:
        """What the webhook receiver got on ``path``, each page's signature checked."""
        found = []
        for received in list(self.receiver.received):
            if received.path != path:
                continue
            assert verify_signature(
                WEBHOOK_SECRET,
                received.headers["x-spek-timestamp"],
                received.body,
                received.headers["x-spek-signature"],
                time.time(),
            ), f"a page with a bad signature: {received.body!r}"
            found.append(received.json())
        return found

    def notices(self) -> list[str]:
        return [notice["summary"] for notice in self.pages("/notice")]

    def until(
        self, predicate: Callable[[], T | None], what: str, timeout: float, interval: float = 0.5
    ) -> T:
        """``predicate``'s first truthy answer; on a timeout, a failure naming ``what`` with the
        tail of the daemon's log (API errors while it restarts count as "not yet")."""
        try:
            found = wait_until(
                predicate, timeout=timeout, interval=interval, message=what, ignore=_NOT_YET
            )
        except WaitTimeoutError as exc:
            tail = self.daemon.tail() if self.daemon is not None else "(no daemon)"
            raise AssertionError(f"{exc}\n--- tail of the daemon's log ---\n{tail}") from None
        assert found is not None
        return found

    def wait_known_good(self, version: str, timeout: float = 200.0) -> dict[str, Any]:
        def known_good() -> dict[str, Any] | None:
            for release in self.releases():
                if release["version"] == version and release["known_good_at"] is not None:
                    return release
            return None

        return self.until(known_good, f"{version} marked known good", timeout, interval=1.0)

    def wait_rules_ok(self, timeout: float = 120.0) -> dict[str, dict[str, Any]]:
        def every_rule_ok() -> dict[str, dict[str, Any]] | None:
            rules = self.rules()
            return (
                rules
                if all(r["state"] == "ok" and not r["blind"] for r in rules.values())
                else None
            )

        return self.until(every_rule_ok, "every rule ok", timeout)

    def wait_run(self, timeout: float = 180.0) -> dict[str, Any]:
        """The one rollback run, once it ended (any outcome)."""

        def ended() -> dict[str, Any] | None:
            runs = self.incidents()
            return runs[0] if runs and runs[0]["status"] != "running" else None

        return self.until(ended, "a rollback run ended", timeout)

    # -- the data -----------------------------------------------------------------------------

    def sql(self, query: str, *params: object, dbname: str | None = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.stack.host_dsn(dbname), connect_timeout=5) as conn:
            return conn.execute(query.encode(), params).fetchall()

    def integrity_violations(self, dbname: str | None = None) -> int:
        [(count,)] = self.sql(INTEGRITY_SQL, dbname=dbname)
        return int(count)

    def databases(self) -> list[str]:
        return [name for (name,) in self.sql("SELECT datname FROM pg_database ORDER BY datname")]

    def write_markers(self, count: int = 5) -> list[Marker]:
        """Tasks created through the API, each with its audit row (v1.1.0)."""
        assert self.app is not None
        made = []
        for index in range(count):
            kind = f"marker-{self.label}-{index}-{uuid.uuid4().hex[:6]}"
            answer = get(f"{self.app.url}/api/tasks", method="POST", body={"kind": kind})
            assert answer.status == 201, answer.body
            made.append(Marker(int(answer.json()["id"]), kind))
        return made

    def markers_present(self, markers: list[Marker]) -> list[Marker]:
        ids = [m.id for m in markers]
        rows = self.sql("SELECT id, kind FROM agent_tasks WHERE id = ANY(%s) ORDER BY id", ids)
        return [Marker(int(i), str(k)) for i, k in rows]

    def audited(self, markers: list[Marker]) -> list[int]:
        ids = [m.id for m in markers]
        rows = self.sql("SELECT task_id FROM audit_logs WHERE task_id = ANY(%s) ORDER BY 1", ids)
        return [int(task_id) for (task_id,) in rows]

    def wait_routine_backup(self, newer_than: float, timeout: float = 90.0) -> Path:
        """The daemon's next verified last_known_good backup taken after ``newer_than``."""

        def fresh() -> Path | None:
            for checksum in sorted(self.backups.glob("last_known_good_*.dump.sha256")):
                dump = checksum.with_suffix("")
                if dump.exists() and dump.stat().st_mtime > newer_than:
                    return dump
            return None

        return self.until(fresh, "a routine last_known_good backup", timeout, interval=0.2)

    # -- the app ------------------------------------------------------------------------------

    def inspect(self, name: str | None = None) -> dict[str, Any]:
        found: dict[str, Any] = self.client.api.inspect_container(name or self.container)
        return found

    def replaced(self) -> list[dict[str, Any]]:
        """Containers a rollback set aside (``<name>-replaced-<stamp>``)."""
        prefix = f"{self.container}-replaced-"
        return [
            self.inspect(c.name)
            for c in self.client.containers.list(all=True, filters={"name": prefix})
            if c.name.startswith(prefix)
        ]

    def health(self) -> dict[str, Any]:
        assert self.app is not None
        answer = get(f"{self.app.url}/healthz", timeout=20)
        assert answer.status == 200, answer.body
        found: dict[str, Any] = answer.json()
        return found

    def wait_serving(self, version: str, timeout: float = 60.0) -> dict[str, Any]:
        def serving() -> dict[str, Any] | None:
            try:
                found = self.health()
            except (AssertionError, urllib.error.URLError, OSError):
                return None
            return found if found.get("version") == version else None

        return self.until(serving, f"{version} serving", timeout, interval=0.2)

    # -- cleaning up --------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        steps: list[Callable[[], None]] = []
        if self.traffic is not None:
            steps.append(self.traffic.stop)
        if self.daemon is not None:
            steps.append(self.daemon.close)
        if self.prometheus is not None:
            steps.append(self.prometheus.close)
        steps += [self.receiver.close, self._remove_replaced, self.stack.close]
        for step in steps:
            with contextlib.suppress(Exception):
                step()
        shutil.rmtree(self.root, ignore_errors=True)

    def _remove_replaced(self) -> None:
        """A rollback keeps the old container stopped under another name; a stopped container
        is not on the network's list, so AppStack.close() would not find it."""
        for container in self.client.containers.list(all=True, filters={"name": self.container}):
            if container.name.startswith(self.container):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True, v=True)
