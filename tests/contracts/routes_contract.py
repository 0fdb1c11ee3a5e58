"""What every RouteAdapter does, asserted through its read(): the real one and the fake alike.

The `route_adapter` fixture is an adapter over a node whose table `TABLE` holds none of
vsop's routes.
Must not import: kopf, kubernetes, jinja2, or any real adapter.
"""

from __future__ import annotations

import pytest

from vsop.adapters.base import OperationFailed
from vsop.core import ops

TABLE, PROTOCOL = 4242, 118
VIP4, VIP4_B = "192.0.2.10/32", "192.0.2.11/32"
VIP6 = "2001:db8::10/128"


def add(prefix: str) -> ops.AddRoute:
    return ops.AddRoute(prefix, TABLE, PROTOCOL)


def delete(prefix: str) -> ops.DeleteRoute:
    return ops.DeleteRoute(prefix, TABLE, PROTOCOL)


class RouteContract:
    """Needs fixture `route_adapter`: a RouteAdapter over a node without vsop's routes."""

    def test_an_empty_table_reads_as_no_routes(self, route_adapter):
        assert route_adapter.read(TABLE, PROTOCOL) == frozenset()

    def test_adds_ipv4_and_ipv6_blackhole_routes(self, route_adapter):
        assert route_adapter.apply([add(VIP4), add(VIP4_B), add(VIP6)]) == 3
        assert route_adapter.read(TABLE, PROTOCOL) == {VIP4, VIP4_B, VIP6}

    def test_routes_are_read_from_vsops_table_and_protocol_only(self, route_adapter):
        route_adapter.apply([add(VIP4), add(VIP6)])
        assert route_adapter.read(TABLE + 1, PROTOCOL) == frozenset()
        assert route_adapter.read(TABLE, PROTOCOL + 1) == frozenset()

    def test_deletes_a_route(self, route_adapter):
        route_adapter.apply([add(VIP4), add(VIP4_B), add(VIP6)])
        assert route_adapter.apply([delete(VIP4), delete(VIP6)]) == 2
        assert route_adapter.read(TABLE, PROTOCOL) == {VIP4_B}

    def test_adding_a_route_twice_fails_naming_it(self, route_adapter):
        route_adapter.apply([add(VIP4)])
        again = add(VIP4)
        with pytest.raises(OperationFailed) as failure:
            route_adapter.apply([again])
        assert failure.value.op == again and "192.0.2.10" in str(failure.value)
        assert route_adapter.read(TABLE, PROTOCOL) == {VIP4}

    def test_deleting_a_missing_route_fails_and_stops_the_run_there(self, route_adapter):
        route_adapter.apply([add(VIP4)])
        missing = delete(VIP6)
        with pytest.raises(OperationFailed) as failure:
            route_adapter.apply([delete(VIP4), missing])
        assert failure.value.op == missing and "2001:db8::10" in str(failure.value)
        assert route_adapter.read(TABLE, PROTOCOL) == frozenset()
