"""The controller against the API emulator: conflicts, conditions summed over nodes, Events; and with agents."""

from __future__ import annotations

from typing import Any

import kmock
import pytest

from tests.kube.conftest import NODES, REPORTS, VS, Cluster, make_agent, make_controller, resync, run_controller, running, until
from tests.kube.test_agent import WEB, real_servers
from vsop.kube.controller import NODE_INDEX, REPORT_INDEX, VS_INDEX, node_facts, observe

pytestmark = pytest.mark.asyncio


def conditions(cluster: Cluster, name: str, namespace: str = "default") -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in cluster.status(namespace, name).get("conditions") or ()}


def condition(cluster: Cluster, name: str, kind: str, namespace: str = "default") -> tuple[str, str] | None:
    found = conditions(cluster, name, namespace).get(kind)
    return (found["status"], found["reason"]) if found else None


async def report(cluster: Cluster, name: str, node: str, programmed: bool = True, total: int = 2, healthy: int = 2,
                 message: str = "", generation: int = 1) -> None:
    """What an agent on `node` would write in its NodeReport."""
    entry = {"programmed": programmed, "backends": {"total": total, "healthy": healthy}, "message": message, "observedGeneration": generation}
    patch = {"status": {"virtualServices": {f"default/{name}": entry}}}
    if cluster.report(node) or (kmock.resource(REPORTS), None, node) in cluster.server.objects:
        await cluster.patch(REPORTS, None, node, patch)
    else:
        await cluster.create(REPORTS, {"apiVersion": "vsop.dev/v1alpha1", "kind": "NodeReport", "metadata": {"name": node}, **patch})


async def test_conflict_older_wins_whichever_arrives_first(cluster: Cluster) -> None:
    await cluster.node("node-a")
    # The newer object is there first; the older one (an earlier creationTimestamp) shows up later.
    await cluster.vs("newer", WEB, created="2024-05-01T10:00:00Z")
    async with run_controller(cluster) as (controller, writer):
        await until(lambda: condition(cluster, "newer", "Conflict") == ("False", "NoConflict"), "no conflict while alone")
        await cluster.create(VS, {"apiVersion": "vsop.dev/v1alpha1", "kind": "VirtualService",
                                  "metadata": {"name": "older", "namespace": "team-b"}, "spec": WEB}, created="2024-04-01T10:00:00Z")
        await until(lambda: condition(cluster, "newer", "Conflict") == ("True", "Conflict"), "the newer one loses")
        loser = conditions(cluster, "newer")
        assert loser["Conflict"]["message"] == (
            "169.254.11.2:80/TCP is already claimed by VirtualService team-b/older, which keeps it: it was created first (2024-04-01T10:00:00Z)"
        )
        assert (loser["Ready"]["status"], loser["Ready"]["reason"]) == ("False", "Conflict")
        assert (loser["Programmed"]["status"], loser["Programmed"]["reason"]) == ("False", "Conflict")
        await until(lambda: condition(cluster, "older", "Conflict", "team-b") == ("False", "NoConflict"), "the older one keeps it")
        await until(lambda: [e for e in cluster.events("newer") if e["reason"] == "Conflict"], "the Conflict event")
        [event] = [e for e in cluster.events("newer") if e["reason"] == "Conflict"]
        assert event["type"] == "Warning" and "team-b/older" in event["message"]

        # The winner goes away: the conflict is recomputed.
        await cluster.delete(VS, "team-b", "older")
        await until(lambda: condition(cluster, "newer", "Conflict") == ("False", "NoConflict"), "conflict cleared")


async def test_conflict_in_creation_order(cluster: Cluster) -> None:
    await cluster.node("node-a")
    async with run_controller(cluster) as (controller, writer):
        await cluster.vs("first", WEB)
        await cluster.vs("second", {**WEB, "ports": [{"port": 80}, {"port": 443}]})
        await until(lambda: condition(cluster, "second", "Conflict") == ("True", "Conflict"), "the second one loses")
        await until(lambda: condition(cluster, "first", "Conflict") == ("False", "NoConflict"), "the first one keeps it")
        # Not the same port: no conflict.
        await cluster.vs("third", {**WEB, "ports": [{"port": 8443}]})
        await until(lambda: condition(cluster, "third", "Conflict") == ("False", "NoConflict"), "third is fine")


