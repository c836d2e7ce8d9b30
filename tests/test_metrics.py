"""The daemon's metrics: every method fed, the exposition checked by promtool and parsed back."""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from spek_sentinel import __version__
from spek_sentinel.domain.rules import RuleState
from spek_sentinel.service import metrics as metrics_module
from spek_sentinel.service.metrics import (
    CONTENT_TYPE,
    PAGE_OUTCOMES,
    ROLLBACK_OUTCOMES,
    RULE_STATES,
    Metrics,
)

DEPLOY = Path(__file__).parent.parent / "deploy"
_INSTALL_HINT = (
    "promtool not found: install the Debian package `prometheus` (apt-get install prometheus)"
)

# the names deploy/prometheus rules, the Grafana dashboard and the README rely on
EXPECTED = {
    "spek_sentinel_probe_duration_seconds": ("histogram", {"probe"}),
    "spek_sentinel_probe_errors": ("counter", {"probe"}),
    "spek_sentinel_signal_value": ("gauge", {"signal"}),
    "spek_sentinel_rule_state": ("gauge", {"rule", "state"}),
    "spek_sentinel_rule_breaches": ("counter", {"rule"}),
    "spek_sentinel_rollbacks": ("counter", {"playbook", "outcome"}),
    "spek_sentinel_rollback_duration_seconds": ("histogram", {"playbook"}),
    "spek_sentinel_rollback_step_duration_seconds": ("histogram", {"step"}),
    "spek_sentinel_downtime_seconds": ("histogram", {"playbook"}),
    "spek_sentinel_pages": ("counter", {"pager", "outcome"}),
    "spek_sentinel_outbox_pending": ("gauge", set()),
    "spek_sentinel_alerts_open": ("gauge", set()),
    "spek_sentinel_alerts_unacknowledged": ("gauge", set()),
    "spek_sentinel_last_evaluation_timestamp_seconds": ("gauge", set()),
    "spek_sentinel_leader": ("gauge", set()),
    "spek_sentinel_build_info": ("gauge", {"version"}),
    "spek_sentinel_inbound_rejected": ("counter", {"source", "reason"}),
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def promtool_check(exposition: bytes) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(_INSTALL_HINT)
    result = subprocess.run(
        [promtool, "check", "metrics"],
        check=False,
        input=exposition,
        capture_output=True,
        timeout=60,
    )
    output = (result.stdout + result.stderr).decode(errors="replace").strip()
    if result.returncode != 0 or output:
        pytest.fail(f"promtool check metrics complained (exit {result.returncode}):\n{output}")


def parse(exposition: bytes) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``spek_sentinel_<name>{labels}``."""
    return samples[(f"spek_sentinel_{name}", frozenset(labels.items()))]


def fed() -> Metrics:
    """A Metrics instance after one call (at least) of every method."""
    m = Metrics(
        rules=["high_error_rate", "slow_responses"],
        probes=["app_http", "database"],
        pagers=["slack", "pagerduty"],
        playbooks=["high_error_rate"],
    )
    m.probe_observed("app_http", 0.004, errors=0)
    m.probe_observed("app_http", 0.2, errors=0)
    m.probe_observed("database", 31.0, errors=2)  # past the last bucket: only +Inf
    m.signal_observed("error_rate", 0.094)
    m.signal_observed("error_rate", None)  # no data keeps the last usable value
    m.signal_observed("error_rate", math.nan)
    m.signal_observed("latency_p95", math.inf)  # never usable: no series at all
    for state, previous in [
        ("pending", "ok"),
        ("firing", "pending"),
        ("resolved", "firing"),
        ("firing", "resolved"),  # flapping back: a second breach
        ("resolved", "firing"),
    ]:
        m.rule_changed("high_error_rate", state, previous)
    m.rule_changed("slow_responses", RuleState.UNKNOWN, RuleState.OK)
    m.rollback_finished("high_error_rate", "succeeded", duration=170.0, downtime=95.0)
    m.rollback_finished("high_error_rate", "halted", duration=40.0, downtime=None)
    m.step_finished("stop traffic", 2.5)
    m.step_finished("database restore", 200.0)
    m.page_delivered("slack", ok=True, retryable=False)
    m.page_delivered("slack", ok=True, retryable=False)
    m.page_delivered("pagerduty", ok=False, retryable=True)
    m.page_delivered("pagerduty", ok=False, retryable=False)
    m.set_queue(outbox_pending=3, alerts_open=2, alerts_unacked=1)
    m.evaluated(1_795_000_000.5)
    m.set_leader(True)
    m.inbound_rejected("slack", "bad_signature")
    m.inbound_rejected("slack", "bad_signature")
    m.inbound_rejected("pagerduty", "replayed")
    return m


def test_exposition_passes_promtool() -> None:
    promtool_check(fed().exposition())


def test_fresh_instance_passes_promtool() -> None:
    promtool_check(Metrics().exposition())


def test_exactly_the_documented_metrics_with_their_labels() -> None:
    families = {f.name: f for f in text_string_to_metric_families(fed().exposition().decode())}
    assert set(families) == set(EXPECTED)
    for name, (kind, labels) in EXPECTED.items():
        family = families[name]
        assert family.type == kind, name
        assert family.documentation.strip(), f"{name} has no HELP text"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, sample


def test_samples_parse_back() -> None:
    s = parse(fed().exposition())
    v = functools.partial(value, s)

    # probes: histogram counts and sums, errors counted per probe
    assert v("probe_duration_seconds_count", probe="app_http") == 2
    assert v("probe_duration_seconds_sum", probe="app_http") == pytest.approx(0.204)
    assert v("probe_duration_seconds_bucket", probe="app_http", le="0.005") == 1
    assert v("probe_duration_seconds_bucket", probe="app_http", le="0.25") == 2
    assert v("probe_duration_seconds_bucket", probe="database", le="30.0") == 0
    assert v("probe_duration_seconds_bucket", probe="database", le="+Inf") == 1
    assert v("probe_errors_total", probe="app_http") == 0
    assert v("probe_errors_total", probe="database") == 2

    # signals: the last usable value stays; a signal never usable has no series
    assert v("signal_value", signal="error_rate") == 0.094
    signals = [dict(labels) for name, labels in s if name == "spek_sentinel_signal_value"]
    assert signals == [{"signal": "error_rate"}]

    # rules: one-hot state, breaches counted on entering firing only
    for rule, current in [("high_error_rate", "resolved"), ("slow_responses", "unknown")]:
        states = {st: v("rule_state", rule=rule, state=st) for st in RULE_STATES}
        assert states == {st: (1.0 if st == current else 0.0) for st in RULE_STATES}, rule
    assert v("rule_breaches_total", rule="high_error_rate") == 2
    assert v("rule_breaches_total", rule="slow_responses") == 0

    # rollbacks: counted by outcome; a run that never stopped traffic observes no downtime
    for outcome in ROLLBACK_OUTCOMES:
        expected = 1 if outcome in ("succeeded", "halted") else 0
        assert v("rollbacks_total", playbook="high_error_rate", outcome=outcome) == expected, (
            outcome
        )
    assert v("rollback_duration_seconds_count", playbook="high_error_rate") == 2
    assert v("rollback_duration_seconds_sum", playbook="high_error_rate") == 210
    assert v("downtime_seconds_count", playbook="high_error_rate") == 1
    assert v("downtime_seconds_bucket", playbook="high_error_rate", le="120.0") == 1
    assert v("rollback_step_duration_seconds_count", step="stop traffic") == 1
    assert v("rollback_step_duration_seconds_bucket", step="database restore", le="120.0") == 0

    # pages by outcome
    assert v("pages_total", pager="slack", outcome="delivered") == 2
    assert v("pages_total", pager="slack", outcome="retry") == 0
    assert v("pages_total", pager="pagerduty", outcome="retry") == 1
    assert v("pages_total", pager="pagerduty", outcome="failed") == 1
    assert v("pages_total", pager="pagerduty", outcome="delivered") == 0

    # queue, loop, leadership, build, inbound
    assert v("outbox_pending") == 3
    assert v("alerts_open") == 2
    assert v("alerts_unacknowledged") == 1
    assert v("last_evaluation_timestamp_seconds") == 1_795_000_000.5
    assert v("leader") == 1
    assert v("build_info", version=__version__) == 1
    assert v("inbound_rejected_total", source="slack", reason="bad_signature") == 2
    assert v("inbound_rejected_total", source="pagerduty", reason="replayed") == 1

    assert not [name for name, _ in s if name.endswith("_created")]


def test_declared_names_have_series_from_the_start() -> None:
    s = parse(Metrics(rules=["r"], probes=["p"], pagers=["slack"], playbooks=["pb"]).exposition())
    assert value(s, "rule_state", rule="r", state="ok") == 1
    assert value(s, "rule_state", rule="r", state="firing") == 0
    assert value(s, "rule_breaches_total", rule="r") == 0
    assert value(s, "probe_errors_total", probe="p") == 0
    assert value(s, "probe_duration_seconds_count", probe="p") == 0
    for outcome in PAGE_OUTCOMES:
        assert value(s, "pages_total", pager="slack", outcome=outcome) == 0
    for outcome in ROLLBACK_OUTCOMES:
        assert value(s, "rollbacks_total", playbook="pb", outcome=outcome) == 0
    assert value(s, "downtime_seconds_count", playbook="pb") == 0
    assert value(s, "leader") == 0  # not leading until told


def test_leadership_lost_and_unknown_states_refused() -> None:
    m = Metrics()
    m.set_leader(True)
    m.set_leader(False)
    assert value(parse(m.exposition()), "leader") == 0
    with pytest.raises(ValueError, match="unknown rule state 'breached'"):
        m.rule_changed("r", "breached", "ok")
    with pytest.raises(ValueError, match="unknown rule state 'nope'"):
        m.rule_changed("r", "ok", "nope")
    with pytest.raises(ValueError, match="unknown rollback outcome 'ok'"):
        m.rollback_finished("pb", "ok", 1.0, None)
    with pytest.raises(ValueError, match="errors must be >= 0"):
        m.probe_observed("p", 0.1, errors=-1)


def test_fixed_label_sets_match_the_domain() -> None:
    assert RULE_STATES == ("ok", "pending", "firing", "resolved", "unknown")
    assert ROLLBACK_OUTCOMES == ("succeeded", "halted", "failed", "refused", "fenced")
    assert PAGE_OUTCOMES == ("delivered", "retry", "failed")


def test_label_values_are_capped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(metrics_module, "MAX_VALUES_PER_LABEL", 3)
    m = Metrics()
    with caplog.at_level(logging.WARNING, logger="spek_sentinel.service.metrics"):
        for n in range(6):
            m.step_finished(f"migrate down to version {n}", 1.0)
        m.step_finished("migrate down to version 0", 1.0)  # a known value keeps its series
    s = parse(m.exposition())
    steps = {
        dict(labels)["step"]: v
        for (name, labels), v in s.items()
        if name == "spek_sentinel_rollback_step_duration_seconds_count"
    }
    assert steps == {
        "migrate down to version 0": 2,
        "migrate down to version 1": 1,
        "migrate down to version 2": 1,
        "other": 3,
    }
    warnings = [r for r in caplog.records if "label step" in r.getMessage()]
    assert len(warnings) == 1  # said once, not per call
    promtool_check(m.exposition())


def test_instances_are_independent_and_stay_off_the_global_registry() -> None:
    a, b = Metrics(), Metrics()
    a.inbound_rejected("slack", "replayed")
    rejected = value(
        parse(a.exposition()), "inbound_rejected_total", source="slack", reason="replayed"
    )
    assert rejected == 1
    assert not [k for k in parse(b.exposition()) if k[0].startswith("spek_sentinel_inbound")]
    assert not [m.name for m in REGISTRY.collect() if m.name.startswith("spek_sentinel_")]


def test_content_type_is_the_classic_text_format() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


# a metric name as PromQL uses it, and the label names of the selector right after it
_SELECTOR = re.compile(r"\b(spek_sentinel_[a-z0-9_]+)\s*(?:\{([^}]*)\})?")
_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_RECORD = re.compile(r"^\s*-?\s*record:\s*[\"']?([a-zA-Z0-9_:]+)", re.MULTILINE)
_ALWAYS = {"le", "job", "instance", "__name__"}


def queries(path: Path) -> list[str]:
    """The PromQL in a rules file (all of it) or a dashboard (its expr/query strings)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".json":
        return [text]
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                if key in ("expr", "query", "definition") and isinstance(item, str):
                    found.append(item)
                else:
                    walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(text))
    return found


