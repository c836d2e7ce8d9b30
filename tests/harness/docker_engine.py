"""A real Docker engine for the tests, and a tiny busybox image to run containers from.

The engine is the machine's own dockerd on /var/run/docker.sock: used as it is when it
answers, else started here (and stopped at the end of the session, only then). No registry is
reachable, so the image is built from the host's static busybox and ``docker import``ed once;
it stays in the engine for later runs.
"""

import contextlib
import fcntl
import io
import re
import shutil
import signal
import struct
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
import psutil
import pytest
import requests

from harness import HarnessError, log_tail
from harness.wait import WaitTimeoutError, wait_until

DOCKER_HOST = "unix:///var/run/docker.sock"
SOCKET = Path("/var/run/docker.sock")
BUSYBOX_IMAGE = "spek-sentinel-test/busybox:1"
NAME_PREFIX = "spek-test-"
TEST_LABEL = "spek-sentinel-test"
_ENGINE_HINT = "install the Debian package `docker.io` (apt-get install docker.io)"
_BUSYBOX_HINT = "install the Debian package `busybox-static` (apt-get install busybox-static)"
_LOCKS = Path(tempfile.gettempdir())
_USE_LOCK = _LOCKS / "spek-sentinel-test-dockerd.use.lock"  # shared while a session uses it
_START_LOCK = _LOCKS / "spek-sentinel-test-dockerd.start.lock"
_STARTED_PID = _LOCKS / "spek-sentinel-test-dockerd.pid"  # a dockerd that a test session started
_HANDED_OVER: list[subprocess.Popen[bytes]] = []
_ROOTFS_DIRS = {
    "bin": 0o755,
    "dev": 0o755,
    "etc": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "tmp": 0o1777,
    "root": 0o700,
}
_PT_INTERP = 3  # ELF program header type of a dynamic loader: such a binary is not static


def _require(provide: Any, *args: Any) -> Any:
    """A missing service fails the test with what to install; it is never a skip."""
    try:
        return provide(*args)
    except HarnessError as exc:
        failure = str(exc)
    pytest.fail(failure, pytrace=False)


def connect(timeout: float = 10.0) -> docker.DockerClient:
    return docker.DockerClient(base_url=DOCKER_HOST, version="auto", timeout=timeout)


def engine_answers() -> bool:
    try:
        client = connect(timeout=2.0)
    except (docker.errors.DockerException, requests.RequestException):
        return False
    try:
        return bool(client.ping())
    except (docker.errors.DockerException, requests.RequestException):
        return False
    finally:
        client.close()


class DockerEngine:
    """The local dockerd: the running one, or one started here.

    Several test sessions may share the engine (a developer's run next to CI's): each holds a
    shared lock on a file while it uses the engine, and an engine that a test session started is
    stopped by the last session out: the one that can turn its lock exclusive. An engine that
    no test session started (the machine's own) is never stopped.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_dir: Path | None = None
        self._using: IO[str] | None = None

    def start(self, timeout: float = 60.0) -> docker.DockerClient:
        self._using = _USE_LOCK.open("a")
        # blocks only while another session is stopping the engine
        wait_until(
            lambda: _flock(self._using, fcntl.LOCK_SH),
            timeout=timeout,
            message=f"another test session holds {_USE_LOCK} exclusively",
        )
        with _START_LOCK.open("a") as starting:
            fcntl.flock(starting, fcntl.LOCK_EX)  # one session at a time checks and starts
            if not engine_answers():
                self._start_dockerd(timeout)
        return connect()

    def _start_dockerd(self, timeout: float) -> None:
        dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin")
        if dockerd is None:
            raise HarnessError(
                f"no Docker engine answers on {SOCKET} and `dockerd` is missing; {_ENGINE_HINT}"
            )
        self._log_dir = Path(tempfile.mkdtemp(prefix="spek-dockerd-"))
        log_path = self._log_dir / "dockerd.log"
        self._log = log_path.open("ab")
        self._proc = subprocess.Popen(
            [dockerd, "--host", DOCKER_HOST],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in pytest must not kill the engine mid-cleanup
        )
        try:
            wait_until(self._up, timeout=timeout, interval=0.1, message="dockerd did not answer")
        except (WaitTimeoutError, HarnessError) as exc:
            self.close()
            raise HarnessError(
                f"could not start `{dockerd}`: {exc}\n--- tail of {log_path} ---\n"
                f"{log_tail(log_path)}"
            ) from exc
        _STARTED_PID.write_text(f"{self._proc.pid}\n")

    def _up(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise HarnessError(f"dockerd exited with {self._proc.returncode}")
        return engine_answers()

    def close(self) -> None:
        if self._using is not None:
            fcntl.flock(self._using, fcntl.LOCK_UN)
            if _flock(self._using, fcntl.LOCK_EX):
                self._stop_test_engine()  # no other session uses it
            elif self._proc is not None:
                # Another session still uses the engine and stops it when it ends. Keep the
                # handle alive so it is not reported as a subprocess left running.
                _HANDED_OVER.append(self._proc)
            self._proc = None
            self._using.close()
            self._using = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None

    def _stop_test_engine(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        else:
            pid = _started_pid()
            if pid is not None:
                _terminate(pid)
        _STARTED_PID.unlink(missing_ok=True)


def _flock(handle: IO[str] | None, operation: int) -> bool:
    assert handle is not None
    try:
        fcntl.flock(handle, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _started_pid() -> int | None:
    """The dockerd a test session started and handed over, if it still runs."""
    try:
        process = psutil.Process(int(_STARTED_PID.read_text().strip()))
        alive = process.name() == "dockerd" and process.status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, psutil.Error):
        return None
    return process.pid if alive else None


def _terminate(pid: int) -> None:
    process = psutil.Process(pid)
    process.terminate()
    try:
        process.wait(timeout=30)
    except psutil.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _static_busybox() -> Path:
    found = shutil.which("busybox") or shutil.which("busybox", path="/bin:/usr/bin")
    if found is None:
        raise HarnessError(f"`busybox` not found; {_BUSYBOX_HINT}")
    path = Path(found).resolve()
    if _is_dynamic_elf(path.read_bytes()):
        raise HarnessError(f"{path} is dynamically linked and cannot run alone; {_BUSYBOX_HINT}")
    return path


def _is_dynamic_elf(data: bytes) -> bool:
    """True when a 64-bit little-endian ELF asks for a dynamic loader (PT_INTERP)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return True  # not an x86-64/arm64 style ELF: do not trust it in a scratch image
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return any(
        struct.unpack_from("<I", data, phoff + i * phentsize)[0] == _PT_INTERP for i in range(phnum)
    )


