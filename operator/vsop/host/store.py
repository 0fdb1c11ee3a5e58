"""The host store: a folder (default /etc/vsop/virtualservices.d) of one file per VirtualService.

Owns where a host keeps its declared objects and how they are written: one file
`NAMESPACE_NAME.yaml` per object (namespaces and names cannot hold '_', so the name
maps back to the object), its text indented JSON (JSON is YAML, so any YAML reader takes it;
the agent reads it with the C json module, see `render`), written atomically (a dot-named temp file in the same
folder, fsync, rename, fsync of the folder), so a reader never sees half a file and a
crash leaves the old file or the new one; an apply of several objects stages every file
before renaming any, so it lands whole or not at all, and temp files a dead writer left
are removed by the next writer. `vsop apply`, `vsop delete`, `vsop get`,
`vsop plan` and the host agent all read it through `vsop.host.folder.FolderSource`, so the
command line and the daemon never disagree about what the node should serve. Writers
hold the writer lock (vsop.node.lock) while they change it.
Must not import: kopf, pyroute2, kubernetes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from vsop.api.errors import InvalidInput
from vsop.api.manifests import load_text
from vsop.host.folder import FolderSource, ref_from_file_name
from vsop.api.model import VirtualService

DEFAULT_STORE = Path("/etc/vsop/virtualservices.d")
ENV_STORE = "VSOP_STORE"


def store_path(given: str | os.PathLike[str] | None = None) -> Path:
    if given:
        return Path(given)
    return Path(os.environ.get(ENV_STORE) or DEFAULT_STORE)


def file_name(ref: str) -> str:
    namespace, _, name = ref.partition("/")
    return f"{namespace}_{name}.yaml"


def document(vs: VirtualService) -> dict[str, object]:
    """The object as stored: apiVersion, kind, metadata, spec (no status), defaults left out."""
    data = vs.model_dump(by_alias=True, exclude_defaults=True, exclude_none=True, mode="json", exclude={"status"})
    data["apiVersion"] = vs.api_version
    data["kind"] = vs.kind
    metadata = dict(data.get("metadata") or {})
    metadata = {"name": vs.metadata.name, "namespace": vs.metadata.namespace, **metadata}
    return {"apiVersion": vs.api_version, "kind": vs.kind, "metadata": metadata, "spec": data.get("spec", {})}


def render(vs: VirtualService) -> str:
    """The stored text: the document as indented JSON. JSON, a subset of YAML, because the host
    agent's look at its store takes every file through the loader, and JSON goes through the C
    json module: natively 70 µs a file, against 165-180 µs for the same object as YAML through
    libyaml's composer and PyYAML's constructor (most of an agent's start over a 10,000-file store)."""
    return json.dumps(document(vs), indent=2) + "\n"


def holds(text: str, vs: VirtualService) -> bool:
    """Whether a stored text declares exactly `vs`: a file an older vsop wrote as YAML, or written by
    hand, holding the same object is no change (`apply` neither rewrites it nor reports it)."""
    try:
        loaded = load_text(text)
    except InvalidInput:
        return False
    return len(loaded.services) == 1 and document(loaded.services[0]) == document(vs)


def _temporary_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


# `.NAME.PID.tmp`: what a writer stages before its rename (the folder source skips dot files).
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.tmp$")


def _stage(path: Path, text: str) -> Path:
    """Write text beside path under a dot name, on disk (fsync), not yet visible under path."""
    temporary = _temporary_for(path)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return temporary


def write_atomically(path: Path, text: str) -> None:
    """Replace path by text so that a reader sees the old content or the new one, never a part."""
    temporary = _stage(path, text)
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _sync_folder(path.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the staged files writers that died left behind (`.NAME.PID.tmp` of a PID that is gone).

    A writer holds the writer lock while it stages and renames, so under the lock any temp
    file whose writer is not running is garbage; one whose PID lives (ours, or a reused PID)
    is left alone.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        if _pid_alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _sync_folder(folder: Path) -> None:
    # The rename is durable only once the folder itself is on disk.
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class StoreContents:
    source: FolderSource
    services: list[VirtualService] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)  # ref -> the file that declares it

    @property
    def errors(self) -> dict[str, str]:
        return self.source.errors()


@dataclass
class Store:
    directory: Path

    def path_for(self, ref: str) -> Path:
        return self.directory / file_name(ref)

    def exists(self) -> bool:
        return self.directory.exists()

    def read(self) -> StoreContents:
        """What the store declares now (a one-shot read: writers hold the lock, so it is stable)."""
        source = FolderSource(self.directory, settle_seconds=0)
        if not self.directory.exists():
            return StoreContents(source)  # a store nobody wrote yet: empty, not an error
        source.poll()
        files = {ref: path for ref, path in source.served.items()}
        return StoreContents(source, source.services(), files)

    def write(self, services: Iterable[VirtualService]) -> list[str]:
        """Store each object in its own file, all or nothing; returns the refs whose file changed.

        Every changed file is staged first (written and fsynced under a dot name), and only
        when all of them are on disk are they renamed into place: a full disk or a failed
        write leaves the store exactly as it was, never objects 1..k-1 of an apply that the
        agent would then program as a partial set.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.directory)
        pending: list[tuple[str, Path, str]] = []
        for vs in services:
            path = self.path_for(vs.ref)
            text = render(vs)
            try:
                stored = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                stored = None
            if stored is not None and (stored == text or holds(stored, vs)):
                continue
            pending.append((vs.ref, path, text))
        staged: list[tuple[Path, Path]] = []
        try:
            for _, path, text in pending:
                staged.append((_stage(path, text), path))
            # A rename within one folder needs no new space: the failures a disk can give
            # (full, quota, I/O while writing) all come while staging, before any rename.
            for temporary, path in staged:
                os.replace(temporary, path)
        except BaseException:
            for temporary, _ in staged:
                with contextlib.suppress(OSError):
                    temporary.unlink()
            raise
        if staged:
            _sync_folder(self.directory)
        return [ref for ref, _, _ in pending]

    def remove(self, paths: Iterable[Path]) -> list[Path]:
        removed: list[Path] = []
        remove_stale_temporaries(self.directory)
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
        if removed:
            _sync_folder(self.directory)
        return removed

    def canonical(self, ref: str, path: Path) -> bool:
        """Whether `path` is the store's own file for `ref` (not a hand-placed file holding it)."""
        return path == self.path_for(ref) or (path.parent == self.directory and ref_from_file_name(path) == ref)
