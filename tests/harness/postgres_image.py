"""A PostgreSQL 15 server image for tests of the "database only inside its container" path.

No registry is reachable, so the image is a Debian root filesystem made by ``debootstrap
--include=postgresql-15`` from the machine's own apt mirror and ``docker import``ed once (about
40 s); it stays in the engine for later runs. Like the official image it reads
``POSTGRES_USER`` / ``POSTGRES_PASSWORD``, but every connection, the local socket included,
asks for the password (scram-sha-256): a test can tell that a password really got through.
The server listens on its unix socket only, so nothing is published on the host.
"""

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors

from harness import HarnessError

POSTGRES_IMAGE = "spek-sentinel-test/postgres:15"
_MAJOR = "15"
_BUILD_LOCK = Path(tempfile.gettempdir()) / "spek-sentinel-test-postgres-image.lock"
_HINT = "install the Debian package `debootstrap` (apt-get install debootstrap)"
_ENTRYPOINT = "/usr/local/bin/spek-postgres-entrypoint"
_ENTRYPOINT_SCRIPT = """\
#!/bin/sh
set -eu
: "${POSTGRES_USER:=postgres}"
if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "set POSTGRES_PASSWORD" >&2
    exit 1
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -A scram-sha-256 \\
        -E UTF8 --no-locale --no-sync > /dev/null
    rm -f "$pwfile"
fi
unset POSTGRES_PASSWORD
exec postgres -D "$PGDATA" -c listen_addresses='' -c fsync=off
"""
_CHANGES = [
    f"ENV PATH=/usr/lib/postgresql/{_MAJOR}/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV PGDATA=/var/lib/postgresql/data",
    "ENV LANG=C.UTF-8",
    "USER postgres",
    f'CMD ["{_ENTRYPOINT}"]',
]
# Debian's own cluster and the download cache: not needed in the image.
_PRUNE = (
    f"etc/postgresql/{_MAJOR}",
    f"var/lib/postgresql/{_MAJOR}",
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
)


def ensure_postgres_image(client: docker.DockerClient) -> str:
    """The PostgreSQL test image, built only when the engine does not have it yet."""
    if _has_image(client):
        return POSTGRES_IMAGE
    with _BUILD_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building it right now
        if not _has_image(client):
            _build(client)
    return POSTGRES_IMAGE


def _has_image(client: docker.DockerClient) -> bool:
    try:
        client.images.get(POSTGRES_IMAGE)
    except docker.errors.ImageNotFound:
        return False
    return True


def _build(client: docker.DockerClient) -> None:
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin")
    if debootstrap is None:
        raise HarnessError(f"`debootstrap` not found, needed to build {POSTGRES_IMAGE}; {_HINT}")
    if os.geteuid() != 0:
        raise HarnessError(f"building {POSTGRES_IMAGE} with debootstrap needs root")
    codename = _codename()
    mirror = _mirror(codename)
    with _workdir() as work:
        root = work / "root"
        _run(
            [debootstrap, "--variant=minbase", f"--include=postgresql-{_MAJOR}",
             codename, str(root), mirror],
            timeout=600,
        )  # fmt: skip
        for relative in _PRUNE:
            shutil.rmtree(root / relative, ignore_errors=True)
        entrypoint = root / _ENTRYPOINT.lstrip("/")
        entrypoint.write_text(_ENTRYPOINT_SCRIPT)
        entrypoint.chmod(0o755)
        archive = work / "rootfs.tar"
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(archive), "."], timeout=300)
        repository, tag = POSTGRES_IMAGE.rsplit(":", 1)
        client.api.import_image_from_file(
            str(archive), repository=repository, tag=tag, changes=_CHANGES
        )
    if not _has_image(client):
        raise HarnessError(f"`docker import` of {POSTGRES_IMAGE} did not produce the image")


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="spek-pg-image-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _codename() -> str:
    text = Path("/etc/os-release").read_text()
    found = re.search(r"^VERSION_CODENAME=\"?([a-z]+)\"?$", text, re.MULTILINE)
    if found is None:
        raise HarnessError("no VERSION_CODENAME in /etc/os-release: not a Debian-like host")
    return found.group(1)


def _mirror(codename: str) -> str:
    """The first apt source that serves ``codename`` (deb822 ``.sources`` or ``sources.list``)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.MULTILINE))
            if codename in fields.get("Suites", "").split() and fields.get("URIs"):
                return fields["URIs"].split()[0]
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        if path.is_file():
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == codename:
                    return words[1]
    raise HarnessError(f"no apt source for `{codename}` in /etc/apt: cannot run debootstrap")


def _run(command: list[str], timeout: float) -> None:
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HarnessError(f"`{' '.join(command)}` failed: {exc}") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise HarnessError(f"`{' '.join(command)}` exited with {result.returncode}\n{tail}")
