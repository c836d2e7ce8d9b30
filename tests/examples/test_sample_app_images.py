"""The sample app's release images: built by scripts/build-app-images from spek-sentinel's own
base image, cached by the hash of their sources, and run as containers on a user network next to
PostgreSQL and Redis containers, as the runbook's deployment has them."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest
from websockets.sync.client import connect

from harness.spek_app import (
    HASH_LABEL,
    RELEASES,
    AppStack,
    ImageBuild,
    base_image,
    build_app_images,
    fingerprint,
    get,
    query_one,
    require,
    sample,
    scrape,
    write_env_dir,
)
from harness.wait import wait_until
from spek_sentinel.rollback.secret_rotation import rotate_env_secrets

pytestmark = pytest.mark.timeout(900)  # a first build on a fresh machine: debootstrap and wheels


def test_every_release_has_an_image_from_the_sentinels_base(
    app_images: ImageBuild, docker_engine: docker.DockerClient
) -> None:
    assert app_images.images == {v: f"spek-sample/app:{v}" for v in RELEASES}
    base = docker_engine.images.get(require(base_image))
    base_layers = base.attrs["RootFS"]["Layers"]
    hashes = set()
    for version, tag in app_images.images.items():
        image = docker_engine.images.get(tag)
        assert image.attrs["RootFS"]["Layers"][: len(base_layers)] == base_layers, tag
        config = image.attrs["Config"]
        assert f"SPEK_APP_VERSION={version}" in config["Env"]
        assert config["User"] == "10002:10002"
        hashes.add(config["Labels"][HASH_LABEL])
    assert len(hashes) == 1  # one code base, one hash


def test_a_second_build_is_skipped(app_images: ImageBuild) -> None:
    again = require(build_app_images)
    assert again.skipped, again.output
    assert again.images == app_images.images
    assert again.seconds < 15


def test_a_release_container_serves_on_the_network(
    stack: AppStack, docker_engine: docker.DockerClient, tmp_path: Path
) -> None:
    secrets_dir = tmp_path / "spek-app"
    env_file = write_env_dir(secrets_dir, {"SESSION_SECRET": "s" * 24, "JWT_SECRET": "j" * 24})
    app = stack.run_app("v1.0.0", env_dir=secrets_dir)
    health = get(f"{app.url}/healthz").json()
    assert (health["status"], health["version"], health["schema"]) == ("ok", "v1.0.0", 2)
    assert health["secrets"]["JWT_SECRET"] == fingerprint("j" * 24)
    created = get(f"{app.url}/api/tasks", method="POST", body={"kind": "deploy"})
    assert created.status == 201
    wait_until(
        lambda: (
            query_one(
                stack.host_dsn(),
                "SELECT status FROM agent_tasks WHERE id = %s",
                created.json()["id"],
            )
            == "succeeded"
        ),
        timeout=15,
        message="the container's agents running the task",
    )
    with connect(f"ws://127.0.0.1:{app.port}/ws", open_timeout=5) as ws:
        ws.send("through the published port")
        assert ws.recv(timeout=5) == "through the published port"
    assert sample(scrape(app.url), "agent_tasks_total", outcome="succeeded") >= 1

    inspect = docker_engine.api.inspect_container(app.name)
    assert stack.name in inspect["NetworkSettings"]["Networks"]
    app.container.stop(timeout=10)
    app.container.reload()
    assert app.container.attrs["State"]["ExitCode"] == 0  # SIGTERM as PID 1: a clean exit

    # runbook scenario 5's rotation, done by root on the host, reaches the restarted container
    rotate_env_secrets(env_file, ["SESSION_SECRET", "JWT_SECRET"])
    app.container.start()
    rotated = stack.wait_healthy(app)["secrets"]
    assert rotated["JWT_SECRET"] != fingerprint("j" * 24)
    assert rotated["SESSION_SECRET"] != fingerprint("s" * 24)


def test_a_crashing_release_container_exits(stack: AppStack) -> None:
    app = stack.run_app("v2.0.0-crash", wait=False)
    wait_until(
        lambda: app.container.reload() or app.container.status == "exited",
        timeout=30,
        message="v2.0.0-crash's container exiting",
    )
    assert app.container.attrs["State"]["ExitCode"] == 1
    assert "StartupCrashError" in app.logs()
