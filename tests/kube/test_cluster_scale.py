"""What the cluster's changes cost the API server, as bounds that do not grow with the objects.

A node joining writes no VirtualService: a node counts for an object's `Programmed` once it
has reported, so neither its Node appearing nor its first report changes any object's
status (bench/cluster_sim.py counts the same at N nodes).

A burst of changes every node programs costs one NodeReport write per node per turn,
whatever its size. Each node's report carries all its entries: a turn writes it once (one merge patch) with
every entry the turn changed, and changes arriving while a turn runs wait for the next one
(the debounce, as kube-proxy's minSyncPeriod). So K objects created together cost each node
at most two writes (the turn the first one woke, then one for the rest), not K: O(N) for
the cluster, not O(N x K). Made exact here without timing: each node's turn is held on the
host's writer lock while the rest of the burst arrives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.kube.conftest import REPORTS, Cluster, resync, run_agent, run_controller, until
from tests.kube.test_agent import WEB
from tests.kube.test_controller import condition, conditions, report

pytestmark = pytest.mark.asyncio

BURST = 20


@contextlib.contextmanager
def held(lock: Path) -> Iterator[None]:
    """The host's writer lock held by another writer (as `vsop apply` holds it)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def vs_spec(index: int) -> dict[str, Any]:
    return {**WEB, "vip": f"169.254.12.{index + 1}"}


async def test_a_burst_of_new_objects_costs_each_node_two_report_writes(cluster: Cluster, tmp_path: Path) -> None:
    nodes = ("node-a", "node-b")
    for index, node in enumerate(nodes):
        await cluster.node(node, addresses=(f"10.0.0.{11 + index}",))
        (tmp_path / node).mkdir()
    locks = {node: tmp_path / node / "lock" for node in nodes}
    await cluster.vs("seed", vs_spec(100))
    async with contextlib.AsyncExitStack() as stack:
        agents = {node: (await stack.enter_async_context(run_agent(cluster, node, lock=locks[node], lock_wait_seconds=120)))
                  for node in nodes}
        await until(lambda: all((cluster.report(node).get("default/seed") or {}).get("programmed") for node in nodes), "each node's first report")
        written = {node: len(writer.reports) for node, (_, _, writer) in agents.items()}
        with contextlib.ExitStack() as locked:
            for node in nodes:
                locked.enter_context(held(locks[node]))
            await cluster.vs("burst-00", vs_spec(0))
            await until(lambda: all(agent.busy for agent, _, _ in agents.values()), "each node's turn, held on its lock")
            for index in range(1, BURST):
                await cluster.vs(f"burst-{index:02d}", vs_spec(index))
            rest = {f"virtualservice default/burst-{index:02d} changed" for index in range(1, BURST)}
            await until(lambda: all(rest <= agent.trigger.noted for agent, _, _ in agents.values()), "the rest noted by each node")
        for node in nodes:
            await until(lambda: all((cluster.report(node).get(f"default/burst-{i:02d}") or {}).get("programmed") for i in range(BURST)),
                        f"the burst programmed and reported by {node}")
        for node, (_, _, writer) in agents.items():
            patches = writer.reports[written[node]:]
            # The turn the first object woke, then one for the other 19, each entry in one patch.
            assert len(patches) == 2, (node, patches)
            assert [sorted(body["status"]["virtualServices"]) for _, body in patches] == [
                ["default/burst-00"], [f"default/burst-{i:02d}" for i in range(1, BURST)]]


async def test_a_node_joining_writes_no_virtualservice(cluster: Cluster) -> None:
    """Only `zone-c`, whose nodeSelector takes the new node alone, is written: it proves the controller saw each step."""
    names = [f"web-{index}" for index in range(3)]
    for node in ("node-a", "node-b"):
        await cluster.node(node)
    for index, name in enumerate(names):
        await cluster.vs(name, vs_spec(index))
    await cluster.vs("zone-c", {**vs_spec(50), "nodeSelector": {"matchLabels": {"zone": "c"}}})
    async with run_controller(cluster) as (controller, writer):
        for name in names:
            for node in ("node-a", "node-b"):
                await report(cluster, name, node)
        await until(lambda: all(condition(cluster, name, "Programmed") == ("True", "Programmed") for name in names), "programmed on both")
        # zone-c (no node selected yet) gets its first status in its own write, maybe after the others'.
        await until(lambda: "Programmed" in conditions(cluster, "zone-c"), "zone-c's first status")
        marker = conditions(cluster, "zone-c")["Programmed"]["message"]
        patches = len(writer.patches)
        await cluster.node("node-c", labels={"zone": "c"})  # the node joins; its agent has not reported yet
        await until(lambda: conditions(cluster, "zone-c")["Programmed"]["message"] != marker, "the join seen (zone-c waits for node-c)")
        # Its agent's first report, created with every entry (as the agent's first turn writes it), then zone-c's entry.
        entry = {"programmed": True, "backends": {"total": 2, "healthy": 2}, "message": "", "observedGeneration": 1}
        await cluster.create(REPORTS, {"apiVersion": "vsop.dev/v1alpha1", "kind": "NodeReport", "metadata": {"name": "node-c"},
                                       "status": {"virtualServices": {f"default/{name}": entry for name in names}}})
        await report(cluster, "zone-c", "node-c")
        await until(lambda: condition(cluster, "zone-c", "Programmed") == ("True", "Programmed"), "the report seen (zone-c programmed)")
        await resync(controller)
        written = {ref for ref, _ in writer.patches[patches:]}
        assert written == {"default/zone-c"}, [(ref, [c["message"] for c in body.get("conditions") or ()]) for ref, body in writer.patches[patches:]]
        assert all(conditions(cluster, name)["Programmed"]["message"] == "programmed on every selected node" for name in names)
