"""The controller's status writes of one turn: bounded concurrency, and a stop that leaves no write half-owned."""

from __future__ import annotations

import asyncio
import inspect

from vsop.kube.controller import PATCH_CONCURRENCY, _run_limited


def test_at_most_patch_concurrency_writes_run_at_once() -> None:
    running: list[int] = []
    peak = 0

    async def write() -> None:
        nonlocal peak
        running.append(1)
        peak = max(peak, len(running))
        await asyncio.sleep(0)
        running.pop()

    asyncio.run(_run_limited([write() for _ in range(3 * PATCH_CONCURRENCY)]))
    assert peak == PATCH_CONCURRENCY


def test_a_turn_cancelled_while_writes_wait_closes_those_never_started() -> None:
    """The controller stopping mid-turn: the writes still waiting for the semaphore never run, and are closed
    (not left to the collector, which reports each as "coroutine ... was never awaited")."""
    started = asyncio.Event()

    async def write() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def scenario() -> list[str]:
        jobs = [write() for _ in range(PATCH_CONCURRENCY + 3)]
        turn = asyncio.create_task(_run_limited(jobs))
        await started.wait()
        turn.cancel()
        try:
            await turn
        except asyncio.CancelledError:
            pass
        return [inspect.getcoroutinestate(job) for job in jobs]

    assert set(asyncio.run(scenario())) == {inspect.CORO_CLOSED}
