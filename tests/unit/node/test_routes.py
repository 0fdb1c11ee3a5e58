"""The reconciler and the engine keep vsop's route table true (announce: bgp), on fake adapters."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.node.test_reconciler import NODE, web
from vsop.core import ops
from vsop.core.state import RealServerKey, ServiceKey
from vsop.adapters.kernel import fake_kernel
from vsop.node.whole import cleanup
from vsop.node.reconciler import Reconciler

VIP_A, VIP_B = "169.254.20.1", "169.254.20.2"


def announced() -> Reconciler:
    kernel, _ = fake_kernel()
    reconciler = Reconciler(kernel, NODE)
    reconciler.set_objects([web("a", VIP_A, announce="bgp", healthCheck={"type": "tcp"}), web("b", VIP_B, announce="bgp"), web("c", "169.254.20.3")])
    assert reconciler.reconcile().ok
    return reconciler


def fake_of(reconciler: Reconciler):
    return reconciler.kernel.routes.kernel  # type: ignore[union-attr]


def failing_a() -> frozenset[RealServerKey]:
    tcp, udp = ServiceKey("tcp", VIP_A, 80), ServiceKey("udp", VIP_A, 53)
    return frozenset(RealServerKey(s, a, 8080 if s is tcp else 53) for s in (tcp, udp) for a in ("10.1.0.1", "10.1.0.2"))


def test_each_bgp_vip_gets_its_route_and_a_resync_writes_nothing() -> None:
    reconciler = announced()
    assert fake_of(reconciler).state.routes == {f"{VIP_A}/32", f"{VIP_B}/32"}
    again = reconciler.reconcile(full=True)
    assert again.ok and again.writes == 0


def test_every_real_server_failing_withdraws_only_that_vip_and_recovering_announces_it_again() -> None:
    reconciler = announced()
    fake = fake_of(reconciler)
    reconciler.set_out_of_service(failing_a())
    outcome = reconciler.reconcile()
    assert outcome.ok and [op for op in outcome.applied if op.kind.startswith("route")] == [ops.DeleteRoute(f"{VIP_A}/32", 4242, 118)]
    assert fake.state.routes == {f"{VIP_B}/32"} and reconciler.reads == 1  # incremental: nothing read
    reconciler.set_out_of_service(frozenset())
    assert [op.kind for op in reconciler.reconcile().applied if op.kind.startswith("route")] == ["route.add"]
    assert fake.state.routes == {f"{VIP_A}/32", f"{VIP_B}/32"}


def test_a_drained_node_withdraws_every_route_and_keeps_serving() -> None:
    reconciler = announced()
    fake = fake_of(reconciler)
    services = dict(fake.state.services)
    reconciler.set_announcing(False)
    assert reconciler.reconcile().ok
    assert fake.state.routes == frozenset() and fake.state.services == services
    reconciler.set_announcing(True)
    assert reconciler.reconcile().ok and len(fake.state.routes) == 2


def test_a_route_deleted_or_added_by_hand_is_repaired_by_the_next_resync() -> None:
    reconciler = announced()
    fake = fake_of(reconciler)
    fake.state = replace(fake.state, routes=frozenset({f"{VIP_B}/32", "169.254.20.3/32"}))
    assert reconciler.reconcile().writes == 0  # the incremental path trusts what it wrote
    repaired = reconciler.reconcile(full=True)
    assert repaired.ok and fake.state.routes == {f"{VIP_A}/32", f"{VIP_B}/32"}
    assert sorted((r.op.kind, r.obj) for r in repaired.repairs if r.op.kind.startswith("route")) == [
        ("route.add", "default/a"), ("route.delete", "default/c"),
    ]


def test_removing_the_object_withdraws_first_and_cleanup_removes_every_route() -> None:
    reconciler = announced()
    fake = fake_of(reconciler)
    reconciler.update_objects({"default/b": None})
    removed = reconciler.reconcile()
    assert removed.ok and fake.state.routes == {f"{VIP_A}/32"}
    kinds = [op.kind for op in removed.applied]
    assert kinds.index("route.delete") < kinds.index("service.delete") < kinds.index("address.delete")
    result = cleanup(reconciler.kernel)
    assert fake.state.routes == frozenset() and result.applied[0].kind == "route.delete"
