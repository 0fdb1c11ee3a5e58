"""The node's kernel as last read plus every write made since, indexed so a change never scans all of it.

Owns `Cache.state` (None: read the kernel before planning), its VIP index (each VIP's
entries, vsop.core.fragments.vip_index, built once per full read and kept true per write),
the owners its set comments name (counted once per full read, kept per write), and the
ways it changes: a full read adopted, a change's writes applied in place (costing what
they wrote: the state is the reconciler's own copy, never copied whole per change), and
the draining real servers' counters read again.
Must not import: kopf, kubernetes, pyroute2, asyncio (the kernel is the Kernel port, injected).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Sequence

from vsop.adapters.base import OperationFailed
from vsop.adapters.kernel import Kernel
from vsop.core import ops
from vsop.core.draining import Draining
from vsop.core.fragments import VIPIndex, around, vip_index
from vsop.core.held import Held, kernel_owners
from vsop.core.memory import KernelRefused, apply_accepted, apply_in_place, owned_copy, taken_along
from vsop.core.state import KernelState, Names

log = logging.getLogger("vsop.node")


class Cache:
    """The cached kernel state and its indexes. `changes` counts the changes applied in place
    (with the state's identity, it says which state a reader has seen)."""

    def __init__(self, names: Names):
        self.names = names
        self.state: KernelState | None = None
        self.changes = 0
        # Owners named by the cached state's set comments (member count each), kept true per write.
        self._owner_members: Counter[str] = Counter()
        self._present: set[str] = set()
        self._owners_of: KernelState | None = None  # the cached state they describe
        self.vip_index: VIPIndex = {}
        self._index_of: KernelState | None = None  # the cached state the VIP index describes

    # -- the VIP index ----------------------------------------------------------------------------

    def index(self) -> VIPIndex:
        """The VIP index of the cached state (built once per read)."""
        assert self.state is not None
        if self._index_of is not self.state:
            self.vip_index, self._index_of = vip_index(self.state, self.names), self.state
        return self.vip_index

    def around(self, cut: frozenset[str]) -> KernelState:
        """`around(self.state, cut)` by lookups in the VIP index."""
        assert self.state is not None
        return around(self.state, cut, self.names, self.index())

    def before(self, vips: set[str]) -> KernelState:
        """What the cache says these VIPs hold (by the index only where it is built: a resync
        that found drift builds it again for the fresh read anyway)."""
        assert self.state is not None
        return around(self.state, vips, self.names, self.vip_index if self._index_of is self.state else None)

    def _reindex(self, cut: frozenset[str], after_cut: KernelState, applied: Sequence[ops.Op]) -> None:
        """Keep the index true for the planned VIPs after their writes (sets or the link gone: rebuild later)."""
        if self._index_of is None or any(isinstance(op, (ops.CreateSet, ops.DestroySet, ops.DeleteLink, ops.CreateLink)) for op in applied):
            self._index_of = None
            return
        fresh = vip_index(after_cut, self.names)
        for vip in cut:
            if vip in fresh:
                self.vip_index[vip] = fresh[vip]
            else:
                self.vip_index.pop(vip, None)
        self._index_of = self.state

    # -- the owners in the set comments ----------------------------------------------------------

    def present_owners(self) -> set[str]:
        """Owners named by the cached state's set comments: counted once per full read, then kept per write."""
        if self._owners_of is not self.state:
            assert self.state is not None
            self._owner_members = Counter({owner: len(members) for owner, members in kernel_owners(self.state, self.names).items()})
            self._present = set(self._owner_members)
            self._owners_of = self.state
        return self._present

    def kept_by(self, held: Held) -> frozenset[str]:
        """The kernel owners `held` would keep (held by name, or unaccounted for), over the cached state."""
        if not held:
            return frozenset()
        present = self.present_owners()
        keep = set(held.owners) & present
        if held.unknown:
            keep |= present - held.known
        return frozenset(keep)

    def _count_owners(self, applied: Sequence[ops.Op]) -> None:
        """Before `applied` goes into the cached state: what it does to the owners its members name."""
        assert self.state is not None
        owned_sets = self.names.owned_set_names()
        counts, present = self._owner_members, self._present

        def change(owner: str, by: int) -> None:
            if not owner:
                return
            counts[owner] += by
            if counts[owner] <= 0:
                del counts[owner]
                present.discard(owner)
            else:
                present.add(owner)

        written: dict[tuple[str, str], str | None] = {}  # members this batch changed -> their comment now

        def comment(set_name: str, member: str) -> str | None:
            if (set_name, member) in written:
                return written[(set_name, member)]
            ipset = self.state.ipsets.get(set_name) if self.state is not None else None
            return ipset.members.get(member) if ipset is not None else None

        for op in applied:
            if isinstance(op, ops.AddSetMember) and op.set_name in owned_sets:
                old = comment(op.set_name, op.member)
                if old is not None:
                    change(old, -1)
                change(op.comment, 1)
                written[(op.set_name, op.member)] = op.comment
            elif isinstance(op, ops.DeleteSetMember) and op.set_name in owned_sets:
                old = comment(op.set_name, op.member)
                if old is not None:
                    change(old, -1)
                written[(op.set_name, op.member)] = None
            elif isinstance(op, (ops.CreateSet, ops.DestroySet)):
                self._owners_of = None  # rare: count again when needed
                return

    # -- how the cached state changes ------------------------------------------------------------

    def drop(self) -> None:
        """Forget what the kernel holds: the next reconcile reads it again."""
        self.state = None

    def whole(self, observed: KernelState, applied: Sequence[ops.Op]) -> None:
        """After a whole-node sync: a copy of the read with its writes (the entries are the read's
        own objects, so the next resync's unchanged read compares by identity), indexed now so
        the first change after it stays cheap. None when the writes do not apply to the read."""
        try:
            self.state = apply_accepted(observed, applied)
        except (KernelRefused, KeyError):
            self.state = None
        if self.state is not None:
            self.vip_index, self._index_of = vip_index(self.state, self.names), self.state

    def adopt(self, fresh: KernelState, entries_changed: bool) -> None:
        """A resync's fresh read becomes the cache: the kernel's own objects, so the next resync
        compares them by identity where nothing changed. Without `entries_changed` (no VIP
        drifted) each VIP holds the same entries as before: the index and owner counts still hold."""
        old = self.state
        indexed, counted = self._index_of is old, self._owners_of is old
        self.state = owned_copy(fresh)
        if entries_changed:
            self.vip_index, self._index_of = vip_index(self.state, self.names), self.state
            self._owners_of = None
        else:
            if indexed:
                self._index_of = self.state
            if counted:
                self._owners_of = self.state

    def written(self, cut: frozenset[str], observed: KernelState, applied: Sequence[ops.Op]) -> None:
        """A change's writes on the VIPs of `cut` (`observed`: the cut they were planned against),
        applied in place. A cache that no longer matches what the kernel accepted is dropped."""
        assert self.state is not None
        after_cut = apply_accepted(observed, applied)
        try:
            # In place, costing what the change wrote: the cached state is the reconciler's own
            # copy (owned_copy at each full read), never a copy of all of it per change.
            if self._owners_of is self.state:
                self._count_owners(applied)
            counted = self._owners_of is self.state
            self.changes += 1
            self.state = apply_in_place(self.state, applied, taken_along(observed.real_servers, applied))
            self._owners_of = self.state if counted else None
        except (KernelRefused, KeyError):  # the cache no longer matches what the kernel accepted: read it again
            self.state = None
        else:
            self._reindex(cut, after_cut, applied)

    def refresh_draining(self, kernel: Kernel, draining: Draining) -> set[str]:
        """Fresh connection counters of the services with draining real servers (only those are
        dumped). Returns their VIPs; a failed read drops the cache (and returns none)."""
        services = {key.service for key in draining.since}
        assert self.state is not None
        try:
            fresh = kernel.ipvs.read_real_servers(services)
        except (OperationFailed, OSError) as exc:
            log.warning("reading draining real servers failed, will read everything error=%r", str(exc))
            self.state = None
            return set()
        vips = {key.vip for key in services}
        real_servers: Any = self.state.real_servers  # the reconciler's own copy: changed in place
        indexed = self._index_of is self.state
        for vip in vips:
            entry = self.vip_index.get(vip) if indexed else None
            known = entry[1] if entry is not None else [k for k in real_servers if k.service.vip == vip]
            for key in known:
                if key.service in services:
                    real_servers.pop(key, None)
            if entry is not None:
                entry[1][:] = [k for k in known if k.service not in services] + [k for k in fresh if k.service.vip == vip]
        real_servers.update(fresh)
        self.changes += 1
        return vips
