"""`spek-sentinel release record VERSION` and `spek-sentinel releases`: the release history
that rollbacks target (the newest known-good release that is not the current one)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from spek_sentinel.commands.common import EXIT_INVALID, EXIT_OK, add_config_option, load
from spek_sentinel.engine.policy import iso
from spek_sentinel.store.sqlite import SqliteStore


def add_parser(commands: Any) -> None:
    release = commands.add_parser("release", help="record a deploy in the release history")
    actions = release.add_subparsers(dest="action", required=True, metavar="ACTION")
    record = actions.add_parser("record", help="a new release of the app is starting")
    add_config_option(record)
    record.add_argument("version", help="the image or commit being deployed")
    record.add_argument("--source", default="deploy", help="who records it (default: deploy)")
    record.set_defaults(handler=run_record)

    listing = commands.add_parser("releases", help="list the release history, newest first")
    add_config_option(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per release")
    listing.set_defaults(handler=run_list)


def _store(args: argparse.Namespace, err: TextIO) -> SqliteStore | None:
    config = load(args, err)
    if config is None:
        return None
    return SqliteStore.in_dir(Path(config.model.sentinel.state_dir))


def run_record(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    version = args.version.strip()
    if not version:
        err.write("the version is empty\n")
        return EXIT_INVALID
    store = _store(args, err)
    if store is None:
        return EXIT_INVALID
    try:
        release = store.record_release(version, time.time(), args.source)
    finally:
        store.close()
    out.write(f"release {release.version} current since {iso(release.first_seen)}\n")
    return EXIT_OK


def run_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    store = _store(args, err)
    if store is None:
        return EXIT_INVALID
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
