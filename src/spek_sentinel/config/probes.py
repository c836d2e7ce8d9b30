"""Probe sections: where each signal comes from. One model per ``kind``.

The probes themselves are built in the probes package; here is only what the table may say,
so that a typo is caught by ``validate`` and not at 3 a.m.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from spek_sentinel.config.types import Duration, Name, PositiveDuration, StrictModel, Unit


class SignalSpec(StrictModel):
    """One signal a probe produces. ``unit`` decides how thresholds on it are read."""

    unit: Unit
    query: str | None = None  # prometheus: PromQL
    measure: str | None = None  # the other kinds: which measurement (see each kind)
    sql: str | None = None  # postgres: a query returning one number
    description: str = ""


class ProbeBase(StrictModel):
    measures: ClassVar[frozenset[str]] = frozenset()
    interval: PositiveDuration | None = None  # defaults.interval when absent
    timeout: PositiveDuration = 10.0
    signals: dict[Name, SignalSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _measures_known(self) -> ProbeBase:
        for name, spec in self.signals.items():
            self.check_signal(name, spec)
        return self

    def check_signal(self, name: str, spec: SignalSpec) -> None:
        if spec.query is not None:
            raise ValueError(f"signal {name!r}: 'query' is only for kind = \"prometheus\"")
        if spec.sql is not None:
            raise ValueError(f"signal {name!r}: 'sql' is only for kind = \"postgres\"")
        if spec.measure not in self.measures:
            known = ", ".join(sorted(self.measures))
            raise ValueError(f"signal {name!r}: measure {spec.measure!r} is not one of: {known}")


class PrometheusProbe(ProbeBase):
    kind: Literal["prometheus"]
    url: str

    def check_signal(self, name: str, spec: SignalSpec) -> None:
        if not spec.query or spec.measure is not None or spec.sql is not None:
            raise ValueError(f"signal {name!r}: a prometheus signal needs 'query' (PromQL) only")


class HttpProbe(ProbeBase):
    measures = frozenset({"up", "latency", "error_ratio", "status"})
    kind: Literal["http"]
    url: str
    method: Literal["GET", "HEAD"] = "GET"
    expect_status: int = 200
    start_grace: Duration = 60.0


class WebSocketProbe(ProbeBase):
    measures = frozenset({"failure_ratio", "latency"})
    kind: Literal["websocket"]
    url: str
    attempts: int = Field(default=3, ge=1, le=100)


class PostgresProbe(ProbeBase):
    measures = frozenset(
        {"up", "connect_latency", "query_latency", "checksum_failures", "conflicts"}
    )
    kind: Literal["postgres"]
    dsn_env: str | None = None  # the DSN comes from the environment or a file, never the table
    dsn_file: str | None = None

    def check_signal(self, name: str, spec: SignalSpec) -> None:
        # ``sql`` alone: the number the query returns; with measure "query_latency": its timing
        if spec.sql is not None and spec.measure in (None, "query_latency"):
            return
        if spec.measure == "query_latency":
            raise ValueError(f"signal {name!r}: measure 'query_latency' needs 'sql' to time")
        super().check_signal(name, spec)

    @model_validator(mode="after")
    def _one_dsn_source(self) -> PostgresProbe:
        if (self.dsn_env is None) == (self.dsn_file is None):
            raise ValueError(
                "set exactly one of dsn_env or dsn_file (secrets stay out of the table)"
            )
        return self


class RedisProbe(ProbeBase):
    measures = frozenset({"up", "latency", "used_memory", "connected_clients"})
    kind: Literal["redis"]
    url_env: str


class DockerProbe(ProbeBase):
    measures = frozenset({"up", "healthy", "restart_count", "memory_bytes", "oom_killed"})
    kind: Literal["docker"]
    container: str
    start_grace: Duration = 60.0


class ProcessProbe(ProbeBase):
    measures = frozenset({"up", "rss"})
    kind: Literal["process"]
    pid_file: str | None = None
    match: str | None = None


class PushedProbe(ProbeBase):
    """Signals confirmed by a human or another system (CLI ``signal`` or the API)."""

    measures = frozenset({"event", "value"})
    kind: Literal["pushed"]


Probe = Annotated[
    PrometheusProbe
    | HttpProbe
    | WebSocketProbe
    | PostgresProbe
    | RedisProbe
    | DockerProbe
    | ProcessProbe
    | PushedProbe,
    Field(discriminator="kind"),
]
PROBE_KINDS = (
    "prometheus",
    "http",
    "websocket",
    "postgres",
    "redis",
    "docker",
    "process",
    "pushed",
)
