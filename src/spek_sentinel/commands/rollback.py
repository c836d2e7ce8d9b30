"""`spek-sentinel rollback --playbook NAME`: carry out a runbook scenario now, and
`spek-sentinel incidents [show ID]`: what rollbacks did, as the runbook's incident report."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from spek_sentinel.commands.common import (
    EXIT_INVALID,
    EXIT_OK,
    add_config_option,
    config_path,
    load,
    report_config_error,
    state_of,
)
from spek_sentinel.domain.errors import ConfigError, RollbackError
from spek_sentinel.domain.units import iso
from spek_sentinel.rollback.executor import RunEvent
from spek_sentinel.rollback.journal import Journal
from spek_sentinel.service.rollback_plan import PlanRequest, describe_plan
from spek_sentinel.service.rollback_run import (
    execute,
    incident_report,
    plan_rollback,
    target_release,
)
from spek_sentinel.store.records import StateStore


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("rollback", help="run a rollback playbook now (or --dry-run)")
    add_config_option(parser)
    parser.add_argument("--playbook", required=True, help="one of the table's [playbooks]")
    parser.add_argument("--to", help="release to return to (default: newest known good)")
    parser.add_argument("--reason", default="", help="why, for the incident report")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    parser.add_argument("--yes", action="store_true", help="really stop and roll back production")
    parser.set_defaults(handler=run_rollback)

    incidents = commands.add_parser("incidents", help="rollback runs; `incidents show ID`")
    add_config_option(incidents)
    incidents.add_argument("show", nargs="?", choices=["show"], help="show one incident")
    incidents.add_argument("incident", nargs="?", help="the incident id")
    incidents.set_defaults(handler=run_incidents)


def _show(out: TextIO) -> Callable[[RunEvent], None]:
    def show(event: RunEvent) -> None:
        step = f" {event.step}" if event.step else ""
        detail = f": {event.detail}" if event.detail else ""
        out.write(f"{iso(event.at)}  {event.kind}{step}{detail}\n")

    return show


def run_rollback(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load(args, err)
    if config is None:
        return EXIT_INVALID
    if state_of(config, args, err) is None:  # the state database's secret, before planning
        return EXIT_INVALID
    target = target_release(config, args.to, os.environ)
    now = time.time()
    incident = "manual-" + datetime.fromtimestamp(now, UTC).strftime("%Y%m%d-%H%M%S")
    request = PlanRequest(incident, args.playbook, target, args.reason or "manual rollback", now)
    try:
        plan = plan_rollback(config, request, os.environ)
    except ConfigError as exc:
        report_config_error(config_path(args), exc, err)
        return EXIT_INVALID
    except RollbackError as exc:
        err.write(f"cannot roll back: {exc}\n")
        return EXIT_INVALID
    out.write(describe_plan(plan) + "\n")
    if args.dry_run:
        out.write("dry run: nothing was changed\n")
        return EXIT_OK
    if not args.yes:
        err.write("this stops production and rolls it back: add --yes (or --dry-run)\n")
        return EXIT_INVALID

    result = execute(config, plan, request, os.environ, on_event=_show(out))
    if result.report_path is not None:
        out.write(f"incident report: {result.report_path}\n")
    outcome = result.outcome
    if outcome.status != "succeeded":
        err.write(f"rollback {outcome.status}: {outcome.reason}\n")
        return EXIT_INVALID
    downtime = f"{outcome.downtime:.1f}s" if outcome.downtime is not None else "none"
    out.write(f"rollback succeeded; downtime {downtime}\n")
    return EXIT_OK


def run_incidents(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load(args, err)
    if config is None:
        return EXIT_INVALID
    state = state_of(config, args, err)
    if state is None:
        return EXIT_INVALID
    journal = Journal.open(state)
    try:
        if args.show:
            if not args.incident:
                err.write("incidents show needs an incident id\n")
                return EXIT_INVALID
            store = StateStore.open(state)
            try:
                incident = store.incident(args.incident)
            finally:
                store.close()
            trigger = incident.trigger if incident is not None else ""
            report = incident_report(config, journal, args.incident, trigger)
            if report is None:
                err.write(f"no incident {args.incident}\n")
                return EXIT_INVALID
            out.write(report + "\n")
            return EXIT_OK
        runs = journal.runs()
    finally:
        journal.close()
    if not runs:
        out.write("no rollbacks recorded\n")
    for record in runs:
        downtime = f"{record.downtime:.0f}s" if record.downtime is not None else "-"
        out.write(
            f"{record.incident_id:<28} {iso(record.started_at)}  {record.status:<10} "
            f"downtime {downtime:<6} {record.reason}\n"
        )
    return EXIT_OK
