"""The engine on fake adapters: a sync converges, a second one writes nothing, failures stop and heal."""

from __future__ import annotations

import pytest

from tests.conftest import make_vs
from vsop.core import ops
from vsop.core.desired import Node
from vsop.core.state import KernelState, RealServer, RealServerKey, ServiceKey, VirtualServer
from vsop.engine import ExecutionFailed, cleanup, fake_kernel, runs, sync
from vsop.errors import KernelUnsupported

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
    assert [type(adapter).__name__ for adapter, _ in batches] == ["FakeSysctls", "FakeIPSets", "FakeIPTables", "FakeLinks", "FakeIPVS"]
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
    fake.refuse = lambda op: None
    healed = sync(kernel, [make_vs()], NODE)
    assert [op.kind for op in healed.plan.ops] == ["realserver.add"]
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
