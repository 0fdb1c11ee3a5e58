"""What every LinkAdapter does, asserted through its read(): the real one and the fake alike.

The `link_adapter` fixture is an adapter over a node that has no link named
`LINK` and none of the addresses used here.
Must not import: kopf, kubernetes, jinja2, or any real adapter.
"""

from __future__ import annotations

import pytest

from vsop.adapters.base import OperationFailed
from vsop.core import ops
from vsop.core.state import LinkState

LINK = "vsop0"
VIP4, VIP4_B = "192.0.2.10/32", "192.0.2.11/32"
VIP6 = "2001:db8::10/128"


def ip(address: str) -> str:
    return address.split("/")[0]


class LinkContract:
    """Needs fixture `link_adapter`: a LinkAdapter over a node without link `LINK`."""

    def test_a_missing_link_reads_as_none(self, link_adapter):
        link, addresses, others = link_adapter.read(LINK)
        assert (link, addresses) == (None, frozenset())
        assert not {ip(VIP4), ip(VIP6)} & others

    def test_creates_the_link_up(self, link_adapter):
        assert link_adapter.apply([ops.CreateLink(LINK)]) == 1
        assert link_adapter.read(LINK)[:2] == (LinkState(LINK, up=True), frozenset())

    def test_setting_an_up_link_up_changes_nothing(self, link_adapter):
        link_adapter.apply([ops.CreateLink(LINK)])
        assert link_adapter.apply([ops.SetLinkUp(LINK)]) == 1
        assert link_adapter.read(LINK)[0] == LinkState(LINK, up=True)

    def test_binds_ipv4_and_ipv6_host_addresses(self, link_adapter):
        written = link_adapter.apply([ops.CreateLink(LINK), ops.AddAddress(LINK, VIP4), ops.AddAddress(LINK, VIP6)])
        assert written == 3
        link, addresses, others = link_adapter.read(LINK)
        assert link == LinkState(LINK, up=True)
        assert addresses == {VIP4, VIP6}
        # The link's own addresses are not "other" node addresses.
        assert not {ip(VIP4), ip(VIP6)} & others

    def test_unbinds_an_address(self, link_adapter):
        link_adapter.apply([ops.CreateLink(LINK), ops.AddAddress(LINK, VIP4), ops.AddAddress(LINK, VIP4_B), ops.AddAddress(LINK, VIP6)])
        assert link_adapter.apply([ops.DeleteAddress(LINK, VIP4), ops.DeleteAddress(LINK, VIP6)]) == 2
        assert link_adapter.read(LINK)[1] == {VIP4_B}

    def test_deletes_the_link_with_its_addresses(self, link_adapter):
        link_adapter.apply([ops.CreateLink(LINK), ops.AddAddress(LINK, VIP4), ops.AddAddress(LINK, VIP6)])
        assert link_adapter.apply([ops.DeleteLink(LINK)]) == 1
        link, addresses, others = link_adapter.read(LINK)
        assert (link, addresses) == (None, frozenset())
        assert not {ip(VIP4), ip(VIP6)} & others

    def test_creating_an_existing_link_fails(self, link_adapter):
        link_adapter.apply([ops.CreateLink(LINK)])
        again = ops.CreateLink(LINK)
        with pytest.raises(OperationFailed) as failure:
            link_adapter.apply([again])
        assert failure.value.op == again
        assert LINK in str(failure.value)

    def test_binding_a_bound_address_fails_naming_it(self, link_adapter):
        link_adapter.apply([ops.CreateLink(LINK), ops.AddAddress(LINK, VIP4)])
        again = ops.AddAddress(LINK, VIP4)
        with pytest.raises(OperationFailed) as failure:
            link_adapter.apply([again])
        assert failure.value.op == again
        assert ip(VIP4) in str(failure.value)
        assert link_adapter.read(LINK)[1] == {VIP4}

    @pytest.mark.parametrize(
        "op",
        [ops.SetLinkUp(LINK), ops.DeleteLink(LINK), ops.AddAddress(LINK, VIP4), ops.DeleteAddress(LINK, VIP4)],
        ids=["up", "delete-link", "bind", "unbind"],
    )
    def test_operations_without_the_link_fail(self, link_adapter, op):
        with pytest.raises(OperationFailed) as failure:
            link_adapter.apply([op])
        assert failure.value.op == op
        assert failure.value.reason == f"link {LINK} does not exist"
        assert link_adapter.read(LINK)[:2] == (None, frozenset())

    def test_unbinding_an_unbound_address_fails(self, link_adapter):
        link_adapter.apply([ops.CreateLink(LINK), ops.AddAddress(LINK, VIP4)])
        missing = ops.DeleteAddress(LINK, VIP6)
        with pytest.raises(OperationFailed) as failure:
            link_adapter.apply([missing])
        assert failure.value.op == missing
        assert link_adapter.read(LINK)[1] == {VIP4}

    def test_a_failing_operation_leaves_the_ones_before_it_applied(self, link_adapter):
        failing = ops.AddAddress(LINK, VIP4)
        run = [ops.CreateLink(LINK), ops.AddAddress(LINK, VIP4), ops.AddAddress(LINK, VIP6), failing, ops.AddAddress(LINK, VIP4_B)]
        with pytest.raises(OperationFailed) as failure:
            link_adapter.apply(run)
        assert failure.value.op == failing
        link, addresses, _ = link_adapter.read(LINK)
        assert link == LinkState(LINK, up=True)
        # What follows the failure is unspecified (a pipelining adapter may have sent it).
        assert {VIP4, VIP6} <= addresses

    def test_an_empty_run_writes_nothing(self, link_adapter):
        assert link_adapter.apply([]) == 0
        assert link_adapter.read(LINK)[:2] == (None, frozenset())
