"""The docker app backend against the real engine: a v2 container rolled back to the v1 image."""

import contextlib
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest

from harness import HarnessError
from harness.app_images import APP_PORT, app_image, ensure_app_images
from harness.docker_engine import DOCKER_HOST, NAME_PREFIX, TEST_LABEL
from harness.ports import free_port
from harness.wait import wait_until
from spek_sentinel.rollback.apps.base import (
    AppBackend,
    AppBackendError,
    AppState,
    TargetMissingError,
)
from spek_sentinel.rollback.apps.docker import DockerAppSettings, DockerBackend, recreate_config

V1, V2, V3 = app_image("v1"), app_image("v2"), app_image("v3")


@pytest.fixture(scope="module")
def app_images(docker_engine: docker.DockerClient) -> dict[str, str]:
    try:
        return ensure_app_images(docker_engine)
    except (HarnessError, docker.errors.DockerException) as exc:
        failure = f"could not build the app test images: {exc}"
    pytest.fail(failure, pytrace=False)


class App:
    """Runs the "current" app container under a unique name; at the end removes it, whatever a
    rollback left under that name or set aside next to it, and the volumes and networks made."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.name = f"{NAME_PREFIX}app-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.volumes: list[str] = []
        self.networks: list[str] = []

    def run(self, image: str, **options: Any) -> Any:
        labels = {TEST_LABEL: "1", **options.pop("labels", {})}
        return self.client.containers.run(
            image,
            name=self.name,
            detach=True,
            init=True,  # httpd is not PID 1, so SIGTERM stops it at once
            labels=labels,
            ports={f"{APP_PORT}/tcp": ("127.0.0.1", self.port)},
            **options,
        )

    def volume(self) -> str:
        name = f"{self.name}-data"
        self.client.volumes.create(name, labels={TEST_LABEL: "1"})
        self.volumes.append(name)
        return name

    def network(self) -> str:
        name = f"{self.name}-net"
        self.client.networks.create(name, labels={TEST_LABEL: "1"})
        self.networks.append(name)
        return name

    def inspect(self, name: str | None = None) -> Any:
        return self.client.api.inspect_container(name or self.name)

    def set_aside(self) -> list[Any]:
        prefix = f"/{self.name}-replaced-"
        found = self.client.api.containers(all=True, filters={"name": prefix.lstrip("/")})
        return [c for c in found if any(n.startswith(prefix) for n in c["Names"])]

    def served(self) -> str:
        url = f"http://127.0.0.1:{self.port}/"
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode().strip())

    def wait_serving(self, version: str) -> None:
        wait_until(
            lambda: self.served() == version,
            timeout=15,
            ignore=(OSError,),
            message=f"{self.name} does not serve {version} on 127.0.0.1:{self.port}",
        )

    def close(self) -> None:
        for container in self.client.api.containers(all=True, filters={"name": self.name}):
            if any(n.lstrip("/").startswith(self.name) for n in container["Names"]):
                self.client.api.remove_container(container["Id"], force=True)
        for name in self.volumes:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_volume(name, force=True)
        for name in self.networks:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_network(name)


@pytest.fixture
def app(docker_engine: docker.DockerClient, app_images: dict[str, str]) -> Iterator[App]:
    assert set(app_images) >= {"v1", "v2", "v3"}
    runner = App(docker_engine)
    try:
        yield runner
    finally:
        runner.close()


def backend(app: App) -> AppBackend:  # the contract, checked by mypy
    return DockerBackend(DockerAppSettings(container=app.name, docker_host=DOCKER_HOST))


def test_rollback_recreates_the_container_from_the_previous_image_with_its_settings(
    app: App,
) -> None:
    volume, network = app.volume(), app.network()
    current = app.run(
        V2,
        environment={"FEATURE_FLAG": "on", "DATABASE_URL": "postgres://app:hunter22@db/app"},
        labels={"team": "web"},
        volumes={volume: {"bind": "/data", "mode": "rw"}},
        restart_policy={"Name": "unless-stopped"},
        network=network,
    )
    app.wait_serving("v2")
    assert current.exec_run(["sh", "-c", "echo kept > /data/marker"]).exit_code == 0
    apps = backend(app)
    assert apps.current_release() == V2

    assert apps.stop(timeout=30).changed
    again = apps.stop(timeout=30)
    assert not again.changed, "stopping a stopped container is fine and changes nothing"
    assert "already stopped" in again.action

    out = apps.rollback_to(V1, timeout=60)
    assert out.changed
    assert "hunter22" not in out.output and "DATABASE_URL" in out.output  # names, not values
    app.wait_serving("v1")

    new = app.inspect()
    assert new["Config"]["Image"] == V1
    env = set(new["Config"]["Env"])
    assert {"FEATURE_FLAG=on", "APP_VERSION=v1"} <= env, "operator's env, v1's own defaults"
    assert "APP_VERSION=v2" not in env
    assert new["Config"]["Labels"]["team"] == "web"
    assert new["Config"]["Labels"]["org.opencontainers.image.version"] == "v1"
    assert new["HostConfig"]["PortBindings"] == {
        f"{APP_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(app.port)}]
    }
    assert new["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert new["HostConfig"]["NetworkMode"] == network
    assert [(m["Name"], m["Destination"]) for m in new["Mounts"]] == [(volume, "/data")]
    marker = app.client.containers.get(app.name).exec_run(["cat", "/data/marker"])
    assert marker.output.decode().strip() == "kept", "the same volume, with its data"

    [kept] = app.set_aside()
    old = app.inspect(kept["Id"])
    assert old["Id"] == current.id and old["Config"]["Image"] == V2
    assert old["State"]["Status"] == "exited"
    assert old["HostConfig"]["RestartPolicy"]["Name"] == "no", "the bad release stays down"
    assert kept["Names"][0].lstrip("/") in out.action

    assert apps.current_release() == V1
    assert not apps.start(timeout=30).changed, "starting a running container changes nothing"
    assert not apps.rollback_to(V1, timeout=60).changed, "already on the release: nothing to do"
    assert len(app.set_aside()) == 1


def test_rollback_of_a_running_container_stops_it_and_keeps_an_overridden_entrypoint(
    app: App,
) -> None:
    app.run(V2, entrypoint=["busybox"], command=["httpd", "-f", "-p", str(APP_PORT), "-h", "/www"])
    app.wait_serving("v2")

    backend(app).rollback_to(V1, timeout=60)

    app.wait_serving("v1")
    new = app.inspect()
    assert new["Config"]["Entrypoint"] == ["busybox"]
    assert new["Config"]["Cmd"] == ["httpd", "-f", "-p", str(APP_PORT), "-h", "/www"]
    assert new["HostConfig"]["NetworkMode"] == "default"
    assert [app.inspect(c["Id"])["State"]["Status"] for c in app.set_aside()] == ["exited"]


def test_a_missing_image_fails_before_anything_is_stopped(app: App) -> None:
    app.run(V2)
    app.wait_serving("v2")
    apps = backend(app)
    missing = f"spek-sentinel-test/app:missing-{uuid.uuid4().hex[:6]}"

    assert apps.target_exists(V1)
    assert not apps.target_exists(missing)
    assert not apps.target_exists("Not A Reference")
    assert not apps.target_exists("--all")
    with pytest.raises(TargetMissingError) as caught:
        apps.rollback_to(missing, timeout=60)

    assert caught.value.state is AppState.UNCHANGED and not caught.value.changed
    assert missing in str(caught.value)
    assert app.inspect()["State"]["Status"] == "running"
    assert app.served() == "v2"
    assert app.set_aside() == []


def test_a_new_container_that_cannot_start_gives_the_old_one_its_name_back(app: App) -> None:
    app.run(V2, restart_policy={"Name": "unless-stopped"})
    app.wait_serving("v2")
    apps = backend(app)
    apps.stop(timeout=30)
    # Something else took the app's port while it was down: the new container cannot bind it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT only
        squatter.bind(("127.0.0.1", app.port))
        squatter.listen()
        with pytest.raises(AppBackendError) as caught:
            apps.rollback_to(V1, timeout=60)

    error = caught.value
    assert error.state is AppState.STOPPED and error.changed
    assert "renamed back" in error.detail and "removed" in error.detail
    old = app.inspect()
    assert old["Config"]["Image"] == V2 and old["State"]["Status"] == "exited"
    assert old["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped", "policy restored"
    assert app.set_aside() == []
    containers = app.client.api.containers(all=True, filters={"name": app.name})
    assert len(containers) == 1, "the half-made new container is gone"

    apps.start(timeout=30)  # the undo is complete: the old release can come back as it was
    app.wait_serving("v2")


def test_a_container_that_does_not_exist_is_an_error_not_stopped(app: App) -> None:
    apps = backend(app)  # nothing runs under app.name
    for operation in (apps.stop, apps.start, apps.current_release):
        with pytest.raises(AppBackendError, match=f"no container named {app.name}"):
            operation()


def test_recreate_config_leaves_image_defaults_to_the_new_image_and_keeps_anonymous_volumes() -> (
    None
):
    container: dict[str, Any] = {
        "Id": "0123456789abcdef",
        "Config": {
            "Hostname": "0123456789ab",
            "Image": V2,
            "Env": ["PATH=/bin", "APP_VERSION=v2", "FEATURE=on"],
            "Cmd": ["serve"],
            "Entrypoint": None,
            "WorkingDir": "/app",
            "Labels": {"team": "web", "version": "v2"},
            "Volumes": {"/cache": {}, "/image-volume": {}},
        },
        "HostConfig": {"Binds": ["named:/data:rw"], "NetworkMode": "default", "Mounts": None},
        "Mounts": [
            {"Type": "volume", "Name": "named", "Destination": "/data", "RW": True},
            {"Type": "volume", "Name": "abc123", "Destination": "/cache", "RW": False},
        ],
        "NetworkSettings": {"Networks": {"bridge": {}}},
    }
    old_image: dict[str, Any] = {
        "Config": {
            "Env": ["PATH=/bin", "APP_VERSION=v2"],
            "Cmd": ["serve"],
            "Entrypoint": None,
            "WorkingDir": "/app",
            "Labels": {"version": "v2"},
            "Volumes": {"/image-volume": {}},
        }
    }

    config = recreate_config(container, old_image, V1)

    assert config["Image"] == V1
    assert "Hostname" not in config and "Cmd" not in config and "WorkingDir" not in config
    assert config["Env"] == ["FEATURE=on"]
    assert config["Labels"] == {"team": "web"}
    assert config["Volumes"] == {"/cache": {}}
    assert config["HostConfig"]["Binds"] == ["named:/data:rw", "abc123:/cache:ro"]
    assert "NetworkingConfig" not in config
    # Without the old image nothing can be told apart: everything is carried over.
    assert recreate_config(container, None, V1)["Env"] == container["Config"]["Env"]
