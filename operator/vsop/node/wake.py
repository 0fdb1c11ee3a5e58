"""Wake-ups for one reconcile loop: `Trigger` (sources wake it, the loop waits on it), debounced.

Owns the wake-up rule both agents' loops (vsop.node.loop) and the controller's share: a
change after a quiet spell starts a turn at once, changes while turns follow each other
closely wait for the least time between two turns, and the reasons are taken with the turn.
Must not import anything but the standard library: the controller imports it too.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Awaitable, Callable


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Whether `event` was set within `timeout` seconds.

    Not `asyncio.wait_for(event.wait())`: on Python 3.11 it swallows a cancellation that
    arrives while the event is being set (CPython gh-86296), so a reconcile loop told to
    stop as a change woke it went on waiting for its next change or resync instead.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


class Trigger:
    """Wake-ups for one reconcile loop: sources call `wake`, the loop `wait`s and `take`s the reasons.

    The debounce is a minimum time between two turns, as kube-proxy's minSyncPeriod: the
    first change after a quiet spell starts a turn at once; changes arriving while turns
    follow each other closely wait until `debounce` after the last turn started, so a
    burst still makes one turn per period.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._event: asyncio.Event | None = None
        self._reasons: set[str] = set()
        self._clock = clock
        self._sleep = sleep
        self._taken = -math.inf  # when a turn last took the wake-ups
        self._woken: float | None = None  # the first wake-up since then
        # How long the wake-ups the last `take` took had waited (the first of them): the debounce, a
        # status write or a turn running before it; the agents log it with the turn.
        self.waited = 0.0

    @property
    def event(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    @property
    def pending(self) -> bool:
        """Woken since the last `take`."""
        return self._event is not None and self._event.is_set()

    @property
    def noted(self) -> frozenset[str]:
        """The reasons given since the last `take`: what the next turn takes."""
        return frozenset(self._reasons)

    def wake(self, reason: str) -> None:
        self._reasons.add(reason)
        if self._woken is None:
            self._woken = self._clock()
        self.event.set()

    async def wait(self, timeout: float, debounce: float) -> bool:
        """True when woken (no sooner than `debounce` after the last turn started); False on timeout."""
        if timeout <= 0:
            return False
        if not await wait_event(self.event, timeout):
            return False
        delay = self._taken + debounce - self._clock()
        if delay > 0:
            await self._sleep(delay)
        return True

    def take(self) -> set[str]:
        reasons, self._reasons = self._reasons, set()
        self.event.clear()
        self._taken = self._clock()
        self.waited = self._taken - self._woken if self._woken is not None else 0.0
        self._woken = None
        return reasons
