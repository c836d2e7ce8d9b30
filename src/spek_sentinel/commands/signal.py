"""`spek-sentinel signal`: a human or another system confirms a condition (or resolves it)."""

from __future__ import annotations

import argparse
import getpass
import time
from typing import Any, TextIO

from spek_sentinel.commands.common import (
    EXIT_INVALID,
    EXIT_OK,
    add_config_option,
    load,
    state_of,
)
from spek_sentinel.domain.errors import InputError
from spek_sentinel.service.signals import SignalRequest, record_signal
from spek_sentinel.store.records import StateStore


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


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load(args, err)
    if config is None:
        return EXIT_INVALID
    request = SignalRequest(
        name=args.name,
        reason=args.reason,
        by=args.by or getpass.getuser(),
        value=args.value,
        resolve=args.resolve,
    )
    state = state_of(config, args, err)
    if state is None:
        return EXIT_INVALID
    store = StateStore.open(state)
    try:
        outcome = record_signal(config, store, request, time.time())
    except InputError as exc:
        err.write(f"{exc}\n")
        return EXIT_INVALID
    finally:
        store.close()
    out.write(f"{outcome.describe()} ({state.where})\n")
    return EXIT_OK
