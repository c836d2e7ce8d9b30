"""Throughput of the pure engine + policy (``Sentinel.observe``) for 10, 100 and 1,000 rules.

Run from the project root:

    .venv/bin/python bench/engine.py            # full run (a few minutes at most)
    .venv/bin/python bench/engine.py --quick    # short run, to check it works
    .venv/bin/python bench/engine.py --profile  # plus a cProfile of one 1,000-rule pass

What is measured: samples per second through ``Sentinel.observe`` on one core, steady state.
Each rule watches its own signal; samples arrive round-robin over the signals, one per signal
every 15 s of simulated time. The rule mix follows thresholds.toml: mostly ratio thresholds
like the runbook's error-rate rule (``for`` 5m, ``min_samples``, hysteresis, ``min_volume``),
plus a "below" availability threshold, relative-baseline, trend and event rules. Values stay
OK most of the time but each signal has short blips (PENDING then OK), a sustained breach
(PENDING -> FIRING -> HOLD -> RESOLVED -> OK), quiet periods under ``min_volume`` and the odd
probe error, so the state machines and the policy make real transitions and decisions.

Method: all samples are built before timing. Each (rule count, repetition) gets a fresh
Sentinel, which is first fed an untimed warm-up (long enough to fill the 30 m trend windows and
the relative baselines), then the timed samples. Rule counts are interleaved within each
repetition (order rotated between repetitions), so slow drift on a shared machine affects them
alike; the ratios of rates measured side by side within a repetition are the figure to trust.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import math
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from spek_sentinel.domain.rules import (
    Baseline,
    Event,
    Relative,
    Rule,
    Severity,
    Threshold,
    Trend,
)
from spek_sentinel.domain.samples import Sample
from spek_sentinel.domain.settings import PolicySettings
from spek_sentinel.engine.sentinel import Sentinel

TARGET_AT_1000 = 200_000  # samples/s at 1,000 rules: the project's aim
RULE_COUNTS = (10, 100, 1000)
INTERVAL = 15.0  # seconds between two samples of one signal
CYCLE = 480  # rounds (2 h of simulated time) after which a signal's pattern repeats
WARMUP_ROUNDS = 130  # 32.5 min: fills the 30 m trend window and the 20-sample baselines
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PROBE_ERROR_RATE = 0.002
QUIET_RATE = 0.02  # share of ratio samples with traffic under min_volume


# -- rules ------------------------------------------------------------------------------------


def make_rule(index: int) -> Rule:
    """Rule ``index`` of the mix; slots 0-5 ratio thresholds, 6 availability, 7 relative,
    8 trend, 9 event (so every 10 rules hold the same mix)."""
    signal = f"sig{index:04d}"
    name = f"rule{index:04d}"
    slot = index % 10
    if slot <= 3:  # the runbook's error-rate rule
        return Rule(
            name=name,
            signal=signal,
            severity=Severity.IMMEDIATE,
            condition=Threshold(">", 0.05, clear=0.04, min_volume=100),
            for_=300,
            keep_firing_for=120,
            min_samples=5,
            playbook="high_error_rate",
        )
    if slot == 4:  # websocket failures
        return Rule(
            name=name,
            signal=signal,
            severity=Severity.EVALUATE,
            condition=Threshold(">", 0.10, clear=0.08),
            for_=300,
            min_samples=5,
            playbook="high_error_rate",
        )
    if slot == 5:  # agent failures
        return Rule(
            name=name,
            signal=signal,
            severity=Severity.EVALUATE,
            condition=Threshold(">", 0.20, clear=0.15, min_volume=10),
            for_=300,
            min_samples=5,
            playbook="high_error_rate",
        )
    if slot == 6:  # app won't start
        return Rule(
            name=name,
            signal=signal,
            severity=Severity.IMMEDIATE,
            condition=Threshold("<", 1.0),
            for_=60,
            min_samples=3,
            playbook="high_error_rate",
        )
    if slot == 7:  # slow responses against a rolling baseline
        return Rule(
            name=name,
            signal=signal,
            severity=Severity.EVALUATE,
            condition=Relative(
                0.5,
                Baseline("rolling_median", window=3600, min_samples=20),
                clear_increase=0.25,
            ),
            for_=300,
            min_samples=5,
            playbook="performance_degradation",
        )
    if slot == 8:  # memory leak
        return Rule(
            name=name,
            signal=signal,
            severity=Severity.EVALUATE,
            condition=Trend(window=1800, min_growth=0.2, min_rising=0.7, warmup=600),
            keep_firing_for=600,
            playbook="performance_degradation",
        )
    return Rule(  # confirmed event; every other one needs two samples, like integrity checks
        name=name,
        signal=signal,
        severity=Severity.IMMEDIATE,
        condition=Event(),
        min_samples=2 if index % 20 == 19 else 1,
        playbook="data_corruption",
    )


# -- values -----------------------------------------------------------------------------------

_RATIO = {0: (0.05, 0.04, 100.0), 4: (0.10, 0.08, None), 5: (0.20, 0.15, 10.0)}


def value_for(slot: int, pos: int, rng: random.Random) -> tuple[float, float | None]:
    """(value, volume) of a signal of ``slot`` at position ``pos`` of its cycle."""
    if slot <= 5:
        limit, clear, min_volume = _RATIO[0 if slot <= 3 else slot]
        if pos < 3 or 300 <= pos < 303:  # blip: PENDING, then cleared before the window
            value = limit * 1.5
        elif 100 <= pos < 130:  # sustained: FIRING after 5 min
            value = limit * 1.6
        elif 130 <= pos < 136:  # inside the hysteresis band: HOLD keeps it FIRING
            value = (limit + clear) / 2
        else:
            value = max(0.0, limit * 0.2 * (1 + 0.3 * rng.gauss(0, 1)))
        volume = 400.0 + 50 * rng.random()
        if min_volume is not None and rng.random() < QUIET_RATE:
            volume = min_volume * 0.3  # too little traffic to judge
        return value, volume
    if slot == 6:
        return (0.0 if pos < 2 or 200 <= pos < 210 else 1.0), None
    if slot == 7:
        if 150 <= pos < 180:
            return 0.2 * 1.8, None
        if 180 <= pos < 184:
            return 0.2 * 1.35, None  # between clear (+25%) and breach (+50%)
        return 0.2 * (1 + 0.05 * rng.gauss(0, 1)), None
    if slot == 8:
        if 240 <= pos < 400:  # leak: +0.3% per sample, then a restart drops it back
            return 5e8 * (1 + 0.003 * (pos - 240) + 0.0005 * rng.gauss(0, 1)), None
        return 5e8 * (1 + 0.002 * rng.gauss(0, 1)), None
    return (1.0 if 50 <= pos < 52 else 0.0), None


@dataclass(frozen=True)
class Workload:
    rules: tuple[Rule, ...]
    warmup: tuple[Sample, ...]
    timed: tuple[Sample, ...]


def build_workload(count: int, timed_samples: int, seed: int) -> Workload:
    rng = random.Random(seed * 1_000_003 + count)  # noqa: S311 - a benchmark, not crypto
    rules = tuple(make_rule(i) for i in range(count))
    phases = [rng.randrange(CYCLE) for _ in range(count)]
    timed_rounds = math.ceil(timed_samples / count)
    samples: list[Sample] = []
    step = INTERVAL / count
    for r in range(WARMUP_ROUNDS + timed_rounds):
        base = START + r * INTERVAL
        for i, rule in enumerate(rules):
            at = base + i * step
            if rng.random() < PROBE_ERROR_RATE:
                samples.append(Sample(rule.signal, at, error="probe timed out"))
                continue
            value, volume = value_for(i % 10, (r + phases[i]) % CYCLE, rng)
            samples.append(Sample(rule.signal, at, value, volume=volume))
    warm = WARMUP_ROUNDS * count
    return Workload(rules, tuple(samples[:warm]), tuple(samples[warm : warm + timed_samples]))


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    samples: int
    decisions: Counter[str]

    @property
    def rate(self) -> float:
        return self.samples / self.seconds


def fresh_sentinel(work: Workload) -> Sentinel:
    sentinel = Sentinel(work.rules, PolicySettings())
    observe = sentinel.observe
    for sample in work.warmup:
        observe(sample)
    return sentinel


def timed_pass(sentinel: Sentinel, samples: Sequence[Sample]) -> Run:
    observe = sentinel.observe
    tally: Counter[str] = Counter()
    gc.collect()
    clock = time.perf_counter
    start = clock()
    for sample in samples:
        decisions = observe(sample)
        if decisions:
            for decision in decisions:
                kind = getattr(decision, "kind", None)
                tally[decision.action.value if kind is None else f"page:{kind.value}"] += 1
    seconds = clock() - start
    return Run(seconds, len(samples), tally)


def pin(cpu: int | None) -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity on this platform)"
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return f"pinned to CPU {chosen} (allowed before pinning: {allowed})"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_version() -> str:
    """The commit measured, and which engine/domain files differ from it (figures depend on it)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "src/spek_sentinel"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    dirty = sorted(line[3:] for line in changed if line.strip())
    return f"{head}" + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else "")


