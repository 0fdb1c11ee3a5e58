"""The node reconciler: every VirtualService of one node, kept true on its kernel at the cost of each change.

Owns, for one node: the objects its source declares, one desired `Fragment` per object,
the conflict verdicts, health (which real servers checks took out), draining (the
engine's execute forgets removed UDP real servers' conntrack entries), and `observed`: the kernel state it last read plus every write it
made since. A change re-derives only the objects it touches (and those sharing a
VIP:port with them), plans only their VIPs against `observed`, and writes the
difference; a health result is therefore one weight edit. A resync
(`reconcile(full=True)`, the agents run one every 30 s) reads the kernel again, compares
it with `observed` and plans the VIPs where they differ (drift made by hand) like a
change, `resync_chunk` VIPs per reconcile, so changes are served between its parts
(`replanning` says more are due); it plans nothing else when nothing differs. Each resync
also audits a rotating slice of VIPs (`audit_chunk`): their objects re-derived from scratch
and planned against the fresh read, so what the kernel and the cache agree on but the
objects do not (a missed change) is put right within ceil(VIPs / slice) resyncs. The first
reconcile, one after any failed or partial write (which drops `observed`), and a resync
that finds vsop's link or a set's header changed plan the whole node through
`engine.sync`, the same path `vsop apply` takes.
Sources (host folder, kopf indexes) and sinks (status file, Kubernetes status) are
the agents' business: this module neither reads files nor talks to an API server.
Must not import: kopf, kubernetes, pyroute2, asyncio (adapters are injected; it blocks).
"""

from __future__ import annotations

import logging
import itertools
import time
from collections import Counter
import ipaddress
from dataclasses import dataclass, field, replace
from typing import AbstractSet, Any, Callable, Collection, Iterable, Mapping, Sequence

from vsop.adapters.base import OperationFailed
from vsop.core import ops
from vsop.core.drift import Repair, repairs
from vsop.core.desired import Desired, Endpoint, Node, Problem, resolve_conflicts
from vsop.core.draining import Draining, with_draining
from vsop.core.held import Held, held_owners, kernel_owners
from vsop.core.fragments import Fragment, VIPIndex, around, member_vip, assemble, desired_from, fragment, grace_of, refused, shared_state, vip_index
from vsop.core.memory import KernelRefused, apply_accepted, apply_in_place, owned_copy, taken_along
from vsop.core.plan import Plan, PlanError
from vsop.core.state import KernelState, Names, RealServerKey
from vsop.adapters.kernel import Kernel, read_observed
from vsop.node.execute import ExecutionFailed, execute
from vsop.node.whole import program, report_repairs, sync
from vsop.api.errors import KernelUnsupported
from vsop.api.model import VirtualService

log = logging.getLogger("vsop.node")

Claim = tuple[str, int, str]  # (vip, port, protocol)


@dataclass
class Outcome:
    """What one reconcile did."""

    full: bool  # a full read of the kernel (resync, first run, after a failure)
    plan: Plan = field(default_factory=lambda: Plan(()))
    writes: int = 0
    applied: list[ops.Op] = field(default_factory=list)
    error: str | None = None
    after: KernelState | None = None  # re-read after a failure: what actually got programmed
    skipped: bool = False  # full read found nothing of vsop's changed, the audit nothing wrong: nothing written
    audited: int = 0  # VIPs a resync's audit re-derived from scratch and planned (see Reconciler._audit_slice)
    objects: int = 0  # objects re-derived
    vips: int = 0  # VIPs planned (incremental)
    seconds: float = 0.0
    read_seconds: float = 0.0
    plan_seconds: float = 0.0
    execute_seconds: float = 0.0
    conntrack_failures: list[str] = field(default_factory=list)  # removed UDP real servers whose entries stay
    repairs: list[Repair] = field(default_factory=list)  # drift a full sync put back (vsop.core.drift)
    # Objects whose fragment, problems or kernel state this reconcile may have changed (those
    # on the VIPs it planned); None after a full sync: any of them. A source's status sink
    # re-reports only these (an object gone from the source is the source's to report).
    touched: frozenset[str] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _claims(vs: VirtualService) -> set[Claim]:
    return {(vs.spec.vip, port.port, port.protocol) for port in vs.spec.ports}


def _refs(index: Mapping[Any, str | set[str]], key: Any) -> Collection[str]:
    """The refs an index holds under `key` (one ref is kept as the string itself)."""
    found = index.get(key)
    if found is None:
        return ()
    return (found,) if isinstance(found, str) else found


def _add(index: dict[Any, str | set[str]], key: Any, ref: str) -> None:
    found = index.get(key)
    if found is None:
        index[key] = ref
    elif isinstance(found, str):
        if found != ref:
            index[key] = {found, ref}
    else:
        found.add(ref)


def _discard(index: dict[Any, str | set[str]], key: Any, ref: str) -> None:
    found = index.get(key)
    if found is None:
        return
    if isinstance(found, str):
        if found == ref:
            del index[key]
        return
    found.discard(ref)
    if len(found) == 1:
        index[key] = next(iter(found))
    elif not found:
        del index[key]


def _normalized(address: str) -> str:
    text = address.split("/")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _service_ref(vs: VirtualService) -> tuple[str, str] | None:
    ref = vs.spec.service_ref
    return (vs.metadata.namespace, ref.name) if ref is not None else None


def _op_vip(op: ops.Op) -> str | None:
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


def _merged(a: KernelState, b: KernelState) -> KernelState:
    """Two cuts of one state around different VIPs, as one."""
    ipsets = dict(a.ipsets)
    for name, ipset in b.ipsets.items():
        before = ipsets.get(name)
        ipsets[name] = replace(ipset, members={**(before.members if before is not None else {}), **ipset.members})
    return replace(b, addresses=a.addresses | b.addresses, services={**a.services, **b.services},
                   real_servers={**a.real_servers, **b.real_servers}, ipsets=ipsets, routes=a.routes | b.routes)


