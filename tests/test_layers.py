"""The package's layers import one way (see docs/ARCHITECTURE.md): a lower layer never imports a higher one."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "se_transfer"

# What each part may not import (se_transfer sub-packages / modules), lazily inside functions included.
FORBIDDEN = {
    "io": {"config", "registry", "ops", "models", "data", "engine", "classification", "detection", "cli", "benchmark"},
    "state": {"config", "registry", "ops", "models", "data", "engine", "classification", "detection", "cli", "io"},
    "registry": {"config", "ops", "models", "data", "engine", "classification", "detection", "cli", "benchmark"},
    "config": {"ops", "models", "data", "engine", "classification", "detection", "cli", "benchmark"},
    "ops": {"models", "data", "engine", "classification", "detection", "cli", "benchmark"},
    "models": {"data", "engine", "classification", "detection", "cli", "benchmark"},
    "data": {"models", "engine", "classification", "detection", "cli", "benchmark"},
    "engine": {"ops", "models", "data", "classification", "detection", "cli", "benchmark"},
    "tasks": {"classification", "detection", "cli", "engine", "models", "data"},  # imported by name, lazily
    "classification": {"detection", "cli"},
    "detection": {"classification"},
}


def _imports(path: Path) -> set[str]:
    """The se_transfer parts a module imports (absolute or relative)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(PACKAGE).parts
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel[: len(rel) - node.level])
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # "from .. import x": the names are parts
                    out |= {a.name for a in node.names}
                else:
                    out.add(target[0])
            elif node.module and node.module.startswith("se_transfer."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("se_transfer.")}
    return out


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_a_layer_imports_no_layer_above_it(part):
    files = [PACKAGE / f"{part}.py"] if (PACKAGE / f"{part}.py").is_file() else sorted((PACKAGE / part).rglob("*.py"))
    assert files
    bad = {f"{f.relative_to(PACKAGE)} imports {sorted(_imports(f) & FORBIDDEN[part])}" for f in files
           if _imports(f) & FORBIDDEN[part]}  # fmt: skip
    assert not bad, sorted(bad)
