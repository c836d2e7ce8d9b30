"""Alerts over real HTTP: listed, shown, acknowledged with the bearer token, and answered from
PagerDuty (webhook v3) and Slack (a button click); a refused request changes nothing.

The vendors' signatures are computed here from their documentation, independently of
``spek_sentinel.paging.inbound``."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from builders import T0, error_rate_rule, rule, series
from harness.asgi_server import serving
from spek_sentinel.config import Config, load_config
from spek_sentinel.domain.alerts import Alert, AlertState
from spek_sentinel.domain.decisions import Page
from spek_sentinel.domain.rules import Threshold
from spek_sentinel.domain.units import iso
from spek_sentinel.engine.sentinel import Sentinel
from spek_sentinel.paging.base import NoticeKind
from spek_sentinel.paging.build import inbound_secrets
from spek_sentinel.paging.desk import AlertDesk
from spek_sentinel.service.api import api_token, create_app
from spek_sentinel.store.sqlite import STATE_FILE, SqliteStore

TOKEN = "t0ken-for-alert-tests-51e0"  # noqa: S105 -- a test value
PD_SECRET = "pd-webhook-secret-for-tests-8c2a"  # noqa: S105
SLACK_SECRET = "slack-signing-secret-for-tests-f00d"  # noqa: S105
ENVIRON = {
    "SPEK_TEST_API_TOKEN": TOKEN,
    "SPEK_TEST_PD_SECRET": PD_SECRET,
    "SPEK_TEST_SLACK_SECRET": SLACK_SECRET,
}
GUESSED = "a-guessed-secret"
NOW = T0 + 600.0  # the server's clock: ten minutes after the samples began
TABLE = """
[sentinel]
state_dir = "{state}"

[api]
token_env = "SPEK_TEST_API_TOKEN"

[probes.confirmed]
kind = "pushed"
signals.render_fps = {{ unit = "fps", measure = "value" }}

[[rules]]
name = "low_render_fps"
signal = "render_fps"
kind = "threshold"
severity = "evaluate"
below = 30

[pagers.oncall]
type = "pagerduty"
routing_key_env = "SPEK_TEST_ROUTING_KEY"

[pagers.team_slack]
type = "slack"
webhook_url_env = "SPEK_TEST_SLACK_URL"

[escalation]
renotify_every = "15m"
ack_timeout = "30m"

[[escalation.levels]]
name = "development_team"
contacts = ["Development Team"]
pagers = ["oncall", "team_slack"]
after = "0s"

