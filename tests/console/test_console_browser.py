"""The on-call console in a real headless Chromium against ``spek-sentinel run`` on the rig: a
breach appears in the Alerts view without a reload and is acknowledged by a click (the API
says so too); a rollback's timeline shows each step while it runs and every step once it
ended; the browser's own session cookie is not enough to post without the CSRF token.

A screenshot of each view is saved under ``tests/console/artifacts/``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from console_rig import Site, launch_chromium, log_in, screenshot, site, wait_for

from spek_sentinel.rollback.journal import Journal

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

__all__ = ["site"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch_chromium()


def open_alert(site: Site, rule: str) -> dict[str, Any] | None:
    found = [a for a in site.alerts() if a["rules"] == [rule]]
    return found[0] if found else None


def test_a_breach_appears_live_and_is_acknowledged_by_a_click(site: Site, browser: Browser) -> None:
    site.start()
    page = log_in(browser, site)
    assert page.locator("header.top .who strong").inner_text() == "alice"

    # the Now view follows the values without a reload
    site.push("render_fps", 58)
    row = page.locator('tr.rule[data-rule="low_render_fps"]')
    row.locator("td.value", has_text="58 fps").wait_for()
    blind = page.locator('tr.rule.blind[data-rule="gpu_overheating"]')
    blind.wait_for()  # the Prometheus nobody runs: blind, and marked so
    assert "BLIND" in blind.inner_text()
    assert "Connection refused" in blind.inner_text()

    page.click('nav a[href="/console/alerts"]')
    page.wait_for_url(f"{site.url}/console/alerts")
    assert page.locator("article.alert", has_text="low_render_fps").count() == 0

    site.push("render_fps", 12)  # below 30 for 3 s: the evaluate rule fires and pages
    card = page.locator('article.alert[data-state="open"]', has_text="low_render_fps")
    card.wait_for(timeout=30_000)  # appeared by the page's own polling: no reload
    alert_id = int(card.get_attribute("data-alert") or "0")
    api = site.alert(alert_id)
    assert (api["state"], api["kind"], api["rules"]) == ("open", "breach", ["low_render_fps"])
    text = card.inner_text()
    assert "render_fps 12 vs threshold < 30" in text  # the evidence
    assert "development_team" in text and "level 1 of 2" in text  # escalation reached
    assert card.locator('button[value="rollback"]').is_visible()
    assert card.locator('button[value="dismiss"]').is_visible()
    screenshot(page, "alerts-open")

    card.locator('input[name="note"]').fill("looking at the GPU driver")
    card.locator('button[value="acknowledge"]').click()
    page.wait_for_url(re.compile(r"/console/alerts\?answered=\d+"))
    acked = page.locator(f"#alert-{alert_id}")
    assert acked.get_attribute("data-state") == "acknowledged"
    assert "by alice" in acked.inner_text()

    shown = site.alert(alert_id)
    assert (shown["state"], shown["acked_by"], shown["ack_note"]) == (
        "acknowledged",
        "alice",
        "looking at the GPU driver",
    )
    [action] = shown["actions"]
    assert (action["answer"], action["by"], action["source"]) == ("acknowledge", "alice", "console")

    def carried_out() -> bool:
        return site.alert(alert_id)["actions"][0]["applied_at"] is not None

    wait_for(carried_out, message="the daemon never carried out the console's answer")
    # the outcome reaches the open page by itself, too
    acked.locator("li", has_text="automatic rollbacks are no longer held").wait_for()
    screenshot(page, "alerts-acknowledged")

    check_now(page)
    check_releases(site, page)
    check_no_post_without_csrf(site, page, alert_id)
    page.context.close()


def check_now(page: Page) -> None:
    page.click('nav a[href="/console/now"]')
    firing = page.locator('tr.rule[data-rule="low_render_fps"][data-state="firing"]')
    firing.wait_for()
    assert firing.locator("svg.spark polyline, svg.spark circle").count() >= 1
    # blind rules come first, marked
    assert page.locator("tbody tr.rule").first.get_attribute("data-rule") == "gpu_overheating"
    assert "Blind probes" in page.locator("main").inner_text()
    screenshot(page, "now")


def check_releases(site: Site, page: Page) -> None:
    page.click('nav a[href="/console/releases"]')
    page.wait_for_url(f"{site.url}/console/releases")
    good = page.locator('tr[data-release="v1-good"]')
    assert good.get_attribute("data-known-good") == "yes"
    assert "known good" in good.inner_text() and "rollback target" in good.inner_text()
    bad = page.locator('tr[data-release="v2-bad"]')
    assert bad.get_attribute("data-known-good") == "no" and "current" in bad.inner_text()
    screenshot(page, "releases")


def check_no_post_without_csrf(site: Site, page: Page, alert_id: int) -> None:
    """The browser's own session cookie without the CSRF token: refused, nothing changes."""
    forged = page.request.post(
        f"{site.url}/console/alerts/{alert_id}/answer",
        form={"answer": "dismiss", "note": "csrf"},
        headers={"Origin": site.url},
        max_redirects=0,
    )
    assert forged.status == 403, forged.text()
    assert len(site.alert(alert_id)["actions"]) == 1


