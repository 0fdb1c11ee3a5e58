"""In-memory fakes of every kernel adapter, sharing one `KernelState`.

They answer read() from the state and apply operations with the in-memory kernel
(`vsop.core.memory`, kernel checks only), count writes, and can be told to refuse a
chosen operation, so engine and API tests assert the state the fakes end in.
The same contract tests run against them and, as root, against the real adapters.
Must not import: pyroute2, subprocess, kopf, kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Sequence

from vsop.adapters.base import OperationFailed
from vsop.core import ops
from vsop.core.memory import KernelRefused, apply_op
from vsop.core.state import ChainKey, IPSet, Jump, KernelState, LinkState, Names, RealServer, RealServerKey, ServiceKey, VirtualServer
from vsop.api.errors import KernelUnsupported


@dataclass
class FakeKernel:
    """One node's kernel in memory: foreign objects are simply part of `state`."""

    state: KernelState = field(default_factory=KernelState)
    names: Names = field(default_factory=Names)
    has_ipvs: bool = True
    has_dummy: bool = True
    # Return a reason to refuse an operation, like a kernel errno would.
    refuse: Callable[[ops.Op], str | None] = lambda op: None
    writes: int = 0
    applied: list[ops.Op] = field(default_factory=list)

    def apply(self, operations: Sequence[ops.Op]) -> int:
        done = 0
        for op in operations:
            reason = self.refuse(op)
            if reason is not None:
                raise OperationFailed(op, reason)
            try:
                self.state = apply_op(self.state, op, self.names, ownership=False)
            except KernelRefused as exc:
                raise OperationFailed(op, str(exc)) from None
            self.writes += 1
            self.applied.append(op)
            done += 1
        return done


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
                raise OperationFailed(op, f"this kernel has no sysctl {op.name}")
            if current != op.value:
                writes += self.kernel.apply([op])
        return writes

    def read(self, names: Iterable[str]) -> dict[str, str]:
        return {n: self.kernel.state.sysctls[n] for n in names if n in self.kernel.state.sysctls}

    def ipv6_interfaces(self) -> list[str]:
        from vsop.core.sysctls import accept_ra_interface

        return sorted({i for name in self.kernel.state.sysctls if (i := accept_ra_interface(name)) is not None})
