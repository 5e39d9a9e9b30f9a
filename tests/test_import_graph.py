"""The import graph of coder/: no cycles, and no import runs up the layers.

The layers, from the top (``LAYERS``): training (``coder.train``); export (``coder.export``: torch
and transformers); what users call (the CLI's commands, the Python API, the review and the audit);
the run (planning, engines); the batch worker; the pipeline's stage list; the assembly of a model
folder (``coder.assembly``: PLM-ICD, the sources, the rerankers); the stages' parts (rerankers, LLM
stage, candidate sources); PLM-ICD's runtime (``coder.model``); the ontology and its validity rule;
the base (schema, errors, reading and writing, metrics). A module imports its own layer or one below,
never one above: inference imports neither export nor training. In the CLI only the train command
imports training and only the export command imports export. An import up the layers fails, and so
does a module in no layer.

Every import counts, also those inside functions: a lazy import is still a dependency (imports
for type checkers only, under ``if TYPE_CHECKING:``, never run and do not count).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "coder"
TRAINING, EXPORT = "coder.train", "coder.export"
LAYERS = (  # from the top: a module belongs to the layer of its longest listed prefix
    (TRAINING,),
    (EXPORT,),
    ("coder", "coder.api", "coder.predict", "coder.prepare", "coder.review", "coder.auditing"),
    ("coder.run", "coder.engines"),
    ("coder.batches",),
    ("coder.pipeline",),
    ("coder.assembly",),
    ("coder.rerank", "coder.llm"),
    ("coder.candidates",),
    ("coder.model",),
    ("coder.ontology", "coder.validate"),
    ("coder.io", "coder.metrics", "coder.rank", "coder.schema", "coder.errors", "coder.hashing", "coder.cpus",
     "coder.estimator", "coder.languages", "coder.version"),
)


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


def _layer(module: str) -> int:
    """Index in ``LAYERS`` of the layer ``module`` belongs to (0: the top), by its longest listed prefix."""
    prefixes = [(len(top), i) for i, layer in enumerate(LAYERS) for top in layer
                if module == top or module.startswith(f"{top}.") and top != "coder"]
    if not prefixes:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return max(prefixes)[1]


def test_every_module_is_in_a_layer():
    for module in _graph():
        _layer(module)


def test_no_import_runs_up_the_layers():
    graph = _graph()
    upward = {f"{module} -> {target}" for module, targets in graph.items() for target in targets
              if _layer(target) < _layer(module)}
    assert sorted(upward) == [], "imports up the layers"


@pytest.mark.parametrize(("package", "command"), [(TRAINING, "train_command"), (EXPORT, "export_command")],
                         ids=["training", "export"])
def test_the_cli_imports_a_layer_above_inference_only_in_its_command(package, command):
    tree = ast.parse((ROOT / "cli.py").read_text())
    outside = _imports(ast.Module(body=[n for n in tree.body if not isinstance(n, ast.FunctionDef)], type_ignores=[]), package="")
    assert not [m for m in outside if _layer(m) <= _layer(package)]
    for function in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        uses = [m for m in _imports(function, package="") if m == package or m.startswith(f"{package}.")]
        assert not uses or function.name == command, f"{function.name} imports {uses}"


def test_the_graph_sees_lazy_imports():
    """A function-level import is an edge too (the test would miss the old predictor <-> stacking cycle otherwise)."""
    tree = ast.parse("def f():\n    from coder.train.stacking import Stack\n")
    assert "coder.train.stacking" in _imports(tree, package="coder")


def test_predicting_imports_neither_torch_nor_transformers(trained_model):
    """PLM-ICD's tokenizer and the dense search's encoder are read with ``tokenizers`` and ``onnx`` alone: a
    nightly process carries neither library (importing torch alone takes about 200 MB)."""
    script = ("import sys, polars as pl; from coder.api import load_model; "
              f"load_model({str(trained_model.folder)!r}, device='cpu').predict(pl.read_parquet({str(trained_model.notes)!r})); "
              "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
