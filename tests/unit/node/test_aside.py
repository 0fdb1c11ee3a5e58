"""A resync's kernel read made aside (vsop.node.aside): off the lock, while changes go on.

Property: whatever changes are written while the read runs (it is taken at any point between
its start and the resync), and whatever drift is made by hand before it, the resync planned
from that read fails nothing, leaves the cache equal to the kernel, and repairs the drift the
read saw; the next resync finds nothing to write, and the kernel ends as a sync from scratch.
A write that is no one VIP's, a failure, or a whole plan spoils the read: the resync reads
under the lock. Plus `splice` on its own, and the schedule: the turn when the resync falls
due serves changes, the turn after the read ended is the resync.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_vs
from tests.unit.core.test_property import comparable, foreign_state
from tests.unit.node.test_reconciler import NODE, from_scratch, same_kernel, step, take_step
from vsop.adapters.kernel import fake_kernel
from vsop.api.model import VirtualService
from vsop.core import ops
from vsop.core.fragments import vip_index
from vsop.core.state import ChainKey, KernelState, Names, RealServerKey
from vsop.node.aside import Aside, splice
from vsop.node.reconciler import Reconciler


def apply_step(reconciler: Reconciler, objects: dict[str, VirtualService], endpoints: dict[Any, Any],
               out: set[RealServerKey], action: Any) -> None:
    """One change fed and reconciled (the change path, as a turn beside the read would run it)."""
    reconciler.update_objects(take_step(action, reconciler, objects, endpoints, out))
    reconciler.set_endpoints(endpoints)
    reconciler.set_out_of_service(frozenset(out))
    outcome = reconciler.reconcile()
    assert outcome.ok, outcome.error


def drift_by_hand(state: KernelState, pick: int) -> tuple[KernelState, str | None]:
    """One of vsop's real servers (or, with none, nothing) removed behind vsop's back, and its VIP."""
    owned = sorted(k for k, v in state.real_servers.items() if state.services.get(k.service) is not None and state.services[k.service].owner)
    if not owned:
        return state, None
    gone = owned[pick % len(owned)]
    return replace(state, real_servers={k: v for k, v in state.real_servers.items() if k != gone}), gone.service.vip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.lists(step, min_size=1, max_size=6),
    during=st.lists(step, max_size=6),
    read_at=st.integers(0, 6),
    drift=st.one_of(st.none(), st.integers(0, 50)),
)
def test_a_resync_from_a_read_made_aside_while_changes_went_on_ends_as_a_sync_from_scratch(
    before: list[Any], during: list[Any], read_at: int, drift: int | None
) -> None:
    kernel, fake = fake_kernel(foreign_state(), reader=True)
    reconciler = Reconciler(kernel, NODE)
    objects: dict[str, VirtualService] = {}
    endpoints: dict[tuple[str, str], Any] = {}
    out: set[RealServerKey] = set()
    assert reconciler.reconcile().ok
    for action in before:
        apply_step(reconciler, objects, endpoints, out, action)
    drifted = None
    if drift is not None:  # made by hand before the read: the read sees it, the resync repairs it
        fake.state, drifted = drift_by_hand(fake.state, drift)
    aside = reconciler.begin_aside()
    assert aside is not None
    read = None
    for number, action in enumerate(during):
        if number == read_at:
            read = reconciler.read_aside(aside)
        apply_step(reconciler, objects, endpoints, out, action)
    if read is None:
        read = reconciler.read_aside(aside)
    reads = reconciler.reads
    reconciler.hand_aside(read)
    outcome = reconciler.reconcile(full=True)
    assert outcome.ok, outcome.error
    while reconciler.replanning:
        assert reconciler.reconcile().ok
    used = reconciler.aside_reads == 1
    # Used unless a change wrote something no one VIP owns meanwhile (then read under the lock).
    assert used == (reconciler.reads == reads) and used == (not aside.unusable)
    # Drift on a VIP a change wrote while the read ran is left to the next resync (the cache's entries
    # stood for that VIP); any other drift the read saw is repaired now.
    if drifted is None or drifted not in aside.written or not used:
        assert reconciler.observed is not None and comparable(reconciler.observed) == comparable(fake.state)
    assert reconciler.reconcile(full=True).ok
    while reconciler.replanning:
        assert reconciler.reconcile().ok
    assert reconciler.observed is not None and comparable(reconciler.observed) == comparable(fake.state)
    expected, declared = from_scratch(list(objects.values()), endpoints, frozenset(out & set(reconciler.configured)))
    same_kernel(fake.state, expected, reconciler.desired().state.delegated)
    writes = fake.writes
    again = reconciler.reconcile(full=True)
    assert again.ok and again.writes == 0 and fake.writes == writes


def test_a_vip_written_during_the_read_keeps_the_cache_entries_and_another_vips_drift_is_repaired() -> None:
    kernel, fake = fake_kernel(reader=True)
    reconciler = Reconciler(kernel, NODE)
    web, api = make_vs("web"), make_vs("api", vip="169.254.11.3")
    reconciler.update_objects({web.ref: web, api.ref: api})
    assert reconciler.reconcile().ok
    aside = reconciler.begin_aside()
    assert aside is not None
    # Drift by hand on api's VIP, then the read, then a change to web written before the resync.
    api_server = next(k for k in fake.state.real_servers if k.service.vip == "169.254.11.3")
    fake.state = replace(fake.state, real_servers={k: v for k, v in fake.state.real_servers.items() if k != api_server})
    read = reconciler.read_aside(aside)
    reconciler.update_objects({web.ref: make_vs("web", backends=[{"address": "192.168.2.50"}])})
    assert reconciler.reconcile().ok
    assert aside.written == {"169.254.11.2"} and not aside.unusable
    reads = reconciler.reads
    reconciler.hand_aside(read)
    forgotten: list[int] = []  # the turns' adapter drops its parsed copies once the reader's are the cache's
    kernel.ipvs.forget_reads = lambda: forgotten.append(1)  # type: ignore[method-assign]
    resync = reconciler.reconcile(full=True)
    assert resync.ok and reconciler.reads == reads and reconciler.aside_reads == 1 and forgotten == [1]
    assert [r.op for r in resync.repairs] and api_server in fake.state.real_servers  # api's drift, seen by the read, repaired
    assert {k.address for k in fake.state.real_servers if k.service.vip == "169.254.11.2"} == {"192.168.2.50"}
    assert comparable(reconciler.observed) == comparable(fake.state)  # web's new real server was not taken for drift
    assert reconciler.reconcile(full=True).writes == 0


def web_synced_and_reading() -> tuple[Any, Any, Reconciler, Aside]:
    """One object synced on a fake kernel that makes readers, and a read aside begun."""
    kernel, fake = fake_kernel(reader=True)
    reconciler = Reconciler(kernel, NODE)
    web = make_vs("web")
    reconciler.update_objects({web.ref: web})
    assert reconciler.reconcile().ok
    aside = reconciler.begin_aside()
    assert aside is not None
    return kernel, fake, reconciler, aside


def test_a_read_spoiled_by_a_failure_or_another_writer_is_not_used() -> None:
    kernel, fake, reconciler, aside = web_synced_and_reading()
    read = reconciler.read_aside(aside)
    reconciler.spoil_aside("another writer held the lock")
    reads = reconciler.reads
    reconciler.hand_aside(read)
    assert reconciler.reconcile(full=True).ok and reconciler.reads == reads + 1 and reconciler.aside_reads == 0
    # A read handed over from an aside that a later one replaced is not used either.
    old = reconciler.begin_aside()
    assert old is not None
    stale = reconciler.read_aside(old)
    assert reconciler.begin_aside() is not None
    reconciler.hand_aside(stale)
    assert reconciler.reconcile(full=True).ok and reconciler.reads == reads + 2 and reconciler.aside_reads == 0


@pytest.mark.parametrize("reloaded", ["during the read", "after the read, before the resync"])
def test_a_read_made_before_ip_vs_was_reloaded_is_not_used_and_the_resync_puts_back_what_the_reload_flushed(reloaded: str) -> None:
    # The read would show the services the reload flushed, and the resync would find no drift: the
    # lost services would come back a whole resync period later (the vm tier's test_read_faults.py).
    kernel, fake, reconciler, aside = web_synced_and_reading()
    if reloaded == "during the read":
        class Reloading:  # the reader's IPVS view: the module goes away once the services were read
            def __init__(self, real: Any) -> None:
                self.real = real

            def read(self) -> Any:
                found = self.real.read()
                fake.reload_ipvs()
                return found

            def __getattr__(self, name: str) -> Any:
                return getattr(self.real, name)

        reader = kernel.reader
        assert reader is not None
        views = reader()
        reconciler._reader = replace(views, ipvs=Reloading(views.ipvs))  # type: ignore[arg-type]
        read = reconciler.read_aside(aside)
        assert read.state.services  # what the read saw: the tables before the reload
    else:
        read = reconciler.read_aside(aside)
        fake.reload_ipvs()
    assert not fake.state.services
    reads = reconciler.reads
    reconciler.hand_aside(read)
    resync = reconciler.reconcile(full=True)
    assert resync.ok and reconciler.reads == reads + 1 and reconciler.aside_reads == 0
    assert comparable(reconciler.observed) == comparable(fake.state) and fake.state.services
    assert reconciler.reconcile(full=True).writes == 0


def test_no_read_aside_without_a_reader_or_before_the_first_read() -> None:
    plain = Reconciler(fake_kernel()[0], NODE)
    assert plain.reconcile().ok and plain.begin_aside() is None
    first = Reconciler(fake_kernel(reader=True)[0], NODE)
    assert first.begin_aside() is None  # nothing read yet: the first reconcile reads whole anyway


def test_splice_takes_the_cached_entries_of_the_written_vips_only() -> None:
    names = Names()
    kernel, fake = fake_kernel()
    reconciler = Reconciler(kernel, NODE)
    reconciler.update_objects({vs.ref: vs for vs in (make_vs("web"), make_vs("api", vip="169.254.11.3"))})
    assert reconciler.reconcile().ok
    cached = fake.state
    web_rs = next(k for k in cached.real_servers if k.service.vip == "169.254.11.2")
    api_rs = next(k for k in cached.real_servers if k.service.vip == "169.254.11.3")
    # The read saw neither web's real server (written after the read passed it) nor api's (drift).
    fresh = replace(cached, real_servers={k: v for k, v in cached.real_servers.items() if k not in (web_rs, api_rs)},
                    addresses=cached.addresses - {"169.254.11.2/32"})
    spliced = splice(fresh, vip_index(fresh, names), cached, vip_index(cached, names), {"169.254.11.2"}, names)
    assert web_rs in spliced.real_servers and api_rs not in spliced.real_servers
    assert "169.254.11.2/32" in spliced.addresses
    assert comparable(splice(fresh, vip_index(fresh, names), cached, vip_index(cached, names), (), names)) == comparable(fresh)
    whole = splice(fresh, vip_index(fresh, names), cached, vip_index(cached, names), {"169.254.11.2", "169.254.11.3"}, names)
    assert comparable(whole) == comparable(cached)


def test_a_change_of_no_one_vip_spoils_the_read() -> None:
    aside = Aside()
    aside.wrote([ops.DeleteAddress("vsop0", "169.254.11.2/32")])
    assert aside.written == {"169.254.11.2"} and not aside.unusable
    aside.wrote([ops.WriteChain(ChainKey(4, "filter", "VSOP-FILTER"), ())])
    assert "written while the kernel was read" in aside.unusable


# --- the schedule (vsop.node.loop): the read runs beside the turns, the resync takes it -------------


class AsideStub:
    """The schedule's view of a reconciler that reads aside (vsop.node.aside): it records what it was handed."""

    def __init__(self) -> None:
        from tests.unit.node.test_loop import Draining

        self.draining = Draining()
        self.replanning = False
        self.cold = False
        self.begun: list[Aside] = []
        self.handed: list[Any] = []
        self.calls = 0

    def retry_in(self) -> None:
        return None

    def begin_aside(self) -> Aside | None:
        if not self.calls:  # the first turn: nothing read yet, it reads whole
            self.calls = 1
            return None
        self.begun.append(Aside())
        return self.begun[-1]

    def read_aside(self, aside: Aside) -> str:
        return f"read {len(self.begun)}"

    def hand_aside(self, read: Any) -> None:
        self.handed.append(read)


