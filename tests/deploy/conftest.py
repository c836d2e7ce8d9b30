"""The product image, built once per run (see image_build)."""

from __future__ import annotations

import docker
import pytest

from deploy.image_build import Build, build_image


@pytest.fixture(scope="session")
def sentinel_image(docker_engine: docker.DockerClient) -> Build:
    return build_image()
