"""`spek-sentinel alerts`, `spek-sentinel ack ALERT` and `spek-sentinel veto ALERT`: what humans
are asked to look at, and their answers. An answer is recorded in the state file with the page
that reports it; the daemon carries out a "rollback" or "dismiss" answer."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, TextIO

from spek_sentinel.commands.common import (
    EXIT_INVALID,
    EXIT_OK,
    add_config_option,
    load,
    state_of,
)
from spek_sentinel.config import Config
from spek_sentinel.domain.alerts import Alert, AlertError, AlertState, Answer, HumanAction
from spek_sentinel.domain.units import iso
from spek_sentinel.paging.desk import AlertDesk
from spek_sentinel.service.api import alert_json, level_name

_ANSWERS = [answer.value for answer in Answer]


def add_parser(commands: Any) -> None:
    listing = commands.add_parser("alerts", help="list the alerts, newest first")
    add_config_option(listing)
    listing.add_argument("--all", action="store_true", help="include resolved alerts")
    listing.add_argument("--json", action="store_true", help="a JSON list (fields: README)")
    listing.set_defaults(handler=run_list)

    ack = commands.add_parser(
        "ack", help="acknowledge an alert (stops its escalation), or answer it"
    )
    add_config_option(ack)
    ack.add_argument("alert", help="the alert's id or dedup key")
    _add_who(ack)
    ack.add_argument(
        "--answer",
        choices=_ANSWERS,
        default=Answer.ACKNOWLEDGE.value,
        help="acknowledge (default); rollback: roll back now with the incident's playbook; "
        "dismiss: no automatic rollback in this incident (vetoes a waiting one)",
    )
    ack.set_defaults(handler=run_ack)

    veto = commands.add_parser(
        "veto", help="stop the rollback an alert is waiting to start (its veto window)"
    )
    add_config_option(veto)
    veto.add_argument("alert", help="the alert's id or dedup key")
    _add_who(veto)
    veto.set_defaults(handler=run_veto, answer=Answer.DISMISS.value)


def _add_who(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--by", help="who answers (default: $SUDO_USER, else $USER)")
    parser.add_argument("--note", default="", help="why, or what you are doing about it")


def _who(args: argparse.Namespace) -> str | None:
    for candidate in (args.by, os.environ.get("SUDO_USER"), os.environ.get("USER")):
        if candidate and candidate.strip():
            return str(candidate).strip()
    return None


def _open_desk(config: Config, args: argparse.Namespace, err: TextIO) -> AlertDesk | None:
    """On the state database the config names; None after saying why its secret is missing."""
    state = state_of(config, args, err)
    if state is None:
        return None
    return AlertDesk.open(state, config.escalation, config.notice_pagers)


# -- alerts ---------------------------------------------------------------------------------


def _acked(alert: Alert) -> str:
    if alert.acked_by is None:
        return "-"
    when = iso(alert.acked_at) if alert.acked_at is not None else "?"
    return f"{alert.acked_by} {when}"


def _summary(alert: Alert) -> str:
    if alert.rollback_at is not None and alert.state is not AlertState.RESOLVED:
        return (
            f"[rollback at {iso(alert.rollback_at)} unless vetoed: "
            f"spek-sentinel veto {alert.id}] {alert.summary}"
        )
    return alert.summary


def run_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load(args, err)
    if config is None:
        return EXIT_INVALID
    desk = _open_desk(config, args, err)
    if desk is None:
        return EXIT_INVALID
    try:
        alerts = desk.store.alerts(include_resolved=args.all)
    finally:
        desk.close()
    if args.json:
        records = [alert_json(alert, config.escalation) for alert in alerts]
        out.write(json.dumps(records, indent=2, sort_keys=True) + "\n")
        return EXIT_OK
    if not alerts:
        out.write("no alerts" if args.all else "no open alerts (--all shows resolved ones)")
        out.write("\n")
        return EXIT_OK
    out.write(
        f"{'ID':>5}  {'STATE':<12} {'URGENCY':<8} {'LEVEL':<18} {'OPENED':<20} "
        f"{'ACKED BY / AT':<32} SUMMARY\n"
    )
    for alert in alerts:
        level = level_name(alert, config.escalation) or "-"
        out.write(
            f"{alert.id:>5}  {alert.state.value:<12} {alert.urgency:<8} {level:<18} "
            f"{iso(alert.opened_at):<20} {_acked(alert):<32} {_summary(alert)}\n"
        )
    return EXIT_OK


# -- ack, veto ------------------------------------------------------------------------------


def _recorded(alert: Alert, action: HumanAction) -> str:
    said = {
        Answer.ACKNOWLEDGE: "acknowledged",
        Answer.ROLLBACK: "rollback approved",
        Answer.DISMISS: "dismissed",
    }[action.answer]
    line = f"alert {alert.id} ({alert.dedup_key}): {said} by {action.by} at {iso(action.at)}"
    if action.note:
        line += f": {action.note}"
    lines = [line, f"state: {alert.state.value}; the pagers are told"]
    if action.answer is Answer.ROLLBACK:
        lines.append(
            f"the daemon will carry it out: a rollback with playbook {alert.playbook or '?'} "
            "(spek-sentinel incidents shows its progress)"
        )
    elif action.answer is Answer.DISMISS:
        lines.append(
            "the daemon will carry it out: no automatic rollback in this incident"
            + (f" ({alert.incident})" if alert.incident else "")
        )
    return "\n".join(lines) + "\n"


def _answer(args: argparse.Namespace, out: TextIO, err: TextIO, *, veto: bool = False) -> int:
    by = _who(args)
    if by is None:
        err.write("say who answers: --by NAME (neither $SUDO_USER nor $USER is set)\n")
        return EXIT_INVALID
    config = load(args, err)
    if config is None:
        return EXIT_INVALID
    desk = _open_desk(config, args, err)
    if desk is None:
        return EXIT_INVALID
    try:
        if veto:
            alert = desk.find(args.alert)
            if alert.rollback_at is None or alert.state is AlertState.RESOLVED:
                err.write(
                    f"alert {alert.id} ({alert.dedup_key}) has no rollback waiting in its veto "
                    "window: nothing to veto (to hold automatic rollbacks in its incident: "
                    f"spek-sentinel ack {alert.id} --answer dismiss)\n"
                )
                return EXIT_INVALID
            out.write(f"vetoing the rollback due at {iso(alert.rollback_at)}\n")
        alert, action = desk.answer(
            args.alert,
            Answer(args.answer),
            by=by,
            note=args.note,
            source="cli",
            now=time.time(),
            veto_only=veto,
        )
    except AlertError as exc:
        err.write(f"{exc}\n")
        return EXIT_INVALID
    finally:
        desk.close()
    out.write(_recorded(alert, action))
    return EXIT_OK


def run_ack(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return _answer(args, out, err)


def run_veto(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return _answer(args, out, err, veto=True)
