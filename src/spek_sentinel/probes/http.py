"""The ``http`` probe: GET (or HEAD) the application and judge the answer.

Each run makes one request on a fresh connection (no keep-alive, so a restarted app never shows
up as a stale-connection error) and reads:

* ``status`` — the HTTP status code; ``latency`` — seconds for the whole request;
* ``up`` — 1 for a healthy answer (the expected status, and the body substring / JSON field if
  configured); 0 when the app answers badly or not at all, but only once it has been unhealthy
  for ``start_grace`` since the first failure: until then no data, so a restart in progress is
  not yet "won't start";
* ``error_ratio`` and ``latency_p95`` over the probe's own last ``window`` requests, for apps
  without Prometheus; the volume is the number of requests (latencies) behind the figure.

The app failing and the probe being blind are kept apart. A refused connection, a timeout, and
anything that goes wrong once connected (a reset, an answer that is not HTTP, an unhealthy
answer) is the app failing its users: up 0 (after the grace), counted in error_ratio, and
``status`` / ``latency`` report an error for that run. A timed-out request enters the p95 at its
elapsed time, a lower bound of the real figure; an answer that never came (refused, garbage)
has no latency to add. A connection that cannot be set up for any other reason — a name that
does not resolve, an unreachable network, a TLS handshake that fails (wrong CA, wrong scheme) —
or an unexpected error leaves the probe unable to judge: ProbeError, every signal UNKNOWN,
nothing recorded in the window or the grace.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from spek_sentinel.config.probes import ExpectJson, HttpProbe
from spek_sentinel.domain.errors import ProbeError
from spek_sentinel.probes.base import Failed, Reading, redact
from spek_sentinel.probes.transport import ca_context, env_headers

BODY_LIMIT = 1 << 20  # bytes of the answer read for matching; health answers are small
SHOWN = 80  # characters of an unexpected value quoted in a problem


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: healthy or not, what was seen, and why it is not healthy."""

    healthy: bool
    status: int | None = None
    latency: float | None = None  # None when no answer came (refused, garbage)
    problem: str | None = None


class RollingWindow:
    """The probe's own last N requests: their error ratio and latency p95."""

    def __init__(self, size: int) -> None:
        self._outcomes: deque[Outcome] = deque(maxlen=size)

    def add(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)

    def error_ratio(self) -> Reading:
        total = len(self._outcomes)
        if total == 0:
            return Reading(None, 0)
        errors = sum(1 for o in self._outcomes if not o.healthy)
        return Reading(errors / total, total)

    def latency_p95(self) -> Reading:
        latencies = [o.latency for o in self._outcomes if o.latency is not None]
        return Reading(percentile(latencies, 0.95), len(latencies))


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile: a latency some request really had. None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


class StartGrace:
    """``up`` as the runbook means it: 0 only once unhealthy for ``grace`` seconds."""

    def __init__(self, grace: float, clock: Callable[[], float]) -> None:
        self._grace = grace
        self._clock = clock
        self._unhealthy_since: float | None = None

    def up(self, healthy: bool) -> float | None:
        if healthy:
            self._unhealthy_since = None
            return 1.0
        now = self._clock()
        if self._unhealthy_since is None:
            self._unhealthy_since = now
        return 0.0 if now - self._unhealthy_since >= self._grace else None


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)


def app_failure(exc: httpx.HTTPError) -> str | None:
    """Why the app failed this request, or None when the probe cannot tell (blind).

    Setting up the connection can fail because of the app only by a refusal or a timeout; any
    other failure there (name resolution, routing, TLS) leaves the probe's own setup in doubt.
    Once connected, whatever goes wrong is the app's answer.
    """
    chain = list(_exception_chain(exc))
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        refused = any(isinstance(e, ConnectionRefusedError) for e in chain)
        return "connection refused" if refused else None
    if any(isinstance(e, ConnectionResetError | ConnectionAbortedError) for e in chain):
        return "connection reset by the app"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return f"not a valid HTTP answer ({str(exc)[:SHOWN] or type(exc).__name__})"
    if isinstance(exc, httpx.DecodingError):
        return f"answer body cannot be decoded ({str(exc)[:SHOWN]})"
    return None


def _root_cause(exc: BaseException) -> str:
    """The innermost reason (the socket or TLS error), not the wrapper's generic message."""
    while (inner := exc.__cause__ or exc.__context__) is not None and inner is not exc:
        exc = inner
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def json_field(document: Any, path: str) -> Any:
    """The value at a dotted path; KeyError when it is missing."""
    for part in path.split("."):
        if isinstance(document, dict) and part in document:
            document = document[part]
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            raise KeyError(path)
    return document


