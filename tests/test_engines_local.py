"""What every engine is: a map of the run's batch worker, below the run (the local engine's runs are in test_run)."""

import pytest

from test_import_graph import _graph


@pytest.mark.parametrize("module", ["coder.batches", "coder.engines"], ids=["worker", "engines"])
def test_the_worker_and_the_engines_import_neither_the_run_nor_predict(module):
    graph = _graph()
    upward = sorted(f"{name} -> {target}" for name, targets in graph.items() if name.startswith(module)
                    for target in targets if target in ("coder.run", "coder.predict"))
    assert upward == []
