"""The host agent's status file kept per entry (vsop.host.status_file) is the document built from scratch.

Any sequence of folder changes (writes, invalid contents, duplicates, conflicts on a VIP,
removals), polls, rechecks, incremental and full syncs and health results: after every
step the incremental text equals `json.dumps(agent.status(), separators=(",", ":"))`, byte
for byte. And a write after one change serializes only that change's entries (counted).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SEED
from vsop.adapters.conntrack import FakeConntrack
from vsop.core.desired import Node
from vsop.core.health import Thresholds
from vsop.adapters.kernel import fake_kernel
from vsop.core.state import RealServerKey, ServiceKey
from vsop.host.agent import AgentConfig, HostAgent
from vsop.host.status_file import Entries, in_order

FILES = ["a.yaml", "b.yaml", "sub/c.yaml", "sub-x.yaml"]
CHECK = {"type": "tcp", "intervalSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 2}


def document(name: str, vip: int, checked: bool = False) -> dict[str, Any]:
    data = json.loads(json.dumps(SEED))
    data["metadata"]["name"] = name
    data["spec"]["vip"] = f"169.254.11.{vip}"  # two objects on one VIP and port: a conflict
    if checked:
        data["spec"]["healthCheck"] = CHECK
    return data


valid = st.lists(st.tuples(st.sampled_from(["web", "api", "db"]), st.integers(1, 3), st.booleans()), min_size=1, max_size=2).map(
    lambda docs: yaml.safe_dump_all([document(*doc) for doc in docs])
)
content = st.one_of(
    valid,
    valid,
    valid,
    st.sampled_from([
        "kind: VirtualService\nmetadata: {name: web}\nspec: {vip: nonsense}\n",  # invalid, names web: held
        "not: a virtual service\n",
    ]),
)
step = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(FILES), content, st.sampled_from(["pending", "settled", "synced"])),
    st.tuples(st.just("remove"), st.sampled_from(FILES)),
    st.tuples(st.just("wait"), st.sampled_from([0.5, 2.0])),
    st.tuples(st.just("recheck"), st.just(1.0)),
    st.tuples(st.just("sync"), st.booleans()),  # full or not
    st.tuples(st.just("health"), st.integers(0, 7), st.booleans()),
    st.tuples(st.just("forget"), st.just(0)),  # the checker dropping real servers no longer checked
)


def agent_for(folder: Path, now: list[float]) -> HostAgent:
    kernel, _ = fake_kernel()
    config = AgentConfig(folder, Node("n"), status_file=None, poll_seconds=1.0)
    agent = HostAgent(kernel, config, FakeConntrack())
    agent.source.clock = lambda: now[0]
    return agent


def settle(agent: HostAgent, now: list[float]) -> None:
    """The folder's changed files looked at, then taken a settle period later."""
    agent.poll()
    now[0] += 1.0
    agent.poll()


def from_scratch(agent: HostAgent) -> str:
    return json.dumps(agent.status(), separators=(",", ":"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=8, max_size=30))
def test_the_incremental_status_is_the_one_built_from_scratch(steps: list[Any]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="vsop-status-"))
    try:
        (folder / "sub").mkdir()
        now = [100.0]
        agent = agent_for(folder, now)
        mtime = 1_000_000_000
        for action in steps:
            kind = action[0]
            if kind == "write":
                path = folder / action[1]
                path.write_text(action[2])
                mtime += 1  # a distinct mtime per write, as a real clock would give
                os.utime(path, ns=(mtime * 10**9, mtime * 10**9))
                if action[3] == "pending":
                    agent.poll()
                else:
                    settle(agent, now)
                if action[3] == "synced":
                    agent.sync_once(full=False, status=False)
            elif kind == "remove":
                (folder / action[1]).unlink(missing_ok=True)
                agent.poll()
            elif kind == "wait":
                now[0] += action[1]
                agent.poll()
            elif kind == "recheck":
                now[0] += action[1]
                with agent.source_guard:
                    agent.source.recheck()
            elif kind == "sync":
                agent.sync_once(full=action[1], status=False)
            elif kind == "health":
                targets = sorted(agent.targets, key=lambda t: t.key)
                if targets:
                    target = targets[action[1] % len(targets)]
                    agent.tracker.record(target.key, action[2], Thresholds(), "" if action[2] else "connection refused")
            elif kind == "forget":
                agent.tracker.forget_except(t.key for t in agent.targets)
            assert agent.status_text() == from_scratch(agent), action
    finally:
        shutil.rmtree(folder)


