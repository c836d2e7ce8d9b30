"""`spek-sentinel validate`: check a threshold table; exit 1 with every problem if invalid."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from spek_sentinel.commands.common import EXIT_INVALID, EXIT_OK, add_config_option, load


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("validate", help="check a threshold table; exit 1 if invalid")
    add_config_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load(args, err)
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
