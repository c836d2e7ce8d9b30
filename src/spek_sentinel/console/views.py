"""The console's four views as HTML fragments (the ``<main>`` of a page), rendered from the
daemon's live state: the engine's rules, the alert desk, the rollback journal, the release
history. The routes put a fragment in the page shell, or in JSON for the page's poller.

Reads of the alert desk run on the event loop, like the API's; reads of the journal and the
release history open their own connection and run in a worker thread (``*_blocking``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from spek_sentinel.config import Config
from spek_sentinel.console import svg
from spek_sentinel.console.history import SignalHistory, series_key
from spek_sentinel.console.text import Escaper, condition_in, seconds, value_in, when
from spek_sentinel.domain.alerts import Alert, AlertState, HumanAction
from spek_sentinel.domain.rules import RuleState, Threshold
from spek_sentinel.domain.units import format_duration, iso
from spek_sentinel.engine.engine import RuleStatus
from spek_sentinel.paging.desk import AlertDesk
from spek_sentinel.paging.outbox import notice_from_json
from spek_sentinel.rollback.journal import Journal, RunRecord, StepRecord
from spek_sentinel.service.watch import Watch
from spek_sentinel.store.base import IncidentRecord, Release
from spek_sentinel.store.open import StateSource
from spek_sentinel.store.records import StateStore

_STATE_ORDER = {
    RuleState.FIRING: 0,
    RuleState.UNKNOWN: 1,
    RuleState.PENDING: 2,
    RuleState.RESOLVED: 3,
    RuleState.OK: 4,
}


def _badge(kind: str, text: str, esc: Escaper) -> str:
    return f'<span class="badge {esc(kind)}">{esc(text)}</span>'


def signal_units(config: Config) -> dict[str, str]:
    """signal -> its unit, from the probes that produce it."""
    return {
        signal: spec.unit
        for probe in config.model.probes.values()
        for signal, spec in probe.signals.items()
    }


def _series_of(status: RuleStatus) -> str:
    """The series a split rule's machine judges (its name ends in ``{label="series"}``)."""
    rule = status.rule
    if rule.split_by is None or not rule.name.endswith('"}'):
        return ""
    marker = f'{{{rule.split_by}="'
    start = rule.name.rfind(marker)
    return rule.name[start + len(marker) : -2] if start >= 0 else ""


def _breach_test(status: RuleStatus) -> tuple[float | None, Callable[[float], bool] | None]:
    condition = status.rule.condition
    if not isinstance(condition, Threshold):
        return None, None
    line, op = condition.threshold, condition.op
    tests: dict[str, Callable[[float], bool]] = {
        ">": lambda v: v > line,
        ">=": lambda v: v >= line,
        "<": lambda v: v < line,
        "<=": lambda v: v <= line,
    }
    return line, tests[op]


# -- the banner on every page ----------------------------------------------------------------


def banner(watch: Watch, now: float, esc: Escaper) -> str:
    """What is happening right now, on every view: an open incident, a rollback running or
    waiting for its veto window, the sentinel not leading or blind."""
    parts = []
    policy = watch.sentinel.policy
    incident = policy.incident
    running = sorted(watch.state.rollbacks)
    waiting = sorted(watch.state.waiting)
    if running:
        links = ", ".join(f'<a href="/console/incidents/{esc(i)}">{esc(i)}</a>' for i in running)
        parts.append(f'<div class="callout running">Rollback running: {links}</div>')
    if waiting:
        links = ", ".join(
            f'<a href="/console/alerts#incident-{esc(i)}">{esc(i)}</a>' for i in waiting
        )
        parts.append(
            f'<div class="callout waiting">Rollback waiting for its veto window: {links}</div>'
        )
    if incident is not None and incident.id not in running:
        firing = ", ".join(sorted(incident.firing)) or "none firing now"
        parts.append(
            f'<div class="callout incident">Incident '
            f'<a href="/console/incidents/{esc(incident.id)}">{esc(incident.id)}</a> open '
            f"{when(incident.opened_at, now, esc)}: {esc(firing)}</div>"
        )
    blind = [s.rule.name for s in watch.sentinel.engine.status() if s.blind]
    if blind:
        parts.append(
            f'<div class="callout blind">Sentinel blind on {len(blind)} rule(s): '
            f'{esc(", ".join(blind))} — <a href="/console/now">see Now</a></div>'
        )
    if not watch.leadership.is_leader:
        parts.append(
            '<div class="callout follower">This replica does not lead: it evaluates, the '
            "leader acts. Answers given here are carried out by the leader.</div>"
        )
    return "".join(parts)


