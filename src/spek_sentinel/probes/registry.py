"""Build the probes a configuration declares, one module per ``kind``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol

from spek_sentinel.config import Config
from spek_sentinel.domain.errors import ConfigError, ConfigProblem
from spek_sentinel.probes import pushed
from spek_sentinel.probes.base import Probe
from spek_sentinel.store.open import state_location


class ProbeFactory(Protocol):
    def __call__(
        self, name: str, model: Any, interval: float, environ: Mapping[str, str]
    ) -> Probe: ...


# kind -> module under spek_sentinel.probes exposing ``build`` (a ProbeFactory)
MODULES = {
    "prometheus": "prometheus",
    "http": "http",
    "websocket": "websocket",
    "postgres": "postgres",
    "redis": "redis",
    "docker": "docker",
    "process": "process",
    "pushed": "pushed",
}


def factory_for(kind: str) -> ProbeFactory:
    module = importlib.import_module(f"spek_sentinel.probes.{MODULES[kind]}")
    build: ProbeFactory = module.build
    return build


def build_probes(config: Config, environ: Mapping[str, str]) -> list[Probe]:
    """Every probe of the config, or ConfigError naming each one that cannot be built (a DSN
    variable that is not set, a file that cannot be read)."""
    probes: list[Probe] = []
    problems: list[ConfigProblem] = []
    defaults = config.model.defaults
    for name, model in config.model.probes.items():
        interval = model.interval or defaults.interval
        try:
            if model.kind == "pushed":
                # pushed signals live in the state store, not behind a network address
                state = state_location(config, environ)
                probes.append(pushed.build(name, model, interval, state))
            else:
                probes.append(factory_for(model.kind)(name, model, interval, environ))
        except ConfigError as exc:
            problems.extend(exc.problems)
        except ValueError as exc:
            problems.append(ConfigProblem(str(config.path), f"probes.{name}", str(exc)))
    if problems:
        raise ConfigError(problems)
    return probes
