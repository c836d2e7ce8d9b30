"""The PagerDuty pager against a real HTTP receiver speaking the Events API v2."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time

import pytest

from harness.http_receiver import HttpReceiver
from harness.ports import free_port
from harness.tcp_stub import TcpStub
from spek_sentinel.paging.base import Delivery, Notice, NoticeKind, Urgency
from spek_sentinel.paging.pagerduty import EVENTS_URL, PagerDutyPager, PagerDutySettings

ROUTING_KEY = "R0UT1NGK3Y0123456789abcdef012345"
ACCEPTED = json.dumps(
    {"status": "success", "message": "Event processed", "dedup_key": "inc-1"}
).encode()


def notice(kind: NoticeKind = NoticeKind.TRIGGER, **changes: object) -> Notice:
    fields: dict[str, object] = {
        "kind": kind,
        "dedup_key": "inc-1",
        "summary": "error rate 8.30% > 5% for 2m",
        "urgency": Urgency.CRITICAL,
        "at": 1_795_000_000.0,
        "rule": "high_error_rate",
        "value": "8.30%",
        "threshold": "> 5%",
        "playbook": "full_rollback",
        "incident": "inc-20261125-030500-1",
        "evidence": "error_ratio 0.083 at 03:05:00",
        "links": {"report": "https://sentinel.example/i/1"},
    }
    fields.update(changes)
    return Notice(**fields)  # type: ignore[arg-type]


def send(url: str, sent: Notice, timeout: float = 5.0, component: str | None = None) -> Delivery:
    async def main() -> Delivery:
        settings = PagerDutySettings(ROUTING_KEY, url=url, component=component, timeout=timeout)
        pager = PagerDutyPager("pd", settings)
        try:
            return await pager.notify(sent)
        finally:
            await pager.aclose()

    return asyncio.run(main())


@pytest.fixture
def pagerduty() -> HttpReceiver:
    receiver = HttpReceiver(status=202, reply=ACCEPTED)
    receiver.content_type = "application/json"
    return receiver


def test_default_endpoint_is_the_events_api_v2() -> None:
    assert EVENTS_URL == "https://events.pagerduty.com/v2/enqueue"
    assert PagerDutySettings(ROUTING_KEY).url == EVENTS_URL
    assert ROUTING_KEY not in repr(PagerDutySettings(ROUTING_KEY))


def test_trigger_sends_the_documented_event(pagerduty: HttpReceiver) -> None:
    with pagerduty:
        delivery = send(f"{pagerduty.url}/v2/enqueue", notice(), component="spek-app")
    assert delivery == Delivery("pd", ok=True, retryable=False, status=202, detail="delivered")
    [request] = pagerduty.received
    assert (request.method, request.path) == ("POST", "/v2/enqueue")
    assert request.headers["content-type"] == "application/json"
    event = request.json()
    assert set(event) == {"routing_key", "event_action", "dedup_key", "payload", "links"}
    assert (event["routing_key"], event["event_action"], event["dedup_key"]) == (
        ROUTING_KEY, "trigger", "inc-1",
    )  # fmt: skip
    payload = event["payload"]
    assert set(payload) == {
        "summary", "source", "severity", "timestamp", "component", "custom_details",
    }  # fmt: skip
    assert payload["summary"] == "error rate 8.30% > 5% for 2m"
    assert payload["source"] == "spek-sentinel"
    assert payload["severity"] == "critical"
    assert payload["component"] == "spek-app"
    assert dt.datetime.fromisoformat(payload["timestamp"]).timestamp() == 1_795_000_000.0
    assert payload["custom_details"] == {
        "rule": "high_error_rate",
        "value": "8.30%",
        "threshold": "> 5%",
        "playbook": "full_rollback",
        "incident": "inc-20261125-030500-1",
        "evidence": "error_ratio 0.083 at 03:05:00",
    }
    assert event["links"] == [{"href": "https://sentinel.example/i/1", "text": "report"}]


@pytest.mark.parametrize(
    ("urgency", "severity"),
    [(Urgency.CRITICAL, "critical"), (Urgency.WARNING, "warning"), (Urgency.INFO, "info")],
)
def test_severity_follows_urgency(pagerduty: HttpReceiver, urgency: Urgency, severity: str) -> None:
    with pagerduty:
        send(pagerduty.url, notice(urgency=urgency))
    payload = pagerduty.received[0].json()["payload"]
    assert payload["severity"] == severity
    assert payload["severity"] in {"critical", "error", "warning", "info"}


def test_long_summary_is_cut_to_1024_and_empty_details_are_left_out(
    pagerduty: HttpReceiver,
) -> None:
    with pagerduty:
        send(pagerduty.url, notice(summary="x" * 5000, rule=None, evidence="", links={}))
    event = pagerduty.received[0].json()
    assert len(event["payload"]["summary"]) == 1024
    assert "component" not in event["payload"]
    assert "rule" not in event["payload"]["custom_details"]
    assert "evidence" not in event["payload"]["custom_details"]
    assert event["links"] == []


@pytest.mark.parametrize("kind", [NoticeKind.ACKNOWLEDGE, NoticeKind.RESOLVE])
def test_acknowledge_and_resolve_name_the_alert_by_dedup_key(
    pagerduty: HttpReceiver, kind: NoticeKind
) -> None:
    with pagerduty:
        delivery = send(f"{pagerduty.url}/v2/enqueue", notice(kind))
    assert (delivery.ok, delivery.status) == (True, 202)
    assert pagerduty.received[0].json() == {
        "routing_key": ROUTING_KEY, "event_action": kind.value, "dedup_key": "inc-1",
    }  # fmt: skip


def test_info_is_not_sent(pagerduty: HttpReceiver) -> None:
    with pagerduty:
        delivery = send(pagerduty.url, notice(NoticeKind.INFO, urgency=Urgency.INFO))
    assert delivery == Delivery(
        "pd", ok=True, retryable=False, status=None, detail="not sent: informational"
    )
    assert pagerduty.received == []


INVALID = b'{"status":"invalid event","message":"Event object is invalid","errors":["bad key"]}'


@pytest.mark.parametrize(
    ("status", "reply", "retryable"),
    [
        (400, INVALID, False),
        (429, b'{"status":"throttle event","message":"Requests are throttled"}', True),
        (500, b"", True),
        (502, b"bad gateway", True),
        (503, b"", True),
    ],
)  # fmt: skip
def test_error_answers(status: int, reply: bytes, retryable: bool) -> None:
    with HttpReceiver(status=status, reply=reply) as receiver:
        delivery = send(receiver.url, notice())
    assert (delivery.ok, delivery.retryable, delivery.status) == (False, retryable, status)
    assert delivery.detail.startswith(f"HTTP {status}")
    if status == 400:
        assert "Event object is invalid" in delivery.detail


def test_an_answer_echoing_the_routing_key_does_not_leak_it() -> None:
    reply = f'{{"status":"invalid event","errors":["unknown routing_key {ROUTING_KEY}"]}}'
    with HttpReceiver(status=400, reply=reply.encode()) as receiver:
        delivery = send(receiver.url, notice())
    assert ROUTING_KEY not in delivery.detail
    assert "unknown routing_key ***" in delivery.detail


def test_refused_connection_is_retryable() -> None:
    delivery = send(f"http://127.0.0.1:{free_port()}/v2/enqueue", notice())
    assert (delivery.ok, delivery.retryable, delivery.status) == (False, True, None)
    assert "ConnectError" in delivery.detail
    assert ROUTING_KEY not in delivery.detail


def test_silent_endpoint_is_retryable_within_the_timeout() -> None:
    with TcpStub() as silent:
        started = time.monotonic()
        delivery = send(f"http://127.0.0.1:{silent.port}/v2/enqueue", notice(), timeout=0.5)
        elapsed = time.monotonic() - started
    assert (delivery.ok, delivery.retryable, delivery.status) == (False, True, None)
    assert delivery.detail == "no answer within 0.5s"
    assert elapsed < 3
