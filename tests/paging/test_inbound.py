"""Inbound answers: PagerDuty v3 webhooks and Slack button clicks, signed here with hmac exactly as
the vendors document (not with the module's own helpers), and the replay guard in the state file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from spek_sentinel.paging.base import Notice, NoticeKind, Urgency
from spek_sentinel.paging.inbound import (
    InboundAnswer,
    InboundRejected,
    verify_pagerduty,
    verify_slack,
)
from spek_sentinel.paging.slack import message
from spek_sentinel.store.db import STATE_FILE, SqliteDb
from spek_sentinel.store.inbound import INBOUND_MIGRATION, ReplayGuard
from spek_sentinel.store.open import StateLocation
from spek_sentinel.store.schema import MIGRATIONS, statements

NOW = 1_795_000_000.0
PD_SECRET = "pd-webhook-s3cr3t-ROTATE-ME"  # noqa: S105 (a test value)
PD_OLD_SECRET = "pd-webhook-old-s3cr3t"  # noqa: S105
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # noqa: S105
SECRETS = (PD_SECRET, PD_OLD_SECRET, SLACK_SECRET)


def iso(at: float) -> str:
    """RFC 3339 with milliseconds and a Z, as PagerDuty writes ``occurred_at``."""
    moment = dt.datetime.fromtimestamp(at, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def assert_rejected(
    excinfo: pytest.ExceptionInfo[InboundRejected], reason: str, status: int
) -> None:
    assert (excinfo.value.reason, excinfo.value.status) == (reason, status)
    shown = f"{excinfo.value} {excinfo.value!r} {excinfo.value.args}"
    for secret in SECRETS:
        assert secret not in shown


@pytest.fixture
def guard(state: StateLocation) -> Iterator[ReplayGuard]:
    """On SQLite and on PostgreSQL: the same contract."""
    db = state.open()
    replay_guard = ReplayGuard(db)
    replay_guard.ensure_schema()
    yield replay_guard
    db.close()


# -- PagerDuty Webhooks v3 ------------------------------------------------------------------


def pd_event(
    event_type: str = "incident.acknowledged",
    *,
    event_id: str = "01DEN3ZAGL3QWPVIBFUSQDMB2R",
    occurred_at: float = NOW - 20,
    incident_key: str | None = "inc-20261125-030500-1",
    agent: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A v3 webhook body shaped like the documented ``incident.priority_updated`` example."""
    if agent is None:
        agent = {
            "html_url": "https://acme.pagerduty.com/users/PLH1HKV",
            "id": "PLH1HKV",
            "self": "https://api.pagerduty.com/users/PLH1HKV",
            "summary": "Tenex Engineer",
            "type": "user_reference",
        }
    return {
        "event": {
            "id": event_id,
            "event_type": event_type,
            "resource_type": "incident",
            "occurred_at": iso(occurred_at),
            "agent": agent,
            "client": {"name": "PagerDuty"},
            "data": {
                "id": "PGR0VU2",
                "type": "incident",
                "self": "https://api.pagerduty.com/incidents/PGR0VU2",
                "html_url": "https://acme.pagerduty.com/incidents/PGR0VU2",
                "number": 2,
                "status": "acknowledged",
                "incident_key": incident_key,
                "created_at": "2026-11-25T03:05:00Z",
                "title": "error rate 8.30% > 5% for 2m",
                "service": {"id": "PF9KMXH", "summary": "SPEK", "type": "service_reference"},
                "assignees": [{"id": "PTUXL6G", "summary": "User 123", "type": "user_reference"}],
                "urgency": "high",
                "resolve_reason": None,
            },
        }
    }


def pd_sign(raw: bytes, *secrets: str) -> dict[str, str]:
    """``X-PagerDuty-Signature``: v1=HMAC-SHA256(secret, body) per secret, comma-separated."""
    signatures = [
        "v1=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
        for secret in secrets or (PD_SECRET,)
    ]
    return {"Content-Type": "application/json", "X-PagerDuty-Signature": ",".join(signatures)}


