"""Fixtures for the sample SPEK app: releases as local processes against the suite's PostgreSQL
and Redis, the release images, and a container deployment of them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import pytest

from harness.redis_server import RedisTarget
from harness.spek_app import (
    AppProcess,
    AppStack,
    ImageBuild,
    StartApp,
    app_stack,
    build_app_images,
    require,
)


@pytest.fixture
def start_app(postgres_db: str, redis_url: RedisTarget) -> Iterator[StartApp]:
    """``start_app(version, wait=True, **AppProcess options)``: a release as a local process on
    this test's database and Redis prefix, healthy unless ``wait=False``; all stopped at the
    end of the test."""
    started: list[AppProcess] = []

    def start(version: str, *, wait: bool = True, **options: Any) -> AppProcess:
        options.setdefault("dsn", postgres_db)
        options.setdefault("redis_url", redis_url.url)
        options.setdefault("redis_prefix", redis_url.prefix)
        app = AppProcess(version, **options).start()
        started.append(app)
        if wait:
            require(app.wait_healthy)
        return app

    try:
        yield start
    finally:
        for app in started:
            app.close()


@pytest.fixture(scope="session")
def app_images(docker_engine: docker.DockerClient) -> ImageBuild:
    """Every release's image, built (or found up to date) once per run."""
    build: ImageBuild = require(build_app_images)
    return build


@pytest.fixture(scope="module")
def stack(
    docker_engine: docker.DockerClient, app_images: ImageBuild, request: pytest.FixtureRequest
) -> Iterator[AppStack]:
    """A user network with PostgreSQL and Redis containers, for app containers."""
    with app_stack(docker_engine, request.module.__name__.rsplit(".", 1)[-1]) as made:
        yield made
