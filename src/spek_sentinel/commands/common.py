"""What every subcommand shares: finding and loading the config, exit codes."""

from __future__ import annotations

import argparse
import os
from typing import TextIO

from spek_sentinel.config import Config, load_config
from spek_sentinel.domain.errors import ConfigError
from spek_sentinel.store.open import StateLocation, state_location

EXIT_OK = 0
EXIT_INVALID = 1
DEFAULT_CONFIG = "thresholds.toml"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        help=f"threshold table (default: $SPEK_SENTINEL_CONFIG or ./{DEFAULT_CONFIG})",
    )


def config_path(args: argparse.Namespace) -> str:
    return str(args.config or os.environ.get("SPEK_SENTINEL_CONFIG") or DEFAULT_CONFIG)


def report_config_error(path: str, error: ConfigError, err: TextIO) -> None:
    count = len(error.problems)
    err.write(f"{path}: invalid configuration, {count} problem{'s' if count != 1 else ''}:\n")
    for problem in error.problems:
        err.write(f"  {problem}\n")


def load(args: argparse.Namespace, err: TextIO) -> Config | None:
    """The validated config, or None after printing every problem."""
    path = config_path(args)
    try:
        return load_config(path)
    except ConfigError as exc:
        report_config_error(path, exc, err)
        return None


def state_of(config: Config, args: argparse.Namespace, err: TextIO) -> StateLocation | None:
    """Where the config keeps the state (the PostgreSQL DSN is read from its secret here), or
    None after printing why the secret cannot be read."""
    try:
        return state_location(config, os.environ)
    except ConfigError as exc:
        report_config_error(config_path(args), exc, err)
        return None
