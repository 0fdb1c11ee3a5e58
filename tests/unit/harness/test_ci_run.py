"""`.ci/run` fails when the tiers changed the tree (a golden rewritten, a file left behind), even
when `make test` itself succeeded; it still prints the per-tier summary.

Runs the real .ci/run in a throwaway clone, with a stand-in `make` first on PATH that plays the
tiers: it writes the summary and, in the failing case, rewrites a golden file.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    target = tmp_path / "repo"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(target)], check=True, capture_output=True, timeout=120)
    # .ci/run as it is in this tree (it may not be committed yet)
    (target / ".ci" / "run").write_text((ROOT / ".ci" / "run").read_text())
    subprocess.run(["git", "-C", str(target), "commit", "--quiet", "-am", "this tree's .ci/run", "--allow-empty"],
                   check=True, capture_output=True, timeout=60,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    return target


def ci_run(clone: Path, tmp_path: Path, tiers_do: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    make = bin_dir / "make"
    make.write_text(f"#!/bin/sh\nmkdir -p .cache\necho 'unit     1s  ok  3 passed in 0.1s' > .cache/test-summary.txt\n{tiers_do}\nexit 0\n")
    make.chmod(0o755)
    return subprocess.run(["bash", ".ci/run"], cwd=clone, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})


def test_a_clean_run_passes(clone: Path, tmp_path: Path) -> None:
    done = ci_run(clone, tmp_path, ":")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unit     1s  ok  3 passed in 0.1s" in done.stdout


def test_a_golden_rewritten_by_the_tiers_fails_ci(clone: Path, tmp_path: Path) -> None:
    done = ci_run(clone, tmp_path, "echo changed >> tests/golden/seed.plan.txt")
    assert done.returncode == 1
    assert "the tiers changed the tree" in done.stdout and "tests/golden/seed.plan.txt" in done.stdout
    assert "unit     1s  ok  3 passed in 0.1s" in done.stdout  # the summary is still printed


def test_a_file_left_behind_fails_ci(clone: Path, tmp_path: Path) -> None:
    done = ci_run(clone, tmp_path, "echo x > tests/golden/seed.plan.txt.new")
    assert done.returncode == 1
    assert "?? tests/golden/seed.plan.txt.new" in done.stdout
