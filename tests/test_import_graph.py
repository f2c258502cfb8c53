"""Imports run one way: no cycle inside ``vllm_firp/`` or ``training/``, and no arrow back up a floor.

Floors, bottom first: the product (``vllm_firp``: ``core`` < ``engine`` < ``vllm_plugin`` < its top-level
modules), the trainer (``training``), ``benchmarks``, ``tests``. Every import counts, also the ones inside
functions and ``TYPE_CHECKING`` blocks: a lazy import still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vllm_firp", "training", "benchmarks", "tests")  # bottom floor first
TRAINER, TRAINER_NAME = "training", "vllm_firp_training"
PRODUCT_FLOORS = ("vllm_firp.core", "vllm_firp.engine", "vllm_firp.vllm_plugin")  # then vllm_firp's top-level modules


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Absolute names of everything ``path`` imports (submodules resolved where ``known`` has them)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    # The trainer's one import name is vllm_firp_training (its folder is training/).
    return {TRAINER + m[len(TRAINER_NAME):] if m.split(".")[0] == TRAINER_NAME else m for m in found}


def _graph(package: str) -> dict[str, set[str]]:
    mods = _modules(package)
    known = set(mods)
    return {name: {m for m in _imports(name, path, known) if m in known and m != name} for name, path in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


@pytest.mark.parametrize("package", ["vllm_firp", "training"])
def test_no_import_cycle(package: str) -> None:
    cycle = _cycle(_graph(package))
    assert cycle is None, f"import cycle in {package}/: {' -> '.join(cycle or [])}"


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _floor(module: str) -> int:
    top = module.split(".")[0]
    if top != "vllm_firp":
        return len(PRODUCT_FLOORS) + 1 + PACKAGES.index(top)
    return next((i for i, f in enumerate(PRODUCT_FLOORS) if module == f or module.startswith(f + ".")),
                len(PRODUCT_FLOORS))


def test_no_arrow_back_up() -> None:
    mods = {name: path for package in PACKAGES for name, path in _modules(package).items()}
    known = set(mods)
    ours = set(PACKAGES)
    up = [f"{name} imports {m}" for name, path in mods.items() for m in sorted(_imports(name, path, known))
          if m.split(".")[0] in ours and _floor(m) > _floor(name)]
    assert not up, "imports that point up a floor:\n" + "\n".join(up)


def test_the_trainer_has_one_import_name() -> None:
    """``training.x`` and ``vllm_firp_training.x`` would be two module objects of one file."""
    by_folder = [f"{name} imports {m}" for package in ("benchmarks", "tests")
                 for name, path in _modules(package).items()
                 for m in _raw_imports(path) if m.split(".")[0] == TRAINER]
    assert not by_folder, "import the trainer as vllm_firp_training:\n" + "\n".join(by_folder)


def _raw_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
