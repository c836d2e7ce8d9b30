"""Real data corruption for tests: a throwaway cluster with data checksums, and a way to
damage a table's first page on disk so that PostgreSQL's own checksum check catches it."""

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from harness import HarnessError
from harness.postgres import PostgresServer

_PAGE = 8192


def _as_postgres(command: list[str]) -> list[str]:
    # the cluster belongs to the postgres user when the tests run as root (see PostgresServer)
    if os.geteuid() == 0:
        return [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--", *command]
    return command


def _data_directory(server: PostgresServer) -> Path:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    return Path(row[0])


@contextmanager
def checksummed_postgres() -> Iterator[PostgresServer]:
    """A PostgresServer of its own whose cluster has data checksums on (pg_checksums)."""
    server = PostgresServer()
    try:
        server.start()
        data = _data_directory(server)
        server.stop()
        tool = server.bin_dir / "pg_checksums"
        done = subprocess.run(
            _as_postgres([str(tool), "--enable", "--no-sync", "-D", str(data)]),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise HarnessError(f"pg_checksums --enable failed: {done.stdout}{done.stderr}")
        server.start()
        yield server
    finally:
        server.close()


def corrupt_first_page(server: PostgresServer, dsn: str, table: str) -> None:
    """Overwrite bytes inside ``table``'s first page on disk, with the server stopped, then
    start it again. The next read of that page fails its checksum."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT pg_relation_filepath({})").format(sql.Literal(table))
        ).fetchone()
    assert row is not None and row[0], f"table {table} has no file"
    path = _data_directory(server) / row[0]
    server.stop()
    with path.open("r+b") as relation:
        relation.seek(_PAGE - 64)  # tuple data sits at the end of the page
        relation.write(b"\xde\xad\xbe\xef" * 8)
    server.start()
