"""What ``/metrics`` exposes (Prometheus text format). The names match the queries in
spek-sentinel's thresholds.toml: error rate from ``http_requests_total{status}``, p95 from
``http_request_duration_seconds``, the WebSocket failure ratio, agent outcomes, and the process
collector's ``process_resident_memory_bytes``."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        # No *_created series. A process-wide switch: fine, the app owns its process.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu, open fds
        self.build_info = Gauge(
            "spek_app_build_info",
            "The release running: 1 with its version and schema as labels",
            ["version", "schema", "fault"],
            registry=r,
        )
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests answered, by route and status (/metrics itself is not counted)",
            ["route", "method", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.ws_attempts = Counter(
            "websocket_connection_attempts_total",
            "WebSocket upgrade requests received on /ws",
            registry=r,
        )
        self.ws_failures = Counter(
            "websocket_connection_failures_total",
            "WebSocket upgrades that did not end in an open connection",
            registry=r,
        )
        self.ws_messages = Counter(
            "websocket_messages_total", "WebSocket messages echoed", registry=r
        )
        self.agent_tasks = Counter(
            "agent_tasks_total",
            "Agent tasks finished, by outcome (succeeded, failed)",
            ["outcome"],
            registry=r,
        )
        self.unauthorized = Counter(
            "security_unauthorized_access_total",
            "Requests served on a protected route without valid credentials: a breach",
            ["route"],
            registry=r,
        )
        self.auth_failures = Counter(
            "security_auth_failures_total",
            "Requests refused on a protected route for missing or bad credentials",
            ["route"],
            registry=r,
        )
        self.leaked = Gauge(
            "spek_app_retained_bytes",
            "Bytes the app holds on to in its request history (grows only in v2.0.0-leak)",
            registry=r,
        )
        for outcome in ("succeeded", "failed"):
            self.agent_tasks.labels(outcome)

    def render(self) -> bytes:
        return generate_latest(self.registry)
