"""The websocket probe against a real WebSocket server (the `websockets` library) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import ValidationError

from harness.web_app import Certificate, WebApp
from spek_sentinel.config.probes import WebSocketProbe
from spek_sentinel.domain.errors import ConfigError
from spek_sentinel.domain.samples import Sample
from spek_sentinel.probes.base import Probe, observe
from spek_sentinel.probes.registry import factory_for
from spek_sentinel.probes.websocket import build
from spek_sentinel.probes.ws_client import TEXT, accept_for, encode_frame

SIGNALS = {
    "ws_failures": {"unit": "ratio", "measure": "failure_ratio"},
    "ws_latency": {"unit": "seconds", "measure": "latency"},
}


def model(**options: Any) -> WebSocketProbe:
    return WebSocketProbe.model_validate(
        {"kind": "websocket", "timeout": "2s", "signals": SIGNALS, **options}
    )


def once(probe: Probe) -> dict[str, Sample]:
    async def main() -> dict[str, Sample]:
        try:
            return {sample.signal: sample for sample in await observe(probe)}
        finally:
            await probe.aclose()

    return asyncio.run(main())


def check(url: str, **options: Any) -> dict[str, Sample]:
    return once(build("live", model(url=url, **options), 15.0, {}))


def failures(seen: dict[str, Sample]) -> tuple[float | None, float | None]:
    return seen["ws_failures"].value, seen["ws_failures"].volume


def test_healthy_echo_has_no_failures(web_app: WebApp) -> None:
    seen = check(web_app.ws_url, echo=True, attempts=3)

    assert failures(seen) == (0, 3)
    latency = seen["ws_latency"]
    assert latency.value is not None and 0 < latency.value < 2
    assert latency.volume == 3
    assert web_app.ws_handshakes == 3


def test_handshake_alone_is_enough_without_echo(web_app: WebApp) -> None:
    web_app.ws_mode = "wrong_echo"  # would fail an echo; none is asked for

    seen = check(web_app.ws_url, attempts=2)

    assert failures(seen) == (0, 2)
    assert web_app.last_ws_headers["Sec-WebSocket-Version"] == "13"


def test_long_messages_use_extended_lengths_the_server_accepts(web_app: WebApp) -> None:
    for size in (126, 70_000):  # 16-bit and 64-bit payload lengths
        seen = check(web_app.ws_url, echo=True, attempts=1, echo_payload="x" * size)
        assert failures(seen) == (0, 1), size


def test_rejected_handshake_fails_every_attempt(web_app: WebApp) -> None:
    web_app.ws_mode = "reject"

    seen = check(web_app.ws_url, attempts=3)

    assert failures(seen) == (1, 3)
    assert seen["ws_latency"].kind == "error"
    assert "handshake answered HTTP 403" in (seen["ws_latency"].error or "")


def test_failure_ratio_is_the_share_of_failed_attempts(web_app: WebApp) -> None:
    web_app.ws_mode = "reject_odd"

    seen = check(web_app.ws_url, echo=True, attempts=4)

    assert failures(seen) == (0.5, 4)
    assert seen["ws_latency"].volume == 2  # the median of the two that succeeded


def test_wrong_echo_counts_as_a_failure(web_app: WebApp) -> None:
    web_app.ws_mode = "wrong_echo"

    seen = check(web_app.ws_url, echo=True, attempts=2)

    assert failures(seen) == (1, 2)
    assert "echo answered 'not spek-sentinel ping'" in (seen["ws_latency"].error or "")


def test_echo_reply_names_the_answer_the_app_gives(web_app: WebApp) -> None:
    web_app.ws_mode = "wrong_echo"  # answers "not <message>"

    seen = check(web_app.ws_url, echo=True, echo_payload="ping", echo_reply="not ping")

    assert failures(seen) == (0, 3)


def test_wrong_accept_key_counts_as_a_failure(web_app: WebApp) -> None:
    web_app.ws_mode = "bad_accept"

    seen = check(web_app.ws_url, attempts=2)

    assert failures(seen) == (1, 2)
    assert "wrong Sec-WebSocket-Accept" in (seen["ws_latency"].error or "")


def test_hanging_server_fails_every_attempt_within_the_timeout(web_app: WebApp) -> None:
    web_app.ws_mode = "hang"

    started = time.monotonic()
    seen = check(web_app.ws_url, attempts=3, timeout="0.5s")
    elapsed = time.monotonic() - started

    assert elapsed < 1.0
    assert failures(seen) == (1, 3)
    assert "timed out" in (seen["ws_latency"].error or "")


def test_refused_connection_fails_every_attempt(web_app: WebApp) -> None:
    web_app.stop_ws()

    seen = check(web_app.ws_url, attempts=3)

    assert failures(seen) == (1, 3)
    assert "connection refused" in (seen["ws_latency"].error or "")


@pytest.mark.parametrize(
    ("http_mode", "reason"), [("garbage", "not an HTTP answer"), ("healthy", "HTTP 200")]
)
def test_an_answer_that_is_not_a_websocket_handshake_is_a_failure(
    web_app: WebApp, http_mode: str, reason: str
) -> None:
    web_app.http_mode = http_mode
    plain_http = f"ws://127.0.0.1:{web_app.http_port}/health"

    seen = check(plain_http, attempts=2)

    assert failures(seen) == (1, 2)
    assert reason in (seen["ws_latency"].error or "")


def test_wss_with_the_configured_ca_file_echoes(
    tls_web_app: WebApp, certificate: Certificate
) -> None:
    seen = check(tls_web_app.ws_url, echo=True, tls_ca_file=str(certificate.cert))

    assert tls_web_app.ws_url.startswith("wss://")
    assert failures(seen) == (0, 3)


@pytest.mark.parametrize(
    "server", ["untrusted certificate", "plain HTTP server", "plain WebSocket server"]
)
def test_tls_failure_is_blind(web_app: WebApp, tls_web_app: WebApp, server: str) -> None:
    # the probe cannot tell a broken app from its own wrong setup (CA, scheme)
    url = {
        "untrusted certificate": tls_web_app.ws_url,
        "plain HTTP server": f"wss://127.0.0.1:{web_app.http_port}/",
        "plain WebSocket server": web_app.ws_url.replace("ws://", "wss://"),
    }[server]

    seen = check(url, attempts=2)

    assert {s.kind for s in seen.values()} == {"error"}
    assert all("cannot judge the app" in (s.error or "") for s in seen.values())


def test_headers_come_from_the_environment(web_app: WebApp) -> None:
    section = model(url=web_app.ws_url, attempts=1, headers_env={"Authorization": "WS_TOKEN"})

    seen = once(factory_for("websocket")("live", section, 15.0, {"WS_TOKEN": "Bearer abc"}))

    assert failures(seen) == (0, 1)
    assert web_app.last_ws_headers["Authorization"] == "Bearer abc"
    with pytest.raises(ConfigError, match=r"probes\.live\.headers_env\.Authorization"):
        factory_for("websocket")("live", section, 15.0, {})


def test_client_matches_the_rfc_6455_examples() -> None:
    # section 1.3: the accept key; section 5.7: a masked "Hello"
    assert accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    frame = encode_frame(TEXT, b"Hello", mask=bytes([0x37, 0xFA, 0x21, 0x3D]))
    assert frame == bytes.fromhex("8185 37fa213d 7f9f4d5158")


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"url": "http://127.0.0.1/"}, "expected ws://host:port/path or wss://host:port/path"),
        ({"url": "ws://u:hunter2@127.0.0.1/"}, "credentials do not belong"),
        ({"url": "ws://127.0.0.1/", "tls_ca_file": "/ca.pem"}, "need a wss:// url"),
        ({"url": "ws://127.0.0.1/", "attempts": 0}, "greater than or equal to 1"),
    ],
)
def test_config_mistakes_are_refused_at_validate(options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError) as refused:
        model(**options)

    messages = " | ".join(error["msg"] for error in refused.value.errors())
    assert complaint in messages
    assert "hunter2" not in messages
