"""VM tier: the real link adapter (LinkKernel) against a kernel that has the dummy driver.

Runs the link contract plus what only a real kernel shows: the probe leaves nothing
behind, loopback and other links count as node addresses, a bound VIP is a local
address at once (IPv6 without duplicate address detection), and a link that is down
reads as down and is brought up. Each test gets its own network namespace.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from tests.contracts.links_contract import LINK, VIP4, VIP6, LinkContract, ip  # noqa: E402
from vsop.adapters.links import LinkKernel  # noqa: E402
from vsop.core import ops  # noqa: E402
from vsop.core.state import LinkState  # noqa: E402

pytestmark = pytest.mark.vm

IFA_F_NODAD, IFA_F_TENTATIVE = 0x02, 0x40
RTN_LOCAL = 2


@pytest.fixture
def link_netns():
    """A fresh namespace with loopback up."""
    name = f"vsoplink-{secrets.token_hex(4)}"
    pyroute2_netns.create(name)
    try:
        with IPRoute(netns=name, flags=0) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield name
    finally:
        pyroute2_netns.remove(name)


@pytest.fixture
def link_adapter(link_netns):
    adapter = LinkKernel(netns=link_netns)
    yield adapter
    adapter.close()


@pytest.fixture
def ipr(link_netns):
    with IPRoute(netns=link_netns, flags=0) as ipr:
        yield ipr


class TestLinkKernel(LinkContract):
    pass


def test_probe_leaves_nothing_behind(link_adapter, ipr):
    before = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    link_adapter.probe(LINK)
    assert {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()} == before
    link_adapter.apply([ops.CreateLink(LINK)])
    link_adapter.probe(LINK)


def test_loopback_and_other_links_are_node_addresses(link_adapter, ipr):
    ipr.link("add", ifname="eth9", kind="dummy")
    ipr.addr("add", index=ipr.link_lookup(ifname="eth9")[0], address="198.51.100.7", prefixlen=24)
    link_adapter.apply([ops.CreateLink(LINK), ops.AddAddress(LINK, VIP4)])
    _, addresses, others = link_adapter.read(LINK)
    assert addresses == {VIP4}
    assert {"127.0.0.1", "::1", "198.51.100.7"} <= others
    assert ip(VIP4) not in others


def test_bound_vips_are_local_at_once(link_adapter, ipr):
    link_adapter.apply([ops.CreateLink(LINK), ops.AddAddress(LINK, VIP4), ops.AddAddress(LINK, VIP6)])
    (v6,) = [a for a in ipr.get_addr(family=10) if a.get_attr("IFA_ADDRESS") == ip(VIP6)]
    flags = v6.get_attr("IFA_FLAGS", v6["flags"])
    assert flags & IFA_F_NODAD and not flags & IFA_F_TENTATIVE
    for vip in (ip(VIP4), ip(VIP6)):
        (route,) = ipr.route("get", dst=vip)
        assert route["type"] == RTN_LOCAL


def test_a_down_link_reads_down_and_is_brought_up(link_adapter, ipr):
    link_adapter.apply([ops.CreateLink(LINK)])
    ipr.link("set", index=ipr.link_lookup(ifname=LINK)[0], state="down")
    assert link_adapter.read(LINK)[0] == LinkState(LINK, up=False)
    link_adapter.apply([ops.SetLinkUp(LINK)])
    assert link_adapter.read(LINK)[0] == LinkState(LINK, up=True)


def test_the_link_is_a_dummy(link_adapter, ipr):
    link_adapter.apply([ops.CreateLink(LINK)])
    (link,) = ipr.link("get", ifname=LINK)
    assert link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "dummy"
