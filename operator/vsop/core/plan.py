"""Diff desired against observed kernel state and order the changes.

Owns what counts as vsop's in an observed state (its link and the VIPs bound there,
IPVS services on those VIPs, its sets, chains and jumps) and the order that keeps
the node safe while it changes: the VIP filter is in place before a VIP is bound,
an address is bound before its IPVS service exists, a VIP:port is accepted by the
filter only once its service and real servers exist and stops being accepted before
the service goes (so a VIP:port without a service is rejected, never handed to a local
listener on `*:port`), new real servers come before old ones leave, a VIP's route
(announce: bgp) is added once its services and real servers exist and are accepted, and
withdrawn before anything of it is removed, services go before their address, jumps go
before their chains, chains before their sets. Anything not vsop's is never in a plan.
Pure: must not import kopf, pyroute2, jinja2, subprocess, socket or vsop.adapters.
"""

from __future__ import annotations

import functools
import shlex
from dataclasses import dataclass, replace
from typing import Iterable

from vsop.core import ops
from vsop.core.desired import Problem
from vsop.core.state import ChainKey, IPSet, KernelState, Names, RealServer, RealServerKey, ServiceKey, member_service
from vsop.core.sysctls import IPV6_FORWARDING, accept_ra_interface, keep_router_advertisements


class PlanError(Exception):
    """The observed state cannot be reconciled safely (e.g. a set of vsop's name with a foreign type)."""


@dataclass(frozen=True)
class Plan:
    ops: tuple[ops.Op, ...]
    problems: tuple[Problem, ...] = ()
    left_alone: frozenset[str] = frozenset()  # VIPs not bound because someone else's IPVS services sit on them

    def __bool__(self) -> bool:
        return bool(self.ops)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.kind] = counts.get(op.kind, 0) + 1
        return counts


# Execution order, by op type. Additions first (safest order for traffic), then removals.
PHASES: tuple[type[ops.Op], ...] = (
    ops.SetSysctl,
    ops.CreateSet,
    ops.AddSetMember,
    ops.WriteChain,
    ops.AddJump,
    ops.CreateLink,
    ops.SetLinkUp,
    ops.AddAddress,
    ops.AddService,
    ops.EditService,
    ops.AddRealServer,
    ops.EditRealServer,
    # Accepted once the service and its real servers exist (one IPVS run before, one ipset
    # run here); announced once accepted; withdrawn, then no longer accepted.
    ops.AddAcceptMember,
    ops.AddRoute,
    ops.DeleteRoute,
    ops.DeleteAcceptMember,
    ops.DeleteRealServer,
    ops.DeleteService,
    ops.DeleteAddress,
    ops.DeleteSetMember,
    ops.DeleteLink,
    ops.DeleteJump,
    ops.DeleteChain,
    ops.DestroySet,
)


def owned(observed: KernelState, names: Names, delegated: frozenset[ServiceKey] = frozenset()) -> KernelState:
    """The part of an observed state that is vsop's; everything else is foreign.

    An IPVS service is vsop's when its VIP is bound on vsop's link, unless it is
    `delegated` (keepalived programs it for a mode: keepalived object).
    """
    link = observed.link if observed.link is not None and observed.link.name == names.link else None
    addresses = observed.addresses if link is not None else frozenset()
    bound = frozenset(a.split("/")[0] for a in addresses)
    chains = names.owned_chains()
    return KernelState(
        link=link,
        addresses=addresses,
        services={k: v for k, v in observed.services.items() if k.vip in bound and k not in delegated},
        real_servers={
            k: v for k, v in observed.real_servers.items() if k.service.vip in bound and k.service not in delegated
        },
        ipsets={k: v for k, v in observed.ipsets.items() if k in names.owned_set_names()},
        chains={k: v for k, v in observed.chains.items() if k.chain in chains},
        jumps=frozenset(j for j in observed.jumps if jump_target(j.rule) in chains),
        sysctls=dict(observed.sysctls),
        node_addresses=observed.node_addresses,
        routes=observed.routes,  # read from vsop's table with vsop's protocol only: all vsop's
    )


@functools.lru_cache(maxsize=4096)  # a handful of distinct rules, parsed for every plan
def jump_target(rule: str) -> str | None:
    try:
        words = shlex.split(rule)  # a quoted comment may mention a chain without jumping to it
    except ValueError:
        words = rule.split()
    for flag in ("-j", "--jump", "-g", "--goto"):
        if flag in words:
            index = words.index(flag)
            if index + 1 < len(words):
                return words[index + 1]
    return None


