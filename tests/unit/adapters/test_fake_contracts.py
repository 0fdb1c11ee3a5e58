"""The in-memory fakes pass the same contract tests as the real adapters."""

from __future__ import annotations

import pytest

from tests.contracts.ipset_contract import IPSetContract
from tests.contracts.iptables_contract import IPTablesContract
from tests.contracts.ipvs_contract import IPVSContract
from tests.contracts.links_contract import LinkContract
from tests.contracts.routes_contract import RouteContract
from tests.contracts.sysctl_contract import SysctlContract
from vsop.adapters.fake import FakeIPSets, FakeIPTables, FakeIPVS, FakeKernel, FakeLinks, FakeRoutes, FakeSysctls
from vsop.core.state import KernelState


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
