"""The small Protocols every kernel adapter implements, real or fake.

Each adapter reads one kind of kernel state into the core's shapes and applies a
run of consecutive plan operations of the kinds it handles (so it may batch them:
one iptables-restore per table, pipelined netlink requests). On the first failure it
raises `OperationFailed` naming that operation; operations before it are applied,
none after it. It returns how many kernel writes it made.
Must not import: kopf, kubernetes, jinja2; adapters implement, they do not plan.
"""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence, runtime_checkable

from vsop.core import ops
from vsop.core.state import ChainKey, IPSet, Jump, LinkState, RealServer, RealServerKey, ServiceKey, Traffic, VirtualServer


class OperationFailed(Exception):
    """A kernel refused one operation; `reason` is worded for a person, not an errno."""

    def __init__(self, op: ops.Op, reason: str):
        self.op = op
        self.reason = reason
        super().__init__(f"{op.kind} {op.describe()}: {reason}")


@runtime_checkable
class Adapter(Protocol):
    handles: tuple[type[ops.Op], ...]

    def apply(self, operations: Sequence[ops.Op]) -> int:
        """Apply in order; raise OperationFailed at the first refusal; return writes made."""
        ...


class IPVSAdapter(Adapter, Protocol):
    """AddService EditService DeleteService AddRealServer EditRealServer DeleteRealServer."""

    def probe(self) -> None:
        """Raise KernelUnsupported when this kernel has no IPVS."""
        ...

    def read(self) -> tuple[dict[ServiceKey, VirtualServer], dict[RealServerKey, RealServer]]:
        """Every IPVS service and real server on the host, vsop's or not."""
        ...

    def read_real_servers(self, services: Iterable[ServiceKey]) -> dict[RealServerKey, RealServer]:
        """The real servers (with connection counters) of just these services; a missing service has none."""
        ...

    def traffic(self, services: Iterable[ServiceKey]) -> dict[RealServerKey, Traffic]:
        """The counters of the real servers of just these services (one dump per service, none of the
        rates); a missing service has none, a real server just added reads all zeros."""
        ...

    def forget_reads(self) -> None:
        """Drop whatever the adapter keeps to make its next read cheaper; reads answer the same after it."""
        ...

    def generation(self) -> object:
        """A value that changes when the host's IPVS tables were replaced wholesale (the ip_vs module
        unloaded and loaded again): two reads made under different values describe different tables."""
        ...


class LinkAdapter(Adapter, Protocol):
    """CreateLink SetLinkUp DeleteLink AddAddress DeleteAddress."""

    def probe(self, link: str) -> None:
        """Raise KernelUnsupported when dummy links cannot be created."""
        ...

    def read(self, link: str) -> tuple[LinkState | None, frozenset[str], frozenset[str]]:
        """(the link, its addresses as "ip/prefix", the node's other addresses as "ip")."""
        ...


class RouteAdapter(Adapter, Protocol):
    """AddRoute DeleteRoute: blackhole routes in vsop's routing table (announce: bgp)."""

    def read(self, table: int, protocol: int) -> frozenset[str]:
        """The blackhole routes in `table` with protocol number `protocol`, as "ip/prefixlen"."""
        ...


class IPSetAdapter(Adapter, Protocol):
    """CreateSet DestroySet AddSetMember DeleteSetMember."""

    def read(self, names: frozenset[str]) -> dict[str, IPSet]:
        """The sets among `names` that exist, with members and their comments."""
        ...


class IPTablesAdapter(Adapter, Protocol):
    """WriteChain DeleteChain AddJump DeleteJump, for both families."""

    def read(self, chains: frozenset[str]) -> tuple[dict[ChainKey, tuple[str, ...]], frozenset[Jump]]:
        """The named chains with their rules, and the rules in built-in chains jumping to them."""
        ...


class SysctlAdapter(Adapter, Protocol):
    """SetSysctl."""

    def read(self, names: Iterable[str]) -> dict[str, str]:
        """Current values; a name the kernel does not have is left out."""
        ...

    def ipv6_interfaces(self) -> list[str]:
        """Interfaces with IPv6 settings (net.ipv6.conf.<interface>), without "all" and "default"."""
        ...
