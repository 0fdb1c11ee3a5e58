"""A changed golden fails its test, also while updating (the new text goes beside it), and CI refuses updates."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.golden import check_golden, check_golden_tree


def test_an_equal_text_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VSOP_UPDATE_GOLDEN", raising=False)
    (tmp_path / "a.txt").write_text("same\n")
    check_golden(tmp_path / "a.txt", "same\n")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "x.conf").write_text("x\n")
    check_golden_tree(tmp_path / "tree", {"x.conf": "x\n"})


def test_a_changed_golden_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VSOP_UPDATE_GOLDEN", raising=False)
    (tmp_path / "a.txt").write_text("old\n")
    with pytest.raises(pytest.fail.Exception, match=r"a\.txt differs"):
        check_golden(tmp_path / "a.txt", "new\n")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "x.conf").write_text("x\n")
    with pytest.raises(pytest.fail.Exception, match=r"differs in \['y\.conf'\]"):
        check_golden_tree(tmp_path / "tree", {"x.conf": "x\n", "y.conf": "y\n"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "tree"], "nothing written without VSOP_UPDATE_GOLDEN"


def test_an_update_writes_beside_the_golden_and_still_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSOP_UPDATE_GOLDEN", "1")
    monkeypatch.delenv("CI", raising=False)
    (tmp_path / "a.txt").write_text("old\n")
    with pytest.raises(pytest.fail.Exception, match=r"wrote .*a\.txt\.new"):
        check_golden(tmp_path / "a.txt", "new\n")
    assert (tmp_path / "a.txt").read_text() == "old\n" and (tmp_path / "a.txt.new").read_text() == "new\n"
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "x.conf").write_text("x\n")
    with pytest.raises(pytest.fail.Exception, match=r"wrote .*tree\.new"):
        check_golden_tree(tmp_path / "tree", {"x.conf": "changed\n"})
    assert (tmp_path / "tree" / "x.conf").read_text() == "x\n" and (tmp_path / "tree.new" / "x.conf").read_text() == "changed\n"


def test_an_update_under_ci_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSOP_UPDATE_GOLDEN", "1")
    monkeypatch.setenv("CI", "true")
    (tmp_path / "a.txt").write_text("same\n")
    with pytest.raises(pytest.UsageError, match="refused under CI"):
        check_golden(tmp_path / "a.txt", "same\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_no_new_golden_is_left_in_the_tree() -> None:
    """A `.new` beside a golden is an update nobody reviewed: move it over or delete it."""
    golden = Path(__file__).resolve().parents[2] / "golden"
    assert sorted(str(p.relative_to(golden)) for p in golden.rglob("*.new")) == []
