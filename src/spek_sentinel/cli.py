"""The ``spek-sentinel`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from spek_sentinel import __version__
from spek_sentinel.config import Config, load_config
from spek_sentinel.domain.decisions import Decision
from spek_sentinel.domain.errors import ConfigError, InputError
from spek_sentinel.engine.policy import iso
from spek_sentinel.replay.report import as_json_line, as_text, summary
from spek_sentinel.replay.run import replay
from spek_sentinel.replay.series import Ack, read_series

EXIT_OK = 0
EXIT_INVALID = 1
DEFAULT_CONFIG = "thresholds.toml"


def _config_path(args: argparse.Namespace) -> str:
    return str(args.config or os.environ.get("SPEK_SENTINEL_CONFIG") or DEFAULT_CONFIG)


def _load(args: argparse.Namespace, err: TextIO) -> Config | None:
    path = _config_path(args)
    try:
        return load_config(path)
    except ConfigError as exc:
        count = len(exc.problems)
        err.write(f"{path}: invalid configuration, {count} problem{'s' if count != 1 else ''}:\n")
        for problem in exc.problems:
            err.write(f"  {problem}\n")
        return None


def cmd_validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args, err)
    if config is None:
        return EXIT_INVALID
    model = config.model
    mode = "on" if model.sentinel.auto_rollback else "off (shadow mode)"
    out.write(
        f"{config.path}: valid: {len(config.watch_rules)} rules, "
        f"{len(model.validation.checks)} post-rollback checks, {len(model.playbooks)} playbooks, "
        f"{len(model.probes)} probes; auto_rollback={mode}\n"
    )
    return EXIT_OK


def cmd_replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args, err)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spek-sentinel",
        description="Watches the SPEK Platform and carries out its rollback runbook.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "-c",
            "--config",
            help=f"threshold table (default: $SPEK_SENTINEL_CONFIG or ./{DEFAULT_CONFIG})",
        )

    validate = commands.add_parser("validate", help="check a threshold table; exit 1 if invalid")
    with_config(validate)
    validate.set_defaults(handler=cmd_validate)

    backtest = commands.add_parser(
        "replay", help="feed recorded samples through the rules and print every decision"
    )
    with_config(backtest)
    backtest.add_argument(
        "--series", required=True, help='JSON lines: {"ts", "signal", "value"|"error"}'
    )
    backtest.add_argument("--json", action="store_true", help="one JSON object per decision")
    backtest.set_defaults(handler=cmd_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args, sys.stdout, sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