def _same(value: Any, expected: bool | float | str) -> bool:
    # True == 1 in Python; a JSON true is not the number 1
    if isinstance(value, bool) or isinstance(expected, bool):
        return value is expected
    return bool(value == expected)


class HttpHealthProbe:
    """One ``[probes.NAME]`` of kind http: a client, a rolling window and the start grace."""

    def __init__(
        self,
        name: str,
        model: HttpProbe,
        interval: float,
        headers: Mapping[str, str],
        verify: ssl.SSLContext | bool,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._model = model
        self._interval = interval
        self._headers = dict(headers)
        self._verify = verify
        self._window = RollingWindow(model.window)
        self._grace = StartGrace(model.start_grace, clock)
        self._client: httpx.AsyncClient | None = None
        # finish (and record) a failing request before observe's own timeout cancels the run
        self._budget = model.timeout - min(1.0, model.timeout * 0.2)
        self._measures = {signal: spec.measure or "" for signal, spec in model.signals.items()}
        self.last_problem: str | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def timeout(self) -> float:
        return self._model.timeout

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(self._measures)

    async def collect(self) -> Mapping[str, Reading | Failed | float | None]:
        outcome = await self._request()
        self.last_problem = outcome.problem
        self._window.add(outcome)
        up = self._grace.up(outcome.healthy)
        failed = Failed(f"{redact(self._model.url)}: {outcome.problem}")
        values: dict[str, Reading | Failed | float | None] = {
            "up": up,
            "status": float(outcome.status) if outcome.status is not None else failed,
            "latency": outcome.latency if outcome.status is not None else failed,
            "error_ratio": self._window.error_ratio(),
            "latency_p95": self._window.latency_p95(),
        }
        return {signal: values[measure] for signal, measure in self._measures.items()}

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        # made on first use, inside the event loop that runs the probe
        if self._client is None:
            self._client = httpx.AsyncClient(
                headers={"User-Agent": "spek-sentinel", **self._headers},
                verify=self._verify,
                timeout=httpx.Timeout(self._budget),
                limits=httpx.Limits(max_keepalive_connections=0),
                follow_redirects=False,
                trust_env=False,  # judge the app itself, not a proxy named in the environment
            )
        return self._client

    async def _request(self) -> Outcome:
        model = self._model
        started = time.perf_counter()
        try:
            async with (
                asyncio.timeout(self._budget),
                self._http().stream(model.method, model.url) as response,
            ):
                body = await _read_capped(response)
        except (TimeoutError, httpx.TimeoutException):
            elapsed = time.perf_counter() - started
            return Outcome(False, latency=elapsed, problem=f"timed out after {elapsed:.3g}s")
        except httpx.HTTPError as exc:
            problem = app_failure(exc)
            if problem is None:
                reason = redact(_root_cause(exc), self._headers.values())
                raise ProbeError(f"{redact(model.url)}: cannot judge the app: {reason}") from None
            return Outcome(False, problem=problem)
        latency = time.perf_counter() - started
        problem = self._judge(response.status_code, body)
        return Outcome(problem is None, response.status_code, latency, problem)

    def _judge(self, status: int, body: bytes) -> str | None:
        model = self._model
        if status != model.expect_status:
            return f"HTTP {status}, expected {model.expect_status}"
        if model.expect_body is not None and model.expect_body.encode() not in body:
            return f"body does not contain {model.expect_body!r}"
        if model.expect_json is not None:
            return _judge_json(body, model.expect_json)
        return None


def _judge_json(body: bytes, expect: ExpectJson) -> str | None:
    try:
        value = json_field(json.loads(body), expect.path)
    except (ValueError, RecursionError):
        return "body is not JSON"
    except KeyError:
        return f"JSON has no field {expect.path!r}"
    if not _same(value, expect.equals):
        shown = json.dumps(value)[:SHOWN]
        return f"JSON {expect.path} is {shown}, expected {json.dumps(expect.equals)}"
    return None


async def _read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= BODY_LIMIT:
            break
    return bytes(body[:BODY_LIMIT])


def tls_verify(model: HttpProbe) -> ssl.SSLContext | bool:
    """What httpx checks the server certificate against; ValueError when the CA file is bad."""
    return False if model.tls_insecure_skip_verify else ca_context(model.tls_ca_file)


def build(
    name: str,
    model: HttpProbe,
    interval: float,
    environ: Mapping[str, str],
    *,
    clock: Callable[[], float] = time.monotonic,
) -> HttpHealthProbe:
    headers = env_headers(name, model.headers_env, environ)
    return HttpHealthProbe(name, model, interval, headers, tls_verify(model), clock=clock)
