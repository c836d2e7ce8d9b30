"""The sample SPEK app as ``spek-sentinel demo`` runs it: where it is (examples/spek_app of
this checkout, a directory given, or an installed ``spek_app``), checked to import with its
packages, and the threshold table the demo writes for it: the runbook's rows with 10-second
windows, the process backend running its releases."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from spek_sentinel.service.demo_servers import DemoUnavailableError

GOOD = "v1.0.0"
BAD = "v2.0.0-errors"
APP_NAME = "spek-app"
KNOWN_GOOD_AFTER = 5.0  # seconds a release must be healthy to be known good (1h in production)

_REPO = Path(__file__).resolve().parents[3]  # src/spek_sentinel/service/demo_app.py -> repository
_APP_CHECK = (
    "import spek_app.server\n"  # the app's third-party packages, as `serve` needs them
    "from spek_app.releases import RELEASES\n"
    "print('\\n'.join(RELEASES))\n"
)
_INSTALL_APP = "pip install -e examples/spek_app (./dev demo does this for you)"


@dataclass(frozen=True, slots=True)
class SampleApp:
    python: str
    pythonpath: str | None  # the app's directory, when it is not installed
    where: str
    releases: tuple[str, ...]


def find_sample_app(app_dir: Path | None) -> SampleApp:
    """The sample app, checked to import with its packages; DemoUnavailableError if not."""
    candidates = (
        [app_dir] if app_dir is not None else [_REPO / "examples" / "spek_app", None]
    )  # None: installed (importable as is)
    problem = ""
    for candidate in candidates:
        if candidate is not None and not (candidate / "spek_app" / "__init__.py").is_file():
            problem = f"no sample app in {candidate}"
            continue
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        if candidate is not None:
            env["PYTHONPATH"] = str(candidate)
        try:
            result = subprocess.run(
                [sys.executable, "-c", _APP_CHECK],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DemoUnavailableError(f"cannot run {sys.executable}: {exc}") from None
        if result.returncode == 0:
            releases = tuple(result.stdout.split())
            missing = {GOOD, BAD} - set(releases)
            if missing:
                problem = f"the sample app has no release {', '.join(sorted(missing))}"
                continue
            where = str(candidate) if candidate is not None else "installed package spek_app"
            return SampleApp(sys.executable, env.get("PYTHONPATH"), where, releases)
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        problem = f"the sample app does not import ({last})"
        if "spek_app" not in last or candidate is not None:
            break
    raise DemoUnavailableError(
        f"{problem}. The demo runs examples/spek_app from a clone of the repository with its "
        f"packages installed: {_INSTALL_APP}, or pass --app-dir"
    )


def render_table(work: Path, app_url: str, app: SampleApp, app_port: int) -> str:
    """The threshold table of the demo: the runbook's rows for this app, with 10 s windows."""
    env: dict[str, str] = {"PYTHONUNBUFFERED": "1", "SPEK_APP_REDIS_PREFIX": "spek-demo:"}
    if app.pythonpath is not None:
        env["PYTHONPATH"] = app.pythonpath
    command = [
        app.python, "-m", "spek_app", "serve", "--version", "{release}",
        "--host", "127.0.0.1", "--port", str(app_port), "--agent-interval", "0.5",
    ]  # fmt: skip

    def toml(value: object) -> str:
        return json.dumps(value)  # a JSON string or list of strings is a TOML one

    env_lines = "\n".join(f"{key} = {toml(value)}" for key, value in env.items())
    return f"""# Written by `spek-sentinel demo`: the runbook's "When to Rollback" rows for the
# sample app, with 10-second windows instead of 5 minutes so that the demo fits in a minute.

[sentinel]
state_dir = {toml(str(work / "state"))}
auto_rollback = true
cooldown = "10m"

[defaults]
interval = "2s"
blind_after = "1m"

[probes.app]
kind = "http"
url = {toml(app_url + "/healthz")}
interval = "2s"
timeout = "2s"
start_grace = "10s"
expect_json = {{ path = "status", equals = "ok" }}
signals.app_up = {{ unit = "bool", measure = "up" }}

# The sample app serves Prometheus text on /metrics, but no probe kind reads an exposition
# directly (kind = "prometheus" asks a Prometheus server): the error rate here is the http
# probe's own, over its last 10 requests to the API, as for an app without Prometheus.
[probes.api]
kind = "http"
url = {toml(app_url + "/api/tasks?limit=1")}
interval = "1s"
timeout = "2s"
window = 10
signals.error_rate = {{ unit = "ratio", measure = "error_ratio" }}
signals.api_latency_p95 = {{ unit = "seconds", measure = "latency_p95" }}

[probes.database]
kind = "postgres"
dsn_env = "SPEK_DEMO_DSN"
interval = "2s"
timeout = "2s"
signals.db_up = {{ unit = "bool", measure = "up" }}

[probes.cache]
kind = "redis"
url_env = "SPEK_DEMO_REDIS_URL"
interval = "2s"
timeout = "2s"
signals.redis_up = {{ unit = "bool", measure = "up" }}

[probes.app_process]
kind = "process"
pid_file = {toml(str(work / "state" / "apps" / f"{APP_NAME}.pid"))}
interval = "2s"
signals.app_rss = {{ unit = "bytes", measure = "rss" }}

[playbooks.high_error_rate]
scenario = "Scenario 2: high error rate after deployment"
database = []
application = "previous_release"

[[rules]]
name = "high_error_rate"
description = "Error rate >5% sustained (here 10s; 5m in production)"
signal = "error_rate"
kind = "threshold"
severity = "immediate"
above = "5%"
clear_below = "4%"
for = "10s"
keep_firing_for = "4s"
min_samples = 5
min_volume = 5
playbook = "high_error_rate"

[[rules]]
name = "app_wont_start"
description = "Application won't start"
signal = "app_up"
kind = "threshold"
severity = "immediate"
below = 1
for = "10s"
min_samples = 3
playbook = "high_error_rate"

[[rules]]
name = "database_unreachable"
description = "Cannot connect to database"
signal = "db_up"
kind = "threshold"
severity = "immediate"
below = 1
for = "10s"
min_samples = 3
playbook = "high_error_rate"

[validation]
monitor_for = "1m"

[[validation.checks]]
name = "error_rate"
signal = "error_rate"
below = "1%"
for = "10s"
description = "Error rate should be <1% after rollback"

[[validation.checks]]
name = "api_response_time"
signal = "api_latency_p95"
below = "200ms"
for = "10s"
description = "API response time should be <200ms after rollback"

[rollback]
backup_dir = {toml(str(work / "backups"))}
incidents_dir = {toml(str(work / "incidents"))}
downtime_budget = "10m"
downtime_target = "5m"
step_timeout = "60s"
known_good_after = "{KNOWN_GOOD_AFTER:g}s"

[rollback.database]
dsn_env = "SPEK_DEMO_DSN"

[rollback.application]
kind = "process"
name = "{APP_NAME}"
command = {toml(command)}
releases = {toml(list(app.releases))}
ready_url = {toml(app_url + "/healthz")}
start_timeout = "30s"
stop_grace = "5s"

[rollback.application.env]
{env_lines}

[rollback.application.env_from]  # secrets: the app's variable = the sentinel's variable
SPEK_APP_DSN = "SPEK_DEMO_DSN"
SPEK_APP_REDIS_URL = "SPEK_DEMO_REDIS_URL"
SESSION_SECRET = "SPEK_DEMO_SESSION_SECRET"
JWT_SECRET = "SPEK_DEMO_JWT_SECRET"
"""
