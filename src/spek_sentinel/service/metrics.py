"""The daemon's Prometheus metrics, in a registry of their own.

``Metrics`` owns a ``CollectorRegistry`` (never prometheus_client's global one, so tests and a
reloaded daemon can hold several) and is fed through methods that take plain values: no
prometheus_client type leaks to the callers. The daemon serves ``exposition()`` with
``CONTENT_TYPE`` from its own ``/metrics`` route.

Label cardinality stays bounded: every label value is a name from the config (rules,
probes, signals, pagers, playbooks), a rollback step's name (about a dozen; only "migrate
down to version N" carries a value, new at most once per rollback), an inbound source and
refusal reason from the API's fixed set, or one of the fixed outcome/state sets below. Nothing
per-request, per-incident, per-alert or per-series of a split signal is ever a label (a split
signal's metric is its whole-signal value), and no secret is (the config names
secrets by where they are read from, never by value). As a last guard each label keeps at
most ``MAX_VALUES_PER_LABEL`` distinct values; further ones are counted under ``"other"``
(and logged once), so a bug upstream cannot grow the series without end.

Declared names (``Metrics(rules=..., probes=..., ...)``) get their series at zero from the
start, so ``increase()`` and ``absent()`` work before the first event; declared rules start
in state ``ok``, as the engine's state machines do.

``_created`` series are left out of the exposition: prometheus_client adds one per counter
and histogram child, which doubles the series and tells Prometheus nothing it uses.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Iterator
from typing import Final, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from spek_sentinel import __version__
from spek_sentinel.domain.rules import RuleState
from spek_sentinel.rollback.executor import OutcomeStatus

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes
RULE_STATES: Final[tuple[str, ...]] = tuple(state.value for state in RuleState)
ROLLBACK_OUTCOMES: Final[tuple[str, ...]] = get_args(OutcomeStatus)
PAGE_OUTCOMES: Final = ("delivered", "retry", "failed")
MAX_VALUES_PER_LABEL: Final = 200
OTHER: Final = "other"

# 1 ms .. 30 s: a local HTTP probe answers in milliseconds, a PromQL or SQL probe in tenths,
# and the slowest allowed probe timeout is tens of seconds
PROBE_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
)  # fmt: skip
# a whole rollback: seconds (a previous-release swap) to an hour (a large restore)
ROLLBACK_BUCKETS: Final = (
    10.0, 30.0, 60.0, 120.0, 180.0, 300.0, 450.0, 600.0, 900.0, 1800.0, 3600.0,
)  # fmt: skip
# one step: the runbook's phases take 30 s (stop) to 5 min (database), a restore longer
STEP_BUCKETS: Final = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# traffic stopped to traffic back: the runbook targets 5 min and allows at most 10 min
DOWNTIME_BUCKETS: Final = (30.0, 60.0, 120.0, 180.0, 240.0, 300.0, 420.0, 600.0, 900.0, 1800.0)


class Metrics:
    """Every metric the daemon exports, fed by plain-value methods; one registry per instance.

    Thread-safe: the watch loop and the rollback threads may call it concurrently.
    """

    def __init__(
        self,
        *,
        rules: Iterable[str] = (),
        probes: Iterable[str] = (),
        pagers: Iterable[str] = (),
        playbooks: Iterable[str] = (),
        version: str = __version__,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._seen: dict[str, set[str]] = {}
        self._overflowed: set[str] = set()
        r = self.registry

        self._probe_duration = Histogram(
            "spek_sentinel_probe_duration_seconds",
            "Time one poll of a probe took, errors and timeouts included.",
            ["probe"],
            buckets=PROBE_BUCKETS,
            registry=r,
        )
        self._probe_errors = Counter(
            "spek_sentinel_probe_errors_total",
            "Samples a probe returned as errors (unreachable, timeout, bad answer); the rules "
            "judging them count them as unknown, never as a breach.",
            ["probe"],
            registry=r,
        )
        self._signal_value = Gauge(
            "spek_sentinel_signal_value",
            "Last usable value of a signal (a finite number); errors and no-data leave the "
            "previous value in place, so read it next to probe errors and rule state unknown.",
            ["signal"],
            registry=r,
        )
        self._rule_state = Gauge(
            "spek_sentinel_rule_state",
            "1 for the state a rule is in now and 0 for its other states "
            "(ok, pending, firing, resolved, unknown).",
            ["rule", "state"],
            registry=r,
        )
        self._rule_breaches = Counter(
            "spek_sentinel_rule_breaches_total",
            "Times a rule went into the firing state.",
            ["rule"],
            registry=r,
        )
        self._rollbacks = Counter(
            "spek_sentinel_rollbacks_total",
            "Rollback runs that ended, by playbook and outcome: succeeded, halted (stopped on "
            "purpose, a human was paged), failed (the executor broke), refused (another run "
            "holds it or the plan differs), fenced (another executor took it over).",
            ["playbook", "outcome"],
            registry=r,
        )
        self._rollback_duration = Histogram(
            "spek_sentinel_rollback_duration_seconds",
            "Wall time of a rollback run, from its first step to its end, whatever the outcome.",
            ["playbook"],
            buckets=ROLLBACK_BUCKETS,
            registry=r,
        )
        self._step_duration = Histogram(
            "spek_sentinel_rollback_step_duration_seconds",
            "Time one rollback step took (backup, stop traffic, database restore, ...).",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self._downtime = Histogram(
            "spek_sentinel_downtime_seconds",
            "Time traffic was stopped during a rollback; the runbook targets 300 s and allows "
            "at most 600 s.",
            ["playbook"],
            buckets=DOWNTIME_BUCKETS,
            registry=r,
        )
        self._pages = Counter(
            "spek_sentinel_pages_total",
            "Delivery attempts of pages and notices, by pager and outcome: delivered, retry "
            "(a timeout, 5xx or 429; tried again later), failed (refused for good).",
            ["pager", "outcome"],
            registry=r,
        )
        self._outbox_pending = Gauge(
            "spek_sentinel_outbox_pending",
            "Pages and notices in the outbox not yet delivered.",
            registry=r,
        )
        self._alerts_open = Gauge(
            "spek_sentinel_alerts_open",
            "Alerts not resolved yet.",
            registry=r,
        )
        self._alerts_unacked = Gauge(
            "spek_sentinel_alerts_unacknowledged",
            "Open alerts no human has acknowledged yet.",
            registry=r,
        )
        self._last_evaluation = Gauge(
            "spek_sentinel_last_evaluation_timestamp_seconds",
            "Unix time the rules were last evaluated; a stale value means the watch loop is "
            "stuck or this instance is not leading.",
            registry=r,
        )
        self._leader = Gauge(
            "spek_sentinel_leader",
            "1 while this instance holds the leadership and may act, 0 otherwise.",
            registry=r,
        )
        self._build_info = Gauge(
            "spek_sentinel_build_info",
            "Always 1; the version label says which spek-sentinel is running.",
            ["version"],
            registry=r,
        )
        self._inbound_rejected = Counter(
            "spek_sentinel_inbound_rejected_total",
            "Inbound answers refused (missing or bad signature, expired, replayed, malformed, "
            "too large, channel not configured), by source and reason.",
            ["source", "reason"],
            registry=r,
        )

        self._build_info.labels(version=version).set(1)
        for probe in probes:
            name = self._name("probe", probe)
            self._probe_duration.labels(probe=name)
            self._probe_errors.labels(probe=name)
        for rule in rules:
            name = self._name("rule", rule)
            self._rule_breaches.labels(rule=name)
            self._set_rule_state(name, RuleState.OK.value)
        for playbook in playbooks:
            name = self._name("playbook", playbook)
            for outcome in ROLLBACK_OUTCOMES:
                self._rollbacks.labels(playbook=name, outcome=outcome)
            self._rollback_duration.labels(playbook=name)
            self._downtime.labels(playbook=name)
        for pager in pagers:
            name = self._name("pager", pager)
            for outcome in PAGE_OUTCOMES:
                self._pages.labels(pager=name, outcome=outcome)

    # --- feeding -------------------------------------------------------------------------

    def probe_observed(self, probe: str, duration: float, errors: int) -> None:
        """One poll of ``probe`` took ``duration`` seconds and returned ``errors`` error samples."""
        if errors < 0:
            raise ValueError(f"errors must be >= 0, not {errors}")
        name = self._name("probe", probe)
        self._probe_duration.labels(probe=name).observe(max(duration, 0.0))
        counter = self._probe_errors.labels(probe=name)
        if errors:
            counter.inc(errors)

    def signal_observed(self, signal: str, value: float | None) -> None:
        """The latest sample of ``signal``; None, NaN and infinities keep the previous value."""
        if value is None or not math.isfinite(value):
            return
        self._signal_value.labels(signal=self._name("signal", signal)).set(value)

    def rule_changed(self, rule: str, state: str, previous: str) -> None:
        """``rule`` went from ``previous`` to ``state`` (RuleState values).

        Going into firing from any other state counts one breach.
        """
        for given in (state, previous):
            if given not in RULE_STATES:
                raise ValueError(f"unknown rule state {given!r}; one of {', '.join(RULE_STATES)}")
        name = self._name("rule", rule)
        self._set_rule_state(name, str(state))
        counter = self._rule_breaches.labels(rule=name)
        if state == RuleState.FIRING and previous != RuleState.FIRING:
            counter.inc()

    def rollback_finished(
        self, playbook: str, outcome: str, duration: float, downtime: float | None
    ) -> None:
        """A rollback run ended; ``downtime`` is None when traffic was never stopped."""
        if outcome not in ROLLBACK_OUTCOMES:
            known = ", ".join(ROLLBACK_OUTCOMES)
            raise ValueError(f"unknown rollback outcome {outcome!r}; one of {known}")
        name = self._name("playbook", playbook)
        self._rollbacks.labels(playbook=name, outcome=outcome).inc()
        self._rollback_duration.labels(playbook=name).observe(max(duration, 0.0))
        downtime_child = self._downtime.labels(playbook=name)
        if downtime is not None:
            downtime_child.observe(max(downtime, 0.0))

    def step_finished(self, step: str, duration: float) -> None:
        """One rollback step ended (done or not) after ``duration`` seconds."""
        self._step_duration.labels(step=self._name("step", step)).observe(max(duration, 0.0))

    def page_delivered(self, pager: str, ok: bool, retryable: bool) -> None:
        """One delivery attempt through ``pager`` (``Delivery.ok`` and ``Delivery.retryable``)."""
        outcome = "delivered" if ok else ("retry" if retryable else "failed")
        self._pages.labels(pager=self._name("pager", pager), outcome=outcome).inc()

    def set_queue(self, outbox_pending: int, alerts_open: int, alerts_unacked: int) -> None:
        """The outbox and alert counts as the store has them now."""
        self._outbox_pending.set(outbox_pending)
        self._alerts_open.set(alerts_open)
        self._alerts_unacked.set(alerts_unacked)

    def evaluated(self, at: float) -> None:
        """The rules were evaluated at ``at`` (Unix time, as the watch loop's clock gives it)."""
        self._last_evaluation.set(at)

    def set_leader(self, is_leader: bool) -> None:
        self._leader.set(1 if is_leader else 0)

    def inbound_rejected(self, source: str, reason: str) -> None:
        """An inbound answer from ``source`` was refused for ``reason`` (the API's fixed set)."""
        self._inbound_rejected.labels(
            source=self._name("source", source), reason=self._name("reason", reason)
        ).inc()

    # --- reading -------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text format (version 0.0.4) of every metric, for ``/metrics``."""
        with self._lock:  # no scrape sees a rule in two states, or in none
            return generate_latest(_WithoutCreated(self.registry))

    # --- internals -----------------------------------------------------------------------

    def _set_rule_state(self, rule: str, state: str) -> None:
        with self._lock:
            for candidate in RULE_STATES:
                self._rule_state.labels(rule=rule, state=candidate).set(
                    1 if candidate == state else 0
                )

    def _name(self, label: str, value: str) -> str:
        """``value`` as a label value, or ``"other"`` once ``label`` has too many distinct ones."""
        value = str(value)
        with self._lock:
            seen = self._seen.setdefault(label, set())
            if value in seen:
                return value
            if len(seen) < MAX_VALUES_PER_LABEL:
                seen.add(value)
                return value
            first = label not in self._overflowed
            self._overflowed.add(label)
        if first:
            log.warning(
                "metrics: label %s has %d distinct values; %r and later new ones count as %r",
                label,
                MAX_VALUES_PER_LABEL,
                value,
                OTHER,
            )
        return OTHER


class _WithoutCreated(Collector):
    """The registry's metrics without the ``_created`` samples of counters and histograms."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            if metric.type in ("counter", "histogram", "summary", "gaugehistogram"):
                metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric
