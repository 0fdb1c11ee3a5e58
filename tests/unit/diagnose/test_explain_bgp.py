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


def test_the_route_step_names_the_peers_bird_announces_it_to() -> None:
    from dataclasses import replace

    def with_bgp(bgp: dict) -> str:
        return step(replace(healthy(announce="bgp"), bgp=bgp), "route")["found"]

    sessions = [{"peer": "10.0.0.1", "protocol": "vsop_peer_1", "up": True}, {"peer": "10.0.1.1", "protocol": "vsop_peer_2", "up": False}]
    assert with_bgp({"socket": "/run/vsop/bird.ctl", "sessions": sessions, "error": None}).endswith(
        "learned by BIRD) to 10.0.0.1 (session Established); not to 10.0.1.1 (session down)")
    assert with_bgp({"socket": "/s", "sessions": [], "error": "gone"}).endswith("learned by BIRD) but BIRD does not answer at /s")
    assert with_bgp({"socket": "/s", "sessions": sessions[1:], "error": None}).endswith("to no peer (session Established); not to 10.0.1.1 (session down)")