def _rootfs_tar(busybox: Path) -> bytes:
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, mode in _ROOTFS_DIRS.items():
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add(str(busybox), arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox" and re.fullmatch(r"[a-z0-9_.\[-]+", applet):
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
                tar.addfile(link)
    return buffer.getvalue()


def ensure_busybox_image(client: docker.DockerClient) -> str:
    """The busybox test image, imported only when the engine does not have it yet."""
    try:
        client.images.get(BUSYBOX_IMAGE)
    except docker.errors.ImageNotFound:
        repository, tag = BUSYBOX_IMAGE.rsplit(":", 1)
        client.api.import_image_from_data(
            _rootfs_tar(_static_busybox()),
            repository=repository,
            tag=tag,
            changes=["ENV PATH=/bin", 'CMD ["sh"]'],
        )
        client.images.get(BUSYBOX_IMAGE)  # fails loudly if the import did not land
    return BUSYBOX_IMAGE


class Containers:
    """Starts containers from the test image under unique names; removes them all at close."""

    def __init__(self, client: docker.DockerClient, image: str, test_name: str) -> None:
        self.client = client
        self.image = image
        self._slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:30]
        self._names: list[str] = []

    def run(self, command: list[str], **options: Any) -> Any:
        name = f"{NAME_PREFIX}{self._slug}-{uuid.uuid4().hex[:8]}"
        self._names.append(name)  # before run: a half-created container is removed too
        labels = {TEST_LABEL: "1", **options.pop("labels", {})}
        return self.client.containers.run(
            self.image, command, name=name, detach=True, labels=labels, **options
        )

    def unused_name(self) -> str:
        return f"{NAME_PREFIX}{self._slug}-missing-{uuid.uuid4().hex[:8]}"

    def close(self) -> None:
        for name in self._names:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_container(name, force=True)
        self._names.clear()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[docker.DockerClient]:
    """A docker SDK client of the local engine (started for the session when none runs)."""
    engine = DockerEngine()
    try:
        client = _require(engine.start)
        try:
            yield client
        finally:
            client.close()
    finally:
        engine.close()


@pytest.fixture(scope="session")
def busybox_image(docker_engine: docker.DockerClient) -> str:
    image: str = _require(ensure_busybox_image, docker_engine)
    return image


@pytest.fixture
def containers(
    docker_engine: docker.DockerClient, busybox_image: str, request: pytest.FixtureRequest
) -> Iterator[Containers]:
    factory = Containers(docker_engine, busybox_image, request.node.name)
    try:
        yield factory
    finally:
        factory.close()
