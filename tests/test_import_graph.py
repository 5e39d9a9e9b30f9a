"""The import graph of coder/: no cycles, and inference never imports training.

Every import counts, also those inside functions: a lazy import is still a dependency (imports
for type checkers only, under ``if TYPE_CHECKING:``, never run and do not count). Only the
training package itself and the CLI's train command may import ``coder.train``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "coder"
TRAINING = "coder.train"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (imports for type checkers never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(tree: ast.AST, *, package: str) -> set[str]:
    """Names of the coder modules ``tree`` imports (``from a import b`` counts ``a.b`` when that is a module)."""
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "coder" or name.startswith("coder.")}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {module for module in _imports(ast.parse(path.read_text()), package=package) if module in files} - {name}
    return graph


def test_coder_has_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_training_imports_training():
    graph = _graph()
    offenders = sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                       if target.startswith(TRAINING) and not module.startswith(TRAINING))
    assert offenders == []


def test_the_cli_imports_training_only_in_its_train_command():
    tree = ast.parse((ROOT / "cli.py").read_text())
    outside = _imports(ast.Module(body=[n for n in tree.body if not isinstance(n, ast.FunctionDef)], type_ignores=[]), package="")
    assert not [m for m in outside if m.startswith(TRAINING)]
    for function in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        uses = [m for m in _imports(function, package="") if m.startswith(TRAINING)]
        assert not uses or function.name == "train_command", f"{function.name} imports {uses}"


def test_the_graph_sees_lazy_imports():
    """A function-level import is an edge too (the test would miss the old predictor <-> stacking cycle otherwise)."""
    tree = ast.parse("def f():\n    from coder.train.stacking import Stack\n")
    assert "coder.train.stacking" in _imports(tree, package="coder")
