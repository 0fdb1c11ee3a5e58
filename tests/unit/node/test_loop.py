"""The node's turn and its schedule (vsop.node.loop) on fake adapters, a fake keepalived writer and a scripted trigger.

One turn: what a source hands over reaches the kernel and a second turn writes nothing; a
health result is a weight; the health targets are the checked objects' configured real
servers (kept while something is held, when asked); keepalived runs after a good sync only;
another writer's turn under the lock makes the next turn read the kernel; a lock never taken
skips the turn. The schedule: the first turn and every resync period are full whatever
wakes the loop, a failure is retried after `retry(failures)` as a full turn, drift left to
plan is planned at once, draining real servers bring a turn every second, a batched report
goes out when due without a turn of its own. The guard: a turn that raises (a netlink error, a
tool that timed out, a full /run) is logged, counted and retried with backoff, and liveness
turns false only when no turn has completed for the stall period.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import follow_changes, make_vs, recording_meanwhile
from vsop.core.desired import Node
from vsop.core.health import Health, HealthTracker, Thresholds
from vsop.core.held import Held
from vsop.core.state import RealServerKey, ServiceKey
from vsop.keepalived.writer import Outcome as KeepalivedOutcome
from vsop.adapters.kernel import fake_kernel
from vsop.node.loop import DRAIN_SECONDS, Feed, KeepalivedInput, NodeLoop, Turn, WriterLock, health_targets
from vsop.node.reconciler import Reconciler
from vsop.node.remember import RememberFile

WEB = ServiceKey("tcp", "169.254.11.2", 80)
FIRST, SECOND = RealServerKey(WEB, "192.168.2.111", 8080), RealServerKey(WEB, "192.168.2.222", 8080)


def node_loop(state: Any = None, **options: Any) -> tuple[NodeLoop, Any]:
    kernel, fake = fake_kernel(state)
    return NodeLoop(Reconciler(kernel, Node("n")), HealthTracker(), **options), fake


def given(feed: Feed) -> Any:
    return lambda others: feed


# --- one turn ----------------------------------------------------------------------------------


def test_a_turn_programs_what_the_source_hands_over_and_a_second_writes_nothing() -> None:
    loop, fake = node_loop()
    turn = loop.turn(True, given(Feed(changed={"default/web": make_vs()})))
    assert turn.ok and turn.full and turn.outcome is not None and turn.outcome.writes > 0
    assert set(fake.state.real_servers) == {FIRST, SECOND}
    again = loop.turn(False, given(Feed()))
    assert again.ok and again.outcome is not None and again.outcome.writes == 0 and fake.writes == turn.outcome.writes
    gone = loop.turn(False, given(Feed(changed={"default/web": None})))
    assert gone.ok and WEB not in fake.state.services


def test_a_health_result_becomes_a_weight_and_the_targets_follow_the_checked_objects() -> None:
    loop, fake = node_loop()
    checked = make_vs(healthCheck={"type": "tcp", "failureThreshold": 1})
    loop.turn(True, given(Feed(changed={"default/web": checked, "default/api": make_vs("api", vip="169.254.11.3")})))
    assert {t.key for t in loop.targets} == {FIRST, SECOND} and loop.checked.keys() == {"default/web"}
    loop.tracker.record(FIRST, False, Thresholds(1, 1), "refused")
    turn = loop.turn(False, given(Feed()))
    assert turn.outcome is not None and turn.outcome.writes == 1 and fake.state.real_servers[FIRST].weight == 0
    assert FIRST in {t.key for t in loop.targets}  # still probed, so it can come back
    # What the cluster's checkers published down counts as well (Feed.out_of_service).
    loop.tracker.record(FIRST, True, Thresholds(1, 1))
    loop.turn(False, given(Feed(out_of_service=frozenset({SECOND}))))
    assert (fake.state.real_servers[FIRST].weight, fake.state.real_servers[SECOND].weight) == (1, 0)
    loop.turn(False, given(Feed(changed={"default/web": make_vs()})))
    assert loop.targets == set() and not loop.checked


def test_held_objects_keep_their_targets_when_asked() -> None:
    for keep, expected in ((True, {FIRST, SECOND}), (False, set())):
        loop, _ = node_loop(keep_probing_held=keep)
        loop.turn(True, given(Feed(changed={"default/web": make_vs(healthCheck={"type": "tcp"})})))
        # The file is being rewritten: the object is gone from the source for now, and held.
        loop.turn(False, given(Feed(changed={"default/web": None}, held=Held(owners=frozenset({"default/web"})))))
        assert {t.key for t in loop.targets} == expected


def test_a_turn_keeps_the_health_verdicts_from_a_snapshot_while_results_come_in(tmp_path: Path) -> None:
    """The turn's thread saves the verdicts (and sets the weights) while the event loop records
    results: the first result of a new real server arriving meanwhile does not fail the turn."""
    loop, fake = node_loop(remember=RememberFile(tmp_path / "state.json"))
    loop.tracker = recording_meanwhile({FIRST: Health(healthy=False, failures=2), SECOND: Health(failures=1)}, RealServerKey(WEB, "192.168.2.233", 8080))
    assert loop.turn(True, given(Feed(changed={"default/web": make_vs(healthCheck={"type": "tcp"})}))).ok
    assert fake.state.real_servers[FIRST].weight == 0 and set(loop.remember.load(0.0, 0.0).health) == {FIRST, SECOND}


def test_draining_real_servers_are_not_probed() -> None:
    loop, fake = node_loop()
    loop.turn(True, given(Feed(changed={"default/web": make_vs(healthCheck={"type": "tcp"})})))
    fake.state = replace(fake.state, real_servers={**fake.state.real_servers, SECOND: replace(fake.state.real_servers[SECOND], active_connections=3)})
    loop.turn(True, given(Feed()))  # the connection counts read
    loop.turn(False, given(Feed(changed={"default/web": make_vs(healthCheck={"type": "tcp"}, backends=[{"address": "192.168.2.111"}])})))
    assert SECOND in loop.reconciler.draining.since and fake.state.real_servers[SECOND].weight == 0
    assert {t.key for t in loop.targets} == {FIRST}


def test_the_targets_change_per_turn_as_from_scratch_and_followers_get_what_changed() -> None:
    """Kept per object and changed by what each turn touched, the targets always equal the ones
    derived from scratch (health_targets), and a follower that takes the changes (the checker,
    the status file) rebuilds the same set from them; a health flip's turn changes none."""
    loop, fake = node_loop()
    follower: set[Any] = set()
    per_ref: dict[str, Any] = {}

    def follow() -> None:
        follow_changes(follower, loop.take_target_changes("test"), loop.targets)
        assert loop.targets == health_targets(loop.checked, loop.reconciler) == follower
        refs = loop.take_ref_changes("test")  # what is kept per object (the in-cluster agent's roles) follows these
        if refs is None:
            per_ref.clear()
            per_ref.update(loop.targets_by_ref)
        for ref in refs or ():
            per_ref[ref] = loop.targets_by_ref.get(ref, frozenset())
        assert {ref: t for ref, t in per_ref.items() if t} == {ref: t for ref, t in loop.targets_by_ref.items() if t}

    tcp = {"type": "tcp", "failureThreshold": 1}
    web = make_vs(healthCheck=tcp)
    api = make_vs("api", vip="169.254.11.3", healthCheck=tcp)
    one = [{"address": "192.168.2.111"}]
    steps: list[tuple[bool, Feed]] = [
        (True, Feed(changed={"default/web": web})),
        (False, Feed(changed={"default/api": api})),
        (False, Feed(changed={"default/db": make_vs("db", vip="169.254.11.4")})),  # unchecked: no targets
        (False, Feed()),
        (False, Feed(changed={"default/web": make_vs(healthCheck=tcp, backends=one)})),  # SECOND drains
        (False, Feed(changed={"default/api": make_vs("api", vip="169.254.11.3")})),  # check removed
        (False, Feed(changed={"default/db": make_vs("db", vip="169.254.11.4", healthCheck={"type": "http"})})),
        (True, Feed()),
        (False, Feed(changed={"default/web": None})),
        (False, Feed(changed={"default/web": web, "default/api": api})),
        # The same VIP:port claimed twice: the second waits (no targets) until the first is gone,
        # then it is programmed in a turn that never fed it (it was touched).
        (False, Feed(changed={"default/twin": make_vs("twin", healthCheck=tcp)})),
        (False, Feed(changed={"default/web": None})),
    ]
    for number, (full, feed) in enumerate(steps):
        if number == 3:  # a health flip alone: no target changes
            loop.tracker.record(FIRST, False, Thresholds(1, 1), "refused")
        if number == 4:  # SECOND has a connection: removed, it drains (and is no target)
            fake.state = replace(fake.state, real_servers={**fake.state.real_servers, SECOND: replace(fake.state.real_servers[SECOND], active_connections=3)})
            loop.turn(True, given(Feed()))
            follow()
        turn = loop.turn(full, given(feed))
        assert turn.ok
        if number == 3:
            assert loop.take_target_changes("test") == (set(), set()) and fake.state.real_servers[FIRST].weight == 0
            assert loop.take_ref_changes("test") == set()
            continue
        follow()
    assert {t.key.service.vip for t in loop.targets} == {"169.254.11.2", "169.254.11.3", "169.254.11.4"}
    assert {ref for ref, targets in loop.targets_by_ref.items() if targets} == {"default/twin", "default/api", "default/db"}


