"""The periodic resync's state: drift found, the VIPs still to plan again, and the audit's round.

Owns what a resync (`Reconciler.reconcile(full=True)`) keeps between reconciles: where a
fresh read differs from the cache (`drift`: drift made by hand, or a cache gone wrong),
the queue of drifted VIPs planned `resync_chunk` per reconcile so changes are served
between the parts (`replan`, with what the cache said they held, for the drift report),
and the audit: a rotating slice of VIPs (`audit_chunk` per resync) whose objects are
derived again from scratch and planned against the fresh read, so what the kernel and the
cache agree on but the objects do not (a missed change) is put right within
ceil(VIPs / slice) resyncs. Reporting what the repairs put back is here too.
Must not import: kopf, kubernetes, pyroute2, asyncio, vsop.adapters (it never sees a kernel).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
from dataclasses import replace
from typing import Any, Callable, Iterable

from vsop.core import ops
from vsop.core.drift import Repair, repairs
from vsop.core.fragments import Fragment, member_vip
from vsop.core.state import KernelState, Names
from vsop.node.objects import Objects
from vsop.node.whole import report_repairs

log = logging.getLogger("vsop.node")


def op_vip(op: ops.Op) -> str | None:
    """The VIP an operation is about; None for what every VIP shares."""
    if isinstance(op, (ops.AddService, ops.EditService)):
        return op.service.key.vip
    if isinstance(op, ops.DeleteService):
        return op.key.vip
    if isinstance(op, (ops.AddRealServer, ops.EditRealServer)):
        return op.real_server.key.service.vip
    if isinstance(op, ops.DeleteRealServer):
        return op.key.service.vip
    if isinstance(op, (ops.AddSetMember, ops.DeleteSetMember)):
        return member_vip(op.member)
    if isinstance(op, (ops.AddAddress, ops.DeleteAddress)):
        return op.address.split("/")[0]
    if isinstance(op, (ops.AddRoute, ops.DeleteRoute)):
        return op.prefix.split("/")[0]
    return None


def merged(a: KernelState, b: KernelState) -> KernelState:
    """Two cuts of one state around different VIPs, as one."""
    ipsets = dict(a.ipsets)
    for name, ipset in b.ipsets.items():
        before = ipsets.get(name)
        ipsets[name] = replace(ipset, members={**(before.members if before is not None else {}), **ipset.members})
    return replace(b, addresses=a.addresses | b.addresses, services={**a.services, **b.services},
                   real_servers={**a.real_servers, **b.real_servers}, ipsets=ipsets, routes=a.routes | b.routes)


def address_order(vip: str) -> tuple[int, int, str]:
    """IPv4 before IPv6, each by number: VIPs come up in the order a person lists them
    (169.254.2.1 before 169.254.10.1, which string order reverses); anything else last."""
    try:
        address = ipaddress.ip_address(vip)
    except ValueError:
        return 7, 0, vip
    return address.version, int(address), ""


def drift(fresh: KernelState, cached: KernelState, names: Names) -> tuple[set[str], bool] | None:
    """Where a fresh read differs from the cache: the VIPs whose IPVS services, real servers,
    set members or addresses differ, and whether vsop's chains, jumps or the sysctls do; None
    when vsop's link or a set's header does (planned whole: a set created again loses the
    members of every VIP). Costs a pass over the entries (by identity first: an adapter
    hands back the objects it parsed before), nothing of planning. Owners are not kernel
    attributes: ignored."""
    if fresh.link != cached.link or fresh.delegated != cached.delegated:
        return None
    shared = fresh.chains != cached.chains or fresh.jumps != cached.jumps or fresh.sysctls != cached.sysctls
    vips: set[str] = set()
    for name in names.owned_set_names():
        a, b = fresh.ipsets.get(name), cached.ipsets.get(name)
        if a is None or b is None:
            if a is not b:
                return None
            continue
        if a.header != b.header:
            return None
        if a.members is b.members or a.members == b.members:
            continue
        other = b.members
        for member, comment in a.members.items():
            if other.get(member) != comment:
                vips.add(member_vip(member))
        for member in other.keys() - a.members.keys():
            vips.add(member_vip(member))
    if fresh.addresses != cached.addresses:
        vips.update(address.split("/")[0] for address in fresh.addresses ^ cached.addresses)
    if fresh.routes != cached.routes:
        vips.update(route.split("/")[0] for route in fresh.routes ^ cached.routes)
    services, known = fresh.services, cached.services
    if services is not known and services != known:  # != in C: the same objects where nothing changed
        for key, service in services.items():
            was = known.get(key)
            if was is not service and (was is None or not service.same_kernel_config(was)):
                vips.add(key.vip)
        if len(services) != len(known) or vips:
            vips.update(key.vip for key in known.keys() - services.keys())
    real_servers, had = fresh.real_servers, cached.real_servers
    if real_servers is not had and real_servers != had:
        for rs_key, rs in real_servers.items():
            was_rs = had.get(rs_key)
            if was_rs is not rs and was_rs != rs:
                vips.add(rs_key.service.vip)
        vips.update(rs_key.service.vip for rs_key in had.keys() - real_servers.keys())
    return vips, shared


class Resync:
    """Drift still to plan and the audit's round, between reconciles."""

    def __init__(self, resync_chunk: int, audit_chunk: int | None, cold_chunk: int = 256):
        # A resync that finds drift on many VIPs plans at most this many per reconcile; the
        # rest wait in `replan` for the next ones, so a change is served between them.
        self.resync_chunk = max(1, resync_chunk)
        # Each resync also audits this many VIPs (default: resync_chunk; 0: none): their objects
        # re-derived from scratch and planned against the fresh read, whatever the cache says.
        self.audit_chunk = self.resync_chunk if audit_chunk is None else max(0, audit_chunk)
        # VIPs a resync found the kernel holding otherwise than the cache said, still to plan, and
        # what the cache said they held (for the drift report: vsop.core.drift).
        self.replan: set[str] = set()
        self.expected: KernelState | None = None
        # The first sync in parts: every VIP declared or found in the kernel, planned `cold_chunk`
        # per reconcile after the first (the chains, jumps, sets and sysctls are planned with any
        # VIPs, so the first part makes them). Nothing to report as drift: nothing was expected.
        # Changed in place only (the verdicts hold it: an object on a VIP still here is not programmed).
        self.cold_chunk = max(0, cold_chunk)  # 0: the first sync plans the whole node in one reconcile
        self.cold: set[str] = set()
        # The order the parts take them in: sorted once, so that which VIPs go together does not
        # depend on the interpreter's string hashing (a restart plans the same parts; tests replay).
        self._cold_order: list[str] = []
        self._cold_at = 0
        self.shared_drift = False  # the chains, jumps or sysctls too (reported at the next plan)
        # The audit's round: every VIP in a stable order, taken audit_chunk per resync.
        self._audit_round: list[str] = []
        self._audit_at = 0
        self.auditing: set[str] = set()  # this resync's slice, planned by the reconcile that read
        self.orphans: set[str] = set()  # fragments of objects gone (a missed removal): dropped by the round's first slice
        self.audit_repairs = 0  # writes audits made: the incremental path had left a VIP wrong

    def reset(self) -> None:
        """A whole plan: every VIP is planned now."""
        self.replan, self.expected, self.shared_drift = set(), None, False
        self.cold.clear()
        self._cold_order, self._cold_at = [], 0

    def take_cold(self, planned: set[str], part: bool = True) -> set[str]:
        """The first sync's next part (unless not `part`), and whatever of it `planned` (this
        reconcile's other VIPs) covers: none of them is left to plan again."""
        cold = self.cold
        if not cold:
            return set()
        taken = cold & planned
        cold -= taken
        if part:
            chunk = self._next_cold(max(1, self.cold_chunk))
            cold -= chunk
            taken |= chunk
        return taken

    def _next_cold(self, size: int) -> set[str]:
        """Up to `size` VIPs still in `cold`, in address order (each VIP looked at once over the
        whole first sync; VIPs added to `cold` after the order was made come after it)."""
        cold, chunk = self.cold, set()
        while len(chunk) < size:
            if self._cold_at >= len(self._cold_order):
                left = cold - chunk
                if not left:
                    break
                self._cold_order, self._cold_at = sorted(left, key=address_order), 0
            vip = self._cold_order[self._cold_at]
            self._cold_at += 1
            if vip in cold:
                chunk.add(vip)
        return chunk

    def found(self, vips: set[str], shared: bool, expected: KernelState) -> None:
        """Drift a resync found: `vips` to plan again, `expected` what the cache said they held."""
        if self.replan and self.expected is not None:  # a previous resync's VIPs not yet planned
            expected = merged(self.expected, expected)
        self.expected = expected
        self.replan |= vips
        self.shared_drift = self.shared_drift or shared

    def take(self) -> set[str]:
        """The next part of the VIPs a resync found drifted."""
        if len(self.replan) <= self.resync_chunk:
            taken, self.replan = self.replan, set()
        else:
            taken = set(itertools.islice(self.replan, self.resync_chunk))
            self.replan -= taken
        return taken

    def planned(self) -> None:
        """A plan went through: the chains, jumps and sysctls' drift is put back; once no VIP is
        left to plan again, what the cache said they held is no longer needed."""
        self.shared_drift = False
        if not self.replan:
            self.expected = None

    # -- the audit ---------------------------------------------------------------------------------

    def next_slice(self, vips: Callable[[], set[str]], gone: Callable[[], set[str]]) -> None:
        """The next `audit_chunk` VIPs of the audit's round, into `auditing`. The drift check only
        compares the kernel with the cache; a VIP where both agree but the incremental path left
        the desired state wrong (a missed change, a bug in a partial derivation) would stay wrong.
        So every resync also re-derives a slice of VIPs' objects from scratch and plans those
        VIPs against the fresh read: every VIP is audited level-based within
        ceil(VIPs / audit_chunk) resyncs (one found later within two rounds), at O(slice) per
        resync. kube-proxy's nftables proxier answers the same doubt with a full sync every
        hour (FullSyncPeriod), which here would hold changes behind a whole-node plan.
        A new round takes `vips()` (every VIP an object declares or the cache holds: an entry
        nobody declares any more is audited too), sorted once per round, and `gone()`: the
        fragments whose object is gone, dropped by the round's first slice."""
        if not self.audit_chunk:
            self.auditing = set()
            return
        if self._audit_at >= len(self._audit_round):
            self._audit_round, self._audit_at = sorted(vips()), 0
            self.orphans = gone()
        taken = self._audit_round[self._audit_at:self._audit_at + self.audit_chunk]
        self._audit_at += len(taken)
        self.auditing = set(taken)

    def audit(
        self,
        objects: Objects,
        derive: Callable[[], set[str]],
        verdict: Callable[[str], Any],
        stale: set[str],
        verdicts: dict[str, Any],
    ) -> set[str]:
        """Re-derive every object on this resync's slice from scratch (and their claim groups),
        and the orphans; `stale` gets those whose fragment differed from what was kept,
        `verdicts` what each object's verdict was. Returns the VIPs to plan."""
        audit, self.auditing = self.auditing, set()
        if not audit and not self.orphans:
            return set()
        refs = objects.on(audit)
        refs |= {ref for ref in self.orphans if ref not in objects.objects}
        self.orphans = set()
        before: dict[str, Fragment | None] = {}
        planned = set(audit)
        while refs:
            before.update((ref, objects.fragments.get(ref)) for ref in refs)
            verdicts.update((ref, verdict(ref)) for ref in refs)
            objects.dirty.update(refs)
            planned |= derive()
            # A stale fragment may sit on another VIP than its object now declares (the change
            # that moved it was missed): the VIPs it left are planned too, so every object on
            # them is derived again before the plan reads their fragments (O(slice)).
            refs = objects.on(planned) - before.keys()
        stale.update(ref for ref, piece in before.items() if objects.fragments.get(ref) != piece)
        return planned

    def report_audit(self, applied: Iterable[ops.Op], vips: set[str], observed: KernelState, want: KernelState) -> list[Repair]:
        """The writes on audited VIPs (not changed nor drifted meanwhile): the kernel held what the
        cache said, but not what a derivation from scratch wants. Reported as repairs."""
        mine = [op for op in applied if op_vip(op) in vips]
        if not mine:
            return []
        # Against the target itself: what was found differs from what is wanted now.
        found = repairs(mine, want, observed, want)
        self.audit_repairs += len(mine)
        for repair in found:
            log.info(
                "audit repaired: the kernel held what vsop had kept, not what its objects want object=%s change=%r found=%r put_back=%r",
                repair.obj or "-", f"{repair.op.kind} {repair.op.describe()}", repair.found, repair.wanted,
            )
        return found

    def report_repairs(self, applied: Iterable[ops.Op], vips: set[str], observed: KernelState, want: KernelState) -> list[Repair]:
        """The writes on `vips` (drifted, not changed meanwhile), and on the chains, jumps and
        sysctls when they drifted, that put back what changed behind vsop's back."""
        assert self.expected is not None
        shared = self.shared_drift
        mine = [op for op in applied if (vip := op_vip(op)) in vips or (vip is None and shared)]
        return report_repairs(mine, self.expected, observed, want) if mine else []
