"""apply_in_place (the node reconciler's cached kernel, changed per write) ends where apply_accepted ends."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings

from tests.unit.test_property import comparable, foreign_state, services
from vsop.core.memory import apply_accepted, apply_in_place, owned_copy
from vsop.core.desired import Node
from vsop.engine import fake_kernel, sync


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=services(), second=services(), third=services())
def test_in_place_ends_where_a_copy_ends(first: Any, second: Any, third: Any) -> None:
    kernel, fake = fake_kernel(foreign_state())
    node = Node("n")
    sync(kernel, first, node)
    for objects in (second, third, []):
        before = fake.state
        cached = owned_copy(before)
        untouched = comparable(before)
        fake.applied.clear()
        sync(kernel, objects, node)
        applied = list(fake.applied)
        expected = apply_accepted(before, applied)
        result = apply_in_place(cached, applied, lambda service: [k for k in before.real_servers if k.service == service])
        assert comparable(result) == comparable(expected) == comparable(fake.state)
        assert comparable(before) == untouched  # the copy is changed, never what it was copied from
