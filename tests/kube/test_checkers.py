"""Bounded health checks of static backends (vsop.kube.checkers): a few checker nodes, everyone else applies.

Four agents (fake kernels) and the controller against the API emulator. The TCP probe is
replaced by a fake one that knows which node's agent probes (a context variable set
when each agent's task starts), so a backend can fail as seen from some nodes only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
from typing import Any, AsyncIterator

import pytest

import vsop.node.probes
from tests.kube.conftest import NODES, VS, WAIT_SECONDS, Cluster, make_agent, make_controller, until
from vsop.core.state import RealServerKey, ServiceKey
from vsop.kube import checkers
from vsop.kube.agent import Agent

pytestmark = pytest.mark.asyncio

NODE_NAMES = ("node-a", "node-b", "node-c", "node-d")
HTTP = ServiceKey("tcp", "169.254.11.2", 80)
CHECKED = {
    "vip": "169.254.11.2",
    "ports": [{"port": 80, "targetPort": 8080}],
    "backends": [{"address": "192.0.2.1"}, {"address": "192.0.2.2"}],
    "healthCheck": {"type": "tcp", "intervalSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1},
}
BACKENDS = ("192.0.2.1:8080", "192.0.2.2:8080")
PROBING = contextvars.ContextVar("probing_node", default="")


class Prober:
    """The fake TCP probe: fails an address as seen from the nodes listed for it; counts probes per node."""

    def __init__(self) -> None:
        self.down_from: dict[str, set[str]] = collections.defaultdict(set)
        self.probes: collections.Counter[tuple[str, str]] = collections.Counter()

    async def check_tcp(self, address: str, port: int, timeout: float) -> str | None:
        node = PROBING.get()
        self.probes[(node, f"{address}:{port}")] += 1
        await asyncio.sleep(0)
        return "TCP connect failed: Connection refused (simulated)" if node in self.down_from[address] else None


@pytest.fixture
def prober(monkeypatch: pytest.MonkeyPatch) -> Prober:
    fake = Prober()
    monkeypatch.setattr(vsop.node.probes, "check_tcp", fake.check_tcp)
    return fake


def weights(fake: Any) -> dict[str, int]:
    return {f"{k.address}:{k.port}": rs.weight for k, rs in fake.state.real_servers.items() if k.service == HTTP}


def published(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {item["backend"]: item for item in cluster.status("default", "checked").get("backendHealth") or ()}


def checked_here(agent: Agent) -> set[str]:
    return {backend for _, backend in agent.roles.checking.values()}


def probed_locally(cluster: Cluster, node: str) -> dict[str, Any] | None:
    """`status.localProbes` of a node's NodeReport (None: absent)."""
    return (cluster.get("vsop.dev/v1alpha1/nodereports", None, node).get("status") or {}).get("localProbes")


