"""The desired state cut into per-object pieces, and a node's state cut around some VIPs.

Owns what the incremental reconciler (vsop.node) needs from the core:
- `Fragment`: one VirtualService's contribution to the desired state (its IPVS services
  and real servers, set members, bound address, problems), derived by `desired_state`
  itself from that object alone, so the two can never disagree;
- `shared_state` (defined beside `desired_state`, which builds on it): the part that depends only on which address families and flags are in
  use (link, set headers, the constant chains and jumps, sysctls);
- `assemble`: fragments into the desired state of some VIPs (or of all of them);
- `around`: an observed state cut down to some VIPs (their routes too), shared objects kept whole, by
  lookups in a `vip_index` of it (the reconciler keeps one per cached state, so a change
  never scans the whole node).
Planning `assemble(..., vips)` against `around(observed, vips)` yields the operations a
whole plan would make for those VIPs plus the shared objects, provided everything outside
them already matches; the property test in tests/unit/node/test_reconciler.py checks that any
sequence of changes leaves the kernel exactly as a full sync from scratch would.
Pure: must not import kopf, pyroute2, jinja2, subprocess, socket or vsop.adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from vsop.core.desired import (
    Desired,
    Endpoint,
    Node,
    Problem,
    desired_state,
    shared_state,
)
from vsop.core.draining import DEFAULT_GRACE_SECONDS
from vsop.core.state import (
    IPSet,
    KernelState,
    Names,
    RealServer,
    RealServerKey,
    ServiceKey,
    VirtualServer,
)
from vsop.api.model import VirtualService

_NO_SERVICES: frozenset[ServiceKey] = frozenset()  # shared: an empty frozenset is not a singleton (216 bytes each)


def member_vip(member: str) -> str:
    """The VIP of a set member: "VIP,proto:port" or "VIP"."""
    return member.split(",", 1)[0]


@dataclass(frozen=True, slots=True)
class Fragment:
    """What one VirtualService adds to this node's desired state (empty when not programmed here).

    A node holds one per object (10,000 on a big one), each with a few entries: kept as
    tuples, not as a handful of small dicts and sets per object (about 1 KB each at 10k
    objects); the mappings are built when asked for (`services`, `real_servers`, ...).
    """

    ref: str
    vip: str
    programmed: bool = False
    problems: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()
    service_list: tuple[VirtualServer, ...] = ()  # its IPVS services (each under its own key)
    real_server_list: tuple[RealServer, ...] = ()
    member_list: tuple[tuple[str, str, str], ...] = ()  # (set name, member, owner) in set order
    addresses: tuple[str, ...] = ()  # bound on the link (VIP/prefix)
    routes: tuple[str, ...] = ()  # announced over BGP: a route in vsop's table (VIP/prefix)
    delegated: frozenset[ServiceKey] = frozenset()
    configured_keys: tuple[RealServerKey, ...] = ()  # every configured real server (before health), all of this object
    family: int | None = None  # the family it needs sets, chains and sysctls for, when programmed
    arp: bool = False  # needs the ARP sysctls (suppressARP, IPv4)
    drain_seconds: float = 0.0  # the drain timeout of each of its IPVS services

    @property
    def services(self) -> dict[ServiceKey, VirtualServer]:
        return {service.key: service for service in self.service_list}

    @property
    def real_servers(self) -> dict[RealServerKey, RealServer]:
        return {rs.key: rs for rs in self.real_server_list}

    @property
    def members(self) -> dict[str, dict[str, str]]:
        """Set name -> member -> owner."""
        found: dict[str, dict[str, str]] = {}
        for name, member, owner in self.member_list:
            found.setdefault(name, {})[member] = owner
        return found

    @property
    def configured(self) -> dict[RealServerKey, str]:
        """Every configured real server -> this object (as Desired.configured)."""
        return dict.fromkeys(self.configured_keys, self.ref)

    @property
    def grace(self) -> dict[ServiceKey, float]:
        """Drain timeout per IPVS service."""
        return {service.key: self.drain_seconds for service in self.service_list}


def fragment(
    vs: VirtualService,
    node: Node,
    *,
    names: Names = Names(),
    endpoints: Mapping[tuple[str, str], Iterable[Endpoint]] | None = None,
    node_addresses: Iterable[str] = (),
    reserved: Mapping[str, str] | None = None,
    out_of_service: frozenset[RealServerKey] = frozenset(),
    vip_owners: Mapping[str, str] | None = None,
    announcing: bool = True,
) -> Fragment:
    """The fragment of a VirtualService that won its conflicts (or has none); `vip_owners`: other objects' VIPs its backends hit."""
    desired = desired_state(
        [vs], node, names=names, endpoints=endpoints, node_addresses=node_addresses, reserved=reserved, out_of_service=out_of_service,
        vip_owners=vip_owners, announcing=announcing,
    )
    state = desired.state
    programmed = vs.ref in desired.programmed
    # Desired.configured of one object maps each of its real servers to it: the keys suffice.
    return Fragment(
        ref=vs.ref,
        vip=vs.spec.vip,
        programmed=programmed,
        problems=desired.problems,
        warnings=desired.warnings,
        service_list=tuple(state.services.values()),
        real_server_list=tuple(state.real_servers.values()),
        member_list=tuple((name, member, owner) for name, ipset in state.ipsets.items() for member, owner in ipset.members.items()),
        addresses=tuple(sorted(state.addresses)),
        routes=tuple(sorted(state.routes)),
        delegated=state.delegated or _NO_SERVICES,
        configured_keys=tuple(desired.configured),
        family=vs.spec.family if programmed else None,
        arp=programmed and vs.spec.arp_suppressed,
        drain_seconds=float(vs.spec.drain.timeout_seconds),
    )


