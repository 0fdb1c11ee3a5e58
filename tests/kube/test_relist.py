"""A watch gap, deletions during it, and a `410 Gone`: the relist loses no deletion (vsop.kube.reflector).

The agent runs against the emulator; the watches of VirtualServices and EndpointSlices drop
(the gap), an EndpointSlice and a VirtualService are deleted while no watch is open, and the
re-watch is answered `410 Gone`, so kopf lists again. The deleted slice's pod IP and the
deleted object's service must leave the (fake) kernel, as client-go's reflector would have it;
what was not deleted stays, and a change after the relist is still heard. The controller, the
same way: a Node and a NodeReport deleted in a gap are gone from what it sums up.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio

from tests.kube.conftest import NODES, REPORTS, SLICES, VS, Cluster, run_agent, run_controller, until
from tests.kube.test_controller import conditions, report
from vsop.core.state import ServiceKey

pytestmark = pytest.mark.asyncio

WEB = ServiceKey("tcp", "169.254.11.2", 80)
STATIC = ServiceKey("tcp", "169.254.11.3", 80)
PORTS = [{"name": "web", "port": 8080, "protocol": "TCP"}]


def real_servers(fake: Any, key: ServiceKey) -> set[str]:
    return {k.address for k in fake.state.real_servers if k.service == key}


@pytest_asyncio.fixture
async def node_a(cluster: Cluster) -> Cluster:
    await cluster.node("node-a", addresses=("10.0.0.11",))
    return cluster


async def test_what_was_deleted_during_a_watch_gap_leaves_the_kernel_after_the_410_relist(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", {"vip": "169.254.11.2", "ports": [{"port": 80, "targetPort": "web"}], "serviceRef": {"name": "nginx"}})
    await cluster.vs("static", {"vip": "169.254.11.3", "ports": [{"port": 80, "targetPort": 8080}], "backends": [{"address": "192.168.2.111"}]})
    for name, address in (("nginx-a", "10.1.0.1"), ("nginx-b", "10.1.0.2")):
        await cluster.endpoint_slice(name, "nginx", [{"addresses": [address], "conditions": {"ready": True}}], PORTS)

    async with run_agent(cluster) as (agent, fake, _):
        await until(lambda: real_servers(fake, WEB) == {"10.1.0.1", "10.1.0.2"} and STATIC in fake.state.services, "both objects programmed")
        server = cluster.server
        await server.open_gap(SLICES, VS)  # type: ignore[attr-defined]
        await cluster.delete(SLICES, "default", "nginx-b")
        await cluster.delete(VS, "default", "static")
        turns = agent.turns
        server.close_gap(SLICES, VS)  # type: ignore[attr-defined]
        await until(lambda: real_servers(fake, WEB) == {"10.1.0.1"}, "the deleted slice's pod IP gone from the kernel")
        await until(lambda: STATIC not in fake.state.services, "the deleted VirtualService's service gone from the kernel")
        assert agent.turns > turns and fake.state.bound_vips() == {"169.254.11.2"}
        counted = {kind: agent.metrics.registry.get_sample_value("vsop_relist_deletions_total", {"kind": kind}) for kind in ("endpointslices", "virtualservices")}
        assert counted == {"endpointslices": 1.0, "virtualservices": 1.0}
        assert {key for key in agent.source.records} == {("default", "web")}
        # The watch that follows the relist hears changes as before.
        await cluster.endpoint_slice("nginx-c", "nginx", [{"addresses": ["10.1.0.3"], "conditions": {"ready": True}}], PORTS)
        await until(lambda: real_servers(fake, WEB) == {"10.1.0.1", "10.1.0.3"}, "a slice created after the relist")


async def test_a_node_and_a_report_deleted_during_a_watch_gap_are_gone_for_the_controller_after_the_410_relist(cluster: Cluster) -> None:
    for node in ("node-a", "node-b", "node-c"):
        await cluster.node(node)
    await cluster.vs("web", {"vip": "169.254.11.2", "ports": [{"port": 80}], "backends": [{"address": "192.168.2.111"}, {"address": "192.168.2.222"}]})
    async with run_controller(cluster) as (controller, _):
        await report(cluster, "web", "node-a")
        await report(cluster, "web", "node-b")
        await report(cluster, "web", "node-c", programmed=False, total=0, healthy=0, message="VIPRefused: VIP 169.254.11.2 is already an address of node node-c")
        await until(lambda: conditions(cluster, "web").get("Programmed", {}).get("reason") == "NotProgrammed", "node-c's failure summed up")
        await cluster.server.open_gap(NODES, REPORTS)  # type: ignore[attr-defined]
        await cluster.delete(NODES, None, "node-b")  # its report stays: the controller deletes a gone Node's report
        await cluster.delete(REPORTS, None, "node-c")  # node-c's agent is gone, and its failure with it
        cluster.server.close_gap(NODES, REPORTS)  # type: ignore[attr-defined]
        await until(lambda: not cluster.report("node-b"), "the report of the Node deleted in the gap, deleted")
        await until(lambda: conditions(cluster, "web")["Programmed"]["message"] == "programmed on every selected node",
                    "node-c's deleted report no longer summed up")
        deleted = {kind: controller.metrics.registry.get_sample_value("vsop_controller_relist_deletions_total", {"kind": kind})
                   for kind in ("nodes", "nodereports")}
        assert deleted == {"nodes": 1.0, "nodereports": 1.0}
