"""Render decisions for people (a table) and for programs (one JSON object per line)."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from spek_sentinel.domain.decisions import Decision, Page, Rollback
from spek_sentinel.domain.units import format_duration, iso


def decision_record(decision: Decision) -> dict[str, Any]:
    verdict = decision.verdict
    value = verdict.value
    return {
        "ts": verdict.at,
        "time": iso(verdict.at),
        "rule": verdict.rule.name,
        "signal": verdict.rule.signal,
        "previous": verdict.previous.value,
        "state": verdict.state.value,
        "transition": verdict.transition,
        "severity": verdict.severity.value,
        "action": decision.action.value,
        "page_kind": decision.kind.value if isinstance(decision, Page) else None,
        "playbook": decision.playbook if isinstance(decision, Rollback) else verdict.rule.playbook,
        "incident": decision.incident,
        "reason": decision.reason,
        "evidence": verdict.evidence,
        "value": value if value is None or math.isfinite(value) else None,
    }


def as_json_line(decision: Decision) -> str:
    return json.dumps(decision_record(decision), sort_keys=True)


def as_text(decision: Decision) -> str:
    record = decision_record(decision)
    action = record["action"].upper()
    if record["page_kind"]:
        action += f" ({record['page_kind']})"
    head = (
        f"{record['time']}  {record['rule']:<28} {record['transition']:<22} "
        f"{record['severity']:<9}  {action}"
    )
    lines = [head, f"    why:      {record['reason']}", f"    evidence: {record['evidence']}"]
    if isinstance(decision, Rollback):
        lines.insert(1, f"    playbook: {decision.playbook}   incident: {decision.incident}")
    return "\n".join(lines)


def summary(decisions: list[Decision], samples: int, span: float) -> str:
    counts = Counter(d.action.value for d in decisions)
    parts = [f"{counts.get(a, 0)} {a}" for a in ("rollback", "page", "resolve", "none")]
    return (
        f"replayed {samples} samples over {format_duration(span)}: "
        f"{len(decisions)} decisions ({', '.join(parts)})"
    )
