"""Who holds which VIP under VRRP in ipvs mode: rendezvous order with bounded first places, priorities, track files."""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from vsop.keepalived.vrrp import PRIORITY_TOP, multicast_priority, priority, spread, track_content, whoami

PEERS = ("10.0.0.1", "10.0.0.2", "10.0.0.3")


def routers(vips: list[str], peers: tuple[str, ...] = PEERS) -> dict[tuple[str, int, int], tuple[str, tuple[str, ...]]]:
    return {("eth0", index + 1, 4): (vip, peers) for index, vip in enumerate(vips)}


def test_four_vips_on_three_nodes_no_node_holds_more_than_two() -> None:
    orders = spread(routers(["192.168.1.10", "192.168.1.11", "192.168.1.12", "192.168.1.13"]))
    firsts = Counter(order[0] for order in orders.values())
    assert max(firsts.values()) <= 2 and sum(firsts.values()) == 4
    assert all(sorted(order) == sorted(PEERS) for order in orders.values())


@given(st.lists(st.integers(1, 250), min_size=1, max_size=40, unique=True), st.integers(1, 6))
def test_first_places_are_bounded_and_independent_of_peer_order(last_octets: list[int], nodes: int) -> None:
    peers = tuple(f"10.0.0.{n}" for n in range(1, nodes + 1))
    vips = [f"192.168.1.{o}" for o in last_octets]
    orders = spread(routers(vips, peers))
    bound = -(-len(vips) // nodes)
    assert max(Counter(order[0] for order in orders.values()).values()) <= bound
    assert spread(routers(vips, tuple(reversed(peers)))) == orders  # every node computes the same


def test_priorities_are_distinct_per_router_and_top_goes_to_the_first() -> None:
    order = ("10.0.0.2", "10.0.0.3", "10.0.0.1")
    assert [priority(order, peer) for peer in order] == [PRIORITY_TOP, PRIORITY_TOP - 5, PRIORITY_TOP - 10]
    spread_over_two = Counter(max(("a", "b"), key=lambda n: multicast_priority(f"10.1.0.{i}", n)) for i in range(1, 101))
    assert all(1 <= multicast_priority("10.1.0.1", n) <= 254 for n in "abc") and min(spread_over_two.values()) > 20


def test_whoami_and_track_content() -> None:
    assert whoami(PEERS, ["10.0.0.2/24", "192.168.9.9/32"]) == ["10.0.0.2"]
    assert whoami(PEERS, []) == []
    assert (track_content(True), track_content(False)) == ("0\n", "1\n")
    assert list(itertools.islice(spread(routers(["192.168.1.10"], ())).items(), 1)) == []  # no peers: no order (multicast)


def test_node_peers_are_the_selected_nodes_internal_ips_of_the_vips_family() -> None:
    from tests.conftest import make_vs
    from vsop.keepalived.render import render_keepalived
    from vsop.keepalived.vrrp import ClusterNode, with_node_peers

    lb = {"vsop.dev/lb": "true"}
    nodes = {
        "a": ClusterNode(lb, ("10.0.0.11", "fd00::11")),
        "b": ClusterNode(lb, ("fd00::12", "10.0.0.12", "10.0.1.12")),  # the first of the family
        "c": ClusterNode(lb, ("fd00::13",)),  # no IPv4 InternalIP: not an IPv4 peer
        "x": ClusterNode({}, ("10.0.0.99",)),  # not selected
    }
    vrrp = {"interface": "eth0", "virtualRouterID": 61}
    selected = {"nodeSelector": {"matchLabels": lb}}
    v4 = make_vs("v4", mode="ipvs", announce="vrrp", vrrp=vrrp, **selected)
    v6 = make_vs("v6", vip="fd00::100", mode="ipvs", announce="vrrp", vrrp=vrrp, backends=[{"address": "fd00::200"}], **selected)
    named = make_vs("named", vip="192.0.2.7", mode="ipvs", announce="vrrp", vrrp={**vrrp, "virtualRouterID": 62, "peers": ["10.0.0.11", "10.0.0.50"]})
    plain = make_vs("plain", vip="192.0.2.8")
    out = with_node_peers([v4, v6, named, plain], nodes)
    assert [vs.spec.vrrp.peers if vs.spec.vrrp else None for vs in out] == [
        ("10.0.0.11", "10.0.0.12"), ("fd00::11", "fd00::12", "fd00::13"), ("10.0.0.11", "10.0.0.50"), None]
    assert out[2] is named and out[3] is plain and v4.spec.vrrp is not None and v4.spec.vrrp.peers == ()  # the others untouched
    rendered = render_keepalived(out[:1], node_addresses=["10.0.0.12"])
    text = "".join(rendered.files.values())
    assert "unicast_src_ip 10.0.0.12" in text and "    10.0.0.11\n" in text and not rendered.problems
