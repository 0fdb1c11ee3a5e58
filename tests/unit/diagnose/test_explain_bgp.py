"""`vsop explain` says when the VIP is announced over BGP from this node (its route in vsop's table)."""

from __future__ import annotations

from tests.unit.diagnose.test_explain_doctor import KEY, healthy
from vsop.diagnose.explain import explain


def step(facts, name: str) -> dict:
    return {s["id"]: s for s in explain(facts, KEY)["steps"]}[name]


def test_the_route_step_names_the_bgp_announcement_only_when_the_route_exists() -> None:
    announced = healthy(announce="bgp")
    assert announced.observed.routes == {"169.254.11.2/32"}
    assert "announced over BGP (blackhole route in table 4242" in step(announced, "route")["found"]
    assert "BGP" not in step(healthy(), "route")["found"]
