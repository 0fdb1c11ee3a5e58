"""kopf's index readiness as vsop.kube.toggles leaves it: waiters woken when the set's state flips, not at every object."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from vsop.kube import toggles

OBJECTS = 300


async def _settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def test_objects_of_the_initial_listing_are_released_together_once_every_index_is_complete_and_each_checks_in_o_1() -> None:
    assert toggles.install() and toggles.install()  # idempotent
    checks: list[int] = []

    def counting_all(states: object) -> bool:
        checks.append(1)
        return all(states)  # type: ignore[call-overload]

    async def scenario() -> list[int]:
        # As kopf's watcher and workers use it: the kind's toggle until its listing ends,
        # a toggle per object until its index handlers ran, then each worker waits for all.
        ready = aiotoggles.ToggleSet(counting_all)
        listing = await ready.make_toggle(name="virtualservices listed")
        released: list[int] = []
        objects = [await ready.make_toggle(name=f"object {i}") for i in range(OBJECTS)]

        async def worker(i: int) -> None:
            await ready.drop_toggle(objects[i])
            await ready.wait_for(True)
            released.append(i)

        tasks = []
        for i in range(OBJECTS):  # objects indexed one after another, as their events arrive
            tasks.append(asyncio.create_task(worker(i)))
            await _settle(3)
        assert len(ready) == 1
        await _settle()
        assert released == [] and ready.is_off(), "released before the listing was complete"
        await ready.drop_toggle(listing)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
        return released

    assert sorted(asyncio.run(scenario())) == list(range(OBJECTS))
    # kopf as released re-checks every waiting worker at each drop: about OBJECTS^2 / 2 (45,000 here).
    assert len(checks) < 10 * OBJECTS, len(checks)


def test_toggles_turned_on_and_off_still_wake_the_sets_waiters() -> None:
    toggles.install()

    async def scenario() -> None:
        paused = aiotoggles.ToggleSet(any)  # kopf's operator pause
        reason = await paused.make_toggle(name="peering CRD is missing")
        on = asyncio.create_task(paused.wait_for(True))
        await _settle()
        assert not on.done()
        await reason.turn_to(True)
        await asyncio.wait_for(on, timeout=1)
        off = asyncio.create_task(paused.wait_for(False))
        other = await paused.make_toggle(True, name="another reason")
        await _settle()
        assert not off.done()
        await paused.drop_toggles([reason])
        await _settle()
        assert not off.done(), "still paused for the other reason"
        await paused.drop_toggle(other)
        await asyncio.wait_for(off, timeout=1)

    asyncio.run(scenario())
