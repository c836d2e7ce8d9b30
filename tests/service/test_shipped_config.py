"""`spek-sentinel run` with the table the project ships (thresholds.toml), its secrets given as
the README says: every endpoint answers. The platform itself is not there, so its probes
report errors (blind, never a breach), which is what a sentinel started before its platform
sees."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from harness.daemon import DaemonProcess
from harness.ports import free_port
from harness.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
FAILING = re.compile(r'^spek_sentinel_probe_errors_total\{probe="([^"]+)"\} (\S+)$', re.MULTILINE)


def test_run_with_the_shipped_table_serves_every_endpoint(tmp_path: Path) -> None:
    table = tmp_path / "thresholds.toml"
    shutil.copy(REPO / "thresholds.toml", table)
    port = free_port()
    environ = {
        # where this test may write, instead of /var/lib/spek-sentinel (environment overrides)
        "SPEK_SENTINEL_SENTINEL__STATE_DIR": f'"{tmp_path / "state"}"',
        "SPEK_SENTINEL_ROLLBACK__BACKUP_DIR": f'"{tmp_path / "backups"}"',
        "SPEK_SENTINEL_ROLLBACK__INCIDENTS_DIR": f'"{tmp_path / "incidents"}"',
        "SPEK_SENTINEL_API__LISTEN": f'"127.0.0.1:{port}"',
        # the secrets the shipped table names
        "SPEK_DB_DSN": f"postgresql://spek_user@127.0.0.1:{free_port()}/spek_db",
        "SPEK_PAGERDUTY_ROUTING_KEY": "R0UTING0KEY0FOR0TESTS000000000000",
        "SPEK_SLACK_WEBHOOK_URL": "http://127.0.0.1:9/services/T0/B0/X",
        "SPEK_WEBHOOK_SECRET": "shipped-table-test-webhook-secret",
        "SPEK_PAGERDUTY_WEBHOOK_SECRET": "shipped-table-test-pd-secret",
        "SPEK_SLACK_SIGNING_SECRET": "shipped-table-test-slack-secret",
    }
    daemon = DaemonProcess(table, port, environ, tmp_path / "daemon.log")
    daemon.start(timeout=60)
    try:
        assert daemon.get("/healthz").json() == {"status": "alive"}
        ready = daemon.get("/readyz").json()
        assert ready["ready"] is True and ready["leader"] is True
        rules = daemon.get("/api/v1/rules").json()
        names = {rule["rule"] for rule in rules["rules"]}
        assert {"high_error_rate", "data_corruption", "security_breach"} <= names
        assert rules["incident"] is None  # nothing seen is nothing decided
        for path in (
            "/api/v1/alerts",
            "/api/v1/incidents",
            "/api/v1/releases",
            "/api/v1/signals",
        ):
            response = daemon.get(path)
            assert response.status_code == 200, (path, response.text)
        metrics = daemon.get("/metrics").text
        assert 'spek_sentinel_rule_state{rule="high_error_rate",state="ok"}' in metrics

        # the platform is absent: probes fail and say so; no rule breaches on it
        def failing_probes() -> set[str]:
            text = daemon.get("/metrics").text
            return {name for name, count in FAILING.findall(text) if float(count) > 0}

        assert "database" in wait_until(failing_probes, timeout=30)
        assert not [
            a for a in daemon.get("/api/v1/alerts").json()["alerts"] if a["kind"] == "breach"
        ]
        # mutations are refused without the API token the shipped table leaves unset (fail closed)
        refused = daemon.post("/api/v1/signals", json={"name": "security_breach", "reason": "x"})
        assert refused.status_code == 401
    finally:
        daemon.kill()
