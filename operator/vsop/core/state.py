"""The shapes of kernel state vsop reasons about, desired and observed alike.

One `KernelState` describes a node: the dummy link and its addresses, IPVS virtual
services and real servers, ipsets, vsop's iptables chains and the jumps into them,
sysctls, and the blackhole routes in vsop's own routing table (the VIPs this node
asks BGP to attract). Observed states may hold foreign objects (other IPVS services, other
addresses of the node); `Names` says which objects are vsop's.
Pure data: must not import anything beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

Protocol = Literal["tcp", "udp", "sctp"]
Forwarding = Literal["masq", "route", "tunnel"]
Family = Literal[4, 6]


@dataclass(frozen=True)
class Names:
    """Names of everything vsop owns; configurable so two instances can coexist."""

    link: str = "vsop0"
    vip_ports_set: str = "VSOP-VIP-PORTS"
    vips_set: str = "VSOP-VIPS"
    nomasq_set: str = "VSOP-VIP-PORTS-NOMASQ"
    # sourceRanges (kube-proxy's KUBE-LOAD-BALANCER-FW / -SOURCE-CIDR): the VIP ports that admit
    # only some clients (hash:ip,port), and each such port with each admitted prefix (hash:ip,port,net).
    source_fw_set: str = "VSOP-SRC-FW"
    source_cidr_set: str = "VSOP-SRC-CIDR"
    services_chain: str = "VSOP-SERVICES"
    mark_chain: str = "VSOP-MARK-MASQ"
    postrouting_chain: str = "VSOP-POSTROUTING"
    filter_chain: str = "VSOP-FILTER"
    forward_chain: str = "VSOP-FORWARD"
    masq_mark: int = 0x2000
    comment: str = "vsop"
    # announce: bgp. A table no `ip rule` references (forwarding never consults it) holding
    # one blackhole route per VIP this node should attract; BIRD learns it. The protocol
    # number marks the routes as vsop's (118 is ASCII "v"; iproute2's rt_protos names none).
    route_table: int = 4242
    route_protocol: int = 118

    def set_name(self, base: str, family: int) -> str:
        # ipset names are global across families, so IPv6 sets get a suffix (31 chars max).
        return base if family == 4 else f"{base}-V6"

    def owned_set_names(self) -> frozenset[str]:
        bases = (self.vip_ports_set, self.vips_set, self.nomasq_set, self.source_fw_set, self.source_cidr_set)
        return frozenset(self.set_name(base, family) for base in bases for family in (4, 6))

    def owned_chains(self) -> frozenset[str]:
        return frozenset((self.services_chain, self.mark_chain, self.postrouting_chain, self.filter_chain, self.forward_chain))

    @property
    def mark(self) -> str:
        return f"{self.masq_mark:#x}/{self.masq_mark:#x}"


# slots=True on the four below: a node of 10,000 services holds tens of thousands of each
# (desired and observed), 40 bytes less apiece.
def hostport(address: str, port: int) -> str:
    """ADDRESS:PORT as a person reads and writes it: an IPv6 address in brackets ([fd00::1]:80),
    so its own colons never read as the port's. Every message naming an endpoint uses it."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True, order=True, slots=True)
class ServiceKey:
    """An IPVS virtual service is identified by protocol, address and port."""

    protocol: Protocol
    vip: str
    port: int

    @property
    def family(self) -> Family:
        return 6 if ":" in self.vip else 4

    def __str__(self) -> str:
        return f"{self.protocol.upper()} {hostport(self.vip, self.port)}"


@dataclass(frozen=True, slots=True)
class VirtualServer:
    key: ServiceKey
    scheduler: str = "rr"
    persistence_timeout: int = 0  # 0: not persistent
    owner: str = ""  # "namespace/name" of the VirtualService; not a kernel attribute

    def same_kernel_config(self, other: "VirtualServer") -> bool:
        return (self.scheduler, self.persistence_timeout) == (other.scheduler, other.persistence_timeout)


@dataclass(frozen=True, order=True, slots=True)
class RealServerKey:
    service: ServiceKey
    address: str
    port: int

    def __str__(self) -> str:
        return hostport(self.address, self.port)