def describe_machine(pinning: str) -> None:
    print(f"python   {sys.version.split()[0]} ({platform.python_implementation()})")
    print(f"machine  {platform.system()} {platform.machine()}, {cpu_model()}")
    print(f"nproc    {os.cpu_count()}; {pinning}")
    print(f"source   {source_version()}")


def show_decisions(counts: dict[int, Counter[str]], samples: dict[int, int]) -> None:
    kinds = sorted({kind for tally in counts.values() for kind in tally})
    print("\ndecisions per timed pass (identical in every repetition: the engine is deterministic)")
    header = f"{'rules':>6} {'samples':>9} {'total':>7} {'per 1k':>7}  " + "  ".join(
        f"{k:>13}" for k in kinds
    )
    print(header)
    for count, tally in counts.items():
        total = sum(tally.values())
        cells = "  ".join(f"{tally.get(k, 0):>13}" for k in kinds)
        print(
            f"{count:>6} {samples[count]:>9} {total:>7} {1000 * total / samples[count]:>7.2f}  "
            f"{cells}"
        )


def show_rates(runs: dict[int, list[Run]]) -> None:
    print("\nabsolute throughput (samples/s through Sentinel.observe)")
    print(f"{'rules':>6} {'best':>10} {'median':>10} {'worst':>10} {'us/sample':>10}")
    for count, series in runs.items():
        rates = [run.rate for run in series]
        best, median = max(rates), statistics.median(rates)
        print(
            f"{count:>6} {best:>10,.0f} {median:>10,.0f} {min(rates):>10,.0f} {1e6 / median:>10.2f}"
        )


