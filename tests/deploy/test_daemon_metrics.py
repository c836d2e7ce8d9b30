"""The metric list the rules and the dashboard are checked against is what the daemon's
``Metrics`` really exports: names, types and labels."""

from __future__ import annotations

from deploy.daemon_metrics import COUNTERS, GAUGES, HISTOGRAMS, METRICS
from spek_sentinel.service.metrics import Metrics


def exported() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Exported name -> (type, sorted label names), from the daemon's registry."""
    metrics = Metrics(rules=["r"], probes=["p"], pagers=["x"], playbooks=["b"])
    metrics.rollback_finished("b", "succeeded", 1.0, 1.0)
    metrics.step_finished("stop", 1.0)
    metrics.signal_observed("s", 1.0)
    metrics.inbound_rejected("api", "bad_token")
    found = {}
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {
            label
            for sample in family.samples
            for label in sample.labels
            if label != "le"  # a histogram's bucket bound
        }
        found[name] = (family.type, tuple(sorted(labels)))
    return found


def test_the_list_names_every_exported_metric_and_nothing_else() -> None:
    assert set(exported()) == set(METRICS)


def test_the_list_has_the_types_and_labels_the_daemon_exports() -> None:
    expected = {
        **{name: ("histogram", tuple(sorted(labels))) for name, labels in HISTOGRAMS.items()},
        **{name: ("counter", tuple(sorted(labels))) for name, labels in COUNTERS.items()},
        **{name: ("gauge", tuple(sorted(labels))) for name, labels in GAUGES.items()},
    }
    assert exported() == expected
