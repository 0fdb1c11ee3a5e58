"""The in-memory fakes pass the same contract tests as the real adapters."""

from __future__ import annotations

import pytest

from tests.contracts.ipset_contract import IPSetContract
from tests.contracts.iptables_contract import IPTablesContract
from tests.contracts.ipvs_contract import WEB, IPVSContract, real, service
from tests.contracts.links_contract import LinkContract
from tests.contracts.routes_contract import RouteContract
from tests.contracts.sysctl_contract import SysctlContract
from vsop.adapters.fake import FakeIPSets, FakeIPTables, FakeIPVS, FakeKernel, FakeLinks, FakeRoutes, FakeSysctls
from vsop.core import ops
from vsop.core.state import KernelState, Traffic


@pytest.fixture
def fake() -> FakeKernel:
    # Every namespace has the forwarding settings; the iptables contract's rules name sets, so one kernel is shared.
    return FakeKernel(KernelState(sysctls={"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0", "net.ipv6.conf.lo.accept_ra": "1"}))


@pytest.fixture
def ipset_adapter(fake: FakeKernel) -> FakeIPSets:
    return FakeIPSets(fake)


@pytest.fixture
def iptables_adapter(fake: FakeKernel) -> FakeIPTables:
    return FakeIPTables(fake)


class FakeBuiltinChains:
    """The fake kernel's built-in chains, for the contract's jump-position cases."""

    def __init__(self, kernel: FakeKernel):
        self.kernel = kernel

    def rules(self, family: int, table: str, chain: str) -> list[str]:
        return list(self.kernel.builtin.get((family, table, chain), []))

    def append(self, family: int, table: str, chain: str, rule: str) -> None:
        self.kernel.builtin.setdefault((family, table, chain), []).append(rule)


@pytest.fixture
def builtin_chain(fake: FakeKernel) -> FakeBuiltinChains:
    return FakeBuiltinChains(fake)


@pytest.fixture
def sysctl_adapter(fake: FakeKernel) -> FakeSysctls:
    return FakeSysctls(fake)


class TestFakeIPSets(IPSetContract):
    pass


class TestFakeIPTables(IPTablesContract):
    pass


class TestFakeSysctls(SysctlContract):
    pass


@pytest.fixture
def ipvs_adapter(fake: FakeKernel) -> FakeIPVS:
    fake.ipv4_networks = ("10.77.0.0/16",)  # the contract's node: 10.77.0.0/16 routable
    return FakeIPVS(fake)


@pytest.fixture
def link_adapter(fake: FakeKernel) -> FakeLinks:
    return FakeLinks(fake)


class TestFakeIPVS(IPVSContract):
    pass


class TestFakeLinks(LinkContract):
    pass


@pytest.fixture
def route_adapter(fake: FakeKernel) -> FakeRoutes:
    return FakeRoutes(fake)


class TestFakeRoutes(RouteContract):
    pass


def test_a_node_without_ipv4_addresses_takes_no_ipv4_backend() -> None:
    """No IPv4 address, no local table: inet_addr_type() is never unicast (tests/vm: the real kernel)."""
    from tests.contracts.ipvs_contract import WEB, WEB6, real, service
    from vsop.adapters.base import OperationFailed
    from vsop.core import ops

    bare = FakeIPVS(FakeKernel(ipv4_networks=()))
    bare.apply([ops.AddService(service(WEB)), ops.AddService(service(WEB6))])
    with pytest.raises(OperationFailed) as failure:
        bare.apply([ops.AddRealServer(real(WEB, "10.77.0.1", 80))])
    assert failure.value.reason == "backend 10.77.0.1 is not routable from this node"
    assert bare.apply([ops.AddRealServer(real(WEB6, "fd00:77::1", 80))]) == 1  # IPv6 needs no route


def test_the_fake_counts_the_traffic_it_is_told_of_until_its_real_server_goes(fake: FakeKernel) -> None:
    ipvs = FakeIPVS(fake)
    web = real(WEB, "10.77.0.1")
    ipvs.apply([ops.AddService(service(WEB)), ops.AddRealServer(web)])
    fake.send(web.key, connections=2, out_packets=0)
    fake.send(web.key, connections=1, in_packets=4, out_packets=3)
    assert ipvs.traffic([WEB]) == {web.key: Traffic(connections=3, in_packets=6, out_packets=3)}
    ipvs.apply([ops.DeleteRealServer(web.key), ops.AddRealServer(web)])  # added again: counted from zero, as IPVS does
    assert ipvs.traffic([WEB]) == {web.key: Traffic()}
    fake.send(web.key)
    ipvs.apply([ops.DeleteService(WEB)])
    assert fake.traffic == {}