def show_ratios(runs: dict[int, list[Run]], reference: int) -> None:
    print(f"\nratio of samples/s to {reference} rules, measured side by side in each repetition")
    print("(1.00 = flat per-sample cost; below 1 = each sample costs more with more rules)")
    print(f"{'rules':>6} {'median':>8} {'min':>8} {'max':>8} {'best/best':>10}  per repetition")
    ref = runs[reference]
    best_ref = max(run.rate for run in ref)
    for count, series in runs.items():
        ratios = [run.rate / base.rate for run, base in zip(series, ref, strict=True)]
        best = max(run.rate for run in series) / best_ref
        cells = " ".join(f"{r:.2f}" for r in ratios)
        print(
            f"{count:>6} {statistics.median(ratios):>8.2f} {min(ratios):>8.2f} "
            f"{max(ratios):>8.2f} {best:>10.2f}  {cells}"
        )


def profile_pass(work: Workload, top: int) -> None:
    sentinel = fresh_sentinel(work)
    profiler = cProfile.Profile()
    profiler.enable()
    timed_pass(sentinel, work.timed)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    print(f"\ncProfile of one pass at {len(work.rules)} rules, by own time (tottime)")
    print(out.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run: fewer samples, repeats")
    parser.add_argument("--repeats", type=int, help="timed passes per rule count (default 7)")
    parser.add_argument("--samples", type=int, help="timed samples per pass (default 200,000)")
    parser.add_argument("--rules", type=int, nargs="+", default=list(RULE_COUNTS))
    parser.add_argument("--cpu", type=int, help="CPU to pin to (default: last allowed CPU)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--profile", action="store_true", help="also cProfile one pass at the largest rule count"
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    timed_samples = args.samples or (20_000 if args.quick else 200_000)
    counts = sorted(set(args.rules))

    describe_machine(pin(args.cpu))
    print(
        f"workload {timed_samples:,} timed samples per pass after {WARMUP_ROUNDS} untimed "
        f"warm-up rounds; {repeats} repetitions, rule counts {counts} interleaved"
    )

    workloads = {count: build_workload(count, timed_samples, args.seed) for count in counts}
    gc.collect()
    gc.freeze()  # the pre-built samples are permanent: keep them out of the collector's scans

    runs: dict[int, list[Run]] = {count: [] for count in counts}
    for rep in range(repeats):
        order = counts[rep % len(counts) :] + counts[: rep % len(counts)]
        for count in order:
            sentinel = fresh_sentinel(workloads[count])
            runs[count].append(timed_pass(sentinel, workloads[count].timed))
        line = "  ".join(f"{c}: {runs[c][-1].rate:>9,.0f}/s" for c in counts)
        print(f"repetition {rep + 1}/{repeats}  {line}", flush=True)

    show_decisions(
        {c: runs[c][0].decisions for c in counts}, {c: runs[c][0].samples for c in counts}
    )
    show_rates(runs)
    show_ratios(runs, counts[0])

    if 1000 in runs:
        median = statistics.median(run.rate for run in runs[1000])
        verdict = "meets" if median >= TARGET_AT_1000 else "MISSES"
        print(
            f"\naim: >= {TARGET_AT_1000:,} samples/s at 1,000 rules; median {median:,.0f} "
            f"{verdict} it ({median / TARGET_AT_1000:.2f}x)"
        )
    if args.profile:
        profile_pass(workloads[counts[-1]], top=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
