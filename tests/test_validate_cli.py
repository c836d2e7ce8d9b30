"""``spek-sentinel validate``: exit 0 on the shipped table; on a bad table exit 1 with one line
per problem, each naming the file (or variable), the key path and the reason."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from spek_sentinel.cli import main

SHIPPED = Path(__file__).resolve().parent.parent / "thresholds.toml"
SHIPPED_TEXT = SHIPPED.read_text(encoding="utf-8")
RULE_INDEX = {row["name"]: i for i, row in enumerate(tomllib.loads(SHIPPED_TEXT)["rules"])}
SCRIPT = Path(sys.executable).parent / "spek-sentinel"
JARGON = ("Input should", "pydantic", "[key]", ".float", ".str", "Value error", "validation error")


@pytest.fixture(autouse=True)
def _no_overrides_from_the_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads os.environ; a stray SPEK_SENTINEL_* in the runner must not change results."""
    for name in list(os.environ):
        if name.startswith("SPEK_SENTINEL_"):
            monkeypatch.delenv(name)


# ------------------------------------------------------------------------------------------------
# helpers: every bad table is the shipped one with one visible edit
# ------------------------------------------------------------------------------------------------


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the edit must apply exactly once: {old!r}"
    return text.replace(old, new)


def edit_rule(text: str, rule: str, old: str, new: str) -> str:
    """Replace ``old`` inside the ``[[rules]]`` table named ``rule`` only."""
    start = text.index(f'[[rules]]\nname = "{rule}"\n')
    end = text.find("\n[", start + 1)
    end = len(text) if end == -1 else end
    return text[:start] + edit(text[start:end], old, new) + text[end:]


def at(rule: str, key: str) -> str:
    return f"rules[{RULE_INDEX[rule]}].{key}"


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def problems(self) -> list[str]:
        return [line[2:] for line in self.err.splitlines() if line.startswith("  ")]


def validate(capsys: pytest.CaptureFixture[str], path: Path | str) -> Run:
    code = main(["validate", "-c", str(path)])
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def validate_text(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str) -> Run:
    path = tmp_path / "thresholds.toml"
    path.write_text(text, encoding="utf-8")
    return validate(capsys, path)


def assert_invalid(run: Run, count: int) -> None:
    assert run.code == 1
    assert run.out == ""
    assert f"invalid configuration, {count} problem" in run.err.splitlines()[0]
    assert len(run.problems) == count, run.err
    for line in run.problems:
        assert not any(word in line for word in JARGON), line


def assert_one_problem(run: Run, where: str, *reason: str) -> str:
    """Exactly one problem, reported as ``<where>: <reason>``; returns the reason."""
    assert_invalid(run, 1)
    [line] = run.problems
    assert line.startswith(f"{where}: "), line
    text = line[len(where) + 2 :]
    for part in reason:
        assert part in text, line
    return text


# ------------------------------------------------------------------------------------------------
# the shipped table
# ------------------------------------------------------------------------------------------------


def test_validate_shipped_table_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    run = validate(capsys, SHIPPED)
    assert run.code == 0
    assert run.err == ""
    assert "valid" in run.out
    assert "12 rules" in run.out


