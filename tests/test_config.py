"""Loading thresholds.toml: the shipped table is the runbook, units, overrides, all-or-nothing.

Bad-input cases as the on-call engineer meets them (through the CLI) are in test_validate_cli.py.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spek_sentinel.config import Config, load_config
from spek_sentinel.domain.errors import ConfigError, ConfigProblem
from spek_sentinel.domain.rules import Event, Relative, Rule, Severity, Threshold, Trend

SHIPPED = Path(__file__).resolve().parent.parent / "thresholds.toml"
SHIPPED_TEXT = SHIPPED.read_text(encoding="utf-8")
RULE_INDEX = {row["name"]: i for i, row in enumerate(tomllib.loads(SHIPPED_TEXT)["rules"])}
NO_ENV: Mapping[str, str] = {}
MINUTE = 60.0
HOUR = 3600.0


# ------------------------------------------------------------------------------------------------
# helpers: every bad or changed table is the shipped one with one visible edit
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


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "thresholds.toml"
    path.write_text(text, encoding="utf-8")
    return path


def shipped(environ: Mapping[str, str] = NO_ENV) -> Config:
    return load_config(SHIPPED, environ=environ)


def rule(config: Config, name: str) -> Rule:
    [found] = [r for r in config.rules if r.name == name]
    return found


def threshold(config: Config, name: str) -> Threshold:
    condition = rule(config, name).condition
    assert isinstance(condition, Threshold)
    return condition


def problems(path: Path, environ: Mapping[str, str] = NO_ENV) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ)
    assert caught.value.problems, "a ConfigError always carries at least one problem"
    return caught.value.problems


def only_problem(path: Path, environ: Mapping[str, str] = NO_ENV) -> ConfigProblem:
    found = problems(path, environ)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


# ------------------------------------------------------------------------------------------------
# the shipped table is the runbook's "When to Rollback" and "Post-Rollback Validation" tables
# ------------------------------------------------------------------------------------------------


def test_shipped_table_loads() -> None:
    config = shipped()
    assert config.path == SHIPPED
    assert len(config.watch_rules) == 12
    assert len(config.rules) == 12 + 4  # watch rules, then the four post-rollback checks


def test_error_rate_rule_is_immediate_above_5_percent_sustained_5_minutes() -> None:
    config = shipped()
    error_rate = rule(config, "high_error_rate")
    assert error_rate.signal == "error_rate"
    assert error_rate.severity is Severity.IMMEDIATE
    assert error_rate.condition == Threshold(">", 0.05, clear=0.04, min_volume=100)
    assert error_rate.for_ == 5 * MINUTE
    assert error_rate.min_samples == 5
    assert error_rate.playbook == "high_error_rate"


@pytest.mark.parametrize(
    ("name", "signal", "playbook"),
    [
        ("data_corruption", "data_corruption", "data_corruption"),
        ("integrity_violations", "integrity_violations", "data_corruption"),
        ("security_breach", "security_breach", "security_breach"),
        ("migration_failed", "migration_failed", "migration_failed"),
    ],
)
def test_confirmed_conditions_are_immediate_events(name: str, signal: str, playbook: str) -> None:
    confirmed = rule(shipped(), name)
    assert confirmed.signal == signal
    assert confirmed.severity is Severity.IMMEDIATE
    assert confirmed.condition == Event(at_least=1)
    assert confirmed.for_ == 0  # fires on the first confirmed event
    assert confirmed.playbook == playbook


@pytest.mark.parametrize(
    ("name", "signal"), [("app_wont_start", "app_up"), ("database_unreachable", "db_up")]
)
def test_app_and_database_down_are_immediate_when_up_drops_below_1(name: str, signal: str) -> None:
    down = rule(shipped(), name)
    assert down.signal == signal
    assert down.severity is Severity.IMMEDIATE
    assert down.condition == Threshold("<", 1.0)
    assert down.for_ == 1 * MINUTE
    assert down.playbook == "high_error_rate"


def test_slow_responses_evaluates_50_percent_over_the_pre_release_baseline() -> None:
    slow = rule(shipped(), "slow_responses")
    assert slow.signal == "latency_p95"
    assert slow.severity is Severity.EVALUATE
    assert isinstance(slow.condition, Relative)
    assert slow.condition.increase == 0.5
    assert slow.condition.clear_increase == 0.25
    assert slow.condition.baseline.method == "before_release"
    assert slow.condition.baseline.window == 1 * HOUR
    assert slow.for_ == 5 * MINUTE
    assert slow.playbook == "performance_degradation"


def test_memory_leak_evaluates_continuous_growth_as_a_trend() -> None:
    leak = rule(shipped(), "memory_leak")
    assert leak.signal == "memory_bytes"
    assert leak.severity is Severity.EVALUATE
    assert leak.condition == Trend(
        window=30 * MINUTE, min_growth=0.2, min_rising=0.7, min_samples=5, warmup=10 * MINUTE
    )
    assert leak.playbook == "performance_degradation"


WARNINGS = [
    # rule, signal, condition, playbook
    (
        "websocket_failures",
        "websocket_failure_ratio",
        Threshold(">", 0.10, 0.08),
        "high_error_rate",
    ),
    ("low_render_fps", "render_fps", Threshold("<", 30.0, 33.0), "performance_degradation"),
    ("agent_failures", "agent_failure_ratio", Threshold(">", 0.20, 0.15, 10), "high_error_rate"),
]


@pytest.mark.parametrize(("name", "signal", "condition", "playbook"), WARNINGS)
def test_warning_thresholds_evaluate_at_the_runbook_numbers(
    name: str, signal: str, condition: Threshold, playbook: str
) -> None:
    warning = rule(shipped(), name)
    assert warning.signal == signal
    assert warning.severity is Severity.EVALUATE
    assert warning.condition == condition
    assert warning.for_ == 5 * MINUTE
    assert warning.playbook == playbook


def test_post_rollback_checks_are_the_validation_table() -> None:
    config = shipped()
    checks = {r.name: r for r in config.rules if r.phase == "post_rollback"}
    # "stay below X" compiles to "breach at >= X"
    assert {name: (r.signal, r.condition) for name, r in checks.items()} == {
        "validation.error_rate": ("error_rate", Threshold(">=", 0.01)),
        "validation.api_response_time": ("api_latency_p95", Threshold(">=", 0.200)),
        "validation.memory": ("memory_bytes", Threshold(">=", 100e6)),
        "validation.database_queries": ("db_query_seconds", Threshold(">=", 0.050)),
    }
    assert all(r.severity is Severity.EVALUATE and r.playbook is None for r in checks.values())
    assert config.policy.monitor_for == 1 * HOUR


def test_cooldown_is_60_minutes_with_auto_rollback_on() -> None:
    policy = shipped().policy
    assert policy.cooldown == 60 * MINUTE
    assert policy.auto_rollback is True


def test_every_rule_names_an_existing_playbook_and_the_runbook_scenarios_exist() -> None:
    config = shipped()
    assert set(config.model.playbooks) == {
        "migration_failed",
        "high_error_rate",
        "data_corruption",
        "performance_degradation",
        "security_breach",
    }
    for watch in config.watch_rules:
        assert watch.playbook in config.model.playbooks, watch.name


def test_no_immediate_rule_rolls_back_on_missing_data() -> None:
    immediate = [r for r in shipped().watch_rules if r.severity is Severity.IMMEDIATE]
    assert [r.name for r in immediate] == [
        "high_error_rate",
        "data_corruption",
        "integrity_violations",
        "security_breach",
        "migration_failed",
        "app_wont_start",
        "database_unreachable",
    ]
    assert all(r.missing != "breach" for r in immediate)


# ------------------------------------------------------------------------------------------------
# units: a threshold is read in its signal's unit
# ------------------------------------------------------------------------------------------------


def test_percent_string_is_the_same_ratio_as_the_plain_number(tmp_path: Path) -> None:
    text = edit_rule(SHIPPED_TEXT, "high_error_rate", 'above = "5%"', "above = 0.05")
    plain = load_config(write(tmp_path, text), environ=NO_ENV)
    assert threshold(plain, "high_error_rate").threshold == 0.05
    assert threshold(shipped(), "high_error_rate").threshold == 0.05


def test_milliseconds_on_a_seconds_signal_are_read_as_seconds(tmp_path: Path) -> None:
    text = edit(SHIPPED_TEXT, 'below = "200ms"', 'below = "1.5s"')
    config = load_config(write(tmp_path, text), environ=NO_ENV)
    assert threshold(config, "validation.api_response_time").threshold == 1.5
    assert threshold(shipped(), "validation.api_response_time").threshold == 0.2
    assert threshold(shipped(), "validation.database_queries").threshold == 0.05


def test_megabytes_on_a_bytes_signal_are_read_as_bytes(tmp_path: Path) -> None:
    text = edit(SHIPPED_TEXT, 'below = "100MB"', 'below = "512MiB"')
    config = load_config(write(tmp_path, text), environ=NO_ENV)
    assert threshold(config, "validation.memory").threshold == 512 * 2**20
    assert threshold(shipped(), "validation.memory").threshold == 100_000_000


def test_size_on_a_count_signal_is_rejected(tmp_path: Path) -> None:
    # The memory check pointed at a count signal: "100MB" means nothing for a count.
    memory_check = 'signal = "memory_bytes"\nbelow'
    text = edit(SHIPPED_TEXT, memory_check, 'signal = "integrity_violations"\nbelow')
    problem = only_problem(write(tmp_path, text))
    assert problem.path == "validation.checks[2].below"
    assert "'100MB'" in problem.reason
    assert "count signal are plain numbers" in problem.reason


def test_unit_string_on_an_fps_signal_is_rejected(tmp_path: Path) -> None:
    text = edit_rule(SHIPPED_TEXT, "low_render_fps", "below = 30\n", 'below = "30fps"\n')
    problem = only_problem(write(tmp_path, text))
    assert problem.path == f"rules[{RULE_INDEX['low_render_fps']}].below"
    assert "plain numbers" in problem.reason


def test_ratio_string_without_percent_sign_is_rejected_with_both_forms(tmp_path: Path) -> None:
    text = edit_rule(SHIPPED_TEXT, "high_error_rate", 'above = "5%"', 'above = "0.05"')
    problem = only_problem(write(tmp_path, text))
    assert problem.path == "rules[0].above"
    assert "0.05" in problem.reason
    assert "'5%'" in problem.reason


def test_percent_on_a_seconds_signal_is_rejected(tmp_path: Path) -> None:
    text = edit(SHIPPED_TEXT, 'below = "200ms"', 'below = "5%"')
    problem = only_problem(write(tmp_path, text))
    assert problem.path == "validation.checks[1].below"
    assert "not a duration" in problem.reason


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_threshold_is_rejected(tmp_path: Path, value: str) -> None:
    # below = nan would never fire; below = inf would always fire
    text = edit_rule(SHIPPED_TEXT, "low_render_fps", "below = 30\n", f"below = {value}\n")
    problem = only_problem(write(tmp_path, text))
    assert problem.path == f"rules[{RULE_INDEX['low_render_fps']}].below"
    assert problem.reason == f"expected a finite number, not {value}"


def test_boolean_threshold_is_rejected_not_read_as_1(tmp_path: Path) -> None:
    text = edit_rule(SHIPPED_TEXT, "high_error_rate", 'above = "5%"', "above = true")
    problem = only_problem(write(tmp_path, text))
    assert problem.path == "rules[0].above"
    assert problem.reason.endswith("not true")


# ------------------------------------------------------------------------------------------------
# environment overrides: SPEK_SENTINEL_<SECTION>__<KEY>, rules picked by name
# ------------------------------------------------------------------------------------------------


def test_override_changes_a_rule_picked_by_name() -> None:
    config = shipped({"SPEK_SENTINEL_RULES__HIGH_ERROR_RATE__ABOVE": "0.08"})
    assert threshold(config, "high_error_rate") == Threshold(">", 0.08, clear=0.04, min_volume=100)
    assert threshold(config, "agent_failures").threshold == 0.20  # other rules untouched


def test_override_value_is_read_in_the_signal_unit() -> None:
    config = shipped({"SPEK_SENTINEL_RULES__HIGH_ERROR_RATE__ABOVE": "8%"})
    assert threshold(config, "high_error_rate").threshold == 0.08


def test_override_auto_rollback_false_is_shadow_mode() -> None:
    config = shipped({"SPEK_SENTINEL_SENTINEL__AUTO_ROLLBACK": "false"})
    assert config.policy.auto_rollback is False


def test_override_cooldown_duration() -> None:
    config = shipped({"SPEK_SENTINEL_SENTINEL__COOLDOWN": "30m"})
    assert config.policy.cooldown == 30 * MINUTE


def test_override_a_post_rollback_check_picked_by_name() -> None:
    config = shipped({"SPEK_SENTINEL_VALIDATION__CHECKS__MEMORY__BELOW": "200MB"})
    assert threshold(config, "validation.memory").threshold == 200e6


def test_invalid_rule_override_names_the_variable() -> None:
    variable = "SPEK_SENTINEL_RULES__HIGH_ERROR_RATE__ABOVE"
    [problem] = problems(SHIPPED, {variable: "1.5"})
    assert problem.source == f"{SHIPPED} (overridden by {variable})"
    assert problem.path == "rules[0].above"
    assert "outside [0, 1]" in problem.reason


def test_invalid_cooldown_override_names_the_variable() -> None:
    [problem] = problems(SHIPPED, {"SPEK_SENTINEL_SENTINEL__COOLDOWN": "30"})
    assert problem.source == f"{SHIPPED} (overridden by SPEK_SENTINEL_SENTINEL__COOLDOWN)"
    assert problem.path == "sentinel.cooldown"
    assert "30 has no unit" in problem.reason


def test_invalid_boolean_override_names_the_variable() -> None:
    [problem] = problems(SHIPPED, {"SPEK_SENTINEL_SENTINEL__AUTO_ROLLBACK": "perhaps"})
    assert "SPEK_SENTINEL_SENTINEL__AUTO_ROLLBACK" in problem.source
    assert problem.path == "sentinel.auto_rollback"
    assert problem.reason == "expected true or false, not 'perhaps'"


def test_override_of_a_rule_that_does_not_exist_is_an_error() -> None:
    [problem] = problems(SHIPPED, {"SPEK_SENTINEL_RULES__NO_SUCH_RULE__ABOVE": "0.1"})
    assert problem.source == "SPEK_SENTINEL_RULES__NO_SUCH_RULE__ABOVE"
    assert "no entry named 'no_such_rule'" in problem.reason
    assert "high_error_rate" in problem.reason  # the names it could have meant


def test_override_of_an_unknown_key_is_an_error() -> None:
    [problem] = problems(SHIPPED, {"SPEK_SENTINEL_SENTINEL__COOLDWN": "30m"})
    assert problem.source == f"{SHIPPED} (overridden by SPEK_SENTINEL_SENTINEL__COOLDWN)"
    assert problem.path == "sentinel.cooldwn"
    assert problem.reason == "unknown key"


def test_override_of_the_rule_list_itself_asks_for_a_rule_name() -> None:
    [problem] = problems(SHIPPED, {"SPEK_SENTINEL_RULES__ABOVE": "0.1"})
    assert problem.source == "SPEK_SENTINEL_RULES__ABOVE"
    assert "SPEK_SENTINEL_RULES__<NAME>__ABOVE" in problem.reason


@pytest.mark.parametrize(
    "variable", ["SPEK_SENTINEL_RULES____ABOVE", "SPEK_SENTINEL_SENTINEL__", "SPEK_SENTINEL___X"]
)
def test_malformed_override_variable_is_reported(variable: str) -> None:
    [problem] = problems(SHIPPED, {variable: "1"})
    assert problem.source == variable
    assert "SPEK_SENTINEL_<SECTION>__<KEY>" in problem.reason


def test_variables_without_double_underscore_are_not_overrides() -> None:
    unrelated = {
        "SPEK_SENTINEL_CONFIG": "/nowhere/thresholds.toml",
        "SPEK_SENTINEL_LOG_LEVEL": "debug",
        "OTHER_APP__SENTINEL__COOLDOWN": "1m",
    }
    assert shipped(unrelated) == shipped()


def test_override_problems_are_reported_with_the_file_problems(tmp_path: Path) -> None:
    text = edit_rule(SHIPPED_TEXT, "memory_leak", 'window = "30m"', 'window = "30"')
    found = problems(
        write(tmp_path, text),
        {"SPEK_SENTINEL_RULES__NOPE__ABOVE": "0.1", "SPEK_SENTINEL_SENTINEL__COOLDOWN": "-1m"},
    )
    file = str(tmp_path / "thresholds.toml")
    assert [(p.source, p.path) for p in found] == [
        ("SPEK_SENTINEL_RULES__NOPE__ABOVE", ""),
        (f"{file} (overridden by SPEK_SENTINEL_SENTINEL__COOLDOWN)", "sentinel.cooldown"),
        (file, f"rules[{RULE_INDEX['memory_leak']}].window"),
    ]


def test_load_config_does_not_change_the_environment_mapping() -> None:
    environ = {"SPEK_SENTINEL_SENTINEL__COOLDOWN": "30m", "SPEK_SENTINEL_CONFIG": "x.toml"}
    before = dict(environ)
    shipped(environ)
    assert environ == before


# ------------------------------------------------------------------------------------------------
# all or nothing: a Config, or a ConfigError carrying every problem; never a partial result
# ------------------------------------------------------------------------------------------------


def test_one_bad_rule_yields_no_config_not_the_other_eleven(tmp_path: Path) -> None:
    text = edit_rule(SHIPPED_TEXT, "agent_failures", 'above = "20%"', 'above = "120%"')
    result: Config | None = None
    with pytest.raises(ConfigError) as caught:
        result = load_config(write(tmp_path, text), environ=NO_ENV)
    assert result is None
    bad = RULE_INDEX["agent_failures"]
    assert [p.path for p in caught.value.problems] == [f"rules[{bad}].above"]


def test_a_valid_override_is_not_applied_when_another_is_invalid() -> None:
    environ = {
        "SPEK_SENTINEL_SENTINEL__AUTO_ROLLBACK": "false",  # valid on its own
        "SPEK_SENTINEL_RULES__HIGH_ERROR_RATE__FOR": "-5m",
    }
    result: Config | None = None
    with pytest.raises(ConfigError) as caught:
        result = shipped(environ)
    assert result is None
    assert [p.path for p in caught.value.problems] == ["rules[0].for"]
    assert shipped().policy.auto_rollback is True  # nothing leaked into a later load


BASELINE = 'baseline = { method = "before_release", window = "1h", min_samples = 20 }'
APP_UP = 'signals.app_up = { unit = "bool", measure = "up" }'
MISSHAPEN: dict[str, tuple[str, str]] = {
    # (old, new): the edit to the shipped table; old "" means new is the whole file
    "empty": ("", ""),
    "rules-scalar": ("", "rules = 5\n"),
    "rules-of-ints": ("", "rules = [1]\nprobes = {}\n"),
    "probe-scalar": ("", 'probes = { p = 3 }\nrules = ["x"]\n'),
    "duration-table": ('cooldown = "60m"', "cooldown = { m = 60 }"),
    "kind-int": ('kind = "trend"', "kind = 5"),
    "baseline-list": (BASELINE, "baseline = [1]"),
    "signal-scalar": (APP_UP, "signals.app_up = 1"),
    "database-scalar": ('database = ["migrate_down", "restore"]', "database = 5"),
}


@pytest.mark.parametrize(("old", "new"), MISSHAPEN.values(), ids=MISSHAPEN.keys())
def test_misshapen_tables_raise_config_error_and_nothing_else(
    tmp_path: Path, old: str, new: str
) -> None:
    text = edit(SHIPPED_TEXT, old, new) if old else new
    for problem in problems(write(tmp_path, text)):
        assert problem.source == str(tmp_path / "thresholds.toml")
        assert problem.path, "each case is valid TOML that the schema rejects at a key"
        assert problem.reason


def test_unreadable_file_raises_config_error(tmp_path: Path) -> None:
    binary = tmp_path / "thresholds.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert only_problem(binary).reason.startswith("cannot read")
    assert only_problem(tmp_path).reason.startswith("cannot read")  # a directory


OVERRIDE_KEYS = st.sampled_from(
    [
        "SPEK_SENTINEL_SENTINEL__COOLDOWN",
        "SPEK_SENTINEL_SENTINEL__AUTO_ROLLBACK",
        "SPEK_SENTINEL_DEFAULTS__INTERVAL",
        "SPEK_SENTINEL_RULES__HIGH_ERROR_RATE__ABOVE",
        "SPEK_SENTINEL_RULES__HIGH_ERROR_RATE__KIND",
        "SPEK_SENTINEL_RULES__SLOW_RESPONSES__BASELINE__WINDOW",
        "SPEK_SENTINEL_RULES__LOW_RENDER_FPS__BELOW",
        "SPEK_SENTINEL_VALIDATION__CHECKS__MEMORY__BELOW",
        "SPEK_SENTINEL_PROBES__APP__SIGNALS",
        "SPEK_SENTINEL_PLAYBOOKS__SECURITY_BREACH__DATABASE",
        "SPEK_SENTINEL_RULES",
    ]
)
OVERRIDE_VALUES = st.one_of(
    st.sampled_from(["0.08", "8%", "150%", "30m", "-5m", "300", "true", "nan", "[1]", "{a=1}", ""]),
    st.text(max_size=12),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(OVERRIDE_KEYS, OVERRIDE_VALUES, max_size=4))
def test_any_overrides_give_a_config_or_a_config_error(environ: dict[str, str]) -> None:
    try:
        config = shipped(environ)
    except ConfigError as exc:
        assert exc.problems
        assert all(p.source and p.reason for p in exc.problems)
    else:
        assert isinstance(config, Config)
        assert len(config.watch_rules) == 12


def test_negative_threshold_on_a_non_negative_signal_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, edit_rule(SHIPPED_TEXT, "low_render_fps", "below = 30", "below = -30"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=NO_ENV)
    [problem] = caught.value.problems
    assert problem.path == f"rules[{RULE_INDEX['low_render_fps']}].below"
    assert "negative" in problem.reason


def test_rules_know_the_probe_behind_their_signal() -> None:
    config = shipped()
    assert rule(config, "high_error_rate").probe == "app_metrics"
    assert rule(config, "database_unreachable").probe == "database"
    assert rule(config, "validation.memory").probe == "app_container"
