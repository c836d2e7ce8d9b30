"""What ``spek-sentinel demo`` runs beside the sentinel: a throwaway PostgreSQL cluster and a
throwaway ``redis-server``, each on a free loopback port with its files in a temporary directory
that goes with it, and the check that their binaries are installed.

``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` user (the
Debian package creates it) and its commands run through ``runuser``. Both servers run in their
own session: a Ctrl-C at the terminal reaches the demo, which stops them in order, and not the
servers behind its back.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg
import redis
from psycopg import sql

_PG_ROOT = Path("/usr/lib/postgresql")
PG_BINARIES = ("initdb", "pg_ctl", "postgres")
_PG_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "50",
}


class DemoUnavailableError(Exception):
    """Something the demo needs is not installed or cannot start; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Binaries:
    postgres_bin: Path  # the directory holding initdb, pg_ctl and postgres
    redis_server: Path


def find_binaries(pg_root: Path = _PG_ROOT) -> Binaries:
    """The server binaries, or DemoUnavailableError naming the Debian packages to install."""
    bin_dir = postgres_bin_dir(pg_root)
    found_redis = shutil.which("redis-server")
    missing = [
        package
        for package, present in (("postgresql", bin_dir), ("redis-server", found_redis))
        if present is None
    ]
    if missing:
        what = " and ".join(
            {"postgresql": "the PostgreSQL server", "redis-server": "Redis"}[p] for p in missing
        )
        raise DemoUnavailableError(
            f"spek-sentinel demo needs {what}, which the sample app runs on; install "
            f"{'it' if len(missing) == 1 else 'them'}: apt-get install {' '.join(missing)} "
            "(./dev demo does this for you)"
        )
    assert bin_dir is not None and found_redis is not None
    return Binaries(bin_dir, Path(found_redis))


def postgres_bin_dir(root: Path) -> Path | None:
    """The newest ``<root>/<major>/bin`` holding the server binaries, else the one on PATH."""
    candidates = sorted(
        root.glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bin_dir in candidates:
        if all((bin_dir / name).is_file() for name in PG_BINARIES):
            return bin_dir
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _version(binary: Path) -> str:
    try:
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown version"
    return result.stdout.strip() or "unknown version"


class PostgresCluster:
    """A private cluster in a temporary directory, on 127.0.0.1:<free port>, trust auth."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="spek-demo-pg-"))
        self._data = self.base / "data"
        self._log = self.base / "server.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                self.close()
                raise DemoUnavailableError(
                    "running as root, and initdb refuses root, but there is no `postgres` user "
                    "to run the cluster as: apt-get install postgresql creates it"
                ) from None
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
            self._as_user = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]

    @property
    def version(self) -> str:
        return _version(self.bin_dir / "postgres")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        self._run(
            "initdb", "-D", str(self._data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        settings = {**_PG_SETTINGS, "port": str(self.port)}
        settings["unix_socket_directories"] = f"'{self.base}'"
        with (self._data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self._run("pg_ctl", "-D", str(self._data), "-l", str(self._log), "-w", "-t", "30", "start")

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def running(self) -> bool:
        try:
            pid = int((self._data / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        return True

    def close(self) -> str:
        """Stop the server (fast, then immediate) and remove its directory; what was done."""
        said = "PostgreSQL was not running"
        try:
            if self.running():
                try:
                    self._run("pg_ctl", "-D", str(self._data), "-m", "fast", "-w", "stop")
                except DemoUnavailableError:
                    self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop")
                said = f"PostgreSQL on port {self.port} stopped"
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
        return said

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self._log, lines)

    def _run(self, binary: str, *args: str) -> None:
        command = [*self._as_user, str(self.bin_dir / binary), *args]
        try:
            result = subprocess.run(
                command,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                start_new_session=True,  # the server it starts stays out of the terminal's group
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DemoUnavailableError(f"`{' '.join(command)}` failed: {exc}") from exc
        if result.returncode != 0:
            raise DemoUnavailableError(
                f"`{' '.join(command)}` exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}{self.log_tail()}"
            )


class RedisServer:
    """A private ``redis-server`` child on 127.0.0.1:<free port>, without persistence."""

    def __init__(self, binary: Path, directory: Path) -> None:
        self.binary = binary
        self.port = free_port()
        self.directory = directory
        self._log_path = directory / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def version(self) -> str:
        return _version(self.binary)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 15.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._log = self._log_path.open("ab")
        command = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.directory),
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while not self._answers():
            if self._proc.poll() is not None:
                raise DemoUnavailableError(
                    f"redis-server exited with {self._proc.returncode}:\n{_tail(self._log_path)}"
                )
            if time.monotonic() > deadline:
                raise DemoUnavailableError(
                    f"redis-server did not answer within {timeout:g}s:\n{_tail(self._log_path)}"
                )
            pause.wait(0.05)

    def _answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            with client:
                info = client.info("server")
        except redis.exceptions.RedisError:
            return False
        # another server may have taken the port meanwhile: only ours counts
        return self._proc is not None and info.get("process_id") == self._proc.pid

    def close(self) -> str:
        said = "redis-server was not running"
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                said = f"redis-server on port {self.port} stopped"
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return said


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
