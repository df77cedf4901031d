"""Habits that keep the code readable, checked on every run of the suite.

- small modules and short functions (STYLE.md: < ~400 lines, < ~60 lines), with named exceptions;
- the objectives layer is pure torch (it is what other frameworks import);
- no lower layer imports a higher one. The layers, bottom to top:
  errors -> objectives -> tasks -> models -> scale -> engine -> analysis | recipes -> lab -> cli
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "opdkit"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Modules and functions allowed past the limits, each with the reason it reads better whole.
LONG_MODULES: dict[str, str] = {}
LONG_FUNCTIONS: dict[str, str] = {}

RANK = {"errors": 0, "objectives": 1, "tasks": 2, "models": 3, "scale": 4, "engine": 5, "analysis": 6, "recipes": 6,
        "lab": 7, "cli": 8}
# Each layer is a subpackage of opdkit (objectives/, tasks/, ...); these modules sit at the top.
LAYER_OF = {"errors": "errors", "cli": "cli", "scaling": "cli"}     # scaling.py: the `python -m` entry point


def modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def name_of(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def layer_of(module: str) -> str | None:
    """The layer of `opdkit.<module>` (a dotted name below opdkit); None for the package root."""
    if not module:
        return None
    head = module.split(".")[0]
    return LAYER_OF.get(head) or (head if head in RANK else None)


def project_imports(path: Path) -> list[str]:
    """Dotted names (below opdkit) of every opdkit module `path` imports, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "opdkit":
            base = node.module[len("opdkit."):] if node.module != "opdkit" else ""
            out += [f"{base}.{a.name}".strip(".") if not base else base for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name[len("opdkit."):] for a in node.names if a.name.startswith("opdkit.")]
    return out


def third_party_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("opdkit", "__future__")}


def test_every_module_has_a_layer():
    missing = [name_of(p) for p in modules() if name_of(p) and layer_of(name_of(p)) is None]
    assert not missing, f"modules with no layer (add them to LAYER_OF or a layer's package): {missing}"


@pytest.mark.parametrize("path", modules(), ids=name_of)
def test_module_is_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES or name_of(path) in LONG_MODULES, (
        f"{name_of(path)} has {lines} lines (limit {MAX_MODULE_LINES}): split it by job")


@pytest.mark.parametrize("path", modules(), ids=name_of)
def test_functions_are_short(path):
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES and f"{name_of(path)}.{node.name}" not in LONG_FUNCTIONS:
                long.append(f"{node.name} ({length} lines)")
    assert not long, f"{name_of(path)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize("path", [p for p in modules() if layer_of(name_of(p)) == "objectives"], ids=name_of)
def test_the_objectives_layer_is_pure_torch(path):
    assert third_party_imports(path) <= {"torch"}, f"{name_of(path)} imports {third_party_imports(path)}"
    outside = [m for m in project_imports(path) if layer_of(m) != "objectives"]
    assert not outside, f"{name_of(path)} imports {outside} from outside the objectives layer"


@pytest.mark.parametrize("path", [p for p in modules() if name_of(p)], ids=name_of)
def test_no_lower_layer_imports_a_higher_one(path):
    mine = layer_of(name_of(path))
    bad = [m for m in project_imports(path)
           if layer_of(m) is not None and (RANK[layer_of(m)] > RANK[mine] or
                                           (RANK[layer_of(m)] == RANK[mine] and layer_of(m) != mine))]
    assert not bad, f"{name_of(path)} ({mine}) imports {bad} from a higher (or sibling) layer"


def test_the_checks_can_fail(tmp_path):
    """The layer check sees a violation when there is one (a check that cannot fail is a defect)."""
    fake = tmp_path / "bad.py"
    fake.write_text("from opdkit.engine.runner import run\nimport transformers\n")
    assert project_imports(fake) == ["engine.runner"] and layer_of("engine.runner") == "engine"
    assert third_party_imports(fake) == {"transformers"}
