"""Phase 5, "Verify Rollback", and the post-rollback validation table, from the probes.

Every ``measure = "up"`` signal of the table (health URL answers, database accepts queries,
Redis answers PING, the container runs) must read 1, and every ``[validation]`` check must be
within its limit (error rate < 1%, API < 200 ms, memory < 100 MB, queries < 50 ms). A signal
that cannot be read fails verification: an unverified rollback is not a finished one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from spek_sentinel.config import Config
from spek_sentinel.domain.rules import Rule, Severity, Threshold
from spek_sentinel.domain.samples import Sample
from spek_sentinel.engine.snapshot import Status, judge_now
from spek_sentinel.probes.collect import observe_all
from spek_sentinel.probes.registry import build_probes


@dataclass(frozen=True, slots=True)
class VerifyCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    checks: tuple[VerifyCheck, ...]
    attempts: int

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def failures(self) -> list[VerifyCheck]:
        return [check for check in self.checks if not check.passed]


def verification_rules(config: Config) -> list[Rule]:
    """``up`` signals as "must be 1" rules, then the post-rollback validation checks."""
    rules = [
        Rule(
            name=f"{signal} is up",
            signal=signal,
            severity=Severity.IMMEDIATE,
            condition=Threshold("<", 1),
            probe=probe_name,
        )
        for probe_name, probe in config.model.probes.items()
        for signal, spec in probe.signals.items()
        if spec.measure == "up"
    ]
    return rules + [rule for rule in config.rules if rule.phase == "post_rollback"]


def judge_verification(rules: list[Rule], samples: Mapping[str, Sample]) -> list[VerifyCheck]:
    checks = []
    for rule in rules:
        result = judge_now(rule, samples.get(rule.signal))
        passed = result.status is Status.OK
        checks.append(VerifyCheck(rule.description or rule.name, passed, result.detail))
    return checks


async def verify_until(
    config: Config,
    environ: Mapping[str, str],
    timeout: float,
    interval: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> VerifyReport:
    """Probe and judge until everything passes or ``timeout`` runs out (a restarted app needs a
    moment); the last report says what still fails."""
    rules = verification_rules(config)
    deadline = clock() + timeout
    attempts = 0
    while True:
        attempts += 1
        samples = await observe_all(build_probes(config, environ))
        report = VerifyReport(
            tuple(judge_verification(rules, {s.signal: s for s in samples})), attempts
        )
        if report.passed or clock() + interval > deadline:
            return report
        await asyncio.sleep(interval)
