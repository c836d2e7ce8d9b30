"""Detection latency: one injected error burst, watched by spek-sentinel and by a real
Prometheus alerting rule routed through a real Alertmanager to a webhook.

Run from the project root (Debian packages ``prometheus`` and ``prometheus-alertmanager``):

    .venv/bin/python bench/detection.py              # 5 runs
    .venv/bin/python bench/detection.py --runs 10

What runs, all on 127.0.0.1:

- the app: an exporter (prometheus_client, a thread of this process) of
  ``http_requests_total{status, run}``, fed by a traffic thread at 50 requests/s (a counter
  increment every 20 ms); healthy it answers 200, during the fault 30 % of the requests are 500;
- a real Prometheus (``/usr/bin/prometheus``) scraping it every 1 s and evaluating every 1 s
  the alerting rule ``error_ratio > 0.05`` with ``for: 5s``, where error_ratio is
  ``sum by (run) (rate(http_requests_total{status="500"}[10s])) /
  sum by (run) (rate(http_requests_total[10s]))``; its alerts go to
- a real Alertmanager (tests/harness/alertmanager_server.py: group_wait 200 ms, one group per
  alert) posting to a webhook receiver in this process, which notes each arrival's time;
- spek-sentinel, ``python -m spek_sentinel.cli run``: one ``kind = "prometheus"`` probe on the
  same Prometheus every 1 s with the same ratio for this run (``{run="N"}``), one immediate
  threshold rule ``above 5%`` with ``for = "5s"`` (min_samples 1, no veto window), and a
  ``kind = "command"`` application backend whose stop_command writes the time it ran.

Each run gets fresh label values (``run="N"``), so the Prometheus alert of one run is a new
alert, and a fresh daemon with a fresh state dir. After 15 s of healthy traffic the fault
starts (its wall time noted); the run ends when both sides reacted. Measured from the fault's
start: spek-sentinel's rollback start (the journal's ``rollback_runs.started_at`` in its state
store; the stop command's own time is printed too) and the Alertmanager webhook's arrival.
Both sides see the same scrapes: spek-sentinel asks the same Prometheus. Results go to
bench/results/detection-<stamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness.alertmanager_server import AlertmanagerServer  # noqa: E402
from harness.daemon import DaemonProcess  # noqa: E402
from harness.ports import free_port  # noqa: E402
from harness.prometheus_server import Exporter, find_prometheus  # noqa: E402
from harness.wait import WaitTimeoutError, wait_until  # noqa: E402
from spek_sentinel.store.sqlite import SqliteStore  # noqa: E402

WINDOW = "10s"
FOR = "5s"
INTERVAL = "1s"
RATE = 50  # requests per second
ERROR_SHARE = 0.3
HEALTHY_BEFORE = 15.0
TOKEN = "bench-token-0123456789abcdef"  # noqa: S105 -- a throwaway daemon's API token
AUTH = {"Authorization": f"Bearer {TOKEN}"}

ALERT_RULES = {
    "groups": [
        {
            "name": "bench",
            "interval": INTERVAL,
            "rules": [
                {
                    "alert": "HighErrorRate",
                    "expr": (
                        f'sum by (run) (rate(http_requests_total{{status="500"}}[{WINDOW}]))'
                        f" / sum by (run) (rate(http_requests_total[{WINDOW}])) > 0.05"
                    ),
                    "for": FOR,
                }
            ],
        }
    ]
}

TABLE = """
[sentinel]
state_dir = "{root}/state"
cooldown = "1h"
veto_window = "0s"

[api]
listen = "127.0.0.1:{port}"
token_env = "BENCH_API_TOKEN"

[probes.app_metrics]
kind = "prometheus"
url = "{prometheus}"
interval = "{interval}"
timeout = "3s"

[probes.app_metrics.signals.error_rate]
unit = "ratio"
query = '''
sum(rate(http_requests_total{{status="500",run="{run}"}}[{window}]))
  / sum(rate(http_requests_total{{run="{run}"}}[{window}]))'''

[playbooks.high_error_rate]
scenario = "Scenario 2: high error rate after deployment"
application = "previous_release"

