"""The metrics `spek-sentinel run` exports on /metrics: the names the Prometheus rules and the
Grafana dashboard may use, with their labels and types (as src/spek_sentinel/service/metrics.py
declares them). Kept in one place so that both are checked against the same list."""

from __future__ import annotations

import re

HISTOGRAMS = {
    "spek_sentinel_probe_duration_seconds": ("probe",),
    "spek_sentinel_rollback_duration_seconds": ("playbook",),
    "spek_sentinel_rollback_step_duration_seconds": ("step",),
    "spek_sentinel_downtime_seconds": ("playbook",),
}
COUNTERS = {
    "spek_sentinel_probe_errors_total": ("probe",),
    "spek_sentinel_rule_breaches_total": ("rule",),
    "spek_sentinel_rollbacks_total": ("playbook", "outcome"),
    "spek_sentinel_pages_total": ("pager", "outcome"),
    "spek_sentinel_inbound_rejected_total": ("source", "reason"),
}
GAUGES = {
    "spek_sentinel_signal_value": ("signal",),
    "spek_sentinel_rule_state": ("rule", "state"),
    "spek_sentinel_outbox_pending": (),
    "spek_sentinel_alerts_open": (),
    "spek_sentinel_alerts_unacknowledged": (),
    "spek_sentinel_last_evaluation_timestamp_seconds": (),
    "spek_sentinel_leader": (),
    "spek_sentinel_build_info": ("version",),
}
METRICS = {**HISTOGRAMS, **COUNTERS, **GAUGES}
# What a scrape adds to every target; rules may use it too.
SCRAPE_SERIES = {"up"}

_NAME = re.compile(r"\bspek_sentinel_[a-z0-9_]+")
_HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def series_names(promql: str) -> set[str]:
    """Every spek_sentinel_* name an expression reads."""
    return set(_NAME.findall(promql))


def unknown_names(promql: str) -> set[str]:
    """The spek_sentinel_* series an expression reads that the daemon does not export."""
    unknown = set()
    for name in series_names(promql):
        if name in METRICS and name not in HISTOGRAMS:
            continue
        base = next((name.removesuffix(s) for s in _HISTOGRAM_SERIES if name.endswith(s)), None)
        if base in HISTOGRAMS:
            continue
        unknown.add(name)
    return unknown
