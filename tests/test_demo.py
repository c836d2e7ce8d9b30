"""`spek-sentinel demo` as a user runs it, in a subprocess with the real PostgreSQL and Redis
binaries: the breach is decided with its evidence, the rollback runs each phase, the verify
passes, the incident report is printed, and nothing the demo started outlives it (no process,
no open port, no temporary directory), also when it is interrupted with Ctrl-C mid-rollback."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from spek_sentinel.service.demo_servers import DemoUnavailableError, find_binaries

SPEK_SENTINEL = Path(sys.executable).with_name("spek-sentinel")
DEMO_TIMEOUT = 170.0  # catches a hang; the demo takes about 35 s here
STEPS = (
    "document the incident",
    "pre-flight",
    "emergency backup and verify",
    "stop traffic",
    "application rollback",
    "restart",
    "verify",
)


@dataclass
class DemoRun:
    code: int
    output: str
    seconds: float
    descendants: set[tuple[int, float]] = field(default_factory=set)  # (pid, create_time)


@pytest.fixture
def tmpdir_for_demo() -> Iterator[Path]:
    """The demo's TMPDIR: under /tmp, and traversable by the `postgres` user that owns the
    throwaway cluster when the tests run as root (pytest's own tmp_path is not)."""
    path = Path(tempfile.mkdtemp(prefix="spek-demo-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_demo(tmpdir: Path, interrupt_on: str | None = None) -> DemoRun:
    """Run the demo to the end, or send SIGINT once a line contains ``interrupt_on``. Every
    process the demo has below it is noted while it runs."""
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(SPEK_SENTINEL), "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    seen: set[tuple[int, float]] = set()
    stop = threading.Event()

    def note_descendants() -> None:
        while not stop.is_set():
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    seen.add((child.pid, child.create_time()))
            except psutil.Error:
                pass
            stop.wait(0.1)

    watcher = threading.Thread(target=note_descendants, daemon=True)
    watcher.start()
    killer = threading.Timer(DEMO_TIMEOUT, proc.kill)
    killer.start()
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if interrupt_on is not None and interrupt_on in line:
                proc.send_signal(signal.SIGINT)
                interrupt_on = None
        code = proc.wait()
    finally:
        killer.cancel()
        stop.set()
        watcher.join()
    return DemoRun(code, "".join(lines), time.monotonic() - started, seen)


def alive(pid: int, created: float) -> bool:
    """Whether the process noted as (pid, created) still runs (not a later one with its pid)."""
    try:
        process = psutil.Process(pid)
        return (
            abs(process.create_time() - created) < 0.05 and process.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.NoSuchProcess:
        return False


def assert_nothing_left(run: DemoRun, tmpdir: Path) -> None:
    output = run.output
    # every process the demo had below it is gone (the app and redis-server are its children;
    # the PostgreSQL server, started through pg_ctl, is found by its data directory)
    left = [pid for pid, created in run.descendants if alive(pid, created)]
    assert left == [], [psutil.Process(pid).cmdline() for pid in left]
    for process in psutil.process_iter(["cmdline"]):
        assert str(tmpdir) not in " ".join(process.info["cmdline"] or []), process
    # the ports it used are closed
    ports = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", output)}
    assert ports, output
    for port in ports:
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
    # and its temporary directories are removed
    assert list(tmpdir.iterdir()) == [], output
    assert re.search(r"removed \S+spek-demo-\S+ and \S+spek-demo-pg-\S+", output), output


def test_the_demo_rolls_back_a_bad_deploy_and_leaves_nothing_behind(
    tmpdir_for_demo: Path,
) -> None:
    run = run_demo(tmpdir_for_demo)
    output = run.output
    assert run.code == 0, output

    # set up, deployed and watched
    assert "PostgreSQL) 15" in output or "(PostgreSQL)" in output
    assert re.search(r"started v1\.0\.0 as pid \d+", output), output
    assert "v1.0.0 healthy for 5s: known good" in output
    assert "pre-deployment backup verified" in output
    assert re.search(r"started v2\.0\.0-errors as pid \d+", output), output

    # the breach decision, with its evidence
    decision = re.search(
        r"DECISION ROLL BACK: high_error_rate pending->firing \(immediate\)\n"
        r".*playbook: high_error_rate\s+incident: (inc-\S+)\n"
        r".*why: .*\n"
        r".*evidence: error_rate ([0-9.]+) vs threshold > 0\.05; held \d+s",
        output,
    )
    assert decision is not None, output
    incident, rate = decision.group(1), float(decision.group(2))
    assert rate > 0.05

    # the rollback, each phase with its timing, then the verification
    assert f"plan for {incident}: back to v1.0.0" in output
    for number, step in enumerate(STEPS, start=1):
        assert re.search(rf"{number}/7 {re.escape(step)}\s+done in \d+(ms|s)", output), step
    assert re.search(r"stop traffic\s+done in .*stopped v2\.0\.0-errors", output), output
    for check in ("app_up is up", "db_up is up", "redis_up is up", "Error rate should be <1%"):
        assert re.search(rf"ok  {re.escape(check)}", output), check
    assert "rollback finished: downtime" in output
    assert re.search(r"v1\.0\.0 runs again as pid \d+: /healthz 200, version v1\.0\.0", output)
    assert re.search(r"(\d+) of the \1 tasks written before the bad deploy are intact", output)
    assert "DECISION RESOLVE: high_error_rate firing->resolved; incident closed" in output

    # the incident report (Markdown) and the downtime
    assert f"# Incident {incident}" in output
    assert "- Status: **succeeded**" in output
    assert "## Timeline" in output
    for step in STEPS:
        assert f"| {step} | succeeded |" in output
    assert re.search(r"downtime\s+\d+(ms|\.\ds) from stopping v2\.0\.0-errors", output)

    assert "the demo took" in output
    assert run.seconds < 120, f"the demo took {run.seconds:.0f}s"
    assert_nothing_left(run, tmpdir_for_demo)


def test_ctrl_c_mid_rollback_stops_and_removes_everything(tmpdir_for_demo: Path) -> None:
    run = run_demo(tmpdir_for_demo, interrupt_on="rollback run started")
    output = run.output
    assert run.code == 130, output
    assert "interrupted: stopping what the demo started" in output
    assert "a rollback is running: it stops after its current step" in output
    assert "demo interrupted; everything it started is stopped and removed" in output
    assert "redis-server on port" in output and "PostgreSQL on port" in output
    assert_nothing_left(run, tmpdir_for_demo)


def test_missing_servers_say_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no initdb, no redis-server
    with pytest.raises(DemoUnavailableError) as caught:
        find_binaries(pg_root=tmp_path)
    assert "apt-get install postgresql redis-server" in str(caught.value)

    # without redis-server on PATH the command itself exits 69 and says what to install
    result = subprocess.run(
        [str(SPEK_SENTINEL), "demo"],
        env={**os.environ, "PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 69, result.stdout + result.stderr
    assert "apt-get install redis-server" in result.stdout
    assert "./dev demo" in result.stdout
