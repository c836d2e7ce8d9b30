"""The console's test rig: ``spek-sentinel run`` as a real process watching a command-backend
application (files under the test's directory), a pushed-signal probe, an evaluate rule, an
immediate rule with a playbook, a signal nobody ever pushes (the sentinel goes blind on it) and
a webhook pager receiver; plus a headless Chromium (Debian's, driven by Playwright) logged in
to the console.

Every screenshot goes to ``tests/console/artifacts/`` (ignored by git), named after the view."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from harness.daemon import DaemonProcess
from harness.http_receiver import HttpReceiver, Received
from harness.ports import free_port
from harness.wait import wait_until
from spek_sentinel.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

TOKEN = "console-test-api-token-5d1e0c7a9b"  # noqa: S105 -- test values
WEBHOOK_SECRET = "console-test-webhook-secret-88f2"  # noqa: S105
SECRETS = {"T_API_TOKEN": TOKEN, "T_WEBHOOK_SECRET": WEBHOOK_SECRET}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).parent / "artifacts"

TABLE = """
[sentinel]
state_dir = "{state}"
cooldown = "1h"
veto_window = "0s"

[api]
listen = "127.0.0.1:{port}"
token_env = "T_API_TOKEN"

[probes.client]
kind = "pushed"
interval = "1s"
signals.render_fps = {{ unit = "fps", measure = "value" }}
signals.security_breach = {{ unit = "count", measure = "event" }}

# a Prometheus nobody runs: every sample is an error, so the sentinel is blind on its signal
[probes.gpu_metrics]
kind = "prometheus"
url = "http://127.0.0.1:{dead}"
interval = "1s"
timeout = "1s"
signals.gpu_temperature = {{ unit = "count", query = "max(gpu_temperature_celsius)" }}

[probes.app]
kind = "http"
url = "{health}/healthz"
interval = "1s"
start_grace = "0s"
timeout = "2s"
signals.app_up = {{ unit = "bool", measure = "up" }}

[playbooks.performance]
scenario = "Scenario 4: performance degradation"
stop_first = true
application = "previous_release"

[[rules]]
name = "low_render_fps"
signal = "render_fps"
kind = "threshold"
severity = "evaluate"
below = 30
for = "3s"
playbook = "performance"

[[rules]]
name = "gpu_overheating"
signal = "gpu_temperature"
kind = "threshold"
severity = "evaluate"
above = 90
blind_after = "2s"

[[rules]]
name = "app_down"
signal = "app_up"
kind = "threshold"
severity = "evaluate"
below = 1
for = "30s"

[[rules]]
name = "security_breach"
signal = "security_breach"
kind = "event"
severity = "immediate"
playbook = "performance"

[rollback]
backup_dir = "{tmp}/backups"
incidents_dir = "{tmp}/incidents"
step_timeout = "60s"

[rollback.application]
kind = "command"
stop_command = ["sh", "-c", "echo stopped >> {tmp}/stops.log"]
rollback_command = ["sh", "{tmp}/rollback.sh", "{{release}}"]
start_command = ["sh", "-c", "echo running >> {tmp}/starts.log"]
current_release_command = ["cat", "{tmp}/app.release"]
target_exists_command = ["true"]

[pagers.relay]
type = "webhook"
url = "{relay}/page"
secret_env = "T_WEBHOOK_SECRET"

[escalation]
renotify_every = "0s"

[[escalation.levels]]
name = "development_team"
contacts = ["#spek-oncall"]
pagers = ["relay"]
after = "0s"

[[escalation.levels]]
name = "lead_developer"
contacts = ["Lead Developer"]
pagers = ["relay"]
after = "30m"

