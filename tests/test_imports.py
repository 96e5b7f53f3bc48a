"""persona_lib's modules import one another without a cycle, function-local imports included.

A cycle hidden behind a function-local import still couples the two modules both ways; this
test reads every ``import`` statement of the package (with ``ast``, nothing is imported) and
counts importing a submodule as importing its packages too, as Python does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import persona_lib

PACKAGE_DIR = Path(persona_lib.__file__).parent


def _module_files() -> dict[str, Path]:
    files = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = ("persona_lib",) + path.relative_to(PACKAGE_DIR).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _imported_names(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the persona_lib modules it imports (and, for a submodule, its packages)."""
    files = _module_files()
    graph = {}
    for module, path in files.items():
        targets = set()
        for name in _imported_names(module, path):
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                prefix = ".".join(parts[:end])
                if prefix in files:
                    targets.add(prefix)
        # A module is run after its own package's __init__, which is no edge of its choosing.
        graph[module] = {t for t in targets if t != module and not module.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_cycle_finder_reports_a_cycle_and_passes_a_chain():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_function_local_and_package_imports():
    graph = import_graph()
    # persona_lib.cli.propagate imports the label store inside a function.
    assert "persona_lib.labelling.store" in graph["persona_lib.cli.propagate"]
    assert "persona_lib.labelling" in graph["persona_lib.cli.propagate"]


def test_persona_lib_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)
