"""Backtesting from Prometheus history: range queries against a real Prometheus, then replay."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest

from harness.ports import free_port
from harness.prometheus_server import PrometheusStack, Request, StubHttpServer
from harness.wait import wait_until
from spek_sentinel.config import Config, load_config
from spek_sentinel.domain.errors import InputError
from spek_sentinel.domain.samples import Sample
from spek_sentinel.replay.prometheus_source import fetch_series, fetched_signals
from spek_sentinel.replay.run import replay
from spek_sentinel.replay.series import Event

TOKEN = "replay-bearer-token-9876543210"  # noqa: S105 -- a test value, never a real secret


def write_config(
    tmp_path: Path,
    url: str,
    queries: Mapping[str, str],
    probe_extra: str = "",
    split_by: str | None = None,
) -> Config:
    lines = [
        "[probes.app_metrics]",
        'kind = "prometheus"',
        f'url = "{url}"',
        'interval = "1s"',
        probe_extra,
    ]
    for name, query in queries.items():
        lines += [f"[probes.app_metrics.signals.{name}]", 'unit = "ratio"', f"query = '{query}'"]
        if split_by is not None:
            lines.append(f'split_by = "{split_by}"')
    first = next(iter(queries))
    lines += [
        "[[rules]]",
        'name = "high_error_rate"',
        f'signal = "{first}"',
        'kind = "threshold"',
        'severity = "evaluate"',
        "above = 0.2",
        'for = "2s"',
    ]
    path = tmp_path / "thresholds.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path, environ={})


def fetch(
    config: Config,
    start: float,
    end: float,
    *,
    step: float | None = 1.0,
    url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[Sample]:
    events = asyncio.run(fetch_series(config, start, end, step, url, environ or {}))
    assert all(isinstance(event, Sample) for event in events)
    return [event for event in events if isinstance(event, Sample)]


def test_history_comes_back_at_the_step_in_time_order_and_replays_into_a_page(
    prometheus: PrometheusStack, tmp_path: Path
) -> None:
    gauge = prometheus.exporter.gauge("spek_r1_error_ratio")
    created = time.time()
    gauge.set(0.01)
    # scraped twice: the 0.01 stretch is longer than a step, so a step lands on it
    prometheus.server.wait_for("count_over_time(spek_r1_error_ratio[10s]) >= 2")
    gauge.set(0.5)
    prometheus.server.wait_for("spek_r1_error_ratio == 0.5")
    config = write_config(
        tmp_path, prometheus.url, {"error_ratio": "spek_r1_error_ratio", "ones": "vector(1)"}
    )
    start = created - 3

    # Enough breaching history for the rule's 2s `for`: four 1s steps at 0.5.
    def breaching() -> list[Sample]:
        samples = fetch(config, start, time.time())
        ratio = [s for s in samples if s.signal == "error_ratio"]
        return samples if [s.value for s in ratio[-4:]] == [0.5] * 4 else []

    samples = wait_until(breaching, timeout=20, message="four breaching steps never recorded")
    ratio = [s for s in samples if s.signal == "error_ratio"]
    ones = [s for s in samples if s.signal == "ones"]

    assert [s.at for s in samples] == sorted(s.at for s in samples)
    assert {s.signal for s in samples} == fetched_signals(config) == {"error_ratio", "ones"}
    assert [s.at for s in ratio] == [s.at for s in ones]
    assert {round(b.at - a.at, 3) for a, b in itertools.pairwise(ratio)} == {1.0}
    assert ratio[0].at == pytest.approx(start, abs=0.001)
    assert ratio[0].kind == "no_data"  # before the gauge existed
    assert {s.value for s in ratio if s.usable} == {0.01, 0.5}
    assert all(s.value == 1 for s in ones)

    events: list[Event] = list(samples)
    result = replay(config.rules, config.policy, events)
    [page] = [d for d in result.decisions if d.action.value == "page"]
    first_breach = next(s.at for s in ratio if s.value == 0.5)
    assert page.verdict.rule.name == "high_error_rate"
    assert page.verdict.transition == "pending->firing"
    assert page.verdict.at == pytest.approx(first_breach + 2, abs=0.001)


def test_a_window_over_the_11000_point_limit_is_fetched_in_chunks(
    prometheus: PrometheusStack, tmp_path: Path
) -> None:
    config = write_config(tmp_path, prometheus.url, {"ones": "vector(1)"})
    end = time.time() // 1  # whole seconds: 12,001 points
    start = end - 12

    samples = fetch(config, start, end, step=0.001)

    assert len(samples) == 12_001
    stamps = [round(s.at * 1000) for s in samples]
    assert stamps == list(range(stamps[0], stamps[0] + 12_001))
    assert all(s.value == 1 for s in samples)
    # The same window in one query is what Prometheus refuses.
    refused = httpx.get(
        f"{prometheus.url}/api/v1/query_range",
        params={"query": "vector(1)", "start": start, "end": end, "step": 0.001},
    )
    assert "exceeded maximum resolution of 11,000 points" in refused.json()["error"]


def test_a_query_prometheus_rejects_is_an_error_naming_the_signal(
    prometheus: PrometheusStack, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, prometheus.url, {"fine": "vector(1)", "broken": "rate(spek_r3_total)"}
    )
    end = time.time() // 1  # whole seconds: the window holds a whole number of steps

    with pytest.raises(InputError) as caught:
        fetch(config, end - 10, end)

    message = str(caught.value)
    assert message.startswith("probes.app_metrics, signal broken: prometheus refused the query")
    assert "expected type range vector" in message


def test_several_series_are_an_error_naming_the_signal(
    prometheus: PrometheusStack, tmp_path: Path
) -> None:
    gauge = prometheus.exporter.gauge("spek_r4_pod_memory", ("pod",))
    gauge.labels("a").set(1)
    gauge.labels("b").set(2)
    # both series scraped three times: there for more than the last whole-second step
    prometheus.server.wait_for("count(count_over_time(spek_r4_pod_memory[10s]) >= 3) == 2")
    config = write_config(tmp_path, prometheus.url, {"memory": "spek_r4_pod_memory"})
    end = time.time() // 1  # whole seconds: the window holds a whole number of steps

    with pytest.raises(InputError) as caught:
        fetch(config, end - 5, end)

    assert str(caught.value).startswith(
        "probes.app_metrics, signal memory: query returned 2 series"
    )


def test_the_url_argument_replaces_the_probes_url(
    prometheus: PrometheusStack, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, closed, {"ones": "vector(1)"})
    end = time.time() // 1  # whole seconds: the window holds a whole number of steps

    with pytest.raises(InputError) as unreachable:
        fetch(config, end - 5, end)
    samples = fetch(config, end - 5, end, url=prometheus.url)

    assert "signal ones: cannot connect to" in str(unreachable.value)
    assert "Connection refused" in str(unreachable.value)
    assert [s.value for s in samples] == [1.0] * 6


def test_step_defaults_to_the_probe_interval(prometheus: PrometheusStack, tmp_path: Path) -> None:
    config = write_config(tmp_path, prometheus.url, {"ones": "vector(1)"})  # interval 1s
    end = time.time() // 1  # whole seconds: the window holds a whole number of steps

    samples = fetch(config, end - 4, end, step=None)

    assert len(samples) == 5
    assert {round(b.at - a.at, 3) for a, b in itertools.pairwise(samples)} == {1.0}


def test_the_bearer_token_is_sent_and_kept_out_of_errors(tmp_path: Path) -> None:
    def answer(request: Request) -> tuple[int, str, bytes]:
        return 403, "text/plain", f"denied {request.headers}".encode()

    with StubHttpServer(answer) as stub:
        config = write_config(
            tmp_path, stub.url, {"ones": "vector(1)"}, 'bearer_token_env = "PROM_TOKEN"'
        )
        with pytest.raises(InputError) as caught:
            fetch(config, 1_000, 1_010, environ={"PROM_TOKEN": TOKEN})

    assert stub.requests[0].headers.get("Authorization") == f"Bearer {TOKEN}"
    assert "HTTP 403 Forbidden (check the bearer token)" in str(caught.value)
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    ("window", "url", "expected"),
    [
        ((100.0, 100.0, 1.0), None, "end after start"),
        ((100.0, 50.0, 1.0), None, "end after start"),
        ((0.0, 100.0, -1.0), None, "step must be a positive number"),
        ((0.0, 100.0, 0.0001), None, "below Prometheus' resolution of 1ms"),
        ((0.0, 10_000_000.0, 1.0), None, "more than the 1,000,000 a replay holds"),
        ((0.0, 100.0, 1.0), "prometheus:9090", "expected http://host:port"),
        ((0.0, 100.0, 1.0), "http://u:hunter2@prom:9090", "must not carry credentials"),
    ],
    ids=["empty", "reversed", "negative-step", "sub-ms-step", "too-many", "bad-url", "url-creds"],
)
def test_a_window_that_cannot_be_fetched_is_refused_before_any_query(
    tmp_path: Path, window: tuple[float, float, float], url: str | None, expected: str
) -> None:
    start, end, step = window
    with StubHttpServer(lambda _: (500, "text/plain", b"must not be asked")) as stub:
        config = write_config(tmp_path, stub.url, {"ones": "vector(1)"})
        with pytest.raises(InputError) as caught:
            fetch(config, start, end, step=step, url=url)

    assert expected in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert stub.requests == []


def test_a_config_without_prometheus_probes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.toml"
    path.write_text(
        '[probes.confirmed]\nkind = "pushed"\n'
        'signals.data_corruption = { unit = "count", measure = "event" }\n'
        '[[rules]]\nname = "data_corruption"\nsignal = "data_corruption"\nkind = "event"\n'
        'severity = "evaluate"\n'
    )
    config = load_config(path, environ={})

    with pytest.raises(InputError, match='no probe with kind = "prometheus"'):
        asyncio.run(fetch_series(config, 0, 100, 1.0, None, {}))


def test_the_replay_command_backtests_prometheus_history_end_to_end(
    prometheus: PrometheusStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spek_sentinel.cli import main  # noqa: PLC0415 -- the command under test

    gauge = prometheus.exporter.gauge("spek_r9_error_ratio")
    start = time.time()
    gauge.set(0.5)
    prometheus.server.wait_for("count_over_time(spek_r9_error_ratio[10s]) >= 4")
    end = time.time()
    write_config(tmp_path, "http://127.0.0.1:1", {"error_rate": "spek_r9_error_ratio"})
    table = str(tmp_path / "thresholds.toml")

    code = main(
        [
            "replay",
            "-c",
            table,
            "--prometheus",
            prometheus.url,
            "--start",
            f"{start:.3f}",
            "--end",
            f"{end:.3f}",
            "--step",
            "1s",
            "--json",
        ]
    )

    captured = capsys.readouterr()
    assert code == 0, captured.err
    decisions = [json.loads(line) for line in captured.out.splitlines()]
    assert [(d["rule"], d["state"], d["action"]) for d in decisions][-1] == (
        "high_error_rate",
        "firing",
        "page",
    )
    assert "replayed" in captured.err


def test_the_replay_command_refuses_a_window_that_ends_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spek_sentinel.cli import main  # noqa: PLC0415 -- the command under test

    write_config(tmp_path, "http://127.0.0.1:1", {"error_rate": "up"})
    table = str(tmp_path / "thresholds.toml")
    code = main(
        [
            "replay",
            "-c",
            table,
            "--prometheus",
            "http://127.0.0.1:1",
            "--start",
            "2026-11-25T03:00:00Z",
            "--end",
            "2026-11-25T02:00:00Z",
        ]
    )
    assert code == 1
    assert "--end must be after --start" in capsys.readouterr().err


def test_a_split_signal_replays_each_series_on_its_own(
    prometheus: PrometheusStack, tmp_path: Path
) -> None:
    memory = prometheus.exporter.gauge("spek_r10_pod_memory", ("pod",))
    start = time.time()
    memory.labels("a").set(0.1)
    memory.labels("b").set(0.9)
    prometheus.server.wait_for("count_over_time(spek_r10_pod_memory[10s]) >= 4")
    end = time.time()
    config = write_config(
        tmp_path, prometheus.url, {"pod_ratio": "spek_r10_pod_memory"}, split_by="pod"
    )

    samples = fetch(config, start, end)
    series = {sample.series for sample in samples}
    result = replay(config.rules, config.policy, samples)

    assert series == {"a", "b"}
    fired = {d.verdict.rule.name for d in result.decisions if d.verdict.state.value == "firing"}
    assert fired == {'high_error_rate{pod="b"}'}
