"""The redis probe against a real redis-server (and stubs that are not one)."""

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from harness.redis_server import RedisServer, RedisTarget
from harness.tcp_stub import TcpStub
from spek_sentinel.config.probes import RedisProbe as RedisConfig
from spek_sentinel.domain.errors import ConfigError
from spek_sentinel.domain.samples import Sample
from spek_sentinel.probes import redis as redis_probe
from spek_sentinel.probes.base import observe

ENV = "SPEK_TEST_REDIS_URL"
PASSWORD = "Zq9-r3d1s-pw"  # noqa: S105 -- a made-up secret the tests hunt for in errors
SIGNALS = {
    "redis_up": {"unit": "bool", "measure": "up"},
    "redis_latency": {"unit": "seconds", "measure": "latency"},
    "redis_memory": {"unit": "bytes", "measure": "used_memory"},
    "redis_clients": {"unit": "count", "measure": "connected_clients"},
}


def config(timeout: str = "5s", **source: str) -> RedisConfig:
    return RedisConfig.model_validate(
        {"kind": "redis", "timeout": timeout, "signals": SIGNALS, **(source or {"url_env": ENV})}
    )


def probe(url: str, timeout: str = "5s") -> Any:
    return redis_probe.build("cache", config(timeout), 15.0, {ENV: url})


def observe_once(target: Any) -> dict[str, Sample]:
    return {s.signal: s for s in asyncio.run(observe(target))}


def assert_down(samples: dict[str, Sample], reason: str) -> None:
    assert samples["redis_up"].value == 0.0 and samples["redis_up"].error is None
    for name in ("redis_latency", "redis_memory", "redis_clients"):
        assert samples[name].value is None
        assert "not measured: Redis is down" in str(samples[name].error), samples[name]
        assert reason in str(samples[name].error), samples[name]


def test_healthy_redis_is_up_with_ping_latency_and_info(redis_url: RedisTarget) -> None:
    samples = observe_once(probe(redis_url.url))
    assert samples["redis_up"].value == 1.0
    latency = samples["redis_latency"].value
    assert latency is not None and 0 < latency < 5
    memory = samples["redis_memory"].value
    assert memory is not None and memory > 100_000
    assert samples["redis_clients"].value is not None and samples["redis_clients"].value >= 1


def test_info_fields_follow_the_server(redis_url: RedisTarget) -> None:
    target = probe(redis_url.url)
    before = observe_once(target)
    extra = [redis.Redis.from_url(redis_url.url) for _ in range(3)]
    try:
        for client in extra:
            client.ping()  # each holds one open connection
        extra[0].set(redis_url.key("blob"), b"x" * 4_000_000)
        after = observe_once(target)
    finally:
        for client in extra:
            client.close()
    assert after["redis_clients"].value == (before["redis_clients"].value or 0) + 3
    grown = (after["redis_memory"].value or 0) - (before["redis_memory"].value or 0)
    assert grown >= 4_000_000


def test_stopped_redis_reads_up_zero_and_errors_then_up_again(
    redis_server: RedisServer, redis_url: RedisTarget
) -> None:
    target = probe(redis_url.url)
    assert observe_once(target)["redis_up"].value == 1.0
    try:
        redis_server.stop()
        started = time.monotonic()
        down = observe_once(target)
        assert time.monotonic() - started < 1  # no client retries with backoff
        assert_down(down, "Connect call failed")
    finally:
        redis_server.start()
    assert observe_once(target)["redis_up"].value == 1.0


def test_server_that_never_answers_reads_up_zero_within_the_timeout() -> None:
    with TcpStub(reply=None) as silent:
        started = time.monotonic()
        samples = observe_once(probe(f"redis://127.0.0.1:{silent.port}/0", timeout="1s"))
        assert time.monotonic() - started < 1.0
        assert silent.accepted == 1
    assert_down(samples, "no answer within 0.8s")


def test_server_that_is_not_redis_reads_up_zero() -> None:
    with TcpStub(reply=b"HTTP/1.1 400 Bad Request\r\n\r\n") as garbage:
        samples = observe_once(probe(f"redis://127.0.0.1:{garbage.port}/0", timeout="2s"))
    assert_down(samples, "InvalidResponse: Protocol Error")


def test_rejected_login_is_unknown_not_redis_down(redis_url: RedisTarget) -> None:
    url = redis_url.url.replace("redis://", f"redis://intruder:{PASSWORD}@")
    samples = observe_once(probe(url))
    for sample in samples.values():
        assert sample.value is None
        assert "Redis rejected the probe's login" in str(sample.error), sample


def test_password_never_appears_in_samples(redis_server: RedisServer) -> None:
    with TcpStub(reply=None) as silent, TcpStub(reply=f"-ERR {PASSWORD}\r\n".encode()) as echo:
        urls = [
            f"redis://intruder:{PASSWORD}@127.0.0.1:{redis_server.port}/0",
            f"redis://:{PASSWORD}@127.0.0.1:{silent.port}/0",
            f"redis://:{PASSWORD}@127.0.0.1:{echo.port}/0",  # a server echoing the password
            f"redis://:{PASSWORD}@127.0.0.1:1/0",  # refused
        ]
        for url in urls:
            target = probe(url, timeout="1s")
            assert PASSWORD not in repr(target)
            samples = observe_once(target)
            assert any(s.error for s in samples.values())
            for sample in samples.values():
                assert PASSWORD not in repr(sample)


def test_missing_or_bad_url_is_a_config_error_without_the_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        redis_probe.build("cache", config(), 15.0, {})
    assert str(raised.value) == f"{ENV}: probes.cache.url_env: environment variable is not set"
    for bad in (f"http://:{PASSWORD}@cache:6379", f"redis://:{PASSWORD}@cache:port/0", PASSWORD):
        with pytest.raises(ConfigError) as raised:
            redis_probe.build("cache", config(), 15.0, {ENV: bad})
        assert str(raised.value).startswith(f"{ENV}: probes.cache.url_env: not a Redis URL")
        assert PASSWORD not in str(raised.value)
    absent = str(tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"absent: probes\.cache\.url_file: file not found"):
        redis_probe.build("cache", config(url_file=absent), 15.0, {})


def test_url_from_a_file(redis_url: RedisTarget, tmp_path: Path) -> None:
    secret = tmp_path / "redis-url"
    secret.write_text(redis_url.url + "\n")
    target = redis_probe.build("cache", config(url_file=str(secret)), 15.0, {})
    assert observe_once(target)["redis_up"].value == 1.0
