"""From VirtualServices to the kernel state one node should have.

Owns: which VirtualServices a node programs (node selector, conflicts, refused VIPs),
how ports and backends become IPVS services and real servers, the ipset members,
the constant iptables rules, the sysctls, and which VIPs this node asks BGP to attract
(a route in vsop's table: programmed, a healthy real server, not withdrawn). What a failed
health check does to a real server's weight is vsop.core.health's rule (apply_health).
Pure: must not import kopf, pyroute2, jinja2, subprocess, socket or vsop.adapters.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Mapping

from vsop.core.state import (
    ChainKey,
    hostport,
    IPSet,
    Jump,
    KernelState,
    LinkState,
    Names,
    RealServer,
    RealServerKey,
    ServiceKey,
    VirtualServer,
    host_prefix,
    ipset_member,
    source_member,
)
from vsop.core.health import apply_health
from vsop.api.model import PortSpec, VirtualService, backends_on_vips


# The kernel keeps at most 255 bytes of an ipset comment (IPSET_MAX_COMMENT_SIZE; `ipset` refuses
# longer ones, netlink answers ERANGE). A namespace (63) and a name (253) make up to 317.
MAX_IPSET_COMMENT = 255
_HASH_CHARS = 16


def ipset_comment(ref: str) -> str:
    """The comment that names `ref` ("namespace/name") on its ipset members: the ref itself when it
    fits in 255 bytes, else its first 238 characters, `~` and 16 hex digits of its SHA-256. Refs are
    ASCII (Kubernetes names), so the owner is recovered by comparing with `ipset_comment` of the refs
    a source declares (core.held), and a person still reads the namespace and the name's start."""
    if len(ref.encode()) <= MAX_IPSET_COMMENT:
        return ref
    digest = hashlib.sha256(ref.encode()).hexdigest()[:_HASH_CHARS]
    return ref[: MAX_IPSET_COMMENT - _HASH_CHARS - 1] + "~" + digest