def test_a_write_after_one_change_serializes_only_that_change(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    now = [100.0]
    agent = agent_for(folder, now)
    for index in range(40):
        (folder / f"s{index}.yaml").write_text(yaml.safe_dump(document(f"s{index}", index + 1, checked=index < 10)))
    settle(agent, now)
    assert agent.sync_once(full=True, status=False) is not None
    doc = agent.status_doc
    first = agent.status_text()
    assert first == from_scratch(agent)
    # 40 files, 40 objects, 40 programmed, 20 health targets (10 checked objects x 2 real servers)
    assert doc.serialized == 40 + 40 + 40 + 20

    def cost() -> int:
        before = doc.serialized
        assert agent.status_text() == from_scratch(agent)
        return doc.serialized - before

    assert cost() == 0  # nothing changed: a join of cached strings

    # One file rewritten (its object moves to a free VIP): its file entry, its programmed
    # entry; its place among the objects is the same. Not the 39 others.
    (folder / "s20.yaml").write_text(yaml.safe_dump(document("s20", 200)))
    os.utime(folder / "s20.yaml", ns=(2 * 10**18, 2 * 10**18))
    settle(agent, now)
    outcome = agent.sync_once(full=False, status=False)
    assert outcome is not None and not outcome.full and outcome.writes > 0
    assert cost() == 2

    # A new file: its file entry, its object, its verdict.
    (folder / "t.yaml").write_text(yaml.safe_dump(document("t", 201)))
    settle(agent, now)
    assert not agent.sync_once(full=False, status=False).full
    assert cost() == 3

    # One health result: that real server's entry only.
    target = sorted(agent.targets, key=lambda t: t.key)[3]
    agent.tracker.record(target.key, False, Thresholds(), "connection refused")
    assert cost() == 1
    agent.tracker.record(target.key, True, Thresholds())  # healthy again: failures back to 0
    assert cost() == 1
    agent.tracker.record(target.key, True, Thresholds())  # nothing visible changed
    assert cost() == 0

    # A full resync that finds nothing changed plans nothing, and re-serializes nothing.
    agent.sync_once(full=True, status=False)  # (the first after changes in place may plan, and look at every verdict)
    cost()
    outcome = agent.sync_once(full=True, status=False)
    assert outcome is not None and outcome.full and outcome.skipped
    assert cost() == 0


def test_a_tracker_keeps_changes_only_when_asked() -> None:
    """The in-cluster agent's tracker is never asked for its changes: it must not collect them."""
    from vsop.core.health import HealthTracker
    from vsop.core.state import RealServerKey, ServiceKey

    key = RealServerKey(ServiceKey("tcp", "169.254.11.2", 80), "192.168.2.111", 8080)
    quiet, tracking = HealthTracker(), HealthTracker(track_changes=True)
    for tracker in (quiet, tracking):
        tracker.record(key, False, Thresholds(), "connection refused")
        tracker.forget_except(())
    assert quiet.take_changed() == set() and tracking.take_changed() == {key}


keys = st.builds(
    RealServerKey,
    st.builds(ServiceKey, st.sampled_from(["tcp", "udp", "sctp"]), st.sampled_from(["169.254.11.2", "169.254.2.1", "fd00::1", "10.0.0.10"]),
              st.integers(1, 65535)),
    st.sampled_from(["192.168.2.222", "192.168.10.1", "fd00::2", "10.0.0.9"]),
    st.integers(1, 65535),
)


@given(st.lists(keys, max_size=30))
def test_health_entries_are_kept_in_the_order_of_their_real_servers(found: list[RealServerKey]) -> None:
    """The health section is kept by a flat tuple (compared in C): it sorts as the keys do, as the
    document built from scratch sorts its targets."""
    assert sorted(found, key=in_order) == sorted(found)
    assert all((in_order(a) == in_order(b)) == (a == b) for a in found for b in found)


@given(st.lists(st.lists(st.tuples(st.integers(0, 40), st.one_of(st.none(), st.text(max_size=3))), max_size=60), max_size=8))
def test_entries_put_in_batches_of_any_size_are_the_sorted_join(batches: list[list[tuple[int, str | None]]]) -> None:
    """Entries gathered between two texts, a few (bisected into place) or many (merged and sorted),
    give the join of the entries in key order, the last put of a key winning."""
    entries, model = Entries(), {}
    for batch in batches:
        for key, text in batch:
            entries.put(key, text)
            if text is None:
                model.pop(key, None)
            else:
                model[key] = text
        assert entries.text() == ",".join(model[key] for key in sorted(model))
        assert len(entries) == len(model)

