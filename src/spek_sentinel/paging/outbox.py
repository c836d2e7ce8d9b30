"""The outbox: a page is written to the state store before it is sent, and retried with
backoff until delivered, refused for good, or expired — across restarts. Paging fails open: a
page may arrive twice (the receivers fold it by ``dedup_key``), it is never lost silently; every
failure is counted and said."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from spek_sentinel.paging.base import Delivery, Notice, NoticeKind, Pager, Urgency
from spek_sentinel.secrets import redact
from spek_sentinel.store.db import STATE_FILE, StateDb, sqlite_or_given
from spek_sentinel.store.open import StateSource, open_state

FIRST_RETRY = 5.0  # seconds; doubled on each failure
MAX_RETRY = 300.0
EXPIRE_AFTER = 24 * 3600.0  # a page older than this is no longer worth sending


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int
    pager: str
    dedup_key: str
    status: str
    attempts: int
    last_error: str
    created_at: float
    next_attempt_at: float


def notice_to_json(notice: Notice) -> str:
    data = asdict(notice)
    data["links"] = dict(notice.links)
    return json.dumps(data, sort_keys=True)


def notice_from_json(text: str) -> Notice:
    data = json.loads(text)
    data["kind"] = NoticeKind(data["kind"])
    data["urgency"] = Urgency(data["urgency"])
    return Notice(**data)


def backoff(attempts: int) -> float:
    return float(min(MAX_RETRY, FIRST_RETRY * 2 ** max(attempts - 1, 0)))


class Outbox:
    def __init__(
        self,
        db: StateDb | Path,
        expire_after: float = EXPIRE_AFTER,
        *,
        shared: bool = False,
    ) -> None:
        """``db``: an open state database, or the SQLite file's path. ``shared``: the database
        is used with other stores (its owner closes it), so that a page can be enqueued in the
        same transaction as the state change it reports."""
        self._db = sqlite_or_given(db)
        self._owns_db = not shared
        self._expire_after = expire_after

    @classmethod
    def in_dir(cls, state_dir: Path, expire_after: float = EXPIRE_AFTER) -> Outbox:
        return cls(state_dir / STATE_FILE, expire_after)

    @classmethod
    def open(
        cls,
        source: StateSource,
        environ: Mapping[str, str] | None = None,
        expire_after: float = EXPIRE_AFTER,
    ) -> Outbox:
        """On the state database the config names (``[sentinel]``)."""
        return cls(open_state(source, environ), expire_after)

    def close(self) -> None:
        if self._owns_db:
            self._db.close()

    def enqueue(self, notice: Notice, pagers: Sequence[str], now: float) -> list[int]:
        """Store one row per pager before anything is sent; returns their ids."""
        text = notice_to_json(notice)
        with self._db.transaction():
            return [
                self._db.insert(
                    "INSERT INTO page_outbox (pager, dedup_key, notice, created_at,"
                    " next_attempt_at, status) VALUES (?, ?, ?, ?, ?, 'pending')",
                    (pager, notice.dedup_key, text, now, now),
                )
                for pager in pagers
            ]

    def _due(self, now: float) -> list[tuple[int, str, str, float, int]]:
        rows = self._db.execute(
            "SELECT id, pager, notice, created_at, attempts FROM page_outbox"
            " WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY id",
            (now,),
        ).rows
        return [(int(r[0]), str(r[1]), str(r[2]), float(r[3]), int(r[4])) for r in rows]

    def _end(self, row_id: int, status: str, error: str, now: float) -> None:
        self._db.execute(
            "UPDATE page_outbox SET status = ?, last_error = ?, ended_at = ? WHERE id = ?",
            (status, error, now, row_id),
        )

    def _retry_later(self, row_id: int, attempts: int, error: str, now: float) -> None:
        self._db.execute(
            "UPDATE page_outbox SET attempts = ?, last_error = ?, next_attempt_at = ? WHERE id = ?",
            (attempts, error, now + backoff(attempts), row_id),
        )

    async def deliver_due(self, pagers: Mapping[str, Pager], now: float) -> list[Delivery]:
        """Send every page that is due, in order; record each outcome."""
        deliveries = []
        for row_id, pager_name, text, created_at, attempts in self._due(now):
            if now - created_at > self._expire_after:
                self._end(row_id, "expired", f"not delivered within {self._expire_after:g}s", now)
                continue
            pager = pagers.get(pager_name)
            if pager is None:
                # a pager removed from the config: keep the page, say why, try again later
                self._retry_later(row_id, attempts + 1, f"no pager named {pager_name}", now)
                continue
            delivery = await pager.notify(notice_from_json(text))
            deliveries.append(delivery)
            detail = redact(delivery.detail)
            if delivery.ok:
                self._end(row_id, "delivered", "", now)
            elif delivery.retryable:
                self._retry_later(row_id, attempts + 1, detail, now)
            else:
                self._end(row_id, "failed", detail, now)
        return deliveries

    def entries(self) -> list[OutboxEntry]:
        rows = self._db.execute(
            "SELECT id, pager, dedup_key, status, attempts, last_error, created_at,"
            " next_attempt_at FROM page_outbox ORDER BY id"
        ).rows
        return [OutboxEntry(*row) for row in rows]

    def notices(self, status: str = "pending") -> list[tuple[str, Notice]]:
        """(pager, notice) of every page in ``status``, oldest first."""
        rows = self._db.execute(
            "SELECT pager, notice FROM page_outbox WHERE status = ? ORDER BY id", (status,)
        ).rows
        return [(str(pager), notice_from_json(text)) for pager, text in rows]

    def pending_count(self) -> int:
        row = self._db.execute("SELECT count(*) FROM page_outbox WHERE status = 'pending'").one()
        assert row is not None
        return int(row[0])
