"""`spek-sentinel alerts`, `ack` and `veto` on a state file with real alerts in it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builders import STEP, T0, error_rate_rule, rule, series
from spek_sentinel.cli import main
from spek_sentinel.config import Config, load_config
from spek_sentinel.domain.alerts import Alert
from spek_sentinel.domain.decisions import Page, Rollback
from spek_sentinel.domain.rules import Threshold
from spek_sentinel.domain.settings import PolicySettings
from spek_sentinel.engine.sentinel import Sentinel
from spek_sentinel.paging.desk import AlertDesk

TABLE = """
[sentinel]
state_dir = "{state}"

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

[[escalation.levels]]
name = "development_team"
contacts = ["Development Team"]
pagers = ["oncall"]
after = "0s"
"""


@dataclass
class State:
    table: str
    config: Config

    def desk(self) -> AlertDesk:
        return AlertDesk.in_dir(
            Path(self.config.model.sentinel.state_dir),
            self.config.escalation,
            self.config.notice_pagers,
        )

    def open(self, decision: Page | Rollback) -> Alert:
        desk = self.desk()
        try:
            alert = desk.handle(decision, T0 + 90)
        finally:
            desk.close()
        assert alert is not None
        return alert

    def snapshot(self) -> tuple[object, ...]:
        desk = self.desk()
        try:
            alerts = desk.store.alerts(include_resolved=True)
            actions = [desk.store.actions(alert.id) for alert in alerts]
            return alerts, actions, desk.outbox.entries()
        finally:
            desk.close()

    def listed(self, capsys: pytest.CaptureFixture[str], *extra: str) -> list[dict[str, object]]:
        capsys.readouterr()
        assert main(["alerts", "-c", self.table, "--json", *extra]) == 0
        listed: list[dict[str, object]] = json.loads(capsys.readouterr().out)
        return listed


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[State]:
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setenv("USER", "oncall-shell")
    path = tmp_path / "thresholds.toml"
    path.write_text(TABLE.format(state=tmp_path / "state"), encoding="utf-8")
    yield State(str(path), load_config(path, environ={}))


def evaluate_page() -> Page:
    ws = rule("websocket_failures", "ws", Threshold(">", 0.1), for_=60.0, playbook="perf")
    decisions = Sentinel([ws]).observe_many(series("ws", [0.3] * 6))
    [page] = [d for d in decisions if isinstance(d, Page)]
    return page


def waiting_rollback() -> Rollback:
    sentinel = Sentinel([error_rate_rule()], PolicySettings(veto_window=120.0))
    decisions = sentinel.observe_many(series("error_rate", [0.08] * 24))
    return next(d for d in decisions if isinstance(d, Rollback))


def test_ack_acknowledges_and_alerts_shows_it(
    state: State, capsys: pytest.CaptureFixture[str]
) -> None:
    alert = state.open(evaluate_page())
    [before] = state.listed(capsys)
    assert (before["id"], before["state"], before["acked_by"]) == (alert.id, "open", None)

    code = main(["ack", str(alert.id), "-c", state.table, "--by", "alice", "--note", "on it"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"alert {alert.id} ({alert.dedup_key}): acknowledged by alice" in out
    assert "on it" in out

    [after] = state.listed(capsys)
    assert (after["state"], after["acked_by"], after["ack_note"]) == (
        "acknowledged",
        "alice",
        "on it",
    )
    assert after["level_name"] == "development_team"
    assert set(after) >= {"id", "dedup_key", "urgency", "opened_at", "acked_at", "summary"}

    assert main(["alerts", "-c", state.table]) == 0
    table = capsys.readouterr().out
    assert "acknowledged" in table and "alice" in table and "development_team" in table


def test_ack_by_dedup_key_defaults_to_the_user_and_says_the_daemon_carries_out_a_rollback(
    state: State, capsys: pytest.CaptureFixture[str]
) -> None:
    alert = state.open(evaluate_page())
    assert main(["ack", alert.dedup_key, "-c", state.table, "--answer", "rollback"]) == 0
    out = capsys.readouterr().out
    assert "rollback approved by oncall-shell" in out
    assert "the daemon will carry it out" in out
    desk = state.desk()
    try:
        [action] = desk.store.actions(alert.id)
    finally:
        desk.close()
    assert (action.answer.value, action.by, action.source) == ("rollback", "oncall-shell", "cli")


def test_an_unknown_alert_exits_1_and_changes_nothing(
    state: State, capsys: pytest.CaptureFixture[str]
) -> None:
    state.open(evaluate_page())
    before = state.snapshot()
    assert main(["ack", "4242", "-c", state.table, "--by", "alice"]) == 1
    assert capsys.readouterr().err == "no alert 4242\n"
    assert main(["ack", "inc-unknown", "-c", state.table, "--by", "alice"]) == 1
    assert "no alert inc-unknown" in capsys.readouterr().err
    assert state.snapshot() == before


def test_a_conflicting_answer_and_no_one_to_answer_exit_1_and_change_nothing(
    state: State, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    blind = next(
        d
        for d in Sentinel([error_rate_rule()]).observe_many(series("error_rate", ["timeout"] * 25))
        if isinstance(d, Page)
    )
    alert = state.open(blind)
    before = state.snapshot()
    assert main(["ack", str(alert.id), "-c", state.table, "--answer", "dismiss"]) == 1
    assert "only 'acknowledge' applies" in capsys.readouterr().err
    monkeypatch.delenv("USER")
    assert main(["ack", str(alert.id), "-c", state.table]) == 1
    assert "--by NAME" in capsys.readouterr().err
    assert state.snapshot() == before


def test_veto_refuses_when_no_rollback_waits(
    state: State, capsys: pytest.CaptureFixture[str]
) -> None:
    alert = state.open(evaluate_page())
    before = state.snapshot()
    assert main(["veto", str(alert.id), "-c", state.table, "--by", "bob"]) == 1
    assert "has no rollback waiting in its veto window" in capsys.readouterr().err
    assert state.snapshot() == before


def test_veto_stops_a_rollback_waiting_in_its_veto_window(
    state: State, capsys: pytest.CaptureFixture[str]
) -> None:
    alert = state.open(waiting_rollback())
    [listed] = state.listed(capsys)
    assert listed["rollback_at"] is not None
    assert main(["alerts", "-c", state.table]) == 0
    assert f"veto {alert.id}]" in capsys.readouterr().out

    code = main(["veto", alert.dedup_key, "-c", state.table, "--by", "bob", "--note", "noise"])
    out = capsys.readouterr().out
    assert code == 0
    assert "vetoing the rollback due at" in out and "dismissed by bob" in out
    [after] = state.listed(capsys)
    assert (after["rollback_at"], after["state"]) == (None, "acknowledged")
    assert main(["veto", str(alert.id), "-c", state.table, "--by", "bob"]) == 1  # done already


def test_alerts_lists_resolved_ones_only_with_all(
    state: State, capsys: pytest.CaptureFixture[str]
) -> None:
    assert state.listed(capsys) == []
    assert main(["alerts", "-c", state.table]) == 0
    assert "no open alerts" in capsys.readouterr().out
    ws = rule("websocket_failures", "ws", Threshold(">", 0.1), for_=60.0, playbook="perf")
    sentinel = Sentinel([ws])
    decisions = sentinel.observe_many(series("ws", [0.3] * 6))
    decisions += sentinel.observe_many(series("ws", [0.0] * 2, start=T0 + 6 * STEP))
    desk = state.desk()
    try:
        for decision in decisions:
            desk.handle(decision, T0 + 120)
    finally:
        desk.close()
    assert state.listed(capsys) == []
    [resolved] = state.listed(capsys, "--all")
    assert resolved["state"] == "resolved" and resolved["resolved_at"] is not None
