"""The Prometheus HTTP API as the prometheus probe and Prometheus replay use it.

One client per probe (bearer token, TLS), GETs that turn every failure into a ProbeError with a
plain reason, and the two answer shapes read into numbers: an instant query's single value and a
range query's points. A reason never carries the token.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from spek_sentinel.config.probes import PrometheusProbe
from spek_sentinel.domain.errors import ProbeError
from spek_sentinel.probes.base import redact
from spek_sentinel.probes.transport import ca_context
from spek_sentinel.secrets import read_secret

SNIPPET = 160  # characters of a non-Prometheus answer quoted in an error
SHOWN_SERIES = 3


class BearerToken:
    """The token a ``[probes.*]`` section names: an environment variable (read once), or a
    file (read again on every use, so a rotated token is picked up)."""

    def __init__(self, probe: str, model: PrometheusProbe, environ: Mapping[str, str]) -> None:
        # ConfigError now (variable not set, file unreadable), so start-up and validate say so
        secret = read_secret(
            f"probes.{probe}",
            environ,
            field="bearer_token",
            env=model.bearer_token_env,
            file=model.bearer_token_file,
        )
        self._value = secret.value
        self._file = Path(model.bearer_token_file) if model.bearer_token_file else None

    @classmethod
    def of(
        cls, probe: str, model: PrometheusProbe, environ: Mapping[str, str]
    ) -> BearerToken | None:
        if model.bearer_token_env is None and model.bearer_token_file is None:
            return None
        return cls(probe, model, environ)

    async def value(self) -> str:
        if self._file is not None:
            self._value = await asyncio.to_thread(self._read, self._file)
        return self._value

    @staticmethod
    def _read(file: Path) -> str:
        try:
            token = file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else "not UTF-8 text"
            raise ProbeError(f"bearer_token_file {file}: cannot read: {reason}") from None
        if not token:
            raise ProbeError(f"bearer_token_file {file}: the file is empty")
        return token


def tls_verify(model: PrometheusProbe) -> ssl.SSLContext | bool:
    """What httpx checks the server certificate against; ValueError when the CA file is bad."""
    if model.tls_insecure_skip_verify:
        return False
    return True if model.tls_ca_file is None else ca_context(model.tls_ca_file)


def make_client(url: str, verify: ssl.SSLContext | bool, timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url.rstrip("/"),
        verify=verify,
        timeout=httpx.Timeout(timeout),
        headers={"Accept": "application/json"},
        follow_redirects=False,
    )


def prom_duration(seconds: float) -> str:
    """A duration Prometheus parses (it takes no fractions: '1500ms', not '1.5s')."""
    return f"{max(1, round(seconds * 1000))}ms"


async def get_data(
    client: httpx.AsyncClient, path: str, params: Mapping[str, str], token: str | None
) -> Any:
    """GET an API path; the ``data`` of a success answer, else ProbeError saying why."""
    where = f"{redact(str(client.base_url))}{path}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = await client.get(path, params=params, headers=headers)
    except httpx.TimeoutException:
        timeout = client.timeout.read or 0.0
        raise ProbeError(f"{where}: no answer within {timeout:g}s (timed out)") from None
    except httpx.ConnectError as exc:
        raise ProbeError(f"cannot connect to {where}: {_connect_reason(exc)}") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ProbeError(f"request to {where} failed: {_reason(exc)}") from None
    return _decode(response, where, token)


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def _connect_reason(exc: Exception) -> str:
    """'Connection refused' rather than httpx's 'All connection attempts failed'."""
    cause: BaseException | None = exc
    for _ in range(8):  # the chain is short; never follow a cycle
        if cause is None:
            break
        if isinstance(cause, ConnectionError) and cause.errno:
            return os.strerror(cause.errno)
        if isinstance(cause, socket.gaierror) and cause.strerror:
            return f"cannot resolve the host: {cause.strerror}"
        cause = cause.__cause__ or cause.__context__
    return _reason(exc)


def _shape(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r} in the data"
    return f"{type(exc).__name__}: {exc}"


def _snippet(text: str, token: str | None) -> str:
    flat = " ".join(text.split())
    flat = flat if len(flat) <= SNIPPET else flat[: SNIPPET - 3] + "..."
    return redact(flat, [token] if token else []) or "(empty body)"


