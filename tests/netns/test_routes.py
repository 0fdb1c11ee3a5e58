"""The real route adapter on this machine's kernel (it has policy routing tables), in a throwaway namespace.

Besides the contract: routes that are not vsop's (another protocol in vsop's table, vsop's
protocol in another table, the main table) are neither read nor touched.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.contracts.routes_contract import PROTOCOL, TABLE, VIP4, VIP6, RouteContract, add, delete
from vsop.adapters.base import OperationFailed
from vsop.adapters.routes import RouteKernel


@pytest.fixture
def route_adapter():
    with RouteKernel() as adapter:
        yield adapter


class TestRouteKernel(RouteContract):
    pass


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def test_foreign_routes_are_neither_read_nor_touched(route_adapter: RouteKernel) -> None:
    ip("route", "add", "blackhole", "192.0.2.99/32", "table", str(TABLE), "proto", "static")
    ip("route", "add", "blackhole", "192.0.2.10/32", "table", "100", "proto", str(PROTOCOL))
    ip("route", "add", "unreachable", "2001:db8::99/128", "table", str(TABLE), "proto", str(PROTOCOL))
    route_adapter.apply([add(VIP4), add(VIP6)])
    assert route_adapter.read(TABLE, PROTOCOL) == {VIP4, VIP6}
    # As `ip` shows them: what BIRD's kernel protocol learns from the table.
    assert "blackhole 192.0.2.10 proto 118" in ip("route", "show", "table", str(TABLE))
    route_adapter.apply([delete(VIP4), delete(VIP6)])
    assert route_adapter.read(TABLE, PROTOCOL) == frozenset()
    assert ip("route", "show", "table", str(TABLE)).split() == ["blackhole", "192.0.2.99", "proto", "static"]
    assert "192.0.2.10 proto 118" in ip("route", "show", "table", "100")
    assert "unreachable 2001:db8::99" in ip("-6", "route", "show", "table", str(TABLE))


def test_deleting_never_removes_another_protocols_route_on_the_same_prefix(route_adapter: RouteKernel) -> None:
    ip("route", "add", "blackhole", VIP4, "table", str(TABLE), "proto", "static")
    with pytest.raises(OperationFailed) as failure:
        route_adapter.apply([delete(VIP4)])
    assert "protocol 118" in str(failure.value)
    assert "192.0.2.10 proto static" in ip("route", "show", "table", str(TABLE))
    with pytest.raises(OperationFailed) as refused:
        route_adapter.apply([add(VIP4)])
    assert "already has a route" in str(refused.value)
