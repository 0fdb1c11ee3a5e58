"""Diff and plan: the order, the in-place edits, idempotence and ownership."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.conftest import make_vs
from vsop.core import ops
from vsop.core.desired import Node, desired_state
from vsop.core.memory import KernelRefused, apply_ops
from vsop.core.plan import PlanError, plan
from vsop.core.state import IPSet, Jump, KernelState, LinkState, RealServer, RealServerKey, ServiceKey, VirtualServer

NODE = Node("n")
WEB = ServiceKey("tcp", "169.254.11.2", 80)
FOREIGN_SVC = VirtualServer(ServiceKey("tcp", "10.96.0.1", 443), "rr")
FOREIGN = KernelState(
    services={FOREIGN_SVC.key: FOREIGN_SVC},
    real_servers={RealServerKey(FOREIGN_SVC.key, "10.0.0.9", 6443): RealServer(RealServerKey(FOREIGN_SVC.key, "10.0.0.9", 6443))},
    ipsets={"KUBE-CLUSTER-IP": IPSet("KUBE-CLUSTER-IP", "hash:ip,port", 4, {"10.96.0.1,tcp:443": ""})},
    jumps=frozenset({Jump(4, "nat", "PREROUTING", "-j KUBE-SERVICES")}),
    sysctls={"net.ipv4.vs.conntrack": "0"},
    node_addresses=frozenset({"10.0.0.5"}),
)


def converge(services, observed=KernelState()):
    desired = desired_state(services, NODE).state
    result = plan(desired, observed)
    return desired, result, apply_ops(observed, result.ops)


def kinds(result) -> list[str]:
    return [op.kind for op in result.ops]


def test_from_empty_orders_filter_before_vip_and_vip_before_service() -> None:
    _, result, _ = converge([make_vs()])
    order = kinds(result)
    assert order.index("ipset.add") < order.index("chain.write") < order.index("jump.add") < order.index("link.create")
    assert order.index("link.create") < order.index("address.add") < order.index("service.add") < order.index("realserver.add")


def test_second_plan_is_empty() -> None:
    desired, _, after = converge([make_vs()])
    assert plan(desired, after).ops == ()


def test_scheduler_and_weight_changes_edit_in_place() -> None:
    _, _, before = converge([make_vs()])
    changed = make_vs(scheduler="wlc", persistence={"timeoutSeconds": 60}, backends=[{"address": "192.168.2.111", "weight": 5}, {"address": "192.168.2.222"}])
    desired = desired_state([changed], NODE).state
    result = plan(desired, before)
    assert kinds(result) == ["service.edit", "realserver.edit"]
    assert apply_ops(before, result.ops) == desired


def test_forwarding_change_edits_real_servers_in_place() -> None:
    _, _, before = converge([make_vs(ports=[{"port": 80}])])
    desired = desired_state([make_vs(forwarding="route", ports=[{"port": 80}])], NODE).state
    result = plan(desired, before)
    assert set(kinds(result)) == {"realserver.edit", "ipset.add"}  # route joins the no-masquerade set


def test_new_real_servers_are_added_before_old_ones_leave() -> None:
    _, _, before = converge([make_vs()])
    desired = desired_state([make_vs(backends=[{"address": "192.168.2.150"}])], NODE).state
    result = plan(desired, before)
    assert kinds(result) == ["realserver.add", "realserver.delete", "realserver.delete"]


def test_removal_deletes_service_before_its_address_and_chains_before_sets() -> None:
    _, _, before = converge([make_vs(), make_vs("two", vip="169.254.11.3")])
    desired = desired_state([make_vs("two", vip="169.254.11.3")], NODE).state
    result = plan(desired, before)
    # the VIP:port stops being accepted, then its service goes, then its address, then the VIP's member
    assert [type(op) for op in result.ops] == [ops.DeleteAcceptMember, ops.DeleteService, ops.DeleteAddress, ops.DeleteSetMember]
    assert [op.set_name for op in result.ops if isinstance(op, ops.DeleteSetMember)] == ["VSOP-VIP-PORTS", "VSOP-VIPS"]
    cleanup = plan(KernelState(), apply_ops(before, result.ops))
    order = kinds(cleanup)
    assert order.index("ipset.del") < order.index("service.delete")  # the set itself is destroyed last
    assert order.index("service.delete") < order.index("link.delete") < order.index("jump.delete") < order.index("chain.delete") < order.index("ipset.destroy")
    assert "address.delete" not in order  # deleting the link takes its address with it


def test_a_vip_port_is_accepted_only_once_its_service_exists() -> None:
    desired = desired_state([make_vs()], NODE).state
    result = plan(desired, KernelState())
    types = [type(op) for op in result.ops]
    assert types.index(ops.AddService) < types.index(ops.AddRealServer) < types.index(ops.AddAcceptMember)
    # the VIP itself (VSOP-VIPS: rejected unless accepted) is a member before it is bound
    assert types.index(ops.AddSetMember) < types.index(ops.AddAddress)
    accept = next(op for op in result.ops if isinstance(op, ops.AddAcceptMember))
    assert (accept.set_name, accept.member) == ("VSOP-VIP-PORTS", "169.254.11.2,tcp:80")


def test_the_in_memory_kernel_refuses_a_port_accepted_without_its_service() -> None:
    desired = desired_state([make_vs()], NODE).state
    result = plan(desired, KernelState())
    early = sorted(result.ops, key=lambda op: not isinstance(op, (ops.CreateSet, ops.AddSetMember)))  # members first, as before
    with pytest.raises(KernelRefused, match="accepted by the filter before its IPVS service exists"):
        apply_ops(KernelState(), early)
    programmed = apply_ops(KernelState(), result.ops)
    with pytest.raises(KernelRefused, match="deleted while the filter still accepts it"):
        apply_ops(programmed, [ops.DeleteService(WEB)])


def test_foreign_objects_are_never_in_a_plan() -> None:
    desired, result, after = converge([make_vs()], FOREIGN)
    touched = {getattr(op, "key", None) for op in result.ops} | {getattr(getattr(op, "service", None), "key", None) for op in result.ops}
    assert FOREIGN_SVC.key not in touched
    assert after.services[FOREIGN_SVC.key] == FOREIGN_SVC and "KUBE-CLUSTER-IP" in after.ipsets
    cleaned = apply_ops(after, plan(KernelState(), after).ops)
    assert cleaned.services == FOREIGN.services and cleaned.real_servers == FOREIGN.real_servers
    assert cleaned.ipsets == FOREIGN.ipsets and cleaned.jumps == FOREIGN.jumps and cleaned.link is None


def test_vip_with_foreign_ipvs_service_is_left_alone() -> None:
    squatter = VirtualServer(WEB, "wrr")
    observed = KernelState(services={WEB: squatter})
    desired = desired_state([make_vs()], NODE).state
    result = plan(desired, observed)
    assert not any(isinstance(op, (ops.AddAddress, ops.AddService, ops.EditService)) for op in result.ops)
    assert result.problems[0].reason == "VIPInUse"


def test_link_down_is_brought_up() -> None:
    _, _, before = converge([make_vs()])
    result = plan(desired_state([make_vs()], NODE).state, replace(before, link=LinkState("vsop0", up=False)))
    assert kinds(result) == ["link.up"]


def test_drifted_chain_is_rewritten_whole() -> None:
    desired, _, before = converge([make_vs()])
    key = next(k for k in before.chains if k.chain == "VSOP-SERVICES")
    drifted = replace(before, chains={**before.chains, key: ("-j ACCEPT",)})
    result = plan(desired, drifted)
    assert result.ops == (ops.WriteChain(key, desired.chains[key], exists=True),)


def test_set_of_the_wrong_type_is_an_error_not_a_silent_fix() -> None:
    desired, _, before = converge([make_vs()])
    broken = replace(before, ipsets={**before.ipsets, "VSOP-VIPS": IPSet("VSOP-VIPS", "hash:net", 4, {})})
    with pytest.raises(PlanError, match="VSOP-VIPS exists as hash:net"):
        plan(desired, broken)


def test_sysctl_written_only_when_different() -> None:
    desired, result, after = converge([make_vs()], FOREIGN)
    assert [op for op in result.ops if isinstance(op, ops.SetSysctl) and op.name == "net.ipv4.vs.conntrack"][0].previous == "0"
    assert not [op for op in plan(desired, after).ops if isinstance(op, ops.SetSysctl)]


def test_owner_change_updates_set_comment_in_place() -> None:
    _, _, before = converge([make_vs()])
    desired = desired_state([make_vs("renamed")], NODE).state
    result = plan(desired, before)
    assert {op.kind for op in result.ops} == {"ipset.add"} and all(op.replace for op in result.ops)  # type: ignore[attr-defined]


def test_set_without_the_comment_extension_is_an_error() -> None:
    desired, _, before = converge([make_vs()])
    old = before.ipsets["VSOP-VIPS"]
    broken = replace(before, ipsets={**before.ipsets, "VSOP-VIPS": replace(old, comments=False)})
    with pytest.raises(PlanError, match="without comments"):
        plan(desired, broken)


def test_keepalived_s_ipvs_services_on_a_bound_vip_are_left_alone() -> None:
    vs = make_vs(mode="keepalived")
    desired = desired_state([vs], NODE).state
    programmed = apply_ops(KernelState(), plan(desired, KernelState()).ops, delegated=desired.delegated)
    # keepalived programs the service and its real servers on the VIP vsop bound
    ka = VirtualServer(WEB, "wrr")
    rs = RealServer(RealServerKey(WEB, "192.168.2.111", 8080), "masq", 1)
    observed = replace(programmed, services={WEB: ka}, real_servers={rs.key: rs})
    assert WEB in desired.delegated
    assert plan(desired, observed).ops == ()
