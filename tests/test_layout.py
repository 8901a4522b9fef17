"""The package's shape: no import cycle among the core modules, no module reaching into
another's private names, modules of a readable size, a training loop that fits on a screen.

Imports are read with ``ast`` from the source, those inside functions included (a lazy
import hides a cycle from Python, not from a reader).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"tok": ROOT / "tokenizers", "tok.plugins": ROOT / "plugins"}
MAX_LINES = 500
REASON = "Why this module is longer than 500 lines:"


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``tok.run``, ``tok.data.folder`` …)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if package == "tok" and parts[0] == "plugins":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports(name: str) -> list[tuple[str, list[str], int]]:
    """``(module imported, names taken from it, line)`` for every import in ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    base = name if _is_package(name) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            taken = [alias.name for alias in node.names]
            # `from . import media` imports the module tok.media
            if f"{target}.{taken[0]}" in MODULES:
                found += [(f"{target}.{n}", [], node.lineno) for n in taken]
            else:
                found.append((target, taken, node.lineno))
    return found


def core_graph() -> dict[str, set[str]]:
    """Import edges among the core modules (``tok.*`` but the plugins and the package
    ``tok`` itself, which only re-exports)."""
    core = {n for n in MODULES if not n.startswith("tok.plugins") and n != "tok"}
    graph: dict[str, set[str]] = {n: set() for n in core}
    for name in core:
        for target, _, _ in imports(name):
            while target and target not in core:  # `tok.models.tokenizer.X` -> the module
                target = target.rpartition(".")[0]
            if target in core and target != name:
                graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_checks_see_the_package():
    assert {"tok.run", "tok.train", "tok.data.folder", "tok.plugins.fsq", "tok.media"} <= set(
        MODULES
    )
    graph = core_graph()
    assert "tok.run" in graph["tok.train"] and "tok.registry" in graph["tok.components"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_among_the_core_modules():
    cycle = find_cycle(core_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_another_modules_private_names(name):
    bad = [
        f"line {line}: {n} from {target}"
        for target, taken, line in imports(name)
        for n in taken
        if n.startswith("_") and not n.startswith("__") and target != name
    ]
    assert not bad, f"{name} imports private names: {bad}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_short_or_say_why_not(name):
    text = MODULES[name].read_text()
    lines = len(text.splitlines())
    if lines > MAX_LINES:
        docstring = ast.get_docstring(ast.parse(text)) or ""
        assert REASON in docstring, f"{name} has {lines} lines and its docstring does not say why"


def test_the_training_loop_fits_in_300_lines():
    assert len(MODULES["tok.train"].read_text().splitlines()) < 300
