"""What every ConntrackCleaner does: the real `conntrack` tool (netns tier) and FakeConntrack alike.

Fixtures: `conntrack_cleaner`, the cleaner under test, and `conntrack_table`, an object with
`insert(vip, port, client, client_port, address, rport)` (a UDP entry from client to vip:port
whose reply comes from address:rport) and `entries()` (the UDP entries as
(vip, port, address, rport) tuples), over a table with no UDP entries.
Must not import: kopf, kubernetes, jinja2, or any real adapter.
"""

from __future__ import annotations

import pytest

from vsop.adapters.conntrack import ConntrackFailed

VIP, CLIENT = "169.254.11.2", "10.9.0.1"
OLD, NEW = "10.0.0.2", "10.0.0.3"


class ConntrackContract:
    def test_forgets_the_entries_of_the_removed_real_server_only(self, conntrack_cleaner, conntrack_table):
        conntrack_table.insert(VIP, 53, CLIENT, 40000, OLD, 5353)
        conntrack_table.insert(VIP, 53, CLIENT, 40001, NEW, 5353)
        conntrack_table.insert(VIP, 54, CLIENT, 40002, OLD, 5353)  # another port of the VIP
        conntrack_cleaner.forget_udp(VIP, 53, OLD, 5353)
        assert conntrack_table.entries() == {(VIP, 53, NEW, 5353), (VIP, 54, OLD, 5353)}

    def test_nothing_to_forget_is_not_a_failure(self, conntrack_cleaner, conntrack_table):
        conntrack_table.insert(VIP, 53, CLIENT, 40001, NEW, 5353)
        conntrack_cleaner.forget_udp(VIP, 53, OLD, 5353)
        assert conntrack_table.entries() == {(VIP, 53, NEW, 5353)}

    @pytest.mark.parametrize(
        ("vip", "address"), [("not-an-ip", OLD), (VIP, "10.0.0.300"), ("fd00::53", OLD)], ids=["vip", "address", "mixed-families"]
    )
    def test_an_address_the_tool_cannot_take_is_refused(self, conntrack_cleaner, conntrack_table, vip, address):
        conntrack_table.insert(VIP, 53, CLIENT, 40000, OLD, 5353)
        with pytest.raises(ConntrackFailed):
            conntrack_cleaner.forget_udp(vip, 53, address, 5353)
        assert conntrack_table.entries() == {(VIP, 53, OLD, 5353)}
