"""announce: bgp objects leave in two steps (vsop.node.withdraw, driven by the node loop).

Deleted from the source, an announce: bgp object first loses only its route (BIRD withdraws
the VIP; IPVS keeps serving what the network still sends while BGP converges), and its IPVS
services, address and rules go once its drain.timeoutSeconds passed. Declared again
meanwhile, it comes back as declared; other objects and a drain of 0 are removed at once.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import make_vs
from vsop.adapters.kernel import fake_kernel
from vsop.core.desired import Node
from vsop.core.health import HealthTracker
from vsop.core.state import ServiceKey
from vsop.node.loop import Feed, NodeLoop
from vsop.node.reconciler import Reconciler
from vsop.node.withdraw import Withdrawals, withdrawn

REF = "default/web"
WEB = ServiceKey("tcp", "169.254.11.2", 80)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def loop_with(clock: Clock) -> tuple[NodeLoop, Any]:
    kernel, fake = fake_kernel()
    return NodeLoop(Reconciler(kernel, Node("n")), HealthTracker(), clock=clock), fake


def kinds(loop: NodeLoop, changed: dict[str, Any]) -> list[str]:
    turn = loop.turn(False, lambda others: Feed(changed=changed))
    assert turn.ok and turn.outcome is not None
    return [op.kind for op in turn.outcome.applied]


def test_a_deleted_bgp_object_withdraws_its_route_first_and_its_services_after_the_drain() -> None:
    clock = Clock()
    loop, fake = loop_with(clock)
    assert "route.add" in kinds(loop, {REF: make_vs(announce="bgp", drain={"timeoutSeconds": 5})})
    assert kinds(loop, {REF: None}) == ["route.delete"]
    assert WEB in fake.state.services and not fake.state.routes
    assert loop.withdrawals.next_due() == 105.0
    clock.now = 104.9
    assert kinds(loop, {}) == []
    clock.now = 105.0
    applied = kinds(loop, {})
    assert "service.delete" in applied and "route.delete" not in applied
    assert WEB not in fake.state.services and loop.withdrawals.next_due() is None
    assert kinds(loop, {}) == []  # a second turn writes nothing


def test_declared_again_while_withdrawn_it_is_announced_again_and_stays() -> None:
    clock = Clock()
    loop, fake = loop_with(clock)
    vs = make_vs(announce="bgp", drain={"timeoutSeconds": 5})
    kinds(loop, {REF: vs})
    assert kinds(loop, {REF: None}) == ["route.delete"]
    assert kinds(loop, {REF: vs}) == ["route.add"]
    clock.now = 200.0
    assert kinds(loop, {}) == [] and WEB in fake.state.services and fake.state.routes


def test_other_objects_and_a_drain_of_zero_go_at_once() -> None:
    for vs in (make_vs(), make_vs(announce="bgp", drain={"timeoutSeconds": 0})):
        loop, fake = loop_with(Clock())
        kinds(loop, {REF: vs})
        kinds(loop, {REF: None})
        assert WEB not in fake.state.services and not fake.state.routes and loop.withdrawals.next_due() is None


def test_withdrawals_alone() -> None:
    vs = make_vs(announce="bgp")
    withdrawals = Withdrawals()
    taken = withdrawals.intercept({REF: None, "default/other": None}, {REF: vs}, 10.0)
    assert taken == {REF: withdrawn(vs), "default/other": None}
    assert taken[REF] is not None and taken[REF].spec.announce == "none" and taken[REF].spec.vip == vs.spec.vip
    assert withdrawals.intercept({REF: None}, {REF: withdrawn(vs)}, 11.0) == {}  # gone again: still waiting
    assert withdrawals.expired(39.9) == {} and withdrawals.expired(40.0) == {REF: None} and withdrawals.expired(50.0) == {}
