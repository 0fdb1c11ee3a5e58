"""Golden files: the text a test produced must equal the file under tests/golden/, byte for byte.

With VSOP_UPDATE_GOLDEN=1 a differing text is written *beside* the golden (`NAME.new`, or a
`NAME.new/` tree) and the test still fails: a person reads the diff and moves it over.
Under CI (CI set) VSOP_UPDATE_GOLDEN is refused, so no CI run can rewrite or excuse a golden.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"


def _updating() -> bool:
    if not os.environ.get("VSOP_UPDATE_GOLDEN"):
        return False
    if os.environ.get("CI"):
        raise pytest.UsageError("VSOP_UPDATE_GOLDEN is refused under CI: goldens change only in a reviewed commit")
    return True


def check_golden(path: Path, text: str) -> None:
    """`text` must be `path`'s content."""
    updating = _updating()
    if path.exists() and path.read_text() == text:
        return
    if updating:
        beside = path.with_name(path.name + ".new")
        beside.write_text(text)
        pytest.fail(f"{path} differs: wrote {beside}; read `diff {path} {beside}` and move it over if the change is intended")
    pytest.fail(f"{path} differs; VSOP_UPDATE_GOLDEN=1 writes the new text beside it")


def check_golden_tree(folder: Path, files: dict[str, str]) -> None:
    """The tree under `folder` must hold exactly `files` (relative path -> content)."""
    updating = _updating()
    on_disk = {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()} if folder.is_dir() else {}
    if on_disk == files:
        return
    differing = sorted(set(on_disk) ^ set(files) | {f for f in set(on_disk) & set(files) if on_disk[f] != files[f]})
    if updating:
        beside = folder.with_name(folder.name + ".new")
        shutil.rmtree(beside, ignore_errors=True)
        for relative, content in files.items():
            (beside / relative).parent.mkdir(parents=True, exist_ok=True)
            (beside / relative).write_text(content)
        pytest.fail(f"{folder} differs in {differing}: wrote {beside}; read `diff -r {folder} {beside}` and move it over if intended")
    pytest.fail(f"{folder} differs in {differing}; VSOP_UPDATE_GOLDEN=1 writes the new tree beside it")
