"""Downtime of an image rollback: spek-sentinel's stop-to-verified against the raw floor.

Run from the project root (a Docker engine must answer on /var/run/docker.sock; the tiny
busybox app images of tests/harness/app_images.py are built once if missing):

    .venv/bin/python bench/downtime.py              # 5 repeats
    .venv/bin/python bench/downtime.py --repeats 10

Each repeat, in alternating order, side by side in one process:

- floor: a container of ``spek-sentinel-test/app:v2`` (busybox httpd, ``--init`` so SIGTERM
  stops it at once, published on a free loopback port) is replaced by hand:
  ``docker stop NAME`` then ``docker run -d --init --name NAME-raw -p 127.0.0.1:PORT:8080
  app:v1``, then GET / every 10 ms until it answers 200 with ``v1``. Floor = from just before
  ``docker stop`` to that first healthy answer.
- spek-sentinel: the same v2 container, then ``python -m spek_sentinel.cli rollback -c TABLE
  --playbook high_error_rate --to app:v1 --yes`` with the docker application backend and one
  http probe (``app_up``) verifying. Its downtime is the executor's own figure, read from the
  state store: start of the "stop traffic" step to the end of a successful "verify"
  (``rollback_runs.downtime_ended_at - downtime_started_at``).

Both figures include the same docker stop of the same image; spek-sentinel's also recreates
the container from the old one's inspect data, keeps the old one renamed, and runs its
verification probe. Results go to bench/results/downtime-<stamp>.json.
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
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness.app_images import APP_PORT, ensure_app_image  # noqa: E402
from harness.docker_engine import TEST_LABEL, DockerEngine  # noqa: E402
from harness.ports import free_port  # noqa: E402

TABLE = """
[sentinel]
state_dir = "{root}/state"

[rollback]
backup_dir = "{root}/backups"
incidents_dir = "{root}/incidents"
step_timeout = "60s"

[rollback.application]
kind = "docker"
container = "{container}"

[probes.app]
kind = "http"
url = "http://127.0.0.1:{port}/"
start_grace = "0s"
timeout = "2s"
signals.app_up = {{ unit = "bool", measure = "up" }}

[playbooks.high_error_rate]
scenario = "Scenario 2: high error rate after deployment"
application = "previous_release"

[[rules]]
name = "app_wont_start"
signal = "app_up"
kind = "threshold"
severity = "immediate"
below = 1
playbook = "high_error_rate"
"""


def docker(*args: str) -> None:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip()}")


def served(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as answer:
            return str(answer.read().decode().strip()) if answer.status == 200 else None
    except OSError:
        return None


def wait_serving(port: int, version: str, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served(port) == version:
            return time.perf_counter()
        time.sleep(0.01)  # noqa: TID251 -- the 10 ms poll is the measurement's resolution
    raise RuntimeError(f"127.0.0.1:{port} never served {version}")


def start_v2(name: str, port: int, v2: str) -> None:
    docker(
        "run", "-d", "--init", "--name", name, "--label", f"{TEST_LABEL}=1",
        "-p", f"127.0.0.1:{port}:{APP_PORT}", v2,
    )  # fmt: skip
    wait_serving(port, "v2")


def remove(prefix: str) -> None:
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name={prefix}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if listed:
        subprocess.run(["docker", "rm", "-f", *listed], capture_output=True, check=False)


def floor_once(v1: str, v2: str) -> float:
    name, port = f"spek-bench-{uuid.uuid4().hex[:8]}", free_port()
    try:
        start_v2(name, port, v2)
        started = time.perf_counter()
        docker("stop", name)
        docker(
            "run", "-d", "--init", "--name", f"{name}-raw", "--label", f"{TEST_LABEL}=1",
            "-p", f"127.0.0.1:{port}:{APP_PORT}", v1,
        )  # fmt: skip
        return wait_serving(port, "v1") - started
    finally:
        remove(name)


def spek_once(v1: str, v2: str) -> dict[str, float]:
    name, port = f"spek-bench-{uuid.uuid4().hex[:8]}", free_port()
    root = Path(tempfile.mkdtemp(prefix="spek-bench-downtime-"))
    try:
        table = root / "thresholds.toml"
        table.write_text(TABLE.format(root=root, container=name, port=port), encoding="utf-8")
        start_v2(name, port, v2)
        command = [sys.executable, "-m", "spek_sentinel.cli", "rollback", "-c", str(table)]
        command += ["--playbook", "high_error_rate", "--to", v1, "--yes"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"rollback exited {done.returncode}: {done.stderr[-2000:]}")
        if served(port) != "v1":
            raise RuntimeError("after the rollback the app does not serve v1")
        with sqlite3.connect(root / "state" / "sentinel.sqlite3") as db:
            [(begin, end, run_start, run_end)] = db.execute(
                "SELECT downtime_started_at, downtime_ended_at, started_at, ended_at"
                " FROM rollback_runs"
            ).fetchall()
        return {"downtime": end - begin, "run": run_end - run_start, "command_wall": wall}
    finally:
        remove(name)
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"nproc {os.cpu_count()}, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    engine = DockerEngine()  # the running dockerd, else one started (and stopped) like the tests
    client = engine.start()
    try:
        v1, v2 = ensure_app_image(client, "v1"), ensure_app_image(client, "v2")
        rows = measure(args.repeats, v1, v2)
    finally:
        client.close()
        engine.close()
    differences = [r["difference"] for r in rows]
    print(
        f"\nmedian floor {statistics.median(r['floor'] for r in rows):.3f}s, median "
        f"spek-sentinel {statistics.median(r['downtime'] for r in rows):.3f}s, difference "
        f"median {statistics.median(differences):+.3f}s (max {max(differences):+.3f}s); aim: "
        f"within floor + 1 s in every run: {'yes' if max(differences) <= 1.0 else 'NO'}"
    )
    out = ROOT / "bench" / "results" / f"downtime-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"argv": sys.argv, "results": rows}, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


def measure(repeats: int, v1: str, v2: str) -> list[dict[str, Any]]:
    floor_once(v1, v2)  # warm-up, untimed: first container start on this engine is slower
    rows: list[dict[str, Any]] = []
    for repeat in range(repeats):
        order = ["floor", "spek"] if repeat % 2 == 0 else ["spek", "floor"]
        row: dict[str, Any] = {}
        for which in order:
            if which == "floor":
                row["floor"] = floor_once(v1, v2)
            else:
                row.update(spek_once(v1, v2))
        row["difference"] = row["downtime"] - row["floor"]
        row["load1"] = os.getloadavg()[0]
        rows.append(row)
        print(
            f"repeat {repeat + 1} ({' then '.join(order)}): floor {row['floor']:.3f}s | "
            f"spek-sentinel stop-to-verified {row['downtime']:.3f}s (whole run "
            f"{row['run']:.3f}s, command {row['command_wall']:.2f}s) | difference "
            f"{row['difference']:+.3f}s | ratio {row['downtime'] / row['floor']:.2f}",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
