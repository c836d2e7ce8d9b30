"""Backtesting from Prometheus history: the prometheus probes' signals over a past window.

Every signal of every ``kind = "prometheus"`` probe is fetched with range queries
(GET /api/v1/query_range) on a grid of ``start + k * step``; a step where the series has no point
(or NaN, Inf) becomes a no-data sample, so gaps in history replay as blindness, as they would
have been live. A query that fails is an InputError: a replay must not silently lose a signal.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from spek_sentinel.config import Config
from spek_sentinel.config.probes import PrometheusProbe
from spek_sentinel.domain.errors import ConfigError, InputError, ProbeError
from spek_sentinel.domain.samples import Sample
from spek_sentinel.probes import promql_http
from spek_sentinel.probes.base import redact
from spek_sentinel.replay.series import Event

MAX_POINTS = 11_000  # Prometheus refuses a range query with more points per series
CHUNK_POINTS = 10_000
MAX_SAMPLES = 1_000_000  # keeps a replay's memory bounded; a larger step covers a longer window
CONCURRENT_REQUESTS = 4
SERVER_SHARE = 0.9  # Prometheus gives up first, so its own reason is reported

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Grid:
    start_ms: int
    step_ms: int
    points: int

    def chunks(self) -> list[tuple[int, int]]:
        """(first, last) timestamps in ms of each range query, at most CHUNK_POINTS each."""
        spans = []
        for first_index in range(0, self.points, CHUNK_POINTS):
            last_index = min(self.points, first_index + CHUNK_POINTS) - 1
            spans.append(
                (
                    self.start_ms + first_index * self.step_ms,
                    self.start_ms + last_index * self.step_ms,
                )
            )
        return spans


def _grid(start: float, end: float, step: float) -> _Grid:
    # Whole milliseconds, as Prometheus evaluates, so its timestamps match the grid exactly;
    # the slack keeps a time given in whole ms (float error) on its own millisecond.
    start_ms, end_ms = math.ceil(start * 1000 - 0.01), math.floor(end * 1000 + 0.01)
    step_ms = round(step * 1000)
    if step_ms < 1:
        raise InputError(f"step {step:g}s is below Prometheus' resolution of 1ms")
    return _Grid(start_ms, step_ms, (end_ms - start_ms) // step_ms + 1)


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.3f}"


def fetched_signals(config: Config) -> frozenset[str]:
    """The signals fetch_series returns history for. Rules on other signals would only see
    silence in such a replay (and page "sentinel blind"), so a caller replays these alone."""
    return frozenset(
        signal
        for model in config.model.probes.values()
        if isinstance(model, PrometheusProbe)
        for signal in model.signals
    )


async def fetch_series(  # noqa: PLR0917 -- the CLI's call: window, step, url, environ
    config: Config,
    start: float,
    end: float,
    step: float | None,
    url: str | None,
    environ: Mapping[str, str],
    *,
    timeout: float = 60.0,
) -> list[Event]:
    """Samples of every prometheus probe's signals over [start, end], ordered by time.

    ``step`` defaults to each probe's interval; ``url`` replaces the probes' url (their token
    and TLS settings still apply). Raises InputError naming the probe and signal when a query
    fails, returns several series, or the window needs more than MAX_SAMPLES samples.
    """
    if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
        raise InputError(f"the window must have end after start (start {start:g}, end {end:g})")
    if step is not None and not (math.isfinite(step) and step > 0):
        raise InputError(f"step must be a positive number of seconds, not {step:g}")
    if url is not None:
        _check_url(url)
    probes = {
        name: model
        for name, model in config.model.probes.items()
        if isinstance(model, PrometheusProbe)
    }
    if not probes:
        raise InputError(f'{config.path}: no probe with kind = "prometheus" to fetch history for')
    grids = {
        name: _grid(start, end, step or model.interval or config.model.defaults.interval)
        for name, model in probes.items()
    }
    total = sum(grids[name].points * len(model.signals) for name, model in probes.items())
    if total > MAX_SAMPLES:
        raise InputError(
            f"the window needs {total:,} samples, more than the {MAX_SAMPLES:,} a replay holds; "
            "use a larger step or a shorter window"
        )
    options = _Options(url, environ, timeout, asyncio.Semaphore(CONCURRENT_REQUESTS))
    per_probe = await _together(
        _fetch_probe(name, model, grids[name], options) for name, model in probes.items()
    )
    samples = [sample for batch in per_probe for sample in batch]
    samples.sort(key=lambda sample: sample.at)  # stable: signals keep the config's order
    events: list[Event] = list(samples)
    return events


async def _together(jobs: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``jobs`` at once; the first InputError cancels the rest and is raised as it is."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(job) for job in jobs]
    except ExceptionGroup as failed:
        refused = failed.subgroup(InputError)
        if refused is None:
            raise
        first: BaseException = refused
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


def _check_url(url: str) -> None:
    scheme, sep, rest = url.partition("://")
    authority = rest.split("/", 1)[0]
    if "@" in authority:  # not echoed: it holds a password
        raise InputError(
            "the Prometheus URL must not carry credentials; the probes' bearer_token_env or "
            "bearer_token_file is used"
        )
    if not sep or scheme.lower() not in ("http", "https") or not authority.strip(":"):
        raise InputError(f"Prometheus URL {url!r}: expected http://host:port or https://host:port")


async def _fetch_probe(
    name: str,
    model: PrometheusProbe,
    grid: _Grid,
    options: _Options,
) -> list[Sample]:
    try:
        token_source = promql_http.BearerToken.of(name, model, options.environ)
        verify = promql_http.tls_verify(model)
        client = promql_http.make_client(options.url or model.url, verify, options.timeout)
    except (ConfigError, ValueError) as exc:
        raise InputError(f"probes.{name}: {exc}") from None
    async with client:
        try:
            token = await token_source.value() if token_source is not None else None
        except ProbeError as exc:
            raise InputError(f"probes.{name}: {exc}") from None
        fetcher = _Fetcher(client, grid, token, options)
        series = await _together(
            fetcher.signal(name, signal, spec.query or "", spec.split_by)
            for signal, spec in model.signals.items()
        )
    return [sample for samples in series for sample in samples]


@dataclass(frozen=True, slots=True)
class _Options:
    url: str | None
    environ: Mapping[str, str]
    timeout: float
    limit: asyncio.Semaphore


@dataclass(frozen=True, slots=True)
class _Fetcher:
    client: httpx.AsyncClient
    grid: _Grid
    token: str | None
    options: _Options

    async def signal(
        self, probe: str, signal: str, query: str, split_by: str | None = None
    ) -> list[Sample]:
        points: dict[int, float | None] = {}
        per_series: dict[str, dict[int, float | None]] = {}
        for first, last in self.grid.chunks():
            params = {
                "query": query,
                "start": _seconds(first),
                "end": _seconds(last),
                "step": _seconds(self.grid.step_ms),
                "timeout": promql_http.prom_duration(self.options.timeout * SERVER_SHARE),
            }
            try:
                async with self.options.limit:
                    data = await promql_http.get_data(
                        self.client, "/api/v1/query_range", params, self.token
                    )
                if split_by is None:
                    points.update(promql_http.range_points(data))
                else:
                    for key, series in promql_http.range_split(data, split_by).items():
                        per_series.setdefault(key, {}).update(series)
            except ProbeError as exc:
                reason = redact(str(exc), [self.token] if self.token else [])
                raise InputError(f"probes.{probe}, signal {signal}: {reason}") from None
        grid = self.grid
        steps = range(grid.start_ms, grid.start_ms + grid.points * grid.step_ms, grid.step_ms)
        if split_by is None:
            return [Sample(signal, at_ms / 1000, value=points.get(at_ms)) for at_ms in steps]
        if not per_series:
            return [Sample(signal, at_ms / 1000, value=None) for at_ms in steps]
        # a series replays only where it has points: before and after, it did not exist
        return [
            Sample(signal, at_ms / 1000, value=series[at_ms], series=key)
            for at_ms in steps
            for key, series in sorted(per_series.items())
            if at_ms in series
        ]