async def test_conditions_sum_up_the_nodes(cluster: Cluster) -> None:
    for node in ("node-a", "node-b", "node-c"):
        await cluster.node(node, labels={"vsop.dev/lb": "true"})
    await cluster.node("node-d")  # not selected
    await cluster.node("node-e", labels={"vsop.dev/lb": "true"}, ready=False)  # not expected to report
    await cluster.vs("web", {**WEB, "nodeSelector": {"matchLabels": {"vsop.dev/lb": "true"}}})
    async with run_controller(cluster) as (controller, writer):
        await until(lambda: condition(cluster, "web", "Programmed") == ("False", "Pending"), "pending before any report")
        assert conditions(cluster, "web")["Programmed"]["message"] == "no agent has reported yet; waiting for node-a, node-b, node-c"
        assert condition(cluster, "web", "Ready") == ("False", "Pending")

        # node-c's agent runs (it has a report), at an old generation: expected, but not counted as programmed.
        # Each report is its own object, which the controller's kopf indexes in its own worker: reports
        # written one after the other may be seen in another order. Seen before node-c's, node-a's and
        # node-b's would make "programmed on every selected node" for a turn, and a Programmed Event more
        # than the one this test counts. So node-c's report is seen first, then the others (in any order).
        await report(cluster, "web", "node-c", generation=0)
        await until(lambda: conditions(cluster, "web")["Programmed"]["message"] == "programmed on 0 of 1 node(s); waiting for node-c",
                    "node-c's report seen")
        await report(cluster, "web", "node-a")
        await report(cluster, "web", "node-b", healthy=1)
        await until(lambda: cluster.status("default", "web").get("backends") == {"total": 2, "healthy": 1}, "backends summed up")
        await until(lambda: conditions(cluster, "web")["Programmed"]["message"] == "programmed on 2 of 3 node(s); waiting for node-c", "node-c waited for")
        status = cluster.status("default", "web")
        assert status["observedGeneration"] == 1
        found = conditions(cluster, "web")
        assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("True", "Ready")
        assert found["Ready"]["message"] == "1 of 2 backend(s) healthy; programmed on 2 of 3 node(s)"
        assert found["Programmed"]["message"] == "programmed on 2 of 3 node(s); waiting for node-c"
        assert all(c["observedGeneration"] == 1 and c["lastTransitionTime"] for c in found.values())
        ready_since = found["Ready"]["lastTransitionTime"]

        await report(cluster, "web", "node-c", programmed=False, total=0, healthy=0,
                     message="VIPRefused: VIP 169.254.11.2 is already an address of node node-c")
        await until(lambda: condition(cluster, "web", "Degraded") == ("True", "VIPRefused"), "degraded by the refusing node")
        found = conditions(cluster, "web")
        assert (found["Programmed"]["status"], found["Programmed"]["reason"]) == ("False", "NotProgrammed")
        assert "failed on node-c: VIPRefused: VIP 169.254.11.2" in found["Programmed"]["message"]
        assert found["Ready"]["lastTransitionTime"] == ready_since  # still True: the time of the last change stays
        await until(lambda: [e for e in cluster.events("web") if e["reason"] == "VIPRefused"], "the Event")

        await report(cluster, "web", "node-c")
        await until(lambda: condition(cluster, "web", "Programmed") == ("True", "Programmed"), "programmed everywhere")
        assert conditions(cluster, "web")["Programmed"]["message"] == "programmed on every selected node"
        assert condition(cluster, "web", "Degraded") == ("False", "AsExpected")
        await until(lambda: {"Programmed", "Recovered"} <= {e["reason"] for e in cluster.events("web")}, "the Events")
        [programmed] = [e for e in cluster.events("web") if e["reason"] == "Programmed"]
        assert programmed["type"] == "Normal" and programmed["message"] == "programmed on every selected node"

        # Nothing changes: nothing is written, no Event repeats.
        patches, posted = len(writer.patches), len(writer.posted)
        await resync(controller)
        await resync(controller)
        assert (len(writer.patches), len(writer.posted)) == (patches, posted), (writer.patches[patches:], writer.posted)

        # The report of a Node that is gone is deleted.
        await report(cluster, "web", "node-x")
        await until(lambda: not cluster.report("node-x"), "the stale report deleted")
        assert all(cluster.report(node) for node in ("node-a", "node-b", "node-c"))


