"""``kind = "prometheus"``: every signal is a PromQL instant query (GET /api/v1/query).

All queries of a probe run at once over one client. A scalar or a one-series vector is the
value; an empty vector, NaN or Inf is no data; several series, a query Prometheus rejects, an
HTTP error or an answer that is not the Prometheus API is an error for that signal alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from spek_sentinel.config.probes import PrometheusProbe
from spek_sentinel.domain.errors import ProbeError
from spek_sentinel.probes import promql_http
from spek_sentinel.probes.base import Failed, Probe, Reading, Split, redact

# Each request gives up a little before observe() does, so a slow query is reported as that
# signal's own timeout while the other signals keep their values; Prometheus is asked to stop
# evaluating earlier still, so its own "query timed out" reason wins when it is the slow part.
CLIENT_SHARE = 0.9
SERVER_SHARE = 0.8


class PromqlProbe:
    def __init__(
        self, name: str, model: PrometheusProbe, interval: float, environ: Mapping[str, str]
    ) -> None:
        self._name = name
        self._interval = interval
        self._timeout = model.timeout
        self._queries = {signal: spec.query or "" for signal, spec in model.signals.items()}
        self._split_by = {
            signal: spec.split_by
            for signal, spec in model.signals.items()
            if spec.split_by is not None
        }
        self._volume_queries = {
            signal: spec.volume_query
            for signal, spec in model.signals.items()
            if spec.volume_query is not None
        }
        self._token = promql_http.BearerToken.of(name, model, environ)
        self._server_timeout = promql_http.prom_duration(model.timeout * SERVER_SHARE)
        self._client = promql_http.make_client(
            model.url, promql_http.tls_verify(model), model.timeout * CLIENT_SHARE
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(self._queries)

    async def collect(self) -> Mapping[str, Reading | Split | float | Failed | None]:
        token = await self._token.value() if self._token is not None else None
        signals = list(self._queries)
        values, volumes = await asyncio.gather(
            asyncio.gather(
                *(self._read(self._queries[s], token, self._split_by.get(s)) for s in signals)
            ),
            asyncio.gather(
                *(self._read(self._volume_queries[s], token) for s in self._volume_queries)
            ),
        )
        readings: dict[str, Reading | Split | float | Failed | None] = dict(
            zip(signals, values, strict=True)
        )
        for signal, volume in zip(self._volume_queries, volumes, strict=True):
            readings[signal] = _with_volume(readings[signal], volume)
        return readings

    async def _read(
        self, query: str, token: str | None, split_by: str | None = None
    ) -> float | Split | Failed | None:
        params = {"query": query, "timeout": self._server_timeout}
        try:
            data = await promql_http.get_data(self._client, "/api/v1/query", params, token)
            if split_by is not None:
                return Split(promql_http.instant_split(data, split_by))
            return promql_http.instant_value(data)
        except ProbeError as exc:
            return Failed(redact(str(exc), [token] if token else []))

    async def aclose(self) -> None:
        await self._client.aclose()


def _with_volume(
    value: Reading | Split | float | Failed | None, volume: float | Split | Failed | None
) -> Reading | Split | float | Failed | None:
    """Attach the traffic behind a ratio. A failed volume query fails the signal: the rule asked
    for a volume guard, and judging without it could roll back on 1 error in 3 requests."""
    if isinstance(value, Failed) or not isinstance(value, float):
        return value
    if isinstance(volume, Failed):
        return Failed(f"volume_query: {volume.error}")
    if isinstance(volume, Split):  # config refuses split_by with volume_query
        return value
    return Reading(value, volume)


def build(name: str, model: PrometheusProbe, interval: float, environ: Mapping[str, str]) -> Probe:
    return PromqlProbe(name, model, interval, environ)