class Nodes:
    """The agents and the controller, each agent started with its node name in PROBING."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.controller, _ = make_controller(cluster)
        self.agents: dict[str, Agent] = {}
        self.fakes: dict[str, Any] = {}
        self.stops: dict[str, tuple[asyncio.Event, asyncio.Task[None]]] = {}

    def start(self, node: str) -> None:
        agent, fake, _ = make_agent(self.cluster, node)
        self.agents[node], self.fakes[node] = agent, fake
        stop = asyncio.Event()
        token = PROBING.set(node)
        try:
            self.stops[node] = (stop, asyncio.create_task(agent.run(stop)))  # the task copies PROBING as it is now
        finally:
            PROBING.reset(token)

    async def stop(self, node: str) -> None:
        stop, task = self.stops.pop(node)
        stop.set()
        await asyncio.wait_for(task, timeout=15)
        del self.agents[node], self.fakes[node]

    def settled(self) -> bool:
        """The controller published checkers for every backend, and every agent acts on them."""
        found = published(self.cluster)
        # Chosen over every running agent: the controller reacts to the first reports at
        # once, and chooses again as each further node reports.
        if set(found) != set(BACKENDS) or any(item["checkers"] != list(checkers.choose(b, self.agents)) for b, item in found.items()):
            return False  # not yet, or chosen while some agents had not reported yet
        expected = {name: {b for b, item in found.items() if name in item["checkers"]} for name in self.agents}
        return all(checked_here(agent) == expected[name] for name, agent in self.agents.items())


@contextlib.asynccontextmanager
async def cluster_of_four(cluster: Cluster) -> AsyncIterator[Nodes]:
    for index, name in enumerate(NODE_NAMES):
        await cluster.node(name, addresses=(f"10.0.0.{11 + index}",))
    await cluster.vs("checked", CHECKED)
    nodes = Nodes(cluster)
    stop = asyncio.Event()
    controller = asyncio.create_task(nodes.controller.run(stop))
    for name in NODE_NAMES:
        nodes.start(name)
    try:
        # An upper bound only: five components start their watches (VipPools and Namespaces among them) at once.
        await until(nodes.settled, "checkers published and taken up by every agent", timeout=4 * WAIT_SECONDS)
        yield nodes
    finally:
        for name in list(nodes.stops):
            await nodes.stop(name)
        stop.set()
        await asyncio.wait_for(controller, timeout=15)


async def test_every_agent_takes_the_same_checkers_and_the_others_watch_their_counters(cluster: Cluster, prober: Prober) -> None:
    async with cluster_of_four(cluster) as nodes:
        found = published(cluster)
        for backend in BACKENDS:
            # Rendezvous hashing over the nodes whose agent reports: the same answer from anyone.
            assert found[backend]["checkers"] == list(checkers.choose(backend, NODE_NAMES)) and len(found[backend]["checkers"]) == 3
            assert found[backend]["healthy"] is True
        for name, agent in nodes.agents.items():
            agent = nodes.agents[name]
            # A checker probes at the spec's interval; the others (masquerade, TCP) watch their own counters instead.
            intervals = {checkers.backend_id(t.key.address, t.key.port): t.check.interval_seconds for t in agent.roles.targets}
            assert intervals == {b: 1 for b in BACKENDS if name in found[b]["checkers"]}, name
            watched = {checkers.backend_id(key.address, key.port) for key in agent.roles.watched}
            assert watched == {b for b in BACKENDS if name not in found[b]["checkers"]}, name
            # Checkers publish their results in their own report; nobody else does.
            await until(lambda: set(cluster.report(name)["default/checked"].get("checks") or {}) == checked_here(agent), f"{name}'s checks")
        assert len(str(cluster.status("default", "checked").get("backendHealth"))) < 400  # K names per backend, not N


async def test_a_flip_from_the_checkers_reaches_a_non_checker_kernel(cluster: Cluster, prober: Prober) -> None:
    async with cluster_of_four(cluster) as nodes:
        backend = BACKENDS[0]
        chosen = published(cluster)[backend]["checkers"]
        [outsider] = [n for n in NODE_NAMES if n not in chosen]
        prober.down_from["192.0.2.1"] = set(chosen)  # down as the checkers see it; the outsider's own probe passes
        await until(lambda: published(cluster)[backend].get("failingOn") == sorted(chosen), "the verdict published", timeout=15)
        assert published(cluster)[backend]["healthy"] is False
        await until(lambda: weights(nodes.fakes[outsider]) == {"192.0.2.1:8080": 0, "192.0.2.2:8080": 1}, "the outsider stops sending")
        # The kernel is written in the agent's worker thread, its roles updated once the turn resumes.
        down = await until(lambda: nodes.agents[outsider].roles.published_down, "the outsider's roles updated")
        assert nodes.agents[outsider].tracker.is_healthy(next(iter(down)))
        await until(lambda: all(weights(nodes.fakes[n]) == {"192.0.2.1:8080": 0, "192.0.2.2:8080": 1} for n in chosen), "the checkers too")

        prober.down_from["192.0.2.1"] = set()
        await until(lambda: all(weights(f) == {"192.0.2.1:8080": 1, "192.0.2.2:8080": 1} for f in nodes.fakes.values()), "back everywhere", timeout=15)


async def test_a_checker_leaving_hands_over(cluster: Cluster, prober: Prober) -> None:
    async with cluster_of_four(cluster) as nodes:
        backend = BACKENDS[0]
        chosen = published(cluster)[backend]["checkers"]
        [outsider] = [n for n in NODE_NAMES if n not in chosen]
        leaving = chosen[0]
        await nodes.stop(leaving)
        await cluster.delete(NODES, None, leaving)  # its report goes with it (deleted by the controller)
        remaining = [n for n in NODE_NAMES if n != leaving]
        await until(lambda: published(cluster)[backend]["checkers"] == list(checkers.choose(backend, remaining)), "checkers chosen again")
        assert outsider in published(cluster)[backend]["checkers"]
        await until(lambda: backend in checked_here(nodes.agents[outsider]), "the former outsider checks it now")
        # It publishes its own result: a failure it sees now counts.
        prober.down_from["192.0.2.1"] = set(remaining)
        await until(lambda: published(cluster)[backend].get("failingOn") == sorted(remaining), "the new checkers' results", timeout=15)
        assert published(cluster)[backend]["healthy"] is False


async def test_a_node_whose_own_probe_fails_stops_sending_though_the_checkers_say_healthy(cluster: Cluster, prober: Prober) -> None:
    async with cluster_of_four(cluster) as nodes:
        backend = BACKENDS[0]
        chosen = published(cluster)[backend]["checkers"]
        [outsider] = [n for n in NODE_NAMES if n not in chosen]
        prober.down_from["192.0.2.1"] = {outsider}  # only the outsider cannot reach it
        agent, fake = nodes.agents[outsider], nodes.fakes[outsider]
        key = RealServerKey(HTTP, "192.0.2.1", 8080)
        await agent.look_at_traffic()  # as each resync period does: the first look, a baseline
        await agent.look_at_traffic()
        assert agent.checker is not None and key not in {t.key for t in agent.checker.given()}  # no trouble: not probed here
        assert key in agent.roles.watched and not agent.local_probes.running
        probed = prober.probes[(outsider, backend)]  # before checkers were published, every node probed it
        fake.send(key, connections=3, out_packets=0)  # clients' connections, not one packet back
        assert probed_locally(cluster, outsider) is None
        await agent.look_at_traffic()  # wakes a turn: its probe starts
        await until(lambda: weights(fake) == {"192.0.2.1:8080": 0, "192.0.2.2:8080": 1}, "the outsider stops sending")
        assert prober.probes[(outsider, backend)] > probed
        # An operator sees it: the outsider's report and its metrics say what it probes itself, and why.
        listed = {"count": 1, "backends": [{"virtualService": "default/checked", "backend": backend}]}
        await until(lambda: probed_locally(cluster, outsider) == listed, "the outsider's report names its local probe")
        assert agent.metrics.registry.get_sample_value("vsop_health_local_probes") == 1
        assert all(probed_locally(cluster, n) is None for n in chosen)
        assert published(cluster)[backend]["healthy"] is True
        assert all(weights(nodes.fakes[n]) == {"192.0.2.1:8080": 1, "192.0.2.2:8080": 1} for n in chosen)
        await agent.look_at_traffic()  # taken out here: no new connection, the counters are quiet; its probe goes on
        prober.down_from["192.0.2.1"] = set()
        await until(lambda: weights(fake) == {"192.0.2.1:8080": 1, "192.0.2.2:8080": 1}, "back in service on the outsider")
        await until(lambda: not agent.local_probes.running, "its local probe stops once it answers and the data path is quiet")
        assert key not in {t.key for t in agent.probe_targets()}
        await until(lambda: probed_locally(cluster, outsider) is None, "the report no longer names it")
        assert agent.metrics.registry.get_sample_value("vsop_health_local_probes") == 0