def serves(fragment: Fragment | None, out_of_service: frozenset[RealServerKey]) -> bool:
    """Whether this node serves the object: programmed, with a real server that takes new
    connections (weight > 0, not taken out by a health check); what VRRP's track files say."""
    if fragment is None or not fragment.programmed:
        return False
    return any(rs.weight > 0 and rs.key not in out_of_service for rs in fragment.real_server_list)


def refused(vs: VirtualService, problem: Problem) -> Fragment:
    """The fragment of a VirtualService that lost a conflict: nothing but the problem."""
    return Fragment(ref=vs.ref, vip=vs.spec.vip, problems=(problem,))


def assemble(shared: KernelState, fragments: Iterable[Fragment], vips: frozenset[str] | None = None) -> KernelState:
    """The desired state of `vips` (None: every VIP) from the fragments in conflict order.

    Order matters only for the comment of a member two objects share (one VIP, two
    objects with different ports): the later object's, as desired_state does.
    """
    services: dict[ServiceKey, VirtualServer] = {}
    real_servers: dict[RealServerKey, RealServer] = {}
    members: dict[str, dict[str, str]] = {name: {} for name in shared.ipsets}
    addresses: set[str] = set()
    routes: set[str] = set()
    delegated: set[ServiceKey] = set()
    for piece in fragments:
        if vips is not None and piece.vip not in vips:
            continue
        for service in piece.service_list:
            services[service.key] = service
        for rs in piece.real_server_list:
            real_servers[rs.key] = rs
        for name, member, owner in piece.member_list:
            members.setdefault(name, {})[member] = owner
        addresses.update(piece.addresses)
        routes.update(piece.routes)
        delegated |= piece.delegated
    ipsets = {name: IPSet(header.name, header.kind, header.family, members.get(name, {})) for name, header in shared.ipsets.items()}
    return KernelState(
        link=shared.link,
        addresses=frozenset(addresses),
        services=services,
        real_servers=real_servers,
        ipsets=ipsets,
        chains=shared.chains,
        jumps=shared.jumps,
        sysctls=shared.sysctls,
        delegated=frozenset(delegated),
        routes=frozenset(routes),
    )


def with_shared_as_found(want: KernelState, have: KernelState, names: Names = Names()) -> KernelState:
    """`want` with what every VIP shares grown by what `have` holds of vsop's: its link, set
    headers, chains, jumps and sysctls kept where `want` has none of them (nothing shared is
    taken away). While the first sync derives its objects part by part, what the objects not yet
    derived need is unknown: a set destroyed or the link deleted would take their members and
    addresses along, so only the part that derives the last object plans the shared state exactly.
    Members of `have`'s sets are not kept: `want` decides those of its VIPs."""
    owned = names.owned_set_names()
    ipsets = dict(want.ipsets)
    for name, ipset in have.ipsets.items():
        if name in owned and name not in ipsets:
            ipsets[name] = IPSet(ipset.name, ipset.kind, ipset.family, {})
    return replace(
        want,
        link=want.link if want.link is not None else have.link,
        ipsets=ipsets,
        chains={**have.chains, **want.chains},
        jumps=want.jumps | have.jumps,
        sysctls={**have.sysctls, **want.sysctls},
    )