def without_vips(state: KernelState, vips: Iterable[str], names: Names, link_elsewhere: bool = False) -> KernelState:
    """The desired state with some VIPs left out entirely (services, members, address).

    `link_elsewhere`: the state is only part of the node's and VIPs outside it keep the link.
    """
    drop = frozenset(vips)
    if not drop:
        return state
    ipsets = {}
    for name, ipset in state.ipsets.items():
        kept = {m: c for m, c in ipset.members.items() if m.split(",")[0] not in drop}
        ipsets[name] = replace(ipset, members=kept)
    addresses = frozenset(a for a in state.addresses if a.split("/")[0] not in drop)
    return replace(
        state,
        link=state.link if addresses or link_elsewhere else None,
        addresses=addresses,
        routes=frozenset(r for r in state.routes if r.split("/")[0] not in drop),
        services={k: v for k, v in state.services.items() if k.vip not in drop},
        real_servers={k: v for k, v in state.real_servers.items() if k.service.vip not in drop},
        ipsets=ipsets,
    )


def plan(
    desired: KernelState,
    observed: KernelState,
    names: Names = Names(),
    *,
    link_elsewhere: bool = False,
    keep_accept_ra: bool = False,
) -> Plan:
    """The ordered operations that turn the observed node into the desired one.

    `link_elsewhere`: both states are cut down to some VIPs (vsop.core.fragments.around) and
    VIPs outside them keep vsop's link bound, whatever happens to these.
    Turning IPv6 forwarding on sets accept_ra=2 first where it is 1 (see vsop.core.sysctls);
    with `keep_accept_ra` the IPv6 VIPs that need it are refused instead.
    """
    mine = owned(observed, names, desired.delegated)
    problems: list[Problem] = []
    desired, refused = _router_advertisements(desired, observed, names, keep_accept_ra)
    problems += refused

    # An IPVS service on an address vsop has not bound belongs to someone else: binding
    # that VIP would silently adopt it (and the next sync delete it), whether or not vsop
    # wants the same port. Leave that VIP alone.
    wanted = {key.vip for key in desired.services} | desired.bound_vips()
    clashing = sorted(
        {key.vip for key in observed.services if key.vip in wanted and key not in mine.services and key not in desired.delegated}
    )
    for vip in clashing:
        owners = sorted({s.owner for k, s in desired.services.items() if k.vip == vip and s.owner})
        for owner in owners or [""]:
            problems.append(
                Problem(owner, "VIPInUse", f"VIP {vip} has IPVS services vsop does not own; not binding it")
            )
    desired = without_vips(desired, clashing, names, link_elsewhere)

    planned: list[ops.Op] = []
    planned += _sysctls(desired, mine)
    planned += _link(desired, mine, names)
    planned += _addresses(desired, mine, names)
    planned += _ipsets(desired, mine, names)
    planned += _chains(desired, mine)
    planned += _ipvs(desired, mine)
    planned += _routes(desired, mine, names)
    order = {phase: index for index, phase in enumerate(PHASES)}
    planned.sort(key=lambda op: order[type(op)])  # stable: keeps the sorted order within a phase
    return Plan(tuple(planned), tuple(problems), frozenset(clashing))


def _router_advertisements(
    desired: KernelState, observed: KernelState, names: Names, keep_accept_ra: bool
) -> tuple[KernelState, list[Problem]]:
    keep = keep_router_advertisements(desired.sysctls, observed.sysctls, names.link)
    if not keep:
        return desired, []
    if not keep_accept_ra:
        return replace(desired, sysctls={**keep, **desired.sysctls}), []
    interfaces = ", ".join(sorted(str(accept_ra_interface(name)) for name in keep))
    vips = sorted(a.split("/")[0] for a in desired.addresses if ":" in a)
    v6_members = desired.ipsets.get(names.set_name(names.vips_set, 6))
    owners = dict(v6_members.members) if v6_members is not None else {}
    problems = [
        Problem(
            owners.get(vip, ""),
            "RouterAdvertisements",
            f"IPv6 VIP {vip} needs net.ipv6.conf.all.forwarding=1, which makes the kernel ignore router "
            f"advertisements on {interfaces} (accept_ra=1): a default route learned from them would expire. "
            "vsop sets accept_ra=2 there unless told to keep accept_ra; not programming it",
        )
        for vip in sorted(set(vips) | {m for m in owners if ":" in m})
    ]
    sysctls = {name: value for name, value in desired.sysctls.items() if name != IPV6_FORWARDING}
    return replace(without_vips(desired, vips, names), sysctls=sysctls), problems


def _sysctls(desired: KernelState, mine: KernelState) -> list[ops.Op]:
    # accept_ra=2 before forwarding=1: never a moment where an interface drops RAs.
    return [
        ops.SetSysctl(name, value, mine.sysctls.get(name))
        for name, value in sorted(desired.sysctls.items(), key=lambda item: (accept_ra_interface(item[0]) is None, item[0]))
        if mine.sysctls.get(name) != value
    ]


def _link(desired: KernelState, mine: KernelState, names: Names) -> list[ops.Op]:
    if desired.link is not None and mine.link is None:
        return [ops.CreateLink(names.link)]
    if desired.link is not None and mine.link is not None and not mine.link.up:
        return [ops.SetLinkUp(names.link)]
    if desired.link is None and mine.link is not None:
        return [ops.DeleteLink(names.link)]
    return []


