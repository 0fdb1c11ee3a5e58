"""The Kernel port: the bundle of adapters one node's kernel is reached through.

Owns `Kernel` (one adapter per kind of kernel object, and which of them applies an
operation), reading every adapter into one observed `KernelState`, the running kernel's
version and whether its conntrack is liberal, and `fake_kernel` (the same bundle of in-memory fakes, vsop.adapters.fake).
The real bundle is built by vsop.adapters.real. Planning and executing are vsop.node's.
Must not import: kopf, kubernetes, jinja2, pyroute2 (the real adapters are built elsewhere),
vsop.node.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

from vsop.adapters.base import Adapter, IPSetAdapter, IPTablesAdapter, IPVSAdapter, LinkAdapter, RouteAdapter, SysctlAdapter
from vsop.adapters.conntrack import ConntrackCleaner
from vsop.adapters.sysctl import SysctlRecord
from vsop.core import ops
from vsop.core.desired import ARP_SYSCTLS, TCP_LIBERAL_SYSCTL, family_sysctls, kernel_sysctls, tcp_liberal
from vsop.core.sysctls import accept_ra_name
from vsop.core.state import KernelState, Names

if TYPE_CHECKING:
    from vsop.adapters.fake import FakeKernel

ALL_SYSCTLS = tuple(sorted({*family_sysctls(4), *family_sysctls(6), *kernel_sysctls((6, 0)), *ARP_SYSCTLS}))


def running_kernel_version() -> tuple[int, int] | None:
    """(major, minor) of the running kernel, from its release string."""
    import platform

    parts = platform.release().split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return None


def conntrack_tcp_liberal(sysctls: SysctlAdapter | None = None) -> bool:
    """Whether the kernel's conntrack is liberal (vsop.core.desired.TCP_LIBERAL_SYSCTL), read through
    `sysctls` (default: this host's /proc/sys). Without conntrack loaded yet it reads as not liberal,
    its default once loaded. Read at start by the agents, as kube-proxy reads it, and by each `apply`
    and `plan`."""
    if sysctls is None:
        from vsop.adapters.sysctl import SysctlKernel

        sysctls = SysctlKernel()
    return tcp_liberal(sysctls.read([TCP_LIBERAL_SYSCTL]))


@dataclass
class Kernel:
    ipvs: IPVSAdapter
    links: LinkAdapter
    ipsets: IPSetAdapter
    iptables: IPTablesAdapter
    sysctls: SysctlAdapter
    # Forgets the conntrack entries of removed UDP real servers; None: nobody does (a dry run).
    conntrack: ConntrackCleaner | None = None
    # The values of the settings vsop changed, before its first change; None: not recorded.
    sysctl_record: SysctlRecord | None = None
    # vsop's routing table (announce: bgp); None: no routes are read or written.
    routes: RouteAdapter | None = None
    # Makes a Kernel of its own adapters (its own sockets) for reads in another thread, beside
    # this one's writes (a resync's read made aside, vsop.node.aside); None: reads stay on this one.
    reader: Callable[[], "Kernel"] | None = None

    def adapter_for(self, op: ops.Op) -> Adapter:
        for adapter in (self.ipvs, self.links, self.ipsets, self.iptables, self.sysctls, self.routes):
            if adapter is not None and isinstance(op, adapter.handles):
                return adapter
        raise TypeError(f"no adapter handles {op.kind}")


def read_observed(kernel: Kernel, names: Names) -> KernelState:
    link, addresses, node_addresses = kernel.links.read(names.link)
    services, real_servers = kernel.ipvs.read()
    chains, jumps = kernel.iptables.read(names.owned_chains())
    return KernelState(
        link=link,
        addresses=addresses,
        services=services,
        real_servers=real_servers,
        ipsets=kernel.ipsets.read(names.owned_set_names()),
        chains=chains,
        jumps=jumps,
        # accept_ra of every interface but vsop's own link: plans never touch that one (it gets no
        # RAs), and the kernel makes it with the link, so the first sync's read (before the link)
        # lacked it and every first resync found the sysctls drifted.
        sysctls=kernel.sysctls.read((*ALL_SYSCTLS, *(accept_ra_name(i) for i in kernel.sysctls.ipv6_interfaces() if i != names.link))),
        node_addresses=node_addresses,
        routes=kernel.routes.read(names.route_table, names.route_protocol) if kernel.routes is not None else frozenset(),
    )


def fake_kernel(state: KernelState | None = None, names: Names = Names(), reader: bool = False) -> tuple[Kernel, "FakeKernel"]:
    """A Kernel of in-memory fakes sharing one state, and that state's holder. `reader`: the Kernel
    makes readers (more fake views of the same state), as the real one does."""
    from vsop.adapters.conntrack import FakeConntrack
    from vsop.adapters.fake import FakeIPSets, FakeIPTables, FakeIPVS, FakeKernel, FakeLinks, FakeRoutes, FakeSysctls
    from vsop.adapters.sysctl import MemoryRecord

    state = state or KernelState()
    # Like a kernel with IPVS loaded: every setting vsop reads exists, off by default.
    state = replace(state, sysctls={**{name: "0" for name in ALL_SYSCTLS}, **state.sysctls})
    fake = FakeKernel(state, names)
    def views() -> Kernel:
        return Kernel(FakeIPVS(fake), FakeLinks(fake), FakeIPSets(fake), FakeIPTables(fake), FakeSysctls(fake), FakeConntrack(),
                      MemoryRecord(), FakeRoutes(fake), reader=views if reader else None)

    return views(), fake
