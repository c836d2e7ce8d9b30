"""The rollback journal: one row per incident's rollback run, one per step, in the state store.

A step is claimed here before it runs and its outcome is written when it ends, so after a
crash the next executor knows exactly what finished, what was only started, and what never
began. Every write is a conditional write inside a write transaction that serialises writers
(``StateDb.transaction``: ``BEGIN IMMEDIATE`` on SQLite, the state tables locked on PostgreSQL):
exactly one executor holds a run at a time, also across replicas sharing a PostgreSQL state.

Who may act on a run:

* The executor that created it, identified by an ``Owner`` (host, pid, a nonce per run).
* An executor presenting a higher fencing token (HA: the new leader's token). It takes the run
  over at once, and from then on every claim by the former holder is refused: its token is
  lower than the highest recorded, so a paused former leader cannot act.
* With an equal token, only when the holder is certainly gone: same host and its process no
  longer exists (a restart after a crash). Anything uncertain (another host, a live or reused
  pid) counts as alive, and the run stays held: fail closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from spek_sentinel.domain.errors import RollbackError
from spek_sentinel.store.db import STATE_FILE, StateDb, sqlite_or_given
from spek_sentinel.store.open import StateSource, open_state

RunStatus = Literal["running", "succeeded", "halted", "failed"]
StepStatus = Literal["claimed", "succeeded", "failed", "skipped"]
FinishedStep = Literal["succeeded", "failed", "skipped"]

# A hard cap on any text the journal stores; the executor bounds output tighter before that.
MAX_TEXT = 64_000


class JournalRefusedError(RollbackError):
    """This executor may not act on the run; nothing was written."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class StaleTokenError(JournalRefusedError):
    """The fencing token is lower than the highest recorded for the incident."""


class RunHeldError(JournalRefusedError):
    """Another executor that may still be alive holds the run."""


class PlanMismatchError(JournalRefusedError):
    """The run was started with a different plan; resuming it with this one is refused."""


class LostRunError(JournalRefusedError):
    """The run (or the step) was taken over by another executor while this one held it."""


class StepNotClaimableError(JournalRefusedError):
    """The step was already claimed or finished."""


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a run: host, process id, and a nonce that is new for every executor run."""

    host: str
    pid: int
    nonce: str

    @classmethod
    def new(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:12])

    @classmethod
    def parse(cls, text: str) -> Owner:
        host, pid, nonce = text.rsplit(":", 2)
        return cls(host, int(pid), nonce)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.nonce}"


_live_nonces: set[str] = set()
_live_lock = threading.Lock()


@contextlib.contextmanager
def holding(owner: Owner) -> Iterator[Owner]:
    """Mark ``owner`` as a live executor of this process while the block runs. A run held by
    an owner of this very process that is not marked live was left by an earlier incarnation
    (a restarted container often gets the same pid) and may be taken over."""
    with _live_lock:
        _live_nonces.add(owner.nonce)
    try:
        yield owner
    finally:
        with _live_lock:
            _live_nonces.discard(owner.nonce)


def owner_is_gone(owner: Owner) -> bool:
    """True only when the owner certainly no longer runs. Unsure is alive."""
    if owner.host != socket.gethostname():
        return False
    if owner.pid == os.getpid():
        with _live_lock:
            return owner.nonce not in _live_nonces
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False  # exists (possibly a reused pid, or an unreaped zombie): alive


@dataclass(frozen=True, slots=True)
class VerifiedBackup:
    """A backup that was verified (size, checksum, restorable listing) before anything
    destructive. Recorded with the step that made it; later steps see it after a resume."""

    location: str
    size: int
    sha256: str
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "location": self.location,
                "size": self.size,
                "sha256": self.sha256,
                "detail": self.detail,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> VerifiedBackup:
        data = json.loads(text)
        return cls(str(data["location"]), int(data["size"]), str(data["sha256"]), data["detail"])


@dataclass(frozen=True, slots=True)
class RunRecord:
    incident_id: str
    plan_fingerprint: str
    plan: str  # the plan's JSON description, for humans reading the journal
    status: RunStatus
    reason: str
    owner: str
    fencing_token: int  # the highest recorded for the incident
    started_at: float
    ended_at: float | None
    downtime_started_at: float | None
    downtime_ended_at: float | None
    budget_exceeded_at: float | None

    @property
    def downtime(self) -> float | None:
        """Stop-traffic to verified-healthy, once both happened."""
        if self.downtime_started_at is None or self.downtime_ended_at is None:
            return None
        return self.downtime_ended_at - self.downtime_started_at


@dataclass(frozen=True, slots=True)
class StepRecord:
    incident_id: str
    index: int
    name: str
    idempotent: bool
    destructive: bool
    status: StepStatus
    attempt: int
    owner: str
    fencing_token: int
    claimed_at: float
    ended_at: float | None
    duration: float | None
    output: str
    error: str
    verified_backup: VerifiedBackup | None

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "skipped")


def bound_text(text: str, limit: int) -> str:
    """At most about ``limit`` characters: the head and the (usually telling) tail."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters cut ...]\n{text[-tail:]}"


