"""A VIP bound before its IPVS service exists never reaches the node's own listeners: real packets.

This machine's kernel has no IPVS, which is exactly the half-programmed state: the plan's
writes up to its first AddService (sets, members, chains, jumps) are applied by the real
adapters in a throwaway namespace where a process listens on `*:8080`, and the VIP is
bound (on lo: this kernel has no dummy links either; the filter looks at addresses only). A connection to VIP:8080 is refused by VSOP-FILTER (the VIP is in VSOP-VIPS,
VIP:8080 not yet in the accept set). Accepting the port before its service, the order
vsop had before, hands the connection to the local listener: the test shows both. The
vm tier proves the same with IPVS refusing the service (tests/vm/test_faults.py).
"""

from __future__ import annotations

import socket
import subprocess
from typing import Iterator

import pytest

from tests.conftest import make_vs
from vsop.adapters.ipset import IPSetKernel
from vsop.adapters.iptables import IPTablesKernel
from vsop.core import ops
from vsop.core.desired import Node, desired_state
from vsop.core.plan import plan
from vsop.core.state import KernelState, Names, ServiceKey, ipset_member

VIP, PORT = "169.254.11.2", 8080


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """The node's own process on *:8080 (inside the test's namespace)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", PORT))
    server.listen(4)
    yield server
    server.close()


def reaches(address: str) -> bool:
    with socket.create_connection((address, PORT), timeout=5):
        return True


def test_a_bound_vip_without_its_service_refuses_the_port_and_the_old_order_exposed_it(listener: socket.socket) -> None:
    names = Names()
    the_plan = plan(desired_state([make_vs(ports=[{"port": PORT}])], Node("n")).state, KernelState(), names)
    first_service = next(i for i, op in enumerate(the_plan.ops) if isinstance(op, ops.AddService))
    before = the_plan.ops[:first_service]
    assert any(isinstance(op, ops.AddAddress) for op in before) and not any(isinstance(op, ops.AddAcceptMember) for op in before)
    ipsets, iptables = IPSetKernel(), IPTablesKernel()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{VIP}/32", "dev", "lo"], check=True)
    for op in before:
        adapter = next((a for a in (ipsets, iptables) if isinstance(op, a.handles)), None)
        if adapter is not None:  # sysctls (no net.ipv4.vs.* without IPVS) and the link are done above
            adapter.apply([op])
    assert reaches("127.0.0.1")  # the listener answers on the node's own addresses
    with pytest.raises(ConnectionRefusedError):
        reaches(VIP)  # VSOP-FILTER: the VIP is vsop's, the port is not accepted

    # What the old order did: the port accepted while no service exists behind it.
    member = ipset_member(ServiceKey("tcp", VIP, PORT))
    ipsets.apply([ops.AddAcceptMember(names.set_name(names.vip_ports_set, 4), member, "default/web")])
    assert reaches(VIP)  # the node's own listener answers on the VIP
