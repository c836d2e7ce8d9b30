"""`spek-sentinel replay`: recorded samples through the rules; every decision printed."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any, TextIO

from spek_sentinel.commands.common import EXIT_INVALID, EXIT_OK, add_config_option, load
from spek_sentinel.config import Config
from spek_sentinel.domain.decisions import Decision
from spek_sentinel.domain.errors import InputError
from spek_sentinel.domain.units import iso, parse_duration
from spek_sentinel.replay.report import as_json_line, as_text, summary
from spek_sentinel.replay.run import replay
from spek_sentinel.replay.series import Ack, Event, parse_ts, read_series


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "replay", help="feed recorded samples through the rules and print every decision"
    )
    add_config_option(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--series", help='JSON lines: {"ts", "signal", "value"|"error"}')
    source.add_argument(
        "--prometheus",
        metavar="URL",
        help="pull the prometheus probes' signals from this Prometheus over --start..--end",
    )
    parser.add_argument("--start", help="with --prometheus: unix seconds or RFC 3339")
    parser.add_argument("--end", help="with --prometheus: unix seconds or RFC 3339")
    parser.add_argument(
        "--step", help="with --prometheus: sample spacing such as '15s' (default: probe interval)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per decision")
    parser.set_defaults(handler=run)


def _time(raw: str) -> float:
    try:
        return parse_ts(float(raw) if raw.replace(".", "", 1).isdigit() else raw)
    except ValueError as exc:
        raise InputError(f"--start/--end: {exc}") from None


def _events(args: argparse.Namespace, config: Config) -> list[Event]:
    if args.series is not None:
        return read_series(args.series)
    if args.start is None or args.end is None:
        raise InputError("--prometheus needs --start and --end")
    start, end = _time(args.start), _time(args.end)
    if end <= start:
        raise InputError("--end must be after --start")
    try:
        step = parse_duration(args.step) if args.step else None
    except ValueError as exc:
        raise InputError(f"--step: {exc}") from None
    from spek_sentinel.replay.prometheus_source import fetch_series  # noqa: PLC0415 -- httpx only when used

    return asyncio.run(fetch_series(config, start, end, step, args.prometheus, os.environ))


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load(args, err)
    if config is None:
        return EXIT_INVALID
    try:
        events = _events(args, config)
    except InputError as exc:
        err.write(f"{exc}\n")
        return EXIT_INVALID

    def show(decision: Decision) -> None:
        out.write((as_json_line(decision) if args.json else as_text(decision)) + "\n")

    def show_ack(ack: Ack) -> None:
        if not args.json:
            out.write(f"{iso(ack.at)}  acknowledged by {ack.by}\n")

    rules = config.rules
    if args.prometheus is not None:
        # only rules Prometheus has history for: the others would just go blind
        from spek_sentinel.replay.prometheus_source import fetched_signals  # noqa: PLC0415

        fetched = fetched_signals(config)
        rules = tuple(rule for rule in rules if rule.signal in fetched)
        skipped = sorted({rule.name for rule in config.rules if rule.signal not in fetched})
        if skipped:
            err.write(f"note: not replayed (no Prometheus history): {', '.join(skipped)}\n")
    result = replay(rules, config.policy, events, show, show_ack)
    report = err if args.json else out
    report.write(summary(result.decisions, result.samples, result.span) + "\n")
    if result.unwatched:
        names = ", ".join(f"{name} ({count})" for name, count in sorted(result.unwatched.items()))
        err.write(f"note: samples of signals no rule watches were ignored: {names}\n")
    return EXIT_OK
