"""The incident report, in the shape of the runbook's "Post-Incident Review": what happened,
the timeline of every step with its timing and outcome, the downtime against the budget, and
the backup the rollback stood on. Rendered from the journal, so it is true after a crash too."""

from __future__ import annotations

import json
from collections.abc import Mapping

from spek_sentinel.domain.units import format_duration, iso
from spek_sentinel.rollback.journal import RunRecord, StepRecord


def _planned_steps(run: RunRecord) -> list[dict[str, object]]:
    try:
        steps = json.loads(run.plan).get("steps", [])
    except (ValueError, AttributeError):
        return []
    return [step for step in steps if isinstance(step, dict)]


def _seconds(value: float | None) -> str:
    return "-" if value is None else format_duration(value)


def render(
    run: RunRecord,
    steps: Mapping[int, StepRecord],
    *,
    downtime_budget: float,
    downtime_target: float,
    trigger: str = "",
) -> str:
    playbook = json.loads(run.plan).get("playbook", "") if run.plan else ""
    lines = [
        f"# Incident {run.incident_id}",
        "",
        "## Summary",
        "",
        f"- Status: **{run.status}**" + (f" — {run.reason}" if run.reason else ""),
        f"- Playbook: {playbook or '-'}",
        f"- Started: {iso(run.started_at)}",
        f"- Ended: {iso(run.ended_at) if run.ended_at else 'not yet'}",
    ]
    if trigger:
        lines.append(f"- Trigger: {trigger}")
    downtime = run.downtime
    if downtime is None:
        lines.append("- Downtime: not measured (traffic not stopped, or not verified healthy)")
    else:
        verdict = "within target" if downtime <= downtime_target else "over target"
        if downtime > downtime_budget:
            verdict = "OVER BUDGET"
        lines.append(
            f"- Downtime: {format_duration(downtime)} ({verdict}; target "
            f"{format_duration(downtime_target)}, budget {format_duration(downtime_budget)})"
        )
    backups = [s.verified_backup for s in steps.values() if s.verified_backup is not None]
    for backup in backups:
        lines.append(
            f"- Backup: `{backup.location}` ({backup.size} bytes, sha256 {backup.sha256[:16]}…)"
        )
    lines += ["", "## Timeline", "", "| # | step | status | started | took | note |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for index, planned in enumerate(_planned_steps(run)):
        record = steps.get(index)
        name = str(planned.get("name", f"step {index}"))
        if record is None:
            lines.append(f"| {index + 1} | {name} | not run | - | - | |")
            continue
        note = record.error or _first_line(record.output)
        if record.attempt > 1:
            note = f"attempt {record.attempt}; {note}"
        lines.append(
            f"| {index + 1} | {name} | {record.status} | {iso(record.claimed_at)} "
            f"| {_seconds(record.duration)} | {_cell(note)} |"
        )
    lines += ["", "## Actions taken", ""]
    for index, planned in enumerate(_planned_steps(run)):
        record = steps.get(index)
        if record is None or not record.output.strip():
            continue
        lines += [
            f"### {index + 1}. {planned.get('name')}",
            "",
            "```",
            record.output.strip(),
            "```",
            "",
        ]
    lines += [
        "## Review (for the humans)",
        "",
        "- Root cause:",
        "- Lessons learned:",
        "- Additional testing needed? Better monitoring required? Rollback procedure gaps?",
        "",
    ]
    return "\n".join(lines)


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:160]
