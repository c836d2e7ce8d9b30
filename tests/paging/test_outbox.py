"""The outbox: written before sending, retried with backoff, kept across restarts, never lost
silently — against a real HTTP receiver through the real webhook pager."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from harness.http_receiver import HttpReceiver
from harness.tcp_stub import TcpStub
from harness.wait import wait_until
from spek_sentinel.paging.base import Notice, NoticeKind, Pager, Urgency
from spek_sentinel.paging.outbox import Outbox, backoff
from spek_sentinel.paging.webhook import WebhookPager, WebhookSettings
from spek_sentinel.store.open import StateLocation
from state_helpers import CHILD_STATE, state_arg

SECRET = "outbox-test-hmac-secret"  # noqa: S105 -- a test value
NOTICE = Notice(
    kind=NoticeKind.TRIGGER,
    dedup_key="inc-20261125-030500-1",
    summary="slow_responses firing: evaluate a rollback",
    urgency=Urgency.WARNING,
    at=1_795_575_900.0,
    rule="slow_responses",
    value="0.29s",
    threshold="+50% over baseline",
    links={"report": "http://sentinel/incidents/inc-1"},
)


def deliver(outbox: Outbox, pagers: dict[str, Pager], now: float) -> list[bool]:
    async def run() -> list[bool]:
        try:
            return [d.ok for d in await outbox.deliver_due(pagers, now)]
        finally:
            for pager in pagers.values():
                await pager.aclose()

    return asyncio.run(run())


def webhook(receiver: HttpReceiver) -> dict[str, Pager]:
    return {"oncall": WebhookPager("oncall", WebhookSettings(url=receiver.url, secret=SECRET))}


def test_a_page_is_stored_before_sending_and_retried_until_delivered(state: StateLocation) -> None:
    with HttpReceiver(status=503) as receiver:
        outbox = Outbox.open(state)
        outbox.enqueue(NOTICE, ["oncall"], now=1000.0)
        [entry] = outbox.entries()
        assert (entry.status, entry.attempts) == ("pending", 0)  # written before any send

        assert deliver(outbox, webhook(receiver), now=1000.0) == [False]
        [entry] = outbox.entries()
        assert (entry.status, entry.attempts) == ("pending", 1)
        assert entry.next_attempt_at == 1000.0 + backoff(1)
        assert deliver(outbox, webhook(receiver), now=1001.0) == []  # not due yet

        receiver.answer(200, b"ok")
        assert deliver(outbox, webhook(receiver), now=1000.0 + backoff(1)) == [True]
        [entry] = outbox.entries()
        assert entry.status == "delivered"
        bodies = [json.loads(request.body) for request in receiver.received]
        assert [b["dedup_key"] for b in bodies] == [NOTICE.dedup_key] * 2  # the same page twice
        outbox.close()


def test_pending_pages_survive_a_restart(state: StateLocation) -> None:
    first = Outbox.open(state)
    first.enqueue(NOTICE, ["oncall", "slack"], now=1000.0)
    first.close()  # the sentinel dies before sending anything
    with HttpReceiver(status=200) as receiver:
        second = Outbox.open(state)
        assert deliver(second, webhook(receiver), now=1010.0) == [True]
        statuses = {(e.pager, e.status) for e in second.entries()}
        # the Slack page waits for its pager rather than being dropped
        assert statuses == {("oncall", "delivered"), ("slack", "pending")}
        [slack] = [e for e in second.entries() if e.pager == "slack"]
        assert slack.last_error == "no pager named slack"
        second.close()


def test_a_refused_page_is_marked_failed_and_an_old_one_expires(state: StateLocation) -> None:
    with HttpReceiver(status=400, reply=b"bad request") as receiver:
        outbox = Outbox.open(state, expire_after=3600)
        outbox.enqueue(NOTICE, ["oncall"], now=1000.0)
        assert deliver(outbox, webhook(receiver), now=1000.0) == [False]
        outbox.enqueue(NOTICE, ["oncall"], now=1000.0)
        assert deliver(outbox, webhook(receiver), now=1000.0 + 3601) == []
        assert [(e.status, SECRET in e.last_error) for e in outbox.entries()] == [
            ("failed", False),
            ("expired", False),
        ]
        outbox.close()


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert backoff(30) == 300.0


SENDER = (
    CHILD_STATE
    + """
import asyncio
from spek_sentinel.paging.outbox import Outbox
from spek_sentinel.paging.webhook import WebhookPager, WebhookSettings

outbox = Outbox.open(state)
pager = WebhookPager("oncall", WebhookSettings(url=sys.argv[2], secret="s", timeout=60))
print("sending", flush=True)
asyncio.run(outbox.deliver_due({"oncall": pager}, now=1000.0))
"""
)


def test_a_sentinel_killed_mid_delivery_loses_no_page(state: StateLocation) -> None:
    outbox = Outbox.open(state)
    outbox.enqueue(NOTICE, ["oncall"], now=1000.0)
    outbox.close()
    with TcpStub() as stub:  # accepts the connection and never answers: delivery in flight
        sender = subprocess.Popen(
            [sys.executable, "-c", SENDER, state_arg(state), f"http://127.0.0.1:{stub.port}/"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(lambda: stub.accepted >= 1, timeout=30, message="the page was not sent")
        finally:
            sender.kill()  # SIGKILL, mid-request
            sender.wait(timeout=30)
    with HttpReceiver(status=200) as receiver:
        restarted = Outbox.open(state)
        [entry] = restarted.entries()
        assert entry.status == "pending"  # the killed attempt did not count it as sent
        assert deliver(restarted, webhook(receiver), now=1001.0) == [True]
        assert [json.loads(r.body)["dedup_key"] for r in receiver.received] == [NOTICE.dedup_key]
        restarted.close()
