"""The prometheus probe against a real Prometheus (and fakes for what it cannot be made to do)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic
import pytest

from harness import HarnessError
from harness.ports import free_port
from harness.prometheus_server import (
    PrometheusStack,
    Request,
    SilentServer,
    StubHttpServer,
    prometheus_vector,
    self_signed_cert,
    server_tls,
)
from harness.wait import wait_until
from spek_sentinel.config import load_config
from spek_sentinel.config.probes import PrometheusProbe
from spek_sentinel.domain.errors import ConfigError
from spek_sentinel.domain.samples import Sample
from spek_sentinel.probes.base import Failed, Reading, observe
from spek_sentinel.probes.prometheus import build
from spek_sentinel.probes.registry import build_probes

TOKEN = "s3cr3t-bearer-token-0123456789"  # noqa: S105 -- a test value, never a real secret


def model(url: str, queries: Mapping[str, str], **options: Any) -> PrometheusProbe:
    signals = {name: {"unit": "ratio", "query": query} for name, query in queries.items()}
    fields = {"kind": "prometheus", "url": url, "timeout": "5s", "signals": signals}
    return PrometheusProbe.model_validate({**fields, **options})


async def observe_once(
    probe_model: PrometheusProbe, environ: Mapping[str, str], times: int = 1
) -> list[dict[str, Sample]]:
    probe = build("app_metrics", probe_model, 15.0, environ)
    try:
        rounds = []
        for _ in range(times):
            rounds.append({sample.signal: sample for sample in await observe(probe)})
        return rounds
    finally:
        await probe.aclose()


def collect(
    url: str, queries: Mapping[str, str], environ: Mapping[str, str] | None = None, **options: Any
) -> dict[str, Sample]:
    [samples] = asyncio.run(observe_once(model(url, queries, **options), environ or {}))
    return samples


def errors(samples: Mapping[str, Sample]) -> dict[str, str]:
    return {name: sample.error for name, sample in samples.items() if sample.error is not None}


# --- values from a real Prometheus -----------------------------------------------------------


def test_a_gauge_comes_back_as_the_sample_value(prometheus: PrometheusStack) -> None:
    prometheus.exporter.gauge("spek_t1_memory_bytes").set(123_456_789)
    prometheus.server.wait_for("spek_t1_memory_bytes == 123456789")

    samples = collect(prometheus.url, {"memory_bytes": "spek_t1_memory_bytes"})

    assert samples["memory_bytes"].error is None
    assert samples["memory_bytes"].value == 123_456_789


def test_an_error_rate_over_counters_is_the_ratio_of_their_rates(
    prometheus: PrometheusStack,
) -> None:
    requests = prometheus.exporter.counter("spek_t2_http_requests", ("status",))
    requests.labels("200").inc(0)
    requests.labels("500").inc(0)
    prometheus.server.wait_for('spek_t2_http_requests_total{status="500"} == 0')
    query = (
        'sum(rate(spek_t2_http_requests_total{status=~"5.."}[1m])) '
        "/ sum(rate(spek_t2_http_requests_total[1m]))"
    )
    # No traffic yet: 0/0 (or no rate at all) is no data, never a healthy 0.
    idle = collect(prometheus.url, {"error_rate": query})["error_rate"]
    requests.labels("200").inc(90)
    requests.labels("500").inc(10)

    def ratio() -> Sample | None:
        sample = collect(prometheus.url, {"error_rate": query})["error_rate"]
        return sample if sample.usable else None

    sample = wait_until(ratio, timeout=15, message="the error rate never had a value")

    assert idle.kind == "no_data"
    assert sample is not None
    assert sample.value == pytest.approx(0.1)


def test_an_empty_result_is_no_data(prometheus: PrometheusStack) -> None:
    samples = collect(prometheus.url, {"error_rate": "spek_t3_metric_nobody_exports"})

    assert samples["error_rate"].kind == "no_data"
    assert samples["error_rate"].error is None


def test_nan_and_inf_results_are_no_data(prometheus: PrometheusStack) -> None:
    prometheus.exporter.gauge("spek_t4_idle").set(0)
    prometheus.server.wait_for("spek_t4_idle == 0")

    samples = collect(
        prometheus.url,
        {
            "scalar_nan": "0/0",
            "vector_nan": "spek_t4_idle / spek_t4_idle",
            "plus_inf": "vector(1) / 0",
            "minus_inf": "-1/0",
        },
    )

    assert {name: s.kind for name, s in samples.items()} == dict.fromkeys(samples, "no_data")
    assert all(s.value is None for s in samples.values())


def test_several_series_fail_that_signal_only_while_the_others_report(
    prometheus: PrometheusStack,
) -> None:
    memory = prometheus.exporter.gauge("spek_t5_pod_memory", ("pod",))
    memory.labels("a").set(100)
    memory.labels("b").set(250)
    prometheus.server.wait_for("sum(spek_t5_pod_memory) == 350")

    samples = collect(
        prometheus.url, {"per_pod": "spek_t5_pod_memory", "total": "sum(spek_t5_pod_memory)"}
    )

    assert samples["total"].value == 350
    error = samples["per_pod"].error
    assert error is not None
    assert "returned 2 series" in error
    assert 'pod="a"' in error
    assert "sum(...)" in error


def test_a_volume_query_carries_the_traffic_behind_the_ratio(prometheus: PrometheusStack) -> None:
    prometheus.exporter.gauge("spek_t7_error_ratio").set(0.33)
    prometheus.exporter.gauge("spek_t7_requests").set(3)
    prometheus.server.wait_for("spek_t7_requests == 3")
    signals = {
        "error_rate": {
            "unit": "ratio",
            "query": "spek_t7_error_ratio",
            "volume_query": "spek_t7_requests",
        },
        "broken_volume": {
            "unit": "ratio",
            "query": "spek_t7_error_ratio",
            "volume_query": "rate(spek_t7_requests)",
        },
    }
    probe_model = PrometheusProbe.model_validate(
        {"kind": "prometheus", "url": prometheus.url, "timeout": "5s", "signals": signals}
    )

    [samples] = asyncio.run(observe_once(probe_model, {}))

    assert (samples["error_rate"].value, samples["error_rate"].volume) == (0.33, 3)
    # the rule asked for a volume guard: without the volume the ratio is not judged
    error = samples["broken_volume"].error
    assert error is not None and "volume_query: prometheus refused the query" in error


def test_a_query_prometheus_rejects_is_an_error_sample_with_its_reason(
    prometheus: PrometheusStack,
) -> None:
    samples = collect(
        prometheus.url, {"broken": "rate(spek_t6_requests_total)", "fine": "vector(1)"}
    )

    assert samples["fine"].value == 1
    error = samples["broken"].error
    assert error is not None
    assert error.startswith("probe app_metrics: prometheus refused the query (bad_data)")
    assert "expected type range vector" in error


# --- failures: every one is an error sample, never an exception ------------------------------


def test_a_closed_port_gives_error_samples_for_every_signal() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    samples = collect(url, {"error_rate": "vector(1)", "latency": "vector(2)"})

    assert set(errors(samples)) == {"error_rate", "latency"}
    assert all(
        e.endswith(f"cannot connect to {url}/api/v1/query: Connection refused")
        for e in errors(samples).values()
    )


def test_a_server_that_never_answers_times_out_per_signal_within_the_probe_timeout() -> None:
    with SilentServer() as silent:
        queries = {f"signal_{n}": "vector(1)" for n in range(3)}
        began = time.monotonic()
        samples = collect(silent.url, queries, timeout="1s")
        took = time.monotonic() - began

    # Each query gives up on its own (0.9 of the timeout) and they run at once: three silent
    # queries in turn would have hit the probe's whole-run timeout instead.
    assert set(errors(samples)) == set(queries)
    assert all("no answer within 0.9s (timed out)" in e for e in errors(samples).values())
    assert took < 3


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected"),
    [
        (200, "text/html", b"<html><body>login</body></html>", "did not answer like the"),
        (200, "application/json", b'{"hello": "world"}', "did not answer like the"),
        (502, "text/html", b"<h1>Bad Gateway</h1>", "HTTP 502 Bad Gateway"),
        (200, "application/json", b'{"status":"success","data":{"resultType":"vector"}}',
         "unexpected answer"),
    ],
    ids=["html", "json-not-prometheus", "http-502", "truncated-data"],
)  # fmt: skip
def test_a_garbage_answer_gives_error_samples(
    status: int, content_type: str, body: bytes, expected: str
) -> None:
    with StubHttpServer(lambda _: (status, content_type, body)) as stub:
        samples = collect(stub.url, {"error_rate": "vector(1)", "latency": "vector(2)"})

    assert set(errors(samples)) == {"error_rate", "latency"}
    assert all(expected in e for e in errors(samples).values())


def _echo_auth(request: Request) -> tuple[int, str, bytes]:
    if request.params.get("query") == ["echo"]:
        # a misbehaving proxy that quotes the credentials back in its error page
        return 500, "text/plain", f"bad auth {request.headers.get('Authorization')}".encode()
    return prometheus_vector("0.25")


def test_the_bearer_token_is_sent_and_never_appears_in_an_error() -> None:
    with StubHttpServer(_echo_auth) as stub:
        samples = collect(
            stub.url,
            {"error_rate": "vector(1)", "echoed": "echo"},
            environ={"PROM_TOKEN": TOKEN},
            bearer_token_env="PROM_TOKEN",  # noqa: S106 -- a variable name, not a password
        )

    assert [r.headers.get("Authorization") for r in stub.requests] == [f"Bearer {TOKEN}"] * 2
    assert samples["error_rate"].value == 0.25
    error = samples["echoed"].error
    assert error is not None
    assert "HTTP 500" in error
    assert "bad auth Bearer ***" in error
    assert TOKEN not in error


def test_a_token_file_is_read_again_on_every_run(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")

    async def two_runs(url: str) -> None:
        probe = build(
            "app_metrics",
            model(url, {"x": "vector(1)"}, bearer_token_file=str(token_file)),
            15.0,
            {},
        )
        try:
            await observe(probe)
            token_file.write_text("rotated-token\n")
            await observe(probe)
        finally:
            await probe.aclose()

    with StubHttpServer(lambda _: prometheus_vector("1")) as stub:
        asyncio.run(two_runs(stub.url))

    sent = [r.headers.get("Authorization") for r in stub.requests]
    assert sent == ["Bearer first-token", "Bearer rotated-token"]


def test_a_token_file_that_disappears_gives_error_samples_naming_the_file(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)

    async def run_after_removal(url: str) -> list[Sample]:
        probe_model = model(
            url, {"x": "vector(1)", "y": "vector(2)"}, bearer_token_file=str(token_file)
        )
        probe = build("app_metrics", probe_model, 15.0, {})
        try:
            token_file.unlink()
            return await observe(probe)
        finally:
            await probe.aclose()

    with StubHttpServer(lambda _: prometheus_vector("1")) as stub:
        samples = asyncio.run(run_after_removal(stub.url))

    expected = (
        f"probe app_metrics: bearer_token_file {token_file}: cannot read: No such file or directory"
    )
    assert [(s.signal, s.error) for s in samples] == [("x", expected), ("y", expected)]
    assert stub.requests == []


def test_tls_is_verified_against_the_system_store_tls_ca_file_or_skipped(tmp_path: Path) -> None:
    try:
        cert, key = self_signed_cert(tmp_path)
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    with StubHttpServer(lambda _: prometheus_vector("0.5"), tls=server_tls(cert, key)) as stub:
        untrusted = collect(stub.url, {"x": "vector(1)"})
        with_ca = collect(stub.url, {"x": "vector(1)"}, tls_ca_file=str(cert))
        skipped = collect(stub.url, {"x": "vector(1)"}, tls_insecure_skip_verify=True)

    assert untrusted["x"].error is not None
    assert "certificate verify failed" in untrusted["x"].error
    assert with_ca["x"].value == 0.5
    assert skipped["x"].value == 0.5


# --- the Failed reading: one signal's error, the others' values -------------------------------


class _HalfBroken:
    name, interval, timeout, signals = "stub", 15.0, 5.0, ("a", "b", "c")

    async def collect(self) -> Mapping[str, Reading | Failed | float | None]:
        return {"a": Failed(f"token {TOKEN} refused"), "b": 0.5, "c": Reading(0.1, volume=200)}

    async def aclose(self) -> None:
        pass


def test_observe_turns_a_failed_reading_into_an_error_sample_for_that_signal_alone() -> None:
    samples = asyncio.run(observe(_HalfBroken(), clock=lambda: 1000.0, secrets=[TOKEN]))

    assert samples == [
        Sample("a", 1000.0, error="probe stub: token *** refused"),
        Sample("b", 1000.0, value=0.5),
        Sample("c", 1000.0, value=0.1, volume=200),
    ]


# --- configuration: what can be known before running -----------------------------------------

RULE = """
[[rules]]
name = "high_error_rate"
signal = "error_rate"
kind = "threshold"
severity = "evaluate"
above = "5%"
"""


def write_config(tmp_path: Path, probe: str, query: str = "vector(0)") -> Path:
    path = tmp_path / "thresholds.toml"
    path.write_text(
        f'[probes.app_metrics]\nkind = "prometheus"\n{probe}\n'
        f"[probes.app_metrics.signals.error_rate]\nunit = \"ratio\"\nquery = '{query}'\n{RULE}"
    )
    return path


@pytest.mark.parametrize(
    ("probe", "query", "expected"),
    [
        ('url = "ftp://prom:9090"', "vector(0)", "expected http://host:port"),
        ('url = "127.0.0.1:9090"', "vector(0)", "expected http://host:port"),
        ('url = "https://"', "vector(0)", "expected http://host:port"),
        ('url = "http://x"\nbearer_token_env = "T"\nbearer_token_file = "/t"', "vector(0)",
         "set at most one of bearer_token_env or bearer_token_file"),
        ('url = "http://x"\ntls_ca_file = "/ca.pem"', "vector(0)", "need an https:// url"),
        ('url = "https://x"\ntls_ca_file = "/ca.pem"\ntls_insecure_skip_verify = true', "vector(0)",
         "set tls_ca_file or tls_insecure_skip_verify, not both"),
        ('url = "http://x"', "sum(rate(x[5m])", "'(' at character 4 is not closed"),
        ('url = "http://x"', 'x{job="a}', "string opened at character 7 is not closed"),
        ('url = "http://x"', "sum(x))", "unexpected ')' at character 7"),
    ],
    ids=["scheme", "no-scheme", "no-host", "two-token-sources", "tls-on-http", "tls-both",
         "unclosed-paren", "unclosed-string", "extra-paren"],
)  # fmt: skip
def test_validate_refuses_what_can_be_known_without_prometheus(
    tmp_path: Path, probe: str, query: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, probe, query), environ={})

    assert "probes.app_metrics" in str(caught.value)
    assert expected in str(caught.value)


def test_validate_accepts_promql_brackets_inside_strings_and_comments(tmp_path: Path) -> None:
    query = 'sum(x{path=~"/api/(v1|v2)\\\\\\"["}) # trailing ( comment'
    config = load_config(write_config(tmp_path, 'url = "http://x"', query), environ={})

    assert config.model.probes["app_metrics"].signals["error_rate"].query == query


@pytest.mark.parametrize(
    "probe",
    [
        'url = "http://prom:pa55w0rd@x:9090"',
        f'url = "http://x"\nbearer_token_env = "{TOKEN}.xyz"',
    ],
    ids=["password-in-url", "token-pasted-as-variable-name"],
)
def test_a_secret_written_into_the_table_is_refused_without_being_echoed(
    tmp_path: Path, probe: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, probe), environ={})

    assert "pa55w0rd" not in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert "probes.app_metrics" in str(caught.value)


def test_an_unset_token_variable_or_missing_token_file_is_a_config_error_at_start(
    tmp_path: Path,
) -> None:
    env_config = load_config(
        write_config(tmp_path, 'url = "http://x"\nbearer_token_env = "PROM_TOKEN"'), environ={}
    )
    with pytest.raises(ConfigError) as unset:
        build_probes(env_config, {})
    missing = tmp_path / "no-such-token"
    file_config = load_config(
        write_config(tmp_path, f'url = "http://x"\nbearer_token_file = "{missing}"'), environ={}
    )
    with pytest.raises(ConfigError) as unreadable:
        build_probes(file_config, {})

    assert (
        "PROM_TOKEN: probes.app_metrics.bearer_token_env: environment variable is not set"
        in str(unset.value)
    )
    assert f"{missing}: probes.app_metrics.bearer_token_file: file not found" in str(
        unreadable.value
    )


def test_the_registry_builds_a_prometheus_probe_from_the_table(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, 'url = "http://x"\ninterval = "30s"'), environ={})

    [probe] = build_probes(config, {})

    assert (probe.name, probe.interval, probe.timeout) == ("app_metrics", 30.0, 10.0)
    assert probe.signals == ("error_rate",)
    asyncio.run(probe.aclose())


def test_an_unreadable_tls_ca_file_is_a_config_error_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    config = load_config(
        write_config(tmp_path, f'url = "https://x"\ntls_ca_file = "{missing}"'), environ={}
    )

    with pytest.raises(ConfigError) as caught:
        build_probes(config, {})

    assert f"probes.app_metrics: tls_ca_file {missing}: cannot load" in str(caught.value)


def test_a_url_with_a_path_prefix_queries_the_api_under_it() -> None:
    with StubHttpServer(lambda _: prometheus_vector("7")) as stub:
        samples = collect(f"{stub.url}/prometheus/", {"x": "up"})

    assert samples["x"].value == 7
    assert [r.path for r in stub.requests] == ["/prometheus/api/v1/query"]
    assert stub.requests[0].params["query"] == ["up"]


# --- split_by: one series per label value ------------------------------------------------------


def split_model(url: str, query: str, label: str = "pod") -> PrometheusProbe:
    signals = {"pod_memory": {"unit": "bytes", "query": query, "split_by": label}}
    return PrometheusProbe.model_validate(
        {"kind": "prometheus", "url": url, "timeout": "5s", "signals": signals}
    )


def test_split_by_gives_one_sample_per_series(prometheus: PrometheusStack) -> None:
    memory = prometheus.exporter.gauge("spek_t8_pod_memory", ("pod",))
    memory.labels("a").set(100)
    memory.labels("b").set(250)
    prometheus.server.wait_for("sum(spek_t8_pod_memory) == 350")

    probe = build("app_metrics", split_model(prometheus.url, "spek_t8_pod_memory"), 15.0, {})

    async def raw() -> list[Sample]:
        try:
            return await observe(probe)
        finally:
            await probe.aclose()

    got = sorted((s.signal, s.series, s.value, s.error) for s in asyncio.run(raw()))
    assert got == [("pod_memory", "a", 100, None), ("pod_memory", "b", 250, None)]


def test_split_by_refuses_series_it_cannot_tell_apart(prometheus: PrometheusStack) -> None:
    memory = prometheus.exporter.gauge("spek_t9_memory", ("pod", "container"))
    memory.labels("a", "app").set(1)
    memory.labels("a", "sidecar").set(2)
    prometheus.server.wait_for("count(spek_t9_memory) == 2")

    by_pod = collect_split(prometheus.url, "spek_t9_memory", "pod")
    by_zone = collect_split(prometheus.url, "spek_t9_memory", "zone")

    assert "several series share pod='a'; aggregate by (pod) first" in (by_pod.error or "")
    assert "has no label 'zone' to split by" in (by_zone.error or "")


def test_split_by_with_no_series_is_no_data_for_the_whole_signal(
    prometheus: PrometheusStack,
) -> None:
    sample = collect_split(prometheus.url, "spek_t10_nobody_exports", "pod")
    assert (sample.kind, sample.series) == ("no_data", "")


def collect_split(url: str, query: str, label: str) -> Sample:
    [samples] = asyncio.run(observe_once(split_model(url, query, label), {}))
    return samples["pod_memory"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"split_by": "pod-name"}, "is not a label name"),
        ({"split_by": "pod", "volume_query": "vector(1)"}, "cannot be combined"),
    ],
)
def test_validate_refuses_a_bad_split_by(extra: dict[str, str], message: str) -> None:
    signals = {"s": {"unit": "count", "query": "vector(1)", **extra}}
    with pytest.raises(pydantic.ValidationError, match=message):
        PrometheusProbe.model_validate(
            {"kind": "prometheus", "url": "http://127.0.0.1:9090", "signals": signals}
        )