async def test_no_ready_backends_and_invalid_spec_are_told(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await cluster.vs("empty", {"vip": "169.254.11.7", "ports": [{"port": 80}], "serviceRef": {"name": "nginx"}})
    await cluster.vs("bad", {**WEB, "vip": "169.254.11.8", "scheduler": "nope"})
    async with run_controller(cluster) as (controller, writer):
        await report(cluster, "empty", "node-a", total=0, healthy=0)
        await until(lambda: condition(cluster, "empty", "Ready") == ("False", "NoReadyBackends"), "not ready without backends")
        assert condition(cluster, "empty", "Degraded") == ("True", "NoReadyBackends")
        assert condition(cluster, "empty", "Programmed") == ("True", "Programmed")
        await until(lambda: [e for e in cluster.events("empty") if e["reason"] == "NoReadyBackends"], "the Event")

        await until(lambda: condition(cluster, "bad", "Ready") == ("False", "InvalidSpec"), "invalid told")
        message = conditions(cluster, "bad")["Ready"]["message"]
        assert message.startswith("spec is invalid: spec.scheduler: must be one of")
        await until(lambda: [e for e in cluster.events("bad") if e["reason"] == "InvalidSpec"], "the Event")


async def test_agents_and_controller_together(cluster: Cluster) -> None:
    await cluster.node("node-a", addresses=("10.0.0.11",))
    await cluster.node("node-b", addresses=("10.0.0.12",))
    await cluster.vs("web", WEB)
    await cluster.vs("clash", WEB, namespace="team-b")
    controller, _ = make_controller(cluster)
    agent_a, fake_a, _ = make_agent(cluster, "node-a")
    agent_b, fake_b, _ = make_agent(cluster, "node-b")
    async with running(controller, agent_a, agent_b):
        await until(lambda: condition(cluster, "web", "Programmed") == ("True", "Programmed"), "web programmed on both")
        assert condition(cluster, "web", "Ready") == ("True", "Ready")
        assert conditions(cluster, "web")["Ready"]["message"] == "2 of 2 backend(s) healthy; programmed on every selected node"
        assert len(real_servers(fake_a)) == len(real_servers(fake_b)) == 2
        await until(lambda: condition(cluster, "clash", "Conflict", "team-b") == ("True", "Conflict"), "the loser told")
        assert all("team-b/clash" not in cluster.report(node) for node in ("node-a", "node-b"))  # no agent reports a conflict loser
        assert "nodes" not in cluster.status("default", "web")

        # The winner goes: every agent and the controller agree on the new owner.
        await cluster.delete(VS, "default", "web")
        await until(lambda: condition(cluster, "clash", "Ready", "team-b") == ("True", "Ready"), "the other one takes over")
        await cluster.patch(NODES, None, "node-b", {"metadata": {"labels": {"unrelated": "x"}}})
        await until(lambda: all("team-b/clash" in cluster.report(node) for node in ("node-a", "node-b")), "both nodes report")


async def test_a_recreated_object_gets_its_own_status(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await cluster.vs("web", WEB)
    async with run_controller(cluster) as (controller, writer):
        await until(lambda: condition(cluster, "web", "Programmed") == ("False", "Pending"), "first status")
        await cluster.delete(VS, "default", "web")
        await cluster.vs("web", WEB)
        await until(lambda: condition(cluster, "web", "Programmed") == ("False", "Pending"), "the new object's status")


async def test_upgrade_removes_the_status_nodes_map_older_agents_wrote(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await cluster.vs("web", WEB)
    old_entry = {"programmed": True, "backends": {"total": 2, "healthy": 2}, "message": "", "observedGeneration": 1}
    await cluster.patch(VS, "default", "web", {"status": {"nodes": {"node-a": old_entry, "node-b": old_entry}}}, sub="status")
    async with run_controller(cluster) as (controller, writer):
        await until(lambda: "nodes" not in cluster.status("default", "web"), "status.nodes removed")
        # Until node-a's agent reports in a NodeReport, the controller waits for it: old keys are not trusted.
        assert condition(cluster, "web", "Programmed") == ("False", "Pending")
        await report(cluster, "web", "node-a")
        await until(lambda: condition(cluster, "web", "Programmed") == ("True", "Programmed"), "programmed from the report")
        removals = [patch for _, patch in writer.patches if "nodes" in patch]
        assert removals == [removals[0]] and removals[0]["nodes"] is None  # once


async def test_a_turn_that_sees_its_own_removal_late_does_not_repeat_it(cluster: Cluster) -> None:
    """The index lags the controller's own writes: a turn woken by another change before the watch
    brings the patched object still sees status.nodes (above, kmock's watch replaying the object as
    listed woke one about 3 runs in 8). Here the index is held at the object as it was before the
    first turn, so every turn sees it stale. kopf keeps the indexed value when a new event's is
    equal, so the record stays the one whose map was removed until the object really changes."""
    await cluster.node("node-a")
    await cluster.vs("web", WEB)
    old_entry = {"programmed": True, "backends": {"total": 2, "healthy": 2}, "message": "", "observedGeneration": 1}
    stale = await cluster.patch(VS, "default", "web", {"status": {"nodes": {"node-a": old_entry}}}, sub="status")
    controller, writer = make_controller(cluster)
    controller._indexes = {
        VS_INDEX: {("default", "web"): [observe(stale)]},
        NODE_INDEX: {"node-a": [node_facts(cluster.get(NODES, None, "node-a"))]},
        REPORT_INDEX: {},
    }
    controller.gate.listed = True

    def removals() -> list[dict[str, Any]]:
        return [patch for _, patch in writer.patches if "nodes" in patch]

    first = await controller.reconcile_once(periodic=True)  # the first turn after the listing
    assert first.patched == [("default", "web")] and len(removals()) == 1
    assert "nodes" not in cluster.status("default", "web")
    await controller.reconcile_once()  # woken by some other change: the stale map is not removed again
    await controller.reconcile_once()
    assert len(removals()) == 1 and len(writer.patches) == 1
    # An older agent still running writes it again: the watch brings a new record, and the next turn removes it.
    await cluster.patch(VS, "default", "web", {"status": {"nodes": {"node-a": old_entry}}}, sub="status")
    controller._indexes[VS_INDEX] = {("default", "web"): [observe(cluster.get(VS, "default", "web"))]}
    await controller.reconcile_once()
    assert len(removals()) == 2 and "nodes" not in cluster.status("default", "web")
    await controller.reconcile_once()
    assert len(removals()) == 2


async def test_restarts_keep_an_invalid_older_owner_and_every_node_and_the_controller_agree(cluster: Cluster) -> None:
    """An invalid older object and a valid newer one claim one port: the kernels keep serving the
    older one (ownership is in the kernel), whichever agent restarts, and the controller reports
    the newer one in Conflict."""
    from tests.kube.test_agent import WEB, HTTP, real_servers

    await cluster.node("node-a", addresses=("10.0.0.11",))
    await cluster.node("node-b", addresses=("10.0.0.12",))
    await cluster.vs("old", WEB)
    agent_a, fake_a, _ = make_agent(cluster, "node-a")
    agent_b, fake_b, _ = make_agent(cluster, "node-b")
    controller, _ = make_controller(cluster)
    old_backends = {"192.168.2.111:8080": 1, "192.168.2.222:8080": 1}
    async with running(agent_a, controller):
        async with running(agent_b):
            await until(lambda: real_servers(fake_a) == old_backends and real_servers(fake_b) == old_backends, "old programmed on both nodes")
            await cluster.patch(VS, "default", "old", {"spec": {"scheduler": "no-such-scheduler"}})  # old turns invalid
            await until(lambda: all((cluster.report(n).get("default/old") or {}).get("message", "").startswith("InvalidSpec")
                                    for n in ("node-a", "node-b")), "both nodes keep old")
            await cluster.vs("new", {**WEB, "backends": [{"address": "192.168.9.9"}]})
            await until(lambda: condition(cluster, "new", "Conflict") == ("True", "Conflict"), "new reported in conflict")
        # node-b's agent restarts (its kernel stays as it was) while the objects stay as they are.
        restarted, fake_b2, _ = make_agent(cluster, "node-b", state=fake_b.state)
        async with running(restarted):
            await until(lambda: restarted.syncs >= 1, "the restarted agent's first sync")
            await resync(restarted)
            await resync(agent_a)
            assert real_servers(fake_b2) == old_backends and real_servers(fake_a) == old_backends, "both nodes still serve old"
            assert fake_b2.state.services[HTTP].scheduler == "rr"
            entry = cluster.report("node-b").get("default/new")
            assert entry is not None and entry["programmed"] is False and entry["message"].startswith("Conflict: ")
            await resync(controller)
            assert condition(cluster, "new", "Conflict") == ("True", "Conflict")