[inbound]
pagerduty_secret_env = "SPEK_TEST_PD_SECRET"
slack_signing_secret_env = "SPEK_TEST_SLACK_SECRET"
max_age = "5m"
"""


def evaluate_page() -> Page:
    ws = rule("websocket_failures", "ws", Threshold(">", 0.1), for_=60.0, playbook="perf")
    decisions = Sentinel([ws]).observe_many(series("ws", [0.3] * 6))
    [page] = [d for d in decisions if isinstance(d, Page)]
    return page


def blind_page() -> Page:
    decisions = Sentinel([error_rate_rule()]).observe_many(series("error_rate", ["timeout"] * 25))
    return next(d for d in decisions if isinstance(d, Page))


@dataclass
class Api:
    url: str
    config: Config
    desk: AlertDesk
    app: Any
    clock: list[float] = field(default_factory=lambda: [NOW])

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=10)

    def ack(
        self, ref: object, body: object = None, token: str | None = TOKEN, raw: bytes | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        headers["Content-Type"] = "application/json"
        content = raw if raw is not None else json.dumps(body).encode()
        return httpx.post(
            f"{self.url}/api/v1/alerts/{ref}/ack", content=content, headers=headers, timeout=10
        )

    def post(self, path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", content=content, headers=headers, timeout=10)

    def open(self, page: Page) -> Alert:
        alert = self.desk.handle(page, T0 + 90)
        assert alert is not None
        return alert

    def snapshot(self) -> tuple[object, ...]:
        """Everything an answer may change: alerts, their actions, the outbox, seen deliveries."""
        alerts = self.desk.store.alerts(include_resolved=True)
        actions = [self.desk.store.actions(alert.id) for alert in alerts]
        state = Path(self.config.model.sentinel.state_dir) / STATE_FILE
        with closing(sqlite3.connect(state)) as db:
            seen = db.execute("SELECT source, event_id FROM inbound_seen ORDER BY 1, 2").fetchall()
        return alerts, actions, self.desk.outbox.entries(), seen

    @property
    def rejected(self) -> dict[tuple[str, str], int]:
        return dict(self.app.state.inbound_rejected)


def serve(tmp_path: Path, *, inbound: bool = True) -> Iterator[Api]:
    path = tmp_path / "thresholds.toml"
    path.write_text(TABLE.format(state=tmp_path / "state"), encoding="utf-8")
    config = load_config(path, environ={})
    store = SqliteStore.in_dir(tmp_path / "state")
    desk = AlertDesk.in_dir(tmp_path / "state", config.escalation, config.notice_pagers)
    clock = [NOW]
    app = create_app(
        config,
        store,
        api_token(config, ENVIRON),
        lambda: clock[0],
        desk=desk,
        inbound=inbound_secrets(config, ENVIRON) if inbound else None,
    )
    try:
        with serving(app) as url:
            yield Api(url, config, desk, app, clock)
    finally:
        desk.close()
        store.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from serve(tmp_path)


# -- the API ----------------------------------------------------------------------------------


def test_an_alert_acknowledged_over_the_api_stops_escalating_and_tells_the_pagers(
    api: Api,
) -> None:
    alert = api.open(evaluate_page())
    [listed] = api.get("/api/v1/alerts").json()["alerts"]
    assert (listed["id"], listed["state"], listed["level_name"]) == (
        alert.id,
        "open",
        "development_team",
    )
    assert listed["opened_at"] == iso(T0 + 90) and listed["acked_by"] is None

    response = api.ack(alert.id, {"by": "alice", "note": "looking at the websocket gateway"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["state"], body["acked_by"], body["ack_note"]) == (
        "acknowledged",
        "alice",
        "looking at the websocket gateway",
    )
    shown = api.get(f"/api/v1/alerts/{alert.id}").json()
    assert (shown["state"], shown["acked_by"], shown["acked_at"]) == (
        "acknowledged",
        "alice",
        iso(NOW),
    )
    [action] = shown["actions"]
    assert (action["answer"], action["by"], action["source"], action["applied_at"]) == (
        "acknowledge",
        "alice",
        "api",
        None,
    )
    assert api.get(f"/api/v1/alerts/{alert.dedup_key}").json()["id"] == alert.id
    acks = [
        (p, n.summary) for p, n in api.desk.outbox.notices() if n.kind is NoticeKind.ACKNOWLEDGE
    ]
    assert acks == [
        ("oncall", "acknowledged by alice: looking at the websocket gateway"),
        ("team_slack", "acknowledged by alice: looking at the websocket gateway"),
    ]
    assert api.desk.store.get(alert.id).state is AlertState.ACKNOWLEDGED  # type: ignore[union-attr]


def test_resolved_alerts_are_listed_only_when_asked(api: Api) -> None:
    api.open(evaluate_page())
    assert len(api.get("/api/v1/alerts?all=1").json()["alerts"]) == 1
    assert api.get("/api/v1/alerts?all=maybe").status_code == 400
    assert api.get("/api/v1/alerts/999").status_code == 404
    assert api.get("/api/v1/alerts/999").json() == {"error": "no alert 999"}


@pytest.mark.parametrize(
    ("token", "body", "expected"),
    [
        (None, {"by": "mallory"}, (401, "missing or wrong bearer token")),
        ("forged-token", {"by": "mallory"}, (401, "missing or wrong bearer token")),
        (TOKEN, b"{not json", (400, "malformed JSON")),
        (TOKEN, b"[1, 2]", (400, "expected a JSON object")),
        (TOKEN, {"by": 7}, (400, "'by' is a required string")),
        (TOKEN, {"by": "  "}, (400, "'by' is a required string")),
        (TOKEN, {"by": "bob", "note": ["x"]}, (400, "'note' must be a string")),
        (TOKEN, {"by": "bob", "answer": "reboot"}, (400, "'answer' must be one of")),
        (TOKEN, {"by": "bob", "urgent": True}, (400, "unknown fields: urgent")),
    ],
)
def test_a_refused_answer_changes_nothing(
    api: Api, token: str | None, body: object, expected: tuple[int, str]
) -> None:
    alert = api.open(evaluate_page())
    before = api.snapshot()
    raw = body if isinstance(body, bytes) else None
    response = api.ack(alert.id, body, token=token, raw=raw)
    assert response.status_code == expected[0]
    assert response.json()["error"].startswith(expected[1])
    assert api.snapshot() == before


def test_an_unknown_alert_is_404_and_a_conflicting_answer_409_and_both_change_nothing(
    api: Api,
) -> None:
    blind = api.open(blind_page())
    before = api.snapshot()
    unknown = api.ack(4242, {"by": "alice"})
    assert (unknown.status_code, unknown.json()) == (404, {"error": "no alert 4242"})
    assert api.ack("inc-nope", {"by": "alice"}).status_code == 404
    conflict = api.ack(blind.id, {"by": "alice", "answer": "rollback"})
    assert conflict.status_code == 409
    assert "only 'acknowledge' applies" in conflict.json()["error"]
    assert api.snapshot() == before


# -- PagerDuty webhooks v3 --------------------------------------------------------------------


def pagerduty_event(
    dedup_key: str,
    event_type: str = "incident.acknowledged",
    occurred_at: float = NOW - 2,
    event_id: str | None = None,
) -> bytes:
    """A delivery shaped like the "incident.acknowledged" example of PagerDuty's docs."""
    event = {
        "event": {
            "id": event_id or str(uuid.uuid4()),
            "event_type": event_type,
            "resource_type": "incident",
            "occurred_at": iso(occurred_at).replace("Z", ".169Z"),
            "agent": {
                "html_url": "https://acme.pagerduty.com/users/PLH1HKV",
                "id": "PLH1HKV",
                "self": "https://api.pagerduty.com/users/PLH1HKV",
                "summary": "Tenex Engineer",
                "type": "user_reference",
            },
            "client": None,
            "data": {
                "id": "PGR0VU2",
                "type": "incident",
                "self": "https://api.pagerduty.com/incidents/PGR0VU2",
                "html_url": "https://acme.pagerduty.com/incidents/PGR0VU2",
                "number": 2,
                "status": "acknowledged",
                "incident_key": dedup_key,
                "title": "websocket_failures firing",
                "urgency": "high",
            },
        }
    }
    return json.dumps(event).encode()