def pd_raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def test_pagerduty_acknowledge_is_read() -> None:
    raw = pd_raw(pd_event())
    answer = verify_pagerduty(PD_SECRET, pd_sign(raw), raw, NOW)
    assert answer is not None
    assert answer.source == "pagerduty"
    assert answer.event_id == "01DEN3ZAGL3QWPVIBFUSQDMB2R"
    assert answer.dedup_key == "inc-20261125-030500-1"
    assert answer.action == "acknowledge"
    assert answer.by == "Tenex Engineer"
    assert answer.occurred_at == NOW - 20
    assert "PGR0VU2 (#2)" in answer.note
    assert "user_reference" in answer.note


def test_pagerduty_resolve_is_read() -> None:
    raw = pd_raw(pd_event("incident.resolved", event_id="01RESOLVE"))
    answer = verify_pagerduty(PD_SECRET, pd_sign(raw), raw, NOW)
    assert answer is not None
    assert (answer.action, answer.event_id) == ("resolve", "01RESOLVE")


@pytest.mark.parametrize(
    "event_type",
    ["incident.triggered", "incident.annotated", "incident.unacknowledged", "service.updated"],
)
def test_pagerduty_other_events_are_ignored(event_type: str) -> None:
    raw = pd_raw(pd_event(event_type))
    assert verify_pagerduty(PD_SECRET, pd_sign(raw), raw, NOW) is None


def test_pagerduty_incident_without_key_is_not_ours() -> None:
    raw = pd_raw(pd_event(incident_key=None))
    assert verify_pagerduty(PD_SECRET, pd_sign(raw), raw, NOW) is None


def test_pagerduty_without_agent_names_the_client() -> None:
    body = pd_event("incident.resolved")
    body["event"]["agent"] = None
    raw = pd_raw(body)
    answer = verify_pagerduty(PD_SECRET, pd_sign(raw), raw, NOW)
    assert answer is not None
    assert answer.by == "PagerDuty"


def test_pagerduty_rotation_accepts_either_secret_and_any_header_case() -> None:
    raw = pd_raw(pd_event())
    headers = pd_sign(raw, PD_OLD_SECRET, PD_SECRET)
    assert verify_pagerduty(PD_SECRET, headers, raw, NOW) is not None
    assert verify_pagerduty(PD_OLD_SECRET, headers, raw, NOW) is not None
    lower = {"x-pagerduty-signature": headers["X-PagerDuty-Signature"]}
    assert verify_pagerduty(PD_SECRET, lower, raw, NOW) is not None
    spaced = {"X-PagerDuty-Signature": headers["X-PagerDuty-Signature"].replace(",", ", ")}
    assert verify_pagerduty(PD_SECRET, spaced, raw, NOW) is not None


def test_pagerduty_forged_signature() -> None:
    raw = pd_raw(pd_event())
    headers = {"X-PagerDuty-Signature": "v1=" + "ab" * 32}
    with pytest.raises(InboundRejected) as excinfo:
        verify_pagerduty(PD_SECRET, headers, raw, NOW)
    assert_rejected(excinfo, "bad signature", 401)


def test_pagerduty_wrong_secret() -> None:
    raw = pd_raw(pd_event())
    with pytest.raises(InboundRejected) as excinfo:
        verify_pagerduty(PD_SECRET, pd_sign(raw, PD_OLD_SECRET), raw, NOW)
    assert_rejected(excinfo, "bad signature", 401)


def test_pagerduty_tampered_body() -> None:
    signed = pd_raw(pd_event())
    tampered = pd_raw(pd_event(incident_key="someone-elses-alert"))
    with pytest.raises(InboundRejected) as excinfo:
        verify_pagerduty(PD_SECRET, pd_sign(signed), tampered, NOW)
    assert_rejected(excinfo, "bad signature", 401)


