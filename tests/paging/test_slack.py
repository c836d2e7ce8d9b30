"""The Slack pager against a real HTTP receiver standing in for an incoming webhook."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from harness.http_receiver import HttpReceiver
from harness.ports import free_port
from harness.tcp_stub import TcpStub
from spek_sentinel.paging.base import Delivery, Notice, NoticeKind, Urgency
from spek_sentinel.paging.slack import SlackPager, SlackSettings, message

HOOK_PATH = "/services/T0SPEK001/B0SPEK002/s3cr3tW3bh00kT0k3n"


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
        "links": {
            "report": "https://sentinel.example/i/1",
            "dashboard": "https://grafana.example/d",
        },
    }
    fields.update(changes)
    return Notice(**fields)  # type: ignore[arg-type]


def send(url: str, sent: Notice, timeout: float = 5.0) -> Delivery:
    async def main() -> Delivery:
        pager = SlackPager("slack", SlackSettings(url, timeout))
        try:
            return await pager.notify(sent)
        finally:
            await pager.aclose()

    return asyncio.run(main())


def texts(body: dict[str, Any]) -> str:
    """Every mrkdwn text of the blocks, in order (buttons are checked on their own)."""
    found = []
    for block in body["blocks"]:
        if block["type"] == "actions":
            continue
        if "text" in block:
            found.append(block["text"]["text"])
        found.extend(item["text"] for item in block.get("fields", []))
        found.extend(item["text"] for item in block.get("elements", []))
    return "\n".join(found)


def test_trigger_posts_text_and_blocks_to_the_webhook_path() -> None:
    with HttpReceiver(status=200, reply=b"ok") as receiver:
        delivery = send(receiver.url + HOOK_PATH, notice())
    assert delivery == Delivery("slack", ok=True, retryable=False, status=200, detail="delivered")
    [request] = receiver.received
    assert (request.method, request.path) == ("POST", HOOK_PATH)
    assert request.headers["content-type"] == "application/json"
    body = request.json()
    assert set(body) == {"text", "blocks"}
    assert body["text"] == ":rotating_light: CRITICAL: error rate 8.30% > 5% for 2m"
    assert [block["type"] for block in body["blocks"]][-1] == "actions"
    for block in body["blocks"][:-1]:  # only block kinds and text objects Slack accepts
        assert block["type"] in {"section", "context"}
        for item in [block.get("text"), *block.get("fields", []), *block.get("elements", [])]:
            assert item is None or (item["type"] == "mrkdwn" and isinstance(item["text"], str))
    shown = texts(body)
    assert "*:rotating_light: CRITICAL: error rate 8.30% &gt; 5% for 2m*" in shown
    assert "*Rule:* `high_error_rate`" in shown
    assert "*Value:* 8.30% (threshold &gt; 5%)" in shown
    assert "*Playbook:* `full_rollback`" in shown
    assert "*Incident:* `inc-20261125-030500-1`" in shown
    assert "```error_ratio 0.083 at 03:05:00```" in shown
    assert "<https://sentinel.example/i/1|report> · <https://grafana.example/d|dashboard>" in shown


def plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


def test_trigger_carries_three_answer_buttons_with_the_dedup_key() -> None:
    with HttpReceiver() as receiver:
        send(receiver.url + HOOK_PATH, notice(dedup_key="inc-20261125-030500-1"))
    [actions] = [b for b in receiver.received[0].json()["blocks"] if b["type"] == "actions"]
    assert set(actions) == {"type", "block_id", "elements"}
    assert 0 < len(actions["block_id"]) <= 255
    acknowledge, rollback, dismiss = actions["elements"]
    key = "inc-20261125-030500-1"
    assert acknowledge == {
        "type": "button",
        "text": plain("Acknowledge"),
        "action_id": "spek_ack",
        "value": key,
        "style": "primary",
    }
    confirm = rollback.pop("confirm")
    assert rollback == {
        "type": "button",
        "text": plain("Roll back now"),
        "action_id": "spek_rollback",
        "value": key,
        "style": "danger",
    }
    assert dismiss == {
        "type": "button",
        "text": plain("Dismiss"),
        "action_id": "spek_dismiss",
        "value": key,
    }
    # Slack's confirmation dialog object: plain_text title (<= 100), text (<= 300), confirm and
    # deny (<= 30 each), style primary or danger
    assert set(confirm) == {"title", "text", "confirm", "deny", "style"}
    for field, limit in (("title", 100), ("text", 300), ("confirm", 30), ("deny", 30)):
        assert confirm[field]["type"] == "plain_text"
        assert 0 < len(confirm[field]["text"]) <= limit
    assert confirm["style"] == "danger"
    assert "error rate 8.30% > 5% for 2m" in confirm["text"]["text"]
    for button in (acknowledge, rollback, dismiss):  # Slack's limits on a button
        assert 0 < len(button["text"]["text"]) <= 75
        assert len(button["action_id"]) <= 255


def test_a_long_summary_is_cut_in_the_confirmation() -> None:
    [actions] = [b for b in message(notice(summary="x" * 5000))["blocks"] if b["type"] == "actions"]
    assert len(actions["elements"][1]["confirm"]["text"]["text"]) == 300


@pytest.mark.parametrize("kind", [NoticeKind.RESOLVE, NoticeKind.ACKNOWLEDGE, NoticeKind.INFO])
def test_only_triggers_carry_buttons(kind: NoticeKind) -> None:
    assert "actions" not in {block["type"] for block in message(notice(kind))["blocks"]}


def test_a_dedup_key_too_long_for_a_button_still_pages_without_buttons() -> None:
    fits, too_long = "k" * 2000, "k" * 2001
    assert "actions" in {block["type"] for block in message(notice(dedup_key=fits))["blocks"]}
    with HttpReceiver() as receiver:
        delivery = send(receiver.url + HOOK_PATH, notice(dedup_key=too_long))
    assert delivery.ok
    body = receiver.received[0].json()
    assert "actions" not in {block["type"] for block in body["blocks"]}


@pytest.mark.parametrize(
    ("kind", "urgency", "opening"),
    [
        (NoticeKind.RESOLVE, Urgency.CRITICAL, ":white_check_mark: Resolved: "),
        (NoticeKind.ACKNOWLEDGE, Urgency.CRITICAL, ":eyes: Acknowledged: "),
        (NoticeKind.INFO, Urgency.INFO, ":information_source: Info: "),
        (NoticeKind.TRIGGER, Urgency.WARNING, ":warning: WARNING: "),
    ],
)
def test_each_kind_reads_as_such(kind: NoticeKind, urgency: Urgency, opening: str) -> None:
    with HttpReceiver() as receiver:
        send(receiver.url + HOOK_PATH, notice(kind, urgency=urgency))
    body = receiver.received[0].json()
    assert body["text"].startswith(opening)
    assert body["blocks"][0]["text"]["text"].startswith(f"*{opening}")


def test_bare_notice_and_mrkdwn_in_user_text_is_escaped() -> None:
    bare = notice(
        NoticeKind.INFO, summary="rollback <started> & running", rule=None, value=None,
        playbook=None, incident=None, evidence="", links={},
    )  # fmt: skip
    with HttpReceiver() as receiver:
        send(receiver.url + HOOK_PATH, bare)
    body = receiver.received[0].json()
    assert body["text"] == ":information_source: Info: rollback <started> & running"
    assert [block["type"] for block in body["blocks"]] == ["section", "context"]
    assert "rollback &lt;started&gt; &amp; running" in texts(body)


@pytest.mark.parametrize(
    ("status", "reply", "retryable"),
    [
        (500, b"rollup_error", True),
        (429, b"rate_limited", True),
        (400, b"invalid_payload", False),
        (403, b"action_prohibited", False),
        (404, b"no_service", False),
        (410, b"channel_is_archived", False),
    ],
)
def test_error_answers(status: int, reply: bytes, retryable: bool) -> None:
    with HttpReceiver() as receiver:
        receiver.answer(status, reply)
        delivery = send(receiver.url + HOOK_PATH, notice())
    assert (delivery.ok, delivery.retryable, delivery.status) == (False, retryable, status)
    assert delivery.detail == f"HTTP {status}: {reply.decode()}"


def test_an_answer_echoing_the_url_does_not_leak_it() -> None:
    with HttpReceiver() as receiver:
        url = receiver.url + HOOK_PATH
        receiver.answer(404, f"no_service for {url} ({HOOK_PATH})".encode())
        delivery = send(url, notice())
    assert "s3cr3tW3bh00kT0k3n" not in delivery.detail
    assert delivery.detail.startswith("HTTP 404: no_service for ***")


def test_refused_connection_is_retryable_and_keeps_the_url_secret() -> None:
    delivery = send(f"http://127.0.0.1:{free_port()}{HOOK_PATH}", notice())
    assert (delivery.ok, delivery.retryable, delivery.status) == (False, True, None)
    assert "s3cr3tW3bh00kT0k3n" not in delivery.detail
    assert "ConnectError" in delivery.detail


def test_silent_webhook_is_retryable_within_the_timeout() -> None:
    with TcpStub() as silent:
        started = time.monotonic()
        delivery = send(f"http://127.0.0.1:{silent.port}{HOOK_PATH}", notice(), timeout=0.5)
        elapsed = time.monotonic() - started
    assert (delivery.ok, delivery.retryable, delivery.status) == (False, True, None)
    assert delivery.detail == "no answer within 0.5s"
    assert elapsed < 3


def test_unusable_url_is_permanent_and_not_shown() -> None:
    delivery = send("hooks.slack.invalid" + HOOK_PATH, notice())
    assert (delivery.ok, delivery.retryable) == (False, False)
    assert "s3cr3tW3bh00kT0k3n" not in delivery.detail
    assert "s3cr3tW3bh00kT0k3n" not in repr(SlackSettings("https://x" + HOOK_PATH))