def test_deploy_rules_and_dashboards_use_only_exported_metrics() -> None:
    """Every metric and selector label in deploy/prometheus/*.yml and deploy/grafana/*.json
    exists here: a renamed metric would otherwise silently empty a panel or an alert."""
    exported: dict[str, set[str]] = {}
    for (name, labels), _ in parse(fed().exposition()).items():
        exported.setdefault(name, set()).update(k for k, _ in labels)
    for family, (kind, labels) in EXPECTED.items():  # the family names, as PromQL may say
        exported.setdefault(family, set()).update(labels)
        if kind == "counter":
            exported.setdefault(f"{family}_total", set()).update(labels)
    files = sorted((DEPLOY / "prometheus").glob("*.y*ml")) + sorted(
        (DEPLOY / "grafana").glob("**/*.json")
    )
    problems = []
    for path in files:
        for query in queries(path):
            recorded = set(_RECORD.findall(query))  # the file's own recording rules
            for match in _SELECTOR.finditer(query):
                name, selector = match.group(1), match.group(2) or ""
                if name in recorded:
                    continue
                if name not in exported:
                    problems.append(f"{path.name}: {name} is not exported")
                    continue
                problems.extend(
                    f"{path.name}: {name} has no label {label}"
                    for label in _LABEL.findall(selector)
                    if label not in exported[name] | _ALWAYS
                )
    assert problems == []


def test_readme_documents_every_metric() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for family, (kind, _) in EXPECTED.items():
        name = f"{family}_total" if kind == "counter" else family
        assert f"| `{name}` |" in readme, f"README.md's metrics table lacks {name}"
