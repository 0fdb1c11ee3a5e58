"""The health state machine and the draining policy, with a fake clock."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import make_vs, recording_meanwhile
from vsop.core.desired import Node, desired_state
from vsop.core.draining import Draining, keep_drains, with_draining
from vsop.core.health import Health, HealthTracker, Thresholds
from vsop.core.memory import apply_ops
from vsop.core.plan import plan
from vsop.core.state import KernelState, RealServerKey, ServiceKey

WEB = ServiceKey("tcp", "169.254.11.2", 80)
A = RealServerKey(WEB, "192.168.2.111", 8080)
B = RealServerKey(WEB, "192.168.2.222", 8080)


def test_failures_take_out_after_threshold_and_successes_bring_back() -> None:
    tracker = HealthTracker()
    t = Thresholds(failure=3, success=2)
    assert [tracker.record(A, False, t, "refused") for _ in range(3)] == [False, False, True]
    assert tracker.out_of_service() == {A} and tracker.states[A].last_error == "refused"
    assert tracker.record(A, True, t) is False  # one success is not enough
    assert tracker.record(A, False, t) is False  # and a failure resets the count
    assert [tracker.record(A, True, t) for _ in range(2)] == [False, True]
    assert tracker.out_of_service() == frozenset()


def test_flapping_below_threshold_never_takes_out() -> None:
    tracker = HealthTracker()
    for ok in [False, True] * 10:
        assert tracker.record(B, ok, Thresholds(failure=2)) is False
    assert tracker.is_healthy(B)


def test_forget_drops_removed_real_servers() -> None:
    tracker = HealthTracker()
    tracker.record(A, False, Thresholds(failure=1))
    tracker.forget_except([B])
    assert tracker.out_of_service() == frozenset()


def test_readers_in_another_thread_see_a_snapshot_not_states_changing_under_them() -> None:
    tracker = recording_meanwhile({A: Health(healthy=False, failures=2), B: Health()}, RealServerKey(WEB, "192.168.2.233", 8080))
    assert tracker.out_of_service() == {A}
    assert tracker.snapshot() == {A: Health(healthy=False, failures=2), B: Health()} and len(tracker.states) == 2


KEYS = [RealServerKey(WEB, f"192.168.2.{n}", 8080) for n in range(1, 5)]
STEPS = st.one_of(
    st.tuples(st.just("record"), st.sampled_from(KEYS), st.booleans(), st.integers(1, 3), st.integers(1, 3)),
    st.tuples(st.just("restore"), st.sampled_from(KEYS), st.booleans(), st.integers(0, 3)),
    st.tuples(st.just("forget"), st.lists(st.sampled_from(KEYS), max_size=2)),
    st.tuples(st.just("forget_except"), st.lists(st.sampled_from(KEYS), max_size=3)),
)


@given(st.lists(STEPS, max_size=30))
def test_what_a_turn_reads_is_kept_in_step_with_every_state(steps: list[tuple]) -> None:
    """`out_of_service` and `noted` (read at every turn) are kept as results come, not derived from
    all states: after any run of records, restores and forgets, they equal what all states say."""
    tracker = HealthTracker(track_changes=True)
    for step in steps:
        if step[0] == "record":
            _, key, ok, failure, success = step
            tracker.record(key, ok, Thresholds(failure=failure, success=success), "" if ok else "refused")
        elif step[0] == "restore":
            _, key, healthy, failures = step
            tracker.restore(key, Health(healthy=healthy, failures=failures))
        else:
            getattr(tracker, step[0])(step[1])
        states = tracker.snapshot()
        assert tracker.out_of_service() == {key for key, state in states.items() if not state.healthy}
        assert tracker.noted() == {key: state for key, state in states.items() if not state.healthy or state.failures}


def test_a_restore_never_overrides_results_counted_since_the_start() -> None:
    tracker = HealthTracker()
    tracker.record(A, True, Thresholds())
    tracker.restore(A, Health(healthy=False, failures=3))
    tracker.restore(B, Health(healthy=False, failures=3))
    assert tracker.out_of_service() == {B} and tracker.is_healthy(A)


def programmed(services) -> KernelState:
    desired = desired_state(services, Node("n")).state
    return apply_ops(KernelState(), plan(desired, KernelState()).ops)


def with_connections(state: KernelState, key: RealServerKey, active: int) -> KernelState:
    return replace(state, real_servers={**state.real_servers, key: replace(state.real_servers[key], active_connections=active)})


def test_removed_real_server_drains_then_goes_when_idle() -> None:
    observed = with_connections(programmed([make_vs()]), B, 1)
    desired = desired_state([make_vs(backends=[{"address": "192.168.2.111"}])], Node("n")).state
    draining = Draining()
    first = with_draining(desired, observed, draining, now=100.0)
    assert first.real_servers[B].weight == 0 and draining.keys() == {B}
    assert [op.kind for op in plan(first, observed).ops] == ["realserver.edit"]  # weight 0, not delete
    observed = apply_ops(observed, plan(first, observed).ops)
    still = with_draining(desired, with_connections(observed, B, 1), draining, now=110.0)
    assert still.real_servers[B].weight == 0
    idle = with_draining(desired, with_connections(observed, B, 0), draining, now=111.0)
    assert B not in idle.real_servers and draining.keys() == frozenset()
    assert [op.kind for op in plan(idle, observed).ops] == ["realserver.delete"]


def test_a_leaving_real_server_of_a_service_whose_counters_were_not_read_drains_even_when_the_cache_says_idle() -> None:
    observed = with_connections(programmed([make_vs()]), B, 0)
    desired = desired_state([make_vs(backends=[{"address": "192.168.2.111"}])], Node("n")).state
    draining = Draining()
    unread = with_draining(desired, observed, draining, now=100.0, uncounted=frozenset({WEB}))
    assert unread.real_servers[B].weight == 0 and draining.keys() == {B}
    counted = with_draining(desired, observed, draining, now=101.0)  # counters read again: idle, it goes
    assert B not in counted.real_servers and draining.keys() == frozenset()


def test_grace_period_ends_draining_even_with_connections() -> None:
    observed = with_connections(programmed([make_vs()]), B, 5)
    desired = desired_state([make_vs(backends=[{"address": "192.168.2.111"}])], Node("n")).state
    draining = Draining()
    with_draining(desired, observed, draining, now=0.0, grace={WEB: 10.0})
    assert B in with_draining(desired, observed, draining, now=9.9, grace={WEB: 10.0}).real_servers
    assert B not in with_draining(desired, observed, draining, now=10.0, grace={WEB: 10.0}).real_servers


def test_udp_and_whole_services_go_at_once() -> None:
    udp = make_vs(ports=[{"port": 53, "protocol": "UDP"}])
    observed = programmed([udp])
    udp_key = next(k for k in observed.real_servers if k.address == "192.168.2.222")
    observed = with_connections(observed, udp_key, 3)
    desired = desired_state([make_vs(ports=[{"port": 53, "protocol": "UDP"}], backends=[{"address": "192.168.2.111"}])], Node("n")).state
    assert udp_key not in with_draining(desired, observed, Draining(), now=0.0).real_servers
    gone = with_draining(KernelState(), with_connections(programmed([make_vs()]), B, 4), Draining(), now=0.0)
    assert gone.real_servers == {}


def test_a_backend_that_returns_stops_draining() -> None:
    observed = with_connections(programmed([make_vs()]), B, 1)
    removed = desired_state([make_vs(backends=[{"address": "192.168.2.111"}])], Node("n")).state
    draining = Draining()
    with_draining(removed, observed, draining, now=0.0)
    back = desired_state([make_vs()], Node("n")).state
    assert with_draining(back, observed, draining, now=1.0).real_servers[B].weight == 1
    assert draining.keys() == frozenset()


def test_another_writers_drains_are_kept_and_no_drain_starts() -> None:
    """`vsop apply` keeps what the agent drains (until its grace ends) and starts no drain of its own:
    it cannot wait for one, and a drain nobody finishes would hold a real server at weight 0 forever."""
    observed = with_connections(with_connections(programmed([make_vs()]), A, 2), B, 3)
    neither = replace(desired_state([make_vs()], Node("n")).state, real_servers={})  # the service stays, both real servers left
    kept = keep_drains(neither, observed, {B: 100.0}, now=105.0, grace={WEB: 10.0})
    assert kept.real_servers == {B: replace(observed.real_servers[B], weight=0)}  # A left now: deleted, not drained
    assert keep_drains(neither, observed, {B: 100.0}, now=110.0, grace={WEB: 10.0}).real_servers == {}  # grace over
    idle = with_connections(observed, B, 0)
    assert keep_drains(neither, idle, {B: 100.0}, now=105.0, grace={WEB: 10.0}).real_servers == {}  # drained
    back = desired_state([make_vs()], Node("n")).state
    assert keep_drains(back, observed, {B: 100.0}, now=105.0).real_servers[B].weight == 1  # it came back