[notices]
pagers = ["relay"]
"""

# The rollback command: notes its start, holds until the test creates "go", then puts the
# release in place, so the test sees the console while the rollback runs.
ROLLBACK_SCRIPT = """\
echo "started $$" >> "{tmp}/rollbacks.log"
i=0  # wait for the test's "go", at most 60 s; without it the step fails
until [ -e "{tmp}/go" ] || [ "$i" -ge 600 ]; do sleep 0.1; i=$((i+1)); done
[ -e "{tmp}/go" ] || exit 3
echo "$1" > "{tmp}/app.release"
"""


class Site:
    """What the daemon watches and pages, its table, and the daemon itself."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.app = HttpReceiver()
        self.relay = HttpReceiver()
        self.port = free_port()
        self.config = tmp / "thresholds.toml"
        self.config.write_text(
            TABLE.format(
                state=self.state,
                port=self.port,
                tmp=tmp,
                health=self.app.url,
                relay=self.relay.url,
                dead=free_port(),
            ),
            encoding="utf-8",
        )
        (tmp / "app.release").write_text("v2-bad\n", encoding="utf-8")
        (tmp / "rollback.sh").write_text(ROLLBACK_SCRIPT.format(tmp=tmp), encoding="utf-8")
        self.state.mkdir()
        store = SqliteStore.in_dir(self.state)
        try:
            now = time.time()
            store.record_release("v1-good", now - 7200, "deploy")
            store.mark_healthy(now - 7200, True, 0)
            store.record_release("v2-bad", now - 600, "deploy")
        finally:
            store.close()
        self.daemon = DaemonProcess(self.config, self.port, SECRETS, tmp / "daemon.log")

    @property
    def url(self) -> str:
        return self.daemon.url

    def start(self) -> Site:
        self.daemon.start()
        return self

    def push(self, name: str, value: float | None = None, reason: str = "client report") -> None:
        body: dict[str, Any] = {"name": name, "reason": reason, "by": "browser"}
        if value is not None:
            body["value"] = value
        pushed = self.daemon.post("/api/v1/signals", headers=AUTH, json=body)
        assert pushed.status_code == 201, pushed.text

    def alerts(self, *, include_resolved: bool = False) -> list[dict[str, Any]]:
        answer = self.daemon.get("/api/v1/alerts", params={"all": "1" if include_resolved else "0"})
        assert answer.status_code == 200
        listed: list[dict[str, Any]] = answer.json()["alerts"]
        return listed

    def alert(self, ref: int | str) -> dict[str, Any]:
        answer = self.daemon.get(f"/api/v1/alerts/{ref}")
        assert answer.status_code == 200, answer.text
        shown: dict[str, Any] = answer.json()
        return shown

    def pages(self) -> list[Received]:
        return [r for r in self.relay.received if r.path == "/page"]

    def lines(self, name: str) -> list[str]:
        path = self.tmp / name
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    def login(self, client: httpx.Client, name: str = "alice") -> None:
        """Log an HTTP client in as a browser would (Origin of this host)."""
        answer = client.post(
            f"{self.url}/console/login",
            data={"name": name, "token": TOKEN, "next": "/console/now"},
            headers={"Origin": self.url},
        )
        assert answer.status_code == 303, answer.text
        assert "spek_console" in client.cookies

    def close(self) -> None:
        self.daemon.close()
        self.app.close()
        self.relay.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = Site(tmp_path)
    try:
        yield made
    finally:
        made.close()


def launch_chromium() -> Iterator[Browser]:
    """Debian's chromium under Playwright. Missing either is a failure saying what to install,
    never a skip; Playwright never downloads a browser of its own here."""
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415 -- a clear failure
    except ImportError:
        pytest.fail(
            "the Python package `playwright` is missing: install the test extras "
            "(pip install -e '.[test]'; ./dev test does)",
            pytrace=False,
        )
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail(
            f"{CHROMIUM} not found: install the Debian package `chromium` "
            "(apt-get install chromium; ./dev test does)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=CHROMIUM_ARGS,
            headless=True,
        )
        try:
            yield browser
        finally:
            browser.close()


def log_in(browser: Browser, site: Site, name: str = "alice") -> Page:
    """A fresh browser context: open a console page, get sent to the login page, log in."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.on("console", lambda message: print(f"[browser {message.type}] {message.text}"))
    page.goto(f"{site.url}/console/now")
    assert "/console/login" in page.url
    page.fill("#name", name)
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}/console/now")
    return page


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}", file=sys.stderr)
    return path


def wait_for(predicate: Any, timeout: float = 30, message: str = "condition not met") -> Any:
    return wait_until(predicate, timeout=timeout, interval=0.2, message=message)
