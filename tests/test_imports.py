"""The package's import graph has no cycle: every `import` of a distillora module, at module level or
inside a function (the usual way a cycle is hidden), is an edge, and a depth-first walk finds no
back edge. Run it alone with `pytest tests/test_imports.py -q`."""

from __future__ import annotations

import ast
from pathlib import Path

import distillora

ROOT = Path(distillora.__file__).resolve().parent
PACKAGE = "distillora"


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = (PACKAGE, *f.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _targets(module: str, path: Path, known: set[str]) -> set[str]:
    """The distillora modules `module` imports anywhere in its source. `from .x import y` names x, or
    x.y when y is itself a module; a package's own submodules count as what they are."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found |= {f"{source}.{a.name}" for a in node.names}
    return {t for t in found if t in known and t != module}


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _targets(m, p, set(mods)) for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for t in sorted(graph.get(n, ())):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (c := visit(t)):
                return c
        state[n] = 2
        path.pop()
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_walk_sees_function_level_imports_and_finds_a_planted_cycle():
    graph = import_graph()
    assert "distillora.inference" in graph["distillora.export"]
    assert "distillora.predict" in graph["distillora.cli"]  # imported inside cmd_predict
    planted = {k: set(v) for k, v in graph.items()}
    planted["distillora.inference.base"].add("distillora.export")
    assert find_cycle(planted) is not None


def test_the_distillora_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_inference_layer_knows_no_run_level_module():
    """Backends know model directories and copies; predict, export, serve and study build on them."""
    graph = import_graph()
    above = {"distillora.predict", "distillora.export", "distillora.study", "distillora.serve", "distillora.cli"}
    for m, targets in graph.items():
        if m.startswith("distillora.inference"):
            assert not targets & above, f"{m} imports {targets & above}"
