"""A start that costs what the listing costs: kopf's index readiness without a wake-up storm.

Owns one fix to kopf (1.45; the code is unchanged upstream as of 2026-06): before any
resource handler runs, kopf waits until every index is complete. It does so with one
`ToggleSet(all)`: a toggle per indexed object of the initial listing, made when its
first event arrives and dropped once its index handlers ran, and each object's worker
then waits on the set's condition until no toggle is left. `make_toggle` and
`drop_toggle` call `notify_all` on every change of membership, so each of N drops wakes
every worker already waiting: about N^2/2 wake-ups, each a task switch and a lock
round-trip. With 5,000 VirtualServices the agent spent 87 s in them (2,000: 26 s, two
million predicate checks) before its first handler call; kmock and vsop's own handlers
took under a second of it (bench/kube_startup.py --profile).

A waiter on a ToggleSet waits for the set's aggregate state (`is_on()`); a change of
membership that leaves the aggregate as it was cannot satisfy any waiter. `install`
makes membership changes notify only when the aggregate flips; a toggle turned on or
off (`Toggle.turn_to`) still notifies as before. Waiters are then woken once, when the
last index is complete: O(N). The set's other users (kopf's operator pause, an
`any` set of a few toggles) see the same states at the same moments.

It touches kopf's private module, so it checks the shape it expects and leaves kopf as
it is (slow, correct) with a warning when that shape changed.
Must not import vsop.node.execute, vsop.adapters or vsop.adapters.real.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterable

log = logging.getLogger("vsop.kube")

_MARK = "_vsop_notifies_on_flips_only"


def install() -> bool:
    """Make kopf's ToggleSet wake its waiters only when its aggregate state changes. Idempotent; False: left as it was."""
    try:
        from kopf._cogs.aiokits import aiotoggles
    except ImportError:  # pragma: no cover - another kopf layout
        log.warning('"kopf internals changed; index readiness left as kopf does it (slow start with many objects)"')
        return False
    cls = aiotoggles.ToggleSet
    if getattr(cls, _MARK, False):
        return True
    probe = cls(all)
    if not (isinstance(getattr(probe, "_condition", None), asyncio.Condition) and isinstance(getattr(probe, "_toggles", None), set)
            and all(callable(getattr(cls, name, None)) for name in ("make_toggle", "drop_toggle", "drop_toggles", "is_on"))):
        log.warning('"kopf internals changed; index readiness left as kopf does it (slow start with many objects)"')
        return False
    toggle_class = aiotoggles.Toggle

    async def make_toggle(self: Any, __val: bool = False, *, name: str | None = None) -> Any:
        toggle = toggle_class(__val, name=name, condition=self._condition)
        async with self._condition:
            before = self.is_on()
            self._toggles.add(toggle)
            if self.is_on() != before:
                self._condition.notify_all()
        return toggle

    async def drop_toggle(self: Any, toggle: Any) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.discard(toggle)
            if self.is_on() != before:
                self._condition.notify_all()

    async def drop_toggles(self: Any, toggles: Iterable[Any]) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.difference_update(toggles)
            if self.is_on() != before:
                self._condition.notify_all()

    cls.make_toggle = make_toggle  # type: ignore[method-assign]
    cls.drop_toggle = drop_toggle  # type: ignore[method-assign]
    cls.drop_toggles = drop_toggles  # type: ignore[method-assign]
    setattr(cls, _MARK, True)
    return True
