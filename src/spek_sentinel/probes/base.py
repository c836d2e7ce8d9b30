"""The probe contract and the one wrapper every probe runs through.

A probe's ``collect`` returns a value (or None for no data) per declared signal, or
``Failed(error)`` for a signal it could not read while its other signals still report. It may
raise: ``observe`` turns a timeout or any exception into error samples for every signal the
probe declares, so a broken probe shows up as UNKNOWN and never stops the scheduler.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from spek_sentinel.domain.errors import ProbeError
from spek_sentinel.domain.samples import Sample
from spek_sentinel.secrets import redact

__all__ = ["Failed", "Probe", "Reading", "Split", "observe", "redact"]


@dataclass(frozen=True, slots=True)
class Reading:
    """What a probe saw for one signal: a number, None (no data), and the traffic behind it."""

    value: float | None
    volume: float | None = None


@dataclass(frozen=True, slots=True)
class Split:
    """A signal split by a label: a value (or None) per series. No series at all is no data
    for the whole signal."""

    values: Mapping[str, float | None]


@dataclass(frozen=True, slots=True)
class Failed:
    """One signal could not be read (the reason, without credentials); the others still report."""

    error: str


class Probe(Protocol):
    """One source of samples, built from a ``[probes.NAME]`` section."""

    @property
    def name(self) -> str: ...

    @property
    def interval(self) -> float: ...

    @property
    def timeout(self) -> float: ...

    @property
    def signals(self) -> tuple[str, ...]: ...

    async def collect(self) -> Mapping[str, Reading | Split | Failed | float | None]:
        """Read every signal once. Missing signals count as no data."""
        ...

    async def aclose(self) -> None:
        """Release connections and clients."""
        ...


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ProbeError):
        return str(exc)
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


async def observe(
    probe: Probe,
    clock: Callable[[], float] = time.time,
    secrets: Iterable[str] = (),
) -> list[Sample]:
    """Run one collection under the probe's timeout. Never raises (except cancellation)."""
    at = clock()
    try:
        readings = await asyncio.wait_for(probe.collect(), probe.timeout)
    except TimeoutError:
        error = f"probe {probe.name}: timed out after {probe.timeout:g}s"
        return [Sample(signal, at, error=error) for signal in probe.signals]
    except Exception as exc:  # every failure is data: an error sample, never a crash
        error = redact(f"probe {probe.name}: {_describe(exc)}", secrets)
        return [Sample(signal, at, error=error) for signal in probe.signals]
    samples = []
    for signal in probe.signals:
        reading = readings.get(signal)
        if isinstance(reading, Reading):
            samples.append(Sample(signal, at, value=reading.value, volume=reading.volume))
        elif isinstance(reading, Split):
            if not reading.values:
                samples.append(Sample(signal, at, value=None))
            samples.extend(
                Sample(signal, at, value=value, series=series)
                for series, value in sorted(reading.values.items())
            )
        elif isinstance(reading, Failed):
            error = redact(f"probe {probe.name}: {reading.error}", secrets)
            samples.append(Sample(signal, at, error=error))
        else:
            samples.append(Sample(signal, at, value=reading))
    return samples
