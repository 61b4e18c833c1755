"""The package import graph, read from the modules' own import statements, has no arrow from a lower
layer to a higher one (docs/CONTRACTS.md, "Layers")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "longrl"

LAYERS = [
    {"config", "recipes", "locations", "http"},
    {"models", "algo"},
    {"data"},
    {"rewards", "curriculum"},
    {"rollout", "agent"},
    {"train"},
    {"eval"},
    {"analysis"},
    {"pipeline", "distill"},
    {"engines"},
    {"demo", "demo_seeds", "pipeline_cli"},
    {"cli", "config_cli"},
]
"""Lowest first. A unit is a top-level module or subpackage of ``longrl``; a unit may import units of
its own layer or below, never above (within a layer, the graph must still be acyclic)."""


def _unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_units(path: Path) -> set[str]:
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("longrl"):
            parts = node.module.split(".")
            units |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            units |= {a.name.split(".")[1] for a in node.names if a.name.startswith("longrl.")}
    return units


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(path)
        if unit == "__init__":
            continue
        graph.setdefault(unit, set()).update(_imported_units(path) - {unit})
    return graph


def _layer_of() -> dict[str, int]:
    return {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def test_every_unit_has_a_layer():
    missing = set(import_graph()) - set(_layer_of())
    assert not missing, f"add {sorted(missing)} to LAYERS (and to docs/CONTRACTS.md)"


def test_no_import_goes_up_a_layer():
    layer = _layer_of()
    upward = sorted(f"{a} -> {b}" for a, deps in import_graph().items() for b in deps
                    if b in layer and layer[b] > layer[a])
    assert not upward, f"imports from a lower layer to a higher one: {upward}"


def test_no_cycle_between_units():
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(u: str, trail: list[str]) -> None:
        state[u] = 1
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(trail + [u, v])}")
            if v not in state:
                visit(v, trail + [u])
        state[u] = 2

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [])


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    # the graph reader itself: a data module importing the trainer is reported
    fake = tmp_path / "longrl"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "x.py").write_text("def f():\n    from longrl.train.rl import run\n")
    (fake / "train").mkdir()
    (fake / "train" / "rl.py").write_text("import longrl.data.x\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    graph = import_graph()
    assert graph == {"data": {"train"}, "train": {"data"}}


def long_classes(path: Path, limit: int) -> list[str]:
    """``Class (n lines)`` for every class in the file ``path`` longer than ``limit`` lines."""
    return [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.ClassDef) and n.end_lineno - n.lineno + 1 > limit]


def test_pipeline_classes_stay_short(tmp_path):
    """The pipeline is split by concern (bookkeeping, training stages, evaluation): no class over 150 lines."""
    assert {str(p.name): long_classes(p, 150) for p in (PACKAGE / "pipeline").glob("*.py")
            if long_classes(p, 150)} == {}
    big = tmp_path / "big.py"
    big.write_text("class Big:\n" + "    x = 1\n" * 160)
    assert long_classes(big, 150) == ["Big (161 lines)"]
