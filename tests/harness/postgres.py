import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
from psycopg import sql

from harness import HarnessError, log_tail
from harness.ports import free_port
from spek_sentinel.service.demo_servers import PG_BINARIES, postgres_bin_dir

_INSTALL_HINT = "install the Debian package `postgresql` (apt-get install postgresql)"
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "50",
}


def find_bin_dir(root: Path = Path("/usr/lib/postgresql")) -> Path:
    """Newest <root>/<version>/bin holding the server binaries, else the one on PATH (the
    same search ``spek-sentinel demo`` makes)."""
    found = postgres_bin_dir(root)
    if found is not None:
        return found
    raise HarnessError(
        f"PostgreSQL server binaries {', '.join(PG_BINARIES)} not found in "
        f"{root}/*/bin or on PATH; {_INSTALL_HINT}"
    )


class PostgresServer:
    """A private PostgreSQL cluster in a temp dir, listening on 127.0.0.1:<free port>.

    stop() is a fast shutdown that keeps the data dir, so start() brings the same
    cluster back on the same port.
    """

    def __init__(self, bin_dir: Path | None = None, port: int | None = None) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.port = port or free_port()
        self._base = Path(tempfile.mkdtemp(prefix="spek-pg-"))
        self._data = self._base / "data"
        self._log = self._base / "server.log"
        self._closed = False
        # initdb refuses to run as root, so the cluster belongs to the postgres user.
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise HarnessError(
                    "running as root, and initdb refuses root, but there is no `postgres` "
                    f"user to run it as; {_INSTALL_HINT} (it creates the user)"
                ) from None
            os.chown(self._base, owner.pw_uid, owner.pw_gid)
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            self._as_user = [runuser, "-u", "postgres", "--"]

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def is_running(self) -> bool:
        try:
            pid = int((self._data / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        return True

    def start(self) -> None:
        if self._closed:
            raise HarnessError("this PostgresServer was closed; make a new one")
        if self.is_running():
            return
        if not (self._data / "PG_VERSION").exists():
            self._initdb()
        self._pg_ctl("start", "-l", str(self._log), "-w", "-t", "30")

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._pg_ctl("stop", "-m", mode, "-w", "-t", "30")

    def ensure_running(self) -> None:
        if not self.is_running():
            self.start()

    def create_database(self, name: str) -> str:
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        # FORCE ends sessions a test left open, which would otherwise block the drop.
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.stop()
        except HarnessError:
            self.stop(mode="immediate")
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

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(statement)

    def _initdb(self) -> None:
        self._run(
            "initdb", "-D", str(self._data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        settings = {
            **_SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": f"'{self._base}'",
        }
        with (self._data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self._data), *args)

    def _run(self, binary: str, *args: str) -> None:
        command = [*self._as_user, str(self.bin_dir / binary), *args]
        try:
            result = subprocess.run(
                command,
                cwd=self._base,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HarnessError(f"`{' '.join(command)}` failed: {exc}") from exc
        if result.returncode != 0:
            raise HarnessError(
                f"`{' '.join(command)}` exited with {result.returncode}\n"
                f"{result.stdout}{result.stderr}\n"
                f"--- tail of {self._log} ---\n{log_tail(self._log)}"
            )
