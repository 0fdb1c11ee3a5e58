"""Reads made beside the node's turns give way to them.

Owns `Priority`, the work a change waits on (a turn, a look at the host agent's folder),
entered around that work, and the calling thread's pace: `pace()`, which a long read
calls between its steps (every few thousand entries parsed) and which returns at once
unless the thread was set to give way (`paced`) and priority work is under way; then it
waits for that work to end, at most `Priority.cap` seconds a call. In any other thread
`pace()` costs an attribute lookup.

Why: CPython runs one thread at a time. At 10k services a resync's read made aside
(vsop.node.aside) parses for seconds; a poll beside it stats 10k files, and each stat
waits for the reader to hand the interpreter back (up to its switch interval) when it
returns: in the test VM a poll took 2.5 s instead of 0.2 s, and a change written then
waited for it. Giving way costs the read wall time, not work.
Must not import: vsop.node, vsop.host, vsop.kube (the adapters sit below them), asyncio.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

_local = threading.local()


def pace() -> None:
    """A step of a long read: give way if this thread reads aside and priority work runs."""
    wait = getattr(_local, "wait", None)
    if wait is not None:
        wait()


@contextmanager
def paced(wait: Callable[[], None] | None) -> Iterator[None]:
    """This thread's long reads call `wait` between their steps (None: they never wait)."""
    before = getattr(_local, "wait", None)
    _local.wait = wait
    try:
        yield
    finally:
        _local.wait = before


class Priority:
    """Work a change waits on, and the reads aside that give way to it."""

    def __init__(self, cap: float = 1.0):
        self.cap = cap  # a read never waits longer than this a step, however busy the node stays
        self._lock = threading.Lock()
        self._running = 0
        self._idle = threading.Event()
        self._idle.set()
        self.waited = 0.0  # seconds reads spent giving way (total)

    @contextmanager
    def serving(self) -> Iterator[None]:
        with self._lock:
            self._running += 1
            self._idle.clear()
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if not self._running:
                    self._idle.set()

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def wait(self) -> None:
        """Until no priority work runs, at most `cap` seconds."""
        if self._idle.is_set():
            return
        started = time.monotonic()
        self._idle.wait(self.cap)
        self.waited += time.monotonic() - started


__all__ = ["Priority", "pace", "paced"]
