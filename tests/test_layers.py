"""The import graph of src/mmkgrec: no circle, and no arrow from a lower layer to a higher one.

Every import is read with ``ast`` (module-level, function-level and ``TYPE_CHECKING`` ones
alike), resolved to the mmkgrec module it names, and checked against :data:`LAYERS`. See
docs/architecture.md for the picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "mmkgrec"

# Lowest first: a module may import its own layer and those below it, never one above.
LAYERS = [
    {"mmkgrec", "mmkgrec.errors", "mmkgrec.config", "mmkgrec.paths", "mmkgrec.allocator"},  # base
    {"mmkgrec.data"},  # MMKG, formats, registry, splits, sampling helpers
    {"mmkgrec.graph"},  # CSR KG, neighbour sampling, MMKG building, training negatives
    {"mmkgrec.features"},  # extractors, extraction, content datasets, split-scoped content
    {"mmkgrec.evaluate"},  # metrics, full ranking, explanation metrics
    {"mmkgrec.models"},  # the model contract and the models
    {"mmkgrec.train"},  # Trainer, checkpoints, DDP, one run end to end
    {"mmkgrec.experiments"},  # benchmark, significance, tuning, reports
    {"mmkgrec.serve"},  # HTTP service
    {"mmkgrec.cli", "mmkgrec.__main__"},  # the command line over all of it
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[tuple[str, int]]:
    """(imported mmkgrec module, line) of every import statement in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from pkg import sub` names module pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        found |= {(t, node.lineno) for t in targets if t == "mmkgrec" or t.startswith("mmkgrec.")}
    return found


def layer_of(name: str) -> int:
    """Index in LAYERS of the longest prefix naming ``name``'s layer."""
    best, level = -1, None
    for index, members in enumerate(LAYERS):
        for member in members:
            if (name == member or name.startswith(member + ".")) and len(member) > best:
                best, level = len(member), index
    assert level is not None, f"{name} is in no layer: add it to LAYERS in {__file__}"
    return level


def graph() -> dict[str, set[tuple[str, int]]]:
    found = modules()
    known = set(found)
    return {name: {(t, line) for t, line in imports(name, path, known) if t != name}
            for name, path in found.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_import_runs_up_the_layers():
    arrows = [f"{name}:{line} -> {target} ({layer_of(name)} -> {layer_of(target)})"
              for name, targets in graph().items() for target, line in sorted(targets)
              if layer_of(target) > layer_of(name)]
    assert not arrows, "imports from a lower layer to a higher one:\n" + "\n".join(arrows)


def test_no_import_circle():
    edges = {name: {t for t, _ in targets} for name, targets in graph().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(name: str, path: list[str]) -> None:  # depth-first; a back edge closes a circle
        state[name] = 1
        for target in sorted(edges.get(name, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target):] + [name, target]))
            elif target not in state:
                visit(target, [*path, name])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """A function-level import and a relative one are arrows too."""
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from mmkgrec.experiments import benchmark\n"
                    "from .x import y\n")
    found = imports("mmkgrec.data.mod", path, {"mmkgrec.experiments.benchmark"})
    assert ("mmkgrec.experiments.benchmark", 2) in found and ("mmkgrec.data.x", 3) in found
