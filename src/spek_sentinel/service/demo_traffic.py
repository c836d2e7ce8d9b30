"""Users of the sample app while ``spek-sentinel demo`` runs, and the app's own count of its
5xx answers from its ``/metrics``, shown beside what the sentinel judges."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import deque

import httpx
from prometheus_client.parser import text_string_to_metric_families


class Traffic:
    """Users of the app: creating and reading tasks, about 15 requests a second."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: deque[tuple[float, bool]] = deque(maxlen=20_000)  # (when, served)
        self._rng = random.Random(7)  # noqa: S311 - a varied, repeatable mix, not a secret

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0, trust_env=False) as client:
            while True:
                pick = self._rng.random()
                try:
                    if pick < 0.4:
                        kind = self._rng.choice(("review", "build", "deploy", "test"))
                        answer = await client.post("/api/tasks", json={"kind": kind})
                    elif pick < 0.8:
                        answer = await client.get("/api/tasks", params={"limit": 5})
                    else:
                        answer = await client.get("/api/agents")
                    served = answer.status_code < 500
                except httpx.HTTPError:
                    served = False
                self.answers.append((time.time(), served))
                await asyncio.sleep(self._rng.uniform(0.03, 0.1))

    def since(self, start: float) -> tuple[int, int]:
        """(requests, failed) since ``start``."""
        recent = [served for at, served in self.answers if at >= start]
        return len(recent), recent.count(False)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time between two served requests in [start, end]: what users saw."""
        served = [at for at, ok in self.answers if ok and start <= at <= end]
        points = [start, *served, end]
        return max((b - a for a, b in itertools.pairwise(points)), default=0.0)


async def app_errors(url: str) -> str:
    """The app's own count of 5xx answers since it started, read from its /metrics."""
    try:
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
            answer = await client.get(f"{url}/metrics")
        families = text_string_to_metric_families(answer.text)
        total = errors = 0.0
        for family in families:
            for found in family.samples:
                if found.name == "http_requests_total":
                    total += found.value
                    errors += found.value if found.labels.get("status", "").startswith("5") else 0
    except (httpx.HTTPError, ValueError):
        return " | app /metrics: no answer"
    share = f"{errors / total:.0%}" if total else "-"
    return f" | app /metrics: {errors:.0f} of {total:.0f} answered 5xx ({share})"
