"""Tiny application images for rollback tests: busybox httpd serving its own version.

Each release ``vN`` is ``spek-sentinel-test/app:vN``, built FROM the busybox test image with
``/www/index.html`` holding ``vN`` and ``APP_VERSION=vN`` in its environment, listening on
8080. Built from an in-memory context, once: a tag the engine already has is reused.
"""

import io
import tarfile

import docker
import docker.errors

from harness.docker_engine import ensure_busybox_image

APP_REPOSITORY = "spek-sentinel-test/app"
APP_PORT = 8080
RELEASES = ("v1", "v2", "v3")

_DOCKERFILE = """\
FROM {base}
COPY www /www
ENV APP_VERSION={version}
LABEL org.opencontainers.image.version={version}
CMD ["busybox", "httpd", "-f", "-p", "{port}", "-h", "/www"]
"""


def app_image(version: str) -> str:
    return f"{APP_REPOSITORY}:{version}"


def _context(base: str, version: str) -> io.BytesIO:
    files = {
        "Dockerfile": _DOCKERFILE.format(base=base, version=version, port=APP_PORT).encode(),
        "www/index.html": f"{version}\n".encode(),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def ensure_app_image(client: docker.DockerClient, version: str) -> str:
    """The image of release ``version``, built only when the engine does not have it yet."""
    tag = app_image(version)
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        base = ensure_busybox_image(client)
        client.images.build(
            fileobj=_context(base, version), custom_context=True, tag=tag, rm=True, pull=False
        )
        client.images.get(tag)  # fails loudly if the build did not land
    return tag


def ensure_app_images(client: docker.DockerClient) -> dict[str, str]:
    """Every release's image by version."""
    return {version: ensure_app_image(client, version) for version in RELEASES}
