"""The docker probe against a real Docker engine, and against fake engines that misbehave."""

import asyncio
import itertools
import json
import shutil
import socketserver
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest

from harness.docker_engine import (
    DOCKER_HOST,
    Containers,
)
from harness.wait import wait_until
from spek_sentinel.config.probes import DockerProbe
from spek_sentinel.domain.rules import Rule, RuleState, Severity, Trend
from spek_sentinel.domain.samples import Sample
from spek_sentinel.engine.engine import Engine
from spek_sentinel.probes.base import observe
from spek_sentinel.probes.docker import DockerContainerProbe, build, memory_in_use

UNITS = {
    "up": "bool",
    "running": "bool",
    "healthy": "bool",
    "restart_count": "count",
    "exit_code": "count",
    "memory_bytes": "bytes",
    "oom_killed": "bool",
}
ALL = tuple(UNITS)
NS = 1_000_000_000  # docker healthcheck durations are nanoseconds


def _model(container: str, measures: tuple[str, ...], **options: str) -> DockerProbe:
    return DockerProbe.model_validate(
        {
            "kind": "docker",
            "container": container,
            "docker_host": DOCKER_HOST,
            **options,
            "signals": {m: {"unit": UNITS[m], "measure": m} for m in measures},
        }
    )


@pytest.fixture
def new_probe() -> Iterator[Callable[..., DockerContainerProbe]]:
    """Builds docker probes from config sections; closes them after the test."""
    made: list[DockerContainerProbe] = []

    def make(container: str, *measures: str, **options: str) -> DockerContainerProbe:
        probe = build("app_container", _model(container, measures or ALL, **options), 1.0, {})
        made.append(probe)
        return probe

    yield make
    for probe in made:
        asyncio.run(probe.aclose())


def collect(probe: DockerContainerProbe) -> dict[str, Sample]:
    return {sample.signal: sample for sample in asyncio.run(observe(probe))}


def values(probe: DockerContainerProbe) -> dict[str, float | None]:
    samples = collect(probe)
    errors = {s.signal: s.error for s in samples.values() if s.error is not None}
    assert not errors, errors
    return {signal: sample.value for signal, sample in samples.items()}


# --- a real engine ---


def test_running_container_is_up_with_no_restarts_and_memory_in_use(
    containers: Containers, new_probe: Callable[..., DockerContainerProbe]
) -> None:
    container = containers.run(["sleep", "600"])
    seen = values(new_probe(container.name))
    assert seen["up"] == 1.0
    assert seen["running"] == 1.0
    assert seen["restart_count"] == 0.0
    assert seen["oom_killed"] == 0.0
    assert seen["memory_bytes"] is not None and seen["memory_bytes"] > 0
    assert seen["healthy"] is None  # no healthcheck: nothing to report
    assert seen["exit_code"] is None  # still running: no exit code yet


def test_container_that_exits_is_down_with_its_exit_code(
    containers: Containers, new_probe: Callable[..., DockerContainerProbe]
) -> None:
    container = containers.run(["sh", "-c", "exit 3"])
    probe = new_probe(container.name)
    seen = wait_until(
        lambda: (v := values(probe))["running"] == 0.0 and v,
        timeout=20,
        message="container did not exit",
    )
    assert seen["up"] == 0.0
    assert seen["exit_code"] == 3.0
    assert seen["memory_bytes"] is None  # a stopped container has no memory: no data


def test_crash_looping_container_counts_restarts_and_is_down_while_restarting(
    containers: Containers, new_probe: Callable[..., DockerContainerProbe]
) -> None:
    container = containers.run(["sh", "-c", "exit 1"], restart_policy={"Name": "always"})
    probe = new_probe(container.name, "up", "running", "restart_count", "exit_code")
    # Docker waits 100 ms, 200 ms, 400 ms ... between restarts: the container is "restarting"
    # most of the time, and running only for the moment its command needs to fail.
    seen = wait_until(
        lambda: (v := values(probe))["restart_count"] >= 2 and v["up"] == 0.0 and v,
        timeout=20,
        message="restart count did not rise with the container down",
    )
    assert seen["running"] == 0.0
    assert seen["exit_code"] == 1.0


