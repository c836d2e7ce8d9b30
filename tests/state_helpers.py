"""Looking at a state database from outside the stores, on either back end."""

from __future__ import annotations

import contextlib
import sqlite3

import psycopg

from spek_sentinel.store.open import StateLocation


def schema_version(state: StateLocation) -> int:
    """The version the state records: ``PRAGMA user_version`` or ``sentinel_schema``."""
    if state.path is not None:
        with contextlib.closing(sqlite3.connect(state.path)) as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])
    assert state.dsn is not None
    with psycopg.connect(state.dsn, autocommit=True) as db:
        row = db.execute("SELECT version FROM sentinel_schema").fetchone()
        assert row is not None
        return int(row[0])


def set_schema_version(state: StateLocation, version: int) -> None:
    if state.path is not None:
        with contextlib.closing(sqlite3.connect(state.path)) as db:
            db.execute(f"PRAGMA user_version = {int(version)}")
        return
    assert state.dsn is not None
    with psycopg.connect(state.dsn, autocommit=True) as db:
        db.execute("UPDATE sentinel_schema SET version = %s", (version,))


def state_arg(state: StateLocation) -> str:
    """The state as one command-line argument for a child process (``CHILD_STATE`` reads it)."""
    if state.path is not None:
        state.path.parent.mkdir(parents=True, exist_ok=True)
        return str(state.path)
    assert state.dsn is not None
    return state.dsn


# Python for a child process: ``state`` from its first argument
CHILD_STATE = """
import sys
from pathlib import Path
from spek_sentinel.store.open import StateLocation

state = (
    StateLocation.postgres(sys.argv[1]) if sys.argv[1].startswith("postgresql:")
    else StateLocation.sqlite(Path(sys.argv[1]))
)
"""
