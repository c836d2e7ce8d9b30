"""One Docker container: whether it is up, its health, restarts, OOM kills and memory in use.

Measures (each a signal's ``measure``):

- ``up``: the runbook's "application won't start" seen from the engine. 1 when the container
  runs (not restarting, not paused) and has no healthcheck or a passing one; 0 when it exited,
  died, is restarting (a crash loop), is paused, or its healthcheck has not passed
  ``start_grace`` after its latest (re)start. Within ``start_grace``, a container whose
  healthcheck has not passed yet gives no data rather than 0: starting is not failing.
- ``running``: 1 while Docker's status is "running", else 0.
- ``healthy``: the healthcheck's verdict, 1 healthy or 0 unhealthy (0 when stopped); no data
  without a healthcheck or while it is still "starting".
- ``restart_count``: restarts by the restart policy (State.RestartCount).
- ``exit_code``: the last exit code once the container stopped or restarts; no data while it
  runs. ``oom_killed``: 1 when the kernel killed it for memory (State.OOMKilled), else 0.
- ``memory_bytes``: what ``docker stats`` shows, the cgroup's usage minus its inactive page
  cache, from one stats snapshot; no data when the container does not run.

A container that does not exist gives error samples (UNKNOWN), not ``up`` 0: the name in the
table is more likely wrong than the application gone, and a container that is recreated during
a deploy is missing for a moment. If it stays missing, the rule goes blind and the sentinel
pages "sentinel blind" instead of rolling back on a typo.

The docker SDK is synchronous: each collection runs in a worker thread, with the client's
request timeout a second past the probe's timeout, so an abandoned thread ends soon after.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import docker
import docker.errors
import docker.utils
import requests

from spek_sentinel.config.probes import DockerProbe
from spek_sentinel.domain.errors import ProbeError
from spek_sentinel.probes.base import Failed

DEFAULT_HOST = "unix:///var/run/docker.sock"
_ONE_SHOT_API = (1, 41)  # stats without the second sample the engine otherwise waits ~1 s for
_STATS_MEASURES = frozenset({"memory_bytes"})
# requests outlive the probe's timeout by this much, so the timeout reported is the probe's own
_REQUEST_MARGIN = 1.0


@dataclass(frozen=True, slots=True)
class ContainerState:
    """The parts of ``docker inspect``'s State that the measures read."""

    status: str  # created, running, paused, restarting, removing, exited, dead
    restarting: bool
    health: str | None  # starting, healthy, unhealthy; None without a healthcheck
    started_at: float | None  # unix seconds of the latest (re)start; None if never started
    restart_count: int
    oom_killed: bool
    exit_code: int

    @classmethod
    def from_inspect(cls, attrs: Mapping[str, Any]) -> ContainerState:
        state = attrs.get("State")
        if not isinstance(state, Mapping) or not isinstance(state.get("Status"), str):
            raise ValueError("no container State")
        health = state.get("Health")
        status = health.get("Status") if isinstance(health, Mapping) else None
        return cls(
            status=state["Status"],
            restarting=bool(state.get("Restarting")),
            health=status if status in ("starting", "healthy", "unhealthy") else None,
            started_at=_timestamp(state.get("StartedAt")),
            restart_count=int(attrs.get("RestartCount") or 0),
            oom_killed=bool(state.get("OOMKilled")),
            exit_code=int(state.get("ExitCode") or 0),
        )

    @property
    def running(self) -> bool:
        return self.status == "running" and not self.restarting

    def up(self, now: float, grace: float) -> float | None:
        if not self.running:
            return 0.0
        if self.health is None or self.health == "healthy":
            return 1.0
        if self.started_at is None or now - self.started_at < grace:
            return None  # healthcheck not passed yet, but (perhaps) still within the start grace
        return 0.0

    def healthy(self) -> float | None:
        if self.health is None:
            return None
        if not self.running:
            return 0.0  # the last health status of a stopped container is stale
        return {"healthy": 1.0, "unhealthy": 0.0}.get(self.health)

    def exit_code_reading(self) -> float | None:
        if self.running or self.status == "created":
            return None
        return float(self.exit_code)


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)  # nanoseconds are truncated to microseconds
    except ValueError:
        return None
    return None if parsed.year <= 1 else parsed.timestamp()  # 0001-01-01: never started


def memory_in_use(stats: object) -> float | None:
    """Usage minus inactive page cache, as ``docker stats`` computes it (cgroup v1 and v2)."""
    if not isinstance(stats, Mapping):
        return None
    memory = stats.get("memory_stats")
    if not isinstance(memory, Mapping):
        return None
    usage = memory.get("usage")
    if not isinstance(usage, int) or isinstance(usage, bool):
        return None
    detail = memory.get("stats")
    if isinstance(detail, Mapping):
        for key in ("total_inactive_file", "inactive_file"):  # cgroup v1, then v2
            inactive = detail.get(key)
            if isinstance(inactive, int) and 0 <= inactive < usage:
                return float(usage - inactive)
    return float(usage)


