"""The benchmark scripts still import: they run in no test tier (they print figures, in the VM
or natively, see docs/performance.md), so a module they use that moves or a name that is renamed
would otherwise break them unseen until the next time someone measures.

Each script is imported (not run: its `main` is behind `__name__ == "__main__"`) in a fresh
interpreter, with bench/ on the path as when it runs, so nothing it sets up leaks into this one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
SCRIPTS = sorted(path.stem for path in BENCH.glob("*.py"))


def test_the_bench_folder_has_scripts() -> None:
    assert {"agent_bench", "agent_checks", "agent_rss"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bench_script_imports(script: str) -> None:
    probe = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import {script}; assert callable({script}.main)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
