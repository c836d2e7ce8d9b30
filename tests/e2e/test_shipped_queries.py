"""The shipped table's Prometheus signals, as spek-sentinel's prometheus probe reads them, have a
value on a healthy release of the sample app: a real Prometheus scraping a v1.1.0 container that
serves HTTP and WebSocket traffic without a single error.

A signal without a value on a healthy release is worse than useless: its rules stay UNKNOWN, so
the release is never "every rule OK", never becomes known good (no rollback target) and no
routine last-known-good backup is taken, and after ``blind_after`` the sentinel pages "blind".
The shipped error_rate once divided a sum over the 5xx series, which a healthy app does not
have, and read "no data" exactly when all was well.
"""

from __future__ import annotations

import asyncio
import threading
import tomllib
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from harness.prometheus_server import PrometheusServer
from harness.spek_app import AppContainer, ImageBuild, app_stack, get
from harness.wait import WaitTimeoutError, wait_until
from spek_sentinel.config.probes import PrometheusProbe
from spek_sentinel.domain.samples import Sample
from spek_sentinel.probes.base import observe
from spek_sentinel.probes.prometheus import build

SHIPPED = Path(__file__).resolve().parents[2] / "thresholds.toml"


def shipped_probe(url: str) -> PrometheusProbe:
    """thresholds.toml's [probes.app_metrics] against ``url``; the test's Prometheus names its
    scrape job "exporter" where a deployment names it "spek"."""
    with SHIPPED.open("rb") as table:
        section: dict[str, Any] = tomllib.load(table)["probes"]["app_metrics"]
    for spec in section["signals"].values():
        for key in ("query", "volume_query"):
            if key in spec:
                spec[key] = spec[key].replace('job="spek"', 'job="exporter"')
    return PrometheusProbe.model_validate({**section, "url": url})


def read(model: PrometheusProbe) -> dict[str, Sample]:
    async def once() -> dict[str, Sample]:
        probe = build("app_metrics", model, 15.0, {})
        try:
            return {sample.signal: sample for sample in await observe(probe)}
        finally:
            await probe.aclose()

    return asyncio.run(once())


def users(app: AppContainer, stop: threading.Event) -> None:
    """API calls and WebSocket echoes, every one answered well."""
    while not stop.wait(0.1):
        try:
            get(f"{app.url}/api/tasks?limit=5", timeout=5)
            with connect(f"ws://127.0.0.1:{app.port}/ws", open_timeout=5) as socket:
                socket.send("ping")
                socket.recv(timeout=5)
        except (urllib.error.URLError, OSError, WebSocketException):
            continue


@pytest.fixture
def healthy_app(
    docker_engine: docker.DockerClient, sample_images: ImageBuild
) -> Iterator[tuple[AppContainer, PrometheusServer]]:
    with app_stack(docker_engine, "shipped-queries") as stack:
        app = stack.run_app("v1.1.0")
        prometheus = PrometheusServer([f"127.0.0.1:{app.port}"])
        stop = threading.Event()
        traffic = threading.Thread(target=users, args=(app, stop), daemon=True)
        try:
            prometheus.start()
            traffic.start()
            yield app, prometheus
        finally:
            stop.set()
            traffic.join(timeout=15)
            prometheus.close()


def test_every_shipped_prometheus_signal_has_a_value_on_a_healthy_release(
    healthy_app: tuple[AppContainer, PrometheusServer],
) -> None:
    app, prometheus = healthy_app
    model = shipped_probe(prometheus.url)
    assert set(model.signals) == {
        "error_rate",
        "latency_p95",
        "api_latency_p95",
        "websocket_failure_ratio",
    }

    last: dict[str, Sample] = {}

    def every_signal_read() -> dict[str, Sample] | None:
        last.update(read(model))
        return dict(last) if all(s.usable for s in last.values()) else None

    try:
        found = wait_until(every_signal_read, timeout=60, interval=1.0)
    except WaitTimeoutError:
        unread = {name: s.kind for name, s in last.items() if not s.usable}
        pytest.fail(f"shipped signals without a value on a healthy release: {unread}")
    assert found is not None
    samples: dict[str, Sample] = found
    assert samples["error_rate"].value == 0  # no 5xx series at all: 0, not "no data"
    assert samples["error_rate"].volume is not None and samples["error_rate"].volume > 0
    assert samples["websocket_failure_ratio"].value == 0
    for name in ("latency_p95", "api_latency_p95"):
        value = samples[name].value
        assert value is not None and 0 < value < 1
    assert get(f"{app.url}/healthz").json()["status"] == "ok"