def test_a_periodic_resync_that_plans_nothing_rebuilds_no_target() -> None:
    """A resync re-derives no object: its targets are followed like a change's (at 10k checked
    objects, rebuilding all 20,000 at every resync took 0.11 s natively in the turn's thread)."""
    loop, _ = node_loop()
    tcp = {"type": "tcp", "failureThreshold": 1}
    loop.turn(True, given(Feed(changed={"default/web": make_vs(healthCheck=tcp), "default/api": make_vs("api", vip="169.254.11.3", healthCheck=tcp)})))
    loop.take_target_changes("test"), loop.take_ref_changes("test")
    kept = dict(loop.targets_by_ref)
    turn = loop.turn(True, given(Feed()))  # the periodic resync: the kernel as the cache has it
    assert turn.ok and turn.full and turn.outcome is not None and turn.outcome.touched == frozenset()
    assert loop.take_target_changes("test") == (set(), set()) and loop.take_ref_changes("test") == set()
    assert all(loop.targets_by_ref[ref] is targets for ref, targets in kept.items())
    assert loop.targets == health_targets(loop.checked, loop.reconciler)


def test_around_held_objects_the_targets_change_per_turn_as_rebuilt_whole() -> None:
    """While something is held, a target no object has any more is probed on (keep_probing_held),
    as a whole rebuild that unions the targets before with those derived from scratch kept it; once
    nothing is held, the targets are those derived from scratch again. Followers (the checker, the
    status file) get what changed, not the whole set, from every turn after their first look."""
    tcp = {"type": "tcp", "failureThreshold": 1}
    web, api = make_vs(healthCheck=tcp), make_vs("api", vip="169.254.11.3", healthCheck=tcp)
    one = make_vs(healthCheck=tcp, backends=[{"address": "192.168.2.111"}])
    rewriting, unknown = Held(owners=frozenset({"default/web"}), unknown=True), Held(unknown=True)
    steps: list[tuple[bool, Feed]] = [
        (True, Feed(changed={"default/web": web, "default/api": api})),
        (False, Feed(changed={"default/web": None}, held=rewriting)),  # its file is being rewritten
        (False, Feed(held=rewriting)),
        (False, Feed(changed={"default/api": None}, held=rewriting)),  # gone while something is held
        (False, Feed(changed={"default/web": web, "default/db": make_vs("db", vip="169.254.11.4", healthCheck=tcp)})),
        (False, Feed(held=unknown)),  # a new file not yet stable
        (False, Feed(changed={"default/new": make_vs("new", vip="169.254.11.5", healthCheck=tcp)})),
        (False, Feed(changed={"default/web": None}, held=rewriting)),
        (True, Feed(held=rewriting)),  # the resync while held
        (False, Feed(changed={"default/web": one})),  # back with one real server: the other goes
        (False, Feed(changed={"default/web": None}, held=rewriting)),
        (False, Feed(changed={"default/web": web, "default/db": None}, held=unknown)),  # back while another file is not stable
        (False, Feed()),
    ]
    for keep in (True, False):
        loop, _ = node_loop(keep_probing_held=keep)
        follower: set[Any] = set()
        expected: set[Any] = set()
        for full, feed in steps:
            assert loop.turn(full, given(feed)).ok
            expected = health_targets(loop.checked, loop.reconciler) | (expected if keep and feed.held else set())
            changes = loop.take_target_changes("test")
            assert changes is not None or not follower  # what changed, also after a whole rebuild (a full turn)
            assert loop.targets == expected == follow_changes(follower, changes, loop.targets)
        assert {t.key.service.vip for t in loop.targets} == {"169.254.11.2", "169.254.11.5"}


