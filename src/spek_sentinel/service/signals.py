"""Recording a pushed signal: the one path the CLI and the HTTP API share."""

from __future__ import annotations

from dataclasses import dataclass

from spek_sentinel.config import Config
from spek_sentinel.domain.errors import InputError
from spek_sentinel.store.base import SignalStore


@dataclass(frozen=True, slots=True)
class SignalRequest:
    name: str
    reason: str
    by: str
    value: float | None = None
    resolve: bool = False


@dataclass(frozen=True, slots=True)
class SignalOutcome:
    name: str
    value: float | None  # None when resolved
    reason: str
    by: str
    at: float
    resolved: int = 0  # how many open pushes a resolve closed

    def describe(self) -> str:
        if self.value is None:
            return (
                f"{self.name}: resolved {self.resolved} open signal(s) by {self.by}: {self.reason}"
            )
        return f"{self.name} = {self.value:g} recorded by {self.by}: {self.reason}"


def pushed_measures(config: Config) -> dict[str, str]:
    """Signal name -> measure ("event" or "value") of every pushed probe."""
    return {
        signal: spec.measure or "value"
        for probe in config.model.probes.values()
        if probe.kind == "pushed"
        for signal, spec in probe.signals.items()
    }


def record_signal(
    config: Config, store: SignalStore, request: SignalRequest, now: float
) -> SignalOutcome:
    """Push or resolve; InputError (nothing written) for a name or value the table refuses."""
    measures = pushed_measures(config)
    measure = measures.get(request.name)
    if measure is None:
        known = ", ".join(sorted(measures)) or "none"
        raise InputError(f"{request.name}: not a pushed signal; pushed signals: {known}")
    if not request.reason.strip():
        raise InputError("a reason is required: it is what the on-call engineer reads")
    if request.resolve:
        count = store.resolve(request.name, request.reason, request.by, now)
        return SignalOutcome(request.name, None, request.reason, request.by, now, count)
    value = request.value
    if value is None:
        if measure != "event":
            raise InputError(f"{request.name} is a reported value: give a value")
        value = 1.0
    store.push(request.name, value, request.reason, request.by, now)
    return SignalOutcome(request.name, value, request.reason, request.by, now)
