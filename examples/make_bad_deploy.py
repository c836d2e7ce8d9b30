"""Writes examples/bad-deploy.jsonl: a bad release recorded as probe samples.

02:00-03:00 release v1.4.0 runs healthy. At 03:00 v1.5.0 goes out: the error rate climbs to
about 9% and p95 latency roughly doubles; one Prometheus query times out on the way. At 03:08
the previous release is back (what spek-sentinel's rollback does) and the signals recover.

    python examples/make_bad_deploy.py > examples/bad-deploy.jsonl
"""

from __future__ import annotations

import json
import random
import sys
from datetime import UTC, datetime

START = datetime(2026, 11, 25, 2, 0, tzinfo=UTC).timestamp()
BAD_RELEASE = START + 3600
RECOVERED = BAD_RELEASE + 8 * 60
END = BAD_RELEASE + 30 * 60
STEP = 15


def rows(rng: random.Random) -> list[dict[str, object]]:
    out: list[dict[str, object]] = [{"ts": START, "release": "v1.4.0"}]
    t = START
    while t <= END:
        bad = BAD_RELEASE <= t < RECOVERED
        if t == RECOVERED:
            out.append({"ts": t, "release": "v1.4.0"})
        if t == BAD_RELEASE:
            out.append({"ts": t, "release": "v1.5.0"})
        requests = rng.randint(900, 1100)
        error_rate = rng.uniform(0.07, 0.11) if bad else rng.uniform(0.001, 0.006)
        if t == BAD_RELEASE + 150:
            out.append({"ts": t, "signal": "error_rate", "error": "prometheus: query timed out"})
        else:
            out.append(
                {"ts": t, "signal": "error_rate", "value": round(error_rate, 4), "volume": requests}
            )
        latency = rng.uniform(0.26, 0.34) if bad else rng.uniform(0.11, 0.14)
        out.append({"ts": t, "signal": "latency_p95", "value": round(latency, 4)})
        out.append({"ts": t, "signal": "api_latency_p95", "value": round(latency * 0.8, 4)})
        out.append({"ts": t, "signal": "memory_bytes", "value": rng.randint(70, 74) * 10**6})
        out.append({"ts": t, "signal": "app_up", "value": 1})
        out.append({"ts": t, "signal": "db_up", "value": 1})
        query_seconds = round(rng.uniform(0.004, 0.012), 4)
        out.append({"ts": t, "signal": "db_query_seconds", "value": query_seconds})
        out.append({"ts": t, "signal": "integrity_violations", "value": 0})
        for event in ("data_corruption", "security_breach", "migration_failed"):
            out.append({"ts": t, "signal": event, "value": 0})
        ws_failures = rng.uniform(0.01, 0.03)
        out.append({"ts": t, "signal": "websocket_failure_ratio", "value": round(ws_failures, 4)})
        agents = rng.randint(20, 40)
        agent_failures = rng.uniform(0.0, 0.1)
        out.append(
            {
                "ts": t,
                "signal": "agent_failure_ratio",
                "value": round(agent_failures, 3),
                "volume": agents,
            }
        )
        out.append({"ts": t, "signal": "render_fps", "value": rng.randint(52, 60)})
        t += STEP
    return out


def main() -> None:
    for row in rows(random.Random(7)):  # noqa: S311 -- reproducible example data, no secrets
        sys.stdout.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
