"""Named JSON documents in the state file: the policy's state (open incident, cooldown, loop
guard, running rollback), saved after every decision so that a restart forgets none of it."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from spek_sentinel.store.sqlite import STATE_FILE, open_state_db

POLICY = "policy"


class StateDocuments:
    def __init__(self, path: Path) -> None:
        self._db: sqlite3.Connection = open_state_db(path)
        self._lock = threading.Lock()

    @classmethod
    def in_dir(cls, state_dir: Path) -> StateDocuments:
        return cls(state_dir / STATE_FILE)

    def save(self, name: str, value: dict[str, Any], at: float) -> None:
        text = json.dumps(value, sort_keys=True)
        with self._lock:
            self._db.execute(
                "INSERT INTO sentinel_state (name, value, saved_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
                " saved_at = excluded.saved_at",
                (name, text, at),
            )

    def load(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM sentinel_state WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            return None
        value = json.loads(row[0])
        if not isinstance(value, dict):
            raise ValueError(f"state document {name!r} is not a JSON object")
        return value

    def close(self) -> None:
        with self._lock:
            self._db.close()
