"""Per-VIP fault isolation on fake adapters: one refused kernel operation never stops the rest of the node.

Property: whatever operations the fake kernel refuses on some VIPs, through any sequence of
changes, every reconcile succeeds; every object not on a refused VIP ends programmed exactly
as a sync from scratch programs it; the objects on a refused VIP report KernelError with the
kernel's words for their own VIP (never another's); and once the kernel takes them again,
their retry programs them, the kernel ends as a sync from scratch leaves it, and a second
reconcile writes nothing. Plus the triggers: a scheduler module the kernel lacks, a backend
it refuses, IPv6 on a node without an IPv6 stack, a full set.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.core.test_property import V4_VIPS, V6_VIPS, comparable, foreign_state
from tests.unit.node.test_reconciler import NODE, from_scratch, same_kernel, step, take_step, web
from vsop.adapters.kernel import fake_kernel
from vsop.core import ops
from vsop.core.desired import Endpoint
from vsop.core.fragments import around
from vsop.core.state import KernelState, RealServerKey
from vsop.api.model import VirtualService
from vsop.node.reconciler import Reconciler
from vsop.node.refusals import MOST_ROUNDS, MOST_SECONDS
from vsop.node.resync import op_vip

REFUSABLE = (ops.AddService, ops.EditService, ops.AddRealServer, ops.EditRealServer, ops.AddAddress, ops.AddSetMember, ops.AddAcceptMember)


def per_vip(state: KernelState, vips: set[str], delegated: frozenset[Any]) -> KernelState:
    """What `state` holds of `vips` (addresses, services, real servers, set members, routes), as a kernel holds it
    (keepalived's services, `delegated`, left out)."""
    cut = comparable(around(state, vips), delegated)
    return KernelState(addresses=cut.addresses, services=cut.services, real_servers=cut.real_servers,
                       ipsets={name: s for name, s in cut.ipsets.items() if s.members}, routes=cut.routes)


def refuser(vips: set[str], kinds: set[type[ops.Op]]) -> Any:
    def refuse(op: ops.Op) -> str | None:
        vip = op_vip(op)
        return f"the kernel says no to {vip}" if vip in vips and isinstance(op, tuple(kinds)) else None
    return refuse


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(step, min_size=1, max_size=10),
    refused=st.sets(st.sampled_from(V4_VIPS + V6_VIPS), min_size=1, max_size=2),
    kinds=st.sets(st.sampled_from(REFUSABLE), min_size=1, max_size=3),
)
def test_whatever_the_kernel_refuses_on_some_vips_the_others_end_as_from_scratch(steps: list[Any], refused: set[str], kinds: set[Any]) -> None:
    now = [0.0]
    kernel, fake = fake_kernel(foreign_state())
    fake.refuse = refuser(refused, kinds)
    reconciler = Reconciler(kernel, NODE, clock=lambda: now[0])
    objects: dict[str, VirtualService] = {}
    endpoints: dict[tuple[str, str], tuple[Endpoint, ...]] = {}
    out: set[RealServerKey] = set()
    for action in steps:
        take_step(action, reconciler, objects, endpoints, out)
        reconciler.set_objects(list(objects.values()))
        reconciler.set_endpoints(endpoints)
        reconciler.set_out_of_service(frozenset(out))
        now[0] += 1.0
        outcome = reconciler.reconcile()
        assert outcome.ok, outcome.error  # a refusal on some VIPs never fails the turn
        taken = set(reconciler.kernel_refusals.vips)
        assert taken <= refused and not reconciler.kernel_refusals.families
        expected, declared = from_scratch(list(objects.values()), endpoints, frozenset(out))
        others = {vip for vip in {vs.spec.vip for vs in objects.values()} | {a.split("/")[0] for a in expected.addresses} if vip not in taken}
        delegated = reconciler.desired().state.delegated
        assert per_vip(fake.state, others, delegated) == per_vip(expected, others, delegated)
        on_taken = {vs.ref for vs in objects.values() if vs.spec.vip in taken}
        assert reconciler.programmed == declared - on_taken
        for vs in objects.values():
            kernel_errors = [p for p in reconciler.problems(vs.ref) if p.reason == "KernelError"]
            if vs.ref in declared and vs.spec.vip in taken:
                assert [p.message.split(": ")[-1] for p in kernel_errors] == [f"the kernel says no to {vs.spec.vip}"]
            else:
                assert kernel_errors == []
    # The kernel takes them again: their next try programs them, and the node is as from scratch.
    fake.refuse = lambda op: None
    now[0] += MOST_SECONDS
    healed = reconciler.reconcile()
    assert healed.ok and not reconciler.kernel_refusals and reconciler.retry_in() is None
    expected, declared = from_scratch(list(objects.values()), endpoints, frozenset(out))
    same_kernel(fake.state, expected, reconciler.desired().state.delegated)
    assert reconciler.programmed == declared
    writes = fake.writes
    assert reconciler.reconcile(full=True).writes == 0 and fake.writes == writes


