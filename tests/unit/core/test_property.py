"""Property: for any desired and observed node, the plan reaches exactly the desired state.

The in-memory kernel refuses out-of-order operations (a service before its VIP, a
chain before its set, a set destroyed while a rule names it), so these properties
also prove the plan's ordering. Foreign objects must come through untouched.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vsop.core.desired import Node, desired_state
from vsop.core.memory import apply_ops
from vsop.core.plan import owned, plan
from vsop.core.state import IPSet, Jump, KernelState, Names, RealServer, RealServerKey, ServiceKey, VirtualServer
from vsop.api.model import parse_virtual_service

NAMES = Names()
V4_VIPS = ["169.254.11.1", "169.254.11.2", "169.254.11.3"]
V6_VIPS = ["fd00::a", "fd00::b"]
V4_BACKENDS = ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
V6_BACKENDS = ["fd00:1::1", "fd00:1::2"]


@st.composite
def virtual_service(draw: Any, index: int) -> dict[str, Any]:
    vip = draw(st.sampled_from(V4_VIPS + V6_VIPS))
    pool = V6_BACKENDS if ":" in vip else V4_BACKENDS
    forwarding = draw(st.sampled_from(["masq", "masq", "route"]))
    ports = draw(
        st.lists(st.tuples(st.sampled_from([53, 80, 443]), st.sampled_from(["TCP", "UDP"])), min_size=1, max_size=3, unique=True)
    )
    port_specs = []
    for port, protocol in ports:
        spec: dict[str, Any] = {"port": port, "protocol": protocol}
        if forwarding == "masq" and draw(st.booleans()):
            spec["targetPort"] = draw(st.sampled_from([8080, 8443]))
        port_specs.append(spec)
    backends = [
        {"address": address, "weight": draw(st.integers(0, 3))}
        for address in draw(st.lists(st.sampled_from(pool), min_size=1, max_size=len(pool), unique=True))
    ]
    mode = draw(st.sampled_from(["ipvs", "ipvs", "keepalived"]))
    announce = {"announce": "bgp"} if mode == "ipvs" and draw(st.booleans()) else {}
    return {
        "apiVersion": "vsop.dev/v1alpha1",
        "kind": "VirtualService",
        "metadata": {"name": f"vs{index}", "namespace": draw(st.sampled_from(["a", "b"]))},
        "spec": {
            **announce,
            "vip": vip,
            "ports": port_specs,
            "scheduler": draw(st.sampled_from(["rr", "wlc", "sh"])),
            "forwarding": forwarding,
            "masquerade": draw(st.booleans()),
            "persistence": {"timeoutSeconds": draw(st.sampled_from([0, 60]))},
            "backends": backends,
            "mode": mode,
        },
    }


@st.composite
def services(draw: Any) -> list[Any]:
    count = draw(st.integers(0, 4))
    return [parse_virtual_service(draw(virtual_service(i))) for i in range(count)]


def foreign_state() -> KernelState:
    svc = VirtualServer(ServiceKey("tcp", "10.96.0.10", 53), "rr")
    rs = RealServer(RealServerKey(svc.key, "10.244.0.5", 53), "masq", 1)
    return KernelState(
        services={svc.key: svc},
        real_servers={rs.key: rs},
        ipsets={"KUBE-LOOP-BACK": IPSet("KUBE-LOOP-BACK", "hash:ip,port,ip", 4, {"10.244.0.5,tcp:53,10.244.0.5": ""})},
        chains={},
        jumps=frozenset({Jump(4, "nat", "PREROUTING", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES')}),
        sysctls={"net.ipv4.vs.conntrack": "0", "net.ipv4.ip_forward": "1"},
        node_addresses=frozenset({"10.0.0.5", "127.0.0.1"}),
    )


def drift(state: KernelState, data: Any) -> KernelState:
    """Changes a person could make by hand to vsop's objects."""
    mine = owned(state, NAMES)
    if mine.real_servers and data.draw(st.booleans(), label="drop a real server"):
        key = data.draw(st.sampled_from(sorted(mine.real_servers)))
        state = replace(state, real_servers={k: v for k, v in state.real_servers.items() if k != key})
    if state.real_servers.keys() & mine.real_servers.keys() and data.draw(st.booleans(), label="change a weight"):
        key = data.draw(st.sampled_from(sorted(state.real_servers.keys() & mine.real_servers.keys())))
        state = replace(state, real_servers={**state.real_servers, key: replace(state.real_servers[key], weight=9)})
    if mine.chains and data.draw(st.booleans(), label="flush a chain"):
        key = data.draw(st.sampled_from(sorted(mine.chains)))
        state = replace(state, chains={**state.chains, key: ()})
    if mine.ipsets and data.draw(st.booleans(), label="empty a set"):
        name = data.draw(st.sampled_from(sorted(mine.ipsets)))
        state = replace(state, ipsets={**state.ipsets, name: replace(state.ipsets[name], members={})})
    if mine.routes and data.draw(st.booleans(), label="delete a route"):
        route = data.draw(st.sampled_from(sorted(mine.routes)))
        state = replace(state, routes=state.routes - {route})
    return state


def comparable(state: KernelState, delegated: frozenset = frozenset()) -> KernelState:
    """vsop's part of a state, as a kernel holds it: no owners on services (those live in set comments).

    Services delegated to keepalived (mode: keepalived) are not vsop's to compare.
    """
    mine = owned(state, NAMES, delegated)
    services = {k: replace(v, owner="") for k, v in mine.services.items()}
    return replace(mine, services=services, sysctls={}, node_addresses=frozenset(), delegated=frozenset())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=services(), after=services(), data=st.data())
def test_plan_reaches_desired_exactly_and_touches_nothing_foreign(before: list[Any], after: list[Any], data: Any) -> None:
    node = Node("n")
    foreign = foreign_state()
    first = desired_state(before, node).state
    start = apply_ops(foreign, plan(first, foreign).ops, delegated=first.delegated)
    start = drift(start, data)

    desired = desired_state(after, node).state
    result = plan(desired, start)
    end = apply_ops(start, result.ops, delegated=desired.delegated)  # raises if any operation is out of order

    assert comparable(end, desired.delegated) == comparable(desired, desired.delegated)
    assert all(end.sysctls[k] == v for k, v in desired.sysctls.items())
    assert plan(desired, end).ops == ()
    for key, service in foreign.services.items():
        assert end.services[key] == service
    for key, real_server in foreign.real_servers.items():
        assert end.real_servers[key] == real_server
    assert end.ipsets["KUBE-LOOP-BACK"] == foreign.ipsets["KUBE-LOOP-BACK"]
    assert foreign.jumps <= end.jumps

    cleaned = apply_ops(end, plan(KernelState(), end).ops)
    assert comparable(cleaned) == KernelState()
    assert {k: v for k, v in cleaned.services.items()} == foreign.services
    assert cleaned.ipsets == foreign.ipsets and cleaned.jumps == foreign.jumps
