"""The folder source reads a file to its end whatever its stat said, and fails as reading does."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from vsop.host.folder import read_file


def test_reads_the_whole_file_when_the_stat_size_is_right(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_bytes(b"kind: VirtualService\n")
    assert read_file(path, len(b"kind: VirtualService\n")) == b"kind: VirtualService\n"


@pytest.mark.parametrize("size", [0, 1, 5, 100_000])
def test_reads_to_the_end_when_the_file_grew_or_shrank_since_its_stat(tmp_path: Path, size: int) -> None:
    path = tmp_path / "a.yaml"
    content = bytes(range(256)) * 1000  # longer than one read of the rest (64 KiB)
    path.write_bytes(content)
    assert read_file(path, size) == content


def test_an_empty_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_bytes(b"")
    assert read_file(path, 0) == b""


def test_a_folder_or_a_missing_file_raises_as_reading_does(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError) as folder:
        read_file(tmp_path, 0)
    with pytest.raises(IsADirectoryError) as reading:
        tmp_path.read_bytes()
    assert folder.value.strerror == reading.value.strerror
    with pytest.raises(FileNotFoundError) as missing:
        read_file(tmp_path / "gone.yaml", 10)
    assert missing.value.errno == errno.ENOENT