@dataclass(frozen=True, slots=True)
class RealServer:
    key: RealServerKey
    forwarding: Forwarding = "masq"
    weight: int = 1
    # Connection counters are observed only; they never make two states differ.
    active_connections: int = field(default=0, compare=False)
    inactive_connections: int = field(default=0, compare=False)

    def same_kernel_config(self, other: "RealServer") -> bool:
        return (self.forwarding, self.weight) == (other.forwarding, other.weight)


@dataclass(frozen=True)
class Traffic:
    """A real server's IPVS counters since it was added (IPVS_DEST_ATTR_STATS64): the connections
    scheduled to it and the packets of those connections, client to real server (`in_packets`) and
    back (`out_packets`). Only a masquerade real server's replies pass through this node: with
    direct routing or tunnelling they go to the client straight, and `out_packets` stays 0."""

    connections: int = 0
    in_packets: int = 0
    out_packets: int = 0


@dataclass(frozen=True)
class IPSet:
    name: str
    kind: str  # "hash:ip,port" | "hash:ip" | "hash:ip,port,net"
    family: Family
    members: Mapping[str, str] = field(default_factory=dict)  # member -> comment (owning object)
    comments: bool = True  # created with the comment extension, which vsop's members need

    @property
    def header(self) -> tuple[str, str, int, bool]:
        return (self.name, self.kind, self.family, self.comments)


@dataclass(frozen=True, order=True)
class ChainKey:
    family: Family
    table: str
    chain: str


@dataclass(frozen=True, order=True)
class Jump:
    """A rule in a built-in chain that jumps to one of vsop's chains."""

    family: Family
    table: str
    chain: str  # the built-in chain: PREROUTING, OUTPUT, POSTROUTING, INPUT
    rule: str  # rule text as iptables-save prints it, without "-A CHAIN"


@dataclass(frozen=True)
class LinkState:
    name: str
    up: bool = True


@dataclass(frozen=True)
class KernelState:
    link: LinkState | None = None
    addresses: frozenset[str] = frozenset()  # VIPs on vsop's link, as "ip/prefixlen"
    services: Mapping[ServiceKey, VirtualServer] = field(default_factory=dict)
    real_servers: Mapping[RealServerKey, RealServer] = field(default_factory=dict)
    ipsets: Mapping[str, IPSet] = field(default_factory=dict)
    chains: Mapping[ChainKey, tuple[str, ...]] = field(default_factory=dict)  # rules, iptables-save text
    jumps: frozenset[Jump] = frozenset()
    sysctls: Mapping[str, str] = field(default_factory=dict)
    # Addresses of the node outside vsop's link; a VIP among them is refused.
    node_addresses: frozenset[str] = frozenset()
    # IPVS services on vsop's VIPs that another program owns: keepalived's, for
    # mode: keepalived objects. Desired states name them so a plan leaves them alone.
    delegated: frozenset["ServiceKey"] = frozenset()
    # Blackhole routes in vsop's table with vsop's protocol, as "ip/prefixlen" (host prefixes only).
    routes: frozenset[str] = frozenset()

    def bound_vips(self) -> frozenset[str]:
        return frozenset(address.split("/")[0] for address in self.addresses)


def host_prefix(vip: str) -> str:
    """A VIP is bound as a host route only: /32 or /128, never a subnet."""
    return f"{vip}/{128 if ':' in vip else 32}"  # a validated address: only IPv6 has colons


def ipset_member(key: ServiceKey) -> str:
    """hash:ip,port member text, as `ipset save` prints it."""
    return f"{key.vip},{key.protocol}:{key.port}"


def source_member(key: ServiceKey, network: str) -> str:
    """hash:ip,port,net member text, as `ipset save` prints it: a host prefix (/32, /128) without its length."""
    address, _, length = network.partition("/")
    host = length == ("128" if ":" in address else "32")
    return f"{ipset_member(key)},{address if host else network}"


def member_service(member: str) -> ServiceKey | None:
    """A `hash:ip,port` member ("VIP,proto:port") back into its service key (`ipset_member`'s inverse)."""
    vip, sep, rest = member.rpartition(",")
    protocol, sep2, port = rest.partition(":")
    if not sep or not sep2 or not port.isdigit() or protocol not in ("tcp", "udp", "sctp"):
        return None
    return ServiceKey(protocol, vip, int(port))  # type: ignore[arg-type]
