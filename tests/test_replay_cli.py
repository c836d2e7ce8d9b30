"""`spek-sentinel replay`: recorded samples through the shipped table, every decision printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builders import T0
from spek_sentinel.cli import main

ROOT = Path(__file__).parent.parent
TABLE = str(ROOT / "thresholds.toml")
STEP = 15


def write_series(path: Path, rows: list[dict[str, object]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def error_rate_rows(values: list[float | str | None], start: float = T0) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for index, value in enumerate(values):
        row: dict[str, object] = {"ts": start + index * STEP, "signal": "error_rate"}
        if isinstance(value, str):
            row["error"] = value
        else:
            row["value"] = value
            row["volume"] = 1000
        rows.append(row)
    return rows


def replay_json(
    tmp_path: Path, rows: list[dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> list[dict[str, object]]:
    series = write_series(tmp_path / "series.jsonl", rows)
    assert main(["replay", "-c", TABLE, "--series", series, "--json"]) == 0
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines()]


def rollbacks(decisions: list[dict[str, object]]) -> list[dict[str, object]]:
    return [d for d in decisions if d["action"] == "rollback"]


def test_error_rate_above_5_percent_longer_than_the_window_rolls_back_exactly_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = error_rate_rows([0.002] * 20 + [0.09] * 30 + [0.003] * 20)
    decisions = replay_json(tmp_path, rows, capsys)
    [rollback] = rollbacks(decisions)
    assert rollback["rule"] == "high_error_rate"
    assert rollback["state"] == "firing"
    assert rollback["severity"] == "immediate"
    assert rollback["playbook"] == "high_error_rate"
    assert rollback["ts"] == T0 + 20 * STEP + 300
    assert "0.09 vs threshold > 0.05" in str(rollback["evidence"])
    for decision in decisions:
        assert {"ts", "rule", "state", "severity", "action"} <= decision.keys()
        assert decision["action"] in {"rollback", "page", "resolve", "none"}


def test_breach_shorter_than_the_window_does_not_roll_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = error_rate_rows([0.002] * 20 + [0.09] * 19 + [0.003] * 20)  # 4m45s of errors
    decisions = replay_json(tmp_path, rows, capsys)
    assert rollbacks(decisions) == []
    assert any(d["state"] == "pending" for d in decisions)


def test_probe_errors_only_do_not_roll_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = error_rate_rows(["prometheus: connection refused", None] * 40)
    decisions = replay_json(tmp_path, rows, capsys)
    assert rollbacks(decisions) == []
    blind = [d for d in decisions if d["page_kind"] == "blind" and d["rule"] == "high_error_rate"]
    assert len(blind) == 1


def test_flapping_around_the_line_with_hysteresis_does_not_roll_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = error_rate_rows([0.055, 0.045, 0.052, 0.038, 0.061, 0.047] * 20)
    decisions = replay_json(tmp_path, rows, capsys)
    assert rollbacks(decisions) == []


def test_text_output_shows_time_rule_transition_action_and_evidence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = error_rate_rows([0.09] * 22)
    series = write_series(tmp_path / "s.jsonl", rows)
    assert main(["replay", "-c", TABLE, "--series", series]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "ROLLBACK" in line)
    assert line.startswith("2025-11-25T02:05:00Z  high_error_rate")
    assert "pending->firing" in line and "immediate" in line
    assert "evidence: error_rate 0.09 vs threshold > 0.05" in out
    assert "1 rollback" in out.splitlines()[-1]


def test_rfc3339_times_release_and_ack_lines_are_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows: list[dict[str, object]] = [
        {"ts": "2025-11-25T02:00:00Z", "release": "v1.5.0"},
        {"ts": "2025-11-25T02:00:00+00:00", "signal": "data_corruption", "value": 1},
        {"ts": "2025-11-25T02:00:30Z", "ack": "alice"},
    ]
    decisions = replay_json(tmp_path, rows, capsys)
    [rollback] = rollbacks(decisions)
    assert rollback["rule"] == "data_corruption" and rollback["ts"] == T0


def test_malformed_lines_are_reported_with_line_numbers_and_nothing_is_replayed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = tmp_path / "bad.jsonl"
    series.write_text(
        '{"ts": 1764036000, "signal": "data_corruption", "value": 1}\n'
        "not json\n"
        '{"signal": "error_rate", "value": 0.1}\n'
        '{"ts": 1764036015, "signal": "error_rate", "value": "high"}\n'
        '{"ts": "yesterday", "signal": "error_rate", "value": 0.1}\n'
        '{"ts": 1764036030, "signal": "error_rate", "value": 0.1, "colour": "red"}\n',
        encoding="utf-8",
    )
    assert main(["replay", "-c", TABLE, "--series", str(series), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = captured.err.splitlines()
    assert errors == [
        f"{series}:2: not JSON: Expecting value at column 1",
        f"{series}:3: missing 'ts'",
        f"{series}:4: 'value' must be a number or null, not 'high'",
        f"{series}:5: 'ts' 'yesterday' is not an RFC 3339 time",
        f"{series}:6: unknown keys: colour",
    ]


def test_lines_out_of_order_are_reported_with_their_line_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = error_rate_rows([0.01, 0.01, 0.01])
    rows[2]["ts"] = T0 - 60
    series = write_series(tmp_path / "s.jsonl", rows)
    assert main(["replay", "-c", TABLE, "--series", series]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{series}:3: out of order" in captured.err
    assert "before line 2's" in captured.err


def test_missing_series_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.jsonl"
    assert main(["replay", "-c", TABLE, "--series", str(missing)]) == 1
    assert f"{missing}: cannot read" in capsys.readouterr().err


def test_the_shipped_bad_deploy_example_rolls_back_once_through_the_installed_command() -> None:
    command = Path(sys.executable).parent / "spek-sentinel"
    result = subprocess.run(
        [
            str(command),
            "replay",
            "-c",
            TABLE,
            "--series",
            str(ROOT / "examples/bad-deploy.jsonl"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    decisions = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(d["rule"], d["time"]) for d in rollbacks(decisions)] == [
        ("high_error_rate", "2026-11-25T03:05:00Z")
    ]
    pages = [d for d in decisions if d["action"] == "page"]
    assert [(d["rule"], d["page_kind"]) for d in pages] == [("slow_responses", "breach")]
    assert "replayed" in result.stderr
