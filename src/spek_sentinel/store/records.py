"""Pushed signals, releases and incidents in the state database."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from spek_sentinel.store.base import IncidentRecord, PushedSignal, Release
from spek_sentinel.store.db import STATE_FILE, StateDb, sqlite_or_given
from spek_sentinel.store.open import StateSource, open_state


class StateStore:
    """Pushed signals, releases and incidents, in the state database (SQLite or PostgreSQL)."""

    def __init__(self, db: StateDb | Path) -> None:
        """``db``: an open state database (the store closes it), or the SQLite file's path."""
        self.db = sqlite_or_given(db)

    @classmethod
    def in_dir(cls, state_dir: Path) -> StateStore:
        return cls(state_dir / STATE_FILE)

    @classmethod
    def open(cls, source: StateSource, environ: Mapping[str, str] | None = None) -> StateStore:
        """On the state database the config names (``[sentinel]``)."""
        return cls(open_state(source, environ))

    @property
    def where(self) -> str:
        """The state file, or the database without credentials."""
        return self.db.where

    def push(self, name: str, value: float, reason: str, by: str, at: float) -> PushedSignal:
        self.db.execute(
            "INSERT INTO pushed_signals (name, value, reason, pushed_by, pushed_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (name, value, reason, by, at),
        )
        return PushedSignal(name, value, reason, by, at)

    def resolve(self, name: str, reason: str, by: str, at: float) -> int:
        return self.db.execute(
            "UPDATE pushed_signals SET resolved_at = ?, resolved_by = ?, resolve_reason = ? "
            "WHERE name = ? AND resolved_at IS NULL",
            (at, by, reason, name),
        ).rowcount

    def current(self, names: list[str]) -> dict[str, PushedSignal]:
        found: dict[str, PushedSignal] = {}
        for name in names:
            row = self.db.execute(
                "SELECT value, reason, pushed_by, pushed_at FROM pushed_signals "
                "WHERE name = ? AND resolved_at IS NULL ORDER BY pushed_at DESC, id DESC "
                "LIMIT 1",
                (name,),
            ).one()
            if row is not None:
                found[name] = PushedSignal(name, float(row[0]), row[1], row[2], float(row[3]))
        return found

    def close(self) -> None:
        self.db.close()

    # -- incidents --------------------------------------------------------------------------

    def record_incident(self, incident: IncidentRecord) -> None:
        """Write (or rewrite, on a resumed run) what an incident is about."""
        self.db.execute(
            "INSERT INTO incidents (id, opened_at, trigger, playbook, target_release, details)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " trigger = excluded.trigger, playbook = excluded.playbook,"
            " target_release = excluded.target_release, details = excluded.details",
            (
                incident.id,
                incident.opened_at,
                incident.trigger,
                incident.playbook,
                incident.target_release,
                incident.details,
            ),
        )

    def incident(self, incident_id: str) -> IncidentRecord | None:
        row = self.db.execute(
            "SELECT id, opened_at, trigger, playbook, target_release, details FROM incidents"
            " WHERE id = ?",
            (incident_id,),
        ).one()
        return IncidentRecord(*row) if row is not None else None

    # -- releases ---------------------------------------------------------------------------

    def record_release(self, version: str, at: float, source: str) -> Release:
        """A release started. Recording the one already current changes nothing (in one write
        transaction: two recorders at once record it once)."""
        with self.db.transaction():
            current = self._current_release()
            if current is not None and current.version == version:
                return current
            self.db.execute(
                "INSERT INTO releases (version, first_seen, source) VALUES (?, ?, ?)",
                (version, at, source),
            )
            latest = self._current_release()
        assert latest is not None
        return latest

    def mark_healthy(self, at: float, healthy: bool, known_good_after: float) -> Release | None:
        """Every rule is OK (``healthy``) or not at ``at``. A release healthy without a break for
        ``known_good_after`` becomes known good, and stays so."""
        with self.db.transaction():
            current = self._current_release()
            if current is None:
                return None
            since = current.healthy_since if healthy else None
            if healthy and since is None:
                since = at
            known_good = current.known_good_at
            if known_good is None and since is not None and at - since >= known_good_after:
                known_good = at
            self.db.execute(
                "UPDATE releases SET healthy_since = ?, known_good_at = ? WHERE id = ?",
                (since, known_good, current.id),
            )
            return self._current_release()

    def releases(self) -> list[Release]:
        return [Release(*row) for row in self.db.execute(_RELEASES_NEWEST_FIRST).rows]

    def rollback_target(self) -> Release | None:
        """The newest known-good release that is not the current one."""
        history = self.releases()
        if not history:
            return None
        current = history[0]
        for release in history[1:]:
            if release.known_good_at is not None and release.version != current.version:
                return release
        return None

    def _current_release(self) -> Release | None:
        row = self.db.execute(_RELEASES_NEWEST_FIRST + " LIMIT 1").one()
        return Release(*row) if row is not None else None


_RELEASES_NEWEST_FIRST = (
    "SELECT id, version, first_seen, healthy_since, known_good_at, source FROM releases "
    "ORDER BY first_seen DESC, id DESC"
)
