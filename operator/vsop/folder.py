"""A folder of VirtualService YAML, followed by polling: the host agent's source.

Owns which objects the folder currently declares. Each file is loaded on its own, so
a file that stops validating keeps its last good objects (and the error is reported)
while every other file is unaffected; a deleted file takes its objects with it.
Polling, not inotify: a folder of a few files costs microseconds to stat, it needs no
extra dependency, and it sees the symlink swaps that Kubernetes ConfigMap volumes and
many deploy tools use, which inotify watches on the old target silently miss.
Must not import: kopf, pyroute2, kubernetes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from vsop.errors import InvalidInput
from vsop.loader import YAML_SUFFIXES, load_paths
from vsop.model import VirtualService

log = logging.getLogger("vsop.folder")


@dataclass
class FileState:
    fingerprint: tuple[int, int, int]  # (inode, size, mtime_ns) of what the path points to
    services: list[VirtualService] = field(default_factory=list)  # the last good ones
    error: str | None = None  # why the current content is not used


@dataclass
class FolderSource:
    directory: Path
    files: dict[Path, FileState] = field(default_factory=dict)

    def _candidates(self) -> dict[Path, tuple[int, int, int]]:
        found: dict[Path, tuple[int, int, int]] = {}
        if not self.directory.is_dir():
            return found
        for path in sorted(self.directory.rglob("*")):
            relative = path.relative_to(self.directory)
            if path.suffix not in YAML_SUFFIXES or any(part.startswith(".") for part in relative.parts):
                continue  # editors' swap files and ConfigMaps' ..data folders start with a dot
            try:
                st = path.stat()  # follows symlinks: a swapped target is a new fingerprint
            except OSError:
                continue
            if path.is_file():
                found[path] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return found

    def poll(self) -> bool:
        """Re-read what changed on disk; True when the declared objects or errors changed."""
        changed = False
        candidates = self._candidates()
        for path in list(self.files):
            if path not in candidates:
                log.info("file removed, dropping its objects file=%s objects=%d", path, len(self.files[path].services))
                del self.files[path]
                changed = True
        for path, fingerprint in candidates.items():
            state = self.files.get(path)
            if state is not None and state.fingerprint == fingerprint:
                continue
            previous = state.services if state is not None else []
            try:
                loaded = load_paths([path])
            except InvalidInput as exc:
                error = "; ".join(str(e) for e in exc.errors)
                if state is None or state.error != error:
                    log.error("invalid file ignored, keeping its last good objects file=%s error=%r kept=%d", path, error, len(previous))
                self.files[path] = FileState(fingerprint, previous, error)
                changed = True
                continue
            for note in loaded.skipped:
                log.info("%s (not a VirtualService)", note)
            for warning in loaded.warnings:
                log.warning("%s", warning)
            self.files[path] = FileState(fingerprint, loaded.services, None)
            log.info("file loaded file=%s objects=%d", path, len(loaded.services))
            changed = True
        return changed

    def services(self) -> list[VirtualService]:
        """Every declared object once; an object defined in two files is kept from the first."""
        seen: dict[str, Path] = {}
        result: list[VirtualService] = []
        for path, state in sorted(self.files.items()):
            for vs in state.services:
                if vs.ref in seen:
                    continue
                seen[vs.ref] = path
                result.append(vs)
        return result

    def errors(self) -> dict[str, str]:
        problems = {str(path): state.error for path, state in self.files.items() if state.error}
        seen: dict[str, Path] = {}
        for path, state in sorted(self.files.items()):
            for vs in state.services:
                if vs.ref in seen:
                    problems[str(path)] = f"VirtualService {vs.ref} is already defined in {seen[vs.ref]}; this copy is ignored"
                seen.setdefault(vs.ref, path)
        return problems

