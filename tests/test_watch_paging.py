"""The watch loop end to end on the test rig: an evaluate-level breach read by a real probe is
paged on every configured pager (a real Alertmanager, and local receivers checking the request
shapes the vendors document), escalates when nobody answers, and a human's answer is carried
out: "roll back now" runs the playbook for real, "dismiss" holds it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from harness.alertmanager_server import AlertmanagerStack
from harness.http_receiver import HttpReceiver, Received
from spek_sentinel.config import Config, load_config
from spek_sentinel.domain.alerts import Alert, AlertState, Answer
from spek_sentinel.paging.build import build_pagers
from spek_sentinel.paging.desk import AlertDesk
from spek_sentinel.paging.webhook import verify_signature
from spek_sentinel.probes.pushed import PushedSignalsProbe
from spek_sentinel.probes.registry import build_probes
from spek_sentinel.rollback.journal import Journal
from spek_sentinel.service.watch import Watch
from spek_sentinel.store.sqlite import SqliteStore
from spek_sentinel.store.state import StateDocuments

WEBHOOK_SECRET = "watch-test-webhook-secret"  # noqa: S105 -- test values
ROUTING_KEY = "R0UTINGKEY0123456789abcdef012345"

TABLE = """
[sentinel]
state_dir = "{state}"
veto_window = "60s"

[probes.client]
kind = "pushed"
signals.render_fps = {{ unit = "fps", measure = "value" }}
signals.security_breach = {{ unit = "count", measure = "event" }}

[probes.app]
kind = "http"
url = "{health}/healthz"
start_grace = "0s"
timeout = "2s"
signals.app_up = {{ unit = "bool", measure = "up" }}

[playbooks.performance]
scenario = "Scenario 4: performance degradation"
stop_first = true
application = "previous_release"

[[rules]]
name = "low_render_fps"
signal = "render_fps"
kind = "threshold"
severity = "evaluate"
below = 30
for = "30s"
playbook = "performance"

[[rules]]
name = "security_breach"
signal = "security_breach"
kind = "event"
severity = "immediate"
playbook = "performance"

[rollback]
backup_dir = "{tmp}/backups"
incidents_dir = "{tmp}/incidents"
step_timeout = "20s"

[rollback.application]
kind = "command"
stop_command = ["sh", "-c", "echo stopped > {tmp}/app.state"]
rollback_command = ["sh", "-c", "echo {{release}} > {tmp}/app.release"]
start_command = ["sh", "-c", "echo running > {tmp}/app.state"]
current_release_command = ["cat", "{tmp}/app.release"]
target_exists_command = ["true"]

[pagers.relay]
type = "webhook"
url = "{webhook}/page"
secret_env = "T_WEBHOOK_SECRET"

[pagers.chat]
type = "slack"
webhook_url_env = "T_SLACK_URL"

[pagers.oncall]
type = "pagerduty"
routing_key_env = "T_ROUTING_KEY"
url = "{pagerduty}/v2/enqueue"

[pagers.routing]
type = "alertmanager"
url = "{alertmanager}"

[pagers.lead]
type = "webhook"
url = "{lead}/lead"
secret_env = "T_WEBHOOK_SECRET"

[escalation]
renotify_every = "0s"

[[escalation.levels]]
name = "development_team"
contacts = ["#spek-oncall"]
pagers = ["relay", "chat", "oncall", "routing"]
after = "0s"

[[escalation.levels]]
name = "lead_developer"
contacts = ["lead@spek.example"]
pagers = ["lead"]
after = "30m"

