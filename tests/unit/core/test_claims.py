"""Who may claim an address (vsop.core.claims): pools, metadata addresses, sharing across namespaces, seniority."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.api.test_pools import pool
from vsop.api.model import parse_virtual_service
from vsop.api.pools import parse_vip_pool
from vsop.core.claims import Tombstones, host_vip_refused, resolve_claims, vip_not_allowed


def vs(name: str, vip: str, ports: tuple[int, ...] = (80,), namespace: str = "default", created: str = "2024-01-01T00:00:00Z",
       shared: str | None = None) -> Any:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "creationTimestamp": created}
    if shared is not None:
        meta["annotations"] = {"vsop.dev/allow-shared-ip": shared}
    return parse_virtual_service({"apiVersion": "vsop.dev/v1alpha1", "kind": "VirtualService", "metadata": meta,
                                  "spec": {"vip": vip, "ports": [{"port": p} for p in ports], "backends": [{"address": "10.9.0.1"}]}})


LAN = parse_vip_pool({**pool(addresses=["192.0.2.0/28", "fd00:1::/120"]), "metadata": {"name": "lan"}})
TEAM_A = parse_vip_pool({**pool(addresses=["198.51.100.0/28"], serviceAllocation={"namespaces": ["team-a"]}), "metadata": {"name": "team-a"}})
WEB = parse_vip_pool({**pool(addresses=["203.0.113.0/28"], serviceAllocation={"namespaceSelectors": [{"matchLabels": {"tier": "web"}}]}),
                      "metadata": {"name": "web"}})
METADATA = parse_vip_pool({**pool(addresses=["169.254.169.254", "fd00:ec2::254"], serviceAllocation={"namespaces": ["infra"]}),
                           "metadata": {"name": "metadata"}})
WIDE = parse_vip_pool({**pool(addresses=["169.254.0.0/16", "fd00:ec2::/64"]), "metadata": {"name": "wide"}})


def test_a_vip_in_a_pool_granting_the_namespace_is_allowed() -> None:
    assert vip_not_allowed("192.0.2.5", "anyone", [LAN], None) is None
    assert vip_not_allowed("fd00:1::5", "anyone", [LAN], None) is None
    assert vip_not_allowed("198.51.100.3", "team-a", [LAN, TEAM_A], None) is None
    assert vip_not_allowed("203.0.113.1", "shop", [WEB], {"tier": "web"}) is None


def test_a_vip_outside_every_granting_pool_is_refused_naming_the_pools() -> None:
    message = vip_not_allowed("198.51.100.3", "team-b", [LAN, TEAM_A], None)
    assert message == ("198.51.100.3 lies in VipPool team-a, which does not grant namespace team-b "
                       "(VipPools: lan (192.0.2.0/28, fd00:1::/120), team-a (198.51.100.0/28))")
    assert vip_not_allowed("10.0.0.11", "team-a", [LAN], None) == "10.0.0.11 lies in no VipPool granting namespace team-a (VipPools: lan (192.0.2.0/28, fd00:1::/120))"
    assert vip_not_allowed("10.0.0.11", "team-a", [], None) == "10.0.0.11 lies in no VipPool granting namespace team-a (no VipPool exists)"
    assert vip_not_allowed("203.0.113.1", "shop", [WEB], {"tier": "db"}) is not None
    assert vip_not_allowed("203.0.113.1", "shop", [WEB], None) is not None, "labels unknown: only names grant"


def test_policy_any_allows_every_vip_but_the_metadata_addresses() -> None:
    assert vip_not_allowed("10.0.0.11", "team-a", [], None, "any") is None
    assert vip_not_allowed("169.254.169.254", "team-a", [], None, "any") is not None


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "fd00:ec2:0:0:0:0:0:254"])
def test_metadata_addresses_need_a_pool_naming_them(address: str) -> None:
    for policy in ("pools", "any"):
        refused = vip_not_allowed(address, "infra", [WIDE], None, policy)  # type: ignore[arg-type]
        assert refused is not None and "cloud metadata address" in refused, "a pool merely holding it is not enough"
        assert vip_not_allowed(address, "infra", [WIDE, METADATA], None, policy) is None  # type: ignore[arg-type]
        assert vip_not_allowed(address, "team-a", [WIDE, METADATA], None, policy) is not None, "named, but not for team-a"  # type: ignore[arg-type]
    assert vip_not_allowed("169.254.169.253", "x", [WIDE], None) is None


def test_on_plain_hosts_only_allow_vip_admits_a_metadata_address() -> None:
    assert host_vip_refused("10.0.0.1") is None
    assert host_vip_refused("169.254.169.254") == (
        "169.254.169.254 is a cloud metadata address (the host's instance credentials): refused unless --allow-vip=169.254.169.254 is given")
    assert host_vip_refused("169.254.169.254", ["169.254.169.254"]) is None
    assert host_vip_refused("fd00:ec2::254", ["fd00:ec2:0::254"]) is None


def test_one_port_one_owner_the_older_wins() -> None:
    older, newer = vs("a", "192.0.2.1", created="2024-01-01T00:00:00Z"), vs("b", "192.0.2.1", created="2024-02-01T00:00:00Z")
    winners, problems = resolve_claims([newer, older])
    assert [w.ref for w in winners] == ["default/a"]
    [problem] = problems
    assert (problem.obj, problem.reason, problem.other) == ("default/b", "Conflict", "default/a")
    assert "created first (2024-01-01T00:00:00Z)" in problem.message


def test_another_namespace_shares_a_vip_only_with_the_same_key_and_other_ports() -> None:
    a = vs("a", "192.0.2.1", (80,), "team-a", "2024-01-01T00:00:00Z", shared="k1")
    b_same = vs("b", "192.0.2.1", (443,), "team-b", "2024-01-02T00:00:00Z", shared="k1")
    b_other = vs("b", "192.0.2.1", (443,), "team-b", "2024-01-02T00:00:00Z", shared="k2")
    b_none = vs("b", "192.0.2.1", (443,), "team-b", "2024-01-02T00:00:00Z")
    b_overlap = vs("b", "192.0.2.1", (80,), "team-b", "2024-01-02T00:00:00Z", shared="k1")
    assert resolve_claims([a, b_same]) == ([a, b_same], [])
    for loser in (b_other, b_none):
        winners, [problem] = resolve_claims([loser, a])
        assert winners == [a] and problem.obj == "team-b/b" and "vsop.dev/allow-shared-ip" in problem.message
    assert "(this one: k2, theirs: k1)" in resolve_claims([a, b_other])[1][0].message
    winners, [problem] = resolve_claims([a, b_overlap])
    assert winners == [a] and "192.0.2.1:80/TCP is already claimed" in problem.message
    # Without a key on the first one, nobody else may join, keys or not.
    a_none = vs("a", "192.0.2.1", (80,), "team-a")
    assert resolve_claims([a_none, b_same])[0] == [a_none]
    # The same namespace needs no key for other ports of its VIP.
    assert len(resolve_claims([a_none, vs("c", "192.0.2.1", (443,), "team-a", "2024-01-05T00:00:00Z")])[0]) == 2


def test_a_recreated_object_keeps_its_claim_within_the_grace_period() -> None:
    tombs = Tombstones(grace_seconds=60)
    owner, squatter = vs("owner", "192.0.2.1", created="2024-01-01T00:00:00Z"), vs("squat", "192.0.2.1", (80, 81), "other-ns", "2024-01-02T00:00:00Z")
    seniority = tombs.observe([owner, squatter], now=0.0, uids={"default/owner": "u1", "other-ns/squat": "u2"})
    assert [w.ref for w in resolve_claims([owner, squatter], seniority)[0]] == ["default/owner"]
    tombs.observe([squatter], now=10.0, uids={"other-ns/squat": "u2"})  # deleted...
    assert [w.ref for w in resolve_claims([squatter], tombs.observe([squatter], 11.0, {"other-ns/squat": "u2"}))[0]] == ["other-ns/squat"]
    reborn = vs("owner", "192.0.2.1", created="2024-01-03T00:00:00Z")  # ...and re-created, younger than the squatter
    seniority = tombs.observe([reborn, squatter], now=30.0, uids={"default/owner": "u3", "other-ns/squat": "u2"})
    assert seniority["default/owner"] == "2024-01-01T00:00:00Z"
    winners, [problem] = resolve_claims([squatter, reborn], seniority)
    assert [w.ref for w in winners] == ["default/owner"] and problem.obj == "other-ns/squat"
    assert "before it was re-created" in problem.message
    # Seniority stays with the re-created object on later listings.
    assert tombs.observe([reborn, squatter], now=500.0, uids={"default/owner": "u3", "other-ns/squat": "u2"})["default/owner"] == "2024-01-01T00:00:00Z"


def test_past_the_grace_period_a_recreated_object_is_new() -> None:
    tombs = Tombstones(grace_seconds=60)
    owner = vs("owner", "192.0.2.1", created="2024-01-01T00:00:00Z")
    tombs.observe([owner], now=0.0, uids={"default/owner": "u1"})
    tombs.observe([], now=1.0)
    reborn = vs("owner", "192.0.2.1", created="2024-01-03T00:00:00Z")
    assert tombs.observe([reborn], now=62.0, uids={"default/owner": "u2"})["default/owner"] == "2024-01-03T00:00:00Z"


def test_a_delete_and_create_between_two_listings_keeps_the_claim() -> None:
    tombs = Tombstones(grace_seconds=60)
    tombs.observe([vs("owner", "192.0.2.1", created="2024-01-01T00:00:00Z")], now=0.0, uids={"default/owner": "u1"})
    reborn = vs("owner", "192.0.2.1", created="2024-01-03T00:00:00Z")
    assert tombs.observe([reborn], now=5.0, uids={"default/owner": "u2"})["default/owner"] == "2024-01-01T00:00:00Z"
