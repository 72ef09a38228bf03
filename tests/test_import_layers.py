"""The package's import graph, read from the source (nothing is imported): every module imports only
modules of its own layer or below, no import cycles, no private names across modules.

Layers, lowest first (a module belongs to the longest matching prefix). Importing ``segtrt.a.b`` also
runs ``segtrt/a/__init__.py``, so a package's ``__init__`` counts as a dependency of its submodules'
importers. A new module must be placed here: an unplaced module fails the test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segtrt"

LAYERS: list[tuple[str, ...]] = [
    # 0: foundations (no segtrt imports but each other)
    ("segtrt", "segtrt.errors", "segtrt.config", "segtrt.onnx_metadata", "segtrt.timing"),
    # 1: pure array math, file IO, model-folder reading, TensorRT building, the comparison math
    ("segtrt.windows", "segtrt.io", "segtrt.devices", "segtrt.transfer", "segtrt.aggregate", "segtrt.streaming",
     "segtrt.sliding", "segtrt.preprocess", "segtrt.resample", "segtrt.postprocess", "segtrt.onnx_fp16",
     "segtrt.nnunet", "segtrt.engine", "segtrt.verify.tolerance", "segtrt.verify.labels", "segtrt.verify.logits",
     "segtrt.verify.patches", "segtrt.verify.reference"),
    # 2: runners (depend on nothing above them)
    ("segtrt.runners",),
    # 3: what builds or checks runners: export, the ONNX cache, backend choice, fold-level comparison
    ("segtrt.export", "segtrt.onnx_cache", "segtrt.backends", "segtrt.verify", "segtrt.verify.report"),
    # 4: orchestration and user-facing library entry points
    ("segtrt.predictor", "segtrt.pipeline", "segtrt.run", "segtrt.batch", "segtrt.outputs", "segtrt.verify.model",
     "segtrt.machine_info", "segtrt.testing"),
    # 5: scale-out above the batch job: Ray actors, and the choice of where a batch runs
    ("segtrt.scaleout", "segtrt.spread"),
    # 6: the command line
    ("segtrt.commands", "segtrt.cli"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + ".") and prefix != "segtrt":
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    return None if best is None else best[1]


def imports_of(path: Path, modules: set[str]) -> list[tuple[str, int, list[str]]]:
    """(imported module, line, imported names) for every segtrt import in the file, lazy ones included."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, []) for alias in node.names if alias.name.split(".")[0] == "segtrt"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "segtrt":
                continue
            names = [alias.name for alias in node.names]
            submodules = [f"{base}.{name}" for name in names if f"{base}.{name}" in modules]
            found.append((base, node.lineno, [n for n in names if f"{base}.{n}" not in modules]))
            found += [(sub, node.lineno, []) for sub in submodules]
    return found


def with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts) + 1)]


SOURCES = sorted(PACKAGE.rglob("*.py"))
MODULES = {module_name(p) for p in SOURCES}


def test_every_module_has_a_layer():
    assert [m for m in sorted(MODULES) if layer_of(m) is None] == []


@pytest.mark.parametrize("path", SOURCES, ids=[module_name(p) for p in SOURCES])
def test_no_module_imports_a_layer_above_it(path):
    source = module_name(path)
    own = layer_of(source)
    above = []
    for target, line, _ in imports_of(path, MODULES):
        for module in with_parents(target):
            if module == source or source.startswith(module + "."):
                continue  # a module's own package
            if module in MODULES and layer_of(module) > own:
                above.append(f"line {line}: {module} (layer {layer_of(module)})")
    assert above == [], f"{source} (layer {own}) imports from above: {above}"


@pytest.mark.parametrize("path", SOURCES, ids=[module_name(p) for p in SOURCES])
def test_no_private_names_imported_across_modules(path):
    private = [f"line {line}: {target}.{name}" for target, line, names in imports_of(path, MODULES)
               for name in names if name.startswith("_") and not name.startswith("__")]
    assert private == []


def test_no_import_cycles():
    graph = {module_name(p): {m for target, _, _ in imports_of(p, MODULES) for m in with_parents(target)
                              if m in MODULES and m != module_name(p)} for p in SOURCES}
    # a package's __init__ importing its own submodules is not a cycle through the package
    graph = {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in graph.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
