"""Load thresholds.toml: parse, apply environment overrides, validate, cross-check, compile.

All problems are reported at once, each naming the file (or variable), key path and reason;
nothing is returned unless the whole configuration is valid.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from spek_sentinel.config.compile import compile_rules
from spek_sentinel.config.models import ConfigModel
from spek_sentinel.config.overrides import apply_overrides
from spek_sentinel.config.probes import PROBE_KINDS
from spek_sentinel.domain.errors import ConfigError, ConfigProblem
from spek_sentinel.domain.rules import Rule
from spek_sentinel.domain.settings import PolicySettings

RULE_KINDS = ("threshold", "relative", "trend", "event")


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    model: ConfigModel
    rules: tuple[Rule, ...]  # watch rules, then post-rollback validation checks
    policy: PolicySettings

    @property
    def watch_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.phase == "watch")


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts = list(loc)
    if len(parts) > 2 and (
        (parts[0] == "rules" and parts[2] in RULE_KINDS)
        or (parts[0] == "probes" and parts[2] in PROBE_KINDS)
    ):
        del parts[2]  # the discriminated-union tag pydantic inserts; not a key in the file
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif path:
            path += f".{part}"
        else:
            path = str(part)
    return path


def _reason(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_not_found":
        return "missing 'kind'"
    if kind == "union_tag_invalid":
        expected = error.get("ctx", {}).get("expected_tags", "")
        return f"unknown kind {error['input'].get('kind')!r}; expected one of {expected}"
    message = str(error["msg"])
    return re.sub(r"^(Value error|Assertion failed), ", "", message)


def _source_for(path: str, file: str, overrides: Mapping[str, str]) -> str:
    dotted = re.sub(r"\[\d+\]", "", path)
    for key, var in overrides.items():
        if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
            return f"{file} (overridden by {var})"
    return file


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    file = Path(path)
    name = str(file)
    environ = os.environ if environ is None else environ
    try:
        document = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(name, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(name, "", f"cannot read: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(name, "", f"not valid TOML: {exc}")]) from None

    overrides, override_problems = apply_overrides(document, environ)
    if override_problems:
        raise ConfigError([ConfigProblem(var, "", why) for var, why in override_problems])
    try:
        model = ConfigModel.model_validate(document)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = _key_path(error["loc"])
            problems.append(ConfigProblem(_source_for(key, name, overrides), key, _reason(error)))
        raise ConfigError(problems) from None

    rules, found = compile_rules(model)
    if found:
        raise ConfigError(
            [ConfigProblem(_source_for(key, name, overrides), key, why) for key, why in found]
        )
    policy = PolicySettings(
        auto_rollback=model.sentinel.auto_rollback,
        cooldown=model.sentinel.cooldown,
        monitor_for=model.validation.monitor_for,
    )
    return Config(path=file, model=model, rules=tuple(rules), policy=policy)