[notices]
pagers = ["relay"]
"""


class Clock:
    def __init__(self) -> None:
        self.now = time.time()  # Alertmanager judges endsAt by its own wall clock

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, tmp: Path, alertmanager: AlertmanagerStack) -> None:
        receivers = [HttpReceiver() for _ in range(5)]
        self.relay, self.slack, self.pagerduty, self.lead, self.app = receivers
        self.alertmanager = alertmanager
        self.tmp = tmp
        path = tmp / "thresholds.toml"
        path.write_text(
            TABLE.format(
                state=tmp / "state",
                tmp=tmp,
                webhook=self.relay.url,
                pagerduty=self.pagerduty.url,
                alertmanager=alertmanager.url,
                lead=self.lead.url,
                health=self.app.url,
            ),
            encoding="utf-8",
        )
        (tmp / "app.release").write_text("v2-bad\n", encoding="utf-8")
        self.config: Config = load_config(str(path))
        self.environ = {
            "T_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "T_SLACK_URL": f"{self.slack.url}/services/T000/B000/XXXX",
            "T_ROUTING_KEY": ROUTING_KEY,
        }
        self.clock = Clock()
        self.desk = AlertDesk.in_dir(
            tmp / "state", self.config.escalation, self.config.notice_pagers
        )
        self.store = SqliteStore.in_dir(tmp / "state")
        self.documents = StateDocuments.in_dir(tmp / "state")
        self.store.record_release("v1-good", self.clock.now - 7200, "deploy")
        self.store.mark_healthy(self.clock.now - 7200, True, 0)
        self.store.record_release("v2-bad", self.clock.now - 60, "deploy")

    def watch(self) -> Watch:
        return Watch(
            self.config,
            self.environ,
            desk=self.desk,
            pagers=build_pagers(self.config, self.environ),
            clock=self.clock,
            documents=self.documents,
        )

    def probe(self) -> PushedSignalsProbe:
        [probe] = [p for p in build_probes(self.config, self.environ) if p.name == "client"]
        assert isinstance(probe, PushedSignalsProbe)
        probe.clock = self.clock
        return probe

    def close(self) -> None:
        self.desk.close()
        self.store.close()
        self.documents.close()
        for receiver in (self.relay, self.slack, self.pagerduty, self.lead, self.app):
            receiver.close()


@pytest.fixture
def rig(tmp_path: Path, alertmanager: AlertmanagerStack) -> Iterator[Rig]:
    made = Rig(tmp_path, alertmanager)
    yield made
    made.close()


async def breach(rig: Rig, watch: Watch) -> str:
    """Low FPS reported by the client, read by the real pushed-signal probe for 30 s."""
    rig.store.push("render_fps", 12.0, "client report", "browser", rig.clock.now)
    probe = rig.probe()
    for _ in range(3):
        await watch.poll(probe)
        rig.clock.now += 15
    await probe.aclose()
    await watch.tick()
    [alert] = rig.desk.store.alerts()
    assert alert.incident is not None
    return alert.incident


def incident_alert(rig: Rig, incident: str) -> Alert:
    alert = rig.desk.store.live(incident)
    assert alert is not None
    return alert


def scenario(rig: Rig, steps: Callable[[Watch], Awaitable[None]]) -> None:
    """Run one test's steps in one event loop, closing the pagers after."""

    async def main() -> None:
        watch = rig.watch()
        try:
            await steps(watch)
        finally:
            await watch.aclose()

    asyncio.run(main())


def bodies(received: list[Received]) -> list[dict[str, object]]:
    return [json.loads(r.body) for r in received]


def test_an_evaluate_breach_is_paged_on_every_configured_pager(rig: Rig) -> None:
    incidents: list[str] = []

    async def steps(watch: Watch) -> None:
        incidents.append(await breach(rig, watch))

    scenario(rig, steps)
    [incident] = incidents

    # generic webhook: signed, verifiable by the receiver
    [page] = [r for r in rig.relay.received if r.path == "/page"]
    headers = page.headers
    assert verify_signature(
        WEBHOOK_SECRET,
        headers["x-spek-timestamp"],
        page.body,
        headers["x-spek-signature"],
        time.time(),
    )
    body = page.json()
    assert (body["kind"], body["dedup_key"], body["rule"], body["urgency"]) == (
        "trigger",
        incident,
        "low_render_fps",
        "warning",
    )
    # Slack incoming webhook: text fallback and blocks, with the answer buttons
    [slack] = bodies(rig.slack.received)
    assert "low_render_fps" in str(slack["text"])
    buttons = [b for b in slack["blocks"] if b["type"] == "actions"]  # type: ignore[union-attr,index]
    assert {e["action_id"] for e in buttons[0]["elements"]} == {
        "spek_ack",
        "spek_rollback",
        "spek_dismiss",
    }
    # PagerDuty Events API v2
    [event] = bodies(rig.pagerduty.received)
    assert rig.pagerduty.received[0].path == "/v2/enqueue"
    assert (event["routing_key"], event["event_action"], event["dedup_key"]) == (
        ROUTING_KEY,
        "trigger",
        incident,
    )
    assert event["payload"]["severity"] == "warning"  # type: ignore[index]
    # Alertmanager: a real one routes it on to its webhook receiver
    notification = rig.alertmanager.receiver.wait_for("firing", incident=incident)
    assert notification["alerts"][0]["labels"]["alertname"] == "low_render_fps"
    assert rig.lead.received == []  # level 2 only after 30 minutes
    assert [e.status for e in rig.desk.outbox.entries()] == ["delivered"] * 4


