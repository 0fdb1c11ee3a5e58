"""The engine on fake adapters: a sync converges, a second one writes nothing, failures stop and heal."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.conftest import make_vs
from vsop.core import ops
from vsop.core.desired import Node
from vsop.core.state import KernelState, Names, RealServer, RealServerKey, ServiceKey, VirtualServer
from vsop.adapters.kernel import fake_kernel
from vsop.node.execute import ExecutionFailed, runs
from vsop.node.whole import cleanup, sync
from vsop.api.errors import KernelUnsupported

NODE = Node("n")
FOREIGN = VirtualServer(ServiceKey("udp", "10.96.0.10", 53), "rr")


def test_sync_then_resync_writes_nothing() -> None:
    kernel, fake = fake_kernel(KernelState(services={FOREIGN.key: FOREIGN}))
    first = sync(kernel, [make_vs()], NODE)
    assert first.writes == len(first.plan.ops) == fake.writes > 0
    second = sync(kernel, [make_vs()], NODE)
    assert second.plan.ops == () and second.writes == 0 and fake.writes == first.writes
    assert fake.state.services[FOREIGN.key] == FOREIGN


def test_runs_batch_consecutive_operations_per_adapter() -> None:
    kernel, _ = fake_kernel()
    result = sync(kernel, [make_vs(), make_vs("b", vip="169.254.11.3")], NODE, dry_run=True)
    batches = runs(result.plan.ops, kernel)
    # the VIP ports are accepted in a second ipset run, once their services exist
    assert [type(adapter).__name__ for adapter, _ in batches] == ["FakeSysctls", "FakeIPSets", "FakeIPTables", "FakeLinks", "FakeIPVS", "FakeIPSets"]
    assert sum(len(run) for _, run in batches) == len(result.plan.ops)


def test_failure_stops_at_the_operation_and_next_sync_converges() -> None:
    kernel, fake = fake_kernel()
    fake.refuse = lambda op: "backend 192.168.2.222 is not routable from this node" if (
        isinstance(op, ops.AddRealServer) and op.real_server.key.address == "192.168.2.222"
    ) else None
    with pytest.raises(ExecutionFailed) as caught:
        sync(kernel, [make_vs()], NODE)
    assert caught.value.op.kind == "realserver.add" and "not routable" in str(caught.value)
    assert "192.168.2.222" in str(caught.value)
    assert len(fake.state.real_servers) == 1  # the one before it was applied, nothing after it
    assert fake.state.ipsets["VSOP-VIP-PORTS"].members == {}  # nor the filter's accept: the VIP stays rejected
    assert "169.254.11.2" in fake.state.ipsets["VSOP-VIPS"].members
    fake.refuse = lambda op: None
    healed = sync(kernel, [make_vs()], NODE)
    assert [type(op) for op in healed.plan.ops] == [ops.AddRealServer, ops.AddAcceptMember]
    assert sync(kernel, [make_vs()], NODE).writes == 0


def test_kernel_without_ipvs_is_refused_before_any_write() -> None:
    kernel, fake = fake_kernel()
    fake.has_ipvs = False
    with pytest.raises(KernelUnsupported, match="this kernel has no IPVS: load ip_vs or use mode: keepalived"):
        sync(kernel, [make_vs()], NODE)
    assert fake.writes == 0
    # keepalived mode needs no IPVS from vsop
    assert sync(kernel, [make_vs(mode="keepalived")], NODE).writes > 0


def test_kernel_without_dummy_links_is_refused_before_any_write() -> None:
    kernel, fake = fake_kernel()
    fake.has_dummy = False
    with pytest.raises(KernelUnsupported, match="dummy"):
        sync(kernel, [make_vs()], NODE)
    assert fake.writes == 0


def test_cleanup_removes_everything_of_vsop_and_nothing_else() -> None:
    rs = RealServer(RealServerKey(FOREIGN.key, "10.244.0.3", 53))
    kernel, fake = fake_kernel(KernelState(services={FOREIGN.key: FOREIGN}, real_servers={rs.key: rs}))
    sync(kernel, [make_vs(), make_vs("v6", vip="fd00::5", backends=[{"address": "fd00::9"}])], NODE)
    result = cleanup(kernel)
    assert result.writes > 0
    state = fake.state
    assert state.link is None and not state.ipsets and not state.chains and not state.jumps
    assert state.services == {FOREIGN.key: FOREIGN} and state.real_servers == {rs.key: rs}
    assert cleanup(kernel).writes == 0


def test_removed_object_is_removed_from_the_kernel() -> None:
    kernel, fake = fake_kernel()
    sync(kernel, [make_vs(), make_vs("b", vip="169.254.11.3")], NODE)
    sync(kernel, [make_vs("b", vip="169.254.11.3")], NODE)
    assert {k.vip for k in fake.state.services} == {"169.254.11.3"}
    assert fake.state.addresses == {"169.254.11.3/32"}


# --- UDP conntrack: every removed UDP real server, by any path ------------------------------

DNS_PORTS = [{"name": "dns", "port": 53, "protocol": "UDP"}]
ONE = [{"address": "192.168.2.111"}]
TWO = [{"address": "192.168.2.111"}, {"address": "192.168.2.222"}]


def udp_vs(name: str = "dns", backends: list[dict[str, object]] = TWO, **spec: object):
    return make_vs(name, vip="169.254.11.53", ports=DNS_PORTS, backends=backends, **spec)


def test_a_removed_udp_real_server_is_forgotten_by_the_engine() -> None:
    kernel, _ = fake_kernel()
    sync(kernel, [udp_vs(), make_vs()], NODE)
    assert kernel.conntrack.forgotten == []
    result = sync(kernel, [udp_vs(backends=ONE), make_vs(backends=ONE)], NODE)  # the TCP one is not forgotten
    assert kernel.conntrack.forgotten == [("169.254.11.53", 53, "192.168.2.222", 53)]
    assert result.conntrack_failures == []


def test_a_whole_udp_service_going_away_forgets_each_of_its_real_servers() -> None:
    kernel, _ = fake_kernel()
    sync(kernel, [udp_vs(), make_vs()], NODE)
    sync(kernel, [make_vs()], NODE)
    assert sorted(kernel.conntrack.forgotten) == [("169.254.11.53", 53, "192.168.2.111", 53), ("169.254.11.53", 53, "192.168.2.222", 53)]


def test_replaced_on_the_same_vip_port_forgets_the_old_real_servers_only() -> None:
    kernel, _ = fake_kernel()
    sync(kernel, [udp_vs()], NODE)
    sync(kernel, [udp_vs("dns2", backends=[{"address": "192.168.2.33"}])], NODE)
    assert sorted(kernel.conntrack.forgotten) == [("169.254.11.53", 53, "192.168.2.111", 53), ("169.254.11.53", 53, "192.168.2.222", 53)]


def test_cleanup_forgets_udp_real_servers_too() -> None:
    kernel, _ = fake_kernel()
    sync(kernel, [udp_vs(backends=ONE)], NODE)
    cleanup(kernel)
    assert kernel.conntrack.forgotten == [("169.254.11.53", 53, "192.168.2.111", 53)]


def test_execute_without_the_observed_state_reads_ipvs_for_a_deleted_service() -> None:
    from vsop.core.plan import plan
    from vsop.adapters.kernel import read_observed
    from vsop.node.execute import execute

    kernel, _ = fake_kernel()
    sync(kernel, [udp_vs(backends=ONE)], NODE)
    the_plan = plan(KernelState(), read_observed(kernel, Names()), Names())
    execute(kernel, the_plan, Names())  # a caller that has no observed state at hand
    assert kernel.conntrack.forgotten == [("169.254.11.53", 53, "192.168.2.111", 53)]


def test_a_conntrack_failure_is_reported_and_the_sync_still_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    kernel, fake = fake_kernel()
    sync(kernel, [udp_vs()], NODE)
    kernel.conntrack.refuse = lambda entry: "the conntrack tool (conntrack-tools) is not installed"
    result = sync(kernel, [udp_vs(backends=ONE)], NODE)
    assert result.conntrack_failures == ["UDP 169.254.11.53:53 -> 192.168.2.222:53: the conntrack tool (conntrack-tools) is not installed"]
    assert len(fake.state.real_servers) == 1
    assert "forgetting UDP conntrack entries failed" in caplog.text and "192.168.2.222:53" in caplog.text


def test_a_failed_run_still_forgets_what_it_removed() -> None:
    kernel, fake = fake_kernel()
    sync(kernel, [udp_vs()], NODE)
    fake.refuse = lambda op: "refused" if isinstance(op, ops.DeleteAddress) else None
    with pytest.raises(ExecutionFailed):
        sync(kernel, [make_vs()], NODE)  # the UDP service goes, then unbinding its VIP fails
    assert len(kernel.conntrack.forgotten) == 2


# --- drift: what a full sync puts back is a repair, what the desired state changed is not ---


def test_drift_repairs_are_found_logged_and_described(caplog: pytest.LogCaptureFixture) -> None:
    kernel, fake = fake_kernel()
    first = sync(kernel, [make_vs()], NODE)
    assert first.repairs == []  # no expectation yet: nothing counts as drift
    # By hand: a weight changed, a real server deleted, a VIP set member removed, a sysctl reset.
    rs = next(k for k in fake.state.real_servers if k.address == "192.168.2.111")
    gone = next(k for k in fake.state.real_servers if k.address == "192.168.2.222")
    members = dict(fake.state.ipsets["VSOP-VIP-PORTS"].members)
    members.pop("169.254.11.2,tcp:80")
    fake.state = replace(
        fake.state,
        real_servers={rs: replace(fake.state.real_servers[rs], weight=5)},
        ipsets={**fake.state.ipsets, "VSOP-VIP-PORTS": replace(fake.state.ipsets["VSOP-VIP-PORTS"], members=members)},
        sysctls={**fake.state.sysctls, "net.ipv4.vs.conntrack": "0"},
    )
    second = sync(kernel, [make_vs()], NODE, expected=first.desired.state)
    described = sorted(r.describe() for r in second.repairs)
    assert len(described) == 4
    assert any("192.168.2.111:8080 masq weight 1 (was masq weight 5): found masq weight 5, put back masq weight 1" in d for d in described)
    assert any(d.startswith("realserver.add") and "found nothing" in d for d in described)
    assert any(d.startswith("ipset.add") for d in described) and any(d.startswith("sysctl.set sysctl net.ipv4.vs.conntrack=1") for d in described)
    assert {r.obj for r in second.repairs} == {"default/web", ""}
    assert "repaired drift" in caplog.text and "weight 5" in caplog.text
    assert sync(kernel, [make_vs()], NODE, expected=second.desired.state).repairs == []


def test_a_change_of_the_desired_state_is_not_drift() -> None:
    kernel, fake = fake_kernel()
    first = sync(kernel, [make_vs()], NODE)
    changed = sync(kernel, [make_vs(backends=[{"address": "192.168.2.111", "weight": 3}])], NODE, expected=first.desired.state)
    assert changed.applied and changed.repairs == []
    # A real server added by hand to vsop's service is drift too (vsop never wanted it).
    extra = RealServerKey(ServiceKey("tcp", "169.254.11.2", 80), "192.168.2.99", 8080)
    fake.state = replace(fake.state, real_servers={**fake.state.real_servers, extra: RealServer(extra)})
    again = sync(kernel, [make_vs(backends=[{"address": "192.168.2.111", "weight": 3}])], NODE, expected=changed.desired.state)
    assert [r.describe() for r in again.repairs] == ["realserver.delete TCP 169.254.11.2:80 -> 192.168.2.99:8080: found masq weight 1, put back nothing"]


FAILPOINT_SYNC = """
from tests.conftest import make_vs
from vsop.core.desired import Node
from vsop.adapters.kernel import fake_kernel
from vsop.node.whole import sync
kernel, fake = fake_kernel()
sync(kernel, [make_vs()], Node("n"))
print(sorted(fake.state.addresses), sorted(fake.state.services))
"""


@pytest.mark.parametrize("failpoint", ["", "after-address:kill"])
def test_the_failpoint_kills_between_the_address_and_the_service_only_when_named(failpoint: str) -> None:
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "VSOP_FAILPOINT": failpoint, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", FAILPOINT_SYNC], capture_output=True, text=True, env=env, timeout=60,
                          cwd=Path(__file__).parents[3])
    if failpoint:
        assert done.returncode == -signal.SIGKILL and done.stdout == ""
        assert "failpoint reached" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert "169.254.11.2/32" in done.stdout and "ServiceKey" in done.stdout
