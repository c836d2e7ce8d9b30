"""`spek-sentinel run [-c FILE]`: the daemon. Runs until SIGTERM; SIGHUP reloads the table."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any, TextIO

import psycopg

from spek_sentinel.commands.common import (
    EXIT_INVALID,
    add_config_option,
    config_path,
    report_config_error,
)
from spek_sentinel.domain.errors import ConfigError
from spek_sentinel.secrets import redact
from spek_sentinel.service.daemon import Daemon
from spek_sentinel.service.logs import configure_logging

EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: systemd restarts; the table is not at fault


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "run", help="watch, decide, roll back and page until stopped (the daemon)"
    )
    add_config_option(parser)
    parser.add_argument(
        "--log-level",
        default=os.environ.get("SPEK_SENTINEL_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--log-json",
        dest="log_json",
        action="store_true",
        default=None,
        help="JSON lines on stderr (the default when stderr is not a terminal)",
    )
    output.add_argument(
        "--log-console", dest="log_json", action="store_false", help="human-readable lines"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    configure_logging(args.log_level, json=args.log_json, stream=err)
    path = config_path(args)

    def redact_these(secrets: list[str]) -> None:
        configure_logging(args.log_level, json=args.log_json, stream=err, secrets=secrets)

    try:
        return asyncio.run(Daemon(path, os.environ, on_secrets=redact_these).run())
    except ConfigError as exc:
        report_config_error(path, exc, err)
        return EXIT_INVALID
    except psycopg.OperationalError as exc:  # the PostgreSQL state database, at start
        err.write(f"{path}: the state database cannot be reached: {redact(str(exc))}\n")
        return EXIT_UNAVAILABLE
