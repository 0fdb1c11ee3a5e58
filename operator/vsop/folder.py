"""A folder of VirtualService YAML, followed by polling: the host agent's source (and the store's reader).

Owns which objects a folder currently declares, made safe against partial states:

- a file is taken only once it is stable: the same (size, mtime, content hash) on two
  polls at least `settle_seconds` apart, so a writer that truncates then writes, or a copy in progress,
  is never read half-way;
- a missing or unreadable folder or subfolder, an unreadable file and a dangling
  symlink are errors (reported) that keep the last good objects of everything under
  them; a file that fails validation, or holds no VirtualService, keeps its last good
  objects too; only a file that is really gone from a readable folder takes its
  objects with it;
- what cannot be used right now is also reported as a `Held` (core.held): the
  objects such a path declares, or, when nothing is known about it, "unknown", so
  the kernel keeps what it has for them, also right after a restart;
- extensions match case-insensitively (.yaml .yml .json); dot files and folders
  (editors' swap files, ConfigMaps' ..data, the store's temp files) are ignored;
- an object declared twice keeps the definition already being served (first seen
  wins; path order only decides between newcomers); the other copy is reported
  with both paths.

Polling, not inotify: a folder of a few files costs microseconds to stat, it needs no
extra dependency, and it sees the symlink swaps that Kubernetes ConfigMap volumes and
many deploy tools use, which inotify watches on the old target silently miss. A file
is hashed only when its stat changed or it is not yet stable.
Must not import: kopf, pyroute2, kubernetes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat as stat_module
from dataclasses import dataclass, field
import time
from pathlib import Path
from typing import Callable

import yaml

from vsop.core.held import Held
from vsop.errors import InvalidInput
from vsop.loader import load_text
from vsop.model import KIND, VirtualService

log = logging.getLogger("vsop.folder")

SUFFIXES = (".yaml", ".yml", ".json")
STORE_NAME = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)_([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$")

Fingerprint = tuple[int, int, str]  # size, mtime_ns, sha256 of the content


def wanted(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(SUFFIXES)


def ref_from_file_name(path: Path) -> str | None:
    """The store's file naming, NAMESPACE_NAME.yaml -> "NAMESPACE/NAME"; None for other names."""
    stem = path.name
    for suffix in SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    match = STORE_NAME.match(stem)
    return f"{match.group(1)}/{match.group(3)}" if match else None


def guess_refs(text: str) -> frozenset[str]:
    """The VirtualServices a file names, even when they do not validate; empty if unknown."""
    refs: set[str] = set()
    try:
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, dict) and doc.get("kind") == KIND and isinstance(doc.get("metadata"), dict):
                name, namespace = doc["metadata"].get("name"), doc["metadata"].get("namespace") or "default"
                if isinstance(name, str) and isinstance(namespace, str):
                    refs.add(f"{namespace}/{name}")
    except yaml.YAMLError:
        return frozenset()
    return frozenset(refs)


@dataclass
class FileState:
    services: list[VirtualService] = field(default_factory=list)  # the last good ones
    names: frozenset[str] = frozenset()  # refs this path declares as far as known (last good or guessed)
    error: str | None = None  # why the current content is not used
    taken: Fingerprint | None = None  # the content in use
    seen: Fingerprint | None = None  # the content at the last poll
    seen_at: float = 0.0  # when `seen` was first observed
    stat_key: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) at the last poll
    pending: bool = False  # changed since taken, not yet stable
    outage: str | None = None  # a folder above it cannot be read: nothing is known about it now

    @property
    def usable(self) -> bool:
        return not self.pending and bool(self.services)


