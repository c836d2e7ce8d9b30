"""The http probe against a real HTTP server (tests/harness/web_app.py) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from harness.web_app import Certificate, WebApp
from spek_sentinel.config.probes import HttpProbe
from spek_sentinel.domain.errors import ConfigError
from spek_sentinel.domain.samples import Sample
from spek_sentinel.probes.base import Probe, observe
from spek_sentinel.probes.http import HttpHealthProbe, app_failure, build, percentile
from spek_sentinel.probes.registry import factory_for

UNITS = {
    "up": "bool",
    "status": "count",
    "latency": "seconds",
    "error_ratio": "ratio",
    "latency_p95": "seconds",
}


class Clock:
    """A monotonic clock the test moves by hand (the start grace)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def model(**options: Any) -> HttpProbe:
    section = {
        "kind": "http",
        "timeout": "2s",
        "start_grace": "0s",
        "signals": {m: {"unit": unit, "measure": m} for m, unit in UNITS.items()},
    }
    return HttpProbe.model_validate({**section, **options})


def probe(url: str, clock: Clock | None = None, **options: Any) -> HttpHealthProbe:
    return build("app", model(url=url, **options), 15.0, {}, clock=clock or Clock())


async def run(probe: Probe) -> dict[str, Sample]:
    return {sample.signal: sample for sample in await observe(probe)}


def run_series(probe: Probe, steps: list[Any]) -> list[dict[str, Sample]]:
    """Collect once per step; a step is a callable run before its collection."""

    async def main() -> list[dict[str, Sample]]:
        try:
            results = []
            for step in steps:
                step()
                results.append(await run(probe))
            return results
        finally:
            await probe.aclose()

    return asyncio.run(main())


def once(probe: Probe) -> dict[str, Sample]:
    return run_series(probe, [lambda: None])[0]


def test_healthy_app_is_up_with_status_200_and_a_latency(web_app: WebApp) -> None:
    seen = once(probe(web_app.http_url))

    assert seen["up"].value == 1
    assert seen["status"].value == 200
    assert seen["latency"].value is not None and 0 < seen["latency"].value < 2
    assert (seen["error_ratio"].value, seen["error_ratio"].volume) == (0, 1)
    assert seen["latency_p95"].value == seen["latency"].value
    assert web_app.last_http_headers["User-Agent"] == "spek-sentinel"


def test_head_request_is_judged_by_its_status(web_app: WebApp) -> None:
    seen = once(probe(web_app.http_url, method="HEAD"))

    assert (seen["up"].value, seen["status"].value) == (1, 200)


def test_server_errors_read_no_data_during_the_grace_then_up_zero(web_app: WebApp) -> None:
    clock = Clock()
    web_app.http_mode = "error"

    def at(now: float) -> Any:
        return lambda: setattr(clock, "now", now)

    first, in_grace, after = run_series(
        probe(web_app.http_url, clock, start_grace="60s"), [at(1000), at(1059.9), at(1060)]
    )

    assert first["up"].kind == "no_data" and in_grace["up"].kind == "no_data"
    assert after["up"].value == 0
    assert [s["status"].value for s in (first, in_grace, after)] == [500, 500, 500]
    assert after["latency"].usable  # a 500 is an answer: its latency is real
    assert (after["error_ratio"].value, after["error_ratio"].volume) == (1, 3)


def test_a_healthy_answer_ends_the_grace_and_a_new_failure_starts_another(
    web_app: WebApp,
) -> None:
    clock = Clock()

    def step(mode: str, now: float) -> Any:
        return lambda: (setattr(web_app, "http_mode", mode), setattr(clock, "now", now))

    seen = run_series(
        probe(web_app.http_url, clock, start_grace="10s"),
        [step("error", 0), step("error", 10), step("healthy", 11), step("error", 12)],
    )

    assert [s["up"].value for s in seen] == [None, 0, 1, None]