def pagerduty_headers(body: bytes, secret: str = PD_SECRET) -> dict[str, str]:
    # developer.pagerduty.com "Verifying Signatures": v1= HMAC-SHA256 of the raw body, hex
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-PagerDuty-Signature": f"v1={digest}",
        "X-Webhook-Id": "PWH1234",
    }


PD = "/api/v1/inbound/pagerduty"


def test_a_pagerduty_acknowledgement_acknowledges_the_alert_by_its_dedup_key(api: Api) -> None:
    alert = api.open(evaluate_page())
    body = pagerduty_event(alert.dedup_key)
    response = api.post(PD, body, pagerduty_headers(body))
    assert response.status_code == 200, response.text
    shown = api.get(f"/api/v1/alerts/{alert.id}").json()
    assert (shown["state"], shown["acked_by"]) == ("acknowledged", "Tenex Engineer")
    [action] = shown["actions"]
    assert (action["answer"], action["source"]) == ("acknowledge", "pagerduty")
    assert "PGR0VU2" in action["note"]
    assert api.rejected == {}


def test_forged_tampered_replayed_and_expired_pagerduty_deliveries_are_refused(api: Api) -> None:
    alert = api.open(evaluate_page())
    before = api.snapshot()
    body = pagerduty_event(alert.dedup_key)
    tampered = body.replace(b"Tenex Engineer", b"Evil Engineer")
    stale = pagerduty_event(alert.dedup_key, occurred_at=NOW - 301)
    refused = {
        "forged": api.post(PD, body, pagerduty_headers(body, secret=GUESSED)),
        "tampered": api.post(PD, tampered, pagerduty_headers(body)),
        "unsigned": api.post(PD, body, {"Content-Type": "application/json"}),
        "expired": api.post(PD, stale, pagerduty_headers(stale)),
    }
    assert {name: (r.status_code, r.json()) for name, r in refused.items()} == {
        "forged": (401, {"error": "bad signature"}),
        "tampered": (401, {"error": "bad signature"}),
        "unsigned": (401, {"error": "missing signature"}),
        "expired": (401, {"error": "expired"}),
    }
    assert api.snapshot() == before

    assert api.post(PD, body, pagerduty_headers(body)).status_code == 200
    answered = api.snapshot()
    replayed = api.post(PD, body, pagerduty_headers(body))
    assert (replayed.status_code, replayed.json()) == (401, {"error": "replayed"})
    assert api.snapshot() == answered
    assert api.rejected == {
        ("pagerduty", "bad signature"): 2,
        ("pagerduty", "missing signature"): 1,
        ("pagerduty", "expired"): 1,
        ("pagerduty", "replayed"): 1,
    }


