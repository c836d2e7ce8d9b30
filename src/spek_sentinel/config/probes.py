"""Probe sections: where each signal comes from. One model per ``kind``.

The probes themselves are built in the probes package; here is only what the table may say,
so that a typo is caught by ``validate`` and not at 3 a.m.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from spek_sentinel.config.types import Duration, Name, PositiveDuration, StrictModel, Unit


class SignalSpec(StrictModel):
    """One signal a probe produces. ``unit`` decides how thresholds on it are read."""

    unit: Unit
    query: str | None = None  # prometheus: PromQL
    # prometheus: PromQL for the traffic behind a ratio (requests in the window), so a rule's
    # min_volume can refuse to judge 1 error in 3 requests
    volume_query: str | None = None
    # prometheus: the query returns one series per value of this label (pod, instance); every
    # rule on the signal is judged per series
    split_by: str | None = None
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
            if spec.split_by is not None and getattr(self, "kind", "") != "prometheus":
                raise ValueError(f"signal {name!r}: 'split_by' is only for kind = \"prometheus\"")
            if spec.volume_query is not None and getattr(self, "kind", "") != "prometheus":
                raise ValueError(
                    f"signal {name!r}: 'volume_query' is only for kind = \"prometheus\""
                )
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
    url: str  # http(s)://host:port[/prefix] of the Prometheus HTTP API
    # the token comes from the environment or a file (re-read each run), never the table
    bearer_token_env: str | None = None
    bearer_token_file: str | None = None
    tls_ca_file: str | None = None
    tls_insecure_skip_verify: bool = False

    def check_signal(self, name: str, spec: SignalSpec) -> None:
        if not spec.query or spec.measure is not None or spec.sql is not None:
            raise ValueError(f"signal {name!r}: a prometheus signal needs 'query' (PromQL) only")
        if spec.split_by is not None and not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", spec.split_by):
            raise ValueError(f"signal {name!r}: split_by {spec.split_by!r} is not a label name")
        if spec.split_by is not None and spec.volume_query is not None:
            raise ValueError(f"signal {name!r}: split_by and volume_query cannot be combined yet")
        for key, query in (("query", spec.query), ("volume_query", spec.volume_query)):
            problem = None if query is None else self.promql_problem(query)
            if problem is not None:
                raise ValueError(f"signal {name!r}: {key} is not valid PromQL: {problem}")

    @model_validator(mode="after")
    def _url_auth_tls(self) -> PrometheusProbe:
        scheme, sep, rest = self.url.partition("://")
        authority = rest.split("/", 1)[0]
        if "@" in authority:  # never echo it: it holds a password
            raise ValueError(
                "url: credentials do not belong in the table; "
                "use bearer_token_env or bearer_token_file"
            )
        if not sep or scheme.lower() not in ("http", "https") or not authority.strip(":"):
            raise ValueError(f"url {self.url!r}: expected http://host:port or https://host:port")
        env = self.bearer_token_env
        if env is not None and not (env.replace("_", "a").isalnum() and not env[0].isdigit()):
            # not echoed: a token pasted here by mistake must not reach the logs
            raise ValueError("bearer_token_env: give the name of an environment variable")
        if env is not None and self.bearer_token_file is not None:
            raise ValueError("set at most one of bearer_token_env or bearer_token_file")
        tls = self.tls_ca_file is not None or self.tls_insecure_skip_verify
        if tls and scheme.lower() != "https":
            raise ValueError("tls_ca_file and tls_insecure_skip_verify need an https:// url")
        if self.tls_ca_file is not None and self.tls_insecure_skip_verify:
            raise ValueError("set tls_ca_file or tls_insecure_skip_verify, not both")
        return self

    @staticmethod
    def promql_problem(query: str) -> str | None:
        """Unbalanced brackets or an unterminated string: what can be known without a server."""
        opening = {")": "(", "]": "[", "}": "{"}
        stack: list[tuple[str, int]] = []
        quote, quoted_at, index = "", 0, 0
        while index < len(query):
            char = query[index]
            if quote:
                if char == "\\" and quote != "`":
                    index += 1  # skip the escaped character
                elif char == quote:
                    quote = ""
            elif char in "\"'`":
                quote, quoted_at = char, index
            elif char == "#":  # a comment runs to the end of the line
                index = query.find("\n", index)
                if index < 0:
                    break
            elif char in "([{":
                stack.append((char, index))
            elif char in ")]}":
                if not stack or stack[-1][0] != opening[char]:
                    return f"unexpected {char!r} at character {index + 1}"
                stack.pop()
            index += 1
        if quote:
            return f"string opened at character {quoted_at + 1} is not closed"
        if stack:
            char, at = stack[-1]
            return f"{char!r} at character {at + 1} is not closed"
        return None


def _check_endpoint(url: str, schemes: tuple[str, ...], tls_options: bool) -> None:
    """A URL the probe can use; never echoes credentials found in it."""
    scheme, sep, rest = url.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    if "@" in authority:
        raise ValueError("url: credentials do not belong in the table; use headers_env")
    shapes = " or ".join(f"{s}://host:port/path" for s in schemes)
    if not sep or scheme.lower() not in schemes or not authority.strip(":"):
        raise ValueError(f"url {url!r}: expected {shapes}")
    if tls_options and scheme.lower() != schemes[1]:
        raise ValueError(f"tls_ca_file and tls_insecure_skip_verify need a {schemes[1]}:// url")


def _check_headers_env(headers_env: dict[str, str]) -> None:
    for header, env in headers_env.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}", header):
            raise ValueError(f"headers_env: {header!r} is not an HTTP header name")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", env):
            # not echoed: a secret pasted here by mistake must not reach the logs
            raise ValueError(f"headers_env.{header}: give the name of an environment variable")


class ExpectJson(StrictModel):
    """The answer is JSON whose field at ``path`` (dotted; list items by index) equals a value."""

    path: str
    equals: bool | int | float | str

    @model_validator(mode="after")
    def _path_parts(self) -> ExpectJson:
        if not all(self.path.split(".")):
            raise ValueError(f"path {self.path!r}: expected field names joined by '.'")
        return self


class HttpProbe(ProbeBase):
    measures = frozenset({"up", "latency", "error_ratio", "status", "latency_p95"})
    kind: Literal["http"]
    url: str
    method: Literal["GET", "HEAD"] = "GET"
    expect_status: int = Field(default=200, ge=100, le=599)
    expect_body: str | None = Field(default=None, min_length=1)  # a substring of the body
    expect_json: ExpectJson | None = None
    start_grace: Duration = 60.0  # unhealthy this long (from the first failure) before up = 0
    window: int = Field(default=20, ge=1, le=10_000)  # own requests behind error_ratio and p95
    headers_env: dict[str, str] = Field(default_factory=dict)  # header -> env var
    tls_ca_file: str | None = None
    tls_insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _endpoint(self) -> HttpProbe:
        tls = self.tls_ca_file is not None or self.tls_insecure_skip_verify
        _check_endpoint(self.url, ("http", "https"), tls)
        _check_headers_env(self.headers_env)
        if self.tls_ca_file is not None and self.tls_insecure_skip_verify:
            raise ValueError("set tls_ca_file or tls_insecure_skip_verify, not both")
        if self.method == "HEAD" and (self.expect_body or self.expect_json):
            raise ValueError('expect_body and expect_json need method = "GET" (HEAD has no body)')
        return self


class WebSocketProbe(ProbeBase):
    measures = frozenset({"failure_ratio", "latency"})
    kind: Literal["websocket"]
    url: str
    attempts: int = Field(default=3, ge=1, le=100)
    echo: bool = False  # after the handshake, send echo_payload and expect a reply
    echo_payload: str = Field(default="spek-sentinel ping", min_length=1)
    echo_reply: str | None = None  # the reply expected; echo_payload itself when absent
    headers_env: dict[str, str] = Field(default_factory=dict)  # header -> env var
    tls_ca_file: str | None = None
    tls_insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _endpoint(self) -> WebSocketProbe:
        tls = self.tls_ca_file is not None or self.tls_insecure_skip_verify
        _check_endpoint(self.url, ("ws", "wss"), tls)
        _check_headers_env(self.headers_env)
        if self.tls_ca_file is not None and self.tls_insecure_skip_verify:
            raise ValueError("set tls_ca_file or tls_insecure_skip_verify, not both")
        return self


class PostgresProbe(ProbeBase):
    measures = frozenset(
        {"up", "connect_latency", "query_latency", "row_drop", "checksum_failures", "conflicts"}
    )
    sql_measures: ClassVar[tuple[str | None, ...]] = (None, "query_latency", "row_drop")
    kind: Literal["postgres"]
    dsn_env: str | None = None  # the DSN comes from the environment or a file, never the table
    dsn_file: str | None = None

    def check_signal(self, name: str, spec: SignalSpec) -> None:
        # ``sql`` alone: the number (and optional volume) the query returns; with measure
        # "query_latency": its timing; with "row_drop": the drop of the row count it returns
        if spec.sql is not None and not spec.sql.strip():
            raise ValueError(f"signal {name!r}: 'sql' is empty")
        if spec.query is None and spec.sql is not None and spec.measure in self.sql_measures:
            return
        if spec.sql is None and spec.measure in ("query_latency", "row_drop"):
            raise ValueError(f"signal {name!r}: measure {spec.measure!r} needs 'sql'")
        if spec.sql is not None and spec.measure in self.measures:
            raise ValueError(
                f"signal {name!r}: measure {spec.measure!r} takes no 'sql' (sql goes alone, "
                "or with measure 'query_latency' or 'row_drop')"
            )
        super().check_signal(name, spec)

    @model_validator(mode="after")
    def _one_dsn_source(self) -> PostgresProbe:
        if (self.dsn_env is None) == (self.dsn_file is None):
            raise ValueError(
                "set exactly one of dsn_env or dsn_file (secrets stay out of the table)"
            )
        if self.dsn_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.dsn_env):
            # not echoed: a DSN pasted here by mistake must not reach the logs
            raise ValueError("dsn_env: give the name of an environment variable, not the DSN")
        return self


class RedisProbe(ProbeBase):
    measures = frozenset({"up", "latency", "used_memory", "connected_clients"})
    kind: Literal["redis"]
    url_env: str | None = None  # the URL comes from the environment or a file, never the table
    url_file: str | None = None

    @model_validator(mode="after")
    def _one_url_source(self) -> RedisProbe:
        if (self.url_env is None) == (self.url_file is None):
            raise ValueError(
                "set exactly one of url_env or url_file (secrets stay out of the table)"
            )
        if self.url_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.url_env):
            # not echoed: a URL with a password pasted here by mistake must not reach the logs
            raise ValueError("url_env: give the name of an environment variable, not the URL")
        return self


class DockerProbe(ProbeBase):
    measures = frozenset(
        {"up", "running", "healthy", "restart_count", "exit_code", "memory_bytes", "oom_killed"}
    )
    kind: Literal["docker"]
    # a container name as Docker allows it, or an id (prefix)
    container: str = Field(pattern=r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
    # the engine's address (unix:///var/run/docker.sock, tcp://host:2376); default DOCKER_HOST
    # from the environment, else the local socket. TLS comes from DOCKER_TLS_VERIFY/CERT_PATH.
    docker_host: str | None = Field(default=None, pattern=r"^(unix|tcp|http|https|ssh)://\S+$")
    # after a (re)start, a container whose healthcheck has not passed yet is not "down"
    start_grace: Duration = 60.0


class ProcessProbe(ProbeBase):
    measures = frozenset({"up", "rss"})
    kind: Literal["process"]
    pid_file: str | None = None
    # a regular expression searched in the command line (arguments joined by spaces)
    match: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _how_to_find(self) -> ProcessProbe:
        if self.pid_file is None and self.match is None:
            raise ValueError("set pid_file, match, or both (the pid file's process must match)")
        if self.match is not None:
            try:
                re.compile(self.match)
            except re.error as exc:
                raise ValueError(
                    f"match {self.match!r} is not a regular expression: {exc}"
                ) from exc
        return self


class PushedProbe(ProbeBase):
    """Signals confirmed by a human or another system (CLI ``signal`` or the API)."""

    measures = frozenset({"event", "value"})
    kind: Literal["pushed"]
    # a pushed "value" (client-reported FPS) older than this is no data; events never go stale
    stale_after: PositiveDuration = 300.0


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
