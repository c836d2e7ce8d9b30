"""`spek-sentinel check`: run every probe once, judge each rule, exit like a Nagios plugin."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, TextIO

from spek_sentinel.commands.common import (
    EXIT_INVALID,
    add_config_option,
    config_path,
    load,
    report_config_error,
)
from spek_sentinel.config import Config
from spek_sentinel.domain.errors import ConfigError
from spek_sentinel.domain.units import format_value
from spek_sentinel.engine.snapshot import NAGIOS_UNKNOWN, RuleCheck, Status
from spek_sentinel.service.check import CheckReport, run_check

LABELS = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "check",
        help="probe once and judge every rule; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
    )
    add_config_option(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    parser.set_defaults(handler=run)


def _units(config: Config) -> dict[str, str]:
    return {
        signal: spec.unit
        for probe in config.model.probes.values()
        for signal, spec in probe.signals.items()
    }


def _shown(check: RuleCheck, units: dict[str, str]) -> str:
    sample = check.sample
    if sample is None:
        return "-"
    if sample.error is not None:
        return "error"
    if not sample.usable:
        return "no data"
    assert sample.value is not None
    return format_value(sample.value, units.get(check.rule.signal, "count"))


def _summary(report: CheckReport) -> str:
    label = LABELS[report.exit_code]
    breaching = [c.rule.name for c in report.checks if c.status is Status.BREACH]
    blind = [c.rule.name for c in report.checks if c.status is Status.UNKNOWN]
    parts = []
    if breaching:
        parts.append(f"breaching now: {', '.join(breaching)}")
    if blind:
        parts.append(f"blind: {', '.join(blind)}")
    detail = "; ".join(parts) or f"{len(report.checks)} rules within limits"
    return f"SPEK-SENTINEL {label} - {detail}"


def _record(check: RuleCheck, units: dict[str, str]) -> dict[str, object]:
    sample = check.sample
    return {
        "rule": check.rule.name,
        "signal": check.rule.signal,
        "severity": check.rule.severity.value,
        "status": check.status.value,
        "value": sample.value if sample is not None and sample.usable else None,
        "shown": _shown(check, units),
        "error": sample.error if sample is not None else None,
        "detail": check.detail,
    }


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load(args, err)
    if config is None:
        return EXIT_INVALID
    try:
        report = run_check(config, os.environ)
    except ConfigError as exc:
        report_config_error(config_path(args), exc, err)
        return NAGIOS_UNKNOWN
    units = _units(config)
    if args.json:
        body = {
            "status": LABELS[report.exit_code],
            "exit_code": report.exit_code,
            "rules": [_record(check, units) for check in report.checks],
        }
        out.write(json.dumps(body, indent=2) + "\n")
        return report.exit_code
    out.write(_summary(report) + "\n")
    out.write(f"{'RULE':<24} {'SIGNAL':<26} {'VALUE':>12}  {'STATE':<10} {'SEVERITY':<9} DETAIL\n")
    for check in report.checks:
        out.write(
            f"{check.rule.name:<24} {check.rule.signal:<26} {_shown(check, units):>12}  "
            f"{check.status.value:<10} {check.rule.severity.value:<9} {check.detail}\n"
        )
    out.write(
        "(one-shot check: a breach here is the condition now; the daemon also requires "
        "each rule's sustained window)\n"
    )
    return report.exit_code