class Reconciler:
    """One node's kernel, reconciled from whatever its source declares. Not thread-safe: one caller at a time."""

    def __init__(
        self,
        kernel: Kernel,
        node: Node,
        *,
        names: Names = Names(),
        kernel_version: tuple[int, int] | None = None,
        extra_node_addresses: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        keep_accept_ra: bool = False,
        resync_chunk: int = 256,
        audit_chunk: int | None = None,
    ):
        self.kernel = kernel
        # A resync that finds drift on many VIPs plans at most this many per reconcile; the
        # rest wait in `_replan` for the next ones, so a change is served between them.
        self.resync_chunk = max(1, resync_chunk)
        # Each resync also audits this many VIPs (default: resync_chunk; 0: none): their objects
        # re-derived from scratch and planned against the fresh read, whatever the cache says.
        self.audit_chunk = self.resync_chunk if audit_chunk is None else max(0, audit_chunk)
        # Never change accept_ra: IPv6 VIPs whose forwarding would stop router advertisements
        # are refused (RouterAdvertisements), as `vsop apply --keep-accept-ra` refuses them.
        self.keep_accept_ra = keep_accept_ra
        self.node = node
        self.names = names
        self.kernel_version = kernel_version
        self.extra_node_addresses = frozenset(extra_node_addresses)
        self.clock = clock
        # inputs
        self.objects: dict[str, VirtualService] = {}
        self._order: dict[str, tuple[str, Any, str]] = {}  # ref -> (creationTimestamp, position in the source, ref)
        self._next_position = 0  # update_objects' default position: after every object seen so far
        self.endpoints: dict[tuple[str, str], tuple[Endpoint, ...]] = {}
        self.out_of_service: frozenset[RealServerKey] = frozenset()
        self.reserved: dict[str, str] = {}  # address -> whose (the API server's): refused as a VIP
        self.announcing = True  # False while the node is drained: no VIP announced over BGP
        # derived, kept per object
        self.fragments: dict[str, Fragment] = {}
        # One ref, or a set of them where several share the key (rare): a set per VIP and per
        # claim was 216 bytes x 20,000 on a node of 10,000 objects (see _refs).
        self._claimants: dict[Claim, str | set[str]] = {}
        self._by_vip: dict[str, str | set[str]] = {}  # every object, by VIP
        self._by_service_ref: dict[tuple[str, str], set[str]] = {}
        self._by_backend: dict[str, set[str]] = {}  # static backend address -> objects: a VIP appearing there refuses them
        self._families: Counter[int] = Counter()
        self._arp = 0
        self._bound: Counter[str] = Counter()
        self.configured: dict[RealServerKey, str] = {}  # every configured real server -> its object
        self._node_addresses: frozenset[str] = frozenset()  # what the fragments were derived with
        self._dirty: set[str] = set()
        self._new_objects: dict[str, VirtualService] | None = None  # set_objects' input, adopted at the next reconcile
        self._derived = 0  # objects re-derived by the last _derive
        self._shared_dirty = True
        # the kernel as last read plus what was written since; None: read it before planning
        self.observed: KernelState | None = None
        self.plan_problems: dict[str, tuple[Problem, ...]] = {}  # vip -> problems the plan found (VIPInUse)
        self.left_alone: set[str] = set()  # VIPs the last plans left alone (someone else's IPVS services on them)
        self.draining = Draining()
        # Objects declared but unusable (invalid, unreadable): the kernel keeps what it has for
        # them, decided from the owners in the set comments, so it survives restarts (core.held).
        self.held = Held()
        self.held_problems: dict[str, Problem] = {}  # ref -> refused: it claims what a held owner serves
        # Objects whose state is in the kernel as declared: their fragment is programmed and
        # neither a held owner nor the last plan of their VIP refused them. Kept per change.
        self._programmed: set[str] = set()
        self._force_full = False
        # Owners named by the cached state's set comments (member count each), kept true per write.
        self._owner_members: Counter[str] = Counter()
        self._present: set[str] = set()
        self._owners_of: KernelState | None = None  # the cached state they describe
        self._vip_index: VIPIndex = {}
        self._index_of: KernelState | None = None  # the cached state the VIP index describes
        self._held_vips: frozenset[str] = frozenset()  # where held owners have members (read at the last full sync)
        # VIPs a resync found the kernel holding otherwise than the cache said, still to plan, and
        # what the cache said they held (for the drift report: vsop.core.drift).
        self._replan: set[str] = set()
        self._expected: KernelState | None = None
        self._shared_drift = False  # the chains, jumps or sysctls too (reported at the next plan)
        # The audit's round: every VIP in a stable order, taken audit_chunk per resync.
        self._audit_round: list[str] = []
        self._audit_at = 0
        self._auditing: set[str] = set()  # this resync's slice, planned by the reconcile that read
        self._orphans: set[str] = set()  # fragments of objects gone (a missed removal): dropped by the round's first slice
        self.audit_repairs = 0  # writes audits made: the incremental path had left a VIP wrong
        self.reads = 0  # full reads of the kernel
        self.changes = 0  # changes applied in place to `observed` (with its identity: which state it is)
        self.last: Outcome | None = None

    # -- inputs -----------------------------------------------------------------------------------

    def set_objects(self, services: Sequence[VirtualService]) -> int:
        """Everything the source declares, in its order (ties in age go to the first). Returns objects changed."""
        current: dict[str, VirtualService] = {}
        order: dict[str, tuple[str, int, str]] = {}
        previous = self.objects
        changed = 0
        for vs in services:
            ref = vs.ref  # a computed property: once per object
            if ref in current:
                continue
            current[ref] = vs
            order[ref] = (vs.metadata.creation_timestamp or "", len(order), ref)
            old = previous.get(ref)
            if old is not vs and old != vs:
                self._dirty.add(ref)
                changed += 1
        if len(previous) + changed != len(current) or changed:  # something may be gone
            for ref in previous.keys() - current.keys():
                self._dirty.add(ref)
                changed += 1
        self._order = order
        self._next_position = len(order)
        self._new_objects = current
        return changed

    def update_objects(self, changed: Mapping[str, VirtualService | None], *, order: Mapping[str, Any] | None = None) -> int:
        """Only what changed in the source: ref -> its object now, or None when it is gone. Returns objects changed.

        Costs what the change is, whatever the node holds (set_objects compares the whole
        list). Ties in age go to the first in the source's order: `order` gives the changed
        objects' positions in it (ref -> any value comparable with the others'; give it
        always or never); without it a new object comes after every object seen so far and
        an updated one keeps its place.
        """
        if self._new_objects is not None:  # a whole list given before and not yet adopted
            self._adopt(self._new_objects)
            self._new_objects = None
        count = 0
        for ref, vs in changed.items():
            old = self.objects.get(ref)
            if vs is None:
                if old is None:
                    continue
                self._forget_object(old)
                del self.objects[ref]
                self._order.pop(ref, None)
                self._dirty.add(ref)
                count += 1
                continue
            if vs.ref != ref:
                raise ValueError(f"update_objects: {vs.ref} given as {ref}")
            if order is not None and ref in order:
                position = order[ref]
            elif ref in self._order:
                position = self._order[ref][1]
            else:
                position, self._next_position = self._next_position, self._next_position + 1
            rank = (vs.metadata.creation_timestamp or "", position, ref)
            if old is not None and (old is vs or old == vs) and self._order.get(ref) == rank:
                continue
            self._order[ref] = rank
            if old is not None:
                self._forget_object(old)
            self._remember_object(ref, vs)
            self.objects[ref] = vs
            self._dirty.add(ref)
            count += 1
        return count

    def set_endpoints(self, endpoints: Mapping[tuple[str, str], Iterable[Endpoint]]) -> None:
        """The endpoints of every serviceRef (missing key: none)."""
        fresh = {key: tuple(value) for key, value in endpoints.items()}
        for key in self.endpoints.keys() | fresh.keys():
            if self.endpoints.get(key, ()) != fresh.get(key, ()):
                self._dirty |= self._by_service_ref.get(key, set())
        self.endpoints = fresh

    def update_endpoints(self, changed: Mapping[tuple[str, str], Iterable[Endpoint] | None]) -> None:
        """Only the serviceRefs whose endpoints changed (None or empty: none now); the others stay."""
        for key, value in changed.items():
            fresh = tuple(value) if value is not None else ()
            if self.endpoints.get(key, ()) != fresh:
                self._dirty |= self._by_service_ref.get(key, set())
            if fresh:
                self.endpoints[key] = fresh
            else:
                self.endpoints.pop(key, None)

    def set_node(self, node: Node, extra_node_addresses: Iterable[str] | None = None) -> None:
        if node != self.node:
            self._dirty |= set(self.objects) | set(self._new_objects or {})
            self.node = node
        if extra_node_addresses is not None:
            self.extra_node_addresses = frozenset(extra_node_addresses)

    def set_announcing(self, announcing: bool) -> None:
        """Whether this node asks BGP to attract its VIPs (False: the node is being drained)."""
        if announcing != self.announcing:
            self._dirty.update(ref for ref, vs in self.objects.items() if vs.spec.announce == "bgp")
            self.announcing = announcing

    def set_reserved(self, reserved: Mapping[str, str]) -> None:
        """Addresses something the node depends on uses (the API server's), refused as VIPs: address -> whose."""
        fresh = {_normalized(address): whose for address, whose in reserved.items()}
        for address in self.reserved.keys() | fresh.keys():
            if self.reserved.get(address) != fresh.get(address):
                self._dirty.update(_refs(self._by_vip, address))
        self.reserved = fresh

    def set_out_of_service(self, keys: frozenset[RealServerKey]) -> None:
        """The real servers health checks took out; each flip re-derives its one object."""
        for key in keys ^ self.out_of_service:
            owner = self.configured.get(key)
            if owner is not None:
                self._dirty.add(owner)
        self.out_of_service = frozenset(keys)

    def set_held(self, held: Held) -> None:
        """Owners declared but unusable now. When that changes and, before or after, some owner in
        the kernel is (or was) kept, the next reconcile re-reads and re-plans everything; when
        nothing in the kernel is kept either way (a host's new file not yet stable makes
        everything "unknown" for one poll, though every owner in the kernel is accounted for),
        the change path goes on."""
        # `known` (what the source accounts for) matters only while something is unreadable.
        def key(h: Held) -> tuple[Any, ...]:
            return (h.owners, h.unknown, h.known if h.unknown else frozenset())

        if key(held) != key(self.held) and (self.observed is None or self._kept_by(held) or self._kept_by(self.held)):
            self._force_full = True
        self.held = held

    def _kept_by(self, held: Held) -> frozenset[str]:
        """The kernel owners `held` would keep (held by name, or unaccounted for), over the cached state."""
        if not held:
            return frozenset()
        present = self._present_owners()
        keep = set(held.owners) & present
        if held.unknown:
            keep |= present - held.known
        return frozenset(keep)

    def kept_owners(self) -> frozenset[str]:
        """The kernel owners kept as the kernel has them now (core.held.held_owners over the cached state)."""
        if not self.held or self.observed is None:
            return frozenset()
        return frozenset(ref for ref in self._kept_by(self.held) if ref not in self._programmed)

    def _present_owners(self) -> set[str]:
        """Owners named by the cached state's set comments: counted once per full read, then kept per write."""
        if self._owners_of is not self.observed:
            assert self.observed is not None
            self._owner_members = Counter({owner: len(members) for owner, members in kernel_owners(self.observed, self.names).items()})
            self._present = set(self._owner_members)
            self._owners_of = self.observed
        return self._present

    def _count_owners(self, applied: Sequence[ops.Op]) -> None:
        """Before `applied` goes into the cached state: what it does to the owners its members name."""
        assert self.observed is not None
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
            ipset = self.observed.ipsets.get(set_name) if self.observed is not None else None
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

    @property
    def pending(self) -> bool:
        return bool(self._dirty) or self.observed is None or bool(self._replan)

    @property
    def replanning(self) -> bool:
        """A resync found drift on more VIPs than one reconcile plans: call reconcile() again soon."""
        return bool(self._replan)

    # -- derivation ----------------------------------------------------------------------------------

    def _ordered(self, refs: Iterable[str]) -> list[str]:
        return sorted(refs, key=lambda ref: self._order[ref])

    def _derive(self, node_addresses: frozenset[str]) -> set[str]:
        """Apply pending object changes; re-derive the objects they touch. Returns the VIPs whose desired state may differ."""
        if self._new_objects is not None:
            self._adopt(self._new_objects)
            self._new_objects = None
        if node_addresses != self._node_addresses:
            for address in node_addresses ^ self._node_addresses:
                self._dirty.update(_refs(self._by_vip, _normalized(address)))
            self._node_addresses = node_addresses
        self._derived = 0
        if not self._dirty:
            return set()
        # Conflicts chain through shared VIP:port claims: re-judge the whole connected group.
        group: set[str] = set()
        todo = [ref for ref in self._dirty]
        while todo:
            ref = todo.pop()
            if ref in group:
                continue
            group.add(ref)
            vs = self.objects.get(ref)
            if vs is None:
                continue
            for claim in _claims(vs):
                todo.extend(other for other in _refs(self._claimants, claim) if other not in group)
        present = [ref for ref in group if ref in self.objects]
        _, problems = resolve_conflicts([self.objects[ref] for ref in self._ordered(present)])
        lost = {problem.obj: problem for problem in problems}
        vips: set[str] = set()
        derived = 0
        for ref in group:
            old = self.fragments.get(ref)
            vs = self.objects.get(ref)
            if vs is None:
                new = None
            elif ref in lost:
                new = refused(vs, lost[ref])
            elif ref in self._dirty or old is None or old.problems[:1] and old.problems[0].reason == "Conflict":
                new = fragment(
                    vs,
                    self.node,
                    names=self.names,
                    endpoints=self._endpoints_of(vs),
                    node_addresses=node_addresses,
                    reserved={vs.spec.vip: self.reserved[vs.spec.vip]} if vs.spec.vip in self.reserved else None,
                    out_of_service=self.out_of_service,
                    vip_owners=self._vips_hit(vs),
                    announcing=self.announcing,
                )
                derived += 1
            else:
                continue  # a winner that stays one, unchanged
            if old is not None:
                self._unindex(old)
                vips.add(old.vip)
            if new is not None:
                self._index(new)
                self.fragments[ref] = new
                vips.add(new.vip)
            else:
                self.fragments.pop(ref, None)
        self._judge(group)
        self._dirty.clear()
        self._derived = derived
        return vips

    def _vips_hit(self, vs: VirtualService) -> dict[str, str]:
        """Its static backends that are other objects' VIPs -> the first such object (BackendIsVIP)."""
        hit: dict[str, str] = {}
        for backend in vs.spec.backends:
            owners = _refs(self._by_vip, backend.address)
            if owners:
                hit[backend.address] = min(owners, key=lambda ref: self._order[ref])
        return hit

    def _endpoints_of(self, vs: VirtualService) -> Mapping[tuple[str, str], Iterable[Endpoint]]:
        key = _service_ref(vs)
        return {key: self.endpoints.get(key, ())} if key is not None else {}

    def _adopt(self, current: dict[str, VirtualService]) -> None:
        """Swap in the source's objects, keeping the claim, VIP and serviceRef indexes."""
        for ref in self.objects.keys() - current.keys():
            self._forget_object(self.objects[ref])
        for ref, vs in current.items():
            old = self.objects.get(ref)
            if old is vs:
                continue
            if old is not None:
                self._forget_object(old)
            self._remember_object(ref, vs)
        self.objects = current

    def _remember_object(self, ref: str, vs: VirtualService) -> None:
        for claim in _claims(vs):
            _add(self._claimants, claim, ref)
        _add(self._by_vip, vs.spec.vip, ref)
        self._dirty |= self._by_backend.get(vs.spec.vip, set())  # a VIP appeared where they send traffic
        for backend in vs.spec.backends:
            self._by_backend.setdefault(backend.address, set()).add(ref)
        key = _service_ref(vs)
        if key is not None:
            self._by_service_ref.setdefault(key, set()).add(ref)

    def _forget_object(self, vs: VirtualService) -> None:
        """Index entries of an object's old version; its claimants are kept in the dirty group first."""
        ref = vs.ref
        for claim in _claims(vs):
            self._dirty.update(_refs(self._claimants, claim))  # others on the claim may win now
            _discard(self._claimants, claim, ref)
        _discard(self._by_vip, vs.spec.vip, ref)
        self._dirty |= self._by_backend.get(vs.spec.vip, set())  # their backend may be usable again
        for backend in vs.spec.backends:
            pointing = self._by_backend.get(backend.address)
            if pointing is not None:
                pointing.discard(ref)
                if not pointing:
                    del self._by_backend[backend.address]
        key = _service_ref(vs)
        if key is not None and key in self._by_service_ref:
            self._by_service_ref[key].discard(ref)
            if not self._by_service_ref[key]:
                del self._by_service_ref[key]

    def _index(self, piece: Fragment) -> None:
        if piece.family is not None:
            self._families[piece.family] += 1
        self._arp += piece.arp
        for address in piece.addresses:
            self._bound[address] += 1
        self.configured.update(dict.fromkeys(piece.configured_keys, piece.ref))

    def _unindex(self, piece: Fragment) -> None:
        if piece.family is not None:
            self._families[piece.family] -= 1
            if not self._families[piece.family]:
                del self._families[piece.family]
        self._arp -= piece.arp
        for address in piece.addresses:
            self._bound[address] -= 1
            if not self._bound[address]:
                del self._bound[address]
        for key in piece.configured_keys:
            if self.configured.get(key) == piece.ref:
                del self.configured[key]

    def _bound_vips(self) -> Iterable[str]:
        return (address.split("/")[0] for address in self._bound)

    def shared(self) -> KernelState:
        """What every VIP shares (link, set headers, constant chains and jumps, sysctls) for the objects now programmed."""
        return shared_state(self.names, self._families, arp=self._arp > 0, bound=bool(self._bound), kernel_version=self.kernel_version)

    def _pieces(self, vips: Iterable[str] | None = None) -> list[Fragment]:
        """Fragments in conflict order: all of them, or those on some VIPs."""
        if vips is None:
            refs: Iterable[str] = self.fragments
        else:
            refs = {ref for vip in vips for ref in _refs(self._by_vip, vip) if ref in self.fragments}
        return [self.fragments[ref] for ref in self._ordered(refs)]

    def desired(self) -> Desired:
        """The node's whole desired state (before draining), as desired_state would compute it."""
        return desired_from(self.shared(), self._pieces())

    @property
    def programmed(self) -> AbstractSet[str]:
        """The objects whose state is in the kernel as declared (read-only; kept true per change, not computed per call)."""
        return self._programmed

    def _is_programmed(self, ref: str) -> bool:
        piece = self.fragments.get(ref)
        return (
            piece is not None
            and piece.programmed
            and ref not in self.held_problems
            and not any(p.obj == ref for p in self.plan_problems.get(piece.vip, ()))  # VIPInUse, RouterAdvertisements
        )

    def _judge(self, refs: Iterable[str]) -> None:
        """`programmed` made true again for `refs` (those whose fragment, held or plan verdict just changed)."""
        for ref in refs:
            if self._is_programmed(ref):
                self._programmed.add(ref)
            else:
                self._programmed.discard(ref)

    def problems(self, ref: str) -> tuple[Problem, ...]:
        """Why an object is not (or not wholly) programmed: from its derivation and the last plan of its VIP."""
        piece = self.fragments.get(ref)
        if piece is None:
            return ()
        held = (self.held_problems[ref],) if ref in self.held_problems else ()
        return piece.problems + held + tuple(p for p in self.plan_problems.get(piece.vip, ()) if p.obj == ref)

    # -- reconcile -----------------------------------------------------------------------------------

    def reconcile(self, *, full: bool = False) -> Outcome:
        """Incremental when possible; a whole plan first, after any failure or when what is held
        changed. `full`: a resync: read the kernel again and plan the VIPs where it differs from
        the cache (drift), at most `resync_chunk` of them now (see `replanning`)."""
        if self.observed is None or self._force_full:
            outcome = self._full()
        elif full:
            outcome = self._resync()
        else:
            outcome = self._incremental(Outcome(full=False), time.monotonic())
        self.last = outcome
        return outcome

    def _read(self, outcome: Outcome, started: float) -> KernelState | None:
        try:
            observed = read_observed(self.kernel, self.names)
        except (OperationFailed, KernelUnsupported, OSError) as exc:
            self.observed = None
            outcome.error = f"reading the kernel: {exc}"
            outcome.seconds = time.monotonic() - started
            return None
        self.reads += 1
        outcome.read_seconds = time.monotonic() - started
        return observed

    def _full(self) -> Outcome:
        started = time.monotonic()
        outcome = Outcome(full=True)
        observed = self._read(outcome, started)
        return outcome if observed is None else self._whole(outcome, observed, started)

    def _resync(self) -> Outcome:
        """The periodic level-based resync, in parts. Reads the whole kernel (the only part that
        costs what the node holds) and compares it with the cache: the VIPs where they differ
        (drift made by hand, or a cache gone wrong) are planned from the fresh read like a
        change, `resync_chunk` at a time, each part its own reconcile, so changes that arrive
        meanwhile are served between the parts (controller-runtime's resync queues every object
        behind the changes; kube-proxy's nftables proxier repairs what a partial sync missed).
        Drift in the chains, jumps or sysctls is planned with the first part (they are planned
        whole with any VIPs); when vsop's link or a set's header differs, the node is planned
        whole through engine.sync, as after a failure."""
        started = time.monotonic()
        outcome = Outcome(full=True)
        fresh = self._read(outcome, started)
        if fresh is None:
            return outcome
        old = self.observed
        assert old is not None
        found = self._drift(fresh, old)
        if found is None:
            log.info("resync: vsop's link or sets differ from what vsop left, planning everything")
            return self._whole(outcome, fresh, started)
        drift, shared = found
        indexed = self._index_of is old
        counted = self._owners_of is old
        if drift or shared:
            log.info("resync: the kernel differs from what vsop left, planning the difference again vips=%d shared=%s", len(drift), shared)
            # What vsop believed those VIPs (and the chains, jumps and sysctls) held.
            expected = around(old, drift, self.names, self._vip_index if indexed else None)
            if self._replan and self._expected is not None:  # a previous resync's VIPs not yet planned
                expected = _merged(self._expected, expected)
            self._expected = expected
            self._replan |= drift
            # Chains, jumps and sysctls are planned whole with any VIPs (core.fragments.around):
            # the next part plans them even when no VIP is due.
            self._shared_dirty = self._shared_dirty or shared
            self._shared_drift = self._shared_drift or shared
        # The fresh read is the cache from now on: the kernel's own objects, so the next
        # resync compares them by identity where nothing changed.
        self.observed = owned_copy(fresh)
        if drift:
            self._vip_index, self._index_of = vip_index(self.observed, self.names), self.observed
            self._owners_of = None
            if self.held:
                self._held_vips = self._vips_of_held(self.observed)
        else:
            # The same entries per VIP as before: the index and the owner counts still hold.
            if indexed:
                self._index_of = self.observed
            if counted:
                self._owners_of = self.observed
        self._auditing = self._audit_slice()
        return self._incremental(outcome, started)

    def _audit_slice(self) -> set[str]:
        """The next `audit_chunk` VIPs of the audit's round. The drift check above only compares
        the kernel with the cache; a VIP where both agree but the incremental path left the
        desired state wrong (a missed change, a bug in a partial derivation) would stay wrong.
        So every resync also re-derives a slice of VIPs' objects from scratch and plans those
        VIPs against the fresh read: every VIP is audited level-based within
        ceil(VIPs / audit_chunk) resyncs (one found later within two rounds), at O(slice) per
        resync. kube-proxy's nftables proxier answers the same doubt with a full sync every
        hour (FullSyncPeriod), which here would hold changes behind a whole-node plan."""
        if not self.audit_chunk:
            return set()
        if self._audit_at >= len(self._audit_round):
            # A new round: every VIP an object declares or the cache holds (an entry nobody
            # declares any more is audited too). Sorted once per round, not per resync.
            vips = set(self._by_vip)
            if self.observed is not None:
                if self._index_of is not self.observed:  # (as _around would: once per read)
                    self._vip_index, self._index_of = vip_index(self.observed, self.names), self.observed
                vips.update(self._vip_index)
            self._audit_round, self._audit_at = sorted(vips), 0
            self._orphans = self.fragments.keys() - self.objects.keys() - (self._new_objects or {}).keys()
        taken = self._audit_round[self._audit_at:self._audit_at + self.audit_chunk]
        self._audit_at += len(taken)
        return set(taken)

    def _drift(self, fresh: KernelState, cached: KernelState) -> tuple[set[str], bool] | None:
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
        owned_sets = self.names.owned_set_names()
        for name in owned_sets:
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

    def _take_replan(self) -> set[str]:
        """The next part of the VIPs a resync found drifted."""
        if len(self._replan) <= self.resync_chunk:
            taken, self._replan = self._replan, set()
        else:
            taken = set(itertools.islice(self._replan, self.resync_chunk))
            self._replan -= taken
        return taken

    def _whole(self, outcome: Outcome, observed: KernelState, started: float) -> Outcome:
        """Plan every object against a full read through engine.sync (`vsop apply`'s path)."""
        read_done = time.monotonic()
        addresses = frozenset(observed.node_addresses) | self.extra_node_addresses
        # This is also the recovery path (after a failed write, a lost link or set): it trusts no
        # per-object state that a missed change may have left stale, and derives every object
        # again, dropping fragments whose object is gone (O(N), as the plan is anyway).
        self._dirty.update(self.objects.keys() | self.fragments.keys())
        self._derive(addresses)
        outcome.objects = self._derived
        desired = self.desired()
        grace = grace_of(self.fragments.values())

        def adjust(want: KernelState, have: KernelState) -> KernelState:
            return with_draining(want, have, self.draining, self.clock(), grace, self.names)

        expected = self.observed  # what vsop believes it left: a difference now is drift
        self.observed = None  # until the writes are known to have worked
        self._replan, self._expected, self._shared_drift = set(), None, False  # every VIP is planned now
        try:
            result = sync(
                self.kernel, (), self.node, names=self.names, observed=observed, desired=desired, adjust=adjust, expected=expected,
                held=self.held if self.held else None, keep_accept_ra=self.keep_accept_ra,
            )
        except ExecutionFailed as exc:
            return self._failed(outcome, started, str(exc), exc.writes, list(exc.applied_ops))
        except (PlanError, KernelUnsupported, OperationFailed, OSError) as exc:
            return self._failed(outcome, started, str(exc), 0, [])
        after = self._after(observed, result.applied)
        self.observed = after  # the reconciler's own copy: changed in place by each change
        if self.observed is not None:  # index it now: the first change after a resync stays cheap
            self._vip_index, self._index_of = vip_index(self.observed, self.names), self.observed
        self._shared_dirty = False
        self.plan_problems = self._by_vip_problems(result.plan.problems)
        self.left_alone = set(result.plan.left_alone)
        self.held_problems = self._held_losers(desired.programmed, result.desired)
        self._programmed = {ref for ref in self.fragments if self._is_programmed(ref)}  # the full path's cost is N anyway
        self._held_vips = self._vips_of_held(observed) if self.held else frozenset()
        self._force_full = False
        outcome.plan, outcome.writes, outcome.applied = result.plan, result.writes, result.applied
        outcome.conntrack_failures = result.conntrack_failures
        outcome.repairs = result.repairs
        outcome.read_seconds, outcome.plan_seconds, outcome.execute_seconds = read_done - started, result.plan_seconds, result.execute_seconds
        outcome.seconds = time.monotonic() - started
        return outcome

    def _incremental(self, outcome: Outcome, started: float) -> Outcome:
        """Plan the VIPs that changed (and the next part of a resync's drift) against the cache."""
        assert self.observed is not None
        # Node addresses as last read, plus the extra ones the source may have changed since.
        addresses = frozenset(self.observed.node_addresses) | self.extra_node_addresses
        vips = self._derive(addresses)
        outcome.objects = self._derived
        changed_vips = set(vips)
        audit, self._auditing = self._auditing, set()
        stale: set[str] = set()  # audited objects whose fragment differed from a derivation from scratch
        verdicts: dict[str, Any] = {}  # audited objects' verdicts before: reported (touched) only if they change
        if audit or self._orphans:
            audit = self._audit(audit, addresses, stale, verdicts)
            vips |= audit
            outcome.objects += self._derived
            outcome.audited = len(audit)
        if self.draining.since:
            vips |= self._refresh_draining()
            if self.observed is None:  # the draining read failed: the next reconcile reads everything
                outcome.seconds = time.monotonic() - started
                return outcome
        repairing = self._take_replan() if self._replan else set()
        if audit and self._replan:  # drifted VIPs the audit plans now: repaired (and reported) as drift
            overlap = audit & self._replan
            self._replan -= overlap
            repairing |= overlap
        vips |= repairing
        # A resync that found no drift and no change: written nothing below, it skipped.
        quiet = outcome.full and not changed_vips and not repairing and not self._shared_dirty
        if not vips and not self._shared_dirty:
            outcome.touched = frozenset()
            outcome.skipped = outcome.full  # a resync that found nothing to do
            outcome.seconds = time.monotonic() - started
            return outcome
        # Held owners' VIPs are always planned with the change: keeping them (and the
        # chains of a family only they still use) is decided over what they hold.
        cut = frozenset(vips) | (self._held_vips if self.held else frozenset())
        outcome.touched = frozenset(ref for vip in cut for ref in _refs(self._by_vip, vip))
        observed = self._around(cut)
        pieces = self._pieces(cut)
        want = assemble(self.shared(), pieces, cut)
        # The link stays while any VIP outside the cut is bound (one left alone as VIPInUse is not).
        elsewhere = any(vip not in cut and vip not in self.left_alone for vip in self._bound_vips())
        want = replace(want, link=want.link if want.addresses or elsewhere else None)
        wanted = tuple(p.ref for p in pieces if p.programmed)

        def check(kept: Desired) -> None:
            if self.held:
                for piece in pieces:
                    self.held_problems.pop(piece.ref, None)
                self.held_problems.update(self._held_losers(wanted, kept))

        def drain(state: KernelState, have: KernelState) -> KernelState:
            sub = Draining({k: v for k, v in self.draining.since.items() if k.service.vip in cut})
            state = with_draining(state, have, sub, self.clock(), grace_of(pieces), self.names)
            self.draining.since = {**{k: v for k, v in self.draining.since.items() if k.service.vip not in cut}, **sub.since}
            return state

        try:
            target, the_plan = program(
                Desired(want, wanted), observed, self.names, held=self.held, drain=drain, check=check,
                link_elsewhere=elsewhere, keep_accept_ra=self.keep_accept_ra,
            )
        except PlanError as exc:
            return self._failed(outcome, started, str(exc), 0, [])
        want = target.state
        planned = time.monotonic()
        outcome.plan, outcome.vips = the_plan, len(cut)
        outcome.plan_seconds = planned - started
        for vip in cut:
            self.plan_problems.pop(vip, None)
        self.plan_problems.update(self._by_vip_problems(the_plan.problems))
        self._judge(outcome.touched)  # every object on the planned VIPs
        if verdicts:
            # Audited objects are reported (status, events) only when the audit changed something
            # of theirs: a no-op audit re-judges nothing downstream.
            written = {vip for op in the_plan.ops if (vip := _op_vip(op)) is not None}
            outcome.touched = frozenset(
                ref for ref in outcome.touched
                if ref not in verdicts or ref in stale or self._verdict(ref) != verdicts[ref]
                or (ref in self.fragments and self.fragments[ref].vip in written)
            )
        self.left_alone = (self.left_alone - cut) | the_plan.left_alone
        if the_plan.ops:
            try:
                outcome.writes, outcome.applied = execute(
                    self.kernel, the_plan, self.names, observed=observed, conntrack_failures=outcome.conntrack_failures
                )
            except ExecutionFailed as exc:
                return self._failed(outcome, started, str(exc), exc.writes, list(exc.applied_ops))
            except (KernelUnsupported, OperationFailed, OSError) as exc:
                return self._failed(outcome, started, str(exc), 0, [])
            if (repairing or self._shared_drift) and self._expected is not None:
                self._report_repairs(outcome, repairing - changed_vips, self._shared_drift, observed, want)
            if audit:
                self._report_audit(outcome, audit - changed_vips - repairing, observed, want)
            after_cut = apply_accepted(observed, outcome.applied)
            try:
                # In place, costing what the change wrote: the cached state is the reconciler's own
                # copy (owned_copy at each full read), never a copy of all of it per change.
                if self._owners_of is self.observed:
                    self._count_owners(outcome.applied)
                counted = self._owners_of is self.observed
                self.changes += 1
                self.observed = apply_in_place(self.observed, outcome.applied, taken_along(observed.real_servers, outcome.applied))
                self._owners_of = self.observed if counted else None
            except (KernelRefused, KeyError):  # the cache no longer matches what the kernel accepted: read it again
                self.observed = None
            else:
                self._reindex(cut, after_cut, outcome.applied)
        self._shared_dirty = self._shared_drift = False
        if not self._replan:
            self._expected = None
        if stale:
            log.info("audit: re-derived from scratch, objects differed from what the incremental path kept objects=%s", ",".join(sorted(stale)))
        outcome.skipped = quiet and not outcome.writes and not stale
        outcome.execute_seconds = time.monotonic() - planned
        outcome.seconds = time.monotonic() - started
        return outcome

    def _audit(self, audit: set[str], addresses: frozenset[str], stale: set[str], verdicts: dict[str, Any]) -> set[str]:
        """Re-derive every object on the audited VIPs from scratch (and their claim groups);
        `stale` gets those whose fragment differed from what was kept, `verdicts` what each
        object's verdict was. Returns the VIPs to plan."""
        refs = {ref for vip in audit for ref in _refs(self._by_vip, vip)}
        refs |= {ref for ref in self._orphans if ref not in self.objects}
        self._orphans = set()
        before: dict[str, Fragment | None] = {}
        planned = set(audit)
        while refs:
            before.update((ref, self.fragments.get(ref)) for ref in refs)
            verdicts.update((ref, self._verdict(ref)) for ref in refs)
            self._dirty.update(refs)
            planned |= self._derive(addresses)
            # A stale fragment may sit on another VIP than its object now declares (the change
            # that moved it was missed): the VIPs it left are planned too, so every object on
            # them is derived again before the plan reads their fragments (O(slice)).
            refs = {ref for vip in planned for ref in _refs(self._by_vip, vip)} - before.keys()
        stale.update(ref for ref, fragment in before.items() if self.fragments.get(ref) != fragment)
        return planned

    def _verdict(self, ref: str) -> tuple[bool, tuple[Problem, ...]]:
        return ref in self._programmed, self.problems(ref)

    def _report_audit(self, outcome: Outcome, vips: set[str], observed: KernelState, want: KernelState) -> None:
        """The writes on audited VIPs (not changed nor drifted meanwhile): the kernel held what the
        cache said, but not what a derivation from scratch wants. Reported as repairs."""
        mine = [op for op in outcome.applied if _op_vip(op) in vips]
        if not mine:
            return
        # Against the target itself: what was found differs from what is wanted now.
        found = repairs(mine, want, observed, want)
        self.audit_repairs += len(mine)
        outcome.repairs = [*outcome.repairs, *found]
        for repair in found:
            log.info(
                "audit repaired: the kernel held what vsop had kept, not what its objects want object=%s change=%r found=%r put_back=%r",
                repair.obj or "-", f"{repair.op.kind} {repair.op.describe()}", repair.found, repair.wanted,
            )

    def _report_repairs(self, outcome: Outcome, vips: set[str], shared: bool, observed: KernelState, want: KernelState) -> None:
        """The writes on `vips` (drifted, not changed meanwhile), and on the chains, jumps and
        sysctls when they drifted, that put back what changed behind vsop's back."""
        assert self._expected is not None
        mine = [op for op in outcome.applied if (vip := _op_vip(op)) in vips or (vip is None and shared)]
        outcome.repairs = report_repairs(mine, self._expected, observed, want) if mine else []

    def _vips_of_held(self, observed: KernelState) -> frozenset[str]:
        owners = held_owners(observed, self.held, self.names, self.programmed)
        owned_sets = self.names.owned_set_names()
        return frozenset(
            member_vip(member)
            for name, ipset in observed.ipsets.items() if name in owned_sets
            for member, owner in ipset.members.items() if owner in owners
        )

    @staticmethod
    def _held_losers(wanted: Iterable[str], kept: Desired) -> dict[str, Problem]:
        """Objects keep_held refused: they claim what an owner declared but invalid still serves."""
        refused = set(wanted) - set(kept.programmed)
        return {p.obj: p for p in kept.problems if p.obj in refused and p.reason == "Conflict"}

    # -- the cached kernel state, indexed by VIP so a change never scans all of it --

    def _around(self, cut: frozenset[str]) -> KernelState:
        """`around(self.observed, cut)` by lookups in the VIP index (built once per full read)."""
        observed = self.observed
        assert observed is not None
        if self._index_of is not observed:
            self._vip_index = vip_index(observed, self.names)
            self._index_of = observed
        return around(observed, cut, self.names, self._vip_index)

    def _reindex(self, cut: frozenset[str], after_cut: KernelState, applied: Sequence[ops.Op]) -> None:
        """Keep the index true for the planned VIPs after their writes (sets or the link gone: rebuild later)."""
        if self._index_of is None or any(isinstance(op, (ops.CreateSet, ops.DestroySet, ops.DeleteLink, ops.CreateLink)) for op in applied):
            self._index_of = None
            return
        fresh = vip_index(after_cut, self.names)
        for vip in cut:
            if vip in fresh:
                self._vip_index[vip] = fresh[vip]
            else:
                self._vip_index.pop(vip, None)
        self._index_of = self.observed

    def _refresh_draining(self) -> set[str]:
        """Fresh connection counters of the services with draining real servers (only those are dumped)."""
        services = {key.service for key in self.draining.since}
        assert self.observed is not None
        try:
            fresh = self.kernel.ipvs.read_real_servers(services)
        except (OperationFailed, OSError) as exc:
            log.warning("reading draining real servers failed, will read everything error=%r", str(exc))
            self.observed = None
            return set()
        vips = {key.vip for key in services}
        real_servers: Any = self.observed.real_servers  # the reconciler's own copy: changed in place
        indexed = self._index_of is self.observed
        for vip in vips:
            entry = self._vip_index.get(vip) if indexed else None
            known = entry[1] if entry is not None else [k for k in real_servers if k.service.vip == vip]
            for key in known:
                if key.service in services:
                    real_servers.pop(key, None)
            if entry is not None:
                entry[1][:] = [k for k in known if k.service not in services] + [k for k in fresh if k.service.vip == vip]
        real_servers.update(fresh)
        self.changes += 1
        return vips

    def _after(self, observed: KernelState, applied: Sequence[ops.Op]) -> KernelState | None:
        """The cache after a full sync: a copy of the read with its writes (the entries are the
        read's own objects, so the next resync's unchanged read compares by identity)."""
        try:
            return apply_accepted(observed, applied)
        except (KernelRefused, KeyError):
            return None

    def _failed(self, outcome: Outcome, started: float, error: str, writes: int, applied: list[ops.Op]) -> Outcome:
        """A refused, partial or impossible write: forget what we think the kernel holds."""
        self.observed = None
        self._shared_dirty = True
        outcome.error, outcome.writes, outcome.applied = error, writes, applied
        try:
            outcome.after = read_observed(self.kernel, self.names)
        except Exception as exc:  # noqa: BLE001 - a second failure must not hide the first
            log.warning("re-reading the kernel after a failure failed error=%r", str(exc))
        outcome.seconds = time.monotonic() - started
        log.error("kernel write failed; the next reconcile reads the kernel again error=%r writes=%d", error, writes)
        return outcome

    def _by_vip_problems(self, problems: Iterable[Problem]) -> dict[str, tuple[Problem, ...]]:
        result: dict[str, list[Problem]] = {}
        for problem in problems:
            vs = self.objects.get(problem.obj)
            if vs is not None:
                result.setdefault(vs.spec.vip, []).append(problem)
        return {vip: tuple(found) for vip, found in result.items()}

    def status(self) -> dict[str, Any]:
        last = self.last
        return {
            "objects": len(self.objects),
            "programmed": len(self.programmed),
            "reads": self.reads,
            "draining": len(self.draining.since),
            "last": None if last is None else {"full": last.full, "writes": last.writes, "seconds": round(last.seconds, 4), "error": last.error},
        }