def test_error_ratio_is_the_share_of_failing_requests_in_the_window(web_app: WebApp) -> None:
    def mode(name: str) -> Any:
        return lambda: setattr(web_app, "http_mode", name)

    seen = run_series(
        probe(web_app.http_url, window=4),
        [mode("healthy"), mode("healthy"), mode("error"), mode("error"), mode("error")],
    )

    ratios = [(s["error_ratio"].value, s["error_ratio"].volume) for s in seen]
    assert ratios == [(0, 1), (0, 2), (1 / 3, 3), (2 / 4, 4), (3 / 4, 4)]


def test_latency_p95_is_a_nearest_rank_over_the_window(web_app: WebApp) -> None:
    seen = run_series(probe(web_app.http_url, window=3), [lambda: None] * 5)

    latencies = [s["latency"].value for s in seen]
    last = seen[-1]["latency_p95"]
    assert last.volume == 3
    assert last.value == max(v for v in latencies[-3:] if v is not None)


def test_percentile_takes_the_nearest_rank() -> None:
    values = [float(v) for v in range(20, 0, -1)]

    assert percentile(values, 0.95) == 19.0
    assert percentile([0.3], 0.95) == 0.3
    assert percentile([], 0.95) is None


def test_body_without_the_expected_text_is_unhealthy(web_app: WebApp) -> None:
    web_app.http_mode = "degraded"

    seen = once(probe(web_app.http_url, expect_body='"status": "ok"'))

    assert (seen["up"].value, seen["status"].value) == (0, 200)
    assert seen["error_ratio"].value == 1


@pytest.mark.parametrize(
    ("mode", "expect_json", "up"),
    [
        ("healthy", {"path": "status", "equals": "ok"}, 1),
        ("healthy", {"path": "checks.0.db", "equals": "up"}, 1),
        ("degraded", {"path": "status", "equals": "ok"}, 0),
        ("healthy", {"path": "missing.field", "equals": "ok"}, 0),
        ("healthy", {"path": "status", "equals": True}, 0),
        ("error", {"path": "status", "equals": "ok"}, 0),
    ],
)
def test_json_field_must_equal_the_expected_value(
    web_app: WebApp, mode: str, expect_json: dict[str, Any], up: int
) -> None:
    web_app.http_mode = mode

    seen = once(probe(web_app.http_url, expect_json=expect_json))

    assert seen["up"].value == up


def test_refused_connection_reads_no_data_during_the_grace_then_up_zero(
    web_app: WebApp,
) -> None:
    clock = Clock()
    web_app.stop_http()
    http = probe(web_app.http_url, clock, start_grace="60s")

    def at(now: float) -> Any:
        return lambda: setattr(clock, "now", now)

    in_grace, after = run_series(http, [at(1000), at(1060)])

    assert in_grace["up"].kind == "no_data"
    assert after["up"].value == 0
    for seen in (in_grace, after):
        assert seen["status"].kind == "error" and seen["latency"].kind == "error"
        assert "connection refused" in (seen["status"].error or "")
        assert seen["latency_p95"].kind == "no_data"  # a refusal has no latency to rank
    assert (after["error_ratio"].value, after["error_ratio"].volume) == (1, 2)
    assert http.last_problem == "connection refused"


def test_app_that_comes_back_reads_up_again(web_app: WebApp) -> None:
    down, back = run_series(probe(web_app.http_url), [web_app.stop_http, web_app.start_http])

    assert (down["up"].value, back["up"].value) == (0, 1)
    assert (back["error_ratio"].value, back["error_ratio"].volume) == (0.5, 2)


@pytest.mark.parametrize("mode", ["slow", "hang"])
def test_answer_slower_than_the_timeout_is_a_failed_request(web_app: WebApp, mode: str) -> None:
    web_app.http_mode = mode
    web_app.delay = 5.0
    http = probe(web_app.http_url, timeout="0.5s")

    started = time.monotonic()
    seen = once(http)
    elapsed = time.monotonic() - started

    assert elapsed < 0.5  # the probe ends its request before observe's timeout
    assert seen["up"].value == 0
    assert seen["status"].kind == "error" and "timed out" in (seen["status"].error or "")
    assert seen["latency"].kind == "error"
    assert (seen["error_ratio"].value, seen["error_ratio"].volume) == (1, 1)
    # a timeout enters the p95 at its elapsed time: a lower bound, never a flattering figure
    p95 = seen["latency_p95"].value
    assert p95 is not None and 0.35 < p95 < 0.5