@pytest.mark.asyncio
async def test_when_the_resync_falls_due_its_read_runs_aside_and_the_turn_after_it_is_the_resync(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from tests.unit.node.test_loop import ScriptedTrigger, schedule
    from vsop.node import loop as loop_module

    def in_thread(function: Any, *args: Any) -> Any:  # the read ends at once; its end is seen at the next wait
        future = asyncio.get_running_loop().create_future()
        future.set_result(function(*args))
        return future

    class Trigger(ScriptedTrigger):
        async def wait(self, timeout: float, debounce: float) -> bool:
            await asyncio.sleep(0)  # the read's done callback runs
            if self.woken:
                self.timeouts.append(timeout)
                return True
            return await super().wait(timeout, debounce)

    monkeypatch.setattr(loop_module, "_in_thread", in_thread)
    monkeypatch.setattr("tests.unit.node.test_loop.ScriptedTrigger", Trigger)
    reconciler = AsideStub()
    # The first turn, a change 10 s later, then the resync falls due (20 s later) with a change.
    driver, trigger, _ = await schedule(4, [(10.0, "change a"), (20.0, "change b")], reconciler=reconciler, resync_seconds=30.0, debounce_seconds=0.0)
    assert [(full, reasons) for full, reasons in driver.turns] == [
        (True, set()),  # the first turn: the reconciler reads whole (a stub without a read yet)
        (False, {"change a"}),
        (False, {"change b"}),  # the resync is due: its read starts aside, this turn serves the change
        (True, {"resync read"}),  # the read ended: the resync, from it
    ]
    assert reconciler.handed == ["read 1"] and len(reconciler.begun) == 1
    # Falling due with no change waiting, the read starts and no turn runs until it ends.
    quiet = AsideStub()
    driver, trigger, _ = await schedule(3, [(10.0, "change a")], reconciler=quiet, resync_seconds=30.0, debounce_seconds=0.0)
    assert [(full, reasons) for full, reasons in driver.turns] == [(True, set()), (False, {"change a"}), (True, {"resync read"})]
    assert quiet.handed == ["read 1"]