def test_pagerduty_events_that_name_no_alert_of_ours_are_accepted_and_ignored(api: Api) -> None:
    alert = api.open(evaluate_page())
    before = api.snapshot()
    for body in (
        pagerduty_event("inc-someone-elses"),
        pagerduty_event(alert.dedup_key, event_type="incident.triggered"),
        pagerduty_event(alert.dedup_key, event_type="incident.annotated"),
    ):
        response = api.post(PD, body, pagerduty_headers(body))
        assert response.status_code == 202
        assert "ignored" in response.json()
    assert api.snapshot() == before
    assert api.rejected == {}


def test_a_pagerduty_retry_after_our_failure_is_still_heard(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    alert = api.open(evaluate_page())
    body = pagerduty_event(alert.dedup_key)
    real_answer = api.desk.answer
    failures: list[str] = []

    def locked(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append("once")
            raise sqlite3.OperationalError("database is locked")
        return real_answer(*args, **kwargs)

    monkeypatch.setattr(api.desk, "answer", locked)
    before = api.snapshot()
    assert api.post(PD, body, pagerduty_headers(body)).status_code == 500
    assert api.snapshot() == before  # the delivery is not recorded as seen
    retry = api.post(PD, body, pagerduty_headers(body))  # PagerDuty retries with the same id
    assert retry.status_code == 200
    assert retry.json()["acked_by"] == "Tenex Engineer"


def test_inbound_answers_without_a_secret_are_404_and_counted(tmp_path: Path) -> None:
    for api in serve(tmp_path, inbound=False):
        alert = api.open(evaluate_page())
        before = api.snapshot()
        body = pagerduty_event(alert.dedup_key)
        response = api.post(PD, body, pagerduty_headers(body))
        assert response.status_code == 404
        assert "[inbound] pagerduty_secret_env is not set" in response.json()["error"]
        slack = api.post("/api/v1/inbound/slack", b"payload=%7B%7D", {})
        assert slack.status_code == 404
        assert api.snapshot() == before
        assert api.rejected == {("pagerduty", "not configured"): 1, ("slack", "not configured"): 1}


# -- Slack interactivity ----------------------------------------------------------------------


def slack_click(dedup_key: str, action_id: str = "spek_ack", at: float = NOW - 1) -> bytes:
    """A block_actions payload as Slack posts it: form-encoded, one field ``payload``."""
    payload = {
        "type": "block_actions",
        "user": {"id": "U0CA5", "username": "amy", "name": "amy", "team_id": "T3MDE"},
        "api_app_id": "A0CA5",
        "token": "deprecated-verification-token",
        "container": {"type": "message", "message_ts": "1548261231.000200"},
        "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().int % 10**12}.abcd",
        "team": {"id": "T3MDE", "domain": "spek"},
        "channel": {"id": "C0CA5", "name": "spek-oncall"},
        "response_url": "https://hooks.slack.com/actions/T3MDE/1/XYZ",
        "actions": [
            {
                "action_id": action_id,
                "block_id": "spek_answer",
                "text": {"type": "plain_text", "text": "Acknowledge"},
                "value": dedup_key,
                "type": "button",
                "action_ts": f"{at:.6f}",
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def slack_headers(body: bytes, at: float = NOW, secret: str = SLACK_SECRET) -> dict[str, str]:
    # api.slack.com "Verifying requests from Slack": v0= HMAC-SHA256 of "v0:{timestamp}:{body}"
    timestamp = str(int(at))
    base = b"v0:" + timestamp.encode() + b":" + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": f"v0={digest}",
    }


SLACK = "/api/v1/inbound/slack"


def test_a_slack_button_click_acknowledges_the_alert(api: Api) -> None:
    alert = api.open(evaluate_page())
    body = slack_click(alert.dedup_key)
    response = api.post(SLACK, body, slack_headers(body))
    assert response.status_code == 200, response.text
    shown = api.get(f"/api/v1/alerts/{alert.id}").json()
    assert (shown["state"], shown["acked_by"]) == ("acknowledged", "amy (U0CA5)")
    [action] = shown["actions"]
    assert (action["answer"], action["source"]) == ("acknowledge", "slack")
    assert "#spek-oncall" in action["note"]


def test_forged_tampered_replayed_and_expired_slack_clicks_are_refused(api: Api) -> None:
    alert = api.open(evaluate_page())
    before = api.snapshot()
    body = slack_click(alert.dedup_key)
    stale_at = NOW - 301
    stale = slack_click(alert.dedup_key, at=stale_at)
    refused = {
        "forged": api.post(SLACK, body, slack_headers(body, secret=GUESSED)),
        "tampered": api.post(SLACK, body.replace(b"amy", b"eve"), slack_headers(body)),
        "unsigned": api.post(SLACK, body, {"Content-Type": "application/x-www-form-urlencoded"}),
        "expired": api.post(SLACK, stale, slack_headers(stale, at=stale_at)),
    }
    assert {name: (r.status_code, r.json()) for name, r in refused.items()} == {
        "forged": (401, {"error": "bad signature"}),
        "tampered": (401, {"error": "bad signature"}),
        "unsigned": (401, {"error": "missing signature"}),
        "expired": (401, {"error": "expired"}),
    }
    assert api.snapshot() == before

    headers = slack_headers(body)
    assert api.post(SLACK, body, headers).status_code == 200
    answered = api.snapshot()
    replayed = api.post(SLACK, body, headers)
    assert (replayed.status_code, replayed.json()) == (401, {"error": "replayed"})
    assert api.snapshot() == answered
    assert api.rejected == {
        ("slack", "bad signature"): 2,
        ("slack", "missing signature"): 1,
        ("slack", "expired"): 1,
        ("slack", "replayed"): 1,
    }


def test_a_slack_rollback_click_on_a_blind_alert_is_a_counted_conflict(api: Api) -> None:
    blind = api.open(blind_page())
    before = api.snapshot()
    body = slack_click(blind.dedup_key, action_id="spek_rollback")
    response = api.post(SLACK, body, slack_headers(body))
    assert response.status_code == 409
    assert api.snapshot() == before
    assert api.rejected == {("slack", "conflict"): 1}


def test_a_slack_click_on_an_alert_we_do_not_know_is_answered_200_and_ignored(api: Api) -> None:
    before = api.snapshot()
    body = slack_click("inc-not-ours")
    response = api.post(SLACK, body, slack_headers(body))
    # Slack shows the person who clicked an error for anything but 200
    assert response.status_code == 200 and "ignored" in response.json()
    assert api.snapshot() == before
