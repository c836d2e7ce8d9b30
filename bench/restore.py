"""Database restore: spek-sentinel's backup + restore-and-swap against raw pg_dump + pg_restore.

Run from the project root (as root, like the tests: the throwaway cluster runs as `postgres`):

    .venv/bin/python bench/restore.py                      # 100 MB and 1 GB, 2 repeats each
    .venv/bin/python bench/restore.py --sizes 100 300 --repeats 3

What runs: a throwaway PostgreSQL cluster (tests/harness/postgres.py PostgresServer, on a free
loopback port, fsync off as in the tests) holding one database, ``bench``, filled with
``generate_series`` rows (a bigint primary key, two integers, a timestamp and a 64-character
text column) until ``pg_database_size`` reaches the size asked for (in MB).

For each size and repeat, side by side in the same process, in alternating order:

- raw: ``pg_dump -Fc -f raw.dump bench``, then ``CREATE DATABASE raw_target`` and
  ``pg_restore --exit-on-error -d raw_target raw.dump``: the runbook's commands alone;
- spek-sentinel: ``rollback.backup.create_backup`` (pg_dump --format=custom into a 0600 partial
  file, ``pg_restore --list`` to verify it, sha256 sidecar, rename) then
  ``rollback.restore.restore_and_swap`` (pre-flight, a new database made like the live one,
  ``pg_restore --no-owner --exit-on-error --role=<owner>``, count(*) of every table in the
  restored and in the live database, the swap by renames). The database it replaces is kept
  as ``bench_damaged_<stamp>`` by design; the bench drops it afterwards (untimed).

Overhead = spek-sentinel total / raw total - 1, per repeat; dump and restore halves are
printed on their own too. Results go to bench/results/restore-<stamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness.postgres import PostgresServer  # noqa: E402
from spek_sentinel.rollback.backup import DatabaseTarget, create_backup  # noqa: E402
from spek_sentinel.rollback.restore import restore_and_swap  # noqa: E402

DB = "bench"
CHUNK = 100_000
TIMEOUT = 3600.0


def fill(server: PostgresServer, megabytes: int) -> tuple[int, int]:
    """Create ``bench`` and add rows until it holds ``megabytes``; (rows, bytes)."""
    server.create_database(DB)
    rows = 0
    with psycopg.connect(server.dsn(DB), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE tasks (id bigint PRIMARY KEY, owner int NOT NULL, status int NOT NULL,"
            " created timestamptz NOT NULL, payload text NOT NULL)"
        )
        conn.execute("CREATE INDEX tasks_owner ON tasks (owner)")
        while True:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            assert size is not None
            if size[0] >= megabytes * 1024 * 1024:
                conn.execute("VACUUM ANALYZE tasks")
                return rows, int(size[0])
            conn.execute(
                "INSERT INTO tasks SELECT i, i %% 1000, i %% 7,"
                " timestamptz '2026-01-01' + i * interval '1 second',"
                " md5(i::text) || md5((i * 7)::text)"
                " FROM generate_series(%s::bigint, %s::bigint) AS i",
                (rows + 1, rows + CHUNK),
            )
            rows += CHUNK


def admin(server: PostgresServer, statement: sql.Composable) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(statement)


def drop_extra(server: PostgresServer) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_%' "
                "OR datname = 'raw_target'"
            ).fetchall()
        ]
        for name in names:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")


def raw_once(server: PostgresServer, work: Path) -> dict[str, float]:
    bin_dir = server.bin_dir
    dump = work / "raw.dump"
    started = time.perf_counter()
    run([str(bin_dir / "pg_dump"), "-Fc", "-f", str(dump), "-d", server.dsn(DB)])
    dumped = time.perf_counter()
    admin(server, sql.SQL("CREATE DATABASE raw_target"))
    run([str(bin_dir / "pg_restore"), "--exit-on-error", "-d", server.dsn("raw_target"), str(dump)])
    ended = time.perf_counter()
    size = dump.stat().st_size
    dump.unlink()
    admin(server, sql.SQL("DROP DATABASE raw_target"))
    return {
        "dump": dumped - started,
        "restore": ended - dumped,
        "total": ended - started,
        "dump_bytes": size,
    }


def spek_once(server: PostgresServer, work: Path) -> dict[str, Any]:
    backups = work / "backups"
    started = time.perf_counter()
    backup = create_backup(DatabaseTarget(dsn=server.dsn(DB)), backups, "bench", TIMEOUT)
    dumped = time.perf_counter()
    record = restore_and_swap(server.dsn(), DB, backup.path, TIMEOUT)
    ended = time.perf_counter()
    size = backup.path.stat().st_size
    shutil.rmtree(backups)
    drop_extra(server)  # the kept bench_damaged_<stamp>
    return {
        "dump": dumped - started,
        "restore": ended - dumped,
        "total": ended - started,
        "dump_bytes": size,
        "restore_phases": dict(record.durations),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1024], help="MB")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(
        f"nproc {os.cpu_count()}, load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
        f"{os.getloadavg()[2]:.2f}, {platform.python_implementation()} "
        f"{platform.python_version()}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    with PostgresServer() as server:
        work = Path(tempfile.mkdtemp(prefix="spek-bench-restore-"))
        try:
            for megabytes in args.sizes:
                drop_extra(server)
                admin(server, sql.SQL("DROP DATABASE IF EXISTS bench WITH (FORCE)"))
                t0 = time.perf_counter()
                rows, size = fill(server, megabytes)
                print(
                    f"\n{megabytes} MB asked: {rows:,} rows, pg_database_size {size / 2**20:.0f}"
                    f" MiB (filled in {time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
                for repeat in range(args.repeats):
                    order = ["raw", "spek"] if repeat % 2 == 0 else ["spek", "raw"]
                    row: dict[str, Any] = {"mb": megabytes, "bytes": size, "rows": rows}
                    for which in order:
                        row[which] = (
                            raw_once(server, work) if which == "raw" else spek_once(server, work)
                        )
                    raw, spek = row["raw"], row["spek"]
                    row["overhead"] = spek["total"] / raw["total"] - 1
                    row["load1"] = os.getloadavg()[0]
                    results.append(row)
                    print(
                        f"  repeat {repeat + 1} ({' then '.join(order)}): "
                        f"raw dump {raw['dump']:.2f}s + restore {raw['restore']:.2f}s = "
                        f"{raw['total']:.2f}s | spek backup {spek['dump']:.2f}s + restore-and-swap"
                        f" {spek['restore']:.2f}s = {spek['total']:.2f}s | overhead "
                        f"{row['overhead']:+.1%} | phases "
                        + ", ".join(f"{k} {v:.2f}s" for k, v in spek["restore_phases"].items()),
                        flush=True,
                    )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print("\nsize | raw total (median) | spek total (median) | overhead (median, min..max)")
    for megabytes in args.sizes:
        rows_ = [r for r in results if r["mb"] == megabytes]
        overheads = [r["overhead"] for r in rows_]
        print(
            f"{megabytes} MB | {statistics.median(r['raw']['total'] for r in rows_):.2f}s | "
            f"{statistics.median(r['spek']['total'] for r in rows_):.2f}s | "
            f"{statistics.median(overheads):+.1%} ({min(overheads):+.1%}..{max(overheads):+.1%})"
        )
    out = ROOT / "bench" / "results" / f"restore-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"argv": sys.argv, "results": results}, indent=1) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
