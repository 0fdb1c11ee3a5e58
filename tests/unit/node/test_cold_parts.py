"""The first sync in parts (vsop.node.reconciler.Reconciler._cold_start): `cold_chunk` VIPs per reconcile.

Property: whatever the kernel held before (foreign objects, a previous agent's objects, some of
them stale now), and whatever changes, health verdicts and resyncs come between the parts, the
parts end as a sync from scratch ends (kernel and verdicts), the cache equal to the kernel, no
drift reported; the next resync writes nothing. Between parts: an object whose VIP has not been
planned is not programmed, and no VIP:port is in an accept set without its IPVS service. Plus
the schedule: the loop runs the next part at once and serves a change between two parts (a
change's reconcile plans it alone, every other one), and a failed part falls back to the
whole-node recovery path.
"""

from __future__ import annotations

import asyncio
import logging
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
from vsop.core.health import HealthTracker
from vsop.core.held import Held
from vsop.core.state import KernelState, Names, RealServerKey, ServiceKey
from vsop.node.loop import Feed, NodeLoop
from vsop.node.reconciler import Reconciler
from vsop.node.resync import Resync
from vsop.node.whole import sync


def no_member_without_its_service(state: KernelState, delegated: frozenset[ServiceKey], cold: set[str]) -> None:
    """Every vsop accept-set member (VIP,proto:port) of a VIP planned has its IPVS service (the data
    path's order), unless the service is keepalived's (mode: keepalived)."""
    names = Names()
    for name in names.owned_set_names():
        ipset = state.ipsets.get(name)
        for member in ipset.members if ipset is not None else ():
            if "," not in member:  # a VIP alone (hash:ip): no service of its own
                continue
            vip, rest = member.split(",")[:2]
            if vip in cold:  # not planned yet: as an earlier agent left it
                continue
            proto, port = rest.split(":")
            key = ServiceKey(proto, vip, int(port))
            assert key in state.services or key in delegated, member  # keepalived's to create (mode: keepalived)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    previous=st.lists(step, max_size=6),
    first=st.lists(step, min_size=1, max_size=8),
    between=st.lists(st.one_of(step, st.just(("resync",))), max_size=8),
    chunk=st.integers(1, 3),
)
def test_a_cold_sync_in_parts_with_changes_between_them_ends_as_a_sync_from_scratch(
    previous: list[Any], first: list[Any], between: list[Any], chunk: int
) -> None:
    kernel, fake = fake_kernel(foreign_state())
    endpoints: dict[tuple[str, str], Any] = {}
    out: set[RealServerKey] = set()
    # What an agent before this one left (a restart): some of it stale for this one's objects.
    earlier: dict[str, VirtualService] = {}
    scratch = Reconciler(kernel, NODE)
    for action in previous:
        take_step(action, scratch, earlier, endpoints, out)
    sync(kernel, list(earlier.values()), NODE, endpoints=endpoints)
    out = set()
    reconciler = Reconciler(kernel, NODE, cold_chunk=chunk)
    objects: dict[str, VirtualService] = {}
    for action in first:
        take_step(action, reconciler, objects, endpoints, out)
    reconciler.set_objects(list(objects.values()))
    reconciler.set_endpoints(endpoints)
    outcome = reconciler.reconcile(full=True)
    assert outcome.ok and outcome.full and outcome.touched is None, outcome.error
    parts = 1
    for action in between:
        assert not outcome.repairs  # nothing was expected of a VIP not yet planned: no drift reported
        no_member_without_its_service(fake.state, reconciler.desired().state.delegated, reconciler.resyncing.cold)
        assert not (set(reconciler.programmed) & reconciler.declared.on(reconciler.resyncing.cold))
        if action[0] == "resync":
            outcome = reconciler.reconcile(full=True)
        else:
            reconciler.update_objects(take_step(action, reconciler, objects, endpoints, out))
            reconciler.set_endpoints(endpoints)
            out &= set(reconciler.configured)
            reconciler.set_out_of_service(frozenset(out))
            outcome = reconciler.reconcile()
        parts += 1
        assert outcome.ok, outcome.error
        assert reconciler.observed is not None and comparable(reconciler.observed) == comparable(fake.state)
    while reconciler.replanning:
        assert not outcome.repairs
        no_member_without_its_service(fake.state, reconciler.desired().state.delegated, reconciler.resyncing.cold)
        outcome = reconciler.reconcile()
        assert outcome.ok, outcome.error
    assert not outcome.repairs and not reconciler.cold
    assert reconciler.reads == 1 + sum(1 for action in between if action[0] == "resync")  # no part fell back to a whole plan
    assert reconciler.observed is not None and comparable(reconciler.observed) == comparable(fake.state)
    expected, declared = from_scratch(list(objects.values()), endpoints, frozenset(out & set(reconciler.configured)))
    same_kernel(fake.state, expected, reconciler.desired().state.delegated)
    assert reconciler.programmed == declared
    writes = fake.writes
    again = reconciler.reconcile(full=True)
    assert again.ok and again.writes == 0 and fake.writes == writes and not again.repairs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=st.lists(step, min_size=1, max_size=8), chunk=st.integers(1, 2))