def test_growing_memory_is_measured_and_fires_the_trend_rule(
    containers: Containers, new_probe: Callable[..., DockerContainerProbe]
) -> None:
    # 1 MiB more in the container's tmpfs every 0.25 s: memory the cgroup cannot reclaim
    grow = (
        "i=0; while [ $i -lt 100 ]; do "
        "dd if=/dev/zero of=/dev/shm/f$i bs=1048576 count=1 2>/dev/null; "
        "i=$((i+1)); sleep 0.25; done; sleep 600"
    )
    container = containers.run(["sh", "-c", grow], shm_size="256m")
    probe = new_probe(container.name, "memory_bytes")
    leak = Rule(
        name="memory_leak",
        signal="memory_bytes",
        severity=Severity.EVALUATE,
        condition=Trend(window=4.0, min_growth=0.2, min_rising=0.7, min_samples=4),
        max_gap=2.5,
        probe="app_container",
    )
    engine = Engine([leak])
    seen: list[float] = []

    def leak_fires() -> bool:
        sample = collect(probe)["memory_bytes"]
        assert sample.usable, sample
        assert sample.value is not None
        seen.append(sample.value)
        return any(v.state is RuleState.FIRING for v in engine.observe(sample))

    wait_until(leak_fires, timeout=30, interval=0.2, message="memory_leak did not fire")
    assert len(seen) >= 4
    assert seen[-1] > seen[0] * 1.2
    assert sum(b > a for a, b in itertools.pairwise(seen)) >= 0.7 * (len(seen) - 1)


def test_oom_killed_container_reports_oom_killed(
    containers: Containers, new_probe: Callable[..., DockerContainerProbe]
) -> None:
    # a string that doubles until the 16 MiB limit stops it
    container = containers.run(
        ["sh", "-c", "s=x; while true; do s=$s$s; done"], mem_limit="16m", memswap_limit="16m"
    )
    probe = new_probe(container.name, "up", "oom_killed", "exit_code")
    seen = wait_until(
        lambda: (v := values(probe))["oom_killed"] == 1.0 and v,
        timeout=20,
        message="container was not OOM-killed",
    )
    assert seen["up"] == 0.0
    assert seen["exit_code"] == 137.0  # SIGKILL


def test_paused_container_is_down(
    containers: Containers, new_probe: Callable[..., DockerContainerProbe]
) -> None:
    container = containers.run(["sleep", "600"])
    probe = new_probe(container.name, "up", "running")
    assert values(probe) == {"up": 1.0, "running": 1.0}
    container.pause()
    assert values(probe) == {"up": 0.0, "running": 0.0}


