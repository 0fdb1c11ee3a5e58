"""Netns tier: the IPVS and link adapters' probes on a kernel without IPVS or dummy links.

This machine's kernel has neither (the VM tier covers the positive side); on a
kernel that has them these tests skip. Each runs in the throwaway namespace the
conftest enters, so the dummy probe could not leave anything on the host.
"""

from __future__ import annotations

import pytest
from pyroute2 import IPRoute

from vsop.adapters.base import OperationFailed
from vsop.adapters.ipvs import IPVSKernel
from vsop.adapters.links import LinkKernel
from vsop.core import ops
from vsop.api.errors import KernelUnsupported


def _has_ipvs() -> bool:
    try:
        IPVSKernel().probe()
    except KernelUnsupported:
        return False
    return True


def test_ipvs_probe_says_what_to_do():
    if _has_ipvs():
        pytest.skip("this kernel has IPVS")
    adapter = IPVSKernel()
    with pytest.raises(KernelUnsupported, match=r"^this kernel has no IPVS: load ip_vs or use mode: keepalived$"):
        adapter.probe()
    with pytest.raises(KernelUnsupported):
        adapter.read()


def test_dummy_probe_says_what_to_do():
    adapter = LinkKernel()
    try:
        adapter.probe("vsop0")
    except KernelUnsupported as e:
        assert str(e) == "this kernel cannot create dummy links: load the dummy module or use mode: keepalived"
    else:
        pytest.skip("this kernel has the dummy driver")
    with pytest.raises(OperationFailed) as failure:
        adapter.apply([ops.CreateLink("vsop0")])
    assert failure.value.reason == str(KernelUnsupported("this kernel cannot create dummy links: load the dummy module or use mode: keepalived"))
    assert adapter.read("vsop0")[0] is None


def test_link_reads_node_addresses_without_the_link():
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    link, addresses, others = LinkKernel().read("vsop0")
    assert (link, addresses) == (None, frozenset())
    assert {"127.0.0.1", "::1"} <= others
