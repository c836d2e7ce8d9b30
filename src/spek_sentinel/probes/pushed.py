"""Signals that a human or another system confirms (`spek-sentinel signal`, the API).

An ``event`` signal reads 1 while an unresolved push exists and 0 otherwise, so "data
corruption confirmed" survives a restart until someone resolves it. A ``value`` signal (such as
client-reported FPS) reads the newest unresolved value, or no data once it is older than
``stale_after``: a client that stopped reporting is not a client at 60 FPS.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from spek_sentinel.config.probes import PushedProbe
from spek_sentinel.store.base import SignalStore
from spek_sentinel.store.open import StateLocation
from spek_sentinel.store.records import StateStore


@dataclass(slots=True)
class PushedSignalsProbe:
    name: str
    interval: float
    timeout: float
    store: SignalStore
    measures: dict[str, str]
    stale_after: float
    clock: Callable[[], float] = field(default=time.time)

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(self.measures)

    def _read(self) -> dict[str, float | None]:
        pushed = self.store.current(list(self.measures))
        now = self.clock()
        readings: dict[str, float | None] = {}
        for signal, measure in self.measures.items():
            latest = pushed.get(signal)
            if measure == "event":
                readings[signal] = 1.0 if latest is not None and latest.value > 0 else 0.0
            elif latest is None or now - latest.at > self.stale_after:
                readings[signal] = None
            else:
                readings[signal] = latest.value
        return readings

    async def collect(self) -> Mapping[str, float | None]:
        return await asyncio.to_thread(self._read)

    async def aclose(self) -> None:
        self.store.close()


def build(
    name: str, model: PushedProbe, interval: float, state: StateLocation
) -> PushedSignalsProbe:
    measures = {signal: spec.measure or "value" for signal, spec in model.signals.items()}
    return PushedSignalsProbe(
        name=name,
        interval=interval,
        timeout=model.timeout,
        store=StateStore.open(state),
        measures=measures,
        stale_after=model.stale_after,
    )
