"""deploy/prometheus: the sentinel's own alert rules pass promtool's check and unit tests, and
read only metrics the daemon exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.daemon_metrics import SCRAPE_SERIES, unknown_names

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = PROMETHEUS / "spek-sentinel-rules.yml"
RULE_TESTS = PROMETHEUS / "spek-sentinel-rules.test.yml"
ALERTS = {
    "SpekSentinelDown",
    "SpekSentinelBlind",
    "SpekSentinelRollbackFailed",
    "SpekSentinelPageDeliveryFailing",
    "SpekSentinelNoLeader",
}
_HINT = "install the Debian package `prometheus` (apt-get install prometheus)"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(f"`promtool` not found; {_HINT}", pytrace=False)
    return subprocess.run(
        [found, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False
    )


@dataclass(frozen=True)
class Rule:
    alert: str
    text: str  # the rule's whole YAML block

    @property
    def expr(self) -> str:
        found = re.search(r"^\s+expr:(.*?)^\s+(?:for|labels):", self.text, re.M | re.S)
        assert found is not None, self.text
        return found.group(1)


def rules() -> list[Rule]:
    """The rules, split at each `- alert:` (promtool has checked the YAML itself; the project
    has no YAML parser, and these tests need only names, expressions and keys)."""
    blocks = re.split(r"^(?=[ ]+- alert: )", RULES.read_text(), flags=re.M)[1:]
    found = []
    for block in blocks:
        name = re.match(r"\s+- alert: (\w+)", block)
        assert name is not None
        found.append(Rule(alert=name.group(1), text=block))
    return found


def fired_in_tests() -> set[str]:
    """Alert names that some test case expects to fire (a non-empty exp_alerts)."""
    cases = re.findall(r"alertname: (\w+)\n\s+exp_alerts:(.*)", RULE_TESTS.read_text())
    return {name for name, rest in cases if rest.strip() != "[]"}


def test_promtool_check_rules_passes() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, f"promtool check rules:\n{result.stdout}{result.stderr}"
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, f"promtool test rules:\n{result.stdout}{result.stderr}"
    assert "SUCCESS" in result.stdout


def test_every_alert_is_there_and_unit_tested() -> None:
    assert sorted(rule.alert for rule in rules()) == sorted(ALERTS)
    assert fired_in_tests() == ALERTS, "every alert needs a unit test in which it fires"


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule.alert)
def test_rules_read_only_exported_metrics(rule: Rule) -> None:
    assert unknown_names(rule.expr) == set(), f"{rule.alert} reads series the daemon never exports"
    assert "spek_sentinel_" in rule.expr or any(name in rule.expr for name in SCRAPE_SERIES)


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule.alert)
def test_every_alert_says_how_bad_and_what_to_do(rule: Rule) -> None:
    assert re.search(r"^\s+severity: (critical|warning)$", rule.text, re.M), rule.text
    assert re.search(r"^\s+summary: \S", rule.text, re.M), rule.text
    description = re.search(r"^\s+description: >-\n((?:\s{12}.*\n)+)", rule.text, re.M)
    assert description is not None, rule.text
    assert len(description.group(1).split()) > 15, "a description says what to check"
