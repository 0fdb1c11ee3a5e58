"""What the kernel refused, kept as found: a target that leaves some VIPs (and a family's shared part) as they are.

Owns `keep_as_found`: a desired state with everything of some VIPs (addresses, IPVS services
and real servers, members of vsop's sets, routes) replaced by what the kernel holds for them,
and, for an address family the kernel refused (no IPv6 stack: its sysctls absent), that
family's sysctls, sets, chains and jumps as found. A plan of the result writes nothing on
those VIPs and nothing of that family, so one refused VIP never stops the rest of the node
(vsop.node.refusals decides which VIPs and families, and when to try them again). It also
owns which address family a refused operation shows missing (`op_family`) and a VIP's (`vip_family`).
Pure: must not import kopf, pyroute2, jinja2, subprocess, socket or vsop.adapters.
"""

from __future__ import annotations

from typing import AbstractSet

from vsop.core import ops
from vsop.core.fragments import around, member_vip, vip_index
from vsop.core.state import IPSet, KernelState, Names


def vip_family(vip: str) -> int:
    return 6 if ":" in vip else 4


def is_ipv6_sysctl(name: str) -> bool:
    return name.startswith(("net.ipv6.", "net/ipv6/"))


def op_family(op: ops.Op) -> int | None:
    """The address family a refused operation shows this kernel lacks: 6 for a setting of IPv6
    (a node booted with ipv6.disable=1 has no net.ipv6 settings at all; the sysctls go first in a
    plan). None for anything else: a set, chain or jump of either family refused (a held xtables
    lock, a missing module) is no sign of a missing stack, and fails the sync as a whole."""
    if isinstance(op, ops.SetSysctl) and is_ipv6_sysctl(op.name):
        return 6
    return None


def keep_as_found(want: KernelState, have: KernelState, vips: AbstractSet[str], families: AbstractSet[int] = frozenset(), names: Names = Names()) -> KernelState:
    """`want` with `vips`, every VIP of `families` and those families' shared part as `have` holds them."""
    if not vips and not families:
        return want

    def out(vip: str) -> bool:
        return vip in vips or vip_family(vip) in families

    cut = set(vips) | ({vip for vip in vip_index(have, names) if vip_family(vip) in families} if families else set())
    found = around(have, cut, names)
    owned_sets = names.owned_set_names()
    ipsets: dict[str, IPSet] = {}
    for name, ipset in want.ipsets.items():
        if name in owned_sets:
            kept = {m: o for m, o in ipset.members.items() if not out(member_vip(m))}
            there = found.ipsets.get(name)
            kept.update(there.members if there is not None else {})
            ipset = IPSet(ipset.name, ipset.kind, ipset.family, kept, ipset.comments)
        ipsets[name] = ipset
    state = KernelState(
        link=want.link,
        addresses=frozenset(a for a in want.addresses if not out(a.split("/")[0])) | found.addresses,
        # Services handed to keepalived are nobody's to plan here, on either side (core.plan.owned).
        services={**{k: v for k, v in want.services.items() if not out(k.vip)},
                  **{k: v for k, v in found.services.items() if k not in want.delegated}},
        real_servers={**{k: v for k, v in want.real_servers.items() if not out(k.service.vip)},
                      **{k: v for k, v in found.real_servers.items() if k.service not in want.delegated}},
        ipsets=ipsets,
        chains=want.chains,
        jumps=want.jumps,
        sysctls=want.sysctls,
        node_addresses=want.node_addresses,
        delegated=want.delegated,
        routes=frozenset(r for r in want.routes if not out(r.split("/")[0])) | found.routes,
    )
    return _families_as_found(state, have, families)


def _families_as_found(want: KernelState, have: KernelState, families: AbstractSet[int]) -> KernelState:
    """The sysctls, sets, chains and jumps of `families` as `have` holds them (absent when it has none)."""
    if not families:
        return want
    sysctls = dict(want.sysctls)
    if 6 in families:
        for name in [n for n in sysctls if is_ipv6_sysctl(n)]:
            if name in have.sysctls:
                sysctls[name] = have.sysctls[name]
            else:
                del sysctls[name]
    ipsets = {name: ipset for name, ipset in want.ipsets.items() if ipset.family not in families}
    ipsets.update({name: ipset for name, ipset in have.ipsets.items() if ipset.family in families})
    chains = {key: rules for key, rules in want.chains.items() if key.family not in families}
    chains.update({key: rules for key, rules in have.chains.items() if key.family in families})
    jumps = frozenset(j for j in want.jumps if j.family not in families) | frozenset(j for j in have.jumps if j.family in families)
    return KernelState(
        link=want.link, addresses=want.addresses, services=want.services, real_servers=want.real_servers, ipsets=ipsets,
        chains=chains, jumps=jumps, sysctls=sysctls, node_addresses=want.node_addresses, delegated=want.delegated, routes=want.routes,
    )


__all__ = ["is_ipv6_sysctl", "keep_as_found", "op_family", "vip_family"]
