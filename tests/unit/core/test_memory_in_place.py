"""The interpreter of accepted operations (vsop.core.memory) predicts what the kernel reads back.

Oracle: the fake adapters (vsop.adapters.fake). They apply each operation with the kernel's
own checks (core.memory.apply_op, a copy per operation) and are read back through the
adapters' read side, as any kernel is (engine.read_observed). A sync's accepted operations
(all of them, or those before the write the kernel refused) applied to the state read
before must give the state read after: by copy (`apply_accepted`, the reconciler after a
full sync and on a VIP cut) and in place on one cache kept across syncs (`apply_in_place`,
the reconciler's cache after each change); and what was copied from stays as it was.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.unit.core.test_property import foreign_state, services
from vsop.core import ops
from vsop.core.desired import Node
from vsop.core.memory import apply_accepted, apply_in_place, owned_copy, taken_along
from vsop.core.state import KernelState, Names
from vsop.adapters.kernel import fake_kernel, read_observed
from vsop.node.execute import ExecutionFailed
from vsop.node.whole import sync

NAMES = Names()


def refusing_after(writes: int) -> Any:
    """A kernel that takes `writes` operations, then refuses the next one (and any after it)."""
    left = [writes]

    def refuse(op: ops.Op) -> str | None:
        left[0] -= 1
        return "Operation not permitted (refused by the test)" if left[0] < 0 else None

    return refuse


def as_read(state: KernelState) -> KernelState:
    """A state as the adapters read it back: the kernel keeps no owners (set comments carry them)."""
    return replace(
        state,
        services={k: replace(v, owner="") for k, v in state.services.items()},
        addresses=frozenset(state.addresses),
        jumps=frozenset(state.jumps),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=st.lists(st.tuples(services(), st.none() | st.integers(0, 30)), min_size=1, max_size=4))
def test_the_interpreter_predicts_what_the_fakes_read_back(rounds: list[Any]) -> None:
    """Each round syncs some objects; `refuse` is the number of writes the kernel takes before it
    refuses one (None: it takes them all)."""
    kernel, fake = fake_kernel(foreign_state())
    node = Node("n")
    cached = owned_copy(read_observed(kernel, NAMES))  # one cache kept across syncs, as the reconciler's
    for objects, refuse in [*rounds, ([], None)]:
        before = read_observed(kernel, NAMES)
        untouched = copy.deepcopy(before)
        fake.applied.clear()
        fake.refuse = refusing_after(refuse) if refuse is not None else lambda op: None
        try:
            sync(kernel, objects, node)
        except ExecutionFailed:
            event("a write refused")
        accepted = list(fake.applied)
        after = as_read(read_observed(kernel, NAMES))
        assert as_read(apply_accepted(before, accepted)) == after
        cached = apply_in_place(cached, accepted, taken_along(cached.real_servers, accepted))
        assert as_read(cached) == after
        assert before == untouched  # a copy is changed, never what it was copied from
