"""`vsop show` names the VIPs this node announces over BGP (its routes in vsop's table)."""

from __future__ import annotations

from tests.conftest import make_vs
from vsop.adapters.kernel import fake_kernel
from vsop.core.desired import Node
from vsop.core.state import KernelState, Names
from vsop.diagnose.show import show_json, show_text
from vsop.node.whole import sync


def test_show_lists_the_announced_vips_and_their_table() -> None:
    kernel, fake = fake_kernel()
    objects = [make_vs("web", announce="bgp"), make_vs("quiet", vip="169.254.11.3")]
    assert sync(kernel, objects, Node("n")).writes > 0
    data = show_json(fake.state, Names())
    assert data["announced"] == {"table": 4242, "vips": ["169.254.11.2"]}
    assert "announced over BGP (routes in table 4242, learned by BIRD): 169.254.11.2\n" in show_text(fake.state, Names())
    assert "announced over BGP" not in show_text(KernelState(), Names())
