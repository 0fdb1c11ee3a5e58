"""The objects one node's source declares, their claims and indexes, and one Fragment per object.

Owns, for one node: the declared VirtualServices (in the source's order, ties in age going
to the first), the endpoints of their serviceRefs, the real servers health checks took out,
the addresses refused as VIPs; the indexes that find what a change touches without a scan
(claims per VIP:port, objects per VIP, per serviceRef and per static backend); one desired
`Fragment` per object (vsop.core.fragments), re-derived only for the objects a change
touches and those sharing a VIP:port with them; and the verdicts (`Verdicts`): which
objects are programmed, and why the others are not.
Must not import: kopf, kubernetes, pyroute2, asyncio, vsop.adapters (it never sees a kernel).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import AbstractSet, Any, Callable, Collection, Iterable, Mapping, Sequence

from vsop.core.desired import Desired, Endpoint, Node, Problem, resolve_conflicts
from vsop.core.fragments import Fragment, desired_from, fragment, refused, shared_state
from vsop.core.state import KernelState, Names, RealServerKey
from vsop.api.model import VirtualService

Claim = tuple[str, int, str]  # (vip, port, protocol)


def claims(vs: VirtualService) -> set[Claim]:
    return {(vs.spec.vip, port.port, port.protocol) for port in vs.spec.ports}


def refs(index: Mapping[Any, str | set[str]], key: Any) -> Collection[str]:
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


def normalized(address: str) -> str:
    text = address.split("/")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _service_ref(vs: VirtualService) -> tuple[str, str] | None:
    ref = vs.spec.service_ref
    return (vs.metadata.namespace, ref.name) if ref is not None else None


class Objects:
    """The declared objects of one node and their fragments, kept per change. `dirty` names the
    objects to derive again at the next `derive`."""

    def __init__(self, node: Node, names: Names, kernel_version: tuple[int, int] | None, extra_node_addresses: Iterable[str],
                 liberal: bool = False):
        self.node = node
        self.names = names
        self.kernel_version = kernel_version
        self.liberal = liberal  # the host's conntrack is liberal: no INVALID rule (vsop.core.desired.constant_chains)
        self.extra_node_addresses = frozenset(extra_node_addresses)
        # inputs
        self.objects: dict[str, VirtualService] = {}
        self._order: dict[str, tuple[str, Any, str]] = {}  # ref -> (creationTimestamp, position in the source, ref)
        self._next_position = 0  # update_objects' default position: after every object seen so far
        self.endpoints: dict[tuple[str, str], tuple[Endpoint, ...]] = {}
        self.out_of_service: frozenset[RealServerKey] = frozenset()
        self.reserved: dict[str, str] = {}  # address -> whose (the API server's): refused as a VIP
        self.announcing = True  # False while the node is drained: no VIP announced over BGP
        self.refusals: dict[str, Problem] = {}  # ref -> why it may not claim its VIP (vsop.core.claims.admit)
        # derived, kept per object
        self.fragments: dict[str, Fragment] = {}
        # One ref, or a set of them where several share the key (rare): a set per VIP and per
        # claim was 216 bytes x 20,000 on a node of 10,000 objects (see refs).
        self.claimants: dict[Claim, str | set[str]] = {}
        self.by_vip: dict[str, str | set[str]] = {}  # every object, by VIP
        self._by_service_ref: dict[tuple[str, str], set[str]] = {}
        self._by_backend: dict[str, set[str]] = {}  # static backend address -> objects: a VIP appearing there refuses them
        self._families: Counter[int] = Counter()
        self._arp = 0
        self._bound: Counter[str] = Counter()
        self.configured: dict[RealServerKey, str] = {}  # every configured real server -> its object
        self._node_addresses: frozenset[str] = frozenset()  # what the fragments were derived with
        self.dirty: set[str] = set()
        # Objects not derived yet: the first sync in parts derives each with its VIP's part
        # (`defer_all`, `undefer`), so its first part does not wait for every object's derivation.
        self.deferred: set[str] = set()
        self._new_objects: dict[str, VirtualService] | None = None  # set_objects' input, adopted at the next derive
        self.derived = 0  # objects re-derived by the last derive

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
                self.dirty.add(ref)
                changed += 1
        if len(previous) + changed != len(current) or changed:  # something may be gone
            for ref in previous.keys() - current.keys():
                self.dirty.add(ref)
                changed += 1
        self._order = order
        self._next_position = len(order)
        self._new_objects = current
        return changed

    def update_objects(self, changed: Mapping[str, VirtualService | None], *, order: Mapping[str, Any] | None = None) -> int:
        """Only what changed in the source (see Reconciler.update_objects). Returns objects changed."""
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
                self.dirty.add(ref)
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
            self.dirty.add(ref)
            count += 1
        return count

    def set_endpoints(self, endpoints: Mapping[tuple[str, str], Iterable[Endpoint]]) -> None:
        """The endpoints of every serviceRef (missing key: none)."""
        fresh = {key: tuple(value) for key, value in endpoints.items()}
        for key in self.endpoints.keys() | fresh.keys():
            if self.endpoints.get(key, ()) != fresh.get(key, ()):
                self.dirty |= self._by_service_ref.get(key, set())
        self.endpoints = fresh

    def update_endpoints(self, changed: Mapping[tuple[str, str], Iterable[Endpoint] | None]) -> None:
        """Only the serviceRefs whose endpoints changed (None or empty: none now); the others stay."""
        for key, value in changed.items():
            fresh = tuple(value) if value is not None else ()
            if self.endpoints.get(key, ()) != fresh:
                self.dirty |= self._by_service_ref.get(key, set())
            if fresh:
                self.endpoints[key] = fresh
            else:
                self.endpoints.pop(key, None)

    def set_node(self, node: Node, extra_node_addresses: Iterable[str] | None = None) -> None:
        if node != self.node:
            self.dirty |= set(self.objects) | set(self._new_objects or {})
            self.node = node
        if extra_node_addresses is not None:
            self.extra_node_addresses = frozenset(extra_node_addresses)

    def set_announcing(self, announcing: bool) -> None:
        """Whether this node asks BGP to attract its VIPs (False: the node is being drained)."""
        if announcing != self.announcing:
            self.dirty.update(ref for ref, vs in self.objects.items() if vs.spec.announce == "bgp")
            self.announcing = announcing

    def set_reserved(self, reserved: Mapping[str, str]) -> None:
        """Addresses something the node depends on uses (the API server's), refused as VIPs: address -> whose."""
        fresh = {normalized(address): whose for address, whose in reserved.items()}
        for address in self.reserved.keys() | fresh.keys():
            if self.reserved.get(address) != fresh.get(address):
                self.dirty.update(refs(self.by_vip, address))
        self.reserved = fresh

    def set_refusals(self, refusals: Mapping[str, Problem]) -> None:
        """Objects refused their claim (vsop.core.claims.admit: ref -> why): never programmed, and
        they claim no port. Each change re-derives its object and those sharing its claims."""
        if refusals == self.refusals:
            return
        for ref in self.refusals.keys() | refusals.keys():
            if self.refusals.get(ref) != refusals.get(ref):
                self.dirty.add(ref)
        self.refusals = dict(refusals)

    def set_out_of_service(self, keys: frozenset[RealServerKey]) -> None:
        """The real servers health checks took out; each flip re-derives its one object."""
        for key in keys ^ self.out_of_service:
            owner = self.configured.get(key)
            if owner is not None:
                self.dirty.add(owner)
        self.out_of_service = frozenset(keys)

    def gone(self) -> set[str]:
        """Refs with a fragment but no object (nor one about to be adopted): a removal was missed."""
        return self.fragments.keys() - self.objects.keys() - (self._new_objects or {}).keys()

    # -- derivation ----------------------------------------------------------------------------------

    def ordered(self, refs: Iterable[str]) -> list[str]:
        return sorted(refs, key=lambda ref: self._order[ref])

    def defer_all(self) -> None:
        """Every object waits to be derived with its VIP (`undefer`); fragments of objects gone are
        dropped at the next derive. While any waits, what every VIP shares is known only in part."""
        if self._new_objects is not None:
            self._adopt(self._new_objects)
            self._new_objects = None
        self.deferred = set(self.objects)
        self.dirty -= self.deferred
        self.dirty.update(self.fragments.keys() - self.deferred)

    def undefer(self, vips: Iterable[str]) -> bool:
        """The objects on `vips` still waiting (`defer_all`) are derived at the next derive. Returns whether any were."""
        if not self.deferred:
            return False
        waiting = self.on(vips) & self.deferred
        self.deferred -= waiting
        self.dirty |= waiting
        return bool(waiting)

    def derive(self, node_addresses: frozenset[str]) -> tuple[set[str], set[str]]:
        """Apply pending object changes; re-derive the objects they touch. Returns the VIPs whose
        desired state may differ, and the objects whose verdict is to be judged again."""
        if self._new_objects is not None:
            self._adopt(self._new_objects)
            self._new_objects = None
        if node_addresses != self._node_addresses:
            for address in node_addresses ^ self._node_addresses:
                self.dirty.update(refs(self.by_vip, normalized(address)))
            self._node_addresses = node_addresses
        self.derived = 0
        if not self.dirty:
            return set(), set()
        group = self._claim_group()
        present = [ref for ref in group if ref in self.objects and ref not in self.refusals]
        _, problems = resolve_conflicts([self.objects[ref] for ref in self.ordered(present)])
        lost = {problem.obj: problem for problem in problems}
        vips: set[str] = set()
        derived = 0
        for ref in group:
            old = self.fragments.get(ref)
            vs = self.objects.get(ref)
            if vs is None:
                new = None
            elif ref in self.refusals:
                new = refused(vs, self.refusals[ref])
            elif ref in lost:
                new = refused(vs, lost[ref])
            elif ref in self.dirty or old is None or old.problems[:1] and old.problems[0].reason == "Conflict":
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
        self.dirty.clear()
        if self.deferred:
            self.deferred -= group  # derived now (a change, or a neighbour on its VIP:port)
        self.derived = derived
        return vips, group

    def _claim_group(self) -> set[str]:
        """The dirty objects and every object chained to them by shared VIP:port claims:
        conflicts are judged again over the whole connected group."""
        group: set[str] = set()
        todo = [ref for ref in self.dirty]
        while todo:
            ref = todo.pop()
            if ref in group:
                continue
            group.add(ref)
            vs = self.objects.get(ref)
            if vs is None:
                continue
            for claim in claims(vs):
                todo.extend(other for other in refs(self.claimants, claim) if other not in group)
        return group

    def _vips_hit(self, vs: VirtualService) -> dict[str, str]:
        """Its static backends that are other objects' VIPs -> the first such object (BackendIsVIP)."""
        hit: dict[str, str] = {}
        for backend in vs.spec.backends:
            owners = refs(self.by_vip, backend.address)
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
        for claim in claims(vs):
            _add(self.claimants, claim, ref)
        _add(self.by_vip, vs.spec.vip, ref)
        self.dirty |= self._by_backend.get(vs.spec.vip, set())  # a VIP appeared where they send traffic
        for backend in vs.spec.backends:
            self._by_backend.setdefault(backend.address, set()).add(ref)
        key = _service_ref(vs)
        if key is not None:
            self._by_service_ref.setdefault(key, set()).add(ref)

    def _forget_object(self, vs: VirtualService) -> None:
        """Index entries of an object's old version; its claimants are kept in the dirty group first."""
        ref = vs.ref
        for claim in claims(vs):
            self.dirty.update(refs(self.claimants, claim))  # others on the claim may win now
            _discard(self.claimants, claim, ref)
        _discard(self.by_vip, vs.spec.vip, ref)
        self.dirty |= self._by_backend.get(vs.spec.vip, set())  # their backend may be usable again
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

    # -- what the fragments add up to -----------------------------------------------------------

    def on(self, vips: Iterable[str]) -> set[str]:
        """Every object on these VIPs."""
        return {ref for vip in vips for ref in refs(self.by_vip, vip)}

    def bound_vips(self) -> Iterable[str]:
        return (address.split("/")[0] for address in self._bound)

    def shared(self) -> KernelState:
        """What every VIP shares (link, set headers, constant chains and jumps, sysctls) for the objects now programmed."""
        return shared_state(self.names, self._families, arp=self._arp > 0, bound=bool(self._bound), kernel_version=self.kernel_version,
                            liberal=self.liberal)

    def pieces(self, vips: Iterable[str] | None = None) -> list[Fragment]:
        """Fragments in conflict order: all of them, or those on some VIPs."""
        if vips is None:
            wanted: Iterable[str] = self.fragments
        else:
            wanted = {ref for vip in vips for ref in refs(self.by_vip, vip) if ref in self.fragments}
        return [self.fragments[ref] for ref in self.ordered(wanted)]

    def desired(self) -> Desired:
        """The node's whole desired state (before draining), as desired_state would compute it."""
        return desired_from(self.shared(), self.pieces())


class Verdicts:
    """Which objects are programmed, and why the others are not: their fragment's problems, a
    held owner keeping what they claim, or the last plan of their VIP (VIPInUse,
    RouterAdvertisements). Kept true per change for the objects it touched."""

    def __init__(self, objects: Objects):
        self._objects = objects
        self.plan_problems: dict[str, tuple[Problem, ...]] = {}  # vip -> problems the plan found (VIPInUse)
        self.left_alone: set[str] = set()  # VIPs the last plans left alone (someone else's IPVS services on them)
        self.held_problems: dict[str, Problem] = {}  # ref -> refused: it claims what a held owner serves
        # Objects whose state is in the kernel as declared: their fragment is programmed and
        # neither a held owner, the last plan of their VIP nor the kernel refused them.
        self.programmed: set[str] = set()
        # VIP -> why the kernel refused a write of it (vsop.node.refusals); None: it did not.
        self.kernel_refused: Callable[[str], str | None] = lambda vip: None
        # VIPs the first sync has yet to plan (vsop.node.resync.Resync.cold): their objects are not programmed yet.
        self.waiting: AbstractSet[str] = frozenset()

    def is_programmed(self, ref: str) -> bool:
        piece = self._objects.fragments.get(ref)
        return (
            piece is not None
            and piece.programmed
            and ref not in self.held_problems
            and not any(p.obj == ref for p in self.plan_problems.get(piece.vip, ()))  # VIPInUse, RouterAdvertisements
            and self.kernel_refused(piece.vip) is None
            and piece.vip not in self.waiting
        )

    def judge(self, refs: Iterable[str]) -> None:
        """`programmed` made true again for `refs` (those whose fragment, held or plan verdict just changed)."""
        for ref in refs:
            if self.is_programmed(ref):
                self.programmed.add(ref)
            else:
                self.programmed.discard(ref)

    def judge_all(self) -> None:
        self.programmed = {ref for ref in self._objects.fragments if self.is_programmed(ref)}

    def problems(self, ref: str) -> tuple[Problem, ...]:
        """Why an object is not (or not wholly) programmed: from its derivation and the last plan of its VIP."""
        piece = self._objects.fragments.get(ref)
        if piece is None:
            return ()
        held = (self.held_problems[ref],) if ref in self.held_problems else ()
        found = piece.problems + held + tuple(p for p in self.plan_problems.get(piece.vip, ()) if p.obj == ref)
        reason = self.kernel_refused(piece.vip) if piece.programmed else None
        return found + (Problem(ref, "KernelError", reason),) if reason is not None else found

    def verdict(self, ref: str) -> tuple[bool, tuple[Problem, ...]]:
        return ref in self.programmed, self.problems(ref)

    def by_vip(self, problems: Iterable[Problem]) -> dict[str, tuple[Problem, ...]]:
        """Problems a plan found, by the VIP of their object."""
        result: dict[str, list[Problem]] = {}
        for problem in problems:
            vs = self._objects.objects.get(problem.obj)
            if vs is not None:
                result.setdefault(vs.spec.vip, []).append(problem)
        return {vip: tuple(found) for vip, found in result.items()}

    def planned(self, vips: Iterable[str], problems: Iterable[Problem], left_alone: AbstractSet[str]) -> None:
        """The verdicts of a plan of some VIPs (the others' stay)."""
        vips = set(vips)
        for vip in vips:
            self.plan_problems.pop(vip, None)
        self.plan_problems.update(self.by_vip(problems))
        self.left_alone = (self.left_alone - vips) | set(left_alone)

    def held_for(self, refs: Iterable[str], wanted: Iterable[str], kept: Desired) -> None:
        """The held verdicts of `refs` after keep_held kept `kept` of `wanted`."""
        for ref in refs:
            self.held_problems.pop(ref, None)
        self.held_problems.update(held_losers(wanted, kept))


def held_losers(wanted: Iterable[str], kept: Desired) -> dict[str, Problem]:
    """Objects keep_held refused: they claim what an owner declared but invalid still serves."""
    refused_refs = set(wanted) - set(kept.programmed)
    return {p.obj: p for p in kept.problems if p.obj in refused_refs and p.reason == "Conflict"}