def desired_from(shared: KernelState, fragments: Iterable[Fragment]) -> Desired:
    """The whole Desired of the node, as desired_state would compute it from the same objects."""
    pieces = list(fragments)
    configured: dict[RealServerKey, str] = {}
    for piece in pieces:
        configured.update(dict.fromkeys(piece.configured_keys, piece.ref))
    return Desired(
        assemble(shared, pieces),
        tuple(p.ref for p in pieces if p.programmed),
        tuple(problem for p in pieces for problem in p.problems),
        configured,
        tuple(warning for p in pieces for warning in p.warnings),
    )


# VIP -> (its IPVS service keys, real server keys, {vsop set name: members}, addresses, routes).
VIPIndex = dict[str, tuple[list[Any], list[Any], dict[str, list[str]], list[str], list[str]]]


def vip_index(state: KernelState, names: Names = Names()) -> VIPIndex:
    """Everything of `state` that belongs to one VIP, by VIP: one pass over the state."""
    owned_sets = names.owned_set_names()
    index: VIPIndex = {}

    def entry(vip: str) -> tuple[list[Any], list[Any], dict[str, list[str]], list[str], list[str]]:
        found = index.get(vip)
        if found is None:
            found = index[vip] = ([], [], {}, [], [])
        return found

    for key in state.services:
        entry(key.vip)[0].append(key)
    for rs_key in state.real_servers:
        entry(rs_key.service.vip)[1].append(rs_key)
    for name, ipset in state.ipsets.items():
        if name in owned_sets:
            for member in ipset.members:
                entry(member_vip(member))[2].setdefault(name, []).append(member)
    for address in state.addresses:
        entry(address.split("/")[0])[3].append(address)
    for route in state.routes:
        entry(route.split("/")[0])[4].append(route)
    return index


def around(observed: KernelState, vips: Iterable[str], names: Names = Names(), index: VIPIndex | None = None) -> KernelState:
    """`observed` cut down to `vips`: their addresses, IPVS services (anyone's), real servers and
    members of vsop's sets; the link, chains, jumps and sysctls whole. `index`: `vip_index(observed)`,
    when the caller keeps one (then the cut costs what the VIPs hold, not what the node holds)."""
    if index is None:
        index = vip_index(observed, names)
    empty: tuple[list[Any], list[Any], dict[str, list[str]], list[str], list[str]] = ([], [], {}, [], [])
    entries = [index.get(vip, empty) for vip in vips]
    owned_sets = names.owned_set_names()
    ipsets = {}
    for name, ipset in observed.ipsets.items():
        if name in owned_sets:
            members = {m: ipset.members[m] for e in entries for m in e[2].get(name, ())}
            ipset = IPSet(ipset.name, ipset.kind, ipset.family, members, ipset.comments)
        ipsets[name] = ipset
    return KernelState(
        link=observed.link,
        addresses=frozenset(a for e in entries for a in e[3]),
        services={k: observed.services[k] for e in entries for k in e[0]},
        real_servers={k: observed.real_servers[k] for e in entries for k in e[1]},
        ipsets=ipsets,
        chains=observed.chains,
        jumps=observed.jumps,
        sysctls=observed.sysctls,
        node_addresses=observed.node_addresses,
        delegated=observed.delegated,
        routes=frozenset(r for e in entries for r in e[4]),
    )


def grace_of(fragments: Iterable[Fragment]) -> dict[ServiceKey, float]:
    grace: dict[ServiceKey, float] = {}
    for piece in fragments:
        for service in piece.service_list:
            grace[service.key] = piece.drain_seconds
    return grace


__all__ = ["DEFAULT_GRACE_SECONDS", "Fragment", "VIPIndex", "around", "vip_index", "assemble", "desired_from", "fragment", "grace_of", "refused", "shared_state", "with_shared_as_found"]
