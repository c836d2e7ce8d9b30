"""Environment overrides: ``SPEK_SENTINEL_<SECTION>__<KEY>[__<KEY>...]=value``.

Path segments are lower-cased; inside a list of named tables (``rules``,
``validation.checks``) a segment picks the entry by its ``name``. The value is read as a TOML
value when it parses as one (``0.1``, ``true``, ``"x"``), else as a plain string (``30m``).
Variables without ``__`` (``SPEK_SENTINEL_CONFIG``) are not overrides.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

PREFIX = "SPEK_SENTINEL_"
EXAMPLE = "SPEK_SENTINEL_SENTINEL__COOLDOWN=30m"


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _step(node: Any, segment: str, where: str, var: str) -> tuple[Any, str]:
    """One segment down; returns the node and its key path as problems name it (``rules[0]``)."""
    if isinstance(node, dict):
        return node.setdefault(segment, {}), f"{where}.{segment}" if where else segment
    if isinstance(node, list):
        for index, item in enumerate(node):
            if isinstance(item, dict) and item.get("name") == segment:
                return item, f"{where}[{index}]"
        names = ", ".join(str(i.get("name")) for i in node if isinstance(i, dict)) or "none"
        raise ValueError(f"{var}: {where} has no entry named {segment!r}; names: {names}")
    raise ValueError(f"{var}: cannot descend into a {type(node).__name__} at {segment!r}")


def apply_overrides(
    document: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Apply overrides in place.

    Returns {key path: variable}, paths written as problems name them (``rules[0].above``),
    and the problems found.
    """
    applied: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for var in sorted(environ):
        if not var.startswith(PREFIX) or "__" not in var:
            continue
        segments = [s.lower() for s in var[len(PREFIX) :].split("__")]
        if any(not s for s in segments) or len(segments) < 2:
            problems.append((var, f"expected {PREFIX}<SECTION>__<KEY>, e.g. {EXAMPLE}"))
            continue
        try:
            node: Any = document
            where = ""
            for segment in segments[:-1]:
                node, where = _step(node, segment, where, var)
            if isinstance(node, list):
                parent = "__".join(segments[:-1]).upper()
                raise ValueError(
                    f"{var}: {where} is a list; pick an entry by its name, "
                    f"e.g. {PREFIX}{parent}__<NAME>__{segments[-1].upper()}"
                )
            if not isinstance(node, dict):
                raise ValueError(f"{var}: {where} is not a table")
        except ValueError as exc:
            problems.append((var, str(exc).split(": ", 1)[1]))
            continue
        node[segments[-1]] = _parse_value(environ[var])
        applied[f"{where}.{segments[-1]}"] = var
    return applied, problems
