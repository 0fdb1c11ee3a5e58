"""Netns tier: the real ipset, iptables and sysctl adapters against this machine's kernel.

Every test here is marked `netns`, needs root, and runs inside its own throwaway
network namespace (`ip netns add vsoptest-<random>`), entered by this process for the
test's duration, so the adapters and the CLI tools they spawn never see the host's
own tables, sets or settings. The namespace is deleted afterwards.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest
from pyroute2 import netns as pyroute2_netns

from vsop.adapters.ipset import IPSetKernel
from vsop.adapters.iptables import IPTablesKernel
from vsop.adapters.sysctl import SysctlKernel

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if HERE in Path(item.path).resolve().parents]
    if ours and os.geteuid() != 0:
        # A usage error, never a skip: a tier that ran nothing must not look green.
        raise pytest.UsageError("netns tier: needs root to create network namespaces (run as root)")
    for item in ours:
        item.add_marker(pytest.mark.netns)


def _current_netns() -> int:
    return os.stat("/proc/self/ns/net").st_ino


@pytest.fixture(autouse=True)
def netns() -> str:
    """Run the test inside a fresh network namespace; yields its name."""
    name = f"vsoptest-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, text=True)
    host = _current_netns()
    entered = False
    try:
        pyroute2_netns.pushns(name)
        entered = True
        # Refuse to go on if the switch did not happen: the test would edit the host's tables.
        assert _current_netns() == os.stat(f"/run/netns/{name}").st_ino != host
        yield name
    finally:
        if entered:
            pyroute2_netns.popns()
        assert _current_netns() == host
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def ipset_adapter() -> IPSetKernel:
    return IPSetKernel()


@pytest.fixture(params=["nft", "legacy"])
def iptables_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def iptables_adapter(iptables_backend: str) -> IPTablesKernel:
    return IPTablesKernel(backend=iptables_backend)


@pytest.fixture
def sysctl_adapter() -> SysctlKernel:
    return SysctlKernel()