def test_garbage_answer_is_a_failed_request(web_app: WebApp) -> None:
    web_app.http_mode = "garbage"

    seen = once(probe(web_app.http_url))

    assert seen["up"].value == 0
    assert seen["status"].kind == "error"
    assert "not a valid HTTP answer" in (seen["status"].error or "")
    assert (seen["error_ratio"].value, seen["error_ratio"].volume) == (1, 1)
    assert seen["latency_p95"].kind == "no_data"


def test_https_with_the_configured_ca_file_is_judged(
    tls_web_app: WebApp, certificate: Certificate
) -> None:
    trusted = once(probe(tls_web_app.http_url, tls_ca_file=str(certificate.cert)))
    unverified = once(probe(tls_web_app.http_url, tls_insecure_skip_verify=True))

    assert tls_web_app.http_url.startswith("https://")
    assert (trusted["up"].value, trusted["status"].value) == (1, 200)
    assert unverified["up"].value == 1


@pytest.mark.parametrize("server", ["untrusted certificate", "plain HTTP server"])
def test_tls_failure_is_blind_and_not_counted(
    web_app: WebApp, tls_web_app: WebApp, server: str
) -> None:
    # a certificate the system store does not trust, or https:// to a server without TLS: the
    # probe cannot tell a broken app from its own wrong setup
    if server == "plain HTTP server":
        url = web_app.http_url.replace("http://", "https://")
    else:
        url = tls_web_app.http_url
    http = probe(url)

    blind, _ = run_series(http, [lambda: None, lambda: None])

    assert {s.kind for s in blind.values()} == {"error"}
    assert all("cannot judge the app" in (s.error or "") for s in blind.values())
    assert http.last_problem is None  # nothing was judged, nothing entered the window


def test_name_resolution_failure_is_not_the_app_failing() -> None:
    request = httpx.Request("GET", "http://app.invalid/")
    cause = socket.gaierror(-2, "Name or service not known")
    error = httpx.ConnectError("Name or service not known", request=request)
    error.__cause__ = cause

    assert app_failure(error) is None
    assert app_failure(httpx.ReadTimeout("slow", request=request)) == "timed out"


def test_headers_come_from_the_environment_and_stay_out_of_errors(web_app: WebApp) -> None:
    environ = {"APP_TOKEN": "Bearer s3cret-token"}
    section = model(url=web_app.http_url, headers_env={"Authorization": "APP_TOKEN"})
    healthy = factory_for("http")("app", section, 15.0, environ)
    assert once(healthy)["up"].value == 1
    assert web_app.last_http_headers["Authorization"] == "Bearer s3cret-token"

    with pytest.raises(ConfigError) as missing:
        factory_for("http")("app", section, 15.0, {})
    assert "probes.app.headers_env.Authorization" in str(missing.value)
    assert "APP_TOKEN" in str(missing.value)

    web_app.stop_http()
    down = once(factory_for("http")("app", section, 15.0, environ))
    assert all("s3cret" not in (s.error or "") for s in down.values())


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"url": "http://user:hunter2@127.0.0.1/"}, "credentials do not belong"),
        ({"url": "ftp://127.0.0.1/"}, "expected http://host:port/path"),
        ({"method": "HEAD", "expect_body": "ok"}, "HEAD has no body"),
        ({"tls_insecure_skip_verify": True}, "need a https:// url"),
        ({"headers_env": {"Authorization": "Bearer hunter2"}}, "name of an environment variable"),
        ({"expect_json": {"path": "status..ok", "equals": 1}}, "field names joined by '.'"),
        ({"window": 0}, "greater than or equal to 1"),
    ],
)
def test_config_mistakes_are_refused_at_validate(options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError) as refused:
        model(**{"url": "http://127.0.0.1:3000/", **options})

    # the loader shows each error's message (never the input): that is what must be clean
    messages = " | ".join(error["msg"] for error in refused.value.errors())
    assert complaint in messages
    assert "hunter2" not in messages
