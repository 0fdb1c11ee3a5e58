"""The real SysctlKernel: the shared contract, plus /proc/sys details a fake has no reason to copy."""

from __future__ import annotations

import pytest

from tests.contracts.sysctl_contract import SysctlContract
from vsop.adapters.base import OperationFailed
from vsop.adapters.sysctl import SysctlKernel
from vsop.core import ops

PORT_RANGE = "net.ipv4.ip_local_port_range"


class TestSysctlKernel(SysctlContract):
    pass


def test_a_multi_value_setting_reads_with_single_spaces(sysctl_adapter: SysctlKernel):
    with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
        assert "\t" in file.read()  # what makes the normalisation necessary
    low, high = sysctl_adapter.read([PORT_RANGE])[PORT_RANGE].split(" ")
    assert sysctl_adapter.apply([ops.SetSysctl(PORT_RANGE, f"{low} {high}")]) == 0
    assert sysctl_adapter.apply([ops.SetSysctl(PORT_RANGE, "40000 50000")]) == 1
    assert sysctl_adapter.read([PORT_RANGE]) == {PORT_RANGE: "40000 50000"}


def test_a_name_may_be_spelled_as_a_path(sysctl_adapter: SysctlKernel):
    sysctl_adapter.apply([ops.SetSysctl("net/ipv4/ip_forward", "1")])
    assert sysctl_adapter.read(["net.ipv4.ip_forward", "net/ipv4/ip_forward"]) == {
        "net.ipv4.ip_forward": "1",
        "net/ipv4/ip_forward": "1",
    }


def test_a_name_cannot_leave_proc_sys(sysctl_adapter: SysctlKernel):
    assert sysctl_adapter.read(["net/../../self/status"]) == {}


def test_a_value_the_kernel_refuses_fails_naming_it(sysctl_adapter: SysctlKernel):
    refused = ops.SetSysctl("net.ipv4.ip_forward", "not-a-number")
    with pytest.raises(OperationFailed) as failed:
        sysctl_adapter.apply([refused])
    assert failed.value.op == refused
    assert "refused" in failed.value.reason


def test_a_missing_setting_says_so(sysctl_adapter: SysctlKernel):
    with pytest.raises(OperationFailed) as failed:
        sysctl_adapter.apply([ops.SetSysctl("net.ipv4.vsop_no_such_setting", "1")])
    assert "no such setting" in failed.value.reason