@dataclass
class FolderSource:
    directory: Path
    # A changed file is taken once a poll at least this long after the change sees the same
    # content again; 0 takes what is there at once (a one-shot reader under the writer lock).
    settle_seconds: float = 1.0
    clock: Callable[[], float] = time.monotonic
    files: dict[Path, FileState] = field(default_factory=dict)
    folder_errors: dict[Path, str] = field(default_factory=dict)
    served: dict[str, Path] = field(default_factory=dict)  # ref -> the path whose definition is served
    ever: set[str] = field(default_factory=set)  # refs loaded at some point by this source
    duplicates: dict[Path, str] = field(default_factory=dict)

    # -- reading the folder ----------------------------------------------------------

    def _walk(self) -> tuple[dict[Path, os.stat_result | str], dict[Path, str]]:
        """Every candidate file (its stat, or why it cannot be read) and every folder that cannot be listed."""
        found: dict[Path, os.stat_result | str] = {}
        problems: dict[Path, str] = {}
        try:
            top = os.stat(self.directory)
        except OSError as exc:
            problems[self.directory] = f"folder cannot be read: {exc.strerror or exc}"
            return found, problems
        if not stat_module.S_ISDIR(top.st_mode):
            problems[self.directory] = "not a folder"
            return found, problems
        pending = [self.directory]
        while pending:
            folder = pending.pop()
            try:
                with os.scandir(folder) as entries:
                    listing = sorted(entries, key=lambda e: e.name)
            except OSError as exc:
                problems[folder] = f"folder cannot be read: {exc.strerror or exc}"
                continue
            for entry in listing:
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                try:
                    st = os.stat(path)  # follows symlinks: a swapped target is a new fingerprint
                except OSError as exc:
                    if wanted(entry.name):
                        reason = "dangling symlink" if entry.is_symlink() else "cannot be read"
                        found[path] = f"{reason}: {exc.strerror or exc}"
                    continue
                if stat_module.S_ISDIR(st.st_mode):
                    pending.append(path)
                elif wanted(entry.name) and stat_module.S_ISREG(st.st_mode):
                    found[path] = st
        return found, problems

    def _beneath_problem(self, path: Path) -> str | None:
        for folder, reason in self.folder_errors.items():
            if folder == path or folder in path.parents:
                return f"{folder}: {reason}"
        return None

    def poll(self) -> bool:
        """Re-read what changed on disk; True when the declared objects, holds or errors changed."""
        before = self._signature()
        found, self.folder_errors = self._walk()
        for folder, reason in self.folder_errors.items():
            log.error("cannot read folder, keeping the last good objects beneath it folder=%s error=%r", folder, reason)
        for path in list(self.files):
            if path in found:
                continue
            problem = self._beneath_problem(path)
            if problem is not None:
                self.files[path].outage = problem  # unknown, not gone: keep what it declared
                continue
            log.info("file removed, dropping its objects file=%s objects=%d", path, len(self.files[path].names))
            del self.files[path]
        for path, st in found.items():
            state = self.files.setdefault(path, FileState())
            state.outage = None
            if isinstance(st, str):
                if state.error != st:
                    log.error("file cannot be read, keeping its last good objects file=%s error=%r kept=%d", path, st, len(state.services))
                state.error, state.stat_key, state.seen, state.taken, state.pending = st, None, None, None, False
                if not state.names:
                    state.names = frozenset(filter(None, [ref_from_file_name(path)]))
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if key == state.stat_key and not state.pending and state.taken is not None and state.error is None:
                continue  # unchanged since it was taken: no need to read it again
            self._look(path, state, key)
        self._resolve_duplicates()
        return self._signature() != before

    def _look(self, path: Path, state: FileState, key: tuple[int, int, int]) -> None:
        try:
            content = path.read_bytes()
        except OSError as exc:
            reason = f"cannot be read: {exc.strerror or exc}"
            if state.error != reason:
                log.error("file cannot be read, keeping its last good objects file=%s error=%r", path, reason)
            state.error, state.stat_key, state.seen, state.taken, state.pending = reason, None, None, None, False
            return
        fingerprint = (len(content), key[2], hashlib.sha256(content).hexdigest())
        state.stat_key = key
        if fingerprint == state.taken:
            state.pending, state.seen = False, fingerprint
            return
        now = self.clock()
        if fingerprint != state.seen:
            state.seen, state.seen_at = fingerprint, now
        stable = self.settle_seconds <= 0 or now - state.seen_at >= self.settle_seconds
        if not stable:
            state.pending = True  # changed: wait for the same content on the next poll
            return
        state.pending, state.taken = False, fingerprint
        self._take(path, state, content)

    def _take(self, path: Path, state: FileState, content: bytes) -> None:
        error: str | None = None
        services: list[VirtualService] = []
        text = ""
        try:
            text = content.decode("utf-8")
            loaded = load_text(text, str(path))
            services = loaded.services
            for note in loaded.skipped:
                log.info("%s (not a VirtualService)", note)
            for warning in loaded.warnings:
                log.warning("%s", warning)
            if not services:
                error = f"no VirtualService found in {path}"
        except UnicodeDecodeError as exc:
            error = f"{path}: not UTF-8 text: {exc}"
        except InvalidInput as exc:
            error = "; ".join(str(e) for e in exc.errors)
        if error is not None:
            if state.error != error:
                log.error("invalid file ignored, keeping its last good objects file=%s error=%r kept=%d", path, error, len(state.services))
            state.error = error
            guessed = guess_refs(text) or frozenset(filter(None, [ref_from_file_name(path)]))
            state.names = state.names | guessed if state.services else guessed
            return
        state.services, state.error = services, None
        state.names = frozenset(vs.ref for vs in services)
        self.ever.update(state.names)
        log.info("file loaded file=%s objects=%d", path, len(services))

    def _resolve_duplicates(self) -> None:
        """Which path serves each ref: the one already serving keeps it; newcomers go by path order."""
        claims: dict[str, list[Path]] = {}
        for path, state in sorted(self.files.items()):
            for ref in sorted(state.names | {vs.ref for vs in state.services}):
                claims.setdefault(ref, []).append(path)
        self.duplicates = {}
        served: dict[str, Path] = {}
        for ref, paths in claims.items():
            current = self.served.get(ref)
            winner = current if current in paths else paths[0]
            served[ref] = winner
            for other in paths:
                if other != winner:
                    self.duplicates[other] = (
                        f"VirtualService {ref} is already served from {winner}; this copy in {other} is ignored"
                    )
        for ref, path in served.items():
            if self.served.get(ref) != path:
                if len(claims[ref]) > 1:
                    log.warning("duplicate VirtualService, serving the first seen object=%s served=%s ignored=%s", ref, path, [str(p) for p in claims[ref] if p != path])
        self.served = served

    def _signature(self) -> tuple[object, ...]:
        return (
            tuple((p, s.taken, s.error, s.outage, s.pending, s.names) for p, s in sorted(self.files.items())),
            tuple(sorted(self.folder_errors.items())),
            tuple(sorted(self.served.items())),
        )

    # -- what the folder declares ------------------------------------------------------

    def services(self) -> list[VirtualService]:
        """Every usable declared object once, from the path that serves it."""
        result: list[VirtualService] = []
        for path, state in sorted(self.files.items()):
            if state.pending:
                continue  # being rewritten: the kernel keeps what it has (see held())
            for vs in state.services:
                if self.served.get(vs.ref) == path:
                    result.append(vs)
        return result

    def held(self) -> Held:
        """What the kernel must keep: objects declared where nothing usable can be read now."""
        usable = {vs.ref for vs in self.services()}
        owners: set[str] = set()
        unknown = bool(self.folder_errors)
        for path, state in self.files.items():
            if state.pending or (state.error is not None and not state.services):
                owners |= {ref for ref in state.names if self.served.get(ref) == path}
                if state.pending or not state.names:
                    unknown = True  # what this path declares is not known
        return Held(frozenset(owners - usable), unknown, frozenset(self.ever | usable))

    def held_services(self) -> tuple[list[VirtualService], bool]:
        """The last good definitions of what is held, and whether every held object has one.

        For what must be rendered from definitions rather than kept in the kernel (keepalived's
        configuration): while a file is being rewritten, its last good objects stand in.
        """
        held = self.held()
        found: dict[str, VirtualService] = {}
        for path, state in sorted(self.files.items()):
            if state.pending:
                for vs in state.services:
                    if self.served.get(vs.ref) == path:
                        found.setdefault(vs.ref, vs)
        return list(found.values()), not held.unknown and held.owners <= set(found)

    def errors(self) -> dict[str, str]:
        problems = {str(folder): reason for folder, reason in self.folder_errors.items()}
        for path, state in self.files.items():
            if state.outage or state.error:
                problems[str(path)] = state.outage or state.error  # type: ignore[assignment]
        for path, message in self.duplicates.items():
            problems.setdefault(str(path), message)
        return problems

    def pending(self) -> list[str]:
        return [str(path) for path, state in sorted(self.files.items()) if state.pending]
