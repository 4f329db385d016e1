#!/usr/bin/env python3
"""The code's shape, recounted from its import graph: layers, the public door, circles, module sizes, one-line jobs.

Usage: python scripts/check_layers.py [--graph]   (exit 1 and one line per problem when the rules break)

Rules (docs/architecture.md):
- A module imports only from its own layer or a lower one; convert stands apart (base, files and
  the engine only) and only tools and faces import it.
- EdgeQwen is the one door: faces (CLI, server, Ray, console) import neither the engine nor the task
  modules, only the api layer and what lies below the runtime (base, files); tools (eval, training,
  chat check, bench, doctor, build) may use the task modules' public names but not the engine. Neither
  reaches the engine through an attribute (`eq.engine`).
- No import circle between modules.
- llama_cpp is imported only inside edgeqwen/engine/, and ray only inside edgeqwen/cluster/ (an optional extra).
- No module over MAX_LINES lines; every module starts with a docstring whose first line says its job.
- docs/architecture.md names every module.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgeqwen"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAX_LINES = 450
# Lowest first. A module's layer is found from its first name below the package.
LAYERS = {
    "base": {"errors", "signals", "settings", "numeric", "hashing", "board", "text", "lazy"},
    "files": {"gguf_info", "model_paths", "standin", "grammar", "json_schema", "roles", "weight_memory", "memory_plan"},
    "engine": {"engine"},
    "convert": {"convert"},
    "tasks": {"prompt_fit", "classifier", "conversation", "head", "router"},
    "api": {"api", "batch"},
    "tools": {"evaluate", "training", "chat_check", "reply_judging", "bench", "doctor", "build"},
    # cluster: Ray Data and Ray Serve around the public API and the server's app (edgeqwen[ray]).
    "faces": {"cli", "server", "cluster", "console", "__main__", "__init__"},
}
RANK = {layer: rank for rank, layer in enumerate(LAYERS)}
CONVERT_MAY_USE = {"base", "files", "engine", "convert"}
CONVERT_USED_BY = {"convert", "tools", "faces"}
FACES_MAY_NOT_USE = {"engine", "tasks"}  # the runtime, reached only through the api layer
TOOLS_MAY_NOT_USE = {"engine"}
# The plain llama-cpp-python reference `edgeqwen bench` measures against: not edgeqwen's runtime.
REFERENCE = "edgeqwen.engine.plain"
LLAMA_CPP_HOME = "edgeqwen.engine"
RAY_HOME = "edgeqwen.cluster"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    first = module.split(".")[1] if "." in module else "__init__"
    return next(layer for layer, names in LAYERS.items() if first in names)


def imports_of(path: Path, module: str, modules: set[str]) -> tuple[set[str], set[str]]:
    """(edgeqwen modules imported, other top-level packages imported) by one file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    inner, outer = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            names = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                     for alias in node.names]
        else:
            continue
        for name in names:
            (inner if name.split(".")[0] == "edgeqwen" else outer).add(name if name.split(".")[0] == "edgeqwen"
                                                                       else name.split(".")[0])
    return {name for name in inner if name in modules and name != module}, outer


def problems() -> tuple[list[str], dict[str, set[str]]]:
    files = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    modules = set(files)
    graph, found = {}, []
    for module, path in files.items():
        graph[module], outer = imports_of(path, module, modules)
        lines = path.read_text(encoding="utf-8").splitlines()
        doc = ast.get_docstring(ast.parse("\n".join(lines)))
        if len(lines) > MAX_LINES:
            found.append(f"{path.relative_to(PACKAGE.parent)}: {len(lines)} lines (at most {MAX_LINES})")
        if not doc or not doc.splitlines()[0].strip():
            found.append(f"{path.relative_to(PACKAGE.parent)}: no docstring whose first line says the module's job")
        if "llama_cpp" in outer and not module.startswith(LLAMA_CPP_HOME):
            found.append(f"{module} imports llama_cpp: only {LLAMA_CPP_HOME} may")
        if "ray" in outer and not module.startswith(RAY_HOME):
            found.append(f"{module} imports ray: only {RAY_HOME} may")
        for target in graph[module]:
            found += _layer_problem(module, target)
        if layer_of(module) in ("tools", "faces") and _reaches_engine(path):
            found.append(f"{module} ({layer_of(module)}) uses an `.engine` attribute: go through EdgeQwen's public API")
    found += [f"import circle: {' -> '.join(circle)}" for circle in _circles(graph)]
    found += _undocumented(files)
    return found, graph


def _reaches_engine(path: Path) -> bool:
    return any(isinstance(node, ast.Attribute) and node.attr == "engine"
               for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))


def _undocumented(files: dict[str, Path]) -> list[str]:
    """Modules whose file docs/architecture.md does not name (a package by its folder, a module by its file)."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    names = {path.parent.name + "/" if path.name == "__init__.py" else path.name for path in files.values()}
    names.discard("edgeqwen/")
    return [f"docs/architecture.md does not name {name}" for name in sorted(names) if name not in text]


def _layer_problem(module: str, target: str) -> list[str]:
    source_layer, target_layer = layer_of(module), layer_of(target)
    if source_layer == "convert" and target_layer not in CONVERT_MAY_USE:
        return [f"{module} ({source_layer}) imports {target} ({target_layer}): the converter imports no task code"]
    if target_layer == "convert" and source_layer not in CONVERT_USED_BY:
        return [f"{module} ({source_layer}) imports {target}: only tools and faces use the converter"]
    if source_layer == "faces" and target_layer in FACES_MAY_NOT_USE:
        return [f"{module} (face) imports {target} ({target_layer}): faces go through edgeqwen.api"]
    if source_layer == "tools" and target_layer in TOOLS_MAY_NOT_USE and not target.startswith(REFERENCE):
        return [f"{module} (tool) imports {target} ({target_layer}): tools go through edgeqwen.api"]
    if RANK[target_layer] > RANK[source_layer] and target_layer != "convert":
        return [f"{module} ({source_layer}) imports {target} ({target_layer}), a higher layer"]
    return []


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of modules (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group) + [sorted(group)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def main() -> int:
    found, graph = problems()
    if "--graph" in sys.argv:
        for module in sorted(graph):
            print(f"{module} ({layer_of(module)}): {', '.join(sorted(graph[module])) or '-'}")
    for problem in found:
        print(problem)
    if not found:
        print(f"ok: {len(graph)} modules, layers {' < '.join(LAYERS)}, faces and tools through the api, no circle, "
              f"none over {MAX_LINES} lines, every module in docs/architecture.md")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
