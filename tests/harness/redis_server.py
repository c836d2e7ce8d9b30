import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from harness import HarnessError, log_tail
from harness.ports import free_port
from harness.wait import WaitTimeoutError, wait_until

_INSTALL_HINT = "install the Debian package `redis-server` (apt-get install redis-server)"


@dataclass(frozen=True)
class RedisTarget:
    """What a test gets: a server URL and a key prefix that is its own."""

    url: str
    prefix: str

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"


def find_redis_server() -> Path:
    found = shutil.which("redis-server")
    if found is None:
        raise HarnessError(f"`redis-server` not found on PATH; {_INSTALL_HINT}")
    return Path(found)


class RedisServer:
    """A private redis-server child process on 127.0.0.1:<free port>, no persistence.

    stop() ends the process; start() brings a new, empty one up on the same port.
    """

    def __init__(self, binary: Path | None = None, port: int | None = None) -> None:
        self.binary = binary or find_redis_server()
        self.port = port or free_port()
        self._base = Path(tempfile.mkdtemp(prefix="spek-redis-"))
        self._log_path = self._base / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._closed = False

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self._closed:
            raise HarnessError("this RedisServer was closed; make a new one")
        if self.is_running():
            return
        self._log = self._log_path.open("ab")
        command = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self._base),
        ]  # fmt: skip
        try:
            self._proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
            )
            wait_until(
                self._is_up_and_ours,
                timeout=timeout,
                message=f"redis-server on port {self.port} did not come up",
                ignore=(redis.exceptions.ConnectionError,),
            )
        except (OSError, WaitTimeoutError, HarnessError) as exc:
            self.stop()
            raise HarnessError(
                f"could not start `{' '.join(command)}`: {exc}\n"
                f"--- tail of {self._log_path} ---\n{log_tail(self._log_path)}"
            ) from exc

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def ensure_running(self) -> None:
        if not self.is_running():
            self.start()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _is_up_and_ours(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            # Exited (port taken, bad option): fail now rather than at the timeout.
            raise HarnessError(f"redis-server exited early on port {self.port}")
        client = redis.Redis(port=self.port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
        with client:
            # Another server may own the port; only our own process counts as up.
            return client.info("server").get("process_id") == self._proc.pid
