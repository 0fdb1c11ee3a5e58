"""The desired state cut into per-object pieces, and a node's state cut around some VIPs.

Owns what the incremental reconciler (vsop.node) needs from the core:
- `Fragment`: one VirtualService's contribution to the desired state (its IPVS services
  and real servers, set members, bound address, problems), derived by `desired_state`
  itself from that object alone, so the two can never disagree;
- `shared_state` (defined beside `desired_state`, which builds on it): the part that depends only on which address families and flags are in
  use (link, set headers, the constant chains and jumps, sysctls);
- `assemble`: fragments into the desired state of some VIPs (or of all of them);
- `around`: an observed state cut down to some VIPs, shared objects kept whole.
Planning `assemble(..., vips)` against `around(observed, vips)` yields the operations a
whole plan would make for those VIPs plus the shared objects, provided everything outside
them already matches; the property test in tests/unit/test_reconciler.py checks that any
sequence of changes leaves the kernel exactly as a full sync from scratch would.
Pure: must not import kopf, pyroute2, jinja2, subprocess, socket or vsop.adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

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
from vsop.model import VirtualService

def member_vip(member: str) -> str:
    """The VIP of a set member: "VIP,proto:port" or "VIP"."""
    return member.split(",", 1)[0]


@dataclass(frozen=True)
class Fragment:
    """What one VirtualService adds to this node's desired state (empty when not programmed here)."""

    ref: str
    vip: str
    programmed: bool = False
    problems: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()
    services: Mapping[ServiceKey, VirtualServer] = field(default_factory=dict)
    real_servers: Mapping[RealServerKey, RealServer] = field(default_factory=dict)
    members: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # set name -> member -> owner
    addresses: frozenset[str] = frozenset()
    delegated: frozenset[ServiceKey] = frozenset()
    configured: Mapping[RealServerKey, str] = field(default_factory=dict)
    family: int | None = None  # the family it needs sets, chains and sysctls for, when programmed
    arp: bool = False  # needs the ARP sysctls (suppressARP, IPv4)
    grace: Mapping[ServiceKey, float] = field(default_factory=dict)  # drain timeout per IPVS service


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
) -> Fragment:
    """The fragment of a VirtualService that won its conflicts (or has none); `vip_owners`: other objects' VIPs its backends hit."""
    desired = desired_state(
        [vs], node, names=names, endpoints=endpoints, node_addresses=node_addresses, reserved=reserved, out_of_service=out_of_service,
        vip_owners=vip_owners,
    )
    state = desired.state
    programmed = vs.ref in desired.programmed
    members = {name: dict(ipset.members) for name, ipset in state.ipsets.items() if ipset.members}
    grace = {key: float(vs.spec.drain.timeout_seconds) for key in state.services}
    return Fragment(
        ref=vs.ref,
        vip=vs.spec.vip,
        programmed=programmed,
        problems=desired.problems,
        warnings=desired.warnings,
        services=dict(state.services),
        real_servers=dict(state.real_servers),
        members=members,
        addresses=state.addresses,
        delegated=state.delegated,
        configured=dict(desired.configured),
        family=vs.spec.family if programmed else None,
        arp=programmed and vs.spec.suppress_arp and vs.spec.family == 4,
        grace=grace,
    )


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
    delegated: set[ServiceKey] = set()
    for piece in fragments:
        if vips is not None and piece.vip not in vips:
            continue
        services.update(piece.services)
        real_servers.update(piece.real_servers)
        for name, owned_members in piece.members.items():
            members.setdefault(name, {}).update(owned_members)
        addresses |= piece.addresses
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
    )


def desired_from(shared: KernelState, fragments: Iterable[Fragment]) -> Desired:
    """The whole Desired of the node, as desired_state would compute it from the same objects."""
    pieces = list(fragments)
    configured: dict[RealServerKey, str] = {}
    for piece in pieces:
        configured.update(piece.configured)
    return Desired(
        assemble(shared, pieces),
        tuple(p.ref for p in pieces if p.programmed),
        tuple(problem for p in pieces for problem in p.problems),
        configured,
        tuple(warning for p in pieces for warning in p.warnings),
    )


def around(observed: KernelState, vips: frozenset[str], names: Names = Names()) -> KernelState:
    """`observed` cut down to `vips`: their addresses, IPVS services (anyone's), real servers and
    members of vsop's sets; the link, chains, jumps and sysctls whole."""
    owned_sets = names.owned_set_names()
    ipsets = {
        name: (IPSet(s.name, s.kind, s.family, {m: c for m, c in s.members.items() if member_vip(m) in vips}, s.comments) if name in owned_sets else s)
        for name, s in observed.ipsets.items()
    }
    return KernelState(
        link=observed.link,
        addresses=frozenset(a for a in observed.addresses if a.split("/")[0] in vips),
        services={k: v for k, v in observed.services.items() if k.vip in vips},
        real_servers={k: v for k, v in observed.real_servers.items() if k.service.vip in vips},
        ipsets=ipsets,
        chains=observed.chains,
        jumps=observed.jumps,
        sysctls=observed.sysctls,
        node_addresses=observed.node_addresses,
        delegated=observed.delegated,
    )


def grace_of(fragments: Iterable[Fragment]) -> dict[ServiceKey, float]:
    grace: dict[ServiceKey, float] = {}
    for piece in fragments:
        grace.update(piece.grace)
    return grace


__all__ = ["DEFAULT_GRACE_SECONDS", "Fragment", "around", "assemble", "desired_from", "fragment", "grace_of", "refused", "shared_state"]
