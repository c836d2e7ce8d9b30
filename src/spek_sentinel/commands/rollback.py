"""`spek-sentinel rollback --playbook NAME`: carry out a runbook scenario now, and
`spek-sentinel incidents [show ID]`: what rollbacks did, as the runbook's incident report."""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from spek_sentinel.commands.common import (
    EXIT_INVALID,
    EXIT_OK,
    add_config_option,
    config_path,
    load,
    report_config_error,
)
from spek_sentinel.config import Config
from spek_sentinel.domain.errors import ConfigError, RollbackError
from spek_sentinel.domain.units import iso
from spek_sentinel.rollback.backup import DatabaseTarget
from spek_sentinel.rollback.executor import ExecutorSettings, Plan, RunEvent, RunOutcome, run
from spek_sentinel.rollback.journal import Journal
from spek_sentinel.rollback.report import render
from spek_sentinel.service.rollback_plan import PlanRequest, build_plan, describe_plan
from spek_sentinel.service.rollback_targets import database_target
from spek_sentinel.store.sqlite import SqliteStore


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


def _report(config: Config, journal: Journal, incident: str, trigger: str = "") -> str | None:
    record = journal.run(incident)
    if record is None:
        return None
    settings = config.model.rollback
    return render(
        record,
        journal.steps(incident),
        downtime_budget=settings.downtime_budget,
        downtime_target=settings.downtime_target,
        trigger=trigger,
    )


def _execute(
    config: Config,
    plan: Plan,
    database: DatabaseTarget | None,
    request: PlanRequest,
    out: TextIO,
) -> RunOutcome:
    """Run the plan with progress on ``out``; write the incident report beside the journal."""

    def show(event: RunEvent) -> None:
        step = f" {event.step}" if event.step else ""
        detail = f": {event.detail}" if event.detail else ""
        out.write(f"{iso(event.at)}  {event.kind}{step}{detail}\n")

    settings = config.model.rollback
    executor_settings = ExecutorSettings(
        downtime_budget=settings.downtime_budget,
        downtime_target=settings.downtime_target,
        secrets=database.secrets if database is not None else (),
    )
    journal = Journal.in_dir(Path(config.model.sentinel.state_dir))
    try:
        outcome = run(plan, journal, on_event=show, settings=executor_settings)
        report = _report(config, journal, plan.incident_id, request.trigger)
    finally:
        journal.close()
    if report is not None:
        path = Path(settings.incidents_dir) / f"{plan.incident_id}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report, encoding="utf-8")
        out.write(f"incident report: {path}\n")
    return outcome


def run_rollback(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load(args, err)
    if config is None:
        return EXIT_INVALID
    state_dir = Path(config.model.sentinel.state_dir)
    store = SqliteStore.in_dir(state_dir)
    try:
        known_good = store.rollback_target()
    finally:
        store.close()
    target = args.to or (known_good.version if known_good is not None else None)
    now = time.time()
    incident = "manual-" + datetime.fromtimestamp(now, UTC).strftime("%Y%m%d-%H%M%S")
    request = PlanRequest(incident, args.playbook, target, args.reason or "manual rollback", now)
    try:
        plan = build_plan(config, request, os.environ)
        database = database_target(config, os.environ)
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

    outcome = _execute(config, plan, database, request, out)
    if outcome.status != "succeeded":
        err.write(f"rollback {outcome.status}: {outcome.reason}\n")
        return EXIT_INVALID
    if target is not None and config.model.rollback.application is not None:
        store = SqliteStore.in_dir(state_dir)
        try:
            store.record_release(target, time.time(), "rollback")
        finally:
            store.close()
    downtime = f"{outcome.downtime:.1f}s" if outcome.downtime is not None else "none"
    out.write(f"rollback succeeded; downtime {downtime}\n")
    return EXIT_OK


def run_incidents(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load(args, err)
    if config is None:
        return EXIT_INVALID
    journal = Journal.in_dir(Path(config.model.sentinel.state_dir))
    try:
        if args.show:
            if not args.incident:
                err.write("incidents show needs an incident id\n")
                return EXIT_INVALID
            store = SqliteStore.in_dir(Path(config.model.sentinel.state_dir))
            try:
                incident = store.incident(args.incident)
            finally:
                store.close()
            trigger = incident.trigger if incident is not None else ""
            report = _report(config, journal, args.incident, trigger)
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
