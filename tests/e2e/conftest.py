"""Fixtures for the end-to-end scenarios: the sample app's images, and one site per test.

Every scenario starts from a release the daemon has marked known good, and the daemon judges
release health once a minute. So the sites of a module's selected tests are warmed up side by
side, in threads, as soon as the module starts (``warmups``); each test then takes its own site
(``site``, parametrized indirectly with the scenario's name), runs its deploy against it and
removes it at its end. One stack per test, and about one minute of warm-up per run rather than
per test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import pytest

from e2e.sites import Site
from harness.docker_engine import connect
from harness.spek_app import ImageBuild, base_image, build_app_images, require

# name -> Site options and whether the warm-up waits for the known-good mark
SCENARIOS: dict[str, dict[str, Any]] = {
    "blind": {"blind_after": "8s", "known_good": False},
    "migration_failed": {},
    "high_error_rate": {},
    "data_corruption": {"backup_every": "20s"},
    "performance_degradation": {},
    "security_breach": {"backup_every": "20s"},
}
WARM_UP_TIMEOUT = 300.0


@pytest.fixture(scope="session")
def sample_images(docker_engine: docker.DockerClient) -> ImageBuild:
    """Every release's image, built by scripts/build-app-images or found up to date."""
    build: ImageBuild = require(build_app_images)
    return build


class Warmups:
    """Sites warming up in threads; ``take`` waits for one and hands it over."""

    def __init__(self, names: list[str], base: str, root: Path) -> None:
        self.sites: dict[str, Site] = {}
        self.futures: dict[str, Future[Site]] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(len(names), 1), thread_name_prefix="site")
        for name in names:
            options = dict(SCENARIOS[name])
            known_good = bool(options.pop("known_good", True))
            directory = root / name
            directory.mkdir(parents=True)
            site = Site(connect(timeout=120), base, directory, name, **options)
            self.sites[name] = site
            self.futures[name] = self._pool.submit(site.warm_up, known_good=known_good)

    def take(self, name: str) -> Site:
        try:
            return self.futures[name].result(timeout=WARM_UP_TIMEOUT)
        except Exception as exc:
            site = self.sites[name]
            tail = site.daemon.tail() if site.daemon is not None else "(no daemon started)"
            pytest.fail(f"site {name} did not warm up: {exc!r}\n{tail}", pytrace=False)

    def close(self, name: str) -> None:
        site = self.sites[name]
        with contextlib.suppress(Exception):
            self.futures[name].result(timeout=WARM_UP_TIMEOUT)  # never close under a warm-up
        site.close()
        site.client.close()

    def close_all(self) -> None:
        for name in self.sites:
            self.close(name)
        self._pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def warmups(
    request: pytest.FixtureRequest,
    docker_engine: docker.DockerClient,
    sample_images: ImageBuild,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Warmups]:
    names = []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if getattr(item, "module", None) is request.module and "site" in params:
            names.append(str(params["site"]))
    made = Warmups(list(dict.fromkeys(names)), require(base_image), tmp_path_factory.mktemp("e2e"))
    try:
        yield made
    finally:
        made.close_all()


@pytest.fixture
def site(request: pytest.FixtureRequest, warmups: Warmups) -> Iterator[Site]:
    name = str(request.param)
    try:
        yield warmups.take(name)
    finally:
        warmups.close(name)
