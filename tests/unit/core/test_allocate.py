"""Allocation of LoadBalancer addresses from VipPools (vsop.core.allocate)."""

from __future__ import annotations

from typing import Any

from tests.unit.api.test_pools import pool
from vsop.api.pools import parse_vip_pool
from vsop.core.allocate import Allocator, Request


def make(name: str, **spec: Any) -> Any:
    return parse_vip_pool({**pool(**spec), "metadata": {"name": name}})


SMALL = make("small", addresses=["192.0.2.1-192.0.2.2", "fd00::1"], serviceAllocation={"priority": 10})
TEAM = make("team", addresses=["198.51.100.1"], serviceAllocation={"namespaces": ["team-a"], "priority": 0})
MANUAL = make("manual", addresses=["203.0.113.7", "169.254.169.254"], autoAssign=False)


def req(key: str, created: str = "2024-01-01T00:00:00Z", **fields: Any) -> Request:
    namespace = key.split("/")[0]
    return Request(key=key, namespace=namespace, created=created, **fields)


def test_first_free_address_of_the_pools_in_priority_order() -> None:
    outcomes = Allocator([SMALL, TEAM]).allocate([req("team-a/web"), req("other/web", "2024-01-02T00:00:00Z")])
    assert outcomes["team-a/web"].addresses == ("198.51.100.1",) and outcomes["team-a/web"].pools == ("team",)
    assert outcomes["other/web"].addresses == ("192.0.2.1",), "team grants team-a only"


def test_exhaustion_fails_naming_the_pools() -> None:
    outcomes = Allocator([SMALL]).allocate([req(f"ns/s{i}", f"2024-01-0{i}T00:00:00Z") for i in range(1, 4)])
    assert [o.addresses for o in outcomes.values()] == [("192.0.2.1",), ("192.0.2.2",), ()]
    assert (outcomes["ns/s3"].reason, outcomes["ns/s3"].message) == ("AllocationFailed", "no free IPv4 address: VipPools granting it (small)")


def test_held_addresses_are_kept_and_a_new_service_never_takes_them() -> None:
    outcomes = Allocator([SMALL]).allocate([req("ns/old"), req("ns/young", "2024-02-01T00:00:00Z", held=("192.0.2.1",))])
    assert outcomes["ns/young"].addresses == ("192.0.2.1",) and outcomes["ns/old"].addresses == ("192.0.2.2",)


def test_two_holding_one_address_the_older_keeps_it() -> None:
    outcomes = Allocator([SMALL]).allocate([req("ns/b", "2024-02-01T00:00:00Z", held=("192.0.2.1",)), req("ns/a", held=("192.0.2.1",))])
    assert outcomes["ns/a"].addresses == ("192.0.2.1",) and outcomes["ns/b"].addresses == ("192.0.2.2",)


def test_asked_addresses_in_use_or_outside_the_pools() -> None:
    first, second = req("ns/a", asked=("192.0.2.2",)), req("ns/b", "2024-02-01T00:00:00Z", asked=("192.0.2.2",))
    outcomes = Allocator([SMALL]).allocate([second, first])
    assert outcomes["ns/a"].addresses == ("192.0.2.2",)
    assert (outcomes["ns/b"].reason, outcomes["ns/b"].message) == ("IPInUse", "192.0.2.2 is in use by Service ns/a")
    outside = Allocator([SMALL]).allocate([req("ns/c", asked=("10.0.0.1",))])["ns/c"]
    assert outside.reason == "AllocationFailed" and "10.0.0.1 lies in no VipPool granting this Service (pools granting it: small)" == outside.message
    assert Allocator([SMALL, MANUAL]).allocate([req("ns/d", asked=("203.0.113.7",))])["ns/d"].addresses == ("203.0.113.7",), \
        "autoAssign: false pools give what is asked for"


def test_sharing_needs_the_same_key_and_other_ports() -> None:
    a = req("x/a", asked=("192.0.2.1",), shared_key="k", ports=frozenset({(80, "TCP")}))
    b = req("y/b", "2024-02-01T00:00:00Z", asked=("192.0.2.1",), shared_key="k", ports=frozenset({(443, "TCP")}))
    clash = req("y/b", "2024-02-01T00:00:00Z", asked=("192.0.2.1",), shared_key="k", ports=frozenset({(80, "TCP")}))
    other = req("y/b", "2024-02-01T00:00:00Z", asked=("192.0.2.1",), shared_key="z", ports=frozenset({(443, "TCP")}))
    assert Allocator([SMALL]).allocate([a, b])["y/b"].addresses == ("192.0.2.1",)
    assert Allocator([SMALL]).allocate([a, clash])["y/b"].message == "192.0.2.1 is in use by Service x/a (port 80/TCP on both)"
    assert Allocator([SMALL]).allocate([a, other])["y/b"].reason == "IPInUse"


def test_pool_choice_families_manual_pools_metadata_and_other_virtualservices() -> None:
    assert Allocator([SMALL, TEAM]).allocate([req("team-a/x", pool="small")])["team-a/x"].addresses == ("192.0.2.1",)
    assert Allocator([SMALL]).allocate([req("ns/dual", families=(4, 6))])["ns/dual"].addresses == ("192.0.2.1", "fd00::1")
    assert Allocator([MANUAL]).allocate([req("ns/m")])["ns/m"].reason == "AllocationFailed", "autoAssign: false hands out nothing unasked"
    assert Allocator([MANUAL]).allocate([req("ns/m", pool="manual")])["ns/m"].addresses == ("203.0.113.7",)
    assert Allocator([make("meta", addresses=["169.254.169.254-169.254.169.255"])]).allocate([req("ns/m")])["ns/m"].addresses == ("169.254.169.255",)
    assert Allocator([SMALL], taken={"192.0.2.1": "VirtualService ns/hand"}).allocate([req("ns/m")])["ns/m"].addresses == ("192.0.2.2",)
    assert Allocator([SMALL], taken={"192.0.2.1": "VirtualService ns/hand"}).allocate([req("ns/m", asked=("192.0.2.1",))])["ns/m"].message == \
        "192.0.2.1 is in use by VirtualService ns/hand"