@dataclass
class FakeKeepalived:
    """The keepalived writer's surface the loop uses; records what it was asked to render."""

    confd: bool = True
    updates: list[tuple[list[str], list[str]]] = field(default_factory=list)
    last_error: dict[str, Any] = field(default_factory=dict)
    fail: bool = False

    def wanted(self, services: Any) -> bool:
        return any(vs.spec.mode == "keepalived" for vs in services)

    def can_keep(self) -> bool:
        return self.confd

    def announced(self) -> dict[str, str]:
        return {}

    def update(self, services: Any, node: Any = None, endpoints: Any = None, names: Any = None, keep: Any = (), node_addresses: Any = None, serving: Any = None) -> KeepalivedOutcome:
        if self.fail:
            raise OSError("read-only file system")
        self.updates.append(([vs.ref for vs in services], list(keep)))
        return KeepalivedOutcome(changed=True, reloaded=True)


def test_keepalived_runs_after_a_good_sync_only() -> None:
    writer = FakeKeepalived()
    loop, fake = node_loop(keepalived=writer)
    static = make_vs("static", mode="keepalived")
    turn = loop.turn(True, given(Feed(changed={"default/static": static}, keepalived=KeepalivedInput([static]))))
    assert turn.ok and turn.keepalived is not None and turn.keepalived.outcome is not None and turn.keepalived.outcome.changed
    assert writer.updates == [(["default/static"], [])]
    fake.has_ipvs = False  # nobody's VIP to take out: the whole turn fails (one VIP refused is vsop.node.refusals')
    failed = loop.turn(False, given(Feed(changed={"default/web": make_vs(vip="169.254.11.3")}, keepalived=KeepalivedInput([static]))))
    assert not failed.ok and failed.keepalived is None and len(writer.updates) == 1
    fake.has_ipvs = True
    writer.fail = True
    broken = loop.turn(True, given(Feed(keepalived=KeepalivedInput([static]))))
    assert broken.ok and broken.keepalived is not None and broken.keepalived.error == "read-only file system"
    assert writer.last_error["stage"] == "write"


