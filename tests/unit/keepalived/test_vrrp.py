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