def test_a_restart_in_parts_over_what_it_left_writes_nothing(first: list[Any], chunk: int) -> None:
    """The agent restarted over the kernel it left (the same objects and endpoints): no part writes
    anything, though each part derives only its own VIPs' objects. What every VIP shares is kept
    until the last part: a set, the link, a family's chains or a sysctl planned from the first
    part's objects alone would be taken away and made again, their other VIPs' members and
    addresses with them."""
    kernel, fake = fake_kernel(foreign_state())
    endpoints: dict[tuple[str, str], Any] = {}
    objects: dict[str, VirtualService] = {}
    for action in first:
        take_step(action, Reconciler(fake_kernel()[0], NODE), objects, endpoints, set())
    sync(kernel, list(objects.values()), NODE, endpoints=endpoints)
    writes = fake.writes
    reconciler = Reconciler(kernel, NODE, cold_chunk=chunk)
    reconciler.set_objects(list(objects.values()))
    reconciler.set_endpoints(endpoints)
    outcome = reconciler.reconcile()
    derived, applied = outcome.objects, list(outcome.applied)
    while outcome.ok and reconciler.replanning:
        outcome = reconciler.reconcile()
        derived, applied = derived + outcome.objects, applied + outcome.applied
    assert outcome.ok, outcome.error
    assert fake.writes == writes, [f"{op.kind} {op.describe()}" for op in applied]
    # Each object derived once, in its VIP's part (a conflict's loser is refused, not derived).
    assert derived <= len(objects) and not reconciler.declared.deferred and set(reconciler.fragments) == set(objects)
    expected, declared = from_scratch(list(objects.values()), endpoints, frozenset())
    assert reconciler.programmed == declared


def many(count: int) -> list[VirtualService]:
    return [make_vs(f"s{i}", vip=f"169.254.{60 + i // 200}.{i % 200 + 1}") for i in range(count)]


