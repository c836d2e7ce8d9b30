"""Named JSON documents in the state database: the policy's state (open incident, cooldown, loop
guard, running rollback), saved after every decision so that a restart forgets none of it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spek_sentinel.store.db import STATE_FILE, StateDb, sqlite_or_given
from spek_sentinel.store.open import StateSource, open_state

POLICY = "policy"


class StateDocuments:
    def __init__(self, db: StateDb | Path) -> None:
        """``db``: an open state database (closed with this), or the SQLite file's path."""
        self.db = sqlite_or_given(db)

    @classmethod
    def in_dir(cls, state_dir: Path) -> StateDocuments:
        return cls(state_dir / STATE_FILE)

    @classmethod
    def open(cls, source: StateSource, environ: Mapping[str, str] | None = None) -> StateDocuments:
        """On the state database the config names (``[sentinel]``)."""
        return cls(open_state(source, environ))

    def save(self, name: str, value: dict[str, Any], at: float) -> None:
        self.db.execute(
            "INSERT INTO sentinel_state (name, value, saved_at) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
            " saved_at = excluded.saved_at",
            (name, json.dumps(value, sort_keys=True), at),
        )

    def load(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT value FROM sentinel_state WHERE name = ?", (name,)).one()
        if row is None:
            return None
        value = json.loads(row[0])
        if not isinstance(value, dict):
            raise ValueError(f"state document {name!r} is not a JSON object")
        return value

    def close(self) -> None:
        self.db.close()
