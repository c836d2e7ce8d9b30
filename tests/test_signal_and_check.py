"""`spek-sentinel signal` and `spek-sentinel check` on pushed signals: Nagios exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spek_sentinel.cli import main

TABLE = """
[sentinel]
state_dir = "{state}"

[probes.confirmed]
kind = "pushed"
signals.security_breach = {{ unit = "count", measure = "event" }}
signals.render_fps = {{ unit = "fps", measure = "value" }}

[playbooks.security_breach]
scenario = "Scenario 5"
database = ["restore"]
restore_from = "last_known_good"
application = "none"

[[rules]]
name = "security_breach"
signal = "security_breach"
kind = "event"
severity = "immediate"
playbook = "security_breach"

[[rules]]
name = "low_render_fps"
signal = "render_fps"
kind = "threshold"
severity = "evaluate"
below = 30
for = "5m"
"""


@pytest.fixture
def table(tmp_path: Path) -> str:
    path = tmp_path / "thresholds.toml"
    path.write_text(TABLE.format(state=tmp_path / "state"), encoding="utf-8")
    return str(path)


def check(table: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    capsys.readouterr()  # drop what earlier commands printed
    code = main(["check", "-c", table, "--json"])
    return code, json.loads(capsys.readouterr().out)


def statuses(report: dict[str, object]) -> dict[str, str]:
    rules = report["rules"]
    assert isinstance(rules, list)
    return {rule["rule"]: rule["status"] for rule in rules}


def push(table: str, *args: str) -> int:
    return main(["signal", "-c", table, *args])


def test_ok_when_no_event_is_open_and_fps_is_fine(
    table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert push(table, "render_fps", "--value", "58", "--reason", "client p10", "--by", "web") == 0
    code, report = check(table, capsys)
    assert (code, report["status"]) == (0, "OK")
    assert statuses(report) == {"security_breach": "ok", "low_render_fps": "ok"}


def test_warning_when_an_evaluate_rule_breaches(
    table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    push(table, "render_fps", "--value", "22", "--reason", "client p10")
    code, report = check(table, capsys)
    assert (code, report["status"]) == (1, "WARNING")
    assert statuses(report)["low_render_fps"] == "breach"


def test_critical_when_an_immediate_event_is_confirmed_until_it_is_resolved(
    table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    push(table, "render_fps", "--value", "60", "--reason", "client p10")
    assert (
        push(table, "security_breach", "--reason", "unauthorized admin login", "--by", "soc") == 0
    )
    code, report = check(table, capsys)
    assert (code, report["status"]) == (2, "CRITICAL")
    assert statuses(report)["security_breach"] == "breach"
    assert push(table, "security_breach", "--resolve", "--reason", "false alarm") == 0
    code, _ = check(table, capsys)
    assert code == 0


def test_unknown_when_a_signal_has_no_data(table: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = check(table, capsys)  # no client ever reported FPS
    assert (code, report["status"]) == (3, "UNKNOWN")
    assert statuses(report) == {"security_breach": "ok", "low_render_fps": "unknown"}


def test_text_report_starts_with_a_nagios_summary_line(
    table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    push(table, "security_breach", "--reason", "unauthorized access")
    capsys.readouterr()
    assert main(["check", "-c", table]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0] == "SPEK-SENTINEL CRITICAL - breaching now: security_breach; blind: low_render_fps"
    )
    assert lines[1].split() == ["RULE", "SIGNAL", "VALUE", "STATE", "SEVERITY", "DETAIL"]


def test_signal_refuses_names_that_are_not_pushed_signals(
    table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert push(table, "error_rate", "--value", "1", "--reason", "x") == 1
    assert "not a pushed signal" in capsys.readouterr().err


def test_a_reported_value_needs_a_value(table: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert push(table, "render_fps", "--reason", "x") == 1
    assert "is a reported value: give a value" in capsys.readouterr().err