def test_a_scheduler_the_kernel_lacks_refuses_its_vip_only_and_changes_elsewhere_go_on_in_the_same_turn() -> None:
    now = [0.0]
    kernel, fake = fake_kernel()
    fake.refuse = lambda op: "No such file or directory (no ip_vs_twos module)" if isinstance(op, ops.AddService) and op.service.scheduler == "twos" else None
    reconciler = Reconciler(kernel, NODE, clock=lambda: now[0])
    a = web("a", "169.254.50.1", scheduler="twos")
    b, c, d = web("b", "169.254.50.2"), web("c", "169.254.50.3"), web("d", "169.254.50.4")
    reconciler.set_objects([a, b, c, d])
    first = reconciler.reconcile()
    assert first.ok and set(first.refused) == {"169.254.50.1"}
    assert reconciler.programmed == {b.ref, c.ref, d.ref}
    (problem,) = reconciler.problems(a.ref)
    assert problem.reason == "KernelError" and problem.message.startswith("service.add") and "169.254.50.1" in problem.message
    assert problem.message.endswith("No such file or directory (no ip_vs_twos module)")
    # Add a backend to b, delete c, take d's backend out: all in the next turn, a left as it is.
    b2 = web("b", "169.254.50.2", backends=[{"address": "10.1.0.1"}, {"address": "10.1.0.2"}, {"address": "10.1.0.3"}])
    reconciler.set_objects([a, b2, d])
    dead = next(k for k in reconciler.configured if k.service.vip == "169.254.50.4" and k.address == "10.1.0.2")
    reconciler.set_out_of_service(frozenset({dead}))
    now[0] += 1.0
    turn = reconciler.reconcile()
    assert turn.ok and not turn.refused  # a is not due: not tried, nothing of it written
    assert all(op_vip(op) != "169.254.50.1" for op in turn.applied)
    assert fake.state.real_servers[dead].weight == 0
    assert {k.address for k in fake.state.real_servers if k.service.vip == "169.254.50.2" and k.service.port == 80} == {"10.1.0.1", "10.1.0.2", "10.1.0.3"}
    assert not any(k.vip == "169.254.50.3" for k in fake.state.services)
    assert reconciler.programmed == {b.ref, d.ref} and reconciler.retry_in() == 4.0
    # Its VIP is bound, its port not accepted: VSOP-FILTER rejects it, never a local listener.
    assert "169.254.50.1/32" in fake.state.addresses
    assert not any(m.startswith("169.254.50.1,") for m in fake.state.ipsets["VSOP-VIP-PORTS"].members)
    # Due: tried again, refused again, the backoff doubles; the others keep zero writes.
    now[0] += 4.0
    again = reconciler.reconcile()
    assert again.ok and set(again.refused) == {"169.254.50.1"} and reconciler.retry_in() == 10.0
    assert reconciler.reconcile().writes == 0
    # The object changes to a scheduler the kernel has: tried at once, programmed.
    reconciler.set_objects([web("a", "169.254.50.1", scheduler="rr"), b2, d])
    fixed = reconciler.reconcile()
    assert fixed.ok and not reconciler.kernel_refusals and reconciler.programmed == {a.ref, b.ref, d.ref}
    assert reconciler.problems(a.ref) == ()


