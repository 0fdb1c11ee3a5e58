"""In-memory fakes of every kernel adapter, sharing one `KernelState`.

They answer read() from the state and apply operations with the in-memory kernel
(`vsop.core.memory`, kernel checks only), count writes, and can be told to refuse a
chosen operation, so engine and API tests assert the state the fakes end in.
The same contract tests run against them and, as root, against the real adapters.
Must not import: pyroute2, subprocess, kopf, kubernetes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Sequence

from vsop.adapters.base import OperationFailed
from vsop.core import ops
from vsop.core.memory import KernelRefused, apply_op
from vsop.core.state import ChainKey, IPSet, Jump, KernelState, LinkState, Names, RealServer, RealServerKey, ServiceKey, Traffic, VirtualServer
from vsop.api.errors import KernelUnsupported


@dataclass
class FakeKernel:
    """One node's kernel in memory: foreign objects are simply part of `state`."""

    state: KernelState = field(default_factory=KernelState)
    names: Names = field(default_factory=Names)
    has_ipvs: bool = True
    has_dummy: bool = True
    # The node's own IPv4 networks, as IPVS sees them: ip_vs_new_dest wants inet_addr_type() to
    # say unicast or local, so a network's broadcast address is refused (EINVAL), and so is every
    # IPv4 backend while the node has no IPv4 address at all (no local table); an address with
    # no route passes (the lookup miss defaults to unicast). None: some address, no network known.
    ipv4_networks: tuple[str, ...] | None = None
    # The built-in chains' rules in order, (family, table, chain) -> rule texts, foreign ones
    # included: a jump is inserted first (-I) and may be there twice (a crashed run), which
    # `state.jumps` (a set) cannot show; a delete removes every copy, as the real adapter does.
    builtin: dict[tuple[int, str, str], list[str]] = field(default_factory=dict)
    # Return a reason to refuse an operation, like a kernel errno would.
    refuse: Callable[[ops.Op], str | None] = lambda op: None
    writes: int = 0
    applied: list[ops.Op] = field(default_factory=list)
    ipvs_generation: int = 0  # what FakeIPVS.generation() answers: reload_ipvs() moves it

    # IPVS counters of the real servers that had traffic (`send`); they go with their real server.
    traffic: dict[RealServerKey, Traffic] = field(default_factory=dict)

    def reload_ipvs(self) -> None:
        """`rmmod ip_vs; modprobe ip_vs`: every IPVS service and real server gone, a new generation."""
        self.state = replace(self.state, services={}, real_servers={})
        self.traffic.clear()
        self.ipvs_generation += 1

    def send(self, key: RealServerKey, connections: int = 1, in_packets: int | None = None, out_packets: int = 0) -> None:
        """Packets through an existing real server, as IPVS counts them: `connections` new ones,
        `in_packets` from the clients (default one per connection), `out_packets` of replies."""
        if key not in self.state.real_servers:
            raise KeyError(f"no real server {key} of {key.service}")
        was = self.traffic.get(key, Traffic())
        self.traffic[key] = Traffic(was.connections + connections, was.in_packets + (connections if in_packets is None else in_packets),
                                    was.out_packets + out_packets)

    def apply(self, operations: Sequence[ops.Op]) -> int:
        done = 0
        for op in operations:
            reason = self.refuse(op) or self._kernel_refuses(op)
            if reason is not None:
                raise OperationFailed(op, reason)
            try:
                self.state = apply_op(self.state, op, self.names, ownership=False)
            except KernelRefused as exc:
                raise OperationFailed(op, str(exc)) from None
            self._builtin_rules(op)
            if isinstance(op, ops.DeleteRealServer):
                self.traffic.pop(op.key, None)
            elif isinstance(op, ops.DeleteService):
                for key in [key for key in self.traffic if key.service == op.key]:
                    del self.traffic[key]
            self.writes += 1
            self.applied.append(op)
            done += 1
        return done

    def _builtin_rules(self, op: ops.Op) -> None:
        if isinstance(op, ops.AddJump):
            self.builtin.setdefault((op.jump.family, op.jump.table, op.jump.chain), []).insert(0, op.jump.rule)
        elif isinstance(op, ops.DeleteJump):
            key = (op.jump.family, op.jump.table, op.jump.chain)
            self.builtin[key] = [rule for rule in self.builtin.get(key, []) if rule != op.jump.rule]


    def _kernel_refuses(self, op: ops.Op) -> str | None:
        """What the kernel refuses that depends on the node, not on the state (core.memory checks that)."""
        if isinstance(op, (ops.AddRealServer, ops.EditRealServer)) and ":" not in op.real_server.key.address:
            address = ipaddress.IPv4Address(op.real_server.key.address)
            networks = [ipaddress.IPv4Network(n, strict=False) for n in (self.ipv4_networks or ())]
            if (
                address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255")
                or self.ipv4_networks == ()  # 0.0.0.0/8 passes: Debian's 6.1 takes 0.0.0.1 (vm tier)
                or any(address == n.broadcast_address and n.prefixlen < 31 for n in networks)
            ):
                return f"backend {address} is not routable from this node"
        return None


