"""Resident memory and CPU of the daemon (``spek-sentinel run``), idle and busy, at 10, 100 and
1,000 rules probed every 15 s; and a soak: RSS after an hour against RSS after five minutes.

Run from the project root:

    .venv/bin/python bench/daemon.py                # 10/100/1,000 rules, idle and busy, 5 min each
    .venv/bin/python bench/daemon.py --window 180   # 3 min per configuration
    .venv/bin/python bench/daemon.py --soak 3600    # one busy daemon at 100 rules for 1 h

What runs: the real daemon, ``python -m spek_sentinel.cli run -c TABLE --log-json``, in a
child process, against a site this script serves on 127.0.0.1 with the standard library
(threads of this process, never of the daemon):

- a Prometheus HTTP API (``GET /api/v1/query``): every ``kind = "prometheus"`` signal is one
  instant query that this server answers with the signal's current value (some signals also
  have a ``volume_query``), ten signals per probe section, as one section per service would be;
- the app's health endpoint (``GET /healthz``) for a ``kind = "http"`` probe (up, error ratio);
- a webhook receiver (``POST /hook``), the table's only pager, counting the pages it gets.

Pushed signals (``kind = "pushed"``, in the daemon's SQLite state file) carry confirmed events;
in the busy case this script pushes and resolves them through ``POST /api/v1/signals``.
Whatever the mode, this script scrapes ``/metrics`` every ``--scrape`` seconds (15), as the
site's Prometheus would.

N rules spread over max(5, N/10) Prometheus signals plus 2 HTTP and 2 pushed signals (about
ten rules per signal at 1,000): error-ratio thresholds at several levels, relative-to-baseline
latency rules, memory trends, availability and confirmed events. Every probe runs every 15 s.

- idle: every value stays constant and healthy; nothing is pushed; nothing pages.
- busy: values are noisy; every 4 minutes one third of the Prometheus signals breach for 2.5
  minutes (rules go PENDING, FIRING, then RESOLVED, and open, page and close an incident), some
  signals blip for one sample (PENDING, then OK), memory signals ramp (trend rules), the health
  endpoint fails for 2 minutes every other cycle, and an event is pushed then resolved each
  cycle. The table is in shadow mode (``auto_rollback = false``): immediate rules decide and
  page a rollback but never run one.

Method: the daemons run the committed source (``git archive HEAD src``, byte-compiled, first on
their PYTHONPATH; ``--worktree`` for the checkout as it is), so edits made to the checkout while
a run goes on change nothing. Each configuration gets a fresh state directory and a fresh
daemon. Once ``/readyz`` answers 200, RSS (``VmRSS`` in /proc/PID/status) and CPU time
(utime + stime in /proc/PID/stat, every thread) are read every ``--every`` seconds over
``--window`` seconds.
Two reference processes run side by side with each daemon, started with it and read at the same
moments: the bare interpreter (``python -c "import signal; signal.pause()"``) and the
interpreter with the daemon's code imported (``import spek_sentinel.cli``, which imports every
command, the daemon included). ``end/imports`` is the daemon's RSS over the second one's,
measured in the same moment: the memory the running daemon adds over its own code.

Soak (``--soak SECONDS``): one daemon (100 rules, busy, unless ``--soak-rules`` and
``--soak-mode`` say otherwise), RSS read every minute; the report gives RSS at 5 minutes and at
the end and their ratio (1.00 = no growth).

Each run prints a table and writes JSON (every sample included) under bench/results/.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import io
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RULE_COUNTS = (10, 100, 1000)
MODES = ("idle", "busy")
INTERVAL = 15  # seconds: every probe's interval
SIGNALS_PER_PROBE = 10  # Prometheus signals per probe section
CYCLE = 240.0  # busy: seconds per cycle of the breach pattern
BREACH = 150.0  # busy: seconds of each cycle during which a third of the signals breach
HEALTH_DOWN = 120.0  # busy: seconds the health endpoint fails, every other cycle
SOAK_MARK = 300.0  # soak: RSS at this age is the reference for growth
AIM_RSS_MIB = 80.0  # at 100 rules ("80 MB", read as MiB: the generous reading)
AIM_CPU_PCT = 2.0  # % of one core at 100 rules
CLK_TCK = os.sysconf("SC_CLK_TCK")
WEBHOOK_SECRET = "bench-webhook-secret"  # noqa: S105 - a local throwaway receiver's key
API_TOKEN = "bench-api-token"  # noqa: S105 - the throwaway daemon's API token
INTERPRETER = "import signal; signal.pause()"
IMPORTS = "import spek_sentinel.cli, signal; signal.pause()"


# -- the table --------------------------------------------------------------------------------

# Prometheus signals cycle through these units; the first ratio signal of each five has a
# volume_query, like the runbook's error rate.
PROM_UNITS = ("ratio", "seconds", "ratio", "bytes", "bool")
OK_VALUE = {"ratio": 0.01, "seconds": 0.2, "bytes": 5e8, "bool": 1.0}
BREACH_VALUE = {"ratio": 0.12, "seconds": 0.5, "bytes": 2e9, "bool": 0.0}
BLIP_VALUE = {"ratio": 0.07, "seconds": 0.45, "bytes": 5e8, "bool": 0.0}


@dataclass(frozen=True)
class Signal:
    name: str
    unit: str  # ratio, seconds, bytes, bool, event
    index: int  # position among the Prometheus signals (pattern phase); -1 otherwise
    volume: bool = False  # has a volume_query (a min_volume guard makes sense)


def rule_toml(number: int, signal: Signal, variant: int) -> str:
    """One [[rules]] entry: variant ``v`` of the mix for the signal's unit (v-th rule on it)."""
    name = f"r{number:04d}_{signal.name}"
    head = f'[[rules]]\nname = "{name}"\nsignal = "{signal.name}"\n'
    # later rules on a signal repeat the unit's mix a little further from the line
    scale = 1.0 + 0.01 * (variant // 5)
    unit = signal.unit
    slot = variant % 5
    if unit == "ratio":
        if slot == 0:
            volume = "min_volume = 100\n" if signal.volume else ""
            return head + (
                'kind = "threshold"\nseverity = "immediate"\nplaybook = "high_error_rate"\n'
                f'above = {0.05 * scale:.4f}\nclear_below = {0.04 * scale:.4f}\nfor = "2m"\n'
                f'min_samples = 3\nkeep_firing_for = "30s"\n{volume}'
            )
        if slot == 1:
            return head + (
                'kind = "threshold"\nseverity = "evaluate"\nplaybook = "performance"\n'
                f'above = {0.10 * scale:.4f}\nclear_below = {0.08 * scale:.4f}\nfor = "1m"\n'
            )
        if slot == 2:
            return head + (
                'kind = "threshold"\nseverity = "evaluate"\nplaybook = "performance"\n'
                f'above = {0.03 * scale:.4f}\nfor = "5m"\nmin_samples = 5\n'
            )
        if slot == 3:
            return head + (
                'kind = "relative"\nseverity = "evaluate"\nplaybook = "performance"\n'
                f"increase = {2.0 * scale:.3f}\nclear_increase = 1.0\n"
                'baseline = { method = "rolling_median", window = "1h", min_samples = 10 }\n'
                'for = "1m"\n'
            )
        return head + (
            'kind = "threshold"\nseverity = "evaluate"\nplaybook = "performance"\n'
            f'above = {0.2 * scale:.4f}\nfor = "30s"\n'
        )
    if unit == "seconds":
        if slot in (0, 3):
            return head + (
                'kind = "relative"\nseverity = "evaluate"\nplaybook = "performance"\n'
                f"increase = {0.5 * scale:.3f}\nclear_increase = 0.25\n"
                'baseline = { method = "rolling_median", window = "1h", min_samples = 10 }\n'
                'for = "2m"\nmin_samples = 3\n'
            )
        if slot in (1, 4):
            return head + (
                'kind = "threshold"\nseverity = "evaluate"\nplaybook = "performance"\n'
                f'above = "{400 * scale:.0f}ms"\nclear_below = "300ms"\nfor = "1m"\n'
            )
        return head + (
            'kind = "threshold"\nseverity = "evaluate"\nplaybook = "performance"\n'
            f'above = "{1000 * scale:.0f}ms"\nfor = "5m"\n'
        )
    if unit == "bytes":
        if slot in (0, 3):
            return head + (
                'kind = "trend"\nseverity = "evaluate"\nplaybook = "performance"\n'
                f'window = "10m"\nmin_growth = {0.02 * scale:.4f}\nmin_rising = 0.55\n'
                'keep_firing_for = "1m"\n'
            )
        if slot in (1, 4):
            return head + (
                'kind = "threshold"\nseverity = "evaluate"\nplaybook = "performance"\n'
                f'above = "{1500 * scale:.0f}MB"\nfor = "2m"\n'
            )
        return head + (
            'kind = "trend"\nseverity = "evaluate"\nplaybook = "performance"\n'
            f'window = "30m"\nmin_growth = {0.2 * scale:.3f}\nmin_rising = 0.7\nwarmup = "10m"\n'
            'keep_firing_for = "10m"\n'
        )
    if unit == "bool":
        if slot % 2 == 0:
            return head + (
                'kind = "threshold"\nseverity = "immediate"\nplaybook = "high_error_rate"\n'
                'below = 1\nfor = "1m"\nmin_samples = 3\n'
            )
        return head + (
            'kind = "threshold"\nseverity = "evaluate"\nplaybook = "performance"\n'
            'below = 1\nfor = "5m"\n'
        )
    # event
    two = "min_samples = 2\n" if slot % 2 else ""
    return head + (f'kind = "event"\nseverity = "immediate"\nplaybook = "incident_response"\n{two}')


def plan_signals(rules: int) -> tuple[list[Signal], list[Signal], list[Signal]]:
    """(Prometheus, HTTP, pushed) signals for a table of ``rules`` rules."""
    prom = [
        Signal(f"s{i:03d}", PROM_UNITS[i % 5], i, volume=i % 5 == 0)
        for i in range(max(5, rules // 10))
    ]
    http = [Signal("app_up", "bool", -1), Signal("app_error_ratio", "ratio", -1)]
    pushed = [Signal("data_corruption", "event", -1), Signal("security_breach", "event", -1)]
    return prom, http, pushed


def write_table(
    path: Path, rules: int, state: Path, site_url: str, api_port: int
) -> tuple[int, int]:
    """The table; returns (probe sections, signals)."""
    prom, http, pushed = plan_signals(rules)
    parts = [
        f"""[sentinel]
state_dir = "{state}/state"
auto_rollback = false   # shadow mode: immediate rules decide and page a rollback, never run one

[api]
listen = "127.0.0.1:{api_port}"
token_env = "BENCH_API_TOKEN"

[defaults]
interval = "{INTERVAL}s"

[rollback]
backup_dir = "{state}/backups"
incidents_dir = "{state}/incidents"

[playbooks.high_error_rate]
scenario = "Scenario 2: high error rate after deployment"
application = "previous_release"

[playbooks.performance]
scenario = "Scenario 4: performance degradation"
application = "previous_release"

[playbooks.incident_response]
scenario = "Scenario 3: data corruption detected"
application = "none"

[pagers.receiver]
type = "webhook"
url = "{site_url}/hook"
secret_env = "BENCH_WEBHOOK_SECRET"
timeout = "5s"

[probes.app]
kind = "http"
url = "{site_url}/healthz"
interval = "{INTERVAL}s"
timeout = "5s"
start_grace = "30s"
expect_json = {{ path = "status", equals = "ok" }}
signals.app_up = {{ unit = "bool", measure = "up" }}
signals.app_error_ratio = {{ unit = "ratio", measure = "error_ratio" }}

[probes.confirmed]
kind = "pushed"
interval = "{INTERVAL}s"
signals.data_corruption = {{ unit = "count", measure = "event" }}
signals.security_breach = {{ unit = "count", measure = "event" }}
"""
    ]
    sections = 2
    for start in range(0, len(prom), SIGNALS_PER_PROBE):
        sections += 1
        parts.append(
            f'[probes.job{start // SIGNALS_PER_PROBE:02d}]\nkind = "prometheus"\n'
            f'url = "{site_url}"\ninterval = "{INTERVAL}s"\ntimeout = "5s"\n'
        )
        for one in prom[start : start + SIGNALS_PER_PROBE]:
            probe = f"job{start // SIGNALS_PER_PROBE:02d}"
            query = f'bench_value{{signal="{one.name}"}}'
            volume = (
                f"\nvolume_query = 'bench_requests{{signal=\"{one.name}\"}}'" if one.volume else ""
            )
            parts.append(
                f'[probes.{probe}.signals.{one.name}]\nunit = "{one.unit}"\n'
                f"query = '{query}'{volume}\n"
            )
    everything = [*prom, *http, *pushed]
    seen: Counter[str] = Counter()
    for number in range(rules):
        one = everything[number % len(everything)]
        parts.append(rule_toml(number, one, seen[one.name]))
        seen[one.name] += 1
    path.write_text("\n".join(parts), encoding="utf-8")
    return sections, len(everything)


# -- the site: Prometheus API, health endpoint, webhook receiver ------------------------------


class Site:
    """What the daemon probes and pages, served from threads of this process."""

    def __init__(self, signals: Sequence[Signal], busy: bool, seed: int) -> None:
        self.units = {one.name: one for one in signals}
        self.busy = busy
        self.rng = random.Random(seed)  # noqa: S311 - noise, not crypto
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Prometheus serves

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/api/v1/query":
                    query = parse_qs(url.query).get("query", [""])[0]
                    self._answer(200, site.query(query))
                elif url.path == "/healthz":
                    healthy = site.healthy()
                    site.count("healthz" if healthy else "healthz failed")
                    self._answer(200 if healthy else 503, {"status": "ok" if healthy else "down"})
                else:
                    self._answer(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.path == "/hook":
                    try:
                        kind = str(json.loads(body).get("kind", "?"))
                    except ValueError:
                        kind = "?"
                    site.count(f"page {kind}")
                    self._answer(200, {})
                else:
                    self._answer(404, {"error": "not found"})

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # a client gone mid-answer (the daemon stopping with queries in flight)
                error = sys.exc_info()[1]
                site.count(f"connection error {type(error).__name__}")

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def healthy(self) -> bool:
        if not self.busy:
            return True
        cycle, offset = divmod(self.elapsed(), CYCLE)
        return not (int(cycle) % 2 == 1 and offset < HEALTH_DOWN)

    def value(self, name: str, volume: bool) -> float:
        one = self.units[name]
        if volume:
            return 400.0 + (50.0 * self.noise() if self.busy else 0.0)
        unit = one.unit
        if not self.busy:
            return OK_VALUE[unit]
        cycle, offset = divmod(self.elapsed(), CYCLE)
        if int(cycle) % 3 == one.index % 3 and offset < BREACH:
            return BREACH_VALUE[unit]
        if 195.0 <= offset < 210.0 and (int(cycle) + one.index) % 2 == 0:
            return BLIP_VALUE[unit]
        base = OK_VALUE[unit]
        if unit == "bool":
            return base
        if unit == "bytes":  # a slow leak, then a restart every 20 minutes: trend rules
            ramp = (self.elapsed() % 1200.0) / 1200.0
            return base * (1.0 + 0.05 * ramp + 0.001 * self.noise())
        return max(0.0, base * (1.0 + 0.1 * self.noise()))

    def noise(self) -> float:
        with self.lock:
            return self.rng.uniform(-1.0, 1.0)

    def query(self, query: str) -> dict[str, Any]:
        found = re.search(r'signal="([^"]+)"', query)
        if found is None or found.group(1) not in self.units:
            self.count("query refused")
            return {"status": "error", "errorType": "bad_data", "error": "unknown series"}
        volume = query.startswith("bench_requests")
        self.count("query")
        value = self.value(found.group(1), volume)
        return {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [{"metric": {}, "value": [time.time(), repr(value)]}],
            },
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- reading /proc ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcReading:
    at: float  # seconds since the measurement window started
    rss_kb: int
    anon_kb: int
    hwm_kb: int
    cpu_s: float  # utime + stime, every thread
    threads: int


def read_proc(pid: int, at: float) -> ProcReading:
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    fields: dict[str, str] = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        fields[key] = rest.strip()

    def kb(key: str) -> int:
        return int(fields.get(key, "0 kB").split()[0])

    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    after = stat.rsplit(")", 1)[1].split()  # field 3 (state) onwards
    utime, stime = int(after[11]), int(after[12])
    return ProcReading(
        at=at,
        rss_kb=kb("VmRSS"),
        anon_kb=kb("RssAnon"),
        hwm_kb=kb("VmHWM"),
        cpu_s=(utime + stime) / CLK_TCK,
        threads=int(fields.get("Threads", "0")),
    )


def mib(kb: float) -> float:
    return kb / 1024.0


def cpu_pct(first: ProcReading, last: ProcReading) -> float:
    wall = last.at - first.at
    return 100.0 * (last.cpu_s - first.cpu_s) / wall if wall > 0 else math.nan


# -- one daemon -------------------------------------------------------------------------------


@dataclass
class Measured:
    rules: int
    mode: str
    probes: int
    signals: int
    window_s: float
    startup_s: float
    startup_cpu_s: float
    rss_start_mib: float
    rss_end_mib: float
    rss_max_mib: float
    anon_end_mib: float
    hwm_mib: float
    cpu_pct: float
    threads: int
    interpreter_mib: float
    imports_mib: float
    imports_cpu_pct: float
    end_over_imports: float
    overhead_mib: float
    exit_code: int | None
    site: dict[str, int]
    pushes: int
    scrapes: int
    metrics_bytes: int
    log: dict[str, int]
    log_problems: list[str]
    rule_states: dict[str, int]
    samples: list[dict[str, float]] = field(default_factory=list)
    soak: dict[str, float] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(
    method: str, url: str, body: dict[str, Any] | None = None, token: str | None = None
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - local URL
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - local URL
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


class Every(threading.Thread):
    """Call ``action`` every ``seconds`` until stopped (a daemon thread of this process)."""

    def __init__(self, seconds: float, action: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.seconds = seconds
        self.action = action
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.seconds):
            self.action()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=30)


def read_log(path: Path, keep: int = 20) -> tuple[dict[str, int], list[str]]:
    """Lines per level and per decision, and the first ``keep`` warnings and errors."""
    counts: Counter[str] = Counter()
    problems: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            try:
                entry = json.loads(line)
            except ValueError:
                counts["not json"] += 1
                continue
            level = str(entry.get("level", "?"))
            counts[f"level {level}"] += 1
            event = str(entry.get("event", ""))
            if event.startswith("decision "):
                counts[f"decision {event.split()[1]}"] += 1
            if level in ("warning", "error", "critical") and len(problems) < keep:
                where = f"{entry.get('timestamp', '?')} {level} {entry.get('logger', '?')}"
                problems.append(f"{where}: {event[:300]}")
    return dict(sorted(counts.items())), problems


@dataclass(frozen=True)
class Options:
    window: float  # seconds of measurement after /readyz
    every: float  # seconds between readings
    scrape: float  # seconds between scrapes of /metrics (0: never)
    workdir: Path
    source: Path  # src/ as copied at the start: what the daemons and references import
    seed: int
    progress: Callable[[str], None]


class DaemonRun:
    """One daemon on a fresh table and state directory, the two reference processes beside it,
    the site it probes and pages, and the readings."""

    def __init__(self, rules: int, mode: str, options: Options) -> None:
        self.rules = rules
        self.mode = mode
        self.options = options
        prom, http_signals, pushed = plan_signals(rules)
        self.site = Site([*prom, *http_signals, *pushed], mode == "busy", options.seed)
        self.state = options.workdir / f"{rules}-{mode}"
        self.state.mkdir(parents=True)
        api_port = free_port()
        self.table = self.state / "table.toml"
        self.probes, self.signals = write_table(
            self.table, rules, self.state, self.site.url, api_port
        )
        self.api = f"http://127.0.0.1:{api_port}"
        self.log_path = self.state / "daemon.log"
        self.pushes = 0
        self.scrapes = 0
        self.metrics_bytes = 0
        self.readings: list[tuple[ProcReading, ProcReading, ProcReading]] = []
        self.waiter = threading.Event()
        self._pushed: dict[str, int] = {}
        self._resolved: dict[str, int] = {}

    # -- processes ----------------------------------------------------------------------------

    def launch(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
        env.pop("PYTHONTRACEMALLOC", None)
        env.update(BENCH_WEBHOOK_SECRET=WEBHOOK_SECRET, BENCH_API_TOKEN=API_TOKEN)
        env["PYTHONPATH"] = str(self.options.source)  # the frozen copy, ahead of the checkout
        python = sys.executable
        self.references = {
            "interpreter": subprocess.Popen([python, "-c", INTERPRETER], env=env),
            "imports": subprocess.Popen([python, "-c", IMPORTS], env=env),
        }
        self.launched = time.monotonic()
        with self.log_path.open("wb") as log:
            self.daemon = subprocess.Popen(
                [python, "-m", "spek_sentinel.cli", "run", "-c", str(self.table), "--log-json"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.state,
            )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = self.launched + timeout
        while http("GET", f"{self.api}/readyz")[0] != 200:
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
                raise RuntimeError(f"daemon not ready (exit {self.daemon.poll()}):\n{tail}")
            self.waiter.wait(0.2)
        self.ready = time.monotonic()
        self.startup_cpu = read_proc(self.daemon.pid, 0.0).cpu_s

    def stop(self) -> int | None:
        daemon = self.daemon
        code: int | None
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
                code = None
        else:
            code = daemon.returncode
        for reference in self.references.values():
            reference.kill()
            reference.wait()
        self.site.close()
        return code

    # -- load besides the probes --------------------------------------------------------------

    def push(self) -> None:
        """Busy: confirm an event 30 s into each cycle, resolve it 60 s later, via the API."""
        cycle, offset = divmod(self.site.elapsed(), CYCLE)
        k = int(cycle)
        name = "data_corruption" if k % 2 == 0 else "security_breach"
        body: dict[str, Any] | None = None
        if offset >= 30.0 and self._pushed.get(name) != k:
            self._pushed[name] = k
            body = {"name": name, "reason": "bench: confirmed", "by": "bench"}
        elif offset >= 90.0 and self._resolved.get(name) != k:
            self._resolved[name] = k
            body = {"name": name, "reason": "bench: resolved", "by": "bench", "resolve": True}
        if (
            body is not None
            and http("POST", f"{self.api}/api/v1/signals", body, API_TOKEN)[0] == 201
        ):
            self.pushes += 1

    def scrape(self) -> None:
        status, body = http("GET", f"{self.api}/metrics")
        if status == 200:
            self.scrapes += 1
            self.metrics_bytes = len(body)

    # -- measuring ----------------------------------------------------------------------------

    def read_all(self, start: float) -> None:
        at = time.monotonic() - start
        self.readings.append(
            (
                read_proc(self.daemon.pid, at),
                read_proc(self.references["interpreter"].pid, at),
                read_proc(self.references["imports"].pid, at),
            )
        )

    def measure(self) -> None:
        options = self.options
        helpers: list[Every] = []
        if self.mode == "busy":
            helpers.append(Every(min(options.every, 5.0), self.push))
        if options.scrape > 0:
            helpers.append(Every(options.scrape, self.scrape))
        for helper in helpers:
            helper.start()
        try:
            start = time.monotonic()
            self.read_all(start)
            ticks = max(1, round(options.window / options.every))
            for tick in range(1, ticks + 1):
                self.waiter.wait(max(0.0, start + tick * options.every - time.monotonic()))
                if self.daemon.poll() is not None:
                    raise RuntimeError(f"daemon exited in the window: {self.daemon.returncode}")
                self.read_all(start)
                if tick * options.every % 60 < options.every:
                    rss = mib(self.readings[-1][0].rss_kb)
                    options.progress(
                        f"  {self.rules} rules {self.mode}: {tick * options.every:>6.0f}s "
                        f"RSS {rss:6.1f} MiB"
                    )
        finally:
            for helper in helpers:
                helper.stop()

    def rule_states(self) -> dict[str, int]:
        _, body = http("GET", f"{self.api}/api/v1/rules")
        states: Counter[str] = Counter()
        try:
            for rule in json.loads(body)["rules"]:
                states[str(rule["state"])] += 1
                if rule["value"] is None:
                    states["no value"] += 1
        except (ValueError, KeyError, TypeError):
            states["unreadable"] += 1
        return dict(sorted(states.items()))

    def run(self) -> Measured:
        self.launch()
        try:
            self.wait_ready()
            self.measure()
            states = self.rule_states()
        finally:
            code = self.stop()
        return self.result(states, code)

    def result(self, states: dict[str, int], code: int | None) -> Measured:
        first, last = self.readings[0], self.readings[-1]
        log_counts, problems = read_log(self.log_path)
        daemon_first, daemon_last = first[0], last[0]
        return Measured(
            rules=self.rules,
            mode=self.mode,
            probes=self.probes,
            signals=self.signals,
            window_s=daemon_last.at - daemon_first.at,
            startup_s=self.ready - self.launched,
            startup_cpu_s=self.startup_cpu,
            rss_start_mib=mib(daemon_first.rss_kb),
            rss_end_mib=mib(daemon_last.rss_kb),
            rss_max_mib=mib(max(r[0].rss_kb for r in self.readings)),
            anon_end_mib=mib(daemon_last.anon_kb),
            hwm_mib=mib(daemon_last.hwm_kb),
            cpu_pct=cpu_pct(daemon_first, daemon_last),
            threads=daemon_last.threads,
            interpreter_mib=mib(last[1].rss_kb),
            imports_mib=mib(last[2].rss_kb),
            imports_cpu_pct=cpu_pct(first[2], last[2]),
            end_over_imports=daemon_last.rss_kb / last[2].rss_kb,
            overhead_mib=mib(daemon_last.rss_kb - last[2].rss_kb),
            exit_code=code,
            site=dict(sorted(self.site.counts.items())),
            pushes=self.pushes,
            scrapes=self.scrapes,
            metrics_bytes=self.metrics_bytes,
            log=log_counts,
            log_problems=problems,
            rule_states=states,
            samples=[
                {
                    "at": round(d.at, 1),
                    "rss_mib": round(mib(d.rss_kb), 2),
                    "anon_mib": round(mib(d.anon_kb), 2),
                    "cpu_s": round(d.cpu_s, 2),
                    "imports_rss_mib": round(mib(i.rss_kb), 2),
                }
                for d, _, i in self.readings
            ],
        )


# -- reporting --------------------------------------------------------------------------------


def source_version() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src/spek_sentinel"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    dirty = sorted(line[3:] for line in changed if line.strip())
    return head + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else "")


def freeze_source(workdir: Path, worktree: bool) -> tuple[Path, str]:
    """The daemons' own copy of src/: the committed tree (``git archive HEAD``), or with
    ``worktree`` the checkout as it is now. Others may edit the checkout while a run goes on,
    and every configuration must run the same code. Returns the copy and what it is."""
    frozen = workdir / "src"
    head = source_version().split()[0]
    if worktree:
        shutil.copytree(
            ROOT / "src", frozen, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
        what = f"the working tree at {source_version()}"
    else:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD", "src"],
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(workdir, filter="data")
        what = f"commit {head} (git archive HEAD src)"
    compileall.compile_dir(frozen, quiet=1)  # no compiling in the measured processes
    digest = hashlib.sha256()
    for path in sorted(frozen.rglob("*.py")):
        digest.update(str(path.relative_to(frozen)).encode() + b"\0" + path.read_bytes())
    return frozen, f"{what}; sha256 of its .py files {digest.hexdigest()[:12]}"


def machine() -> dict[str, str]:
    free = shutil.which("free")
    memory = (
        subprocess.run([free, "-g"], capture_output=True, text=True, check=False).stdout
        if free
        else ""
    )
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": model,
        "nproc": str(os.cpu_count()),
        "free -g": memory.strip(),
        "source": source_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def show_machine(info: dict[str, str]) -> None:
    print(f"python   {info['python']}  {info['platform']}, {info['cpu']}")
    print(f"nproc    {info['nproc']}")
    print("free -g  " + info["free -g"].replace("\n", "\n         "))
    print(f"source   {info['source']}")


def show_problems(result: Measured, shown: int = 5) -> None:
    for line in result.log_problems[:shown]:
        print(f"      log: {line[:200]}")
    if len(result.log_problems) > shown:
        print(f"      log: ... {len(result.log_problems) - shown} more in the JSON")


def show_sizes(results: Sequence[Measured]) -> None:
    print(
        "\nRSS in MiB (VmRSS); CPU in % of one core over the window (utime + stime / wall);"
        "\n'imports' = python with spek_sentinel.cli imported, read side by side; "
        "'interp' = bare python"
    )
    header = (
        f"{'rules':>5} {'mode':<4} {'probes':>6} {'sigs':>4} {'ready s':>7} "
        f"{'RSS start':>9} {'RSS end':>8} {'max':>6} {'anon':>6} "
        f"{'imports':>7} {'interp':>6} {'end/imp':>7} {'+MiB':>6} {'CPU %':>6} "
        f"{'queries':>7} {'pages':>5} {'decis.':>6}"
    )
    print(header)
    for r in results:
        pages = sum(v for k, v in r.site.items() if k.startswith("page"))
        decisions = sum(v for k, v in r.log.items() if k.startswith("decision"))
        print(
            f"{r.rules:>5} {r.mode:<4} {r.probes:>6} {r.signals:>4} {r.startup_s:>7.1f} "
            f"{r.rss_start_mib:>9.1f} {r.rss_end_mib:>8.1f} {r.rss_max_mib:>6.1f} "
            f"{r.anon_end_mib:>6.1f} {r.imports_mib:>7.1f} {r.interpreter_mib:>6.1f} "
            f"{r.end_over_imports:>7.2f} {r.overhead_mib:>6.1f} {r.cpu_pct:>6.2f} "
            f"{r.site.get('query', 0):>7} {pages:>5} {decisions:>6}"
        )
    print("\nper configuration: rule states at the end, log lines, site counters, exit code")
    for r in results:
        print(
            f"{r.rules:>5} {r.mode:<4} states {r.rule_states}  log {r.log}  site {r.site}  "
            f"pushes {r.pushes}  scrapes {r.scrapes} ({r.metrics_bytes:,} B)  "
            f"threads {r.threads}  startup CPU {r.startup_cpu_s:.1f}s  exit {r.exit_code}"
        )
        show_problems(r)
    for r in results:
        if r.rules == 100:
            rss = "meets" if r.rss_end_mib < AIM_RSS_MIB else "MISSES"
            cpu = "meets" if r.cpu_pct < AIM_CPU_PCT else "MISSES"
            print(
                f"aim at 100 rules ({r.mode}): RSS {r.rss_end_mib:.1f} MiB "
                f"({r.rss_end_mib * 1.048576:.1f} MB) {rss} < {AIM_RSS_MIB:.0f} MiB; "
                f"CPU {r.cpu_pct:.2f} % {cpu} < {AIM_CPU_PCT:.0f} % of a core"
            )


def soak_summary(result: Measured) -> dict[str, float]:
    series = result.samples
    mark = min(series, key=lambda s: abs(s["at"] - SOAK_MARK))
    end = series[-1]
    half = min(series, key=lambda s: abs(s["at"] - end["at"] / 2))
    cpu = 100.0 * (end["cpu_s"] - series[0]["cpu_s"]) / (end["at"] - series[0]["at"])
    return {
        "mark_at_s": mark["at"],
        "rss_at_mark_mib": mark["rss_mib"],
        "rss_half_mib": half["rss_mib"],
        "rss_end_mib": end["rss_mib"],
        "end_over_mark": end["rss_mib"] / mark["rss_mib"],
        "end_over_half": end["rss_mib"] / half["rss_mib"],
        "anon_end_over_mark": end["anon_mib"] / mark["anon_mib"],
        "imports_end_over_mark": end["imports_rss_mib"] / mark["imports_rss_mib"],
        "cpu_pct": cpu,
    }


def show_soak(result: Measured) -> None:
    s = result.soak
    print(f"\nsoak: {result.rules} rules, {result.mode}, {result.window_s:.0f} s")
    print(f"log {result.log}  site {result.site}  exit {result.exit_code}")
    show_problems(result)
    print("minute RSS MiB anon MiB  CPU s")
    for sample in result.samples:
        print(
            f"{sample['at'] / 60:>6.1f} {sample['rss_mib']:>7.1f} {sample['anon_mib']:>8.1f} "
            f"{sample['cpu_s']:>6.1f}"
        )
    print(
        f"RSS at {s['mark_at_s'] / 60:.0f} min {s['rss_at_mark_mib']:.1f} MiB, at the end "
        f"{s['rss_end_mib']:.1f} MiB: ratio {s['end_over_mark']:.3f} "
        f"(anon {s['anon_end_over_mark']:.3f}; "
        f"end over half-way {s['end_over_half']:.3f}; the imports-only process "
        f"{s['imports_end_over_mark']:.3f}); CPU {s['cpu_pct']:.2f} % of a core"
    )


def write_json(kind: str, out: str | None, info: dict[str, str], results: list[Measured]) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = Path(out) if out else RESULTS / f"daemon-{kind}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"kind": kind, "machine": info, "results": [asdict(r) for r in results]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)  # appears whole: a waiting loop can test for the file
    return path


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rules", type=int, nargs="+", default=list(RULE_COUNTS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--window", type=float, default=300.0, help="seconds per configuration")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between readings")
    parser.add_argument(
        "--scrape", type=float, default=15.0, help="scrape /metrics this often (0: never)"
    )
    parser.add_argument("--soak", type=float, help="soak for this many seconds instead")
    parser.add_argument("--soak-rules", type=int, default=100)
    parser.add_argument("--soak-mode", choices=MODES, default="busy")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", help="JSON result path (default bench/results/daemon-*.json)")
    parser.add_argument("--keep", action="store_true", help="keep the state dirs and logs")
    parser.add_argument(
        "--worktree",
        action="store_true",
        help="run src/ as it is in the checkout now (default: as committed at HEAD)",
    )
    args = parser.parse_args(argv)
    # stopped with SIGTERM (or SIGINT, even when started in the background): stop the daemon
    # and the reference processes on the way out
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)

    def progress(line: str) -> None:
        print(line, flush=True)

    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="spek-bench-daemon-"))
    try:
        frozen, info["source"] = freeze_source(workdir, args.worktree)
        show_machine(info)
        if args.soak:
            progress(
                f"soak: {args.soak_rules} rules, {args.soak_mode}, {args.soak:.0f} s, "
                f"RSS every 60 s (state in {workdir})"
            )
            options = Options(args.soak, 60.0, args.scrape, workdir, frozen, args.seed, progress)
            result = DaemonRun(args.soak_rules, args.soak_mode, options).run()
            result.soak = soak_summary(result)
            show_soak(result)
            results = [result]
            kind = "soak"
        else:
            options = Options(
                args.window, args.every, args.scrape, workdir, frozen, args.seed, progress
            )
            results = []
            for rules in sorted(set(args.rules)):
                for mode in args.modes:
                    progress(f"{rules} rules, {mode}: window {args.window:.0f} s")
                    results.append(DaemonRun(rules, mode, options).run())
            show_sizes(results)
            kind = "sizes"
        path = write_json(kind, args.out, info, results)
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"\nresults written to {shown}")
    finally:
        if args.keep:
            print(f"state dirs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