@pytest.mark.parametrize("headers", [{}, {"X-PagerDuty-Signature": ""}, {"Other": "v1=00"}])
def test_pagerduty_missing_signature(headers: dict[str, str]) -> None:
    raw = pd_raw(pd_event())
    with pytest.raises(InboundRejected) as excinfo:
        verify_pagerduty(PD_SECRET, headers, raw, NOW)
    assert_rejected(excinfo, "missing signature", 401)


@pytest.mark.parametrize(
    "value", ["v1=nothex", "v0=" + "ab" * 32, "sha256=" + "ab" * 32, "v1=" + "ab" * 31, "v1=é" * 3]
)
def test_pagerduty_garbled_signature(value: str) -> None:
    raw = pd_raw(pd_event())
    with pytest.raises(InboundRejected) as excinfo:
        verify_pagerduty(PD_SECRET, {"X-PagerDuty-Signature": value}, raw, NOW)
    assert_rejected(excinfo, "bad signature", 401)


@pytest.mark.parametrize("occurred_at", [NOW - 301, NOW - 3600, NOW + 301, NOW + 86400])
def test_pagerduty_stale_or_future_event_is_expired(occurred_at: float) -> None:
    raw = pd_raw(pd_event(occurred_at=occurred_at))
    with pytest.raises(InboundRejected) as excinfo:
        verify_pagerduty(PD_SECRET, pd_sign(raw), raw, NOW)
    assert_rejected(excinfo, "expired", 401)


@pytest.mark.parametrize("occurred_at", [NOW - 300, NOW + 300])
def test_pagerduty_edge_of_the_window_is_accepted(occurred_at: float) -> None:
    raw = pd_raw(pd_event(occurred_at=occurred_at))
    assert verify_pagerduty(PD_SECRET, pd_sign(raw), raw, NOW) is not None


def test_pagerduty_replay_is_refused(guard: ReplayGuard) -> None:
    raw = pd_raw(pd_event())
    first = verify_pagerduty(PD_SECRET, pd_sign(raw), raw, NOW, guard=guard)
    assert first is not None
    with pytest.raises(InboundRejected) as excinfo:
        verify_pagerduty(PD_SECRET, pd_sign(raw), raw, NOW + 5, guard=guard)
    assert_rejected(excinfo, "replayed", 401)
    # another event about the same incident is a new answer
    other = pd_raw(pd_event("incident.resolved", event_id="01OTHER"))
    assert verify_pagerduty(PD_SECRET, pd_sign(other), other, NOW + 6, guard=guard) is not None


def test_pagerduty_ignored_events_do_not_fill_the_guard(guard: ReplayGuard) -> None:
    raw = pd_raw(pd_event("incident.triggered"))
    assert verify_pagerduty(PD_SECRET, pd_sign(raw), raw, NOW, guard=guard) is None
    assert verify_pagerduty(PD_SECRET, pd_sign(raw), raw, NOW, guard=guard) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"event": "acknowledged"}',
        b'{"messages": []}',
        json.dumps({"event": {"event_type": "incident.acknowledged"}}).encode(),
        json.dumps(
            {**pd_event(), "event": {**pd_event()["event"], "occurred_at": "soon"}}
        ).encode(),
        json.dumps({**pd_event(), "event": {**pd_event()["event"], "data": []}}).encode(),
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_pagerduty_malformed_body(raw: bytes) -> None:
    with pytest.raises(InboundRejected) as excinfo:
        verify_pagerduty(PD_SECRET, pd_sign(raw), raw, NOW)
    assert_rejected(excinfo, "malformed", 400)


# -- Slack interactivity ------------------------------------------------------------------------


def trigger_notice(dedup_key: str = "inc-1") -> Notice:
    return Notice(
        kind=NoticeKind.TRIGGER,
        dedup_key=dedup_key,
        summary="error rate 8.30% > 5% for 2m",
        urgency=Urgency.CRITICAL,
        at=NOW - 60,
    )


