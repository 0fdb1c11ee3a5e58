"""A fake that accepts what the kernel refuses fails the contract tests (and so `make test`).

Each case turns one of the fakes' kernel refusals off and runs the contract test that
stands for it: the test must fail. Without these, a contract case that could not fail
(a refusal nobody checks) would look like coverage.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from tests.contracts.ipset_contract import IPSetContract
from tests.contracts.ipvs_contract import IPVSContract
from tests.contracts.sysctl_contract import SysctlContract
from vsop.adapters import fake as fake_module
from vsop.adapters.fake import FakeIPSets, FakeIPVS, FakeKernel, FakeSysctls
from vsop.core import memory
from vsop.core.state import KernelState

SYSCTLS = {"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0", "net.ipv6.conf.lo.accept_ra": "1"}


def kernel() -> FakeKernel:
    return FakeKernel(KernelState(sysctls=dict(SYSCTLS)), ipv4_networks=("10.77.0.0/16",))


def must_fail(test: Callable[[], Any]) -> None:
    with pytest.raises((pytest.fail.Exception, AssertionError)):
        test()


def test_the_contracts_pass_on_the_fakes_as_they_are() -> None:
    """The control: the same calls pass while the fakes refuse as the kernel does."""
    IPSetContract().test_a_comment_over_255_bytes_is_refused_naming_it(FakeIPSets(kernel()), 4)
    IPVSContract().test_an_unknown_scheduler_is_refused_naming_it(FakeIPVS(kernel()))
    IPVSContract().test_a_backend_that_is_not_unicast_is_refused_naming_it(FakeIPVS(kernel()), "10.77.255.255")
    SysctlContract().test_a_value_that_is_not_a_number_is_refused_naming_it(FakeSysctls(kernel()), 4, "yes")


def test_a_fake_taking_any_comment_length_fails_the_ipset_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "MAX_COMMENT_BYTES", 1 << 20)
    must_fail(lambda: IPSetContract().test_a_comment_over_255_bytes_is_refused_naming_it(FakeIPSets(kernel()), 4))


def test_a_fake_taking_any_scheduler_fails_the_ipvs_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "SCHEDULERS", ("rr", "nosuch"))
    must_fail(lambda: IPVSContract().test_an_unknown_scheduler_is_refused_naming_it(FakeIPVS(kernel())))


def test_a_fake_taking_any_backend_fails_the_ipvs_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeKernel, "_kernel_refuses", lambda self, op: None)
    for address in ("10.77.255.255", "224.0.0.5"):
        must_fail(lambda: IPVSContract().test_a_backend_that_is_not_unicast_is_refused_naming_it(FakeIPVS(kernel()), address))


def test_a_fake_taking_any_sysctl_value_fails_the_sysctl_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_module, "_integers", lambda value: True)
    must_fail(lambda: SysctlContract().test_a_value_that_is_not_a_number_is_refused_naming_it(FakeSysctls(kernel()), 4, "yes"))


def test_a_fake_whose_jumps_are_a_set_fails_the_iptables_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jumps kept as a set, as the fakes did: appended, once each; position and copies invisible."""
    from tests.contracts.iptables_contract import IPTablesContract
    from tests.unit.adapters.test_fake_contracts import FakeBuiltinChains
    from vsop.adapters.fake import FakeIPTables
    from vsop.core import ops

    def as_a_set(self: FakeKernel, op: ops.Op) -> None:
        if isinstance(op, ops.AddJump):
            rules = self.builtin.setdefault((op.jump.family, op.jump.table, op.jump.chain), [])
            if op.jump.rule not in rules:
                rules.append(op.jump.rule)
        elif isinstance(op, ops.DeleteJump):
            key = (op.jump.family, op.jump.table, op.jump.chain)
            self.builtin[key] = [rule for rule in self.builtin.get(key, []) if rule != op.jump.rule]

    def contract(case: str) -> None:
        fake = kernel()
        getattr(IPTablesContract(), case)(FakeIPTables(fake), FakeBuiltinChains(fake), 4)

    for case in ("test_a_jump_goes_first_in_its_chain_ahead_of_rules_already_there",
                 "test_a_jump_added_twice_is_there_twice_and_one_delete_removes_every_copy"):
        contract(case)  # the control
    monkeypatch.setattr(FakeKernel, "_builtin_rules", as_a_set)
    for case in ("test_a_jump_goes_first_in_its_chain_ahead_of_rules_already_there",
                 "test_a_jump_added_twice_is_there_twice_and_one_delete_removes_every_copy"):
        must_fail(lambda: contract(case))


def test_a_fake_conntrack_taking_any_address_fails_the_conntrack_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.contracts.conntrack_contract import ConntrackContract
    from tests.unit.adapters.test_conntrack_tool import FakeTable
    from vsop.adapters import conntrack
    from vsop.adapters.conntrack import FakeConntrack

    def case() -> None:
        fake = FakeConntrack()
        ConntrackContract().test_an_address_the_tool_cannot_take_is_refused(fake, FakeTable(fake), "fd00::53", "10.0.0.2")

    case()  # the control
    monkeypatch.setattr(conntrack, "_unparsable", lambda vip, address: None)
    must_fail(case)
