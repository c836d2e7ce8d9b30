"""`spek-sentinel demo`: a bad deploy of the sample SPEK app, detected, rolled back and verified
on this machine, live (service/demo.py). Needs the PostgreSQL server and Redis binaries; starts
and removes everything else itself. Exit 0 when the rollback landed and verified, 1 when the demo
failed, 69 when something must be installed first, 130 when interrupted (after cleaning up)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any, TextIO

from spek_sentinel.service.demo import Demo, DemoOptions


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "demo",
        help="watch a bad deploy of the sample app get rolled back, live (about a minute)",
        description="Starts a throwaway PostgreSQL and Redis, deploys the sample SPEK app "
        "(examples/spek_app) with the process backend, deploys a release that fails 30%% of "
        "its API requests, and shows the sentinel detect it, roll it back and verify. Cleans "
        "up after itself, also on Ctrl-C.",
    )
    parser.add_argument(
        "--app-dir",
        type=Path,
        help="the sample app's directory (default: examples/spek_app of this checkout, or an "
        "installed spek_app)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (state, incident report, logs, table) afterwards",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    demo = Demo(out, DemoOptions(app_dir=args.app_dir, keep=args.keep))
    return asyncio.run(demo.run())
