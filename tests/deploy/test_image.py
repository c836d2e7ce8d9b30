"""The container image: scripts/build-image builds it, and the CLI runs in it as non-root.

The build is the script's own, run as an operator would: the base image is made once
(debootstrap, about 40 s) and kept in the engine, and an image whose sources have not changed
is not built again (the script compares the hash it labels the image with), so after the first
run this costs about a second.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

from deploy.image_build import BUILD_TIMEOUT, Build, build_image
from harness.docker_engine import NAME_PREFIX, TEST_LABEL
from harness.wait import wait_until
from spek_sentinel import __version__

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-image"
CONFIG = "/etc/spek-sentinel/thresholds.toml"
STATE = "/var/lib/spek-sentinel"
HASH_LABEL = "spek-sentinel.source-hash"

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 120)


@pytest.fixture(scope="module")
def built(sentinel_image: Build) -> Build:
    return sentinel_image


@dataclass(frozen=True)
class Run:
    exit_code: int
    output: str


RunIn = Callable[..., Run]


@pytest.fixture
def run_in(docker_engine: docker.DockerClient, built: Build) -> Iterator[RunIn]:
    """Runs a container of the image to completion; removes it and its state volume."""
    names: list[str] = []

    def run(command: list[str], entrypoint: list[str] | None = None) -> Run:
        name = f"{NAME_PREFIX}image-{uuid.uuid4().hex[:8]}"
        names.append(name)
        container = docker_engine.containers.run(
            built.image,
            command,
            entrypoint=entrypoint,
            name=name,
            detach=True,
            labels={TEST_LABEL: "1"},
            network_mode="none",
        )
        status = container.wait(timeout=120)
        output = container.logs(stdout=True, stderr=True).decode()
        return Run(exit_code=int(status["StatusCode"]), output=output)

    try:
        yield run
    finally:
        for name in names:
            with contextlib.suppress(docker.errors.NotFound):
                docker_engine.api.remove_container(name, force=True, v=True)


def test_the_image_is_tagged_with_the_package_version(built: Build) -> None:
    assert built.image == f"spek-sentinel:{__version__}"


def test_version_runs_in_the_image(run_in: RunIn) -> None:
    result = run_in(["--version"])
    assert (result.exit_code, result.output.strip()) == (0, f"spek-sentinel {__version__}")


def test_validate_runs_in_the_image_as_non_root(run_in: RunIn) -> None:
    result = run_in(["validate", "-c", CONFIG])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{CONFIG}: valid:"), result.output
    whoami = run_in(["-c", "import os; print(os.getuid(), os.getgid())"], entrypoint=["python3"])
    uid, gid = (int(part) for part in whoami.output.split())
    assert uid != 0
    assert gid != 0


def test_the_user_may_write_its_state_volume(run_in: RunIn) -> None:
    probe = f"import pathlib; p = pathlib.Path('{STATE}') / 'probe'; p.write_text('x'); print('ok')"
    result = run_in(["-c", probe], entrypoint=["python3"])
    assert (result.exit_code, result.output.strip()) == (0, "ok"), result.output


def test_the_image_declares_how_it_runs(docker_engine: docker.DockerClient, built: Build) -> None:
    config = docker_engine.images.get(built.image).attrs["Config"]
    assert config["Entrypoint"] == ["spek-sentinel"]
    assert config["Cmd"] == ["run", "-c", CONFIG]
    assert config["User"] not in ("", "0", "root")
    assert "9102/tcp" in config["ExposedPorts"]
    assert STATE in config["Volumes"]
    check = " ".join(config["Healthcheck"]["Test"])
    assert check.startswith("CMD python3 ")
    assert "http://127.0.0.1:9102/healthz" in check
    assert re.fullmatch(r"[0-9a-f]{16}", config["Labels"][HASH_LABEL])
    assert config["Labels"]["org.opencontainers.image.version"] == __version__


def test_the_healthcheck_fails_while_nothing_answers(
    docker_engine: docker.DockerClient, built: Build, run_in: RunIn
) -> None:
    """The check's own command runs in the image and reports an unreachable /healthz."""
    config = docker_engine.images.get(built.image).attrs["Config"]
    command = config["Healthcheck"]["Test"]
    assert command[0] == "CMD"
    result = run_in(command[2:], entrypoint=[command[1]])
    assert result.exit_code != 0
    assert "Connection refused" in result.output


def test_a_second_build_of_the_same_sources_is_skipped(
    docker_engine: docker.DockerClient, built: Build
) -> None:
    for _ in range(3):  # sources edited between two builds (a developer at work) rebuild
        before = docker_engine.images.get(built.image)
        again = build_image()
        after = docker_engine.images.get(again.image)
        if after.labels[HASH_LABEL] == before.labels[HASH_LABEL]:
            assert "is up to date" in again.output, again.output
            assert after.id == before.id
            return
        assert "is up to date" not in again.output, again.output
    pytest.fail("the sources kept changing between builds")


def test_the_dockerfile_pins_the_base_image_the_script_builds() -> None:
    base = subprocess.run(
        [str(SCRIPT), "--base-image"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    assert re.fullmatch(r"spek-sentinel-base:bookworm-py311-[0-9a-f]{12}", base)
    assert f"ARG BASE_IMAGE={base}\n" in (REPO / "Dockerfile").read_text()


MINIMAL_TABLE = """
[sentinel]
state_dir = "/var/lib/spek-sentinel"

[probes.client]
kind = "pushed"
interval = "2s"
signals.render_fps = { unit = "fps", measure = "value" }

[[rules]]
name = "low_render_fps"
signal = "render_fps"
kind = "threshold"
severity = "evaluate"
below = 30
"""


def test_the_daemon_runs_in_the_image_and_its_healthcheck_passes(
    docker_engine: docker.DockerClient, built: Build, tmp_path: Path
) -> None:
    table = tmp_path / "thresholds.toml"
    table.write_text(MINIMAL_TABLE, encoding="utf-8")
    table.chmod(0o644)
    tmp_path.chmod(0o755)
    name = f"{NAME_PREFIX}image-run-{uuid.uuid4().hex[:8]}"
    container = docker_engine.containers.run(
        built.image,  # the image's own command: run -c /etc/spek-sentinel/thresholds.toml
        name=name,
        detach=True,
        labels={TEST_LABEL: "1"},
        network_mode="none",
        volumes={str(table): {"bind": CONFIG, "mode": "ro"}},
    )
    try:
        check = docker_engine.images.get(built.image).attrs["Config"]["Healthcheck"]["Test"]

        def healthy() -> bool:
            container.reload()
            assert container.status in ("created", "running"), container.logs().decode()
            return int(container.exec_run(check[1:]).exit_code) == 0

        wait_until(healthy, timeout=60, message="the image's healthcheck never passed")
        logs = container.logs().decode()
        assert '"event": "watching: 1 probes, 1 rules' in logs, logs
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            docker_engine.api.remove_container(name, force=True, v=True)