def test_the_first_sync_plans_cold_chunk_vips_per_reconcile_the_shared_objects_with_the_first(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vsop.node")
    kernel, fake = fake_kernel()
    reconciler = Reconciler(kernel, NODE, cold_chunk=4)
    reconciler.set_objects(many(10))
    first = reconciler.reconcile()
    assert first.ok and first.full and first.vips == 4 and reconciler.replanning and reconciler.cold
    assert first.objects == 4  # only the first part's objects derived: the first turn does not wait for the others
    # The node-wide objects exist before any VIP but the first part's needs them.
    assert fake.state.link is not None and fake.state.chains and fake.state.jumps
    assert {name for name in Names().owned_set_names() if name in fake.state.ipsets}
    assert len(reconciler.programmed) == 4
    second = reconciler.reconcile()
    assert second.ok and not second.full and second.vips == 4 and second.touched is not None and len(second.touched) == 4
    third = reconciler.reconcile()
    assert third.ok and third.vips == 2 and not reconciler.replanning and len(reconciler.programmed) == 10
    assert [r.getMessage().split(" seconds=")[0] for r in caplog.records if "first sync complete" in r.getMessage()] == [
        "first sync complete: every VIP planned in parts parts=3"]
    assert reconciler.reads == 1 and reconciler.reconcile(full=True).writes == 0


def test_cold_chunk_zero_plans_the_whole_node_at_once() -> None:
    kernel, fake = fake_kernel()
    reconciler = Reconciler(kernel, NODE, cold_chunk=0)
    reconciler.set_objects(many(10))
    assert reconciler.reconcile().ok and not reconciler.replanning and len(reconciler.programmed) == 10


def test_a_refused_write_in_a_part_falls_back_to_the_whole_node_recovery_path(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vsop.node")
    kernel, fake = fake_kernel()
    reconciler = Reconciler(kernel, NODE, cold_chunk=3)
    objects = many(9)
    reconciler.set_objects(objects)
    assert reconciler.reconcile().ok and reconciler.replanning
    bad = {vs.spec.vip for vs in objects} - {key.vip for key in fake.state.services}
    fake.refuse = lambda op: "Invalid argument" if isinstance(op, ops.AddService) and op.service.key.vip in bad else None
    outcome = reconciler.reconcile()
    # The part was refused: the kernel read again and the node planned whole, each refused VIP left out.
    assert outcome.ok and outcome.full and set(outcome.refused) == bad and not reconciler.replanning and reconciler.reads > 2
    assert {key.vip for key in fake.state.services} == {vs.spec.vip for vs in objects} - bad
    assert reconciler.programmed == {vs.ref for vs in objects if vs.spec.vip not in bad}
    assert reconciler.retry_in() is not None
    # The first sync ended on the recovery path: its end is logged all the same (what a restart waits for).
    assert [r.getMessage().split(" seconds=")[0] for r in caplog.records if "first sync complete" in r.getMessage()] == [
        "first sync complete: the parts left planned whole after a failed or refused write parts=2"]


def test_a_change_is_served_between_the_parts_of_the_first_sync() -> None:
    """The loop: the next part at once after each; a change written during the first part is
    planned by the next turn, alone (the part after it goes on), before the parts left."""
    kernel, fake = fake_kernel()
    reconciler = Reconciler(kernel, NODE, cold_chunk=2)
    loop = NodeLoop(reconciler, HealthTracker(), resync_seconds=3600.0, debounce_seconds=0.0)
    objects = many(8)
    new = make_vs("new", vip="169.254.99.1")
    turns: list[tuple[bool, int, bool]] = []  # (full, VIPs planned, the new object's VIP served after it)
    stop = asyncio.Event()

    class Driver:
        def __init__(self) -> None:
            self.fed = False

        async def turn(self, full: bool, reasons: set[str]) -> bool:
            changed: dict[str, VirtualService | None] = {}
            if not turns:
                changed = {vs.ref: vs for vs in objects}
            elif len(turns) == 1:
                changed = {new.ref: new}  # written while the first part ran
            done = await loop.blocking(loop.turn, full, lambda others: Feed(changed=changed))
            assert done.outcome is not None and done.outcome.ok
            turns.append((done.outcome.full, done.outcome.vips, any(k.vip == "169.254.99.1" for k in fake.state.services)))
            if not reconciler.replanning and len(turns) > 1:
                stop.set()
            return True

        def probe_targets(self) -> set[Any]:
            return set()

        def probe_changes(self) -> None:
            return None

        def flush_due(self) -> None:
            return None

        async def flush(self) -> None:
            return None

    loop.trigger.wake("start")
    asyncio.run(asyncio.wait_for(loop.run(Driver(), stop), 30))
    assert turns[0][0] and turns[0][1] == 2 and not turns[0][2]
    # The second turn served the change (its VIP with the next part), while parts were left.
    # The change alone (its turn takes no part: the next does), then the parts left.
    assert not turns[1][0] and turns[1][1] == 1 and turns[1][2] and len(turns) == 5
    assert len(reconciler.programmed) == 9 and reconciler.reads == 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    previous=st.lists(step, min_size=1, max_size=6),
    first=st.lists(step, min_size=1, max_size=6),
    hold=st.lists(st.integers(0, 5), max_size=3),
    unknown=st.booleans(),
    chunk=st.integers(1, 2),
)
def test_a_cold_sync_in_parts_keeps_held_owners_as_the_whole_node_plan_does(
    previous: list[Any], first: list[Any], hold: list[int], unknown: bool, chunk: int
) -> None:
    """Objects declared but unusable now (held: by name, or unaccounted for while something is
    unreadable) keep what an earlier agent programmed for them, in parts as in one whole plan."""
    endpoints: dict[tuple[str, str], Any] = {}
    earlier: dict[str, VirtualService] = {}
    start = Reconciler(fake_kernel()[0], NODE)
    for action in previous:
        take_step(action, start, earlier, endpoints, set())
    objects: dict[str, VirtualService] = {}
    for action in first:
        take_step(action, start, objects, endpoints, set())
    held_refs = frozenset(f"a/vs{i}" for i in hold) - objects.keys()
    held = Held(owners=held_refs, unknown=unknown, known=frozenset(objects) | held_refs)
    ends = []
    for cold_chunk in (0, chunk):  # the whole node in one plan (the way before), then in parts
        kernel, fake = fake_kernel(foreign_state())
        sync(kernel, list(earlier.values()), NODE, endpoints=endpoints)
        reconciler = Reconciler(kernel, NODE, cold_chunk=cold_chunk)
        reconciler.set_objects(list(objects.values()))
        reconciler.set_endpoints(endpoints)
        reconciler.set_held(held)
        assert reconciler.reconcile().ok
        while reconciler.replanning:
            assert reconciler.reconcile().ok
        ends.append((comparable(fake.state), set(reconciler.programmed), dict(reconciler.held_problems), reconciler.kept_owners()))
        assert reconciler.reconcile(full=True).writes == 0
    assert ends[0] == ends[1]


def test_the_parts_take_the_vips_in_order_whatever_the_string_hashing() -> None:
    resync = Resync(resync_chunk=8, audit_chunk=0, cold_chunk=2)
    resync.cold.update({"169.254.0.4", "169.254.0.1", "169.254.0.3", "169.254.0.2", "169.254.0.5"})
    assert resync.take_cold(set()) == {"169.254.0.1", "169.254.0.2"}
    # A change planned now takes its VIP out of what is left, and the part goes on in order.
    assert resync.take_cold({"169.254.0.3"}) == {"169.254.0.3", "169.254.0.4", "169.254.0.5"}
    resync.cold.update({"169.254.0.9", "169.254.0.0"})  # added after the order was made: after it
    assert resync.take_cold(set(), part=False) == set()
    assert resync.take_cold(set()) == {"169.254.0.0", "169.254.0.9"} and not resync.cold


def test_the_parts_take_the_vips_in_address_order_ipv4_first() -> None:
    resync = Resync(resync_chunk=8, audit_chunk=0, cold_chunk=2)
    resync.cold.update({"169.254.10.1", "fd00::2", "169.254.2.1", "fd00::10", "169.254.1.200"})
    assert resync.take_cold(set()) == {"169.254.1.200", "169.254.2.1"}  # string order would take .1.200 and .10.1
    assert resync.take_cold(set()) == {"169.254.10.1", "fd00::2"}
    assert resync.take_cold(set()) == {"fd00::10"} and not resync.cold
