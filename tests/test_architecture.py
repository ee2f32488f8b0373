"""The package's shape: no import cycles inside src/bnlab, imports run down its layers, and every console script
resolves to a callable."""

from __future__ import annotations

import ast
import importlib
import re
import tomllib
from pathlib import Path

import pytest

from bnlab import REPO_ROOT

SRC = REPO_ROOT / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "bnlab").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> bnlab modules it imports, at module level or inside a function (a lazy import is still a cycle)."""
    modules, graph = _modules(), {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("bnlab"):
                for a in node.names:  # `from bnlab.x import y`: the submodule bnlab.x.y if there is one, else bnlab.x
                    edges.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w) :] + [w]
            if w not in state and (cycle := visit(w)):
                return cycle
        state[v] = 2
        path.pop()
        return None

    for v in sorted(graph):
        if v not in state and (cycle := visit(v)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_bnlab():
    graph = import_graph()
    assert "bnlab.train.loop" in graph and graph["bnlab.train.loop"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# Layers, lowest first: a module imports only from its own layer or those below. A module's layer is that of the
# longest prefix listed. Entry points sit above everything wherever their file lives.
LAYERS = [
    ["bnlab", "bnlab.config_errors", "bnlab.registry", "bnlab.utils"],
    ["bnlab.norm", "bnlab.models", "bnlab.data"],
    ["bnlab.train"],  # build, the loop, checkpoint, launch: knows no config checks and no diagnostics
    ["bnlab.config", "bnlab.cost", "bnlab.results"],
    ["bnlab.diagnostics"],
    ["bnlab.runner", "bnlab.plan"],  # one run: validates, builds, hands fit its hooks; plan checks a sweep
    ["bnlab.sweep"],
    ["bnlab.cli", "bnlab.train.__main__", "bnlab.bench", "bnlab.entry_errors"],  # entry points and their one
    # error path; bench measures everything below
]


def layer_of(module: str, layers=LAYERS) -> int | None:
    best = None  # (prefix length, layer)
    for i, prefixes in enumerate(layers):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), i)
    return None if best is None else best[1]


def upward_arrows(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    return sorted(
        f"{src} -> {dst}"
        for src, dsts in graph.items()
        for dst in dsts
        if layer_of(src, layers) < layer_of(dst, layers)
    )


def test_the_layer_rule_finds_an_upward_arrow():
    layers = [["a"], ["b"], ["a.entry"]]
    graph = {"a.loop": {"b"}, "b": {"a.x"}, "a.entry": {"b"}}
    assert upward_arrows(graph, layers) == ["a.loop -> b"]


def test_every_module_has_a_layer():
    assert [m for m in import_graph() if layer_of(m) is None] == []


def test_imports_run_down_the_layers():
    """The loop, checkpoint and launcher (train) reach neither config checks nor diagnostics: the runner above
    them validates and hands `fit` the health monitor as a hook. Only the entry points import from above."""
    assert upward_arrows(import_graph()) == []


def _console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(_console_scripts()))
def test_console_script_resolves_to_a_callable(script):
    module, _, attr = _console_scripts()[script].partition(":")
    target = importlib.import_module(module)
    for part in attr.split("."):
        target = getattr(target, part)
    assert callable(target), f"{script} -> {module}:{attr} is not callable"


def test_the_ten_ways_table_points_at_real_code():
    import bnlab.norm

    rows = [line for line in bnlab.norm.__doc__.splitlines() if re.match(r"\| \w.*\| \w+\.py:\w+", line)]
    assert len(rows) == 10, rows
    missing = []
    for row in rows:
        module, symbol = re.search(r"\| (\w+)\.py:(\w+)", row).groups()
        if not (SRC / "bnlab" / "norm" / f"{module}.py").exists():
            missing.append(module)
            continue
        assert hasattr(importlib.import_module(f"bnlab.norm.{module}"), symbol), row
    assert not missing, missing