[[rules]]
name = "high_error_rate"
signal = "error_rate"
kind = "threshold"
severity = "immediate"
above = "5%"
for = "{for_}"
playbook = "high_error_rate"

[rollback]
backup_dir = "{root}/backups"
incidents_dir = "{root}/incidents"
step_timeout = "60s"

[rollback.application]
kind = "command"
stop_command = ["sh", "-c", "date +%s.%N >> {root}/stopped"]
rollback_command = ["sh", "-c", "echo {{release}} > {root}/app.release"]
start_command = ["true"]
current_release_command = ["cat", "{root}/app.release"]
target_exists_command = ["true"]
"""


class Receiver:
    """Alertmanager's webhook target: the arrival time of each firing notification by run."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrived = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                payload = json.loads(body)
                if payload.get("status") == "firing":
                    with receiver.lock:
                        for alert in payload.get("alerts", []):
                            run = alert.get("labels", {}).get("run", "")
                            receiver.arrivals.setdefault(run, arrived)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arrival(self, run: str) -> float | None:
        with self.lock:
            return self.arrivals.get(run)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Traffic:
    """Counts RATE requests/s for the current run; ``faulty`` makes ERROR_SHARE of them 500."""

    def __init__(self, exporter: Exporter) -> None:
        self.counter = exporter.counter("http_requests_total", ("status", "run"))
        self.run = ""
        self.faulty = False
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def begin(self, run: str) -> None:
        self.counter.labels(status="200", run=run)
        self.counter.labels(status="500", run=run)  # exists at 0 from the start
        self.faulty = False
        self.run = run

    def _loop(self) -> None:
        tick, errors = 1.0 / RATE, 0.0
        while not self.stopped.wait(tick):
            if not self.run:
                continue
            if self.faulty:
                errors += ERROR_SHARE
                if errors >= 1.0:
                    errors -= 1.0
                    self.counter.labels(status="500", run=self.run).inc()
                    continue
            self.counter.labels(status="200", run=self.run).inc()


