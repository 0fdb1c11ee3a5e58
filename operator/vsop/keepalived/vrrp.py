"""announce: vrrp in ipvs mode: which node keepalived's VRRP elects for each VIP, and the track files.

Owns three decisions, all pure:
- the node's identity among a virtual router's peers (the one peer address that is this node's),
- each node's priority: a rendezvous hash of (VIP, node) orders the peers, and VIPs are spread with
  bounded load (at most ceil(routers / peers) first places per node), so that VIPs do not all land on
  the node that came up first; every node computes the same order from the same objects and peers.
  Without peers (multicast VRRP) the other nodes are unknown: the priority is the hash itself, which
  is rendezvous hashing without the bound,
- in a cluster, the peers of an object that names none (`with_node_peers`): the InternalIP of the
  VIP's family of every Node its nodeSelector selects, so unicast VRRP needs no list kept by hand,
- the track file of each object (`TRACK_DIR/NAMESPACE_NAME`): 0 while this node serves the object (a
  real server taking new connections), 1 when it does not; keepalived's `track_file` with weight 0
  puts the instance in FAULT on a non-zero value, and the VIP moves to a node that serves.
Must not import: kopf, kubernetes, pyroute2, jinja2, subprocess, socket, vsop.adapters, vsop.cli.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from vsop.api.model import VirtualService
from vsop.core.desired import Node, applies_to_node

TRACK_DIR = "/run/vsop/vrrp"
PRIORITY_TOP = 250  # the first node of a virtual router; keepalived keeps 255 for an address owner
PRIORITY_STEP = 5  # between consecutive nodes: 32 peers end at 95
MULTICAST_LOW, MULTICAST_SPAN = 50, 200  # without peers: 50..249 from the hash


def rendezvous(vip: str, member: str) -> int:
    """The weight of `member` for `vip`: the highest wins (highest random weight hashing)."""
    return int.from_bytes(hashlib.sha256(f"{vip}|{member}".encode()).digest()[:8], "big")


def address_key(address: str) -> tuple[int, int]:
    parsed = ipaddress.ip_address(address)
    return parsed.version, int(parsed)


def spread(routers: Mapping[tuple[str, int, int], tuple[str, tuple[str, ...]]]) -> dict[tuple[str, int, int], tuple[str, ...]]:
    """Each virtual router's peers in priority order (first: the node meant to hold it).

    `routers`: (interface, virtualRouterID, family) -> (its lowest VIP, its peers). Routers with the
    same peers are spread together: taken by VIP, each gets the peers by rendezvous weight, and the
    first of them that holds fewer than ceil(routers / peers) first places goes first.
    """
    by_peers: dict[frozenset[str], list[tuple[str, int, int]]] = {}
    for key, (_, peers) in routers.items():
        if peers:
            by_peers.setdefault(frozenset(peers), []).append(key)
    orders: dict[tuple[str, int, int], tuple[str, ...]] = {}
    for peers, keys in by_peers.items():
        bound = math.ceil(len(keys) / len(peers))
        firsts: dict[str, int] = dict.fromkeys(peers, 0)
        for key in sorted(keys, key=lambda k: (address_key(routers[k][0]), k)):
            vip = routers[key][0]
            order = sorted(peers, key=lambda peer: (-rendezvous(vip, peer), address_key(peer)))
            first = next(peer for peer in order if firsts[peer] < bound)
            firsts[first] += 1
            orders[key] = (first, *(peer for peer in order if peer != first))
    return orders


def priority(order: Sequence[str], me: str) -> int:
    return PRIORITY_TOP - PRIORITY_STEP * order.index(me)


def multicast_priority(vip: str, node: str) -> int:
    return MULTICAST_LOW + rendezvous(vip, node) % MULTICAST_SPAN


def whoami(peers: Iterable[str], node_addresses: Iterable[str]) -> list[str]:
    """The peers that are addresses of this node (exactly one is wanted)."""
    own = {str(ipaddress.ip_address(a.split("/")[0])) for a in node_addresses}
    return [peer for peer in peers if peer in own]


def track_content(serving: bool) -> str:
    return "0\n" if serving else "1\n"


@dataclass(frozen=True)
class ClusterNode:
    """A Node as the peers need it: its labels (for nodeSelectors) and its InternalIP addresses."""

    labels: Mapping[str, str]
    internal_ips: tuple[str, ...]


def needs_node_peers(vs: VirtualService) -> bool:
    """An ipvs-mode object announced by VRRP that names no peers: in a cluster they come from the Nodes."""
    return vs.spec.mode == "ipvs" and vs.spec.announce == "vrrp" and vs.spec.vrrp is not None and not vs.spec.vrrp.peers


def node_peers(vs: VirtualService, nodes: Mapping[str, ClusterNode]) -> tuple[str, ...]:
    """The first InternalIP of the VIP's family of each Node the object selects, by address."""
    family = vs.spec.family
    peers = set()
    for name, node in nodes.items():
        if applies_to_node(vs, Node(name, dict(node.labels))):
            mine = [a for a in node.internal_ips if (":" in a) == (family == 6)]
            if mine:
                peers.add(mine[0])
    return tuple(sorted(peers, key=address_key))


def with_node_peers(services: Iterable[VirtualService], nodes: Mapping[str, ClusterNode]) -> list[VirtualService]:
    """`services`, those that name no peers (needs_node_peers) given the selected Nodes' InternalIPs as
    `vrrp.peers`; objects with the same nodeSelector and family are looked up once."""
    found: dict[tuple[str, int], tuple[str, ...]] = {}
    out = []
    for vs in services:
        if needs_node_peers(vs):
            assert vs.spec.vrrp is not None
            key = (vs.spec.node_selector.model_dump_json(), vs.spec.family)
            if key not in found:
                found[key] = node_peers(vs, nodes)
            vrrp = vs.spec.vrrp.model_copy(update={"peers": found[key]})
            vs = vs.model_copy(update={"spec": vs.spec.model_copy(update={"vrrp": vrrp})})
        out.append(vs)
    return out
