"""`spek-sentinel check`: every probe once, concurrently, then a one-shot judgement."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from spek_sentinel.config import Config
from spek_sentinel.domain.samples import Sample
from spek_sentinel.engine.snapshot import RuleCheck, exit_code, judge_all
from spek_sentinel.probes.collect import observe_all
from spek_sentinel.probes.registry import build_probes


@dataclass(frozen=True, slots=True)
class CheckReport:
    samples: dict[str, list[Sample]]
    checks: list[RuleCheck]
    exit_code: int


def run_check(config: Config, environ: Mapping[str, str]) -> CheckReport:
    probes = build_probes(config, environ)
    samples: dict[str, list[Sample]] = {}
    for sample in asyncio.run(observe_all(probes)):
        samples.setdefault(sample.signal, []).append(sample)
    checks = judge_all(config.rules, samples)
    return CheckReport(samples, checks, exit_code(checks))