def test_an_unanswered_page_escalates_to_the_next_level_and_an_answer_stops_it(
    rig: Rig,
) -> None:
    async def steps(watch: Watch) -> None:
        incident = await breach(rig, watch)
        rig.clock.now += 30 * 60
        await watch.tick()
        [escalated] = [r.json() for r in rig.lead.received]
        assert escalated["summary"].startswith("ESCALATED to lead_developer (lead@spek.example)")
        assert escalated["dedup_key"] == incident
        alert = incident_alert(rig, incident)
        assert alert.level == 1
        rig.desk.answer(
            alert.id, Answer.ACKNOWLEDGE, by="lead", note="on it", source="cli", now=rig.clock.now
        )
        await watch.tick()
        acked = [b for b in bodies(rig.pagerduty.received) if b["event_action"] == "acknowledge"]
        assert [a["dedup_key"] for a in acked] == [incident]
        [action] = rig.desk.store.actions(alert.id)
        assert action.applied_at is not None and "acknowledged by lead" in action.outcome
        rig.clock.now += 3 * 3600
        await watch.tick()
        about_incident = [r.json() for r in rig.lead.received if r.json()["dedup_key"] == incident]
        # the escalation page and the acknowledgement; nothing after the answer
        assert [b["kind"] for b in about_incident] == ["trigger", "acknowledge"]

    scenario(rig, steps)


def test_roll_back_now_runs_the_playbook_for_real_and_stakeholders_hear_each_phase(
    rig: Rig,
) -> None:
    async def steps(watch: Watch) -> None:
        incident = await breach(rig, watch)
        alert = incident_alert(rig, incident)
        rig.desk.answer(
            alert.id, Answer.ROLLBACK, by="alice", note="", source="api", now=rig.clock.now
        )
        await watch.tick()
        await watch.rollbacks_done()
        await watch.tick()
        [action] = rig.desk.store.actions(alert.id)
        assert action.outcome == "rollback with playbook performance started"
        assert not watch.sentinel.policy.rollback_running  # post-rollback monitoring started
        assert (rig.tmp / "app.release").read_text(encoding="utf-8").strip() == "v1-good"
        assert (rig.tmp / "app.state").read_text(encoding="utf-8").strip() == "running"
        journal = Journal.in_dir(rig.tmp / "state")
        try:
            run = journal.run(incident)
            assert run is not None and run.status == "succeeded"
        finally:
            journal.close()
        assert (rig.tmp / "incidents" / f"{incident}.md").exists()
        notices = [b["summary"] for b in bodies(rig.relay.received) if b["kind"] == "info"]
        assert notices[0].startswith(f"rollback of {incident} (performance) started")
        assert any("stop" in n and "done" in n and "downtime so far" in n for n in notices)
        assert "finished" in notices[-1]

    scenario(rig, steps)


def test_dismiss_holds_the_rollback_and_changes_nothing_else(rig: Rig) -> None:
    async def steps(watch: Watch) -> None:
        incident = await breach(rig, watch)
        alert = incident_alert(rig, incident)
        rig.desk.answer(
            alert.id, Answer.DISMISS, by="bob", note="known", source="cli", now=rig.clock.now
        )
        await watch.tick()
        [action] = rig.desk.store.actions(alert.id)
        assert f"incident {incident} dismissed by bob" in action.outcome
        assert incident_alert(rig, incident).state is AlertState.ACKNOWLEDGED
        assert watch.state.rollbacks == {}
        assert (rig.tmp / "app.release").read_text(encoding="utf-8").strip() == "v2-bad"

    scenario(rig, steps)


