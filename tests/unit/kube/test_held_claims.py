"""What the controller shares of the claims held for deleted objects (vsop.kube.claims.released): the
contested ones, in the first pool holding their VIP, until taken back, at most RELEASED_MAX per pool."""

from __future__ import annotations

from typing import Any

from tests.unit.api.test_pools import pool
from tests.unit.core.test_claims import vs
from vsop.api.crd import RELEASED_MAX
from vsop.api.pools import parse_vip_pool
from vsop.core.claims import Admission, ClaimRule, Tombstone
from vsop.kube.claims import HeldClaims, released

RULE = ClaimRule(policy="any")


def vip_pool(name: str, addresses: list[str], released_entries: list[Tombstone] = ()) -> Any:  # type: ignore[assignment]
    body = {**pool(addresses=addresses), "metadata": {"name": name}}
    if released_entries:
        body["status"] = {"released": [t.as_status() for t in released_entries]}
    return parse_vip_pool(body)


def tomb(name: str, vip: str = "192.0.2.1", created: str = "2024-01-01T00:00:00Z", until: float = 1000.0) -> Tombstone:
    return Tombstone("a", name, vip, ((80, "TCP"),), created, until)


def test_only_a_contested_claim_is_shared_in_the_first_pool_holding_its_vip() -> None:
    admission = Admission()
    held = {t.ref: t for t in (tomb("owner"), tomb("quiet", "192.0.2.2"), tomb("nowhere", "10.9.9.9"))}
    squatter = vs("squat", "192.0.2.1", namespace="b", created="2024-02-01T00:00:00Z")
    squatter2 = vs("squat2", "10.9.9.9", namespace="b", created="2024-02-01T00:00:00Z")
    admission.update(RULE, {squatter.ref: squatter, squatter2.ref: squatter2}, held=held)
    pools = [vip_pool("z-wide", ["192.0.2.0/24"]), vip_pool("a-lan", ["192.0.2.0/28"])]
    assert released(admission, held, pools) == {"a-lan": [held["a/owner"]], "z-wide": []}, (
        "uncontested: not written; a VIP no pool holds: nowhere to write")


def test_a_written_claim_stays_until_its_object_carries_its_age() -> None:
    admission, owner = Admission(), tomb("owner")
    held = {owner.ref: owner}
    pools = [vip_pool("lan", ["192.0.2.0/28"], [owner])]
    assert released(admission, held, pools) == {"lan": [owner]}, "written before: kept while nobody contests it"
    reborn = vs("owner", "192.0.2.1", namespace="a", created="2024-03-01T00:00:00Z")
    admission.update(RULE, {reborn.ref: reborn}, held=held)
    assert released(admission, held, pools) == {"lan": [owner]}, "re-created, its status.claimedSince not yet seen"
    admission.update(RULE, {reborn.ref: reborn}, since={reborn.ref: "2024-01-01T00:00:00Z"}, held=held)
    assert released(admission, held, pools) == {"lan": []}, "taken back"
    assert released(admission, {}, pools) == {"lan": []}, "expired"


def test_a_pool_keeps_at_most_released_max_the_last_to_expire() -> None:
    admission = Admission()
    held = {t.ref: t for t in (tomb(f"o{i}", "192.0.2.1", until=float(i)) for i in range(RELEASED_MAX + 5))}
    written = released(admission, held, [vip_pool("lan", ["192.0.2.0/28"], list(held.values()))])["lan"]
    assert len(written) == RELEASED_MAX and min(t.until for t in written) == 5.0


class Watch:
    """What HeldClaims reads of the cluster's pools: the rule and the shared held claims."""

    def __init__(self) -> None:
        self.shared_claims: dict[str, Tombstone] = {}

    def rule(self) -> ClaimRule:
        return RULE

    def shared(self) -> dict[str, Tombstone]:
        return self.shared_claims


def test_an_object_derived_from_a_loadbalancer_service_holds_nothing_when_it_goes() -> None:
    """The allocation owns a LoadBalancer Service's address: the next Service handed it waits for no grace period."""
    from vsop.kube.runtime import Trigger

    derived = vs("lb-web-v4", "192.0.2.1", namespace="a")
    derived = derived.model_copy(update={"metadata": derived.metadata.model_copy(update={"labels": {"vsop.dev/service": "web"}})})
    plain = vs("web", "192.0.2.2", namespace="a")
    held = HeldClaims(Watch(), Trigger(), grace_seconds=300, clock=lambda: 1000.0)  # type: ignore[arg-type]
    admission = Admission()
    held.judge(admission, {derived.ref: derived, plain.ref: plain}, {})
    held.judge(admission, {derived.ref: None, plain.ref: None}, {})
    assert set(held.held) == {"a/web"}
    assert held.held["a/web"].until == 1300.0
