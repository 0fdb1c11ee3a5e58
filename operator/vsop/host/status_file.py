"""The host agent's status file (`vsop show`'s view of it), kept pre-serialized so a write costs what changed.

Owns the JSON text of the status document: each section that grows with what the node
holds (files, objects, health targets, programmed objects, problems) is a list of JSON
entries kept in the section's order, one per key (path, ref, real server). Only the keys a
poll, a sync or a health result touched are serialized again; a write joins the cached
strings. The text is byte for byte what `json.dumps(document, separators=(",", ":"))` gives
for the document built from scratch (HostAgent.status), which the unit tests check after
random sequences of changes.

The caller hands over what changed (the folder source's take_status_changes, the refs a
reconcile touched, the health tracker's changed real servers); the small sections
(errors, pending, draining, the last sync's figures, kept, drift repairs, keepalived) are
serialized whole at each write.
Must not import: kopf, kubernetes, pyroute2.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from vsop.node.probes import Target
    from vsop.core.health import HealthTracker
    from vsop.core.state import RealServerKey
    from vsop.host.folder import FolderSource
    from vsop.node.reconciler import Reconciler

_encode = json.JSONEncoder(separators=(",", ":")).encode  # what json.dumps(..., separators=...) uses


def dumps(value: Any) -> str:
    return _encode(value)


class Entries:
    """JSON texts kept in the order of their keys; `text` is their join.

    The join is not kept between writes: it would be a second copy of every entry (3.4 MB of the
    status file's health section at 10,000 checked services, bench/agent_memory.py), while joining
    again costs one pass over text that the write copies into the document anyway.
    Entries put are gathered until the next `text` (or `len`): a few are then bisected into their
    places, many merged with the rest and sorted once. Put one by one, the first write after a
    first sync of 10,000 checked objects (50,000 entries) cost 0.46 s natively in bisects and list
    inserts (each insert moves the list's tail)."""

    def __init__(self) -> None:
        self._keys: list[Any] = []
        self._texts: list[str] = []
        self._pending: dict[Any, str | None] = {}  # key -> its entry now (None: none), not yet in place

    def __len__(self) -> int:
        self._settle()
        return len(self._keys)

    def put(self, key: Any, text: str | None) -> None:
        """The entry of key (None: no entry)."""
        self._pending[key] = text

    def clear(self) -> None:
        self._keys, self._texts, self._pending = [], [], {}

    def text(self) -> str:
        self._settle()
        return ",".join(self._texts)

    def _settle(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = {}
        keys, texts = self._keys, self._texts
        if len(pending) * 8 < len(keys):  # a few among many: each into its place (a change's write)
            for key, text in pending.items():
                at = bisect.bisect_left(keys, key)
                present = at < len(keys) and keys[at] == key
                if text is None:
                    if present:
                        del keys[at], texts[at]
                elif present:
                    texts[at] = text
                else:
                    keys.insert(at, key)
                    texts.insert(at, text)
            return
        merged = dict(zip(keys, texts))
        for key, text in pending.items():
            if text is None:
                merged.pop(key, None)
            else:
                merged[key] = text
        self._keys = sorted(merged)
        self._texts = [merged[key] for key in self._keys]


class StatusDocument:
    """The status file's text, updated from what changed (see the module docstring)."""

    def __init__(self) -> None:
        self.files = Entries()  # path parts -> "path":error
        self.objects = Entries()  # (path parts, place in the file, ref) -> "ref"
        self._object_at: dict[str, tuple[Any, ...]] = {}  # ref -> its key in objects
        # Real server (as `in_order`) -> {...}. Kept by a flat tuple, not the RealServerKey: bisect then
        # compares in C, where the dataclass's ordering built two tuples in Python per comparison (a
        # status file after a first sync of 10,000 checked objects: 0.93 s natively, 20,000 entries).
        self.health = Entries()
        # Real server -> its target, as the entries have them (update_health). No set of the targets
        # beside it: at 20,000 targets such a set is 1 MB (bench/agent_memory.py).
        self._target_of: dict[Any, Target] = {}
        self.programmed = Entries()  # ref -> "ref"
        self.problems = Entries()  # ref -> its problems, joined
        self._all_refs = True  # every object's verdict must be looked at (nothing rendered yet, a full sync)
        self._refs: set[str] = set()
        self.serialized = 0  # entries serialized so far (what a write cost, counted)

    # -- what changed -----------------------------------------------------------------------

    def update_files(self, source: FolderSource, paths: Iterable[Path], refs: Iterable[str]) -> None:
        """From the folder source, under its guard: the paths and refs of take_status_changes."""
        for path in paths:
            state = source.files.get(path)
            text = None
            if state is not None:
                text = dumps(str(path)) + ":" + dumps(state.error)
                self.serialized += 1
            self.files.put(path.parts, text)
        for ref in refs:
            found = source.served_entry(ref)
            # With the ref: another object may take this place in the same update.
            key = (*found[1], ref) if found is not None else None
            old = self._object_at.get(ref)
            if old is not None and old != key:
                self.objects.put(old, None)
                del self._object_at[ref]
            if key is not None and old != key:
                self.objects.put(key, dumps(ref))
                self._object_at[ref] = key
                self.serialized += 1

    def judged(self, refs: Iterable[str] | None) -> None:
        """Objects whose verdict (programmed, problems) a reconcile may have changed; None: any."""
        if refs is None:
            self._all_refs, self._refs = True, set()
        elif not self._all_refs:
            self._refs.update(refs)

    def update_verdicts(self, reconciler: Reconciler) -> None:
        if self._all_refs:
            self.programmed.clear()
            self.problems.clear()
            refs: Iterable[str] = reconciler.fragments
        else:
            refs = self._refs
        programmed = reconciler.programmed
        for ref in refs:
            if ref in programmed:
                self.programmed.put(ref, dumps(ref))
                self.serialized += 1
            elif not self._all_refs:
                self.programmed.put(ref, None)
            problems = reconciler.problems(ref)
            if problems:
                self.problems.put(ref, ",".join(dumps(p.__dict__) for p in problems))
                self.serialized += 1
            elif not self._all_refs:
                self.problems.put(ref, None)
        self._all_refs, self._refs = False, set()

    def update_health(self, targets: set[Target] | frozenset[Target], tracker: HealthTracker, changed: Iterable[Any],
                      target_changes: tuple[set[Target], set[Target]] | None = None) -> None:
        """The health targets now, and the real servers whose tracked health changed. `target_changes`:
        the targets added and removed since the last call (vsop.node.loop.NodeLoop.take_target_changes),
        so a turn costs what it changed; None: `targets` compared whole."""
        redo: dict[Any, Target] = {}
        if target_changes is None:
            before, now = set(self._target_of.values()), set(targets)
            removed, added = before - now, now - before
        else:
            added, removed = target_changes
        for target in removed:
            if self._target_of.get(target.key) == target:
                del self._target_of[target.key]
                self.health.put(in_order(target.key), None)
        for target in added:
            self._target_of[target.key] = redo[target.key] = target
        for key in changed:
            target = self._target_of.get(key)
            if target is not None:
                redo[key] = target
        for key, target in redo.items():
            self.health.put(in_order(key), dumps(health_entry(target, tracker)))
            self.serialized += 1

    # -- the document -----------------------------------------------------------------------

    def render(
        self,
        *,
        head: dict[str, Any],
        errors: dict[str, str],
        pending: list[str],
        draining: list[str],
        last: dict[str, Any],
        kept: list[str],
        drift: dict[str, Any],
        keepalived: Callable[[], dict[str, Any]] | None,
        bgp: Callable[[], dict[str, Any]] | None = None,
    ) -> str:
        head_text = dumps(head)
        if not last or "error" in last:
            last_text = dumps(last)
        else:
            last_text = (
                dumps(last)[:-1] + ',"programmed":[' + self.programmed.text() + '],"problems":[' + self.problems.text()
                + '],"kept":' + dumps(kept) + "}"
            )
        parts = [
            head_text[:-1],
            ',"files":{', self.files.text(), "}",
            ',"errors":', dumps(errors),
            ',"pending":', dumps(pending),
            ',"objects":[', self.objects.text(), "]",
            ',"health":[', self.health.text(), "]",
            ',"draining":', dumps(draining),
            ',"lastSync":', last_text,
            ',"driftRepairs":', dumps(drift),
        ]
        if keepalived is not None:
            parts += [',"keepalived":', dumps(keepalived())]
        if bgp is not None:
            parts += [',"bgp":', dumps(bgp())]
        parts.append("}")
        return "".join(parts)


def in_order(key: RealServerKey) -> tuple[str, str, int, str, int]:
    """A real server's key as a flat tuple that sorts as the key does (RealServerKey's dataclass order:
    its service's protocol, VIP and port, then address and port), the order of `vsop show`'s health."""
    service = key.service
    return service.protocol, service.vip, service.port, key.address, key.port


def health_entry(target: Target, tracker: HealthTracker) -> dict[str, Any]:
    state = tracker.states.get(target.key)
    return {
        "service": str(target.key.service),
        "realServer": str(target.key),
        "check": target.check.type,
        "healthy": state is None or state.healthy,
        "consecutiveFailures": state.failures if state is not None else 0,
        "lastError": state.last_error if state is not None else "",
    }
