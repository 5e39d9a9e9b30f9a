"""The benchmark scripts import: each runs from a clean clone, so a module it names that was renamed or
removed from coder/ must fail here, not in the next engineer's run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_every_benchmark_script_imports():
    scripts = sorted(path.stem for path in BENCHMARKS.glob("*.py"))
    assert "throughput" in scripts
    # in a process of its own from benchmarks/, as the scripts are run (they import each other by name)
    result = subprocess.run([sys.executable, "-c", f"import {', '.join(scripts)}"], cwd=BENCHMARKS,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