def test_passing_healthcheck_is_healthy_and_up(
    containers: Containers, new_probe: Callable[..., DockerContainerProbe]
) -> None:
    check = {"test": ["CMD", "true"], "interval": NS // 10, "timeout": NS, "retries": 1}
    container = containers.run(["sleep", "600"], healthcheck=check)
    probe = new_probe(container.name, "up", "healthy")
    seen = wait_until(
        lambda: (v := values(probe))["healthy"] == 1.0 and v,
        timeout=20,
        message="container did not become healthy",
    )
    assert seen["up"] == 1.0


def test_healthcheck_not_passed_yet_is_no_data_within_grace_and_down_after(
    containers: Containers, new_probe: Callable[..., DockerContainerProbe]
) -> None:
    # the first check runs only after the interval: the container stays "starting"
    check = {"test": ["CMD", "true"], "interval": 600 * NS, "timeout": NS, "retries": 1}
    container = containers.run(["sleep", "600"], healthcheck=check)
    within = values(new_probe(container.name, "up", "healthy", start_grace="60s"))
    assert within == {"up": None, "healthy": None}
    past = values(new_probe(container.name, "up", "healthy", start_grace="0s"))
    assert past == {"up": 0.0, "healthy": None}


def test_failing_healthcheck_is_unhealthy_and_down_after_the_grace(
    containers: Containers, new_probe: Callable[..., DockerContainerProbe]
) -> None:
    check = {"test": ["CMD", "false"], "interval": NS // 10, "timeout": NS, "retries": 1}
    container = containers.run(["sleep", "600"], healthcheck=check)
    patient = new_probe(container.name, "up", "healthy", start_grace="60s")
    seen = wait_until(
        lambda: (v := values(patient))["healthy"] == 0.0 and v,
        timeout=20,
        message="container did not become unhealthy",
    )
    assert seen["up"] is None  # unhealthy, but within a minute of its start: still starting

    short = new_probe(container.name, "up", "healthy", start_grace="1s")
    wait_until(lambda: values(short)["up"] == 0.0, timeout=20, message="up did not drop to 0")
    container.reload()
    started = datetime.fromisoformat(container.attrs["State"]["StartedAt"]).timestamp()
    assert time.time() - started >= 1.0


def test_missing_container_gives_error_samples_for_every_signal(
    containers: Containers, new_probe: Callable[..., DockerContainerProbe]
) -> None:
    name = containers.unused_name()
    samples = collect(new_probe(name))
    assert set(samples) == set(ALL)
    for sample in samples.values():
        assert sample.kind == "error"
        assert f"no such container {name}" in str(sample.error)


@pytest.mark.parametrize(
    ("memory_stats", "expected"),
    [
        ({"usage": 100, "stats": {"total_inactive_file": 30, "inactive_file": 5}}, 70.0),  # v1
        ({"usage": 100, "stats": {"inactive_file": 30, "anon": 70}}, 70.0),  # cgroup v2
        ({"usage": 100, "stats": {"inactive_file": 300}}, 100.0),  # nonsense cache: usage
        ({"usage": 100}, 100.0),
        ({}, None),  # a stopped container
        ({"usage": "lots"}, None),
    ],
)
def test_memory_is_usage_minus_inactive_file_as_docker_stats_shows(
    memory_stats: dict[str, Any], expected: float | None
) -> None:
    assert memory_in_use({"memory_stats": memory_stats}) == expected


# --- engines that cannot be reached or do not make sense ---


def test_unreachable_engine_gives_error_samples_within_the_timeout(
    new_probe: Callable[..., DockerContainerProbe],
) -> None:
    missing = "unix:///tmp/spek-sentinel-no-such-dir/docker.sock"
    probe = new_probe("spek-app", docker_host=missing, timeout="5s")
    started = time.monotonic()
    samples = collect(probe)
    assert time.monotonic() - started < 5
    assert set(samples) == set(ALL)
    for sample in samples.values():
        assert sample.kind == "error"
        assert f"docker engine at {missing}" in str(sample.error)


class _FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class FakeEngineServer:
    """A unix socket that answers like a broken Docker engine: ``answer(request_line)``
    returns the raw reply, or None to stay silent until the server closes."""

    def __init__(self, answer: Callable[[str], bytes | None]) -> None:
        self.stop = threading.Event()
        self._dir = Path(tempfile.mkdtemp(prefix="spek-fake-docker-"))
        self.host = f"unix://{self._dir / 'docker.sock'}"
        stop = self.stop

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request_line = self.rfile.readline().decode(errors="replace")
                reply = answer(request_line)
                if reply is None:
                    stop.wait(30)
                    return
                self.wfile.write(reply)

        self._server = _FakeEngine(str(self._dir / "docker.sock"), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def fake_engine() -> Iterator[Callable[[Callable[[str], bytes | None]], FakeEngineServer]]:
    started: list[FakeEngineServer] = []

    def start(answer: Callable[[str], bytes | None]) -> FakeEngineServer:
        server = FakeEngineServer(answer)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def _json_reply(body: Any) -> bytes:
    data = json.dumps(body).encode()
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


def test_silent_engine_times_out_as_error_samples(
    fake_engine: Callable[[Callable[[str], bytes | None]], FakeEngineServer],
    new_probe: Callable[..., DockerContainerProbe],
) -> None:
    server = fake_engine(lambda _request: None)
    probe = new_probe("spek-app", docker_host=server.host, timeout="1s")
    started = time.monotonic()
    samples = list(asyncio.run(observe(probe)))
    assert time.monotonic() - started < 5  # observe's timeout, plus the abandoned request
    assert {s.signal for s in samples} == set(ALL)
    assert all(s.kind == "error" and "timed out after 1s" in str(s.error) for s in samples)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (lambda _request: b"\x00\xffSSH-2.0-surprise\r\n\r\n", "BadStatusLine"),
        (
            lambda _request: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            "Expecting value",
        ),
        (
            lambda request: _json_reply(
                {"ApiVersion": "1.41"} if "/version" in request else {"Surprise": True}
            ),
            "docker inspect spek-app: unexpected answer: no container State",
        ),
    ],
    ids=["not http", "not json", "json of another shape"],
)
def test_garbage_from_the_engine_gives_error_samples(
    answer: Callable[[str], bytes | None],
    expected: str,
    fake_engine: Callable[[Callable[[str], bytes | None]], FakeEngineServer],
    new_probe: Callable[..., DockerContainerProbe],
) -> None:
    server = fake_engine(answer)
    samples = collect(new_probe("spek-app", docker_host=server.host, timeout="5s"))
    assert set(samples) == set(ALL)
    for sample in samples.values():
        assert sample.kind == "error"
        assert expected in str(sample.error)


# --- config ---


@pytest.mark.parametrize(
    ("key", "value"),
    [("container", "spek app"), ("container", ""), ("docker_host", "/var/run/docker.sock")],
)
def test_config_refuses_a_bad_container_name_or_engine_address(key: str, value: str) -> None:
    section: dict[str, Any] = {
        "kind": "docker",
        "container": "spek-app",
        "signals": {"app_up": {"unit": "bool", "measure": "up"}},
        key: value,
    }
    with pytest.raises(pydantic.ValidationError, match=key):
        DockerProbe.model_validate(section)
