"""The reconcile loops' trigger: the first change after a quiet spell at once, a burst coalesced to one turn per debounce."""

from __future__ import annotations

import asyncio

from vsop.kube.runtime import Trigger


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_a_change_after_a_quiet_spell_runs_at_once_and_a_burst_waits_for_the_debounce() -> None:
    clock = Clock()
    trigger = Trigger(clock=clock, sleep=clock.sleep)

    async def scenario() -> list[tuple[bool, set[str]]]:
        turns = []
        trigger.wake("a changed")  # the first change: no wait
        turns.append((await trigger.wait(30, 0.1), trigger.take()))
        clock.now += 0.02  # the turn takes 20 ms; two more changes arrive meanwhile
        trigger.wake("b changed")
        trigger.wake("c changed")
        turns.append((await trigger.wait(30, 0.1), trigger.take()))  # waits until 100 ms after the last turn began
        clock.now += 5.0  # quiet
        trigger.wake("d changed")
        turns.append((await trigger.wait(30, 0.1), trigger.take()))
        turns.append((await trigger.wait(0, 0.1), trigger.take()))  # nothing happened: the timeout, no turn woken
        return turns

    turns = asyncio.run(scenario())
    assert turns == [(True, {"a changed"}), (True, {"b changed", "c changed"}), (True, {"d changed"}), (False, set())]
    assert clock.slept == [0.08]  # only the burst waited, for the rest of the debounce


def test_no_debounce_never_waits() -> None:
    clock = Clock()
    trigger = Trigger(clock=clock, sleep=clock.sleep)

    async def scenario() -> None:
        for reason in ("a", "b", "c"):
            trigger.wake(reason)
            assert await trigger.wait(30, 0.0)
            assert trigger.take() == {reason}

    asyncio.run(scenario())
    assert clock.slept == []


def test_a_loop_told_to_stop_as_a_change_wakes_it_stops() -> None:
    # The wake-up and the cancellation land in the same turn of the event loop: the
    # cancellation must win (asyncio.wait_for on Python 3.11 returned "woken" instead).
    async def scenario() -> str:
        trigger = Trigger()
        waiting = asyncio.create_task(trigger.wait(3600, 0.0))
        await asyncio.sleep(0)  # it waits for the event now
        trigger.wake("a change")
        waiting.cancel()
        try:
            await waiting
        except asyncio.CancelledError:
            return "cancelled"
        return "woken"

    assert asyncio.run(scenario()) == "cancelled"


def test_a_timeout_is_not_a_wake_up() -> None:
    async def scenario() -> tuple[bool, bool]:
        trigger = Trigger()
        quiet = await trigger.wait(0.01, 0.0)
        trigger.wake("a change")
        return quiet, await trigger.wait(0, 0.0)  # a zero timeout is a periodic turn, as before

    assert asyncio.run(scenario()) == (False, False)


def test_a_turn_knows_how_long_its_first_wake_up_waited() -> None:
    """`waited` (logged with each turn): from the first wake-up a turn takes to the take, whatever came after it."""
    clock = Clock()
    trigger = Trigger(clock=clock, sleep=clock.sleep)
    trigger.wake("a changed")
    clock.now += 0.3
    trigger.wake("b changed")  # a later wake-up does not restart the wait
    clock.now += 0.2
    assert trigger.take() == {"a changed", "b changed"} and round(trigger.waited, 6) == 0.5
    clock.now += 7.0
    assert trigger.take() == set() and trigger.waited == 0.0  # nothing woke it: nothing waited