_SELECT_RUN = (
    "SELECT incident_id, plan_fingerprint, plan, status, reason, owner, fencing_token, "
    "started_at, ended_at, downtime_started_at, downtime_ended_at, budget_exceeded_at "
    "FROM rollback_runs WHERE incident_id = ?"
)
_SELECT_RUNS_NEWEST_FIRST = (
    "SELECT incident_id, plan_fingerprint, plan, status, reason, owner, fencing_token, "
    "started_at, ended_at, downtime_started_at, downtime_ended_at, budget_exceeded_at "
    "FROM rollback_runs ORDER BY started_at DESC"
)
_SELECT_STEPS = (
    "SELECT incident_id, step_index, name, idempotent, destructive, status, attempt, owner, "
    "fencing_token, claimed_at, ended_at, duration, output, error, verified_backup "
    "FROM rollback_steps WHERE incident_id = ?"
)


def _run_record(row: tuple[Any, ...]) -> RunRecord:
    return RunRecord(*row)


def _step_record(row: tuple[Any, ...]) -> StepRecord:
    values = list(row)
    values[3] = bool(values[3])
    values[4] = bool(values[4])
    values[14] = VerifiedBackup.from_json(values[14]) if values[14] else None
    return StepRecord(*values)


class Journal:
    """The rollback journal in the state database (``rollback_runs``, ``rollback_steps``).

    Times are whatever clock the executor passes (wall seconds by default).
    """

    BUSY_TIMEOUT_MS = 10_000

    def __init__(self, db: StateDb | Path) -> None:
        """``db``: an open state database (the journal closes it), or the SQLite file's path."""
        self._db = sqlite_or_given(db, self.BUSY_TIMEOUT_MS)

    @classmethod
    def in_dir(cls, state_dir: Path) -> Journal:
        return cls(state_dir / STATE_FILE)

    @classmethod
    def open(cls, source: StateSource, environ: Mapping[str, str] | None = None) -> Journal:
        """On the state database the config names (``[sentinel]``)."""
        return cls(open_state(source, environ, cls.BUSY_TIMEOUT_MS))

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[StateDb]:
        """One write transaction that takes the database's write lock up front, so the read
        that decides and the write that claims cannot interleave with another executor's."""
        with self._db.transaction():
            yield self._db

    # ---- reading -------------------------------------------------------------------------

    def run(self, incident_id: str) -> RunRecord | None:
        return self._run(self._db, incident_id)

    def runs(self) -> list[RunRecord]:
        """Every rollback run, newest first."""
        return [_run_record(row) for row in self._db.execute(_SELECT_RUNS_NEWEST_FIRST).rows]

    def steps(self, incident_id: str) -> dict[int, StepRecord]:
        """Every step that was ever claimed for the incident, by index."""
        rows = self._db.execute(_SELECT_STEPS + " ORDER BY step_index", (incident_id,)).rows
        return {row[1]: _step_record(row) for row in rows}

    @staticmethod
    def _run(db: StateDb, incident_id: str) -> RunRecord | None:
        row = db.execute(_SELECT_RUN, (incident_id,)).one()
        return None if row is None else _run_record(row)

    @staticmethod
    def _step(db: StateDb, incident_id: str, index: int) -> StepRecord | None:
        row = db.execute(_SELECT_STEPS + " AND step_index = ?", (incident_id, index)).one()
        return None if row is None else _step_record(row)

    # ---- holding a run ---------------------------------------------------------------------

    def begin(
        self,
        incident_id: str,
        *,
        fingerprint: str,
        plan: str,
        owner: Owner,
        token: int,
        at: float,
    ) -> RunRecord:
        """Start the incident's run, or take it over to resume it. A finished run is returned
        unchanged: a rollback runs at most once per incident."""
        with self._write() as db:
            run = self._run(db, incident_id)
            if run is None:
                db.execute(
                    "INSERT INTO rollback_runs (incident_id, plan_fingerprint, plan, status, "
                    "reason, owner, fencing_token, started_at) "
                    "VALUES (?, ?, ?, 'running', '', ?, ?, ?)",
                    (incident_id, fingerprint, plan, str(owner), token, at),
                )
            else:
                _check_token(run, token)
                if run.plan_fingerprint != fingerprint:
                    raise PlanMismatchError(
                        f"incident {incident_id}: the rollback was started with a different "
                        f"plan (fingerprint {run.plan_fingerprint[:12]}, this one "
                        f"{fingerprint[:12]}); refusing to resume it with this plan"
                    )
                if run.status != "running" or run.owner == str(owner):
                    return run
                if token == run.fencing_token and not owner_is_gone(Owner.parse(run.owner)):
                    raise RunHeldError(
                        f"incident {incident_id}: the rollback is held by executor "
                        f"{run.owner} (fencing token {run.fencing_token}), which may still "
                        "be running; taking it over needs a higher fencing token"
                    )
                db.execute(
                    "UPDATE rollback_runs SET owner = ?, fencing_token = ? WHERE incident_id = ?",
                    (str(owner), token, incident_id),
                )
            found = self._run(db, incident_id)
        assert found is not None
        return found

    def _holder(self, db: StateDb, incident_id: str, owner: Owner, token: int) -> None:
        run = self._run(db, incident_id)
        if run is None:
            raise LostRunError(f"incident {incident_id}: no rollback run in the journal")
        _check_token(run, token)
        if run.owner != str(owner):
            raise LostRunError(
                f"incident {incident_id}: the rollback was taken over by executor {run.owner}"
            )
        if run.status != "running":
            raise LostRunError(f"incident {incident_id}: the rollback is already {run.status}")

    # ---- steps -----------------------------------------------------------------------------

    def claim_step(
        self,
        incident_id: str,
        index: int,
        name: str,
        *,
        idempotent: bool,
        destructive: bool,
        owner: Owner,
        token: int,
        at: float,
        again: bool = False,
        starts_downtime: bool = False,
    ) -> StepRecord:
        """Claim a step before running it. ``again`` re-claims a step that a crashed executor
        claimed and never finished (only for idempotent steps: the executor decides).
        A step that starts downtime records its start in the same transaction."""
        with self._write() as db:
            self._holder(db, incident_id, owner, token)
            existing = self._step(db, incident_id, index)
            if existing is None:
                db.execute(
                    "INSERT INTO rollback_steps (incident_id, step_index, name, idempotent, "
                    "destructive, status, attempt, owner, fencing_token, claimed_at, output, "
                    "error) VALUES (?, ?, ?, ?, ?, 'claimed', 1, ?, ?, ?, '', '')",
                    (
                        incident_id,
                        index,
                        name,
                        int(idempotent),
                        int(destructive),
                        str(owner),
                        token,
                        at,
                    ),
                )
            elif again and existing.status == "claimed" and existing.name == name:
                db.execute(
                    "UPDATE rollback_steps SET attempt = attempt + 1, owner = ?, "
                    "fencing_token = ?, claimed_at = ? "
                    "WHERE incident_id = ? AND step_index = ? AND status = 'claimed'",
                    (str(owner), token, at, incident_id, index),
                )
            else:
                raise StepNotClaimableError(
                    f"incident {incident_id}: step {existing.name} is already "
                    f"{existing.status} (attempt {existing.attempt})"
                )
            if starts_downtime:
                db.execute(
                    "UPDATE rollback_runs SET downtime_started_at = ? "
                    "WHERE incident_id = ? AND downtime_started_at IS NULL",
                    (at, incident_id),
                )
            claimed = self._step(db, incident_id, index)
        assert claimed is not None
        return claimed

    def finish_step(
        self,
        incident_id: str,
        index: int,
        *,
        owner: Owner,
        attempt: int,
        status: FinishedStep,
        at: float,
        output: str = "",
        error: str = "",
        verified_backup: VerifiedBackup | None = None,
        ends_downtime: bool = False,
    ) -> StepRecord:
        """Record how a claimed step ended. Only the attempt's own executor may record it,
        even after losing the run: what really happened belongs in the journal. A step that
        ends downtime (and succeeded) records the end in the same transaction."""
        with self._write() as db:
            updated = db.execute(
                "UPDATE rollback_steps SET status = ?, ended_at = ?, duration = ? - claimed_at, "
                "output = ?, error = ?, verified_backup = ? "
                "WHERE incident_id = ? AND step_index = ? AND owner = ? AND attempt = ? "
                "AND status = 'claimed'",
                (
                    status,
                    at,
                    at,
                    bound_text(output, MAX_TEXT),
                    bound_text(error, MAX_TEXT),
                    None if verified_backup is None else verified_backup.to_json(),
                    incident_id,
                    index,
                    str(owner),
                    attempt,
                ),
            )
            if updated.rowcount != 1:
                raise LostRunError(
                    f"incident {incident_id}: step {index} attempt {attempt} is no longer "
                    f"claimed by executor {owner}"
                )
            if ends_downtime and status != "failed":
                db.execute(
                    "UPDATE rollback_runs SET downtime_ended_at = ? "
                    "WHERE incident_id = ? AND downtime_started_at IS NOT NULL "
                    "AND downtime_ended_at IS NULL",
                    (at, incident_id),
                )
            finished = self._step(db, incident_id, index)
        assert finished is not None
        return finished

    # ---- the run ---------------------------------------------------------------------------

    def mark_budget_exceeded(
        self, incident_id: str, *, owner: Owner, token: int, at: float
    ) -> bool:
        """Record that the downtime budget was exceeded; True only the first time."""
        with self._write() as db:
            self._holder(db, incident_id, owner, token)
            updated = db.execute(
                "UPDATE rollback_runs SET budget_exceeded_at = ? "
                "WHERE incident_id = ? AND budget_exceeded_at IS NULL",
                (at, incident_id),
            )
            return updated.rowcount == 1

    def finish_run(
        self,
        incident_id: str,
        *,
        owner: Owner,
        token: int,
        status: Literal["succeeded", "halted", "failed"],
        reason: str,
        at: float,
    ) -> RunRecord:
        with self._write() as db:
            self._holder(db, incident_id, owner, token)
            db.execute(
                "UPDATE rollback_runs SET status = ?, reason = ?, ended_at = ? "
                "WHERE incident_id = ?",
                (status, bound_text(reason, MAX_TEXT), at, incident_id),
            )
            run = self._run(db, incident_id)
        assert run is not None
        return run


def _check_token(run: RunRecord, token: int) -> None:
    if token < run.fencing_token:
        raise StaleTokenError(
            f"incident {run.incident_id}: fencing token {token} is lower than "
            f"{run.fencing_token}, the highest recorded; a newer executor holds this rollback"
        )
