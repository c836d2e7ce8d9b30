"""Verified backups outside an incident — before a release, on a schedule while all is well —
and the page when one fails: the next incident would have nothing to restore."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from spek_sentinel.config import Config
from spek_sentinel.domain.errors import RollbackError
from spek_sentinel.paging.desk import AlertDesk
from spek_sentinel.rollback.backup import (
    BackupRecord,
    DatabaseTarget,
    create_backup,
    mark_backup,
    preflight,
    prune,
)
from spek_sentinel.service.rollback_plan import PlanError, migrator_for
from spek_sentinel.service.rollback_targets import database_target
from spek_sentinel.store.records import StateStore

log = logging.getLogger(__name__)

PRE_DEPLOYMENT = "pre_deployment"  # taken when a release is recorded, before its migrations
LAST_KNOWN_GOOD = "last_known_good"  # taken while every rule is OK


def take_backup(config: Config, environ: Mapping[str, str], label: str) -> BackupRecord | None:
    """A verified backup labelled ``label``, older ones pruned by the retention policy; None
    when the table names no database. Raises ConfigError (a secret) or RollbackError."""
    target = database_target(config, environ)
    if target is None:
        return None
    settings = config.model.rollback
    backup_dir = Path(settings.backup_dir)
    preflight(target, backup_dir, settings.step_timeout)
    record = create_backup(target, backup_dir, label, settings.step_timeout)
    mark_backup(record.path, _current_release(config, environ), _schema(config, target))
    prune(backup_dir, settings.keep_backups)
    return record


def _current_release(config: Config, environ: Mapping[str, str]) -> str | None:
    store = StateStore.open(config, environ)
    try:
        history = store.releases()
    finally:
        store.close()
    return history[0].version if history else None


def _schema(config: Config, target: DatabaseTarget) -> str | None:
    """The schema version the backup holds, as the migrations tell it; None when the table
    names no migrations, a short reason when they cannot tell."""
    try:
        outcome = migrator_for(config.model.rollback, target).status()
    except PlanError:
        return None
    except Exception as exc:  # a mark is information: never fail a verified backup over it
        log.warning("schema version of the backup unknown: %s", exc)
        return f"unknown ({type(exc).__name__})"
    return str(outcome.version) if outcome.version is not None else outcome.summary[:200]


def page_backup_failure(
    config: Config,
    label: str,
    error: RollbackError,
    now: float,
    environ: Mapping[str, str] | None = None,
) -> None:
    """A critical alert (the daemon sends it): a backup that did not verify is no backup.
    ``environ`` holds the state database's secret (default: the process environment)."""
    desk = AlertDesk.open(config, config.escalation, config.notice_pagers, environ)
    try:
        desk.raise_alert(
            f"backup:{label}",
            f"the {label} backup FAILED and nothing verified was kept: {error}. "
            "The next incident would have nothing to restore.",
            incident=None,
            now=now,
        )
    finally:
        desk.close()
    log.error("the %s backup failed: %s", label, error)