def test_installed_script_validates_shipped_table_with_exit_0() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEK_SENTINEL_")}
    done = subprocess.run(
        [str(SCRIPT), "validate", "-c", str(SHIPPED)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_installed_script_exits_1_on_an_invalid_table(tmp_path: Path) -> None:
    bad = tmp_path / "thresholds.toml"
    bad.write_text(edit_rule(SHIPPED_TEXT, "high_error_rate", 'for = "5m"', 'for = "-5m"'))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEK_SENTINEL_")}
    done = subprocess.run(
        [str(SCRIPT), "validate", "-c", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"  {bad}: rules[0].for: '-5m' is negative" in done.stderr


# ------------------------------------------------------------------------------------------------
# bad input: one readable line per problem
# ------------------------------------------------------------------------------------------------


def test_malformed_toml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = edit(SHIPPED_TEXT, "auto_rollback = true", "auto_rollback = tru")
    run = validate_text(capsys, tmp_path, text)
    assert_one_problem(run, str(tmp_path / "thresholds.toml"), "not valid TOML", "line 15")


def test_unknown_top_level_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = validate_text(capsys, tmp_path, "sentinal = 1\n" + SHIPPED_TEXT)
    reason = assert_one_problem(run, f"{tmp_path / 'thresholds.toml'}: sentinal")
    assert reason == "unknown key"


def test_unknown_key_in_a_rule(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = edit_rule(SHIPPED_TEXT, "high_error_rate", 'above = "5%"', 'thresold = "5%"')
    run = validate_text(capsys, tmp_path, text)
    reason = assert_one_problem(run, f"{tmp_path / 'thresholds.toml'}: rules[0].thresold")
    assert reason == "unknown key"


def test_unknown_key_in_a_probe(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = edit(SHIPPED_TEXT, 'start_grace = "60s"', 'start_grase = "60s"')
    run = validate_text(capsys, tmp_path, text)
    reason = assert_one_problem(run, f"{tmp_path / 'thresholds.toml'}: probes.app.start_grase")
    assert reason == "unknown key"


def test_unknown_key_in_a_probe_signal(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = edit(SHIPPED_TEXT, 'measure = "query_latency"', 'measur = "query_latency"')
    run = validate_text(capsys, tmp_path, text)
    where = f"{tmp_path / 'thresholds.toml'}: probes.database.signals.db_query_seconds.measur"
    assert assert_one_problem(run, where) == "unknown key"


def test_negative_window(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = edit_rule(SHIPPED_TEXT, "high_error_rate", 'for = "5m"', 'for = "-5m"')
    run = validate_text(capsys, tmp_path, text)
    assert_one_problem(run, f"{tmp_path / 'thresholds.toml'}: rules[0].for", "'-5m' is negative")


def test_bare_number_duration(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = edit_rule(SHIPPED_TEXT, "high_error_rate", 'for = "5m"', "for = 300")
    run = validate_text(capsys, tmp_path, text)
    assert_one_problem(
        run, f"{tmp_path / 'thresholds.toml'}: rules[0].for", "300 has no unit", "'300s'"
    )


def test_ratio_threshold_above_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = edit_rule(SHIPPED_TEXT, "high_error_rate", 'above = "5%"', "above = 1.5")
    run = validate_text(capsys, tmp_path, text)
    assert_one_problem(
        run, f"{tmp_path / 'thresholds.toml'}: rules[0].above", "1.5 is outside [0, 1]", "'5%'"
    )


def test_ratio_threshold_above_100_percent(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = edit_rule(SHIPPED_TEXT, "high_error_rate", 'above = "5%"', 'above = "150%"')
    run = validate_text(capsys, tmp_path, text)
    where = f"{tmp_path / 'thresholds.toml'}: rules[0].above"
    assert_one_problem(run, where, "'150%' is outside [0, 1]")


def test_duplicate_rule_names(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = edit(SHIPPED_TEXT, 'name = "integrity_violations"', 'name = "data_corruption"')
    run = validate_text(capsys, tmp_path, text)
    first, second = RULE_INDEX["data_corruption"], RULE_INDEX["integrity_violations"]
    where = f"{tmp_path / 'thresholds.toml'}: rules[{second}].name"
    assert_one_problem(run, where, "duplicate rule name 'data_corruption'", f"rules[{first}]")


def test_unknown_playbook(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = edit_rule(SHIPPED_TEXT, "security_breach", "playbook = ", 'playbook = "x" #')
    run = validate_text(capsys, tmp_path, text)
    where = f"{tmp_path / 'thresholds.toml'}: {at('security_breach', 'playbook')}"
    assert_one_problem(run, where, "unknown playbook 'x'", "security_breach")


def test_rule_on_a_signal_no_probe_defines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = edit_rule(SHIPPED_TEXT, "database_unreachable", 'signal = "db_up"', 'signal = "db_upp"')
    run = validate_text(capsys, tmp_path, text)
    where = f"{tmp_path / 'thresholds.toml'}: {at('database_unreachable', 'signal')}"
    assert_one_problem(run, where, "unknown signal 'db_upp'", "db_up")


def test_rule_on_a_signal_whose_probe_was_removed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    probe = '[probes.app_container]\nkind = "docker"\ncontainer = "spek-app"\n'
    probe += 'signals.memory_bytes = { unit = "bytes", measure = "memory_bytes" }\n'
    run = validate_text(capsys, tmp_path, edit(SHIPPED_TEXT, probe, ""))
    file = tmp_path / "thresholds.toml"
    assert_invalid(run, 2)  # the memory_leak rule and the post-rollback memory check
    assert run.problems[0].startswith(f"{file}: {at('memory_leak', 'signal')}: unknown signal")
    assert run.problems[1].startswith(f"{file}: validation.checks[2].signal: unknown signal")


def test_unknown_rule_kind(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = edit_rule(SHIPPED_TEXT, "memory_leak", 'kind = "trend"', 'kind = "trending"')
    run = validate_text(capsys, tmp_path, text)
    where = f"{tmp_path / 'thresholds.toml'}: rules[{RULE_INDEX['memory_leak']}]"
    assert_one_problem(run, where, "unknown kind 'trending'", "'threshold'", "'trend'")


def test_immediate_rule_without_playbook(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = edit_rule(SHIPPED_TEXT, "security_breach", 'playbook = "security_breach"\n', "")
    run = validate_text(capsys, tmp_path, text)
    where = f"{tmp_path / 'thresholds.toml'}: {at('security_breach', 'playbook')}"
    assert_one_problem(run, where, "immediate rule must name the playbook")


def test_missing_breach_on_an_immediate_rule(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = edit_rule(SHIPPED_TEXT, "app_wont_start", 'for = "1m"', 'for = "1m"\nmissing = "breach"')
    run = validate_text(capsys, tmp_path, text)
    where = f"{tmp_path / 'thresholds.toml'}: {at('app_wont_start', 'missing')}"
    assert_one_problem(run, where, "'breach' is not allowed on an immediate rule")


def test_missing_breach_is_allowed_on_an_evaluate_rule(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = edit_rule(SHIPPED_TEXT, "low_render_fps", 'for = "5m"', 'for = "5m"\nmissing = "breach"')
    assert validate_text(capsys, tmp_path, text).code == 0


def test_clear_below_above_the_threshold(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = edit_rule(SHIPPED_TEXT, "high_error_rate", 'clear_below = "4%"', 'clear_below = "6%"')
    run = validate_text(capsys, tmp_path, text)
    where = f"{tmp_path / 'thresholds.toml'}: rules[0].clear_below"
    assert_one_problem(run, where, "at or below the threshold '5%'")


def test_all_problems_in_one_file_are_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = edit_rule(SHIPPED_TEXT, "high_error_rate", 'above = "5%"', 'above = "150%"')
    text = edit_rule(text, "security_breach", 'playbook = "security_breach"', 'playbook = "x"')
    text = edit_rule(text, "low_render_fps", 'signal = "render_fps"', 'signal = "fps"')
    text = edit(text, 'name = "integrity_violations"', 'name = "data_corruption"')
    run = validate_text(capsys, tmp_path, text)
    assert_invalid(run, 4)
    assert [line.split(": ")[1] for line in run.problems] == [
        "rules[0].above",
        at("integrity_violations", "name"),
        at("security_breach", "playbook"),
        at("low_render_fps", "signal"),
    ]


def test_all_problems_in_one_rule_are_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = edit_rule(SHIPPED_TEXT, "security_breach", 'playbook = "security_breach"', "")
    text = edit_rule(text, "security_breach", 'signal = "security_breach"', 'signal = "breach"')
    text = edit_rule(
        text, "security_breach", 'kind = "event"', 'kind = "event"\nmissing = "breach"'
    )
    run = validate_text(capsys, tmp_path, text)
    assert_invalid(run, 3)
    assert [line.split(": ")[1] for line in run.problems] == [
        at("security_breach", "playbook"),
        at("security_breach", "missing"),
        at("security_breach", "signal"),
    ]


def test_all_shape_problems_in_one_file_are_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = "sentinal = 1\n" + SHIPPED_TEXT
    text = edit_rule(text, "high_error_rate", 'for = "5m"', 'for = "-5m"')
    text = edit_rule(text, "memory_leak", 'kind = "trend"', 'kind = "trending"')
    text = edit(text, 'start_grace = "60s"', 'start_grase = "60s"')
    run = validate_text(capsys, tmp_path, text)
    assert_invalid(run, 4)
    assert {line.split(": ")[1] for line in run.problems} == {
        "sentinal",
        "rules[0].for",
        f"rules[{RULE_INDEX['memory_leak']}]",
        "probes.app.start_grase",
    }


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = validate(capsys, tmp_path / "nope.toml")
    assert assert_one_problem(run, str(tmp_path / "nope.toml")) == "file not found"


def test_type_mistakes_are_reported_in_plain_words(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = edit(SHIPPED_TEXT, "auto_rollback = true", 'auto_rollback = "yes please"')
    text = edit_rule(text, "high_error_rate", "min_samples = 5", "min_samples = 0")
    text = edit_rule(text, "agent_failures", 'severity = "evaluate"', 'severity = "critical"')
    text = edit_rule(text, "websocket_failures", 'above = "10%"', "above = [10]")
    text = edit(text, 'name = "memory_leak"', 'name = "Memory-Leak"')
    run = validate_text(capsys, tmp_path, text)
    file = tmp_path / "thresholds.toml"
    assert_invalid(run, 5)  # also checks that no pydantic wording leaks into any line
    assert sorted(run.problems) == sorted(
        [
            f"{file}: sentinel.auto_rollback: expected true or false, not 'yes please'",
            f"{file}: rules[0].min_samples: must be at least 1, not 0",
            f"{file}: {at('agent_failures', 'severity')}: "
            "'critical' is not one of 'immediate' or 'evaluate'",
            f"{file}: {at('websocket_failures', 'above')}: "
            "expected a number or a string like '5%', '200ms' or '100MB', not [10]",
            f"{file}: {at('memory_leak', 'name')}: "
            "'Memory-Leak' is not a valid name: lower-case letters, digits and '_', starting a-z",
        ]
    )


# ------------------------------------------------------------------------------------------------
# environment overrides reach the CLI
# ------------------------------------------------------------------------------------------------


def test_invalid_override_in_the_environment_fails_validate_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPEK_SENTINEL_RULES__HIGH_ERROR_RATE__ABOVE", "1.5")
    run = validate(capsys, SHIPPED)
    where = f"{SHIPPED} (overridden by SPEK_SENTINEL_RULES__HIGH_ERROR_RATE__ABOVE): rules[0].above"
    assert_one_problem(run, where, "1.5 is outside [0, 1]")


def test_override_in_the_environment_changes_what_validate_reports(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "auto_rollback=on" in validate(capsys, SHIPPED).out
    monkeypatch.setenv("SPEK_SENTINEL_SENTINEL__AUTO_ROLLBACK", "false")
    run = validate(capsys, SHIPPED)
    assert run.code == 0
    assert "auto_rollback=off" in run.out


def test_config_path_variable_is_used_and_is_not_an_override(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPEK_SENTINEL_CONFIG", str(SHIPPED))
    code = main(["validate"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith(f"{SHIPPED}: valid")