def test_keepalived_single_layout_is_left_alone_while_held_objects_have_no_stand_in() -> None:
    writer = FakeKeepalived(confd=False)
    loop, _ = node_loop(keepalived=writer)
    static = make_vs("static", mode="keepalived")
    held = Held(unknown=True)
    turn = loop.turn(True, given(Feed(changed={"default/static": static}, held=held, keepalived=KeepalivedInput([static], complete=False))))
    assert turn.ok and turn.keepalived is None and writer.updates == []
    loop.turn(True, given(Feed(held=held, keepalived=KeepalivedInput([static], complete=True))))
    assert writer.updates == [(["default/static"], [])]


def test_the_after_hook_sees_the_turn_under_the_lock() -> None:
    loop, _ = node_loop()
    seen: list[Turn] = []
    turn = loop.turn(True, given(Feed(changed={"default/web": make_vs()})), after=lambda t: seen.append(t) or "report")
    assert seen == [turn] and turn.report == "report"


def test_another_writer_makes_the_next_turn_read_the_kernel_and_a_held_lock_skips_it(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    waits: list[str] = []
    loop, _ = node_loop(lock=WriterLock(lock, wait_seconds=0.2, on_wait=waits.append))
    loop.turn(True, given(Feed(changed={"default/web": make_vs()})))
    reads = loop.reconciler.reads
    others: list[bool] = []
    turn = loop.turn(False, lambda held: others.append(held) or Feed())
    assert not turn.full and others == [False] and loop.reconciler.reads == reads  # our own release
    with WriterLock(lock).hold():  # `vsop apply` on the host
        pass
    turn = loop.turn(False, lambda held: others.append(held) or Feed())
    assert turn.full and others == [False, True] and loop.reconciler.reads == reads + 1
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        skipped = loop.turn(False, given(Feed()))
    finally:
        os.close(fd)
    assert skipped.outcome is None and skipped.skipped is not None and not skipped.ok


def test_without_a_lock_no_other_writer_is_seen() -> None:
    with WriterLock(None).hold() as others:
        assert others is False


# --- the schedule ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedTrigger:
    """Stands in for the Trigger: each wait takes the next step of the script (None: the timeout passes)."""

    def __init__(self, clock: Clock, script: list[Any]):
        self.clock = clock
        self.script = script
        self.timeouts: list[float] = []
        self.event = asyncio.Event()
        self.woken: set[str] = set()

    @property
    def pending(self) -> bool:
        return bool(self.woken)

    def wake(self, reason: str) -> None:
        self.woken.add(reason)

    async def wait(self, timeout: float, debounce: float) -> bool:
        self.timeouts.append(timeout)
        if timeout <= 0:
            return False
        step = self.script.pop(0) if self.script else None
        if step is None:
            self.clock.now += timeout
            return False
        self.clock.now += step[0]
        self.woken.add(step[1])
        return True

    def take(self) -> set[str]:
        reasons, self.woken = self.woken, set()
        return reasons


@dataclass
class Draining:
    since: dict[Any, float] = field(default_factory=dict)


@dataclass
class StubReconciler:
    """What the schedule reads of the reconciler."""

    draining: Draining = field(default_factory=Draining)
    replanning: bool = False
    cold: bool = False  # the first sync has parts left
    retry: float | None = None  # a refused VIP's next try, in seconds from now

    def retry_in(self) -> float | None:
        return self.retry

    def begin_aside(self) -> None:  # reads under the lock (vsop.node.aside: the tests below read aside)
        return None


class Driver:
    def __init__(self, stop: asyncio.Event, turns: int, results: list[bool] | None = None):
        self.stop = stop
        self.left = turns
        self.results = results or []
        self.turns: list[tuple[bool, set[str]]] = []
        self.due: float | None = None
        self.flushed = 0
        self.on_turn: Any = None

    async def turn(self, full: bool, reasons: set[str]) -> bool:
        self.turns.append((full, reasons))
        if self.on_turn is not None:
            self.on_turn(len(self.turns))
        self.left -= 1
        if self.left <= 0:
            self.stop.set()
        return self.results.pop(0) if self.results else True

    def probe_targets(self) -> set[Any]:
        return set()

    def probe_changes(self) -> None:
        return None

    def flush_due(self) -> float | None:
        return self.due

    async def flush(self) -> None:
        self.flushed += 1
        self.due = None


async def schedule(turns: int, script: list[Any], results: list[bool] | None = None, reconciler: Any = None,
                   setup: Any = None, **options: Any) -> tuple[Driver, ScriptedTrigger, NodeLoop]:
    clock = Clock()
    loop = NodeLoop(reconciler or StubReconciler(), HealthTracker(), clock=clock, **options)  # type: ignore[arg-type]
    loop.trigger = trigger = ScriptedTrigger(clock, script)  # type: ignore[assignment]
    stop = asyncio.Event()
    driver = Driver(stop, turns, results)
    if setup is not None:
        setup(driver, loop)
    await asyncio.wait_for(loop.run(driver, stop), timeout=10)
    return driver, trigger, loop


@pytest.mark.asyncio
async def test_the_first_turn_and_each_resync_period_are_full_whatever_wakes_the_loop() -> None:
    # A change 10 s after the first turn, another 25 s later (the resync is then due), one more 5 s later.
    driver, trigger, _ = await schedule(4, [(10.0, "change a"), (25.0, "change b"), (5.0, "change c")], resync_seconds=30.0, debounce_seconds=0.0)
    assert [full for full, _ in driver.turns] == [True, False, True, False]
    assert [reasons for _, reasons in driver.turns] == [set(), {"change a"}, {"change b"}, {"change c"}]
    # After the first turn the resync is due 30 s later; after a change, still when the period ends.
    assert trigger.timeouts == [0.0, 30.0, 20.0, 30.0]


@pytest.mark.asyncio
async def test_a_failed_turn_is_retried_as_a_full_turn_after_the_retry_period() -> None:
    failures: list[int] = []

    def retry(count: int) -> float:
        failures.append(count)
        return float(2 ** (count - 1))

    driver, trigger, _ = await schedule(4, [], results=[True, False, False, True], retry=retry, resync_seconds=30.0)
    assert failures == [1, 2] and trigger.timeouts == [0.0, 30.0, 1.0, 2.0]
    assert [full for full, _ in driver.turns] == [True, True, True, True]  # every retry reads the kernel


@pytest.mark.asyncio
async def test_drift_left_to_plan_is_planned_at_once_and_draining_turns_come_every_second() -> None:
    reconciler = StubReconciler(replanning=True)

    def setup(driver: Driver, loop: NodeLoop) -> None:
        def after(count: int) -> None:
            if count == 2:
                reconciler.replanning = False
                reconciler.draining.since[FIRST] = 0.0

        driver.on_turn = after

    driver, trigger, _ = await schedule(3, [], reconciler=reconciler, setup=setup, resync_seconds=30.0)
    assert trigger.timeouts == [0.0, 0.0, DRAIN_SECONDS]
    assert [full for full, _ in driver.turns] == [True, False, False]


@pytest.mark.asyncio
async def test_no_resync_falls_due_during_the_first_sync_in_parts_the_period_counts_from_its_last_part() -> None:
    reconciler = StubReconciler(replanning=True, cold=True)

    def setup(driver: Driver, loop: NodeLoop) -> None:
        def after(count: int) -> None:
            loop.clock.now += 20.0  # each part takes 20 s: the period (30 s) passes during the parts
            if count == 4:
                reconciler.replanning = reconciler.cold = False

        driver.on_turn = after

    driver, trigger, _ = await schedule(5, [], reconciler=reconciler, setup=setup, resync_seconds=30.0)
    assert [full for full, _ in driver.turns] == [True, False, False, False, True]
    # The parts follow each other at once; the resync comes a whole period after the last one.
    assert trigger.timeouts == [0.0, 0.0, 0.0, 0.0, 30.0]


@pytest.mark.asyncio
async def test_a_vip_the_kernel_refused_is_tried_again_when_its_backoff_ends_not_at_the_next_resync() -> None:
    reconciler = StubReconciler(retry=5.0)

    def setup(driver: Driver, loop: NodeLoop) -> None:
        driver.on_turn = lambda count: setattr(reconciler, "retry", 10.0 if count == 1 else None)

    driver, trigger, _ = await schedule(3, [], reconciler=reconciler, setup=setup, resync_seconds=30.0)
    # After the first turn, the refused VIP is due 10 s later; once programmed, the resync period again.
    assert trigger.timeouts == [0.0, 10.0, 20.0]
    assert [full for full, _ in driver.turns] == [True, False, True]


@pytest.mark.asyncio
async def test_a_batched_report_goes_out_when_due_without_a_turn_of_its_own() -> None:
    def setup(driver: Driver, loop: NodeLoop) -> None:
        driver.on_turn = lambda count: setattr(driver, "due", loop.clock() + 1.0) if count == 1 else None

    driver, trigger, _ = await schedule(2, [], setup=setup, resync_seconds=30.0)
    assert driver.flushed == 1 and trigger.timeouts == [0.0, 1.0, 29.0]
    assert [full for full, _ in driver.turns] == [True, True]


# --- memory across restarts (vsop.node.remember) -------------------------------------------------


def test_a_restarted_loop_starts_with_the_verdicts_the_last_one_kept(tmp_path: Path) -> None:
    from vsop.node.remember import RememberFile

    checked = make_vs(healthCheck={"type": "tcp", "failureThreshold": 1})
    before, fake = node_loop(remember=RememberFile(tmp_path / "state.json"))
    before.turn(True, given(Feed(changed={"default/web": checked})))
    before.tracker.record(FIRST, False, Thresholds(1, 1), "refused")
    before.turn(False, given(Feed()))
    assert fake.state.real_servers[FIRST].weight == 0 and (tmp_path / "state.json").exists()
    writes = before.remember.writes  # type: ignore[union-attr]
    before.turn(False, given(Feed()))
    assert before.remember.writes == writes  # type: ignore[union-attr]  # nothing changed: nothing written

    # A new process on the same kernel: the dead real server stays at weight 0 from its first turn.
    kernel_state = fake.state
    after, fake_after = node_loop(kernel_state, remember=RememberFile(tmp_path / "state.json"))
    after.recall(after.remember)  # type: ignore[arg-type]  # what run() does first
    assert after.tracker.out_of_service() == frozenset({FIRST})
    turn = after.turn(True, given(Feed(changed={"default/web": checked})))
    assert turn.ok and fake_after.state.real_servers[FIRST].weight == 0
    assert turn.outcome is not None and turn.outcome.writes == 0  # the kernel already says so: nothing to change


# --- the guard around a turn ----------------------------------------------------------------------


class Raising(Driver):
    """A driver whose turns raise what a failed read raises, as scripted (None: the turn completes)."""

    def __init__(self, stop: asyncio.Event, turns: int, raises: list[BaseException | None]):
        super().__init__(stop, turns)
        self.raises = raises

    async def turn(self, full: bool, reasons: set[str]) -> bool:
        ok = await super().turn(full, reasons)
        error = self.raises.pop(0) if self.raises else None
        if error is not None:
            raise error
        return ok


@pytest.mark.asyncio
async def test_a_turn_that_raises_is_logged_counted_and_retried_with_backoff_and_liveness_waits(caplog: pytest.LogCaptureFixture) -> None:
    import subprocess

    from vsop.adapters.netlink import NetlinkError
    from vsop.node.metrics import NodeMetrics, Probes

    clock = Clock()
    metrics = NodeMetrics()
    loop = NodeLoop(StubReconciler(), HealthTracker(), clock=clock, metrics=metrics, resync_seconds=30.0,  # type: ignore[arg-type]
                    retry=lambda failures: 5.0)
    loop.trigger = trigger = ScriptedTrigger(clock, [])  # type: ignore[assignment]
    loop.probes = probes = Probes(stall_seconds=120.0, clock=clock)
    lived: list[tuple[bool, str]] = []
    stop = asyncio.Event()
    raises: list[BaseException | None] = [NetlinkError(2), subprocess.TimeoutExpired(["ipset", "save"], 10), OSError(28, "No space left on device"),
                                          NetlinkError(16), None, None]
    driver = Raising(stop, 6, raises)
    driver.on_turn = lambda count: lived.append(probes.live())
    await asyncio.wait_for(loop.run(driver, stop), timeout=10)
    # Every turn ran: the loop survived four raising turns, each retried as a full turn, backing
    # off 5, 10, 20 s, then at most the resync period; a completed turn resets the backoff.
    assert len(driver.turns) == 6 and all(full for full, _ in driver.turns)
    assert trigger.timeouts == [0.0, 5.0, 10.0, 20.0, 30.0, 30.0]
    assert loop.failed_turns == 4 and loop.last_failure is None
    assert metrics.registry.get_sample_value("vsop_errors_total", {"source": "turn"}) == 4.0
    failed = [r.getMessage() for r in caplog.records if r.name == "vsop.node.loop" and "Turn failed" in r.getMessage()]
    assert len(failed) == 4 and 'errorType="TimeoutExpired"' in failed[1] and "failedTurns=4" in failed[3]
    # Liveness counts completed turns only: 65 s of raising turns (at the fifth turn's start) is
    # within 120 s; more than 120 s after the last completed turn is not.
    assert lived[:5] == [(True, "ok")] * 5
    probes.clock = lambda: clock.now + 120.5
    assert not probes.live()[0] and "no turn of the reconcile loop completed" in probes.live()[1]


@pytest.mark.asyncio
async def test_a_loop_whose_turns_keep_raising_goes_unlive_after_the_stall_period() -> None:
    from vsop.node.metrics import Probes

    clock = Clock()
    loop = NodeLoop(StubReconciler(), HealthTracker(), clock=clock, resync_seconds=30.0, retry=lambda failures: 1.0)  # type: ignore[arg-type]
    loop.trigger = ScriptedTrigger(clock, [])  # type: ignore[assignment]
    loop.probes = probes = Probes(stall_seconds=120.0, clock=clock)
    stop = asyncio.Event()
    lived: list[bool] = []
    driver = Raising(stop, 10, [RuntimeError("ipset save: unreadable output")] * 10)
    driver.on_turn = lambda count: lived.append(probes.live()[0])
    await asyncio.wait_for(loop.run(driver, stop), timeout=10)
    # Backoff 1, 2, 4, 8, 16, then 30 s: a turn starts at 0, 1, 3, 7, 15, 31, 61, 91, 121, 151 s.
    assert lived == [True] * 8 + [False, False]
    assert loop.failed_turns == 10 and loop.last_failure == "RuntimeError: ipset save: unreadable output"