def test_a_backend_the_kernel_refuses_takes_out_its_vip_not_the_node() -> None:
    kernel, fake = fake_kernel()
    fake.ipv4_networks = ("10.1.0.0/24",)  # 10.1.0.255 is that network's broadcast: not unicast
    reconciler = Reconciler(kernel, NODE)
    bad = web("bad", "169.254.51.1", backends=[{"address": "10.1.0.255"}])
    good = web("good", "169.254.51.2")
    reconciler.set_objects([bad, good])
    outcome = reconciler.reconcile()
    assert outcome.ok and set(outcome.refused) == {"169.254.51.1"} and reconciler.programmed == {good.ref}
    (problem,) = reconciler.problems(bad.ref)
    assert problem.reason == "KernelError" and "10.1.0.255" in problem.message and "not routable" in problem.message


def test_a_full_set_refuses_the_vip_whose_member_did_not_fit() -> None:
    kernel, fake = fake_kernel()
    reconciler = Reconciler(kernel, NODE)
    reconciler.set_objects([web("one", "169.254.52.1")])
    assert reconciler.reconcile().ok
    fake.refuse = lambda op: "Hash is full, cannot add more elements" if isinstance(op, (ops.AddSetMember, ops.AddAcceptMember)) else None
    reconciler.set_objects([web("one", "169.254.52.1"), web("two", "169.254.52.2")])
    outcome = reconciler.reconcile()
    assert outcome.ok and set(outcome.refused) == {"169.254.52.2"} and reconciler.programmed == {"default/one"}
    assert reconciler.problems("default/two")[0].message.endswith("Hash is full, cannot add more elements")


def test_a_node_without_ipv6_refuses_ipv6_vips_only() -> None:
    """Booted with ipv6.disable=1: no net.ipv6 sysctls at all. The IPv6 setting is refused first;
    every IPv6 VIP is left out and KernelError, IPv4 is programmed in the same turn."""
    kernel, fake = fake_kernel()
    fake.state = fake.state.__class__(**{**fake.state.__dict__, "sysctls": {k: v for k, v in fake.state.sysctls.items() if not k.startswith("net.ipv6.")}})
    reconciler = Reconciler(kernel, NODE)
    v4, v6 = web("four", "169.254.53.1"), web("six", "fd00::53", backends=[{"address": "fd00:1::1"}])
    reconciler.set_objects([v4, v6])
    outcome = reconciler.reconcile()
    assert outcome.ok and "IPv6" in outcome.refused and reconciler.programmed == {v4.ref}
    (problem,) = reconciler.problems(v6.ref)
    assert problem.reason == "KernelError" and "refused IPv6" in problem.message and "net.ipv6" in problem.message
    assert reconciler.problems(v4.ref) == ()
    assert any(k.vip == "169.254.53.1" for k in fake.state.services) and not any(k.vip == "fd00::53" for k in fake.state.services)
    assert "fd00::53/128" not in fake.state.addresses
    assert reconciler.reconcile().writes == 0 and reconciler.reconcile(full=True).writes == 0


def test_a_kernel_refusing_every_vip_fails_the_sync_after_a_bounded_number_of_reads() -> None:
    """IPVS gone from under the agent refuses every service: not one read of the kernel per VIP."""
    kernel, fake = fake_kernel()
    reconciler = Reconciler(kernel, NODE)
    objects = [web(f"s{i}", f"169.254.54.{i + 1}") for i in range(40)]
    reconciler.set_objects(objects)
    fake.refuse = lambda op: "Invalid argument" if isinstance(op, ops.AddService) else None
    failed = reconciler.reconcile()
    assert not failed.ok and f"{MOST_ROUNDS} VIPs in one sync" in (failed.error or "")
    # The first sync's read, the read after its first part was refused (the whole-node recovery path), one per round.
    assert reconciler.reads <= MOST_ROUNDS + 2 and len(reconciler.kernel_refusals.vips) == MOST_ROUNDS
