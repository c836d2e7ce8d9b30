"""The ``spek-sentinel`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spek_sentinel import __version__
from spek_sentinel.commands import (
    alerts,
    check,
    demo,
    releases,
    replay,
    rollback,
    run,
    signal,
    validate,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spek-sentinel",
        description="Watches the SPEK Platform and carries out its rollback runbook.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (validate, check, replay, signal, releases, rollback, alerts, run, demo):
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args, sys.stdout, sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