def start_prometheus(
    base: Path, target: str, alertmanager: str
) -> tuple[subprocess.Popen[bytes], str]:
    rules = base / "rules.yml"
    rules.write_text(json.dumps(ALERT_RULES), encoding="utf-8")  # JSON is YAML
    config = {
        "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [{"job_name": "app", "static_configs": [{"targets": [target]}]}],
    }
    (base / "prometheus.yml").write_text(json.dumps(config), encoding="utf-8")
    port = free_port()
    log = (base / "prometheus.log").open("ab")
    proc = subprocess.Popen(
        [
            str(find_prometheus()),
            f"--config.file={base / 'prometheus.yml'}",
            f"--storage.tsdb.path={base / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        answer = httpx.get(f"{url}/api/v1/query", params={"query": 'up{job="app"}'}, timeout=2)
        return any(s["value"][1] == "1" for s in answer.json()["data"]["result"])

    wait_until(up, timeout=60, ignore=(httpx.HTTPError, ValueError), message="no scrape")
    return proc, url


def debug(prometheus: str, run: str) -> str:
    found = []
    for expr in ("up", f'http_requests_total{{run="{run}"}}', "ALERTS"):
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
        found.append(f"{expr}: {answer.text[:600]}")
    return "\n".join(found)


def rollback_started(root: Path) -> float | None:
    state = root / "state" / "sentinel.sqlite3"
    if not state.exists():
        return None
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
            row = db.execute("SELECT min(started_at) FROM rollback_runs").fetchone()
    except sqlite3.Error:
        return None
    return float(row[0]) if row and row[0] is not None else None


def one_run(
    index: int, traffic: Traffic, receiver: Receiver, prometheus: str, base: Path
) -> dict[str, Any]:
    run = f"r{index}-{os.getpid()}"
    root = base / f"run{index}"
    root.mkdir()
    (root / "app.release").write_text("v2\n")
    (root / "state").mkdir()
    store = SqliteStore.in_dir(root / "state")  # v1 known good, v2 the deploy being watched
    try:
        now = time.time()
        store.record_release("v1", now - 7200, "deploy")
        store.mark_healthy(now - 7200, True, 0)
        store.record_release("v2", now - 600, "deploy")
    finally:
        store.close()
    port = free_port()
    table = root / "thresholds.toml"
    table.write_text(
        TABLE.format(
            root=root, port=port, prometheus=prometheus, interval=INTERVAL,
            run=run, window=WINDOW, for_=FOR,
        ),
        encoding="utf-8",
    )  # fmt: skip
    traffic.begin(run)
    daemon = DaemonProcess(table, port, {"BENCH_API_TOKEN": TOKEN}, root / "daemon.log")
    daemon.start(timeout=60)
    try:
        healthy_until = time.monotonic() + HEALTHY_BEFORE
        wait_until(lambda: time.monotonic() >= healthy_until, timeout=HEALTHY_BEFORE + 5)
        if rollback_started(root) is not None or receiver.arrival(run) is not None:
            raise RuntimeError(f"run {run}: a side reacted before the fault")
        fault = time.time()
        traffic.faulty = True
        try:
            wait_until(
                lambda: rollback_started(root) is not None and receiver.arrival(run) is not None,
                timeout=90,
                interval=0.02,
            )
        except WaitTimeoutError:
            raise RuntimeError(
                f"run {run}: not both sides reacted (rollback started {rollback_started(root)},"
                f" webhook {receiver.arrival(run)}); rules: "
                f"{daemon.get('/api/v1/rules', headers=AUTH).text[:1500]}\n{daemon.tail()}"
                f"\nprometheus: {debug(prometheus, run)}"
            ) from None
        started = rollback_started(root)
        arrived = receiver.arrival(run)
        assert started is not None and arrived is not None
        stopped_file = root / "stopped"
        wait_until(stopped_file.exists, timeout=30, message="the stop command never ran")
        stopped = float(stopped_file.read_text().split()[0])
    finally:
        traffic.faulty = False
        traffic.run = ""
        daemon.close()
    return {
        "run": run,
        "spek_rollback_start": started - fault,
        "spek_stop_command": stopped - fault,
        "alertmanager_webhook": arrived - fault,
        "ratio": (started - fault) / (arrived - fault),
        "load1": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"nproc {os.cpu_count()}, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    print(
        f"window {WINDOW}, for {FOR}, scrape/evaluation/probe interval {INTERVAL}, "
        f"{RATE} req/s, fault = {ERROR_SHARE:.0%} errors",
        flush=True,
    )
    base = Path(tempfile.mkdtemp(prefix="spek-bench-detection-"))
    receiver = Receiver()
    alertmanager = AlertmanagerServer(receiver.url)
    exporter = Exporter()
    traffic = Traffic(exporter)
    prometheus: subprocess.Popen[bytes] | None = None
    rows: list[dict[str, Any]] = []
    try:
        alertmanager.start()
        prometheus, prom_url = start_prometheus(
            base, f"127.0.0.1:{exporter.port}", f"127.0.0.1:{alertmanager.port}"
        )
        for index in range(1, args.runs + 1):
            row = one_run(index, traffic, receiver, prom_url, base)
            rows.append(row)
            print(
                f"run {index}: fault -> spek-sentinel rollback start "
                f"{row['spek_rollback_start']:.2f}s (stop command {row['spek_stop_command']:.2f}s)"
                f" | fault -> Alertmanager webhook {row['alertmanager_webhook']:.2f}s | ratio "
                f"{row['ratio']:.2f}",
                flush=True,
            )
    finally:
        traffic.stopped.set()
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        alertmanager.close()
        exporter.close()
        receiver.close()
        shutil.rmtree(base, ignore_errors=True)
    if rows:
        ratios = [r["ratio"] for r in rows]
        print(
            "\nmedian spek-sentinel "
            f"{statistics.median(r['spek_rollback_start'] for r in rows):.2f}s, "
            "median Alertmanager webhook "
            f"{statistics.median(r['alertmanager_webhook'] for r in rows):.2f}s, ratio median "
            f"{statistics.median(ratios):.2f} (max {max(ratios):.2f}); spek-sentinel at or below "
            f"the peer in every run: {'yes' if max(ratios) <= 1.0 else 'NO'}"
        )
        out = ROOT / "bench" / "results" / f"detection-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        out.write_text(json.dumps({"argv": sys.argv, "results": rows}, indent=1) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
