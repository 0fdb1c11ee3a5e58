"""Who may claim an address, applied (vsop.core.claims.admit and ClaimRule): what the agents, the
controller and `vsop apply` / `plan` refuse, and what an object refused its VIP does to the others
(nothing: it claims no port), on the whole-node path (desired_state) and the node reconciler."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.api.test_pools import pool
from tests.unit.core.test_claims import vs
from vsop.adapters.kernel import fake_kernel
from vsop.api.pools import parse_vip_pool
from vsop.core.claims import HOST_RULE, NOT_ALLOWED, Admission, ClaimRule, Tombstone, Tombstones, admit
from vsop.core.desired import Node, desired_state
from vsop.node.reconciler import Reconciler
from vsop.node.whole import derive
from vsop.core.state import KernelState

TEAM_A = parse_vip_pool({**pool(addresses=["198.51.100.0/28"], serviceAllocation={"namespaces": ["team-a"]}), "metadata": {"name": "team-a"}})
WEB = parse_vip_pool({**pool(addresses=["203.0.113.0/28"], serviceAllocation={"namespaceSelectors": [{"matchLabels": {"tier": "web"}}]}),
                      "metadata": {"name": "web"}})
OPEN = parse_vip_pool({**pool(addresses=["192.0.2.0/28"]), "metadata": {"name": "open"}})
CLUSTER = ClaimRule(policy="pools", pools=(OPEN, TEAM_A, WEB), namespace_labels={"team-a": {}, "team-b": {"tier": "web"}, "team-c": {}})
NODE = Node("n")


def refused(services: list[Any], rule: ClaimRule | None, **kwargs: Any) -> dict[str, tuple[str, str]]:
    return {ref: (p.reason, p.message) for ref, p in admit(services, rule, **kwargs).items()}


def test_a_tenant_is_refused_the_metadata_address_another_tenants_pool_and_addresses_of_no_pool() -> None:
    services = [
        vs("metadata", "169.254.169.254", namespace="team-b"),
        vs("theirs", "198.51.100.3", namespace="team-b"),
        vs("nowhere", "10.0.0.7", namespace="team-b"),
        vs("mine", "198.51.100.4", namespace="team-a"),
        vs("labelled", "203.0.113.5", namespace="team-b"),
        vs("open", "192.0.2.3", namespace="team-c"),
    ]
    found = refused(services, CLUSTER)
    assert set(found) == {"team-b/metadata", "team-b/theirs", "team-b/nowhere"}
    assert all(reason == NOT_ALLOWED for reason, _ in found.values())
    assert "cloud metadata address" in found["team-b/metadata"][1]
    assert found["team-b/theirs"][1].startswith("198.51.100.3 lies in VipPool team-a, which does not grant namespace team-b")
    assert found["team-b/nowhere"][1].startswith("10.0.0.7 lies in no VipPool granting namespace team-b")


def test_a_namespace_selector_follows_the_namespaces_labels() -> None:
    services = [vs("labelled", "203.0.113.5", namespace="team-b")]
    assert refused(services, CLUSTER) == {}
    relabelled = ClaimRule(policy="pools", pools=CLUSTER.pools, namespace_labels={"team-b": {"tier": "db"}})
    assert set(refused(services, relabelled)) == {"team-b/labelled"}
    unknown = ClaimRule(policy="pools", pools=CLUSTER.pools, namespace_labels={})
    assert set(refused(services, unknown)) == {"team-b/labelled"}, "a Namespace not (yet) seen matches no selector"


def test_an_older_object_outside_the_pool_cannot_squat_the_port_the_pool_grants() -> None:
    squatter = vs("squat", "198.51.100.3", namespace="team-b", created="2024-01-01T00:00:00Z")
    owner = vs("owner", "198.51.100.3", namespace="team-a", created="2025-01-01T00:00:00Z")
    found = refused([squatter, owner], CLUSTER)
    assert set(found) == {"team-b/squat"} and found["team-b/squat"][0] == NOT_ALLOWED
    # Under policy any both may claim it: the older keeps the VIP, the other namespace is refused.
    anyone = ClaimRule(policy="any", pools=CLUSTER.pools, namespace_labels=CLUSTER.namespace_labels)
    found = refused([squatter, owner], anyone)
    assert set(found) == {"team-a/owner"} and found["team-a/owner"][0] == "Conflict"


def test_two_namespaces_share_an_open_vip_only_with_the_same_key() -> None:
    first = vs("a", "192.0.2.9", (80,), namespace="team-a", created="2024-01-01T00:00:00Z", shared="k")
    second = vs("b", "192.0.2.9", (443,), namespace="team-c", created="2024-01-02T00:00:00Z", shared="k")
    assert refused([first, second], CLUSTER) == {}
    other = vs("b", "192.0.2.9", (443,), namespace="team-c", created="2024-01-02T00:00:00Z", shared="other")
    assert refused([first, other], CLUSTER)["team-c/b"][0] == "Conflict"


def test_on_a_plain_host_only_the_metadata_addresses_need_allow_vip() -> None:
    services = [vs("md", "169.254.169.254"), vs("v6", "169.254.169.254", namespace="other"), vs("web", "10.0.0.7")]
    assert set(refused(services, HOST_RULE, sharing=False)) == {"default/md", "other/v6"}
    allowed = ClaimRule(host=True, allow=("169.254.169.254",))
    assert set(refused(services, allowed, sharing=False)) == set()
    wide = ClaimRule(host=True, allow=("169.254.0.0/16", "fd00:ec2::/64"))
    assert set(refused(services, wide, sharing=False)) == {"default/md", "other/v6"}, "an entry must be the address itself"


def test_on_a_plain_host_policy_pools_takes_the_allow_vip_entries_as_the_pool() -> None:
    services = [vs("in", "10.0.0.7"), vs("range", "10.0.1.5"), vs("out", "10.9.0.2")]
    rule = ClaimRule(policy="pools", host=True, allow=("10.0.0.0/29", "10.0.1.1-10.0.1.9"))
    found = refused(services, rule, sharing=False)
    assert set(found) == {"default/out"}
    assert found["default/out"][1] == "10.9.0.2 lies in no --allow-vip entry (--vip-policy=pools; entries: 10.0.0.0/29, 10.0.1.1-10.0.1.9)"


def test_desired_state_programs_nothing_of_a_refused_object_and_lets_the_next_one_win() -> None:
    squatter = vs("squat", "198.51.100.3", namespace="team-b", created="2024-01-01T00:00:00Z")
    owner = vs("owner", "198.51.100.3", namespace="team-a", created="2025-01-01T00:00:00Z")
    desired = desired_state([squatter, owner], NODE, refused=admit([squatter, owner], CLUSTER))
    assert desired.programmed == ("team-a/owner",)
    assert [(p.obj, p.reason) for p in desired.problems] == [("team-b/squat", NOT_ALLOWED)]
    assert {s.owner for s in desired.state.services.values()} == {"team-a/owner"}


def test_the_whole_node_path_refuses_the_metadata_address_by_default() -> None:
    desired = derive([vs("md", "169.254.169.254"), vs("web", "10.0.0.7")], NODE, KernelState())
    assert desired.programmed == ("default/web",)
    assert [(p.obj, p.reason) for p in desired.problems] == [("default/md", NOT_ALLOWED)]
    assert derive([vs("md", "169.254.169.254")], NODE, KernelState(), rule=ClaimRule(host=True, allow=("169.254.169.254",))).programmed == ("default/md",)


@pytest.mark.parametrize("refuse_first", [True, False])
def test_the_reconciler_never_programs_a_refused_object_and_the_other_takes_the_port(refuse_first: bool) -> None:
    kernel, fake = fake_kernel()
    reconciler = Reconciler(kernel, NODE)

    def owners() -> set[str]:  # who the kernel serves 198.51.100.3:80 for: the owner in the set member's comment
        return set(fake.state.ipsets["VSOP-VIP-PORTS"].members.values())

    squatter = vs("squat", "198.51.100.3", namespace="team-b", created="2024-01-01T00:00:00Z")
    owner = vs("owner", "198.51.100.3", namespace="team-a", created="2025-01-01T00:00:00Z")
    reconciler.set_objects([squatter, owner])
    if refuse_first:
        reconciler.set_refusals(admit([squatter, owner], CLUSTER))
    assert reconciler.reconcile().ok
    if not refuse_first:  # programmed before the rule arrived (an upgrade): the refusal removes it, incrementally
        assert owners() == {"team-b/squat"}
        reconciler.set_refusals(admit([squatter, owner], CLUSTER))
        outcome = reconciler.reconcile()
        assert outcome.ok and not outcome.full
    assert owners() == {"team-a/owner"}
    assert reconciler.programmed == {"team-a/owner"}
    assert [p.reason for p in reconciler.problems("team-b/squat")] == [NOT_ALLOWED]
    assert reconciler.reconcile().writes == 0, "a second turn writes nothing"
    # The administrator grants team-b the address too: the older object takes the port back.
    reconciler.set_refusals({})
    assert reconciler.reconcile().ok
    assert owners() == {"team-b/squat"} and reconciler.programmed == {"team-b/squat"}

RULES = (CLUSTER, ClaimRule(policy="any", pools=CLUSTER.pools, namespace_labels={"team-b": {"tier": "db"}}))
SPEC = st.tuples(st.sampled_from(["team-a", "team-b", "team-c"]), st.sampled_from(["198.51.100.3", "192.0.2.9", "203.0.113.5"]),
                 st.sampled_from([(80,), (443,), (80, 443)]), st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"]),
                 st.sampled_from([None, "k", "j"]))
CHANGE = st.tuples(
    st.sampled_from(["a", "b", "c"]),  # name
    st.one_of(st.none(), SPEC),
    st.sampled_from([0, 1]),  # the rule after this change
    st.sampled_from([None, "2023-06-01T00:00:00Z"]),  # the object's status.claimedSince
    st.sampled_from([0.0, 5.0, 100.0]),  # seconds passing (the grace period is 60 s)
    st.one_of(st.none(), st.tuples(st.sampled_from(["a", "b", "c"]), SPEC)),  # a held claim the controller shares
)


@settings(max_examples=300, deadline=None)
@given(st.lists(CHANGE, min_size=1, max_size=16))
def test_admission_kept_per_change_is_admit_over_everything(steps: list[Any]) -> None:
    """Kept per change, with deleted objects' claims held (this judge's own and shared ones, expiring)
    and claimedSince: the same as admit over everything with the same held claims."""
    admission, tombs = Admission(), Tombstones(grace_seconds=60)
    objects: dict[str, Any] = {}
    since: dict[str, str] = {}
    shared: dict[str, Tombstone] = {}
    now = 0.0
    for name, what, rule_index, claimed, passing, share in steps:
        now += passing
        changed: dict[str, Any] = {}
        for ref in [r for r in objects if r.endswith("/" + name)]:
            del objects[ref]  # the name moves namespace (or goes): the old object goes
            since.pop(ref, None)
            changed[ref] = None
        if what is not None:
            namespace, vip, ports, created, key = what
            obj = vs(name, vip, ports, namespace=namespace, created=created, shared=key)
            objects[obj.ref] = obj
            changed[obj.ref] = obj
            if claimed:
                since[obj.ref] = claimed
        if share is not None:
            held_name, (namespace, vip, ports, created, key) = share
            created = "2023-01-01T00:00:00Z" if created.startswith("2024-01-01") else created  # older than any object, or not
            tomb = Tombstone(namespace, held_name, vip, tuple((p, "TCP") for p in ports), created, now + 30.0, key)
            shared[tomb.ref] = tomb
        rule = RULES[rule_index]
        tombs.note(admission, changed, now)
        held = tombs.held(shared, now)
        found = admission.update(rule, changed, since={ref: since.get(ref) for ref in changed}, held=held)
        everything = sorted(objects.values(), key=lambda o: (o.metadata.creation_timestamp or "", o.ref))
        assert found == admit(everything, rule, since=since, held=held)