@dataclass(frozen=True)
class EndpointPort:
    name: str | None
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Endpoint:
    """One address of a Service's EndpointSlice, as the core needs it."""

    address: str
    ports: tuple[EndpointPort, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None  # the node its pod runs on (trafficPolicy: Local keeps this node's only)
    # Topology hints the EndpointSlice controller sets (trafficDistribution, topology-aware routing).
    for_zones: tuple[str, ...] = ()
    for_nodes: tuple[str, ...] = ()


ZONE_LABEL = "topology.kubernetes.io/zone"


def topology_filter(endpoints: Iterable[Endpoint], node: Node) -> list[Endpoint]:
    """kube-proxy's use of EndpointSlice hints (pkg/proxy/topology.go): when every ready endpoint has
    node hints and one is for this node, the ready endpoints for this node (PreferSameNode); else when
    every ready endpoint has zone hints and one is for this node's zone (label topology.kubernetes.io/zone),
    those (PreferSameZone, PreferClose); else all of them. Endpoints that are not ready are kept as they are."""
    endpoints = list(endpoints)
    ready = [e for e in endpoints if e.ready]
    zone = node.labels.get(ZONE_LABEL, "")
    keep = None
    if ready and all(e.for_nodes for e in ready) and any(node.name in e.for_nodes for e in ready):
        keep = lambda e: node.name in e.for_nodes  # noqa: E731
    elif ready and zone and all(e.for_zones for e in ready) and any(zone in e.for_zones for e in ready):
        keep = lambda e: zone in e.for_zones  # noqa: E731
    if keep is None:
        return endpoints
    return [e for e in endpoints if not e.ready or keep(e)]


@dataclass(frozen=True)
class Node:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Problem:
    """Something about one VirtualService a user must be told; it is not programmed (or only partly)."""

    obj: str
    reason: str  # CamelCase, like a Kubernetes event reason
    message: str
    other: str = field(default="", compare=False)  # the object it clashes with, if any (for file:line)


@dataclass(frozen=True)
class Desired:
    state: KernelState
    programmed: tuple[str, ...]  # refs of the VirtualServices this node programs
    problems: tuple[Problem, ...] = ()
    # Every configured real server and its VirtualService, before health takes any out:
    # what health checks must keep probing so a failed real server can come back.
    configured: Mapping[RealServerKey, str] = field(default_factory=dict)
    # Programmed, but a user should know (e.g. every real server of a service failing its checks).
    warnings: tuple[Problem, ...] = ()


def resolve_conflicts(services: Iterable[VirtualService]) -> tuple[list[VirtualService], list[Problem]]:
    """Two objects claiming one VIP:port/protocol: the older wins, the newer is refused whole.

    Age is metadata.creationTimestamp; ties (or files, which have none) go to the one
    given first, then to the name, so every node reaches the same verdict.
    """
    ordered = sorted(
        enumerate(services), key=lambda item: (item[1].metadata.creation_timestamp or "", item[0], item[1].ref)
    )
    owners: dict[tuple[str, int, str], VirtualService] = {}
    winners: list[VirtualService] = []
    problems: list[Problem] = []
    for _, vs in ordered:
        keys = [(vs.spec.vip, port.port, port.protocol) for port in vs.spec.ports]
        clash = next(((key, owners[key]) for key in keys if key in owners), None)
        if clash is not None:
            (vip, port, protocol), owner = clash
            problems.append(
                Problem(vs.ref, "Conflict", f"{hostport(vip, port)}/{protocol} is already claimed by VirtualService {owner.ref}, {_why_first(owner, vs)}", owner.ref)
            )
            continue
        for key in keys:
            owners[key] = vs
        winners.append(vs)
    return winners, problems


def _why_first(owner: VirtualService, other: VirtualService) -> str:
    first, second = owner.metadata.creation_timestamp, other.metadata.creation_timestamp
    if first and (not second or first < second):
        return f"which keeps it: it was created first ({first})"
    return "which keeps it: it comes first (same age or no creationTimestamp: the order given, then the name)"


# When it is 1, conntrack marks only out-of-window RSTs INVALID (kernel docs, nf_conntrack-sysctl):
# the segments the INVALID rule exists for are then tracked, and the rule is left out, as kube-proxy does.
TCP_LIBERAL_SYSCTL = "net.netfilter.nf_conntrack_tcp_be_liberal"


def tcp_liberal(sysctls: Mapping[str, str]) -> bool:
    """Whether `sysctls` (name -> value as read) say conntrack is liberal (any value but 0; unread: no)."""
    return sysctls.get(TCP_LIBERAL_SYSCTL, "0").strip() not in ("", "0")


def constant_chains(names: Names, family: int, *, liberal: bool = False) -> dict[ChainKey, tuple[str, ...]]:
    """The fixed rules: their count never depends on how many services exist. `liberal`: the host's
    conntrack is liberal (TCP_LIBERAL_SYSCTL), so the INVALID rule is left out."""
    vip_ports = names.set_name(names.vip_ports_set, family)
    nomasq = names.set_name(names.nomasq_set, family)
    vips = names.set_name(names.vips_set, family)
    source_fw = names.set_name(names.source_fw_set, family)
    source_cidr = names.set_name(names.source_cidr_set, family)
    reject = "icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable"
    f = 4 if family == 4 else 6
    return {
        ChainKey(f, "nat", names.services_chain): (
            # nat sees the first packet of each connection only: the connection mark set here
            # is how VSOP-FORWARD recognises the later packets (the real servers' replies).
            f"-m set --match-set {vip_ports} dst,dst -j CONNMARK --set-xmark {names.mark}",
            f"-m set --match-set {nomasq} dst,dst -j RETURN",
            f"-m set --match-set {vip_ports} dst,dst -j {names.mark_chain}",
        ),
        ChainKey(f, "nat", names.mark_chain): (f"-j MARK --set-xmark {names.mark}",),
        ChainKey(f, "nat", names.postrouting_chain): (f"-m mark --mark {names.mark} -j MASQUERADE",),
        ChainKey(f, "filter", names.filter_chain): (
            # sourceRanges: a VIP port that admits some clients only drops every other one. One rule
            # however many VIPs and ranges (kube-proxy's KUBE-LOAD-BALANCER-FW / -SOURCE-CIDR pair).
            f"-m set --match-set {source_fw} dst,dst -m set ! --match-set {source_cidr} dst,dst,src -j DROP",
            # A client's segment conntrack calls INVALID (out of its window) is still forwarded by IPVS,
            # but MASQUERADE, a conntrack NAT, skips it: it would reach the real server with the client's
            # own address, and the real server's RST, routed back through this node, resets the client's
            # connection (kubernetes#74839; kube-proxy drops INVALID in KUBE-FORWARD, its IPVS mode never did).
            # Masqueraded ports only: a never-masqueraded port may be forwarded by route or tunnel, where
            # the node sees the client's side alone and conntrack calls the client's ACK after the
            # backend's direct SYN-ACK INVALID (dropping it broke every such connection, vm test_proxy.py).
            *(() if liberal else (f"-m set --match-set {vip_ports} dst,dst -m set ! --match-set {nomasq} dst,dst -m conntrack --ctstate INVALID -j DROP",)),
            f"-m set --match-set {vip_ports} dst,dst -j ACCEPT",
            f"-m set --match-set {vips} dst -m conntrack --ctstate NEW -j REJECT --reject-with {reject}",
        ),
        # A real server's reply is de-masqueraded to the client's address and routed through
        # FORWARD, whose filter hook runs before IPVS's reply hook: with a FORWARD policy of
        # DROP (Docker, ufw) it dies there. kube-proxy's KUBE-FORWARD accepts marked traffic
        # and every established flow; this accepts established flows of VIP connections only.
        ChainKey(f, "filter", names.forward_chain): (
            f"-m mark --mark {names.mark} -j ACCEPT",
            f"-m connmark --mark {names.mark} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ),
    }


def constant_jumps(names: Names, family: int) -> frozenset[Jump]:
    f = 4 if family == 4 else 6

    def jump(table: str, chain: str, target: str, what: str) -> Jump:
        return Jump(f, table, chain, f'-m comment --comment "{names.comment}: {what}" -j {target}')

    return frozenset(
        {
            # Locally originated traffic to a VIP never crosses PREROUTING, hence OUTPUT too.
            jump("nat", "PREROUTING", names.services_chain, "VIP services"),
            jump("nat", "OUTPUT", names.services_chain, "VIP services"),
            jump("nat", "POSTROUTING", names.postrouting_chain, "masquerade marked VIP traffic"),
            jump("filter", "INPUT", names.filter_chain, "only service ports on VIPs"),
            jump("filter", "FORWARD", names.forward_chain, "forward VIP traffic"),
        }
    )


ARP_SYSCTLS = {
    # Answer ARP only for addresses on the receiving interface, never for VIPs on vsop0,
    # and never use a VIP as the source of our own ARP requests.
    "net.ipv4.conf.all.arp_ignore": "1",
    "net.ipv4.conf.all.arp_announce": "2",
}


def kernel_sysctls(kernel_version: tuple[int, int] | None) -> dict[str, str]:
    """Settings whose right value depends on the kernel release."""
    if kernel_version is None:
        return {}
    # Before 5.9, conn_reuse_mode=1 stalled new connections from a reused client port for a
    # second when the old one pointed at a weight-0 real server; 0 avoided that (kube-proxy's
    # choice). From 5.9 the kernel fixed it and 1 reschedules such connections, as draining needs.
    return {"net.ipv4.vs.conn_reuse_mode": "1" if kernel_version >= (5, 9) else "0"}


def family_sysctls(family: int) -> dict[str, str]:
    common = {
        # Without conntrack entries for IPVS connections, MASQUERADE never sees them.
        "net.ipv4.vs.conntrack": "1",
        # Drop connections to a deleted real server at once instead of blackholing them.
        "net.ipv4.vs.expire_nodest_conn": "1",
        # Persistence templates of a weight-0 real server expire, so draining finishes.
        "net.ipv4.vs.expire_quiescent_template": "1",
    }
    if family == 4:
        return {**common, "net.ipv4.ip_forward": "1"}
    return {**common, "net.ipv6.conf.all.forwarding": "1"}


def applies_to_node(vs: VirtualService, node: Node) -> bool:
    return vs.spec.node_selector.matches(node.labels)


def _protocol(port: PortSpec) -> str:
    return port.protocol.lower()


def _static_port(vs: VirtualService, port: PortSpec, backend_port: int | None) -> int:
    if backend_port is not None:
        return backend_port
    if isinstance(port.target_port, int):
        return port.target_port
    return port.port


@dataclass(frozen=True)
class Unresolved:
    """A VIP port that names no single port of its serviceRef's endpoints."""

    reason: str  # PortNotFound | AmbiguousPort
    message: str


def _endpoint_port(port: PortSpec, endpoint: Endpoint) -> int | Unresolved:
    """Which port of an endpoint serves this VIP port, resolved as Kubernetes resolves Service ports.

    An EndpointSlice names each port after its Service port (the `name` of the Service's
    port, which kube-proxy matches too) and gives the number it resolved on the pod:
    - `targetPort: <number>`: that number, as a Service's numeric targetPort;
    - `targetPort: <name>`: the endpoint port of that name, nothing else;
    - no targetPort: by name (the VIP port's `name` equals a Service port's name), then by
      number (an endpoint port with the VIP port's number), then the Service's only port of
      the protocol. A multi-port Service that matches none of these is ambiguous: refused,
      never guessed.
    """
    if isinstance(port.target_port, int):
        return port.target_port
    same_protocol = [p for p in endpoint.ports if p.protocol == port.protocol]
    offered = ", ".join(f"{p.name or '(unnamed)'}={p.port}" for p in same_protocol) or "none"
    if isinstance(port.target_port, str):
        named = [p.port for p in same_protocol if p.name == port.target_port]
        if named:
            return named[0]
        return Unresolved(
            "PortNotFound",
            f"port {port.port}/{port.protocol}: targetPort {port.target_port!r} is not a {port.protocol} port of the Service (its ports: {offered})",
        )
    if port.name is not None:
        named = [p.port for p in same_protocol if p.name == port.name]
        if named:
            return named[0]
    numbered = [p.port for p in same_protocol if p.port == port.port]
    if numbered:
        return numbered[0]
    if len(same_protocol) == 1:
        return same_protocol[0].port
    if not same_protocol:
        return Unresolved("PortNotFound", f"port {port.port}/{port.protocol}: the Service has no {port.protocol} port")
    return Unresolved(
        "AmbiguousPort",
        f"port {port.port}/{port.protocol} matches none of the Service's {port.protocol} ports by name or number "
        f"and there are several ({offered}); set targetPort to the name of one",
    )


SET_KINDS = (
    ("vip_ports_set", "hash:ip,port"),
    ("nomasq_set", "hash:ip,port"),
    ("vips_set", "hash:ip"),
    ("source_fw_set", "hash:ip,port"),
    ("source_cidr_set", "hash:ip,port,net"),
)


def source_networks(ranges: Iterable[str]) -> list[str]:
    """The prefixes a hash:ip,port,net set can hold for `ranges`: the kernel refuses a length of 0,
    so "every address" (0.0.0.0/0, ::/0) is its two halves."""
    found: list[str] = []
    for cidr in ranges:
        network = ipaddress.ip_network(cidr)
        halves = network.subnets(new_prefix=1) if network.prefixlen == 0 else (network,)
        found.extend(str(half) for half in halves if str(half) not in found)
    return found


def shared_state(
    names: Names, families: Iterable[int], *, arp: bool, bound: bool, kernel_version: tuple[int, int] | None, liberal: bool = False
) -> KernelState:
    """Link, empty set headers, constant chains and jumps, sysctls: what every VIP shares.
    `liberal`: the host's conntrack is liberal (constant_chains)."""
    ipsets, chains, jumps, sysctls = _shared(names, tuple(sorted(set(families))), arp, kernel_version, liberal)
    # Fresh containers each time: callers own what they get (the strings inside are immutable).
    return KernelState(
        link=LinkState(names.link, up=True) if bound else None,
        ipsets={name: IPSet(name, kind, family, {}) for name, kind, family in ipsets},  # type: ignore[arg-type]
        chains=dict(chains),
        jumps=jumps,
        sysctls=dict(sysctls),
    )


@lru_cache(maxsize=64)
def _shared(
    names: Names, used: tuple[int, ...], arp: bool, kernel_version: tuple[int, int] | None, liberal: bool
) -> tuple[tuple[tuple[str, str, int], ...], dict[ChainKey, tuple[str, ...]], frozenset[Jump], dict[str, str]]:
    # Computed once per combination: the reconciler derives one object at a time, and
    # building these strings per object was a large part of a cold sync under emulation.
    ipsets: list[tuple[str, str, int]] = []
    chains: dict[ChainKey, tuple[str, ...]] = {}
    jumps: set[Jump] = set()
    sysctls: dict[str, str] = {}
    for family in used:
        for attribute, kind in SET_KINDS:
            ipsets.append((names.set_name(getattr(names, attribute), family), kind, family))
        chains.update(constant_chains(names, family, liberal=liberal))
        jumps |= constant_jumps(names, family)
        sysctls.update(family_sysctls(family))
    if used:
        sysctls.update(kernel_sysctls(kernel_version))
    if arp:
        sysctls.update(ARP_SYSCTLS)
    return tuple(ipsets), chains, frozenset(jumps), sysctls


@lru_cache(maxsize=64)
def _own_addresses(node_addresses: frozenset[str]) -> frozenset[str]:
    # The reconciler derives one object at a time with the same node addresses: parse them once.
    return frozenset(str(ipaddress.ip_address(a.split("/")[0])) for a in node_addresses)


def desired_state(
    services: Iterable[VirtualService],
    node: Node,
    *,
    names: Names = Names(),
    endpoints: Mapping[tuple[str, str], Iterable[Endpoint]] | None = None,
    node_addresses: Iterable[str] = (),
    reserved: Mapping[str, str] | None = None,
    out_of_service: frozenset[RealServerKey] = frozenset(),
    kernel_version: tuple[int, int] | None = None,
    liberal: bool = False,
    vip_owners: Mapping[str, str] | None = None,
    announcing: bool = True,
    refused: Mapping[str, Problem] | None = None,
) -> Desired:
    """The node's desired kernel state.

    `endpoints` maps (namespace, service name) to the endpoints of a serviceRef.
    `node_addresses` are the node's own addresses outside vsop's link: such a VIP is refused.
    `reserved` maps addresses that belong to something the node depends on to whose they
    are (e.g. the Kubernetes API server's): such a VIP is refused too, even with VRRP.
    `out_of_service` are real servers a health check took out: they get weight 0, unless
    every real server of their service is out (then there is nothing better; keep all).
    `vip_owners` maps addresses to the object whose VIP each is (default: the VIPs of `services`):
    an object with a static backend on another object's VIP is refused (BackendIsVIP).
    `announcing`: False while the node is being drained: no VIP is announced over BGP.
    `liberal`: the host's conntrack is liberal (TCP_LIBERAL_SYSCTL): no INVALID rule.
    `refused`: objects refused their claim (vsop.core.claims.admit: ref -> why): never programmed,
    and they claim no port, so they lose no conflict to and win none from the others.
    An `announce: bgp` object gets a route for its VIP when it is programmed and at least one
    of its IPVS services has a real server that takes new connections (weight > 0, not
    every one of them failing its checks).
    """
    endpoints = endpoints or {}
    services = list(services)
    if vip_owners is None:
        vip_owners = {}
        for vs in services:
            vip_owners.setdefault(vs.spec.vip, vs.ref)
    own_addresses = _own_addresses(node_addresses if isinstance(node_addresses, frozenset) else frozenset(node_addresses))
    reserved_by = {str(ipaddress.ip_address(a)): whose for a, whose in (reserved or {}).items()}
    problems: list[Problem] = []
    if refused:
        problems = [refused[vs.ref] for vs in services if vs.ref in refused]
        services = [vs for vs in services if vs.ref not in refused]
    winners, lost = resolve_conflicts(services)
    problems += lost

    found = _Programmed()
    for vs in winners:
        if not applies_to_node(vs, node):
            continue
        refusal = _refusal(vs, node, names, own_addresses, reserved_by, vip_owners)
        if refusal is not None:
            problems.append(refusal)
            continue
        _program(found, vs, node, names, endpoints, problems, announcing)

    configured = {key: found.virtual_servers[key.service].owner for key in found.real_servers}
    real_servers, all_failing = apply_health(found.real_servers, out_of_service)
    warnings = _all_failing_warnings(found.virtual_servers, all_failing) + tuple(
        Problem(ref, "NoLocalEndpoints", f"trafficPolicy Local: no ready endpoint of its serviceRef runs on node {node.name}; "
                "its IPVS services stay with no real server here, so clients of this node are refused")
        for ref in found.no_local
    )
    routes = _routes(found.announced, found.vips, real_servers, all_failing)
    state = _kernel_state(found, winners, real_servers, routes, names, kernel_version, liberal)
    return Desired(state, tuple(found.programmed), tuple(problems), configured, warnings)


@dataclass
class _Programmed:
    """What the VirtualServices a node programs add up to, gathered one object at a time."""

    virtual_servers: dict[ServiceKey, VirtualServer] = field(default_factory=dict)
    real_servers: dict[RealServerKey, RealServer] = field(default_factory=dict)
    members: dict[str, dict[str, str]] = field(default_factory=dict)  # set name -> member -> owner
    delegated: set[ServiceKey] = field(default_factory=set)  # keepalived's IPVS services
    vips: set[str] = field(default_factory=set)  # bound on vsop's link
    families_used: set[int] = field(default_factory=set)
    programmed: list[str] = field(default_factory=list)
    announced: dict[str, list[ServiceKey]] = field(default_factory=dict)  # announce: bgp VIP -> the services that may attract it
    no_local: list[str] = field(default_factory=list)  # trafficPolicy: Local objects with no ready endpoint on this node


def _is_vrrp(vs: VirtualService) -> bool:
    # With VRRP, keepalived owns the VIP on vrrp.interface, and the VRRP master holds it there:
    # vsop never refuses such a VIP as a node address. In keepalived mode vsop does not bind
    # it on its link either; in ipvs mode it does (IPVS needs it local on every node), with
    # the ARP sysctls so that only the master's vrrp.interface answers for it.
    return vs.spec.mode == "keepalived" and vs.spec.announce == "vrrp"


def _refusal(
    vs: VirtualService,
    node: Node,
    names: Names,
    own_addresses: frozenset[str],
    reserved_by: Mapping[str, str],
    vip_owners: Mapping[str, str],
) -> Problem | None:
    """Why this node must not program `vs` at all (its VIP or a backend is someone else's address), if so."""
    spec = vs.spec
    if spec.vip in reserved_by:
        return Problem(vs.ref, "VIPRefused", f"VIP {spec.vip} is an address of {reserved_by[spec.vip]}; a VIP there would cut node {node.name} off from it")
    if spec.vip in own_addresses and spec.announce != "vrrp":
        return Problem(vs.ref, "VIPRefused", f"VIP {spec.vip} is already an address of node {node.name}; binding it to {names.link} would cut the node off")
    on_vips = backends_on_vips(vs, vip_owners) if spec.backends else ()
    if on_vips:
        path, reason, owner = on_vips[0]
        return Problem(vs.ref, "BackendIsVIP", f"{path}: {reason}", owner)
    return None


def _program(
    found: _Programmed,
    vs: VirtualService,
    node: Node,
    names: Names,
    endpoints: Mapping[tuple[str, str], Iterable[Endpoint]],
    problems: list[Problem],
    announcing: bool,
) -> None:
    """Add one accepted VirtualService's VIP, set members, IPVS services and real servers to `found`."""
    spec = vs.spec
    family = spec.family
    masquerade = spec.masquerade and spec.forwarding == "masq"
    if not _is_vrrp(vs):
        found.vips.add(spec.vip)
    found.families_used.add(spec.family)
    found.programmed.append(vs.ref)
    members = found.members
    comment = ipset_comment(vs.ref)
    members.setdefault(names.set_name(names.vips_set, family), {})[spec.vip] = comment
    networks = source_networks(spec.source_ranges) if spec.source_ranges else []
    for port in spec.ports:
        key = ServiceKey(_protocol(port), spec.vip, port.port)  # type: ignore[arg-type]
        members.setdefault(names.set_name(names.vip_ports_set, family), {})[ipset_member(key)] = comment
        if not masquerade or spec.traffic_policy == "Local":
            members.setdefault(names.set_name(names.nomasq_set, family), {})[ipset_member(key)] = comment
        if spec.source_ranges:
            members.setdefault(names.set_name(names.source_fw_set, family), {})[ipset_member(key)] = comment
            admitted = members.setdefault(names.set_name(names.source_cidr_set, family), {})
            for network in networks:
                admitted[source_member(key, network)] = comment
        if spec.mode != "ipvs":
            found.delegated.add(key)
            continue  # keepalived owns IPVS for this service; vsop keeps the rest
        found.virtual_servers[key] = VirtualServer(key, spec.scheduler, spec.persistence.timeout_seconds, vs.ref)
        for rs in _real_servers(vs, port, key, _endpoints_here(vs, node, endpoints, found), problems):
            found.real_servers.setdefault(rs.key, rs)
        if spec.announce == "bgp" and announcing:
            found.announced.setdefault(spec.vip, []).append(key)


def _endpoints_here(
    vs: VirtualService, node: Node, endpoints: Mapping[tuple[str, str], Iterable[Endpoint]], found: _Programmed
) -> Mapping[tuple[str, str], Iterable[Endpoint]]:
    """The serviceRef's endpoints this node uses: filtered by their topology hints (`topology_filter`),
    or with trafficPolicy: Local only the serviceRef's endpoints on this node (kube-proxy's
    externalTrafficPolicy: Local): the client's address reaches them unmasqueraded, and their replies
    leave through this node. None here: the IPVS service stays with no real server, so IPVS refuses
    clients at once (ICMP port unreachable), never sends them to another node unmasqueraded
    (kubernetes#71596), and the object is told NoLocalEndpoints."""
    spec = vs.spec
    if spec.service_ref is None:
        return endpoints
    key = (vs.metadata.namespace, spec.service_ref.name)
    if spec.traffic_policy != "Local":
        return {key: topology_filter(endpoints.get(key, ()), node)}
    local = [e for e in endpoints.get(key, ()) if e.node_name == node.name]
    if not any(e.ready for e in local) and vs.ref not in found.no_local:
        found.no_local.append(vs.ref)
    return {key: local}


def _all_failing_warnings(virtual_servers: Mapping[ServiceKey, VirtualServer], all_failing: Iterable[ServiceKey]) -> tuple[Problem, ...]:
    return tuple(
        Problem(
            virtual_servers[key].owner,
            "AllBackendsFailing",
            f"every real server of {key} fails its health check; keeping them all, there is nothing better to send traffic to",
        )
        for key in all_failing
    )


def _routes(
    announced: Mapping[str, list[ServiceKey]],
    vips: set[str],
    real_servers: Mapping[RealServerKey, RealServer],
    all_failing: Iterable[ServiceKey],
) -> frozenset[str]:
    """The announced VIPs that are bound and have an IPVS service taking new connections."""
    failing = set(all_failing)
    serving = {rs.key.service for rs in real_servers.values() if rs.weight > 0 and rs.key.service not in failing}
    return frozenset(host_prefix(vip) for vip, keys in announced.items() if vip in vips and any(k in serving for k in keys))


def _kernel_state(
    found: _Programmed,
    winners: Iterable[VirtualService],
    real_servers: dict[RealServerKey, RealServer],
    routes: frozenset[str],
    names: Names,
    kernel_version: tuple[int, int] | None,
    liberal: bool,
) -> KernelState:
    """What was programmed, on top of the state every VIP shares (link, sets, rules, sysctls)."""
    chosen = set(found.programmed)
    arp = any(vs.spec.arp_suppressed for vs in winners if vs.ref in chosen)
    shared = shared_state(names, found.families_used, arp=arp, bound=bool(found.vips), kernel_version=kernel_version, liberal=liberal)
    ipsets = {name: IPSet(empty.name, empty.kind, empty.family, dict(found.members.get(name, {}))) for name, empty in shared.ipsets.items()}
    return KernelState(
        link=shared.link,
        addresses=frozenset(host_prefix(vip) for vip in found.vips),
        services=found.virtual_servers,
        real_servers=real_servers,
        ipsets=ipsets,
        chains=shared.chains,
        jumps=shared.jumps,
        sysctls=shared.sysctls,
        delegated=frozenset(found.delegated),
        routes=routes,
    )


def _real_servers(
    vs: VirtualService,
    port: PortSpec,
    key: ServiceKey,
    endpoints: Mapping[tuple[str, str], Iterable[Endpoint]],
    problems: list[Problem],
) -> list[RealServer]:
    """Static backends and serviceRef endpoints; a VIP port its endpoints cannot resolve goes into `problems`."""
    spec = vs.spec
    found: list[RealServer] = []
    unresolved: Unresolved | None = None
    for backend in spec.backends:
        rport = _static_port(vs, port, backend.port) if spec.forwarding == "masq" else port.port
        found.append(RealServer(RealServerKey(key, backend.address, rport), spec.forwarding, backend.weight))
    if spec.service_ref is not None:
        family = spec.family
        for endpoint in endpoints.get((vs.metadata.namespace, spec.service_ref.name), ()):
            if ipaddress.ip_address(endpoint.address).version != family and spec.forwarding != "tunnel":
                continue  # dual-stack slices: only the VIP's family
            if endpoint.ready:
                weight = 1
            elif endpoint.terminating and endpoint.serving:
                weight = 0  # drained: existing connections finish, no new ones arrive
            else:
                continue
            rport = _endpoint_port(port, endpoint) if spec.forwarding == "masq" else port.port
            if isinstance(rport, Unresolved):
                unresolved = unresolved if unresolved is not None and unresolved.reason == "AmbiguousPort" else rport
                continue
            found.append(RealServer(RealServerKey(key, endpoint.address, rport), spec.forwarding, weight))
    # An ambiguous port is always reported; a named port some endpoints lack (a rollout) only when none has it.
    if unresolved is not None and (unresolved.reason == "AmbiguousPort" or not found):
        ref = spec.service_ref.name if spec.service_ref is not None else ""
        problems.append(Problem(vs.ref, unresolved.reason, f"serviceRef {ref}: {unresolved.message}; this port gets no real servers from it"))
    return found
