"""announce: bgp: the blackhole route in vsop's table that tells BIRD to announce a VIP.

A route exists exactly when the node should attract the VIP: programmed, a real server
taking new connections, the node not drained, announce: bgp. Plans add it last and
withdraw it first; the in-memory kernel refuses the other orders.
"""

from __future__ import annotations

import pytest

from tests.conftest import make_vs
from vsop.api.errors import InvalidInput
from vsop.core import ops
from vsop.core.commands import command_lines, render
from vsop.core.desired import Node, desired_state
from vsop.core.memory import KernelRefused, apply_ops
from vsop.core.plan import plan
from vsop.core.state import KernelState, Names, RealServerKey, ServiceKey, ipset_member

NODE = Node("node-a")
VIP = "169.254.11.2"
WEB = ServiceKey("tcp", VIP, 80)
ROUTE = f"{VIP}/32"


def bgp(name: str = "web", **spec: object):
    return make_vs(name, announce="bgp", **spec)


def both_real_servers() -> frozenset[RealServerKey]:
    return frozenset(RealServerKey(WEB, address, 8080) for address in ("192.168.2.111", "192.168.2.222"))


def test_a_programmed_bgp_vip_with_a_healthy_real_server_gets_a_route() -> None:
    assert desired_state([bgp()], NODE).state.routes == {ROUTE}
    assert desired_state([make_vs()], NODE).state.routes == frozenset()  # announce: none


def test_one_real_server_failing_keeps_the_route_every_one_failing_withdraws_it() -> None:
    one = next(iter(sorted(both_real_servers())))
    assert desired_state([bgp()], NODE, out_of_service=frozenset({one})).state.routes == {ROUTE}
    every = desired_state([bgp()], NODE, out_of_service=both_real_servers())
    # IPVS keeps them (nothing better to send to), but BGP stops attracting traffic here.
    assert every.state.routes == frozenset() and WEB in every.state.services
    assert [w.reason for w in every.warnings] == ["AllBackendsFailing"]


def test_no_route_with_only_drained_real_servers_or_a_drained_node_or_a_refused_vip() -> None:
    drained = bgp(backends=[{"address": "192.168.2.111", "weight": 0}])
    assert desired_state([drained], NODE).state.routes == frozenset()
    assert desired_state([bgp()], NODE, announcing=False).state.routes == frozenset()
    refused = desired_state([bgp()], NODE, node_addresses=[VIP])
    assert refused.state.routes == frozenset() and [p.reason for p in refused.problems] == ["VIPRefused"]


def test_ipv6_gets_a_host_route() -> None:
    state = desired_state([bgp(vip="2001:db8::10", backends=[{"address": "2001:db8:1::5"}])], NODE).state
    assert state.routes == {"2001:db8::10/128"}


def test_a_shared_vip_is_announced_when_its_bgp_object_serves() -> None:
    other = make_vs("dns", ports=[{"port": 53, "protocol": "UDP"}])
    assert desired_state([bgp(), other], NODE).state.routes == {ROUTE}
    assert desired_state([make_vs(), make_vs("dns", announce="bgp", ports=[{"port": 53, "protocol": "UDP"}])], NODE).state.routes == {ROUTE}


def test_the_model_allows_bgp_only_with_mode_ipvs() -> None:
    with pytest.raises(InvalidInput) as failure:
        make_vs(announce="bgp", mode="keepalived")
    assert [(e.path, "needs mode: ipvs" in e.reason) for e in failure.value.errors] == [("spec.announce", True)]


def test_the_route_is_added_after_its_real_servers_and_withdrawn_before_anything_goes() -> None:
    names = Names()
    built = plan(desired_state([bgp()], NODE).state, KernelState()).ops
    kinds = [op.kind for op in built]
    assert kinds[-1] == "route.add" and kinds.index("route.add") > kinds.index("realserver.add")
    assert built[-1] == ops.AddRoute(ROUTE, names.route_table, names.route_protocol)
    end = apply_ops(KernelState(), built)
    assert end.routes == {ROUTE}
    gone = plan(KernelState(), end).ops
    assert gone[0] == ops.DeleteRoute(ROUTE, 4242, 118)
    assert apply_ops(end, gone) == KernelState(sysctls=end.sysctls)  # ownership checks hold in this order
    assert plan(desired_state([bgp()], NODE).state, end).ops == ()  # a second sync writes nothing


def test_the_in_memory_kernel_refuses_a_route_for_an_unbound_vip_and_unbinding_an_announced_one() -> None:
    with pytest.raises(KernelRefused, match="before its VIP is bound"):
        apply_ops(KernelState(), [ops.AddRoute(ROUTE, 4242, 118)])
    end = apply_ops(KernelState(), plan(desired_state([bgp()], NODE).state, KernelState()).ops)
    with pytest.raises(KernelRefused, match="still attracts"):
        apply_ops(end, [ops.DeleteAcceptMember("VSOP-VIP-PORTS", ipset_member(WEB)), ops.DeleteService(WEB), ops.DeleteAddress("vsop0", ROUTE)])
    with pytest.raises(KernelRefused, match="File exists"):
        apply_ops(end, [ops.AddRoute(ROUTE, 4242, 118)])


def test_health_failing_everywhere_is_one_route_withdrawal() -> None:
    before = apply_ops(KernelState(), plan(desired_state([bgp()], NODE).state, KernelState()).ops)
    failing = desired_state([bgp()], NODE, out_of_service=both_real_servers()).state
    assert plan(failing, before).ops == (ops.DeleteRoute(ROUTE, 4242, 118),)


def test_plan_prints_the_ip_route_commands() -> None:
    assert command_lines(ops.AddRoute(ROUTE, 4242, 118)) == [f"ip route add blackhole {ROUTE} table 4242 proto 118"]
    assert command_lines(ops.DeleteRoute("2001:db8::10/128", 7, 118)) == ["ip route del blackhole 2001:db8::10/128 table 7 proto 118"]
    text = render(plan(desired_state([bgp()], NODE, names=Names(route_table=7)).state, KernelState(), Names(route_table=7)).ops)
    assert f"\nip route add blackhole {ROUTE} table 7 proto 118\n" in text and "# announce: bgp." in text
