"""The signed JSON webhook against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from harness.http_receiver import HttpReceiver
from harness.ports import free_port
from harness.tcp_stub import TcpStub
from spek_sentinel.paging.base import Delivery, Notice, NoticeKind, Urgency
from spek_sentinel.paging.webhook import WebhookPager, WebhookSettings, verify_signature

SECRET = "hmac-secret-9f8e7d6c5b4a"  # noqa: S105 - a test key
SENT_AT = 1_795_000_000


def notice(kind: NoticeKind = NoticeKind.TRIGGER, **changes: object) -> Notice:
    fields: dict[str, object] = {
        "kind": kind,
        "dedup_key": "inc-20261125-030500-1",
        "summary": "error rate 8.30% > 5% for 2m",
        "urgency": Urgency.CRITICAL,
        "at": 1_794_999_990.25,
        "rule": "high_error_rate",
        "value": "8.30%",
        "threshold": "> 5%",
        "playbook": "full_rollback",
        "incident": "inc-20261125-030500-1",
        "evidence": "error_ratio 0.083 at 03:05:00",
        "links": {"report": "https://sentinel.example/incidents/1"},
    }
    fields.update(changes)
    return Notice(**fields)  # type: ignore[arg-type]


def send(url: str, sent: Notice, timeout: float = 5.0) -> Delivery:
    async def main() -> Delivery:
        pager = WebhookPager("hook", WebhookSettings(url, SECRET, timeout), clock=lambda: SENT_AT)
        try:
            return await pager.notify(sent)
        finally:
            await pager.aclose()

    return asyncio.run(main())


def test_posts_every_documented_field_signed() -> None:
    with HttpReceiver(status=204, reply=b"") as receiver:
        delivery = send(f"{receiver.url}/hooks/spek", notice())
    assert delivery == Delivery("hook", ok=True, retryable=False, status=204, detail="delivered")
    [request] = receiver.received
    assert (request.method, request.path) == ("POST", "/hooks/spek")
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "version": 1,
        "kind": "trigger",
        "dedup_key": "inc-20261125-030500-1",
        "summary": "error rate 8.30% > 5% for 2m",
        "urgency": "critical",
        "at": "2026-11-18T11:06:30.250Z",
        "rule": "high_error_rate",
        "value": "8.30%",
        "threshold": "> 5%",
        "playbook": "full_rollback",
        "incident": "inc-20261125-030500-1",
        "evidence": "error_ratio 0.083 at 03:05:00",
        "links": {"report": "https://sentinel.example/incidents/1"},
        "source": "spek-sentinel",
    }
    at = dt.datetime.fromisoformat(request.json()["at"])
    assert at.timestamp() == 1_794_999_990.25
    assert request.headers["x-spek-timestamp"] == str(SENT_AT)
    assert request.headers["x-spek-signature"].startswith("sha256=")
    assert verify_signature(
        SECRET, request.headers["x-spek-timestamp"], request.body,
        request.headers["x-spek-signature"], now=SENT_AT + 10,
    )  # fmt: skip


def test_other_kinds_and_empty_fields_are_sent_as_such() -> None:
    with HttpReceiver() as receiver:
        send(receiver.url, notice(NoticeKind.RESOLVE, rule=None, value=None, links={}))
        send(receiver.url, notice(NoticeKind.INFO, urgency=Urgency.INFO))
    resolved, info = (request.json() for request in receiver.received)
    assert (resolved["kind"], resolved["rule"], resolved["value"], resolved["links"]) == (
        "resolve", None, None, {},
    )  # fmt: skip
    assert (info["kind"], info["urgency"]) == ("info", "info")


def test_signature_rejects_tampering_other_secrets_and_stale_timestamps() -> None:
    with HttpReceiver() as receiver:
        send(receiver.url, notice())
    [request] = receiver.received
    stamp, signature, body = (
        request.headers["x-spek-timestamp"], request.headers["x-spek-signature"], request.body,
    )  # fmt: skip
    assert verify_signature(SECRET, stamp, body, signature, now=SENT_AT)
    assert verify_signature(SECRET, stamp, body, signature, now=SENT_AT - 300)  # sender ahead
    tampered = body.replace(b"8.30%", b"0.30%")
    assert tampered != body
    assert not verify_signature(SECRET, stamp, tampered, signature, now=SENT_AT)
    assert not verify_signature("another-secret", stamp, body, signature, now=SENT_AT)
    # replayed later, or with its timestamp moved forward (which breaks the signature)
    assert not verify_signature(SECRET, stamp, body, signature, now=SENT_AT + 301)
    assert not verify_signature(SECRET, stamp, body, signature, now=SENT_AT + 60, tolerance=30)
    assert not verify_signature(SECRET, str(SENT_AT + 600), body, signature, now=SENT_AT + 600)
    for bad_stamp in ("", "abc", "-5", "1.5e9", f"{SENT_AT}.0"):
        assert not verify_signature(SECRET, bad_stamp, body, signature, now=SENT_AT)
    for bad_signature in ("", "sha256=", signature.upper(), signature.removeprefix("sha256=")):
        assert not verify_signature(SECRET, stamp, body, bad_signature, now=SENT_AT)


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (429, True), (400, False), (404, False)]
)
def test_error_answers_are_reported_with_their_retryability(status: int, retryable: bool) -> None:
    with HttpReceiver() as receiver:
        # a receiver that echoes what it was sent must not leak the secret into the detail
        receiver.answer(status, f"rejected: bad signature for key {SECRET}".encode())
        delivery = send(receiver.url, notice())
    assert (delivery.ok, delivery.retryable, delivery.status) == (False, retryable, status)
    assert delivery.detail.startswith(f"HTTP {status}: rejected")
    assert SECRET not in delivery.detail


def test_refused_connection_is_retryable() -> None:
    delivery = send(f"http://127.0.0.1:{free_port()}/hook", notice())
    assert (delivery.ok, delivery.retryable, delivery.status) == (False, True, None)
    assert "ConnectError" in delivery.detail
    assert SECRET not in delivery.detail


def test_silent_receiver_is_retryable_within_the_timeout() -> None:
    with TcpStub() as silent:
        started = time.monotonic()
        delivery = send(f"http://127.0.0.1:{silent.port}/hook", notice(), timeout=0.5)
        elapsed = time.monotonic() - started
    assert (delivery.ok, delivery.retryable, delivery.status) == (False, True, None)
    assert delivery.detail == "no answer within 0.5s"
    assert elapsed < 3


def test_secret_stays_out_of_repr_and_url_credentials_out_of_details() -> None:
    settings = WebhookSettings("http://127.0.0.1/hook", SECRET)
    assert SECRET not in repr(settings)
    url = f"http://user:url-password-123@127.0.0.1:{free_port()}/hook"
    delivery = send(url, notice())
    assert "url-password-123" not in delivery.detail
    assert delivery.retryable
