"""The layering of ARCHITECTURE.md, held by a test: the deciding part stays pure."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "spek_sentinel"
ALLOWED = {
    "domain": {"spek_sentinel.domain"},
    "engine": {"spek_sentinel.domain", "spek_sentinel.engine"},
    "config": {"spek_sentinel.domain", "spek_sentinel.config", "pydantic"},
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def outside_allowed(module: str, allowed: set[str]) -> bool:
    top = module.split(".", maxsplit=1)[0]
    if top in sys.stdlib_module_names or top == "__future__":
        return False
    return not any(module == a or module.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    files = sorted((PACKAGE / layer).glob("*.py"))
    assert files, f"no modules found in {layer}/"
    offenders = {
        f"{path.name}: {module}"
        for path in files
        for module in imports(path)
        if outside_allowed(module, ALLOWED[layer])
    }
    assert offenders == set()
