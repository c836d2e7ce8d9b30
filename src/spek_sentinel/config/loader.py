"""Load thresholds.toml: parse, apply environment overrides, validate, cross-check, compile.

All problems are reported at once, each naming the file (or variable), key path and reason;
nothing is returned unless the whole configuration is valid.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from spek_sentinel.config.compile import compile_rules
from spek_sentinel.config.models import ConfigModel
from spek_sentinel.config.overrides import apply_overrides
from spek_sentinel.config.paging import DEFAULT_LEVEL, PAGER_TYPES, paging_problems
from spek_sentinel.config.probes import PROBE_KINDS
from spek_sentinel.domain.errors import ConfigError, ConfigProblem
from spek_sentinel.domain.escalation import EscalationLevel, EscalationPolicy
from spek_sentinel.domain.rules import Rule
from spek_sentinel.domain.settings import PolicySettings

RULE_KINDS = ("threshold", "relative", "trend", "event")
APPLICATION_KINDS = ("docker", "git", "command")


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    model: ConfigModel
    rules: tuple[Rule, ...]  # watch rules, then post-rollback validation checks
    policy: PolicySettings
    # who is paged and when ([escalation]); no levels when no pagers are defined
    escalation: EscalationPolicy = field(default_factory=EscalationPolicy)
    notice_pagers: tuple[str, ...] = ()  # [notices] pagers: stakeholder information

    @property
    def watch_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.phase == "watch")


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts = list(loc)
    if len(parts) > 2 and (
        (parts[0] == "rules" and parts[2] in RULE_KINDS)
        or (parts[0] == "probes" and parts[2] in PROBE_KINDS)
        or (parts[0] == "pagers" and parts[2] in PAGER_TYPES)
        or (parts[:2] == ["rollback", "application"] and parts[2] in APPLICATION_KINDS)
    ):
        del parts[2]  # the discriminated-union tag pydantic inserts; not a key in the file
    if parts and parts[-1] == "[key]":
        del parts[-1]  # pydantic's marker for "the key itself, not its value"
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif path:
            path += f".{part}"
        else:
            path = str(part)
    return path


def _shown(value: Any) -> str:
    """A value as the file spells it, kept short."""
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_BOUNDS = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}
_EXPECTED = {
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "string_type": "a quoted string",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "list_type": "a list [...]",
}


def _reason(error: Mapping[str, Any]) -> str:
    """The reason in the file's terms, not pydantic's."""
    kind = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx", {})
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    tag = str(ctx.get("discriminator", "'kind'")).strip("'")  # 'kind', or 'type' for pagers
    if kind == "union_tag_not_found":
        return f"missing {tag!r}"
    if kind == "union_tag_invalid":
        expected = ctx.get("expected_tags", "")
        return f"unknown {tag} {error['input'].get(tag)!r}; expected one of {expected}"
    got = _shown(error.get("input"))
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, not {got}"
    if kind == "literal_error":
        return f"{got} is not one of {ctx.get('expected', '')}"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"must be {words} {ctx.get(key)}, not {got}"
    if kind == "string_pattern_mismatch":  # only names carry a pattern
        return f"{got} is not a valid name: lower-case letters, digits and '_', starting a-z"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long"
    if kind == "too_short":
        return "must not be empty"
    message = str(error["msg"])
    return re.sub(r"^(Value error|Assertion failed), ", "", message)


def _source_for(path: str, file: str, overrides: Mapping[str, str]) -> str:
    """The file, plus the variables that overrode the value at (or above, or below) ``path``."""
    variables = [
        var
        for key, var in overrides.items()
        if path == key
        or path.startswith((key + ".", key + "["))
        or key.startswith((path + ".", path + "["))
    ]
    return f"{file} (overridden by {', '.join(variables)})" if variables else file


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

    # An override that cannot be applied is reported together with everything else wrong.
    overrides, override_problems = apply_overrides(document, environ)
    problems = [ConfigProblem(var, "", why) for var, why in override_problems]
    try:
        model = ConfigModel.model_validate(document)
    except ValidationError as exc:
        for error in exc.errors():
            key = _key_path(error["loc"])
            problems.append(ConfigProblem(_source_for(key, name, overrides), key, _reason(error)))
        raise ConfigError(problems) from None

    rules, found = compile_rules(model)
    found = [*found, *paging_problems(model.pagers, model.escalation, model.notices)]
    for key, why in found:
        problems.append(ConfigProblem(_source_for(key, name, overrides), key, why))
    if problems:
        raise ConfigError(problems)
    policy = PolicySettings(
        auto_rollback=model.sentinel.auto_rollback,
        cooldown=model.sentinel.cooldown,
        monitor_for=model.validation.monitor_for,
        veto_window=model.sentinel.veto_window,
    )
    return Config(
        path=file,
        model=model,
        rules=tuple(rules),
        policy=policy,
        escalation=escalation_policy(model),
        notice_pagers=tuple(model.notices.pagers),
    )


def escalation_policy(model: ConfigModel) -> EscalationPolicy:
    """``[escalation]`` as plain values. Pagers without levels: one level, "on-call", paging
    every pager at once. No pagers: no levels (nothing is paged)."""
    settings = model.escalation
    levels = tuple(
        EscalationLevel(
            name=level.name,
            contacts=tuple(level.contacts),
            pagers=tuple(level.pagers),
            after=level.after,
        )
        for level in settings.levels
    )
    if not levels and model.pagers:
        levels = (EscalationLevel(DEFAULT_LEVEL, (), tuple(model.pagers), 0.0),)
    return EscalationPolicy(
        levels=levels,
        renotify_every=settings.renotify_every,
        ack_timeout=settings.ack_timeout,
    )
