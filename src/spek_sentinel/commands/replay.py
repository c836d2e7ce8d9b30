"""`spek-sentinel replay`: recorded samples through the rules; every decision printed."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from spek_sentinel.commands.common import EXIT_INVALID, EXIT_OK, add_config_option, load
from spek_sentinel.domain.decisions import Decision
from spek_sentinel.domain.errors import InputError
from spek_sentinel.engine.policy import iso
from spek_sentinel.replay.report import as_json_line, as_text, summary
from spek_sentinel.replay.run import replay
from spek_sentinel.replay.series import Ack, read_series


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "replay", help="feed recorded samples through the rules and print every decision"
    )
    add_config_option(parser)
    parser.add_argument(
        "--series", required=True, help='JSON lines: {"ts", "signal", "value"|"error"}'
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per decision")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load(args, err)
    if config is None:
        return EXIT_INVALID
    try:
        events = read_series(args.series)
    except InputError as exc:
        err.write(f"{exc}\n")
        return EXIT_INVALID

    def show(decision: Decision) -> None:
        out.write((as_json_line(decision) if args.json else as_text(decision)) + "\n")

    def show_ack(ack: Ack) -> None:
        if not args.json:
            out.write(f"{iso(ack.at)}  acknowledged by {ack.by}\n")

    result = replay(config.rules, config.policy, events, show, show_ack)
    report = err if args.json else out
    report.write(summary(result.decisions, result.samples, result.span) + "\n")
    if result.unwatched:
        names = ", ".join(f"{name} ({count})" for name, count in sorted(result.unwatched.items()))
        err.write(f"note: samples of signals no rule watches were ignored: {names}\n")
    return EXIT_OK
