"""The sample SPEK app (examples/spek_app) for tests: its releases as local processes, its images,
and a container deployment of it on a user network with a PostgreSQL and a Redis container.

- ``AppProcess``: ``python -m spek_app serve`` of one release with this interpreter, against the
  suite's PostgreSQL and Redis; no Docker needed.
- ``build_app_images()``: runs ``scripts/build-app-images`` as an operator would; the script
  skips releases whose image already carries the hash of the current sources.
- ``AppStack``: a user network holding ``<name>-postgres`` (the PostgreSQL test image, listening
  on the network with a password), ``<name>-redis`` (the host's redis-server in the same base
  image as the app) and app containers, each published on 127.0.0.1 for the test. This is the
  runbook's layout: ``spek-postgres``, ``spek-redis`` and the app, side by side.

The app's own constants (releases, migrations directory, integrity query, tokens) are imported
from the package itself: ``spek_app`` is put on ``sys.path`` from examples/.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
import psutil
import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from harness import HarnessError, log_tail
from harness.docker_engine import NAME_PREFIX, TEST_LABEL
from harness.ports import free_port
from harness.postgres_image import ensure_postgres_image
from harness.wait import WaitTimeoutError, wait_until

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "examples" / "spek_app"
BUILD_SCRIPT = REPO / "scripts" / "build-app-images"
BASE_SCRIPT = REPO / "scripts" / "build-image"
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

from spek_app import auth  # noqa: E402 - after the path it is found on
from spek_app.integrity import INTEGRITY_SQL  # noqa: E402
from spek_app.migrate import MIGRATIONS_DIR  # noqa: E402
from spek_app.releases import GOOD, RELEASES, Fault, Release  # noqa: E402

__all__ = [
    "APP_DIR",
    "GOOD",
    "HASH_LABEL",
    "INTEGRITY_SQL",
    "MIGRATIONS_DIR",
    "RELEASES",
    "AppContainer",
    "AppProcess",
    "AppStack",
    "Fault",
    "ImageBuild",
    "Release",
    "StartApp",
    "admin_token",
    "app_image",
    "base_image",
    "build_app_images",
    "fingerprint",
    "get",
    "query_one",
    "sample",
    "scrape",
    "write_env_dir",
]

IMAGE_REPOSITORY = "spek-sample/app"
HASH_LABEL = "spek-sample.source-hash"
APP_PORT = 8080  # inside the container
APP_UID = 10002  # the image's user: an env file mounted into it must be readable by it
BUILD_TIMEOUT = 900  # a first build: debootstrap of the base, wheels from the index
_DOCKER_HINT = "install docker.io and debootstrap (apt-get install docker.io debootstrap)"
_REDIS_HINT = "install the Debian package `redis-server` (apt-get install redis-server)"


def app_image(version: str) -> str:
    return f"{IMAGE_REPOSITORY}:{version}"


def admin_token(jwt_secret: str) -> str:
    token: str = auth.issue(jwt_secret, "test", "admin")
    return token


def fingerprint(secret: str) -> str:
    """How /healthz names a secret in use."""
    name: str = auth.fingerprint(secret)
    return name


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


def get(
    url: str,
    *,
    method: str = "GET",
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Answer:
    """One request; an HTTP error status is an answer, not an exception."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - a test's own 127.0.0.1 URL
        url, data=data, method=method, headers=dict(headers or {})
    )
    if data is not None:
        request.add_header("Content-Type", "application/json")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return Answer(response.status, response.read(), time.perf_counter() - started)
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.read(), time.perf_counter() - started)


def _healthy(url: str) -> dict[str, Any] | None:
    try:
        answer = get(f"{url}/healthz", timeout=3)
    except (urllib.error.URLError, OSError):
        return None
    if answer.status != 200:
        return None
    found: dict[str, Any] = answer.json()
    return found


