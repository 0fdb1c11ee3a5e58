"""The writer lock is root's alone: an unprivileged user cannot open it, so cannot hold it.

flock needs no write access: before, `flock -x /run/vsop/lock sleep 300` run as `nobody`
(the file 0644 in a 0755 folder) blocked every writer of the node. Here `nobody` (through
setpriv) tries exactly that against a lock vsop created, and against one an older vsop
left 0644 in a 0755 /run/vsop. Needs root (to become nobody); no network namespace needed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from vsop.node import lock

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder under /tmp that nobody may enter (pytest's tmp_path is root's 0700: it would hide the lock anyway)."""
    folder = Path(tempfile.mkdtemp(prefix="vsop-lock-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def nobody_holds(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, "flock", "-x", "-n", str(path), "true"], capture_output=True, text=True, timeout=30)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_lock_and_its_folder_are_root_only(shared_tmp: Path) -> None:
    path = shared_tmp / "vsop" / "lock"
    with lock.writer_lock(path, wait_seconds=0):
        pass
    assert (mode(path.parent), mode(path)) == (0o700, 0o600)
    refused = nobody_holds(path)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused


def test_a_loose_lock_an_older_vsop_left_is_tightened(shared_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = shared_tmp / "run-vsop"
    run_dir.mkdir(mode=0o755)
    run_dir.chmod(0o755)
    path = run_dir / "lock"
    path.write_text("")
    path.chmod(0o644)
    assert nobody_holds(path).returncode == 0  # what any user could do before
    monkeypatch.setattr(lock, "DEFAULT_LOCK", path)  # this folder plays /run/vsop
    with lock.writer_lock(path, wait_seconds=0):
        pass
    assert (mode(run_dir), mode(path)) == (0o700, 0o600)
    refused = nobody_holds(path)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused


def test_a_folder_named_by_the_operator_is_left_as_it_is_but_the_lock_is_not(shared_tmp: Path) -> None:
    path = shared_tmp / "lock"  # e.g. --lock /tmp/lock: /tmp is not vsop's to tighten
    path.write_text("")
    path.chmod(0o644)
    with lock.writer_lock(path, wait_seconds=0):
        pass
    assert (mode(shared_tmp), mode(path)) == (0o755, 0o600)
    assert nobody_holds(path).returncode != 0