def clicked(action_id: str, dedup_key: str = "inc-1") -> dict[str, Any]:
    """The ``actions[]`` entry Slack sends for one of the buttons ``slack.message`` built."""
    [block] = [b for b in message(trigger_notice(dedup_key))["blocks"] if b["type"] == "actions"]
    [button] = [e for e in block["elements"] if e["action_id"] == action_id]
    action = {key: button[key] for key in ("type", "action_id", "text", "value")}
    return {**action, "block_id": block["block_id"], "action_ts": f"{NOW - 2:.6f}"}


def block_actions(*actions: dict[str, Any], kind: str = "block_actions") -> dict[str, Any]:
    """A ``block_actions`` payload as documented (the fields a message button click carries)."""
    return {
        "type": kind,
        "user": {"id": "U0SPEK01", "username": "alice", "name": "alice", "team_id": "T0SPEK001"},
        "api_app_id": "A0SPEK001",
        "token": "legacy-verification-token",
        "container": {
            "type": "message",
            "message_ts": "1794999940.000100",
            "channel_id": "C0SPEK001",
            "is_ephemeral": False,
        },
        "trigger_id": "5522672900359.6335258913941.9a930ce2",
        "team": {"id": "T0SPEK001", "domain": "spek"},
        "channel": {"id": "C0SPEK001", "name": "ops-alerts"},
        "message": {"type": "message", "ts": "1794999940.000100", "text": "CRITICAL"},
        "response_url": "https://hooks.slack.com/actions/T0SPEK001/1/abc",
        "actions": list(actions),
    }


def slack_raw(payload: dict[str, Any]) -> bytes:
    """The form-encoded body: one ``payload`` field holding the JSON."""
    return urlencode({"payload": json.dumps(payload)}).encode()


def slack_sign(
    raw: bytes, timestamp: float = NOW - 3, secret: str = SLACK_SECRET
) -> dict[str, str]:
    stamp = str(int(timestamp))
    base = b"v0:" + stamp.encode() + b":" + raw
    signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": signature,
    }


@pytest.mark.parametrize(
    ("action_id", "action"),
    [("spek_ack", "acknowledge"), ("spek_rollback", "rollback"), ("spek_dismiss", "dismiss")],
)
def test_slack_button_click_is_read(action_id: str, action: str) -> None:
    raw = slack_raw(block_actions(clicked(action_id)))
    headers = slack_sign(raw)
    answer = verify_slack(SLACK_SECRET, headers, raw, NOW)
    assert answer == InboundAnswer(
        source="slack",
        event_id=hashlib.sha256(headers["X-Slack-Signature"].encode()).hexdigest(),
        dedup_key="inc-1",
        action=action,  # type: ignore[arg-type]
        by="alice (U0SPEK01)",
        note=f"Slack button {action_id} in #ops-alerts",
        occurred_at=NOW - 2,
    )


def test_slack_headers_in_any_case() -> None:
    raw = slack_raw(block_actions(clicked("spek_ack")))
    headers = {key.lower(): value for key, value in slack_sign(raw).items()}
    assert verify_slack(SLACK_SECRET, headers, raw, NOW) is not None


@pytest.mark.parametrize("timestamp", [NOW - 301, NOW - 86400, NOW + 301])
def test_slack_stale_or_future_timestamp_is_expired(timestamp: float) -> None:
    raw = slack_raw(block_actions(clicked("spek_ack")))
    with pytest.raises(InboundRejected) as excinfo:
        verify_slack(SLACK_SECRET, slack_sign(raw, timestamp), raw, NOW)
    assert_rejected(excinfo, "expired", 401)