def _addresses(desired: KernelState, mine: KernelState, names: Names) -> list[ops.Op]:
    result: list[ops.Op] = [ops.AddAddress(names.link, a) for a in sorted(desired.addresses - mine.addresses)]
    if desired.link is not None:  # deleting the link takes its addresses with it
        result += [ops.DeleteAddress(names.link, a) for a in sorted(mine.addresses - desired.addresses)]
    return result


def _ipsets(desired: KernelState, mine: KernelState, names: Names) -> list[ops.Op]:
    accept_sets = {names.set_name(names.vip_ports_set, family) for family in (4, 6)}
    result: list[ops.Op] = []
    for name, want in sorted(desired.ipsets.items()):
        add, delete = (ops.AddAcceptMember, ops.DeleteAcceptMember) if name in accept_sets else (ops.AddSetMember, ops.DeleteSetMember)
        have = mine.ipsets.get(name)
        if have is not None and have.header != want.header:
            comments = lambda s: "" if s.comments else " without comments"  # noqa: E731
            raise PlanError(
                f"ipset {name} exists as {have.kind} IPv{have.family}{comments(have)}, vsop needs {want.kind} "
                f"IPv{want.family}{comments(want)}; remove it (vsop cleanup) and apply again"
            )
        current = have.members if have is not None else {}
        if have is None:
            result.append(ops.CreateSet(IPSet(want.name, want.kind, want.family)))
        for member, comment in sorted(want.members.items()):
            if member not in current:
                result.append(add(name, member, comment))
            elif current[member] != comment:
                result.append(add(name, member, comment, replace=True))
        result += [delete(name, m) for m in sorted(set(current) - set(want.members))]
    for name in sorted(set(mine.ipsets) - set(desired.ipsets)):
        if name in accept_sets:
            # The set goes last, after the services: a VIP:port whose service is deleted
            # stops being accepted first, as when only that port goes.
            result += [
                ops.DeleteAcceptMember(name, m)
                for m in sorted(mine.ipsets[name].members)
                if (key := member_service(m)) is not None and key in mine.services and key not in desired.services
            ]
        result.append(ops.DestroySet(name))  # its members go with it
    return result


def _dependency_order(chains: dict[ChainKey, tuple[str, ...]]) -> list[ChainKey]:
    """Chains that jump to none of the others first, so a target exists before its jump."""
    names = {key.chain for key in chains}
    return sorted(chains, key=lambda key: (sum(jump_target(rule) in names for rule in chains[key]), key))


def _chains(desired: KernelState, mine: KernelState) -> list[ops.Op]:
    result: list[ops.Op] = []
    for key in _dependency_order(dict(desired.chains)):
        if mine.chains.get(key) != desired.chains[key]:
            result.append(ops.WriteChain(key, desired.chains[key], exists=key in mine.chains))
    gone = {key: rules for key, rules in mine.chains.items() if key not in desired.chains}
    result += [ops.DeleteChain(key) for key in reversed(_dependency_order(gone))]
    result += [ops.AddJump(j) for j in sorted(desired.jumps - mine.jumps)]
    result += [ops.DeleteJump(j) for j in sorted(mine.jumps - desired.jumps)]
    return result


def _routes(desired: KernelState, mine: KernelState, names: Names) -> list[ops.Op]:
    table, protocol = names.route_table, names.route_protocol
    return [ops.AddRoute(r, table, protocol) for r in sorted(desired.routes - mine.routes)] + [
        ops.DeleteRoute(r, table, protocol) for r in sorted(mine.routes - desired.routes)
    ]


def _by_service(item: tuple[ServiceKey, object]) -> tuple[str, str, int]:
    key = item[0]
    return (key.protocol, key.vip, key.port)  # a tuple sorts far faster than dataclass __lt__


def _by_real_server(item: tuple[RealServerKey, object]) -> tuple[str, str, int, str, int]:
    key = item[0]
    return (key.service.protocol, key.service.vip, key.service.port, key.address, key.port)


def _ipvs(desired: KernelState, mine: KernelState) -> list[ops.Op]:
    result: list[ops.Op] = []
    for key, want in sorted(desired.services.items(), key=_by_service):
        have = mine.services.get(key)
        if have is None:
            result.append(ops.AddService(want))
        elif not want.same_kernel_config(have):
            # In place: deleting and re-adding would drop every connection of the service.
            result.append(ops.EditService(want, have))
    gone_services: set[ServiceKey] = set(mine.services) - set(desired.services)
    for key, want_rs in sorted(desired.real_servers.items(), key=_by_real_server):
        have_rs: RealServer | None = mine.real_servers.get(key)
        if have_rs is None:
            result.append(ops.AddRealServer(want_rs))
        elif not want_rs.same_kernel_config(have_rs):
            result.append(ops.EditRealServer(want_rs, have_rs))
    for key, _ in sorted(((k, None) for k in mine.real_servers.keys() - desired.real_servers.keys()), key=_by_real_server):
        if key.service not in gone_services:  # deleting a service deletes its real servers
            result.append(ops.DeleteRealServer(key))
    result += [ops.DeleteService(key) for key, _ in sorted(((k, None) for k in gone_services), key=_by_service)]
    return result

