"""What every SysctlAdapter does, asserted through its read(): the real one and the fake alike.

The `sysctl_adapter` fixture is an adapter over a kernel that has
net.ipv4.ip_forward and net.ipv6.conf.all.forwarding (every network namespace does),
each "0" or "1", and no net.ipv4.vsop_no_such_setting; its IPv6 interfaces
include `lo` (every network namespace has it) with net.ipv6.conf.lo.accept_ra.
Must not import: kopf, kubernetes, jinja2, or any real adapter.
"""

from __future__ import annotations

import pytest

from vsop.adapters.base import OperationFailed
from vsop.core import ops

FORWARDING = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}
MISSING = "net.ipv4.vsop_no_such_setting"


class SysctlContract:
    """Needs fixture `sysctl_adapter`."""

    @pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
    def family(self, request: pytest.FixtureRequest) -> int:
        return request.param

    def test_lists_ipv6_interfaces_without_all_and_default(self, sysctl_adapter):
        interfaces = sysctl_adapter.ipv6_interfaces()
        assert "lo" in interfaces and "all" not in interfaces and "default" not in interfaces
        assert sysctl_adapter.read(["net.ipv6.conf.lo.accept_ra"]).keys() == {"net.ipv6.conf.lo.accept_ra"}

    def test_reads_a_setting(self, sysctl_adapter, family):
        assert sysctl_adapter.read([FORWARDING[family]])[FORWARDING[family]] in ("0", "1")

    def test_leaves_a_missing_setting_out(self, sysctl_adapter):
        assert sysctl_adapter.read([MISSING, FORWARDING[4]]).keys() == {FORWARDING[4]}

    def test_writes_a_setting(self, sysctl_adapter, family):
        name = FORWARDING[family]
        for value in ("1", "0", "1"):
            assert sysctl_adapter.apply([ops.SetSysctl(name, value)]) == 1
            assert sysctl_adapter.read([name]) == {name: value}

    def test_writing_the_current_value_writes_nothing(self, sysctl_adapter, family):
        name = FORWARDING[family]
        current = sysctl_adapter.read([name])[name]
        assert sysctl_adapter.apply([ops.SetSysctl(name, current, previous=current)]) == 0
        assert sysctl_adapter.read([name]) == {name: current}

    def test_writing_a_missing_setting_fails_naming_it(self, sysctl_adapter):
        sysctl_adapter.apply([ops.SetSysctl(FORWARDING[4], "0"), ops.SetSysctl(FORWARDING[6], "0")])
        missing = ops.SetSysctl(MISSING, "1")
        with pytest.raises(OperationFailed) as failed:
            sysctl_adapter.apply([ops.SetSysctl(FORWARDING[4], "1"), missing, ops.SetSysctl(FORWARDING[6], "1")])
        assert failed.value.op == missing
        assert failed.value.reason == "this kernel has no such setting (is the module that provides it loaded?)"
        assert sysctl_adapter.read([FORWARDING[4], FORWARDING[6], MISSING]) == {FORWARDING[4]: "1", FORWARDING[6]: "0"}

    @pytest.mark.parametrize("value", ["yes", "1x"], ids=["word", "trailing-junk"])
    def test_a_value_that_is_not_a_number_is_refused_naming_it(self, sysctl_adapter, family, value):
        name = FORWARDING[family]
        sysctl_adapter.apply([ops.SetSysctl(name, "0")])
        refused = ops.SetSysctl(name, value)
        with pytest.raises(OperationFailed) as failed:
            sysctl_adapter.apply([ops.SetSysctl(FORWARDING[4], "1"), refused])
        assert failed.value.op == refused
        assert failed.value.reason == "the kernel refused the value"
        assert sysctl_adapter.read([name]) == {name: "1" if family == 4 else "0"}