class _View:
    handles: tuple[type[ops.Op], ...] = ()

    def __init__(self, kernel: FakeKernel):
        self.kernel = kernel

    def apply(self, operations: Sequence[ops.Op]) -> int:
        wrong = [op for op in operations if not isinstance(op, self.handles)]
        if wrong:
            raise TypeError(f"{type(self).__name__} cannot apply {wrong[0].kind}")
        return self.kernel.apply(operations)


class FakeIPVS(_View):
    handles = (ops.AddService, ops.EditService, ops.DeleteService, ops.AddRealServer, ops.EditRealServer, ops.DeleteRealServer)

    def probe(self) -> None:
        if not self.kernel.has_ipvs:
            raise KernelUnsupported("this kernel has no IPVS: load ip_vs or use mode: keepalived")

    def read(self) -> tuple[dict[ServiceKey, VirtualServer], dict[RealServerKey, RealServer]]:
        # The kernel knows no owners: what is read back carries none.
        services = {k: replace(v, owner="") for k, v in self.kernel.state.services.items()}
        return services, dict(self.kernel.state.real_servers)

    def read_real_servers(self, services: Iterable[ServiceKey]) -> dict[RealServerKey, RealServer]:
        wanted = frozenset(services)
        return {k: v for k, v in self.kernel.state.real_servers.items() if k.service in wanted}

    def traffic(self, services: Iterable[ServiceKey]) -> dict[RealServerKey, Traffic]:
        wanted = frozenset(services)
        return {k: self.kernel.traffic.get(k, Traffic()) for k in self.kernel.state.real_servers if k.service in wanted}

    def generation(self) -> int:
        return self.kernel.ipvs_generation

    def forget_reads(self) -> None:
        pass  # keeps nothing between reads


class FakeLinks(_View):
    handles = (ops.CreateLink, ops.SetLinkUp, ops.DeleteLink, ops.AddAddress, ops.DeleteAddress)

    def probe(self, link: str) -> None:
        if not self.kernel.has_dummy:
            raise KernelUnsupported("this kernel cannot create dummy links: load the dummy module or use mode: keepalived")

    def read(self, link: str) -> tuple[LinkState | None, frozenset[str], frozenset[str]]:
        state = self.kernel.state
        if state.link is None or state.link.name != link:
            return None, frozenset(), state.node_addresses
        return state.link, state.addresses, state.node_addresses


class FakeRoutes(_View):
    """vsop's table as the state holds it: only vsop's own routes (foreign ones are the real kernel's business)."""

    handles = (ops.AddRoute, ops.DeleteRoute)

    def read(self, table: int, protocol: int) -> frozenset[str]:
        names = self.kernel.names
        if (table, protocol) != (names.route_table, names.route_protocol):
            return frozenset()
        return frozenset(self.kernel.state.routes)


class FakeIPSets(_View):
    handles = (ops.CreateSet, ops.DestroySet, ops.AddSetMember, ops.DeleteSetMember)

    def read(self, names: frozenset[str]) -> dict[str, IPSet]:
        return {k: v for k, v in self.kernel.state.ipsets.items() if k in names}


class FakeIPTables(_View):
    handles = (ops.WriteChain, ops.DeleteChain, ops.AddJump, ops.DeleteJump)

    def read(self, chains: frozenset[str]) -> tuple[dict[ChainKey, tuple[str, ...]], frozenset[Jump]]:
        from vsop.core.plan import jump_target

        state = self.kernel.state
        return (
            {k: v for k, v in state.chains.items() if k.chain in chains},
            frozenset(j for j in state.jumps if jump_target(j.rule) in chains),
        )


class FakeSysctls(_View):
    """Like /proc/sys: only names the kernel has exist, and writing the current value writes nothing."""

    handles = (ops.SetSysctl,)

    def apply(self, operations: Sequence[ops.Op]) -> int:
        writes = 0
        for op in operations:
            assert isinstance(op, ops.SetSysctl)
            current = self.kernel.state.sysctls.get(op.name)
            if current is None:
                raise OperationFailed(op, "this kernel has no such setting (is the module that provides it loaded?)")
            if not _integers(op.value):  # proc_dointvec and its kin: EINVAL
                raise OperationFailed(op, "the kernel refused the value")
            if current != op.value:
                writes += self.kernel.apply([op])
        return writes

    def read(self, names: Iterable[str]) -> dict[str, str]:
        return {n: self.kernel.state.sysctls[n] for n in names if n in self.kernel.state.sysctls}

    def ipv6_interfaces(self) -> list[str]:
        from vsop.core.sysctls import accept_ra_interface

        return sorted({i for name in self.kernel.state.sysctls if (i := accept_ra_interface(name)) is not None})


def _integers(value: str) -> bool:
    """Every setting vsop writes is one or more integers (ip_local_port_range: two)."""
    words = value.split()
    return bool(words) and all(w.lstrip("-").isdigit() for w in words)