def _api_version(client: Any) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(client.api.api_version).split("."))
    except ValueError:
        return (0,)


class DockerContainerProbe:
    """Reads one container's state (``docker inspect``) and, when asked, its memory."""

    def __init__(
        self,
        *,
        name: str,
        interval: float,
        timeout: float,
        container: str,
        measures: Mapping[str, str],
        client_options: Mapping[str, Any],
        start_grace: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.interval = interval
        self.timeout = timeout
        self.container = container
        self.measures = dict(measures)
        self.start_grace = start_grace
        self.host = str(client_options.get("base_url") or DEFAULT_HOST)
        self._options = dict(client_options)
        self._clock = clock
        self._client: Any = None
        self._closed = False
        # one collection at a time: a thread left behind by a timeout finishes first
        self._lock = threading.Lock()

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(self.measures)

    async def collect(self) -> Mapping[str, float | Failed | None]:
        return await asyncio.to_thread(self._collect_locked)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            if self._client is not None:
                self._client.close()
                self._client = None

    def _collect_locked(self) -> dict[str, float | Failed | None]:
        if not self._lock.acquire(timeout=self.timeout):
            raise ProbeError("the previous collection is still waiting for the docker engine")
        try:
            if self._closed:
                raise ProbeError("probe is closed")
            return self._collect()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ProbeError(f"docker engine at {self.host}: {_reason(exc)}") from exc
        finally:
            self._lock.release()

    def _connect(self) -> Any:
        if self._client is None:
            # "auto" asks the engine for its API version, so old and new engines both work
            self._client = docker.DockerClient(
                **self._options, version="auto", timeout=self.timeout + _REQUEST_MARGIN
            )
        return self._client

    def _collect(self) -> dict[str, float | Failed | None]:
        client = self._connect()
        try:
            container = client.containers.get(self.container)
        except docker.errors.NotFound:
            raise ProbeError(f"no such container {self.container}") from None
        try:
            state = ContainerState.from_inspect(container.attrs)
        except (TypeError, ValueError) as exc:
            raise ProbeError(f"docker inspect {self.container}: unexpected answer: {exc}") from exc
        now = self._clock()
        readings: dict[str, float | Failed | None] = {}
        memory: float | Failed | None = None
        if _STATS_MEASURES & set(self.measures.values()) and state.running:
            memory = self._memory(client, container)
        for signal, measure in self.measures.items():
            if measure == "up":
                readings[signal] = state.up(now, self.start_grace)
            elif measure == "running":
                readings[signal] = 1.0 if state.running else 0.0
            elif measure == "healthy":
                readings[signal] = state.healthy()
            elif measure == "restart_count":
                readings[signal] = float(state.restart_count)
            elif measure == "exit_code":
                readings[signal] = state.exit_code_reading()
            elif measure == "oom_killed":
                readings[signal] = 1.0 if state.oom_killed else 0.0
            elif measure == "memory_bytes":
                readings[signal] = memory
        return readings

    def _memory(self, client: Any, container: Any) -> float | Failed | None:
        options = {"one_shot": True} if _api_version(client) >= _ONE_SHOT_API else {}
        try:
            used = memory_in_use(container.stats(stream=False, **options))
            # a container that stopped since the inspect has empty stats: no data, not garbage
            if used is None and not self._still_running(client, container.id):
                return None
        except docker.errors.NotFound:
            return None  # removed since the inspect
        if used is None:
            return Failed(f"docker stats for {self.container} carried no memory usage")
        return used

    @staticmethod
    def _still_running(client: Any, container_id: str) -> bool:
        return ContainerState.from_inspect(client.api.inspect_container(container_id)).running


def _reason(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return f"{exc.status_code} {exc.explanation or exc}"
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    return str(exc) or type(exc).__name__


def client_options(model: DockerProbe, environ: Mapping[str, str]) -> dict[str, Any]:
    """DockerClient arguments: the table's docker_host, else DOCKER_HOST; TLS from the env."""
    try:
        # kwargs_from_env reads os.environ when given an empty mapping: never pass one
        options: dict[str, Any] = (
            dict(docker.utils.kwargs_from_env(environment=dict(environ))) if environ else {}
        )
    except docker.errors.DockerException as exc:
        raise ValueError(f"docker TLS settings from DOCKER_CERT_PATH: {exc}") from exc
    if model.docker_host is not None:
        options["base_url"] = model.docker_host
    return options


def build(
    name: str, model: DockerProbe, interval: float, environ: Mapping[str, str]
) -> DockerContainerProbe:
    measures = {signal: spec.measure or "up" for signal, spec in model.signals.items()}
    return DockerContainerProbe(
        name=name,
        interval=interval,
        timeout=model.timeout,
        container=model.container.lstrip("/"),
        measures=measures,
        client_options=client_options(model, environ),
        start_grace=model.start_grace,
    )