def _decode(response: httpx.Response, where: str, token: str | None) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("status") == "error":
        kind = body.get("errorType") or "error"
        message = redact(str(body.get("error") or "no reason given"), [token] if token else [])
        raise ProbeError(f"prometheus refused the query ({kind}): {message}")
    status = response.status_code
    if not response.is_success:
        hint = " (check the bearer token)" if status in (401, 403) else ""
        raise ProbeError(
            f"HTTP {status} {response.reason_phrase}{hint} from {where}: "
            f"{_snippet(response.text, token)}"
        )
    if not isinstance(body, dict) or body.get("status") != "success" or "data" not in body:
        kind = response.headers.get("content-type", "no content type")
        raise ProbeError(
            f"{where} did not answer like the Prometheus API (HTTP {status}, {kind}): "
            f"{_snippet(response.text, token)}"
        )
    return body["data"]


def _number(raw: Any) -> float | None:
    """A sample value as Prometheus writes it ("0.25", "NaN", "+Inf"); NaN and Inf are no data."""
    if not isinstance(raw, str):
        raise TypeError(f"sample value {raw!r} is not a string")
    value = float(raw)
    return value if math.isfinite(value) else None


def _labels(series: Any) -> str:
    metric = series.get("metric", {}) if isinstance(series, dict) else {}
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(metric.items()))
    return "{" + inner + "}"


def _too_many(result: list[Any]) -> ProbeError:
    shown = ", ".join(_labels(series) for series in result[:SHOWN_SERIES])
    more = ", ..." if len(result) > SHOWN_SERIES else ""
    return ProbeError(
        f"query returned {len(result)} series ({shown}{more}), expected one; "
        "aggregate it to a single series, e.g. sum(...) or max(...), or set split_by to a "
        "label to judge each series"
    )


def instant_value(data: Any) -> float | None:
    """A scalar or a one-series vector is the value; an empty vector, NaN or Inf is no data;
    several series or any other shape is a ProbeError."""
    try:
        kind, result = data["resultType"], data["result"]
        if kind == "scalar":
            return _number(result[1])
        if kind == "vector":
            if len(result) > 1:
                raise _too_many(result)
            return _number(result[0]["value"][1]) if result else None
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ProbeError(f"unexpected answer from the Prometheus API: {_shape(exc)}") from None
    if kind == "matrix":
        raise ProbeError(
            "query returned a range vector; a signal needs an instant value, "
            "e.g. rate(x[5m]) rather than x[5m]"
        )
    raise ProbeError(f"query returned a {kind}, not a number")


def _by_label(result: list[Any], label: str) -> dict[str, Any]:
    """Series keyed by one label's value; a series without it, or two sharing a value, is a
    ProbeError (they could not be told apart from one run to the next)."""
    keyed: dict[str, Any] = {}
    for series in result:
        value = series["metric"].get(label)
        if value is None:
            raise ProbeError(f"a series has no label {label!r} to split by: {_labels(series)}")
        if value in keyed:
            raise ProbeError(
                f"several series share {label}={value!r}; aggregate by ({label}) first"
            )
        keyed[value] = series
    return keyed


def instant_split(data: Any, label: str) -> dict[str, float | None]:
    """An instant vector as {label value: value}; NaN and Inf are no data for that series."""
    try:
        kind, result = data["resultType"], data["result"]
        if kind != "vector":
            raise ProbeError(f"query returned a {kind}; split_by needs an instant vector")
        return {key: _number(s["value"][1]) for key, s in _by_label(result, label).items()}
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ProbeError(f"unexpected answer from the Prometheus API: {_shape(exc)}") from None


def range_split(data: Any, label: str) -> dict[str, dict[int, float | None]]:
    """A range query's series as {label value: {timestamp in ms: value or None}}."""
    try:
        kind, result = data["resultType"], data["result"]
        if kind != "matrix":
            raise ProbeError(f"range query returned a {kind}, expected a matrix")
        return {
            key: {round(float(ts) * 1000): _number(raw) for ts, raw in series["values"]}
            for key, series in _by_label(result, label).items()
        }
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ProbeError(f"unexpected answer from the Prometheus API: {_shape(exc)}") from None


def range_points(data: Any) -> dict[int, float | None]:
    """A range query's single series as {timestamp in ms: value or None (NaN, Inf)}; no series
    is an empty dict; several series is a ProbeError."""
    try:
        kind, result = data["resultType"], data["result"]
        if kind != "matrix":
            raise ProbeError(f"range query returned a {kind}, expected a matrix")
        if len(result) > 1:
            raise _too_many(result)
        if not result:
            return {}
        return {round(float(ts) * 1000): _number(raw) for ts, raw in result[0]["values"]}
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ProbeError(f"unexpected answer from the Prometheus API: {_shape(exc)}") from None
