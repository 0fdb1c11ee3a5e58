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
- symlinked folders are followed, each folder once per walk (by device and inode): a link
  back up the tree (`a -> .`, `b -> ..`) is not walked again, so a poll always ends;
- extensions match case-insensitively (.yaml .yml .json); dot files and folders
  (editors' swap files, ConfigMaps' ..data, the store's temp files) are ignored;
- an object declared twice keeps the definition already being served (first seen
  wins; path order only decides between newcomers); the other copy is reported
  with both paths.

Polling, not inotify: a folder of a few files costs microseconds to stat, it needs no
extra dependency, and it sees the symlink swaps that Kubernetes ConfigMap volumes and
many deploy tools use, which inotify watches on the old target silently miss. A file
is hashed only when its stat changed or it is not yet stable. With `sweep_seconds`, a
poll between sweeps costs a stat per folder plus what changed (a store of 10,000 files
is neither stat-ed nor visited file by file every second: the candidate files are kept
between walks, which report the paths that moved), and sweeps are spaced by their own
CPU time too; `take_changes` hands over only the refs whose
served object may differ, so the node reconciler's work is what changed, too.
Must not import: kopf, pyroute2, kubernetes.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import re
import stat as stat_module
from dataclasses import dataclass, field
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from vsop.core.held import Held
from vsop.api.errors import InvalidInput
from vsop.api.manifests import load_text, without_gc
from vsop.api.model import KIND, VirtualService

log = logging.getLogger("vsop.host.folder")

SUFFIXES = (".yaml", ".yml", ".json")
# Sweeps are at least this many times their own CPU time apart (at most 1/SWEEP_SHARE of a CPU):
# a store of 10,000 files costs 75-95 ms a sweep natively, under emulation tens of times that.
SWEEP_SHARE = 20
LOADED_NAMED = 10  # a look that takes more files than this logs them in one line (each at debug level)
STORE_NAME = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)_([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$")

Fingerprint = tuple[int, int, bytes]  # size, mtime_ns, sha256 of the content
StatKey = tuple[int, int, int]  # inode, size, mtime_ns: what a poll compares (an os.stat_result is ten times its size)
# a folder's (inode, mtime_ns), whether that is trusted, name -> (d_ino, symlink, path, stat key | why | None for a folder),
# and the names a trusted listing still looks at on each poll: its symlinks, subfolders and entries that could not be read
Listing = tuple[tuple[int, int], bool, dict[str, tuple[int, bool, Path, Any]], tuple[str, ...]]
Found = dict[Path, "StatKey | str"]  # every candidate file: its stat key, or why it cannot be read
Dirty = dict[Path, None]  # the paths a walk found moved, in the walk's order (a dict: ordered, unlike a set)


def _file_key(state: FileState) -> tuple[object, ...]:
    """What of a file's state the declared objects, holds and errors depend on."""
    return (state.taken, state.error, state.outage, state.pending, state.names, id(state.services))


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


def walk_folder(
    directory: Path,
    cache: dict[Path, Listing],
    problem_paths: set[Path],
    sweep: bool,
    on_sweep: Callable[[], None],
    found: Found,
) -> tuple[Dirty, dict[Path, str], dict[Path, Listing]]:
    """Brings `found` (every candidate file under directory: its stat key, or why it cannot be read;
    the last walk's) up to date. Returns the paths whose entry changed, appeared or went, every
    folder that cannot be listed, and the listings to keep for the next walk.

    Between sweeps a folder whose (inode, mtime) matches a trusted cached listing is not listed
    again, and its files are not visited: only its symlinks, subfolders, unreadable entries and
    the files in problem_paths are, so a poll of a quiet store of 10,000 files costs what changed
    (7.2 ms of CPU natively when every entry was visited, bench/folder_poll.py). on_sweep is called
    when a sweep starts (the top folder is readable)."""
    dirty: Dirty = {}
    problems: dict[Path, str] = {}
    listings: dict[Path, Listing] = {}
    try:
        top = os.stat(directory)
    except OSError as exc:
        problems[directory] = f"folder cannot be read: {exc.strerror or exc}"
        top = None
    if top is not None and not stat_module.S_ISDIR(top.st_mode):
        problems[directory] = "not a folder"
        top = None
    if top is None:
        dirty.update(dict.fromkeys(found))
        found.clear()
        return dirty, problems, listings
    if sweep:
        on_sweep()
    in_folder: dict[Path, list[str]] = {}
    for path in problem_paths:
        in_folder.setdefault(path.parent, []).append(path.name)
    pending: list[tuple[Path, os.stat_result | None]] = [(directory, top)]
    walked: set[tuple[int, int]] = set()  # (device, inode) of each folder listed by this walk
    while pending:
        folder, folder_stat = pending.pop()
        try:
            if folder_stat is None:
                folder_stat = os.stat(folder)  # a subfolder's own mtime: its parent's does not move
        except OSError as exc:
            problems[folder] = f"folder cannot be read: {exc.strerror or exc}"
            continue
        here = (folder_stat.st_dev, folder_stat.st_ino)
        if here in walked:
            # A symlink to a folder this walk has already listed (a -> ., b -> ..): each
            # loop would double the paths until ELOOP, 2^40 of them with two such links.
            continue
        walked.add(here)
        listed = _list_folder(folder, folder_stat, cache.get(folder), problem_paths, in_folder.get(folder, ()), sweep, found, dirty, pending)
        if isinstance(listed, str):
            problems[folder] = listed
        else:
            listings[folder] = listed
    for folder in cache.keys() - listings.keys():  # not listed this time (gone, unreadable, walked by another path)
        for _, _, path, _ in cache[folder][2].values():
            if path in found:
                del found[path]
                dirty[path] = None
    return dirty, problems, listings


def _list_folder(
    folder: Path,
    folder_stat: os.stat_result,
    cached: Listing | None,
    problem_paths: set[Path],
    problem_names: Iterable[str],
    sweep: bool,
    found: Found,
    dirty: Dirty,
    pending: list[tuple[Path, os.stat_result | None]],
) -> Listing | str:
    """One folder's entries (brought up to date in found, its subfolders added to pending): its
    listing to keep, or why it cannot be listed."""
    key = (folder_stat.st_ino, folder_stat.st_mtime_ns)
    if not sweep and cached is not None and cached[0] == key and cached[1]:
        # Nothing was added, removed or renamed here since it was listed: the names are known, and
        # a plain file's entry is as found before (a write in place is the sweep's).
        entries = cached[2]
        watched = cached[3]
        # In listing order, as a relisting would push the subfolders: of two paths to one folder
        # (`alias -> sub`), the walk keeps listing the same one, so its files keep their paths.
        for name in (*watched, *(name for name in problem_names if name not in watched)):
            if name not in entries:
                continue
            d_ino, symlink, path, result = entries[name]
            if symlink or isinstance(result, str) or path in problem_paths:
                result = _stat_entry(name, path, symlink)
                entries[name] = (d_ino, symlink, path, result)
            _found(path, result, found, dirty, pending)
        return cached
    listed_at = time.time()
    try:
        with os.scandir(folder) as scan:
            listing = list(scan)
    except OSError as exc:
        return f"folder cannot be read: {exc.strerror or exc}"
    known = cached[2] if cached is not None else {}
    entries = {}
    watch: list[str] = []
    for entry in listing:
        name = entry.name
        if name.startswith("."):
            continue
        old = known.get(name)
        if (not sweep and old is not None and (type(old[3]) is tuple or old[3] == "ignored") and not old[1] and old[0] == entry.inode()
                and not (problem_paths and old[2] in problem_paths)):
            # The same file as before (the same inode: not a symlink now either; a write in place is
            # the sweep's), as found holds it (an ignored one: not at all): a folder of 10,000
            # relisted for one new file.
            entries[name] = old
            continue
        path = old[2] if old is not None else Path(entry.path)  # the Path listed before: not made again
        symlink = entry.is_symlink()
        d_ino = entry.inode()
        if not sweep and old is not None and old[0] == d_ino and not symlink and not isinstance(old[3], str) and path not in problem_paths:
            result = old[3]  # a subfolder as before
        else:
            result = _stat_entry(name, path, symlink, entry)
        entries[name] = (d_ino, symlink, path, result)
        if symlink or result is None or (isinstance(result, str) and result != "ignored"):  # a name not wanted stays so
            watch.append(name)
        _found(path, result, found, dirty, pending)
    for name in known.keys() - entries.keys():  # gone from the folder
        path = known[name][2]
        if path in found:
            del found[path]
            dirty[path] = None
    # Trusted only if it changed well before this listing: a later change moves its mtime.
    return (key, listed_at - folder_stat.st_mtime_ns / 1e9 > 1.0, entries, tuple(watch))


def _stat_entry(name: str, path: Path, symlink: bool, entry: os.DirEntry[str] | None = None) -> Any:
    """A file's stat key (symlinks followed: a swapped target is a new fingerprint), why it cannot
    be read, or None for a folder. Kept per file between polls, so only the key is."""
    try:
        st = entry.stat() if entry is not None else os.stat(path)
    except OSError as exc:
        if wanted(name):
            reason = "dangling symlink" if symlink else "cannot be read"
            return f"{reason}: {exc.strerror or exc}"
        return "ignored"
    if stat_module.S_ISDIR(st.st_mode):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns) if wanted(name) and stat_module.S_ISREG(st.st_mode) else "ignored"


def _found(path: Path, result: Any, found: Found, dirty: Dirty, pending: list[tuple[Path, os.stat_result | None]]) -> None:
    """An entry as listed or stat-ed now: a subfolder to walk, or a file's entry in found (dirty when it moved)."""
    if result is None:
        pending.append((path, None))
    if result is None or result == "ignored":
        if path in found:  # a file before, a folder or ignored now
            del found[path]
            dirty[path] = None
    elif found.get(path) != result:
        found[path] = result
        dirty[path] = None


def read_file(path: Path, size: int) -> bytes:
    """A file's bytes, `size` (its stat) the likely length. Half the cost of Path.read_bytes,
    whose buffered file object is made and dropped for one read: the store's first look reads
    10,000 files. Raises OSError as reading does (a folder: EISDIR)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, size + 1)]  # to the end, also when it grew since the stat
        while chunks[-1]:
            chunks.append(os.read(fd, 1 << 16))
        return chunks[0] if len(chunks) == 2 else b"".join(chunks)
    finally:
        os.close(fd)


@dataclass(slots=True)  # one per file: 10,000 in a big store
class FileState:
    services: list[VirtualService] = field(default_factory=list)  # the last good ones
    names: frozenset[str] = frozenset()  # refs this path declares as far as known (last good or guessed)
    error: str | None = None  # why the current content is not used
    taken: Fingerprint | None = None  # the content in use
    seen: Fingerprint | None = None  # the content at the last poll
    seen_at: float = 0.0  # when `seen` was first observed
    stat_key: StatKey | None = None  # at the last poll
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
    # 0: every poll stats every file. More: between such sweeps a poll lists only the folders
    # whose mtime moved, stats only the names new there (or with a new inode), symlinks and
    # files not yet stable or invalid; a write in place (same name, same inode, the folder's
    # mtime unchanged) is then seen at the next sweep, at most this long after (twice this
    # while every poll finds changes: see poll).
    sweep_seconds: float = 0.0
    files: dict[Path, FileState] = field(default_factory=dict)
    folder_errors: dict[Path, str] = field(default_factory=dict)
    served: dict[str, Path] = field(default_factory=dict)  # ref -> the path whose definition is served
    ever: set[str] = field(default_factory=set)  # refs loaded at some point by this source
    duplicates: dict[Path, str] = field(default_factory=dict)
    # Kept between polls so a poll costs a stat per file plus what changed (not a sort of everything):
    _claimed: dict[Path, frozenset[str]] = field(default_factory=dict, repr=False)  # path -> refs it declares
    _claims: dict[str, list[Path]] = field(default_factory=dict, repr=False)  # ref -> paths declaring it, sorted
    _losing: dict[str, set[Path]] = field(default_factory=dict, repr=False)  # ref -> paths whose copy is ignored
    _lost: dict[Path, dict[str, str]] = field(default_factory=dict, repr=False)  # path -> ref -> why ignored
    _problems: set[Path] = field(default_factory=set, repr=False)  # paths pending, or invalid with nothing good
    _changed: set[str] = field(default_factory=set, repr=False)  # refs whose served object may differ (take_changes)
    # The same for the agent's status file, which is written on its own schedule (take_status_changes):
    _status_paths: set[Path] = field(default_factory=set, repr=False)  # paths whose entry (present, error) may differ
    _status_refs: set[str] = field(default_factory=set, repr=False)  # refs whose place in services() may differ
    _erring: set[Path] = field(default_factory=set, repr=False)  # paths with an error or an outage (errors())
    # folder -> ((inode, mtime_ns), trusted, name -> (d_ino, symlink, path, stat | why | None for a folder))
    _listings: dict[Path, Listing] = field(default_factory=dict, repr=False)
    _found: Found = field(default_factory=dict, repr=False)  # every candidate file at the last walk (walk_folder)
    _swept_at: float = float("-inf")
    _sweep_cpu: float = 0.0  # the last sweep's CPU time (its thread's): sweeps are spaced by SWEEP_SHARE of it at least
    _loaded: list[tuple[Path, int]] = field(default_factory=list, repr=False)  # files taken by this look (_report_loaded)

    # -- reading the folder ----------------------------------------------------------

    def _walk(self, sweep: bool) -> tuple[Dirty, dict[Path, str]]:
        """`_found` brought up to date: the paths whose entry changed, and every folder that cannot be listed."""
        started = time.thread_time()
        dirty, problems, self._listings = walk_folder(self.directory, self._listings, self._problems, sweep, self._mark_sweep, self._found)
        if sweep:
            self._sweep_cpu = time.thread_time() - started  # the walk's own: a stat per file, not the files taken after it
        return dirty, problems

    def _mark_sweep(self) -> None:
        self._swept_at = self.clock()

    def _beneath_problem(self, path: Path) -> str | None:
        for folder, reason in self.folder_errors.items():
            if folder == path or folder in path.parents:
                return f"{folder}: {reason}"
        return None

    def poll(self) -> bool:
        """Re-read what changed on disk; True when the declared objects, holds or errors changed.

        Costs a stat per file plus what changed: only files whose stat changed (or that are
        not yet stable, or invalid) are read, and only the refs they declare are judged again.
        With sweep_seconds, a sweep that falls due is put off while polls find changes (for
        at most another sweep_seconds): the first look at a new file, which starts its settle
        time, and the sync it wakes do not wait for a stat of every file. Sweeps are also at
        least SWEEP_SHARE times the last sweep's CPU time apart, so a big folder on a slow
        machine is not stat-ed file by file for most of its time.
        """
        if self.sweep_seconds <= 0:
            return self._poll(sweep=True)
        since = self.clock() - self._swept_at
        every = max(self.sweep_seconds, self._sweep_cpu * SWEEP_SHARE)
        if since < every:
            return self._poll(sweep=False)
        if since < 2 * every and self._poll(sweep=False):
            return True
        return self._poll(sweep=True)

    # A look that takes many files keeps everything it builds: between load_text's own pauses
    # the cyclic collector would rescan the objects of every file taken so far, and free nothing.
    @without_gc
    def _poll(self, sweep: bool) -> bool:
        errors_before = self.folder_errors
        dirty, self.folder_errors = self._walk(sweep)
        found = self._found
        for folder, reason in self.folder_errors.items():
            log.error("cannot read folder, keeping the last good objects beneath it folder=%s error=%r", folder, reason)
        touched: set[Path] = set()
        # What the walk found changed, and the files looked at on every poll (not yet stable,
        # invalid, unreadable, beneath an unreadable folder); any other file is as it was taken.
        # In the walk's order (sorting 10,000 paths of a first look cost 30 ms natively), then the rest.
        candidates = [*dirty, *sorted((self._problems | self._erring) - dirty.keys(), key=str)]
        for path in candidates:
            if path in found or path not in self.files:
                continue
            problem = self._beneath_problem(path)
            if problem is not None:
                if self.files[path].outage != problem:
                    self.files[path].outage = problem  # unknown, not gone: keep what it declared
                    touched.add(path)
                continue
            log.info("file removed, dropping its objects file=%s objects=%d", path, len(self.files[path].names))
            del self.files[path]
            touched.add(path)
        for path in candidates:
            st = found.get(path)
            if st is None:
                continue
            state = self.files.get(path)
            if state is None:
                state = self.files[path] = FileState()
                touched.add(path)
            if state.outage is not None:
                state.outage = None
                touched.add(path)
            if isinstance(st, str):
                before = _file_key(state)
                if state.error != st:
                    log.error("file cannot be read, keeping its last good objects file=%s error=%r kept=%d", path, st, len(state.services))
                state.error, state.stat_key, state.seen, state.taken, state.pending = st, None, None, None, False
                if not state.names:
                    state.names = frozenset(filter(None, [ref_from_file_name(path)]))
                if _file_key(state) != before:
                    touched.add(path)
                continue
            key = st
            if key == state.stat_key and not state.pending and state.taken is not None and state.error is None:
                continue  # unchanged since it was taken: no need to read it again
            before = _file_key(state)
            self._look(path, state, key)
            if _file_key(state) != before:
                touched.add(path)
        served_changed = self._resolve_duplicates(touched)
        self._report_loaded()
        return bool(touched) or served_changed or self.folder_errors != errors_before

    def settle_due(self) -> float | None:
        """When the earliest file not yet stable will have been for settle_seconds (this source's clock)."""
        seen = [self.files[path].seen_at for path in self._problems if self.files[path].pending]
        return min(seen) + self.settle_seconds if seen else None

    @without_gc
    def recheck(self) -> bool:
        """Look again at the files not yet stable, and only at them: a file is taken once it has
        been the same for settle_seconds (the second look of the stability rule), without
        waiting for the next poll of everything. Anything else (gone, unreadable) is left to
        the next poll. True when the declared objects or holds changed."""
        touched: set[Path] = set()
        for path in sorted(p for p in self._problems if self.files[p].pending):
            state = self.files[path]
            try:
                st = os.stat(path)
            except OSError:
                continue
            before = _file_key(state)
            self._look(path, state, (st.st_ino, st.st_size, st.st_mtime_ns))
            if _file_key(state) != before:
                touched.add(path)
        served_changed = self._resolve_duplicates(touched)
        self._report_loaded()
        return bool(touched) or served_changed

    def _report_loaded(self) -> None:
        """A line per file taken, or one line for a look that took many (an agent starting over
        10,000 files logged 10,000 lines, each one more write on the way to its first sync)."""
        loaded, self._loaded = self._loaded, []
        if len(loaded) <= LOADED_NAMED:
            for path, count in loaded:
                log.info("file loaded file=%s objects=%d", path, count)
            return
        paths = [path for path, _ in loaded]
        log.info("files loaded files=%d objects=%d first=%s last=%s", len(loaded), sum(count for _, count in loaded), min(paths), max(paths))
        if log.isEnabledFor(logging.DEBUG):
            for path, count in loaded:
                log.debug("file loaded file=%s objects=%d", path, count)

    def _look(self, path: Path, state: FileState, key: StatKey) -> None:
        try:
            content = read_file(path, key[1])
        except OSError as exc:
            reason = f"cannot be read: {exc.strerror or exc}"
            if state.error != reason:
                log.error("file cannot be read, keeping its last good objects file=%s error=%r", path, reason)
            state.error, state.stat_key, state.seen, state.taken, state.pending = reason, None, None, None, False
            return
        fingerprint = (len(content), key[2], hashlib.sha256(content).digest())
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
        self._loaded.append((path, len(services)))

    def _resolve_duplicates(self, touched: set[Path]) -> bool:
        """Which path serves each ref the touched paths declare (or declared): the one already
        serving keeps it; newcomers go by path order. Returns whether any served path changed."""
        refs: set[str] = set()
        for path in touched:
            old = self._claimed.pop(path, frozenset())
            state = self.files.get(path)
            new: frozenset[str] = frozenset()
            if state is not None:
                loaded = {vs.ref for vs in state.services}
                new = state.names if loaded <= state.names else state.names | loaded  # mostly the same: shared, not copied
            if new:
                self._claimed[path] = new
            for ref in old - new:
                self._claims[ref].remove(path)
                if not self._claims[ref]:
                    del self._claims[ref]
            for ref in new - old:
                bisect.insort(self._claims.setdefault(ref, []), path)
            refs |= old | new
            if state is not None and (state.pending or (state.error is not None and not state.services)):
                self._problems.add(path)
            else:
                self._problems.discard(path)
            if state is not None and (state.error or state.outage):
                self._erring.add(path)
            else:
                self._erring.discard(path)
        self._changed |= refs  # their served object may differ now: the reconciler gets them (take_changes)
        self._status_refs |= refs
        self._status_paths |= touched
        changed = False
        lost: set[Path] = set()
        for ref in refs:
            paths = self._claims.get(ref, [])
            current = self.served.get(ref)
            winner = current if current in paths else (paths[0] if paths else None)
            for other in self._losing.pop(ref, set()):
                self._lost[other].pop(ref, None)
                lost.add(other)
            if winner is None:
                if current is not None:
                    del self.served[ref]
                    changed = True
                continue
            if winner != current:
                self.served[ref] = winner
                changed = True
                if len(paths) > 1:
                    log.warning("duplicate VirtualService, serving the first seen object=%s served=%s ignored=%s", ref, winner, [str(p) for p in paths if p != winner])
            for other in paths:
                if other != winner:
                    self._lost.setdefault(other, {})[ref] = f"VirtualService {ref} is already served from {winner}; this copy in {other} is ignored"
                    self._losing.setdefault(ref, set()).add(other)
                    lost.add(other)
        for path in lost:
            reasons = self._lost.get(path)
            if reasons:
                self.duplicates[path] = reasons[max(reasons)]
            else:
                self._lost.pop(path, None)
                self.duplicates.pop(path, None)
        return changed

    def take_changes(self) -> tuple[dict[str, VirtualService | None], dict[str, tuple[Any, ...]]]:
        """What changed since the last call, for the node reconciler's update_objects: ref -> the
        object `services()` now gives for it (None: none), and each one's position in that
        list's order (path, then place in the file), which decides ties in age."""
        changed: dict[str, VirtualService | None] = {}
        order: dict[str, tuple[Any, ...]] = {}
        for ref in self._changed:
            found = self.served_entry(ref)
            if found is None:
                changed[ref] = None
            else:
                changed[ref], order[ref] = found
        self._changed = set()
        return changed, order

    def take_status_changes(self) -> tuple[set[Path], set[str]]:
        """What may have changed for a status report since the last call (independent of
        take_changes): the paths whose entry in `files` (present or not, error) may differ, and
        the refs whose object or place in `services()` may differ."""
        paths, refs = self._status_paths, self._status_refs
        self._status_paths, self._status_refs = set(), set()
        return paths, refs

    def served_entry(self, ref: str) -> tuple[VirtualService, tuple[Any, ...]] | None:
        """The object `services()` gives for ref and its place in that list (path parts, place in
        the file); None when it gives none."""
        path = self.served.get(ref)
        state = self.files.get(path) if path is not None else None
        if state is not None and not state.pending:
            for index, vs in enumerate(state.services):
                if vs.ref == ref:
                    return vs, (path.parts, index)  # type: ignore[union-attr]
        return None

    # -- what the folder declares ------------------------------------------------------

    def services(self) -> list[VirtualService]:
        """Every usable declared object once, from the path that serves it."""
        result: list[VirtualService] = []
        served = self.served
        for path, state in sorted(self.files.items(), key=lambda item: item[0].parts):  # path order, compared in C
            if state.pending:
                continue  # being rewritten: the kernel keeps what it has (see held())
            for vs in state.services:
                winner = served.get(vs.ref)
                if winner is path or winner == path:
                    result.append(vs)
        return result

    def _usable(self, ref: str) -> bool:
        path = self.served.get(ref)
        state = self.files.get(path) if path is not None else None
        return state is not None and not state.pending and any(vs.ref == ref for vs in state.services)

    def held(self) -> Held:
        """What the kernel must keep: objects declared where nothing usable can be read now.

        Looks only at the paths with a problem. `known` (every ref loaded at some point) is
        given only while something is unknown, the one case core.held reads it.
        """
        owners: set[str] = set()
        unknown = bool(self.folder_errors)
        for path in self._problems:
            state = self.files[path]
            owners |= {ref for ref in state.names if self.served.get(ref) == path}
            if state.pending or not state.names:
                unknown = True  # what this path declares is not known
        return Held(frozenset(ref for ref in owners if not self._usable(ref)), unknown, frozenset(self.ever) if unknown else frozenset())

    def held_services(self) -> tuple[list[VirtualService], bool]:
        """The last good definitions of what is held, and whether every held object has one.

        For what must be rendered from definitions rather than kept in the kernel (keepalived's
        configuration): while a file is being rewritten, its last good objects stand in.
        """
        held = self.held()
        found: dict[str, VirtualService] = {}
        for path in sorted(self._problems):
            state = self.files[path]
            if state.pending:
                for vs in state.services:
                    if self.served.get(vs.ref) == path:
                        found.setdefault(vs.ref, vs)
        return list(found.values()), not held.unknown and held.owners <= set(found)

    def errors(self) -> dict[str, str]:
        """Why something is not used: folders, then files in path order, then duplicate copies.
        Costs the errors, not the files."""
        problems = {str(folder): reason for folder, reason in self.folder_errors.items()}
        for path in sorted(self._erring):
            state = self.files[path]
            problems[str(path)] = state.outage or state.error  # type: ignore[assignment]
        for path, message in self.duplicates.items():
            problems.setdefault(str(path), message)
        return problems

    def pending(self) -> list[str]:
        return [str(path) for path in sorted(self._problems) if self.files[path].pending]