STEPS = [
    "document the incident",
    "pre-flight",
    "stop traffic",
    "application rollback",
    "restart",
    "verify",
]


def journal_steps(site: Site, incident: str) -> list[tuple[str, str]]:
    journal = Journal.in_dir(site.state)
    try:
        return [(s.name, s.status) for s in journal.steps(incident).values()]
    finally:
        journal.close()


def test_an_incident_timeline_shows_every_step_live(site: Site, browser: Browser) -> None:
    site.start()
    page = log_in(browser, site, name="bob")
    site.push("security_breach", reason="intrusion confirmed by secops")

    def rollback_alert() -> dict[str, Any] | None:
        found = [a for a in site.alerts() if a["kind"] == "rollback"]
        return found[0] if found else None

    incident = wait_for(rollback_alert, message="no rollback alert")["incident"]

    def held() -> bool:  # the rollback command waits for "go": the incident is running
        return ("application rollback", "claimed") in journal_steps(site, incident) and bool(
            site.lines("rollbacks.log")
        )

    wait_for(held, message="the rollback never reached its application step")
    banner = page.locator("#banner .callout.running")
    banner.wait_for()  # on the Now page, by polling
    banner.locator(f'a[href="/console/incidents/{incident}"]').click()
    page.wait_for_url(f"{site.url}/console/incidents/{incident}")

    rows = page.locator("table.steps tr.step")
    assert rows.count() == len(STEPS)  # every planned step, run or not yet
    running = page.locator('tr.step[data-step="application rollback"]')
    assert running.get_attribute("data-status") == "claimed"
    assert "running" in running.inner_text()
    assert page.locator('tr.step[data-step="verify"]').get_attribute("data-status") == "waiting"
    assert "so far" in page.locator("dl.facts").inner_text()  # downtime, still counting
    screenshot(page, "incident-running")

    (site.tmp / "go").touch()  # the rollback finishes; the page follows without a reload
    page.locator('tr.step[data-step="verify"][data-status="succeeded"]').wait_for(timeout=60_000)
    page.locator("h1 .badge.run-succeeded").wait_for()
    assert journal_steps(site, incident) == [(name, "succeeded") for name in STEPS]
    shown = [
        (row.get_attribute("data-step"), row.get_attribute("data-status")) for row in rows.all()
    ]
    assert shown == journal_steps(site, incident)
    for row in rows.all():  # each with its duration
        assert re.search(r"\d+(ms|s)", row.locator("td").nth(4).inner_text())
    facts = page.locator("dl.facts").inner_text()
    assert "within target" in facts and "budget 10m" in facts
    assert "none (this playbook takes none)" in facts  # no backup for a performance rollback
    assert page.locator("svg.timeline rect").count() == len(STEPS)
    screenshot(page, "incident-done")

    page.click("a.report")
    report = page.locator("body").inner_text()
    assert f"# Incident {incident}" in report and "application rollback" in report
    assert "Status: **succeeded**" in report

    page.goto(f"{site.url}/console/incidents")
    listed = page.locator(f'tr[data-incident="{incident}"]')
    assert "succeeded" in listed.inner_text()
    screenshot(page, "incidents")
    page.context.close()
