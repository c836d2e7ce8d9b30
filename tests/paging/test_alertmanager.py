"""The Alertmanager pager against a real Alertmanager, and stubs for how posting can fail."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from harness.alertmanager_server import AlertmanagerStack, StatusServer
from harness.ports import free_port
from harness.tcp_stub import TcpStub
from harness.wait import wait_until
from spek_sentinel.paging.alertmanager import AlertmanagerPager, AlertmanagerSettings
from spek_sentinel.paging.base import Delivery, Notice, NoticeKind, Urgency

TOKEN = "am-s3cr3t-bearer-token-0123456789"  # noqa: S105 -- a test value, never a real secret


def notice(kind: NoticeKind = NoticeKind.TRIGGER, **overrides: Any) -> Notice:
    fields: dict[str, Any] = {
        "kind": kind,
        "dedup_key": f"inc-{uuid.uuid4().hex[:12]}",
        "summary": "high_error_rate firing: automatic rollback with playbook high_error_rate",
        "urgency": Urgency.CRITICAL,
        "at": time.time(),
        "rule": "high_error_rate",
        "value": "9.43%",
        "threshold": "> 5%",
        "playbook": "high_error_rate",
        "incident": "inc-20261125-030500-1",
        "evidence": "error_rate 0.0943 vs threshold > 0.05; held 5m",
        "links": {
            "report": "http://sentinel.example/incidents/inc-20261125-030500-1",
            "runbook": "http://wiki.example/SEED-rollback-procedure#high-error-rate",
        },
    }
    fields.update(overrides)
    return Notice(**fields)


def send(settings: AlertmanagerSettings, *notices: Notice) -> list[Delivery]:
    async def main() -> list[Delivery]:
        pager = AlertmanagerPager(settings)
        try:
            return [await pager.notify(n) for n in notices]
        finally:
            await pager.aclose()

    return asyncio.run(main())


def test_trigger_is_accepted_and_listed_with_our_labels_and_annotations(
    alertmanager: AlertmanagerStack,
) -> None:
    page = notice()
    [delivery] = send(AlertmanagerSettings(alertmanager.url), page)
    assert delivery == Delivery("alertmanager", True, False, 200, "accepted (200)")

    [alert] = wait_until(lambda: alertmanager.server.alerts(dedup_key=page.dedup_key))
    assert alert["labels"] == {
        "alertname": "high_error_rate",
        "severity": "critical",
        "incident": "inc-20261125-030500-1",
        "dedup_key": page.dedup_key,
        "source": "spek-sentinel",
    }
    assert alert["annotations"] == {
        "summary": page.summary,
        "description": page.evidence,
        "value": "9.43%",
        "threshold": "> 5%",
        "playbook": "high_error_rate",
        "report_url": page.links["report"],
        "runbook_url": page.links["runbook"],
    }
    assert alert["generatorURL"] == page.links["report"]
    assert alert["status"]["state"] == "active"


def test_alertmanager_routes_the_trigger_then_the_resolve_to_its_receiver(
    alertmanager: AlertmanagerStack,
) -> None:
    settings = AlertmanagerSettings(alertmanager.url, labels={"team": "platform"})
    page = notice(rule=None, urgency=Urgency.WARNING, incident=None, links={})
    [delivery] = send(settings, page)
    assert delivery.ok

    receiver = alertmanager.receiver
    firing = receiver.wait_for("firing", dedup_key=page.dedup_key)
    [alert] = firing["alerts"]
    assert alert["labels"] == {
        "alertname": "SpekSentinel",
        "severity": "warning",
        "dedup_key": page.dedup_key,
        "source": "spek-sentinel",
        "team": "platform",
    }
    assert alert["annotations"]["summary"] == page.summary
    assert alert["generatorURL"] == ""

    cleared = notice(
        NoticeKind.RESOLVE,
        dedup_key=page.dedup_key,
        rule=None,
        urgency=Urgency.WARNING,
        incident=None,
        links={},
        summary="high_error_rate resolved",
    )
    [delivery] = send(settings, cleared)
    assert delivery.ok
    resolved = receiver.wait_for("resolved", dedup_key=page.dedup_key)
    assert [a["status"] for a in resolved["alerts"]] == ["resolved"]
    assert resolved["alerts"][0]["labels"] == alert["labels"]
    assert alertmanager.server.alerts(dedup_key=page.dedup_key) == []


def test_acknowledge_and_info_are_not_sent() -> None:
    with StatusServer(500) as server:
        deliveries = send(
            AlertmanagerSettings(server.url),
            notice(NoticeKind.ACKNOWLEDGE),
            notice(NoticeKind.INFO, urgency=Urgency.INFO),
        )
        assert server.requests == []
    assert [(d.ok, d.retryable, d.status) for d in deliveries] == [(True, False, None)] * 2
    assert deliveries[0].detail == "not sent: Alertmanager has no acknowledgement"
    assert deliveries[1].detail.startswith("not sent:")


def test_server_error_is_retryable_and_the_token_is_sent_but_never_reported() -> None:
    with StatusServer(500, "internal error; you sent {auth}") as server:
        [delivery] = send(AlertmanagerSettings(server.url, token=TOKEN), notice())
        [request] = server.requests
    assert (request.method, request.path) == ("POST", "/api/v2/alerts")
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert (delivery.ok, delivery.retryable, delivery.status) == (False, True, 500)
    assert "internal error" in delivery.detail
    assert TOKEN not in delivery.detail


def test_too_many_requests_is_retryable() -> None:
    with StatusServer(429, "slow down") as server:
        [delivery] = send(AlertmanagerSettings(server.url), notice())
    assert (delivery.ok, delivery.retryable, delivery.status) == (False, True, 429)


def test_bad_request_is_not_retryable_and_the_token_is_not_reported() -> None:
    with StatusServer(400, "bad alert from {auth}") as server:
        [delivery] = send(AlertmanagerSettings(server.url, token=TOKEN), notice())
    assert (delivery.ok, delivery.retryable, delivery.status) == (False, False, 400)
    assert "bad alert" in delivery.detail
    assert TOKEN not in delivery.detail


def test_connection_refused_is_retryable() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    [delivery] = send(AlertmanagerSettings(url, token=TOKEN), notice())
    assert (delivery.ok, delivery.retryable, delivery.status) == (False, True, None)
    assert "/api/v2/alerts" in delivery.detail
    assert TOKEN not in delivery.detail


def test_a_server_that_never_answers_is_retryable_within_the_timeout() -> None:
    with TcpStub() as silent:
        started = time.monotonic()
        [delivery] = send(
            AlertmanagerSettings(f"http://127.0.0.1:{silent.port}", token=TOKEN, timeout=0.5),
            notice(),
        )
        elapsed = time.monotonic() - started
    assert (delivery.ok, delivery.retryable, delivery.status) == (False, True, None)
    assert delivery.detail == "no answer within 0.5s"
    assert elapsed < 5  # only catches a hang


def test_a_malformed_url_is_reported_not_raised() -> None:
    [delivery] = send(AlertmanagerSettings("not a url"), notice())
    assert (delivery.ok, delivery.retryable) == (False, False)
    assert delivery.detail
