"""The layout's rules, checked on the source: no import cycles among bolt_jax and convert modules (imports inside
functions included), no function longer than 80 lines outside the kernels, and the one-way dependency order
main -> workflows -> (train, estep, sampling, eval, synth, data) -> (model, kernels, parallel) -> runtime."""

from __future__ import annotations

import ast
import os

from tests.helpers import repo_root

ROOT = repo_root()
PACKAGES = ("bolt_jax", "convert")
MAX_FUNCTION_LINES = 80
# a module of a layer may import its own layer and the layers below it, never one above
LAYERS = (
    ("runtime", ("bolt_jax.runtime",)),
    ("model", ("bolt_jax.model", "bolt_jax.kernels", "bolt_jax.parallel", "bolt_jax.config", "bolt_jax.aot.topology")),
    ("components", ("bolt_jax.data", "bolt_jax.train", "bolt_jax.estep", "bolt_jax.sampling", "bolt_jax.eval",
                    "bolt_jax.synth", "bolt_jax.aot")),
    ("workflows", ("bolt_jax.workflows", "convert")),
    ("entry", ("bolt_jax.main",)),
)


def _modules() -> dict[str, str]:
    out = {}
    for package in PACKAGES:
        for dirpath, _, files in os.walk(ROOT / package):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source (lazy imports included)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import submodule` depends on the submodule; `from module import name` on the module
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for name in names:
                target = resolve(name)
                if target and target != module:
                    graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _layer(module: str) -> int | None:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    return None if best is None else best[0]


def test_no_import_cycles():
    assert _cycles(_import_graph()) == []


def test_dependencies_point_down():
    upward = []
    for module, targets in _import_graph().items():
        for target in targets:
            src, dst = _layer(module), _layer(target)
            if src is not None and dst is not None and dst > src:
                upward.append(f"{module} ({LAYERS[src][0]}) imports {target} ({LAYERS[dst][0]})")
    assert upward == []


def test_functions_are_short_outside_kernels():
    long = []
    for module, path in _modules().items():
        if module.startswith("bolt_jax.kernels"):
            continue  # kernels are long by nature: one Pallas body per function
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert long == []
