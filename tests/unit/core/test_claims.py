"""Who may claim an address (vsop.core.claims): pools, metadata addresses, sharing across namespaces, seniority."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.api.test_pools import pool
from vsop.api.model import parse_virtual_service
from vsop.api.pools import parse_vip_pool
from vsop.core.claims import Admission, ClaimRule, Tombstone, Tombstones, admit, host_vip_refused, resolve_claims, vip_not_allowed


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


def test_a_deleted_objects_claim_is_held_for_it_and_its_recreation_takes_it_back() -> None:
    rule = ClaimRule(policy="any")
    tombs, admission = Tombstones(grace_seconds=60), Admission()
    owner = vs("owner", "192.0.2.1", created="2024-01-01T00:00:00Z")
    squatter = vs("squat", "192.0.2.1", (80, 81), "other-ns", "2024-01-02T00:00:00Z", shared="k")

    def judge(changed: dict[str, Any], now: float, shared: dict[str, Tombstone] | None = None) -> dict[str, Any]:
        tombs.note(admission, changed, now)
        return admission.update(rule, changed, held=tombs.held(shared or {}, now))

    assert set(judge({owner.ref: owner, squatter.ref: squatter}, 0.0)) == {"other-ns/squat"}
    refused = judge({owner.ref: None}, 10.0)  # deleted: its claim is held, the squatter is still refused
    [tomb] = tombs.local.values()
    assert (tomb.ref, tomb.vip, tomb.ports, tomb.created, tomb.until, tomb.shared) == (
        "default/owner", "192.0.2.1", ((80, "TCP"),), "2024-01-01T00:00:00Z", 70.0, None)
    problem = refused["other-ns/squat"]
    assert (problem.reason, problem.other) == ("Conflict", "default/owner")
    assert problem.message == ("spec.ports[0]: 192.0.2.1:80/TCP is held for VirtualService default/owner, deleted: its claim is kept "
                               "for it until 1970-01-01T00:01:10Z (re-created under that name by then, it keeps its claim; --claim-grace-seconds)")
    reborn = vs("owner", "192.0.2.1", created="2024-01-03T00:00:00Z")  # re-created, younger than the squatter: it wins all the same
    refused = judge({reborn.ref: reborn}, 30.0)
    assert set(refused) == {"other-ns/squat"} and "created first (2024-01-01T00:00:00Z, before it was re-created)" in refused["other-ns/squat"].message
    assert admission.age("default/owner") == "2024-01-01T00:00:00Z"
    # Past the grace period the re-created object keeps what the controller wrote in its status.claimedSince.
    assert set(admission.update(rule, {reborn.ref: reborn}, since={reborn.ref: "2024-01-01T00:00:00Z"}, held=tombs.held({}, 80.0))) == {"other-ns/squat"}
    assert set(admission.update(rule, {reborn.ref: reborn}, held={})) == {"default/owner"}, "without it, it is younger than the squatter"


def test_past_the_grace_period_the_other_object_takes_the_claim() -> None:
    rule = ClaimRule(policy="any")
    tombs, admission = Tombstones(grace_seconds=60), Admission()
    owner, squatter = vs("owner", "192.0.2.1"), vs("squat", "192.0.2.1", namespace="b", created="2024-01-02T00:00:00Z")
    admission.update(rule, {owner.ref: owner, squatter.ref: squatter}, held=tombs.held({}, 0.0))
    tombs.note(admission, {owner.ref: None}, 1.0)
    assert set(admission.update(rule, {owner.ref: None}, held=tombs.held({}, 1.0))) == {"b/squat"}
    assert admission.update(rule, {}, held=tombs.held({}, 61.0)) == {}, "expired: the squatter is the only claimant"
    assert tombs.local == {}


def test_a_delete_and_create_between_two_turns_keeps_the_claim() -> None:
    rule = ClaimRule(policy="any")
    tombs, admission = Tombstones(grace_seconds=60), Admission()
    owner, squatter = vs("owner", "192.0.2.1"), vs("squat", "192.0.2.1", namespace="b", created="2024-01-02T00:00:00Z")
    admission.update(rule, {owner.ref: owner, squatter.ref: squatter}, held={})
    reborn = vs("owner", "192.0.2.1", created="2024-01-03T00:00:00Z")
    tombs.note(admission, {reborn.ref: reborn}, 5.0)  # another creationTimestamp under the same name
    assert set(admission.update(rule, {reborn.ref: reborn}, held=tombs.held({}, 5.0))) == {"b/squat"}
    edited = vs("owner", "192.0.2.1", (80, 81), created="2024-01-03T00:00:00Z")
    tombs.note(admission, {edited.ref: edited}, 6.0)
    assert tombs.local["default/owner"].until == 65.0, "an edit is no deletion"


def test_a_held_claim_holds_its_vip_against_other_namespaces_as_the_object_did_and_a_shared_one_wins() -> None:
    tomb = Tombstone("a", "web", "192.0.2.1", ((80, "TCP"),), "2024-01-01T00:00:00Z", 100.0, "k")
    same_key = vs("b", "192.0.2.1", (443,), "b", "2024-01-05T00:00:00Z", shared="k")
    no_key = vs("c", "192.0.2.1", (8443,), "c", "2024-01-05T00:00:00Z")
    found = admit([same_key, no_key], ClaimRule(policy="any"), held={tomb.ref: tomb})
    assert set(found) == {"c/c"}, "the key shares the VIP"
    assert found["c/c"].message.startswith("spec.vip: 192.0.2.1 is held for namespace a (VirtualService a/web, deleted: ")
    assert found["c/c"].message.endswith("(this one: none, theirs: k)")
    older = vs("d", "192.0.2.1", (80,), "d", "2023-01-01T00:00:00Z", shared="k")
    assert admit([older, same_key], ClaimRule(policy="any"), held={tomb.ref: tomb}) == {}, "an older object keeps the port from a held claim"
    # A held claim the rule refuses holds nothing.
    pools = ClaimRule(policy="pools", pools=(TEAM_A,), namespace_labels={})
    assert admit([vs("x", "198.51.100.3", namespace="team-a", created="2024-01-09T00:00:00Z")], pools,
                 held={"other/y": Tombstone("other", "y", "198.51.100.3", ((80, "TCP"),), "2020-01-01T00:00:00Z", 9.0)}) == {}
    # The shared one (the controller's) wins over a judge's own for the same name; expired ones are gone.
    tombs = Tombstones(60)
    tombs.local[tomb.ref] = tomb
    later = Tombstone("a", "web", "192.0.2.1", ((80, "TCP"),), "2024-01-01T00:00:00Z", 101.0, "k")
    assert tombs.held({later.ref: later}, 50.0) == {later.ref: later}
    assert tombs.held({later.ref: later}, 101.0) == {}


def test_a_held_claim_reads_back_what_it_writes_in_a_pools_status() -> None:
    tomb = Tombstone("a", "web", "fd00::1", ((80, "TCP"), (53, "UDP")), "2024-01-01T00:00:00Z", 1_700_000_100.0, "k")
    entry = tomb.as_status()
    assert entry == {"namespace": "a", "name": "web", "vip": "fd00::1", "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
                     "since": "2024-01-01T00:00:00Z", "until": "2023-11-14T22:15:00Z", "sharedKey": "k"}
    assert Tombstone.from_status(entry) == tomb
    assert Tombstone.from_status({**entry, "until": "soon"}) is None
    assert Tombstone.from_status({"name": "x"}) is None


def test_what_a_held_claim_changes_is_judged_again_per_change() -> None:
    """Admission's per-change paths of held claims (the property test in test_admit.py covers the rest)."""
    rule = ClaimRule(policy="any")
    tombs, admission = Tombstones(grace_seconds=60), Admission()
    owner, other = vs("x", "192.0.2.1"), vs("y", "192.0.2.1", namespace="b", created="2024-01-02T00:00:00Z")

    def step(changed: dict[str, Any], now: float, shared: dict[str, Tombstone] | None = None) -> set[str]:
        tombs.note(admission, changed, now)
        return set(admission.update(rule, changed, held=tombs.held(shared or {}, now)))

    assert step({owner.ref: owner, other.ref: other}, 0) == {"b/y"}
    assert step({owner.ref: None}, 1) == {"b/y"}
    elsewhere = vs("x", "192.0.2.2", created="2024-01-03T00:00:00Z")
    assert step({elsewhere.ref: elsewhere}, 2) == set(), "re-created on another VIP: the held one is free"
    # A shared claim arriving for an existing object makes it older: its VIP is judged again.
    late = vs("z", "192.0.2.3", namespace="c", created="2024-01-05T00:00:00Z")
    early = vs("w", "192.0.2.3", namespace="c", created="2024-01-04T00:00:00Z")
    assert step({late.ref: late, early.ref: early}, 3) == {"c/z"}
    kept = Tombstone("c", "z", "192.0.2.9", ((80, "TCP"),), "2023-01-01T00:00:00Z", 100.0)  # it was on another VIP
    assert step({}, 4, {kept.ref: kept}) == {"c/w"}


def test_an_object_turned_invalid_is_not_gone() -> None:
    """Its kernel state is held (vsop.core.held) as long as it is declared: no claim is held for a re-creation."""
    tombs, admission = Tombstones(grace_seconds=60), Admission()
    owner = vs("owner", "192.0.2.1")
    admission.update(ClaimRule(policy="any"), {owner.ref: owner})
    tombs.note(admission, {owner.ref: None}, 1.0, unheld={owner.ref})
    assert tombs.local == {}
    tombs.note(admission, {owner.ref: None}, 1.0)
    assert set(tombs.local) == {owner.ref}
