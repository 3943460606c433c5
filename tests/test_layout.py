"""The package's import graph: no cycle, and imports only run down the layers the README's code
map draws (commands -> interop / conditioning -> training -> evaluation -> core)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_score"

# Higher numbers may import lower ones, never the reverse. Modules not named are the core (0).
LAYERS = {
    "lightning_score.evaluation": 1,
    "lightning_score.training": 2,
    "lightning_score.conditioning": 3,
    "lightning_score.interop": 3,
    "lightning_score.commands": 4,
    "lightning_score.cli": 4,
}


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports (anywhere in the file)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join([*module.split(".")[: -node.level], node.module])
            for alias in node.names:
                out.add(f"{base}.{alias.name}")
                out.add(base)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m.startswith("lightning_score")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {d for d in _imports(p) if d in modules and d != m} for m, p in modules.items()}


def _layer(module: str) -> int:
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return 0


def test_no_import_cycles_in_the_package() -> None:
    """Module-level graph of every ``import`` (function-level ones too): no cycle."""
    graph = _graph()
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = [*stack[stack.index(d) :], d] if d in stack else [m, d]
                raise AssertionError(" -> ".join(cycle))
            if d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert len(graph) > 30  # the walk saw the package


def test_imports_run_down_the_layers_only() -> None:
    graph = _graph()
    upward = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
        for m, deps in sorted(graph.items())
        if m != "lightning_score"
        for d in sorted(deps)
        if d != "lightning_score" and _layer(d) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_the_package_root_holds_only_the_core() -> None:
    """A reader of the paper finds the science at the root; the rest lives in named parts."""
    root_modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(root_modules) <= 14, root_modules
    parts = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert {
        "training",
        "conditioning",
        "evaluation",
        "interop",
        "sampling",
        "nets",
        "data",
    } <= parts
