"""`spek-sentinel release record VERSION`, `spek-sentinel releases` and `spek-sentinel backups`:
the release history a rollback targets, and the backups it restores from."""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from spek_sentinel.commands.common import (
    EXIT_INVALID,
    EXIT_OK,
    add_config_option,
    config_path,
    load,
    report_config_error,
    state_of,
)
from spek_sentinel.config import Config
from spek_sentinel.domain.errors import ConfigError, RollbackError
from spek_sentinel.domain.units import format_size, iso
from spek_sentinel.rollback.backup import (
    BackupRecord,
    list_backups,
)
from spek_sentinel.service.backups import (
    LAST_KNOWN_GOOD,
    PRE_DEPLOYMENT,
    page_backup_failure,
    take_backup,
)
from spek_sentinel.store.records import StateStore


def add_parser(commands: Any) -> None:
    release = commands.add_parser("release", help="record a deploy in the release history")
    actions = release.add_subparsers(dest="action", required=True, metavar="ACTION")
    record = actions.add_parser(
        "record", help="a new release is about to go out: back up the database, then record it"
    )
    add_config_option(record)
    record.add_argument("version", help="the image or commit being deployed")
    record.add_argument("--source", default="deploy", help="who records it (default: deploy)")
    record.add_argument(
        "--no-backup", action="store_true", help="record without the pre-deployment backup"
    )
    record.set_defaults(handler=run_record)

    listing = commands.add_parser("releases", help="list the release history, newest first")
    add_config_option(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per release")
    listing.set_defaults(handler=run_list)

    take = commands.add_parser(
        "backup", help="take a verified database backup now (cron: routine last-known-good)"
    )
    add_config_option(take)
    take.add_argument(
        "--label", default=LAST_KNOWN_GOOD, help=f"label (default: {LAST_KNOWN_GOOD})"
    )
    take.set_defaults(handler=run_backup)

    backups = commands.add_parser("backups", help="list the database backups, newest first")
    add_config_option(backups)
    backups.add_argument("--json", action="store_true", help="one JSON object per backup")
    backups.set_defaults(handler=run_backups)


def _take_backup(
    config: Config, args: argparse.Namespace, label: str, err: TextIO
) -> BackupRecord | int | None:
    """A verified backup with ``label``; None when no database is configured, an exit code when
    it failed (after saying why and raising a critical alert for the daemon to page)."""
    try:
        record = take_backup(config, os.environ, label)
    except ConfigError as exc:
        report_config_error(config_path(args), exc, err)
        return EXIT_INVALID
    except RollbackError as exc:
        err.write(f"the {label} backup failed: {exc}\n")
        page_backup_failure(config, label, exc, time.time(), os.environ)
        return EXIT_INVALID
    if record is None:
        return None
    err.write(
        f"{label} backup verified: {record.path} ({format_size(record.size)}, "
        f"sha256 {record.sha256[:16]}…, {len(record.tables)} tables)\n"
    )
    return record


def run_backup(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load(args, err)
    if config is None:
        return EXIT_INVALID
    taken = _take_backup(config, args, args.label, err)
    if taken is None:
        err.write("no database to back up: [rollback.database] is not set\n")
        return EXIT_INVALID
    if isinstance(taken, int):
        return taken
    out.write(f"{taken.path}\n")
    return EXIT_OK


def run_record(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    version = args.version.strip()
    if not version:
        err.write("the version is empty\n")
        return EXIT_INVALID
    config = load(args, err)
    if config is None:
        return EXIT_INVALID
    state = state_of(config, args, err)
    if state is None:
        return EXIT_INVALID
    if not args.no_backup:
        taken = _take_backup(config, args, PRE_DEPLOYMENT, err)
        if isinstance(taken, int):
            err.write(f"release {version} NOT recorded: the pre-deployment backup failed\n")
            return taken
    store = StateStore.open(state)
    try:
        release = store.record_release(version, time.time(), args.source)
    finally:
        store.close()
    out.write(f"release {release.version} current since {iso(release.first_seen)}\n")
    return EXIT_OK


def run_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load(args, err)
    if config is None:
        return EXIT_INVALID
    state = state_of(config, args, err)
    if state is None:
        return EXIT_INVALID
    store = StateStore.open(state)
    try:
        history = store.releases()
        target = store.rollback_target()
    finally:
        store.close()
    if args.json:
        for release in history:
            out.write(json.dumps(asdict(release), sort_keys=True) + "\n")
        return EXIT_OK
    if not history:
        out.write("no releases recorded (spek-sentinel release record VERSION)\n")
        return EXIT_OK
    out.write(f"{'VERSION':<28} {'FIRST SEEN':<21} {'KNOWN GOOD':<21} NOTE\n")
    for index, release in enumerate(history):
        good = iso(release.known_good_at) if release.known_good_at else "-"
        note = "current" if index == 0 else ""
        if target is not None and release.id == target.id:
            note = "rollback target"
        out.write(f"{release.version:<28} {iso(release.first_seen):<21} {good:<21} {note}\n")
    return EXIT_OK


def run_backups(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load(args, err)
    if config is None:
        return EXIT_INVALID
    backups = list_backups(Path(config.model.rollback.backup_dir))
    if args.json:
        for backup in backups:
            record = {
                "path": str(backup.path),
                "label": backup.label,
                "taken_at": backup.taken_at.timestamp(),
                "size": backup.size,
                "sha256": backup.sha256,
                "verified": backup.sha256 is not None,
                "release": backup.release,
                "schema": backup.schema,
            }
            out.write(json.dumps(record, sort_keys=True) + "\n")
        return EXIT_OK
    if not backups:
        out.write(f"no backups in {config.model.rollback.backup_dir}\n")
        return EXIT_OK
    out.write(
        f"{'TAKEN':<21} {'LABEL':<18} {'SIZE':>8}  {'VERIFIED':<8} {'RELEASE':<20} "
        f"{'SCHEMA':<8} PATH\n"
    )
    for backup in backups:
        verified = "yes" if backup.sha256 else "NO"
        out.write(
            f"{iso(backup.taken_at.timestamp()):<21} {backup.label:<18} "
            f"{format_size(backup.size):>8}  {verified:<8} {backup.release or '-':<20} "
            f"{backup.schema or '-':<8} {backup.path}\n"
        )
    return EXIT_OK
