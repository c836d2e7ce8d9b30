"""`spek-sentinel signal`: a human or another system confirms a condition (or resolves it)."""

from __future__ import annotations

import argparse
import getpass
import time
from pathlib import Path
from typing import Any, TextIO

from spek_sentinel.commands.common import EXIT_INVALID, EXIT_OK, add_config_option, load
from spek_sentinel.config import Config
from spek_sentinel.store.sqlite import SqliteStore


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "signal",
        help="record a confirmed event (data_corruption, security_breach) or a reported value",
    )
    add_config_option(parser)
    parser.add_argument("name", help="a signal of a pushed probe in the config")
    parser.add_argument("--value", type=float, help="the value (events default to 1)")
    parser.add_argument("--reason", required=True, help="why: kept with the signal")
    parser.add_argument("--by", help="who is pushing it (default: the current user)")
    parser.add_argument("--resolve", action="store_true", help="resolve the open signal")
    parser.set_defaults(handler=run)


def _pushed_measures(config: Config) -> dict[str, str]:
    return {
        signal: spec.measure or "value"
        for probe in config.model.probes.values()
        if probe.kind == "pushed"
        for signal, spec in probe.signals.items()
    }


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load(args, err)
    if config is None:
        return EXIT_INVALID
    measures = _pushed_measures(config)
    measure = measures.get(args.name)
    if measure is None:
        known = ", ".join(sorted(measures)) or "none"
        err.write(f"{args.name}: not a pushed signal in {config.path}; pushed signals: {known}\n")
        return EXIT_INVALID
    value = args.value
    if value is None and not args.resolve:
        if measure != "event":
            err.write(f"{args.name} is a reported value: give --value\n")
            return EXIT_INVALID
        value = 1.0
    by = args.by or getpass.getuser()
    store = SqliteStore.in_dir(Path(config.model.sentinel.state_dir))
    try:
        now = time.time()
        if args.resolve:
            count = store.resolve(args.name, args.reason, by, now)
            out.write(f"{args.name}: resolved {count} open signal(s) by {by}: {args.reason}\n")
        else:
            store.push(args.name, value, args.reason, by, now)
            out.write(f"{args.name} = {value:g} recorded by {by}: {args.reason} ({store.path})\n")
    finally:
        store.close()
    return EXIT_OK
