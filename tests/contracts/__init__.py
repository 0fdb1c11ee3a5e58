"""Contract tests shared by the real kernel adapters (netns tier) and the in-memory fakes (unit tier).

Each module holds a mixin class of test methods that use an adapter fixture
(`ipset_adapter`, `iptables_adapter`, `sysctl_adapter`) standing for an empty kernel,
and assert the end state through the adapter's own read(), never the calls made.
A tier subclasses the mixin in a test_*.py file and provides the fixtures.
Must not import: kopf, kubernetes, jinja2, or any real adapter.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from vsop.adapters.base import Adapter
from vsop.core import ops


def apply_in_order(operations: Iterable[ops.Op], adapters: Sequence[Adapter]) -> int:
    """Apply a plan as the engine does: each consecutive run of ops to the adapter that handles it."""
    written = 0
    run: list[ops.Op] = []
    current: Adapter | None = None
    for op in operations:
        adapter = next(a for a in adapters if isinstance(op, a.handles))
        if run and adapter is not current:
            written += current.apply(run)  # type: ignore[union-attr]
            run = []
        current = adapter
        run.append(op)
    if run and current is not None:
        written += current.apply(run)
    return written
