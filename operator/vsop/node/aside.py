"""A resync's kernel read made aside: off the writer lock and the turns' thread, while changes go on.

Owns `Aside`, what happened while one such read ran (the VIPs written meanwhile, or that
something made the read unusable), and `splice`, the read made usable: each VIP written
during it takes the cache's entries, which hold those writes (a read racing a write may
have seen part of it). The resync then compares the spliced read with the cache as if it
had read under the lock: drift on any other VIP is found as before, and a VIP written
meanwhile is checked at the next resync. A write that is no one VIP's (vsop's link, a set's
header, chains, jumps, sysctls), a whole plan, a failed write, or another writer holding
the lock makes the read unusable, and the resync reads under the lock as before. So do IPVS
tables replaced wholesale since the read began (ip_vs unloaded and loaded again: its generation
moved): the read would show services the kernel no longer has, for a whole resync period.

Why: at 10k services the read is seconds (5.3 s in the test VM), and a change or a health
verdict arriving during a resync waited for all of it (issue #27: 7.3 s median against
2.55 s in quiet time; a dead backend's weight 0 once took 10.2 s instead of ~4 s).
Must not import: kopf, kubernetes, pyroute2, asyncio, vsop.adapters (pure).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable

from vsop.core import ops
from vsop.core.fragments import VIPIndex
from vsop.core.state import IPSet, KernelState, Names
from vsop.node.resync import op_vip


@dataclass
class Aside:
    """One read aside, from the moment it began (between turns) until a resync takes it."""

    written: set[str] = field(default_factory=set)  # VIPs written since it began
    unusable: str = ""  # why the read cannot stand for the kernel ("" while it can)

    def wrote(self, applied: Iterable[ops.Op]) -> None:
        """A change's writes: their VIPs keep the cache's entries; a write of no one VIP spoils the read."""
        for op in applied:
            vip = op_vip(op)
            if vip is None:
                self.spoil(f"{op.kind} written while the kernel was read")
                return
            self.written.add(vip)

    def spoil(self, why: str) -> None:
        if not self.unusable:
            self.unusable = why


@dataclass(frozen=True)
class AsideRead:
    """The kernel as a read aside found it, with its VIP index (built in the reader's thread too)."""

    aside: Aside
    state: KernelState
    index: VIPIndex
    seconds: float
    generation: object = None  # the IPVS tables' generation when the read began (IPVSAdapter.generation)


def splice(fresh: KernelState, fresh_index: VIPIndex, cached: KernelState, cached_index: VIPIndex,
           vips: Iterable[str], names: Names) -> KernelState:
    """`fresh` with, for each VIP of `vips`, the entries `cached` holds in place of those `fresh` holds
    (addresses, IPVS services and real servers, members of vsop's sets, routes). Costs what those VIPs hold,
    plus one copy of each mapping they change."""
    vips = [vip for vip in vips if vip in fresh_index or vip in cached_index]
    if not vips:
        return fresh
    empty: tuple[list, list, dict, list, list] = ([], [], {}, [], [])
    services, real_servers = dict(fresh.services), dict(fresh.real_servers)
    addresses, routes = set(fresh.addresses), set(fresh.routes)
    members: dict[str, dict[str, str]] = {}
    owned_sets = names.owned_set_names()
    for vip in vips:
        gone, kept = fresh_index.get(vip, empty), cached_index.get(vip, empty)
        for key in gone[0]:
            services.pop(key, None)
        for key in kept[0]:
            services[key] = cached.services[key]
        for rs_key in gone[1]:
            real_servers.pop(rs_key, None)
        for rs_key in kept[1]:
            real_servers[rs_key] = cached.real_servers[rs_key]
        for name, names_of in gone[2].items():
            if name in owned_sets and name in fresh.ipsets:
                table = members.setdefault(name, dict(fresh.ipsets[name].members))
                for member in names_of:
                    table.pop(member, None)
        for name, names_of in kept[2].items():
            if name in owned_sets and name in fresh.ipsets and name in cached.ipsets:
                table = members.setdefault(name, dict(fresh.ipsets[name].members))
                for member in names_of:
                    table[member] = cached.ipsets[name].members[member]
        addresses.difference_update(gone[3])
        addresses.update(kept[3])
        routes.difference_update(gone[4])
        routes.update(kept[4])
    ipsets = dict(fresh.ipsets)
    for name, table in members.items():
        ipset = fresh.ipsets[name]
        ipsets[name] = IPSet(ipset.name, ipset.kind, ipset.family, table, ipset.comments)
    return replace(fresh, services=services, real_servers=real_servers, ipsets=ipsets,
                   addresses=frozenset(addresses), routes=frozenset(routes))


__all__ = ["Aside", "AsideRead", "splice"]