async def confirmed_breach(rig: Rig, watch: Watch) -> Alert:
    """A confirmed security breach: an immediate rule, held for the 60 s veto window."""
    rig.store.push("security_breach", 1.0, "unauthorized access confirmed", "secops", rig.clock.now)
    rig.store.push("render_fps", 60.0, "client report", "browser", rig.clock.now)
    probe = rig.probe()
    await watch.poll(probe)
    await probe.aclose()
    await watch.tick()
    [alert] = [a for a in rig.desk.store.alerts() if a.kind == "rollback"]
    assert alert.rollback_at == rig.clock.now + 60
    return alert


def test_an_immediate_rollback_waits_out_its_veto_window_then_runs(rig: Rig) -> None:
    async def steps(watch: Watch) -> None:
        alert = await confirmed_breach(rig, watch)
        [page] = [r.json() for r in rig.pagerduty.received]
        assert "in 1m unless vetoed" in page["payload"]["summary"]
        rig.clock.now += 30
        await watch.tick()
        assert watch.state.rollbacks == {}  # still inside the window
        rig.clock.now += 30
        await watch.tick()
        assert alert.incident in watch.state.rollbacks
        await watch.rollbacks_done()
        assert (rig.tmp / "app.release").read_text(encoding="utf-8").strip() == "v1-good"

    scenario(rig, steps)


def test_a_veto_inside_the_window_cancels_the_rollback(rig: Rig) -> None:
    async def steps(watch: Watch) -> None:
        alert = await confirmed_breach(rig, watch)
        rig.clock.now += 20
        rig.desk.answer(
            alert.id, Answer.DISMISS, by="carol", note="pen test", source="cli", now=rig.clock.now
        )
        await watch.tick()
        rig.clock.now += 120
        await watch.tick()
        assert watch.state.rollbacks == {}
        [action] = rig.desk.store.actions(alert.id)
        assert "vetoed by carol" in action.outcome
        assert watch.sentinel.policy.last_rollback_at is None  # no cooldown from a veto
        assert (rig.tmp / "app.release").read_text(encoding="utf-8").strip() == "v2-bad"

    scenario(rig, steps)


def test_a_restart_keeps_the_incident_and_its_alert_and_starts_no_second_one(rig: Rig) -> None:
    async def before(watch: Watch) -> None:
        await breach(rig, watch)

    scenario(rig, before)
    [alert] = rig.desk.store.alerts()

    async def after(watch: Watch) -> None:
        watch.recover(rig.clock.now)
        incident = watch.sentinel.policy.incident
        assert incident is not None and incident.id == alert.incident
        probe = rig.probe()
        rig.store.push("render_fps", 11.0, "client report", "browser", rig.clock.now)
        for _ in range(4):
            await watch.poll(probe)
            rig.clock.now += 15
        rig.store.push("render_fps", 60.0, "client report", "browser", rig.clock.now)
        await watch.poll(probe)
        await probe.aclose()
        await watch.tick()

    scenario(rig, after)
    [same] = rig.desk.store.alerts(include_resolved=True)
    assert same.id == alert.id  # still firing after the restart: no second alert
    assert same.state is AlertState.RESOLVED  # recovery after the restart closed it
    resolves = [b for b in bodies(rig.pagerduty.received) if b["event_action"] == "resolve"]
    assert [r["dedup_key"] for r in resolves] == [alert.incident]


def test_a_rollback_waiting_in_its_veto_window_still_runs_after_a_restart(rig: Rig) -> None:
    alerts: list[Alert] = []

    async def before(watch: Watch) -> None:
        alerts.append(await confirmed_breach(rig, watch))

    scenario(rig, before)

    async def after(watch: Watch) -> None:
        watch.recover(rig.clock.now)
        assert set(watch.state.waiting) == {alerts[0].incident}
        rig.clock.now += 61
        await watch.tick()
        await watch.rollbacks_done()

    scenario(rig, after)
    assert (rig.tmp / "app.release").read_text(encoding="utf-8").strip() == "v1-good"