def test_slack_timestamp_is_checked_before_the_signature() -> None:
    raw = slack_raw(block_actions(clicked("spek_ack")))
    headers = {**slack_sign(raw, NOW - 3600), "X-Slack-Signature": "v0=" + "00" * 32}
    with pytest.raises(InboundRejected) as excinfo:
        verify_slack(SLACK_SECRET, headers, raw, NOW)
    assert_rejected(excinfo, "expired", 401)


def test_slack_bad_signature() -> None:
    raw = slack_raw(block_actions(clicked("spek_ack")))
    for headers in (
        {**slack_sign(raw), "X-Slack-Signature": "v0=" + "ab" * 32},
        slack_sign(raw, secret=PD_SECRET),  # signed, but with another secret
        {**slack_sign(raw), "X-Slack-Signature": "garbage ü"},
        {**slack_sign(raw), "X-Slack-Request-Timestamp": "17950 00000"},
    ):
        with pytest.raises(InboundRejected) as excinfo:
            verify_slack(SLACK_SECRET, headers, raw, NOW)
        assert_rejected(excinfo, "bad signature", 401)


def test_slack_signature_for_another_timestamp_is_bad() -> None:
    raw = slack_raw(block_actions(clicked("spek_ack")))
    headers = {**slack_sign(raw, NOW - 3), "X-Slack-Request-Timestamp": str(int(NOW - 2))}
    with pytest.raises(InboundRejected) as excinfo:
        verify_slack(SLACK_SECRET, headers, raw, NOW)
    assert_rejected(excinfo, "bad signature", 401)


def test_slack_tampered_body() -> None:
    signed = slack_raw(block_actions(clicked("spek_ack")))
    tampered = slack_raw(block_actions(clicked("spek_rollback")))
    with pytest.raises(InboundRejected) as excinfo:
        verify_slack(SLACK_SECRET, slack_sign(signed), tampered, NOW)
    assert_rejected(excinfo, "bad signature", 401)


@pytest.mark.parametrize("drop", ["X-Slack-Request-Timestamp", "X-Slack-Signature"])
def test_slack_missing_headers(drop: str) -> None:
    raw = slack_raw(block_actions(clicked("spek_ack")))
    headers = {key: value for key, value in slack_sign(raw).items() if key != drop}
    with pytest.raises(InboundRejected) as excinfo:
        verify_slack(SLACK_SECRET, headers, raw, NOW)
    assert_rejected(excinfo, "missing signature", 401)


def test_slack_replay_is_refused(guard: ReplayGuard) -> None:
    raw = slack_raw(block_actions(clicked("spek_rollback")))
    headers = slack_sign(raw)
    assert verify_slack(SLACK_SECRET, headers, raw, NOW, guard=guard) is not None
    with pytest.raises(InboundRejected) as excinfo:
        verify_slack(SLACK_SECRET, headers, raw, NOW + 30, guard=guard)
    assert_rejected(excinfo, "replayed", 401)
    # a second real click (a new request, signed at another second) is a new answer
    again = slack_sign(raw, NOW - 1)
    assert verify_slack(SLACK_SECRET, again, raw, NOW + 31, guard=guard) is not None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"token=abc&team_id=T0SPEK001",
        b"payload=%7Bnot+json",
        b"payload=%5B%5D",
        b"payload=%FF%FE",
        b"payload=a&payload=b",
        slack_raw({**block_actions(), "actions": "spek_ack"}),
        slack_raw(block_actions({**clicked("spek_ack"), "value": None})),
        slack_raw(block_actions("spek_ack")),  # type: ignore[arg-type]
    ],
)
def test_slack_malformed_payload(raw: bytes) -> None:
    with pytest.raises(InboundRejected) as excinfo:
        verify_slack(SLACK_SECRET, slack_sign(raw), raw, NOW)
    assert_rejected(excinfo, "malformed", 400)