def scrape(url: str) -> dict[str, Any]:
    """``url``/metrics parsed by prometheus_client's own parser: family name -> family."""
    answer = get(f"{url}/metrics")
    assert answer.status == 200
    return {family.name: family for family in text_string_to_metric_families(answer.body.decode())}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    """The value of the one sample ``name`` with ``labels`` (0 when there is none)."""
    for family in families.values():
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


def query_one(dsn: str, query: str, *params: object) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return row[0]


# --- a release as a local process ---


@dataclass
class AppProcess:
    """``python -m spek_app serve`` of one release on 127.0.0.1:<free port>.

    The DSN, Redis URL and secrets go in the environment, never in argv. ``start()`` returns
    once the process runs; ``wait_healthy()`` once /healthz answers 200 (it fails at once, with
    the log, when the process exits instead).
    """

    version: str
    dsn: str
    redis_url: str
    redis_prefix: str = "spek-app:"
    agent_interval: float = 0.2
    env: Mapping[str, str] = field(default_factory=dict)
    session_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log_dir: Path | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def log_path(self) -> Path:
        assert self._log_dir is not None, "not started"
        return self._log_dir / "app.log"

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "spek_app", *args]

    def environment(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(APP_DIR), os.environ.get("PYTHONPATH", "")) if p)
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("SPEK_APP_")},
            "PYTHONPATH": path,
            "PYTHONUNBUFFERED": "1",
            "SPEK_APP_DSN": self.dsn,
            "SPEK_APP_REDIS_URL": self.redis_url,
            "SPEK_APP_REDIS_PREFIX": self.redis_prefix,
            "SESSION_SECRET": self.session_secret,
            "JWT_SECRET": self.jwt_secret,
            **self.env,
        }

    def start(self) -> AppProcess:
        self._log_dir = Path(tempfile.mkdtemp(prefix="spek-app-"))
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(
                "serve", "--port", str(self.port), "--version", self.version,
                "--agent-interval", str(self.agent_interval),
            ),
            cwd=self._log_dir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        return self

    def wait_healthy(self, timeout: float = 30.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise HarnessError(
                    f"spek-app {self.version} exited with {code} before it was healthy\n"
                    f"--- {self.log_path} ---\n{self.log()}"
                )
            return _healthy(self.url)

        try:
            found = wait_until(
                ready, timeout=timeout, interval=0.05, message=f"spek-app {self.version} healthy"
            )
        except WaitTimeoutError as exc:
            raise HarnessError(f"{exc}\n--- {self.log_path} ---\n{self.log()}") from exc
        assert found is not None
        return found

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(
                f"spek-app {self.version} still runs after {timeout}s\n{self.log()}"
            ) from None

    def log(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines) if self._log_dir else "(not started)"

    def rss(self) -> int:
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def migrate(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``python -m spek_app migrate ARGS`` against the same database (the app's command)."""
        return subprocess.run(
            self.command("migrate", *args, "--version", self.version),
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self, timeout: float = 15.0) -> int | None:
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            code = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def close(self) -> None:
        self.stop()
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None


StartApp = Callable[..., AppProcess]  # the start_app fixture: (version, wait=True, **options)


# --- images ---


@dataclass(frozen=True)
class ImageBuild:
    images: dict[str, str]  # version -> image
    output: str  # the script's messages
    seconds: float

    @property
    def skipped(self) -> bool:
        """True when no image was built: every one had the current sources' hash."""
        return "up to date" in self.output and "building" not in self.output


def build_app_images(*versions: str, force: bool = False) -> ImageBuild:
    """The images of ``versions`` (all releases when none), via scripts/build-app-images."""
    if shutil.which("docker") is None:
        raise HarnessError(f"the `docker` command is missing; {_DOCKER_HINT}")
    command = [str(BUILD_SCRIPT), *(["--force"] if force else []), *versions]
    started = time.monotonic()
    try:
        result = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"scripts/build-app-images took over {BUILD_TIMEOUT}s: {exc}") from exc
    if result.returncode != 0:
        raise HarnessError(
            f"scripts/build-app-images exited with {result.returncode}:\n{result.stderr}"
        )
    images = result.stdout.split()
    return ImageBuild(
        images={image.split(":", 1)[1]: image for image in images},
        output=result.stderr,
        seconds=time.monotonic() - started,
    )


def base_image() -> str:
    """The base image tag spek-sentinel's scripts/build-image gives (the app images' base)."""
    try:
        result = subprocess.run(
            [str(BASE_SCRIPT), "--base-image"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise HarnessError(f"`scripts/build-image --base-image` failed: {exc}") from exc
    return result.stdout.strip()


# --- Redis in a container: the host's redis-server in the base image ---


REDIS_PORT = 6379
_REDIS_DOCKERFILE = """\
FROM {base}
COPY bin/ /usr/local/bin/
COPY lib/ /usr/local/lib/
RUN ldconfig && redis-server --version
USER 65534:65534
EXPOSE {port}
CMD ["redis-server", "--bind", "0.0.0.0", "--port", "{port}", "--protected-mode", "no", \
"--save", "", "--appendonly", "no", "--dir", "/tmp"]
"""


def ensure_redis_image(client: docker.DockerClient, base: str) -> str:
    """``spek-sample/redis:<host version>``: this host's redis-server and the libraries the base
    image lacks, on the same Debian release. Built once; kept in the engine."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise HarnessError(f"`redis-server` not found; {_REDIS_HINT}")
    version = re.search(r"v=(\S+)", _output([binary, "--version"]))
    tag = f"spek-sample/redis:{version.group(1) if version else 'local'}"
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.get(tag)
        return tag
    _same_debian(client, base)
    present = set(re.findall(r"^\s*(\S+) \(", _in_image(client, base, ["ldconfig", "-p"]), re.M))
    needed = dict(re.findall(r"^\s*(\S+) => (/\S+)", _output(["ldd", binary]), re.M))
    files = {"bin/redis-server": Path(binary).resolve()}
    files |= {  # the files themselves, under their sonames (not the symlinks ldd shows)
        f"lib/{name}": Path(path).resolve() for name, path in needed.items() if name not in present
    }
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = _REDIS_DOCKERFILE.format(base=base, port=REDIS_PORT).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        for directory in ("bin", "lib"):
            entry = tarfile.TarInfo(directory)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(entry)
        for name, path in files.items():
            tar.add(str(path), arcname=name)
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, pull=False)
    client.images.get(tag)  # fails loudly if the build did not land
    return tag


def _same_debian(client: docker.DockerClient, base: str) -> None:
    def codename(text: str) -> str:
        found = re.search(r"^VERSION_CODENAME=\"?(\w+)", text, re.M)
        return found.group(1) if found else "?"

    host = codename(Path("/etc/os-release").read_text())
    image = codename(_in_image(client, base, ["cat", "/etc/os-release"]))
    if host != image:
        raise HarnessError(
            f"the Redis test image copies this host's redis-server into {base}, which needs the "
            f"same Debian release: the host is {host}, the image {image}"
        )


def _in_image(client: docker.DockerClient, image: str, command: list[str]) -> str:
    output: bytes = client.containers.run(image, command, remove=True, network_mode="none")
    return output.decode()


def _output(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout


# --- a container deployment ---


def write_env_dir(directory: Path, values: Mapping[str, str]) -> Path:
    """The app's env file ``directory``/app.env, for mounting at /run/spek-app: mode 0640, group
    of the image's user, in a setgid directory of that group. spek-sentinel's secret rotation
    replaces the file with a new one of the same mode but owned by whoever rotates (root): the
    setgid directory gives the new file the app's group again, so the app can still read it."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chown(directory, -1, APP_UID)
    directory.chmod(0o2750)
    env_file = directory / "app.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    os.chown(env_file, -1, APP_UID)
    env_file.chmod(0o640)
    return env_file


_POSTGRES_SCRIPT = """\
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -A scram-sha-256 \\
        -E UTF8 --no-locale --no-sync > /dev/null
    rm -f "$pwfile"
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
fi
unset POSTGRES_PASSWORD
exec postgres -D "$PGDATA" -c listen_addresses='*' -c fsync=off -c max_connections=50
"""


@dataclass(frozen=True)
class Service:
    container: str  # its name: also its host name on the network
    host_port: int  # published on 127.0.0.1


@dataclass
class AppContainer:
    name: str
    version: str
    port: int  # published on 127.0.0.1
    container: Any

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        self.container.reload()
        text: bytes = self.container.logs()
        return text.decode(errors="replace")


class AppStack:
    """A user network ``<name>`` with ``<name>-postgres`` (database ``spek_db`` of ``spek_user``),
    ``<name>-redis`` and app containers. ``close()`` removes all of it."""

    DB_USER = "spek_user"
    DB_NAME = "spek_db"

    def __init__(self, client: docker.DockerClient, label: str, base: str) -> None:
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:24]
        self.client = client
        self.base = base
        self.name = f"{NAME_PREFIX}{slug}-{uuid.uuid4().hex[:6]}"
        self.password = secrets.token_urlsafe(18)
        self.network: Any = None
        self.postgres: Service | None = None
        self.redis: Service | None = None
        self._containers: list[str] = []

    # -- addresses --

    @property
    def dsn(self) -> str:
        """The database as the app containers see it, on the network."""
        assert self.postgres is not None
        return (
            f"postgresql://{self.DB_USER}:{self.password}@{self.postgres.container}:5432/"
            f"{self.DB_NAME}"
        )

    def host_dsn(self, dbname: str | None = None) -> str:
        """The database as the test (or a sentinel on the host) sees it."""
        assert self.postgres is not None
        return (
            f"postgresql://{self.DB_USER}:{self.password}@127.0.0.1:{self.postgres.host_port}/"
            f"{dbname or self.DB_NAME}"
        )

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return f"redis://{self.redis.container}:{REDIS_PORT}/0"

    @property
    def host_redis_url(self) -> str:
        assert self.redis is not None
        return f"redis://127.0.0.1:{self.redis.host_port}/0"

    # -- lifecycle --

    def start(self, timeout: float = 60.0) -> AppStack:
        self.network = self.client.networks.create(
            self.name, driver="bridge", labels={TEST_LABEL: "1"}
        )
        postgres_image = ensure_postgres_image(self.client)
        redis_image = ensure_redis_image(self.client, self.base)
        self.postgres = self._service(
            "postgres",
            postgres_image,
            5432,
            entrypoint=["sh", "-c", _POSTGRES_SCRIPT],
            environment={"POSTGRES_USER": self.DB_USER, "POSTGRES_PASSWORD": self.password},
        )
        self.redis = self._service("redis", redis_image, REDIS_PORT)
        wait_until(
            self._postgres_ready,
            timeout=timeout,
            message=f"PostgreSQL in {self.postgres.container}",
            ignore=(psycopg.OperationalError,),
        )
        with psycopg.connect(self.host_dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.DB_NAME}"')
        wait_until(
            self._redis_ready,
            timeout=timeout,
            message=f"Redis in {self.redis.container}",
            ignore=(redis.exceptions.ConnectionError,),
        )
        return self

    def run_app(
        self,
        version: str,
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        env_dir: Path | None = None,
        port: int | None = None,
        wait: bool = True,
        timeout: float = 60.0,
    ) -> AppContainer:
        """A container of ``version``'s image on the network, published on 127.0.0.1:``port``
        (a fixed port: a rollback that recreates the container keeps it). Secrets go in
        ``env`` or, as the runbook's .env file, in ``env_dir``/app.env mounted read-only at
        /run/spek-app (its files must be readable by uid 10002). The version is never put in
        the environment: it comes from the image, so a rollback to another image changes it."""
        port = port or free_port()
        name = name or f"{self.name}-app-{uuid.uuid4().hex[:4]}"
        environment = {
            "SPEK_APP_DSN": self.dsn,
            "SPEK_APP_REDIS_URL": self.redis_url,
            "SPEK_APP_AGENT_INTERVAL": "0.2",
            **(env or {}),
        }
        if "SPEK_APP_VERSION" in environment:
            raise HarnessError("the version comes from the image; do not set SPEK_APP_VERSION")
        volumes = {}
        if env_dir is not None:
            volumes[str(env_dir)] = {"bind": "/run/spek-app", "mode": "ro"}
            environment["SPEK_APP_ENV_FILE"] = "/run/spek-app/app.env"
        self._containers.append(name)
        container = self.client.containers.run(
            app_image(version),
            name=name,
            detach=True,
            network=self.name,
            environment=environment,
            volumes=volumes,
            ports={f"{APP_PORT}/tcp": ("127.0.0.1", port)},
            labels={TEST_LABEL: "1"},
        )
        app = AppContainer(name, version, port, container)
        if wait:
            self.wait_healthy(app, timeout)
        return app

    def wait_healthy(self, app: AppContainer, timeout: float = 60.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            app.container.reload()
            if app.container.status in {"exited", "dead"}:
                raise HarnessError(f"{app.name} exited:\n{app.logs()[-3000:]}")
            return _healthy(app.url)

        try:
            found = wait_until(ready, timeout=timeout, interval=0.1, message=f"{app.name} healthy")
        except WaitTimeoutError as exc:
            raise HarnessError(f"{exc}\n{app.logs()[-3000:]}") from exc
        assert found is not None
        return found

    def close(self) -> None:
        for name in reversed(self._containers):
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_container(name, force=True, v=True)
        self._containers.clear()
        if self.network is not None:
            with contextlib.suppress(docker.errors.NotFound):
                self.network.reload()
                for attached in self.network.containers:  # e.g. a rollback's replacement
                    with contextlib.suppress(docker.errors.NotFound):
                        self.client.api.remove_container(attached.id, force=True, v=True)
                self.network.remove()
            self.network = None

    # -- internals --

    def _service(self, role: str, image: str, port: int, **options: Any) -> Service:
        name = f"{self.name}-{role}"
        host_port = free_port()
        self._containers.append(name)
        self.client.containers.run(
            image,
            name=name,
            detach=True,
            network=self.name,
            ports={f"{port}/tcp": ("127.0.0.1", host_port)},
            labels={TEST_LABEL: "1"},
            **options,
        )
        return Service(name, host_port)

    def _postgres_ready(self) -> bool:
        self._alive("postgres")
        with psycopg.connect(self.host_dsn("postgres"), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def _redis_ready(self) -> bool:
        self._alive("redis")
        with redis.Redis.from_url(self.host_redis_url, socket_connect_timeout=2) as client:
            return bool(client.ping())

    def _alive(self, role: str) -> None:
        container = self.client.containers.get(f"{self.name}-{role}")
        if container.status in {"exited", "dead"}:
            raise HarnessError(f"{container.name} exited:\n{container.logs().decode()[-2000:]}")


def require(provide: Any, *args: Any, **kwargs: Any) -> Any:
    """A missing service fails the test with what to install; it is never a skip."""
    try:
        return provide(*args, **kwargs)
    except HarnessError as exc:
        failure = str(exc)
    pytest.fail(failure, pytrace=False)


@contextlib.contextmanager
def app_stack(client: docker.DockerClient, label: str) -> Iterator[AppStack]:
    stack = AppStack(client, label, require(base_image))
    try:
        require(stack.start)
        yield stack
    finally:
        stack.close()