def live_state(watch: Watch) -> dict[str, bool]:
    """For the poller: poll faster while something is happening."""
    return {
        "incident_open": watch.sentinel.policy.incident is not None,
        "rollback_running": bool(watch.state.rollbacks or watch.state.waiting),
    }


# -- Now ---------------------------------------------------------------------------------------


def now_view(watch: Watch, history: SignalHistory, now: float, esc: Escaper) -> str:
    config = watch.config
    units = signal_units(config)
    statuses = sorted(
        watch.sentinel.engine.status(),
        key=lambda s: (0 if s.blind else 1, _STATE_ORDER.get(s.state, 9)),
    )
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status.state.value] = counts.get(status.state.value, 0) + 1
    blind = [s for s in statuses if s.blind]
    last = watch.state.last_evaluation
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    rows = []
    for status in statuses:
        rule = status.rule
        unit = units.get(rule.signal)
        key = series_key(rule.signal, _series_of(status))
        line, breaching = _breach_test(status)
        points = history.points(key, now)
        spark = svg.sparkline(
            points,
            now,
            history.window,
            threshold=line,
            breach=breaching,
            label=f"{rule.signal} over the last hour",
            esc=esc,
        )
        flags = _badge(f"state-{status.state.value}", status.state.value, esc)
        if status.blind:
            flags += " " + _badge("blind", "BLIND", esc)
        error = history.last_error(key)
        seen = (
            f'<div class="muted small">last usable value '
            f"{when(status.last_usable_at, now, esc)}</div>"
        )
        if error is not None:
            seen += f'<div class="error small">probe error: {esc(error.error)}</div>'
        held = f", for {format_duration(rule.for_)}" if rule.for_ else ""
        threshold = condition_in(unit, rule.condition)
        rows.append(
            f'<tr class="rule state-{esc(status.state.value)}{" blind" if status.blind else ""}"'
            f' data-rule="{esc(rule.name)}" data-state="{esc(status.state.value)}">'
            f"<td><strong>{esc(rule.name)}</strong>"
            f'<div class="muted small">{esc(rule.severity.value)} · {esc(rule.phase)}</div></td>'
            f"<td>{flags}{seen}</td>"
            f'<td class="num value">{esc(value_in(unit, status.value))}</td>'
            f"<td>{esc(threshold)}{esc(held)}</td>"
            f"<td>{spark}</td>"
            f'<td>{esc(rule.signal)}<div class="muted small">probe {esc(rule.probe or "?")}'
            f"</div></td>"
            f"<td>{esc(rule.playbook or '—')}</td></tr>"
        )
    blind_note = ""
    if blind:
        items = "".join(
            f"<li><strong>{esc(s.rule.signal)}</strong> (probe {esc(s.rule.probe or '?')}, "
            f"rule {esc(s.rule.name)}): no usable sample since "
            f"{when(s.last_usable_at, now, esc)}</li>"
            for s in blind
        )
        blind_note = (
            f'<div class="callout blind"><strong>Blind probes</strong>: the sentinel cannot '
            f"see these signals, so it cannot judge their rules.<ul>{items}</ul></div>"
        )
    return (
        '<section class="view" data-view="now"><h1>Now</h1>'
        f'<p class="summary">{len(statuses)} rules: {esc(summary or "none")}. '
        f"Last evaluation {when(last, now, esc)}.</p>{blind_note}"
        '<table class="rules"><thead><tr><th>rule</th><th>state</th><th>value</th>'
        "<th>threshold</th><th>last hour</th><th>signal</th><th>playbook</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


# -- Alerts ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertItem:
    alert: Alert
    actions: list[HumanAction]
    notice: str  # the JSON of the page that opened or last changed it ("" when none)


def alert_items(desk: AlertDesk, include_resolved: bool) -> list[AlertItem]:
    return [
        AlertItem(alert, desk.store.actions(alert.id), desk.store.notice(alert.id))
        for alert in desk.store.alerts(include_resolved=include_resolved)
    ]


def _escalation(desk: AlertDesk, alert: Alert, now: float, esc: Escaper) -> str:
    levels = desk.escalation.levels
    if not levels:
        return '<span class="muted">no escalation levels (nobody is paged)</span>'
    reached = levels[min(max(alert.level, 0), len(levels) - 1)]
    contacts = ", ".join(reached.contacts)
    text = (
        f'level {alert.level + 1} of {len(levels)} reached: <strong class="level">'
        f"{esc(reached.name)}</strong>" + (f" ({esc(contacts)})" if contacts else "")
    )
    following = alert.level + 1
    if alert.state is AlertState.OPEN and following < len(levels):
        due = alert.escalation_started_at + levels[following].after
        text += f"; next: {esc(levels[following].name)} {when(due, now, esc)} unless acknowledged"
    return text


def _evidence(notice_text: str, esc: Escaper) -> str:
    if not notice_text:
        return ""
    try:
        notice = notice_from_json(notice_text)
    except (ValueError, KeyError, TypeError):
        return ""
    rows = []
    if notice.rule and notice.value is not None:
        rows.append(
            f"<dt>value</dt><dd><strong>{esc(notice.value)}</strong> against "
            f"{esc(notice.threshold or '?')} ({esc(notice.rule)})</dd>"
        )
    if notice.evidence:
        rows.append(f'<dt>evidence</dt><dd class="evidence">{esc(notice.evidence)}</dd>')
    return "".join(rows)


def _action(action: HumanAction, now: float, esc: Escaper) -> str:
    done = (
        f" → {esc(action.outcome)}"
        if action.applied_at is not None
        else ' <span class="muted">(waiting for the daemon to carry it out)</span>'
    )
    note = f": “{esc(action.note)}”" if action.note else ""
    return (
        f'<li data-answer="{esc(action.answer.value)}">{when(action.at, now, esc)} '
        f"<strong>{esc(action.by)}</strong> answered <em>{esc(action.answer.value)}</em> "
        f"via {esc(action.source)}{note}{done}</li>"
    )


def _answer_form(alert: Alert, csrf: str, esc: Escaper) -> str:
    if alert.state is AlertState.RESOLVED:
        return ""
    buttons = [
        '<button type="submit" name="answer" value="acknowledge" class="ack">Acknowledge</button>'
    ]
    if alert.incident is not None:
        playbook = alert.playbook or "the incident's playbook"
        buttons.append(
            '<button type="submit" name="answer" value="rollback" class="danger" '
            f'data-confirm="{esc(f"Roll back {alert.incident} now with {playbook}?")}">'
            f"Approve rollback ({esc(playbook)})</button>"
        )
        buttons.append(
            '<button type="submit" name="answer" value="dismiss" class="dismiss" '
            f'data-confirm="{esc(f"Dismiss: no automatic rollback in {alert.incident}?")}">'
            "Dismiss</button>"
        )
    return (
        f'<form method="post" action="/console/alerts/{alert.id}/answer" class="answer">'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        f'<label>Note <input type="text" name="note" maxlength="2000" '
        f'placeholder="what you are doing about it" autocomplete="off"></label>'
        f"{''.join(buttons)}</form>"
    )


def alerts_view(
    desk: AlertDesk,
    items: Sequence[AlertItem],
    csrf: str,
    now: float,
    esc: Escaper,
    *,
    include_resolved: bool = False,
    message: str = "",
    error: str = "",
) -> str:
    cards = []
    for item in items:
        alert = item.alert
        facts = [f"<dt>kind</dt><dd>{esc(alert.kind)} · <code>{esc(alert.dedup_key)}</code></dd>"]
        if alert.incident is not None:
            facts.append(
                f'<dt>incident</dt><dd><a href="/console/incidents/{esc(alert.incident)}">'
                f"{esc(alert.incident)}</a></dd>"
            )
        if alert.rules:
            facts.append(f"<dt>rules</dt><dd>{esc(', '.join(alert.rules))}</dd>")
        facts.append(_evidence(item.notice, esc))
        if alert.playbook:
            facts.append(f"<dt>playbook</dt><dd>{esc(alert.playbook)}</dd>")
        facts.append(f"<dt>escalation</dt><dd>{_escalation(desk, alert, now, esc)}</dd>")
        facts.append(
            f"<dt>opened</dt><dd>{when(alert.opened_at, now, esc)}; last paged "
            f"{when(alert.notified_at, now, esc)}</dd>"
        )
        if alert.acked_by is not None:
            note = f": “{esc(alert.ack_note)}”" if alert.ack_note else ""
            facts.append(
                f'<dt>acknowledged</dt><dd class="acked">by <strong>{esc(alert.acked_by)}'
                f"</strong> {when(alert.acked_at, now, esc)}{note}</dd>"
            )
        if alert.rollback_at is not None:
            facts.append(
                f'<dt>veto window</dt><dd class="error">automatic rollback '
                f"{when(alert.rollback_at, now, esc)} unless dismissed</dd>"
            )
        if alert.resolved_at is not None:
            facts.append(
                f"<dt>resolved</dt><dd>{when(alert.resolved_at, now, esc)}: "
                f"{esc(alert.resolution)}</dd>"
            )
        answers = "".join(_action(a, now, esc) for a in item.actions)
        history = (
            f'<details class="answers" open><summary>answers ({len(item.actions)})</summary>'
            f"<ol>{answers}</ol></details>"
            if item.actions
            else ""
        )
        anchor = f' id="alert-{alert.id}"'
        incident_anchor = (
            f'<span id="incident-{esc(alert.incident)}"></span>'
            if alert.incident is not None and alert.dedup_key == alert.incident
            else ""
        )
        cards.append(
            f'<article class="alert urgency-{esc(alert.urgency)} state-{esc(alert.state.value)}"'
            f'{anchor} data-alert="{alert.id}" data-state="{esc(alert.state.value)}">'
            f"{incident_anchor}<header>"
            f"{_badge(f'state-{alert.state.value}', alert.state.value, esc)} "
            f"{_badge(f'urgency-{alert.urgency}', alert.urgency, esc)} "
            f'<strong class="alert-id">#{alert.id}</strong> '
            f'<span class="summary">{esc(alert.summary)}</span></header>'
            f'<dl class="facts">{"".join(facts)}</dl>{history}'
            f"{_answer_form(alert, csrf, esc)}</article>"
        )
    toggle = (
        '<a href="/console/alerts">hide resolved</a>'
        if include_resolved
        else '<a href="/console/alerts?all=1">show resolved too</a>'
    )
    flash = f'<div class="flash ok" role="status">{esc(message)}</div>' if message else ""
    if error:
        flash += f'<div class="flash error" role="alert">{esc(error)}</div>'
    open_count = sum(1 for i in items if i.alert.state is AlertState.OPEN)
    acked = sum(1 for i in items if i.alert.state is AlertState.ACKNOWLEDGED)
    body = "".join(cards) or '<p class="empty">No open alerts. Quiet night.</p>'
    return (
        '<section class="view" data-view="alerts"><h1>Alerts</h1>'
        f'<p class="summary">{open_count} open, {acked} acknowledged · {toggle}</p>'
        f"{flash}{body}</section>"
    )


# -- Incidents ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IncidentRow:
    incident: str
    opened_at: float
    status: str  # the run's status, or the alert's state when no rollback ran
    playbook: str
    downtime: float | None
    trigger: str


def _planned(run: RunRecord) -> list[dict[str, object]]:
    try:
        steps = json.loads(run.plan).get("steps", [])
    except (ValueError, AttributeError):
        return []
    return [s for s in steps if isinstance(s, dict)]


def _playbook(run: RunRecord) -> str:
    try:
        return str(json.loads(run.plan).get("playbook", ""))
    except (ValueError, AttributeError):
        return ""


def incident_rows_blocking(source: StateSource, alerts: Sequence[Alert]) -> list[IncidentRow]:
    """Every rollback run, and every incident that paged without one, newest first."""
    journal = Journal.open(source)
    store = StateStore.open(source)
    try:
        runs = journal.runs()
        seen = {run.incident_id for run in runs}
        rows = []
        for run in runs:
            record = store.incident(run.incident_id)
            rows.append(
                IncidentRow(
                    run.incident_id,
                    run.started_at,
                    run.status,
                    _playbook(run),
                    run.downtime,
                    record.trigger if record is not None else run.reason,
                )
            )
        for alert in alerts:
            if alert.incident is None or alert.incident in seen:
                continue
            seen.add(alert.incident)
            rows.append(
                IncidentRow(
                    alert.incident,
                    alert.opened_at,
                    f"no rollback ({alert.state.value})",
                    alert.playbook or "",
                    None,
                    alert.summary,
                )
            )
    finally:
        journal.close()
        store.close()
    return sorted(rows, key=lambda r: r.opened_at, reverse=True)


def incidents_view(rows: Sequence[IncidentRow], now: float, esc: Escaper) -> str:
    body = "".join(
        f'<tr data-incident="{esc(row.incident)}">'
        f'<td><a href="/console/incidents/{esc(row.incident)}">{esc(row.incident)}</a></td>'
        f"<td>{when(row.opened_at, now, esc)}</td>"
        f"<td>{_badge(f'run-{row.status.split()[0]}', row.status, esc)}</td>"
        f"<td>{esc(row.playbook or '—')}</td><td>{esc(seconds(row.downtime))}</td>"
        f'<td class="small">{esc(row.trigger)}</td></tr>'
        for row in rows
    )
    table = (
        '<table class="incidents"><thead><tr><th>incident</th><th>opened</th><th>status</th>'
        "<th>playbook</th><th>downtime</th><th>trigger</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
        if rows
        else '<p class="empty">No incidents yet.</p>'
    )
    return f'<section class="view" data-view="incidents"><h1>Incidents</h1>{table}</section>'


@dataclass(frozen=True, slots=True)
class IncidentDetail:
    incident: str
    run: RunRecord | None
    steps: dict[int, StepRecord]
    record: IncidentRecord | None


def incident_detail_blocking(source: StateSource, incident: str) -> IncidentDetail:
    journal = Journal.open(source)
    store = StateStore.open(source)
    try:
        return IncidentDetail(
            incident, journal.run(incident), journal.steps(incident), store.incident(incident)
        )
    finally:
        journal.close()
        store.close()


def _step_note(record: StepRecord) -> str:
    text = record.error or record.output.strip()
    first = text.splitlines()[0] if text else ""
    if record.attempt > 1:
        first = f"attempt {record.attempt}; {first}"
    return first[:240]


def _downtime(run: RunRecord, config: Config, now: float, esc: Escaper) -> str:
    """Stop-traffic to verified healthy against the budget; still counting while traffic is
    stopped."""
    settings = config.model.rollback
    downtime = run.downtime
    counting = run.downtime_started_at is not None and run.downtime_ended_at is None
    if counting and run.downtime_started_at is not None:
        end = run.ended_at if run.ended_at is not None else now
        downtime = end - run.downtime_started_at
    if downtime is None:
        text = '<span class="muted">not measured (traffic not stopped yet)</span>'
    else:
        budget, target = settings.downtime_budget, settings.downtime_target
        verdict = "within target" if downtime <= target else "over target"
        if downtime > budget:
            verdict = "OVER BUDGET"
        so_far = " so far" if counting else ""
        text = (
            f'<span class="downtime">{esc(seconds(downtime))}{so_far}</span> ({esc(verdict)}; '
            f"target {esc(format_duration(target))}, budget {esc(format_duration(budget))})"
            f"<br>{svg.meter(downtime, target, budget, esc=esc)}"
        )
    if run.budget_exceeded_at is not None:
        text += f'<div class="error">budget exceeded at {esc(iso(run.budget_exceeded_at))}</div>'
    return f"<dt>downtime</dt><dd>{text}</dd>"


def _backups(steps: dict[int, StepRecord], esc: Escaper) -> str:
    shown = []
    for record in steps.values():
        backup = record.verified_backup
        if backup is None:
            continue
        verified = esc(backup.detail) if backup.detail else "verified"
        shown.append(
            f'<div class="backup"><code>{esc(backup.location)}</code> '
            f"({backup.size} bytes, sha256 <code>{esc(backup.sha256[:16])}…</code>) — "
            f'<span class="ok">✔ {verified}</span> at step “{esc(record.name)}”</div>'
        )
    if not shown:
        return '<dt>backup used</dt><dd class="muted">none (this playbook takes none)</dd>'
    return f"<dt>backup used</dt><dd>{''.join(shown)}</dd>"


def _step_row(
    index: int,
    planned: dict[str, object],
    *,
    run: RunRecord,
    taken: StepRecord | None,
    end_of_run: float,
    esc: Escaper,
) -> str:
    name = str(planned.get("name", f"step {index + 1}"))
    flags = []
    if planned.get("destructive"):
        flags.append("destructive")
    if not planned.get("idempotent", True):
        flags.append("not idempotent")
    head = (
        f"<td>{index + 1}</td><td>{esc(name)}"
        f'<div class="muted small">{esc(", ".join(flags))}</div></td>'
    )
    if taken is None:
        state = "not run" if run.status != "running" else "waiting"
        return (
            f'<tr class="step step-pending" data-step="{esc(name)}" data-status="{state}">'
            f"{head}<td>{_badge('step-pending', state, esc)}</td><td>—</td><td>—</td>"
            f'<td class="muted small">{esc(planned.get("detail", ""))}</td></tr>'
        )
    running = taken.status == "claimed"
    took = end_of_run - taken.claimed_at if running else taken.duration
    return (
        f'<tr class="step step-{esc(taken.status)}" data-step="{esc(name)}" '
        f'data-status="{esc(taken.status)}">{head}'
        f"<td>{_badge(f'step-{taken.status}', 'running' if running else taken.status, esc)}</td>"
        f'<td><time datetime="{iso(taken.claimed_at)}">{iso(taken.claimed_at)[11:]}'
        f"</time></td><td>{esc(seconds(took))}{'…' if running else ''}</td>"
        f'<td class="small">{esc(_step_note(taken))}</td></tr>'
    )


def incident_view(
    detail: IncidentDetail,
    alerts: Sequence[Alert],
    config: Config,
    now: float,
    esc: Escaper,
) -> str:
    incident = detail.incident
    run = detail.run
    facts = []
    record = detail.record
    if record is not None:
        facts.append(f"<dt>trigger</dt><dd>{esc(record.trigger)}</dd>")
        if record.target_release:
            facts.append(f"<dt>target release</dt><dd>{esc(record.target_release)}</dd>")
        if record.details:
            facts.append(f"<dt>details</dt><dd>{esc(record.details)}</dd>")
    related = [a for a in alerts if a.incident == incident]
    if related:
        links = ", ".join(
            f'<a href="/console/alerts?all=1#alert-{a.id}">#{a.id} {esc(a.state.value)}</a>'
            for a in related
        )
        facts.append(f"<dt>alerts</dt><dd>{links}</dd>")
    head = f'<section class="view" data-view="incident" data-incident="{esc(incident)}">'
    if run is None:
        status = _badge("run-none", "no rollback run", esc)
        return (
            f"{head}<h1>Incident {esc(incident)}</h1><p>{status}</p>"
            f'<dl class="facts">{"".join(facts)}</dl></section>'
        )
    facts[:0] = [
        f"<dt>playbook</dt><dd>{esc(_playbook(run) or '—')}</dd>",
        f"<dt>started</dt><dd>{when(run.started_at, now, esc)}</dd>",
        f"<dt>ended</dt><dd>{when(run.ended_at, now, esc) if run.ended_at else 'not yet'}</dd>",
    ]
    facts.append(_downtime(run, config, now, esc))
    facts.append(_backups(detail.steps, esc))
    end_of_run = run.ended_at if run.ended_at is not None else now
    bars = []
    rows = []
    for index, planned in enumerate(_planned(run)):
        taken = detail.steps.get(index)
        name = str(planned.get("name", f"step {index + 1}"))
        if taken is None:
            bars.append(svg.Bar(name, None, None, "not run"))
        else:
            bars.append(svg.Bar(name, taken.claimed_at, taken.ended_at, taken.status))
        rows.append(_step_row(index, planned, run=run, taken=taken, end_of_run=end_of_run, esc=esc))
    chart = svg.timeline(bars, run.started_at, end_of_run, esc=esc) if bars else ""
    report = (
        f'<p class="links"><a class="report" href="/console/incidents/{esc(incident)}/report.md">'
        f"Markdown report</a> · JSON: <code>GET /api/v1/incidents/{esc(incident)}</code></p>"
    )
    reason = f'<p class="reason">{esc(run.reason)}</p>' if run.reason else ""
    return (
        f"{head}<h1>Incident {esc(incident)} {_badge(f'run-{run.status}', run.status, esc)}</h1>"
        f'{reason}<dl class="facts">{"".join(facts)}</dl>{report}'
        f'<h2>Timeline</h2><div class="chart">{chart}</div>'
        '<table class="steps"><thead><tr><th>#</th><th>step</th><th>status</th>'
        "<th>started (UTC)</th><th>took</th><th>note</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


# -- Releases ----------------------------------------------------------------------------------


def releases_blocking(source: StateSource) -> tuple[list[Release], Release | None]:
    store = StateStore.open(source)
    try:
        return store.releases(), store.rollback_target()
    finally:
        store.close()


def releases_view(
    releases: Sequence[Release],
    target: Release | None,
    known_good_after: float,
    now: float,
    esc: Escaper,
) -> str:
    newest = max(releases, key=lambda r: (r.first_seen, r.id), default=None)
    rows = []
    for release in sorted(releases, key=lambda r: (r.first_seen, r.id), reverse=True):
        marks = []
        if newest is not None and release.id == newest.id:
            marks.append(_badge("current", "current", esc))
        if release.known_good_at is not None:
            marks.append(_badge("known-good", "✔ known good", esc))
        if target is not None and release.id == target.id:
            marks.append(_badge("target", "rollback target", esc))
        rows.append(
            f'<tr data-release="{esc(release.version)}" '
            f'data-known-good="{"yes" if release.known_good_at is not None else "no"}">'
            f"<td><strong>{esc(release.version)}</strong></td><td>{' '.join(marks)}</td>"
            f"<td>{when(release.first_seen, now, esc)}</td>"
            f"<td>{when(release.healthy_since, now, esc)}</td>"
            f"<td>{when(release.known_good_at, now, esc)}</td>"
            f"<td>{esc(release.source)}</td></tr>"
        )
    table = (
        '<table class="releases"><thead><tr><th>release</th><th>marks</th><th>first seen</th>'
        "<th>healthy since</th><th>known good since</th><th>recorded by</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="empty">No releases recorded yet.</p>'
    )
    return (
        '<section class="view" data-view="releases"><h1>Releases</h1>'
        '<p class="summary">Newest first. A release healthy (every rule OK) for '
        f"{esc(format_duration(known_good_after))} "
        "becomes known good; a rollback returns to the newest known-good one.</p>"
        f"{table}</section>"
    )


__all__ = [
    "AlertItem",
    "IncidentDetail",
    "IncidentRow",
    "alert_items",
    "alerts_view",
    "banner",
    "incident_detail_blocking",
    "incident_rows_blocking",
    "incident_view",
    "incidents_view",
    "live_state",
    "now_view",
    "releases_blocking",
    "releases_view",
]