def test_slack_other_interactions_are_ignored() -> None:
    unknown = {**clicked("spek_ack"), "action_id": "someone_elses_button"}
    for payload in (
        block_actions(unknown),
        block_actions(),
        block_actions(clicked("spek_ack"), kind="view_submission"),
        {"type": "shortcut", "callback_id": "x", "trigger_id": "1.2.3"},
    ):
        raw = slack_raw(payload)
        assert verify_slack(SLACK_SECRET, slack_sign(raw), raw, NOW) is None


def test_slack_our_button_among_others_is_found() -> None:
    unknown = {**clicked("spek_ack"), "action_id": "someone_elses_button", "value": "x"}
    raw = slack_raw(block_actions(unknown, clicked("spek_dismiss", "inc-7")))
    answer = verify_slack(SLACK_SECRET, slack_sign(raw), raw, NOW)
    assert answer is not None
    assert (answer.action, answer.dedup_key) == ("dismiss", "inc-7")


# -- the replay guard in the state database (SQLite or PostgreSQL) ----------------------------


def test_replay_guard_survives_a_restart(state: StateLocation) -> None:
    first = state.open()
    ReplayGuard(first).ensure_schema()
    assert ReplayGuard(first).first_time("pagerduty", "evt-1", NOW)
    first.close()

    second = state.open()  # a new process on the same state
    guard = ReplayGuard(second)
    guard.ensure_schema()  # idempotent
    assert not guard.first_time("pagerduty", "evt-1", NOW + 10)
    assert guard.first_time("slack", "evt-1", NOW + 10)  # the source is part of the key
    second.close()


def test_replay_guard_two_connections_at_once(state: StateLocation) -> None:
    one, two = state.open(), state.open()
    assert ReplayGuard(one).first_time("slack", "sig-1", NOW)
    assert not ReplayGuard(two).first_time("slack", "sig-1", NOW)
    one.close()
    two.close()


def test_replay_guard_prunes_after_twice_the_window(guard: ReplayGuard) -> None:
    assert guard.first_time("pagerduty", "old", NOW)
    assert not guard.first_time("pagerduty", "old", NOW + 600)  # still inside 2 * max_age
    assert guard.prune(NOW + 600) == 0
    assert guard.prune(NOW + 601) == 1
    assert guard.first_time("pagerduty", "old", NOW + 602)


def test_replay_guard_prunes_as_it_records(guard: ReplayGuard) -> None:
    assert guard.first_time("pagerduty", "old", NOW)
    assert guard.first_time("pagerduty", "new", NOW + 700)
    assert guard.first_time("pagerduty", "old", NOW + 700)  # forgotten: expired by then anyway


def test_a_state_file_where_ensure_schema_made_the_table_still_migrates(tmp_path: Path) -> None:
    """State files from before INBOUND_MIGRATION joined the migrations: ensure_schema made the
    table, the migration (CREATE TABLE IF NOT EXISTS) must still apply on top of it."""
    path = tmp_path / STATE_FILE
    with closing(sqlite3.connect(path)) as old:
        old.execute(f"PRAGMA user_version = {MIGRATIONS.index(INBOUND_MIGRATION)}")
        for statement in statements(INBOUND_MIGRATION):
            old.execute(statement)
        for migration in MIGRATIONS[: MIGRATIONS.index(INBOUND_MIGRATION)]:
            for statement in statements(migration):
                old.execute(statement)
        old.execute("INSERT INTO inbound_seen VALUES ('slack', 'kept', ?)", (NOW,))
        old.commit()
    db = SqliteDb.open(path)
    assert db.execute("PRAGMA user_version").rows == [(len(MIGRATIONS),)]
    columns = [
        (row[1], row[2], row[3], row[5])
        for row in db.execute("PRAGMA table_info(inbound_seen)").rows
    ]
    assert columns == [
        ("source", "TEXT", 1, 1),
        ("event_id", "TEXT", 1, 2),
        ("seen_at", "REAL", 1, 0),
    ]
    assert not ReplayGuard(db).first_time("slack", "kept", NOW + 1)
    db.close()
