"""Health verdicts and draining clocks survive an agent restart (core.remembered, node.remember)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from vsop.core.health import Health, HealthTracker, Thresholds
from vsop.core.remembered import decode, encode
from vsop.core.state import RealServerKey, ServiceKey
from vsop.node.remember import RememberFile

WEB = ServiceKey("tcp", "169.254.11.2", 80)
DEAD = RealServerKey(WEB, "10.0.0.1", 8080)
LIVE = RealServerKey(WEB, "10.0.0.2", 8080)
V6 = RealServerKey(ServiceKey("udp", "fd00::2", 53), "fd00::1:2", 5353)


def test_a_dead_backend_is_remembered_dead_with_its_counters(tmp_path: Path) -> None:
    tracker = HealthTracker()
    for _ in range(3):
        tracker.record(DEAD, False, Thresholds(failure=2), error="connection refused")
    tracker.record(LIVE, True, Thresholds())
    tracker.record(V6, False, Thresholds(failure=2), error="timed out")  # one failure: in service, counting
    kept = RememberFile(tmp_path / "state.json")
    assert kept.save(tracker.noted(), {}, wall_now=1000.0, monotonic_now=50.0)

    restarted = HealthTracker()
    remembered = RememberFile(tmp_path / "state.json").load(wall_now=1010.0, monotonic_now=3.0)
    for key, state in remembered.health.items():
        restarted.restore(key, state)
    assert restarted.out_of_service() == frozenset({DEAD})
    assert remembered.health[DEAD] == Health(healthy=False, successes=0, failures=3, last_error="connection refused")
    assert remembered.health[V6] == Health(healthy=True, successes=0, failures=1, last_error="timed out")
    # in service with nothing counted against it: not kept, a restart starts it so anyway
    assert set(remembered.health) == {DEAD, V6}
    # one good check brings it back (successThreshold 1), as before the restart
    assert restarted.record(DEAD, True, Thresholds()) and restarted.out_of_service() == frozenset()


def test_a_drain_keeps_its_age_across_a_restart(tmp_path: Path) -> None:
    kept = RememberFile(tmp_path / "state.json")
    kept.save({}, {DEAD: 40.0}, wall_now=1000.0, monotonic_now=50.0)  # draining for 10 s
    remembered = RememberFile(tmp_path / "state.json").load(wall_now=1005.0, monotonic_now=2.0)  # 5 s later, new clock
    assert remembered.draining_since == {DEAD: 2.0 - 15.0}


def test_an_unchanged_node_writes_nothing_and_the_file_is_root_only(tmp_path: Path) -> None:
    kept = RememberFile(tmp_path / "run" / "state.json")
    states = {DEAD: Health(False, 0, 2, "timeout"), V6: Health()}
    assert kept.save(states, {LIVE: 10.2}, 1000.0, 20.0)
    assert not kept.save(dict(states), {LIVE: 10.4}, 1000.0, 20.0)  # the same second: no write
    assert kept.writes == 1
    assert stat.S_IMODE(os.stat(tmp_path / "run" / "state.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o700
    reloaded = RememberFile(tmp_path / "run" / "state.json")
    reloaded.load(1000.0, 20.0)
    assert not reloaded.save(states, {LIVE: 10.0}, 1000.0, 20.0)  # what it read counts as written


def test_a_missing_or_broken_file_is_an_empty_memory(tmp_path: Path) -> None:
    assert RememberFile(tmp_path / "none.json").load(0.0, 0.0).health == {}
    (tmp_path / "bad.json").write_text("{not json")
    broken = RememberFile(tmp_path / "bad.json").load(0.0, 0.0)
    assert broken.health == {} and broken.skipped == 1


def test_malformed_records_are_skipped_and_counted_the_rest_kept() -> None:
    document = encode({DEAD: Health(False, 0, 2, "x"), V6: Health(True, 0, 1, "y")}, {LIVE: 5.0})
    document["health"].append({"protocol": "icmp", "vip": "1.2.3.4", "port": 1, "address": "a", "targetPort": 1, "healthy": False, "successes": 0, "failures": 1})
    document["health"].append({"protocol": "tcp", "vip": "1.2.3.4", "port": 1, "address": "a", "targetPort": 1, "healthy": "no", "successes": 0, "failures": 1})
    document["draining"].append({"since": "yesterday"})
    document["health"].append("garbage")
    remembered = decode(json.loads(json.dumps(document)))
    assert remembered.health == {DEAD: Health(False, 0, 2, "x"), V6: Health(True, 0, 1, "y")}
    assert remembered.draining_since == {LIVE: 5.0}
    assert remembered.skipped == 4
    assert decode({"format": 99}).health == {} and decode({"format": 99}).skipped == 1
