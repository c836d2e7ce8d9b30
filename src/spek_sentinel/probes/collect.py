"""Run probes once, all at once, and close them: what `check` and rollback verification do."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from spek_sentinel.domain.samples import Sample
from spek_sentinel.probes.base import Probe, observe


async def observe_all(probes: Sequence[Probe]) -> list[Sample]:
    try:
        batches = await asyncio.gather(*(observe(probe) for probe in probes))
    finally:
        await asyncio.gather(*(probe.aclose() for probe in probes), return_exceptions=True)
    return [sample for batch in batches for sample in batch]
