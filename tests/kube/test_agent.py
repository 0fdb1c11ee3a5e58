"""The node agent against the API emulator, on a fake kernel: what ends up programmed, and what it reports."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import kmock
import pytest
import pytest_asyncio

from tests.conftest import make_vs
from tests.kube.conftest import NODES, REPORTS, SLICES, VS, Cluster, make_agent, resync, run_agent, running, until
from vsop.core import ops
from vsop.core.desired import Node
from vsop.core.state import KernelState, ServiceKey, VirtualServer
from vsop.adapters.kernel import fake_kernel
from vsop.node.whole import sync

pytestmark = pytest.mark.asyncio

WEB = {
    "vip": "169.254.11.2",
    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
    "backends": [{"address": "192.168.2.111"}, {"address": "192.168.2.222"}],
}
HTTP = ServiceKey("tcp", "169.254.11.2", 80)
FOREIGN = VirtualServer(ServiceKey("udp", "10.96.0.10", 53), "rr")


def real_servers(fake: Any, key: ServiceKey = HTTP) -> dict[str, int]:
    """address:port -> weight of one IPVS service in the fake kernel."""
    return {f"{k.address}:{k.port}": rs.weight for k, rs in fake.state.real_servers.items() if k.service == key}


def node_entry(cluster: Cluster, name: str, node: str = "node-a", namespace: str = "default") -> Any:
    """This node's entry for one object, in the node's NodeReport."""
    return cluster.report(node).get(f"{namespace}/{name}")


@pytest_asyncio.fixture
async def node_a(cluster: Cluster) -> Cluster:
    await cluster.node("node-a", labels={"zone": "a"}, addresses=("10.0.0.11",))
    return cluster


async def test_static_backends_are_programmed_and_reported_in_this_nodes_report_only(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", WEB)
    async with run_agent(cluster, state=KernelState(services={FOREIGN.key: FOREIGN})) as (agent, fake, writer):
        await until(lambda: real_servers(fake) == {"192.168.2.111:8080": 1, "192.168.2.222:8080": 1}, "the real servers")
        state = fake.state
        assert state.link is not None and state.link.name == "vsop0"
        assert state.bound_vips() == {"169.254.11.2"}
        assert set(state.services) == {HTTP, FOREIGN.key} and state.services[FOREIGN.key] == FOREIGN
        assert state.services[HTTP].scheduler == "rr"
        assert "169.254.11.2,tcp:80" in state.ipsets["VSOP-VIP-PORTS"].members
        assert state.sysctls["net.ipv4.vs.conntrack"] == "1"

        entry = await until(lambda: node_entry(cluster, "web"), "node-a's report")
        assert entry == {"programmed": True, "backends": {"total": 2, "healthy": 2}, "message": "", "observedGeneration": 1}
        assert cluster.status("default", "web") == {}  # the object itself does not grow with the nodes
        assert [node for node, _ in writer.reports] == ["node-a"]

    # Nothing but this node's report was ever written, and nothing of kopf's is on the object.
    writes = [r for r in cluster.requests() if str(r.method).split(".")[-1] in ("POST", "PATCH", "PUT", "DELETE")
              and not r.headers.get("User-Agent", "").startswith("kmock/")]  # the test's own
    assert writes and all(str(r.url.path).startswith("/apis/vsop.dev/v1alpha1/nodereports") for r in writes)
    meta = cluster.get(VS, "default", "web")["metadata"]
    assert not meta.get("finalizers") and not meta.get("annotations")
    assert agent.probes.readiness() == (True, "ok")


async def test_service_ref_endpoints_move_real_servers(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", {
        "vip": "169.254.11.2",
        "ports": [{"name": "http", "port": 80, "targetPort": "web"}],
        "serviceRef": {"name": "nginx"},
    })
    ports = [{"name": "web", "port": 8080, "protocol": "TCP"}, {"name": "metrics", "port": 9090, "protocol": "TCP"}]

    def endpoint(address: str, ready: bool = True, serving: bool | None = None, terminating: bool = False) -> dict[str, Any]:
        conditions: dict[str, Any] = {"ready": ready, "terminating": terminating}
        if serving is not None:
            conditions["serving"] = serving
        return {"addresses": [address], "conditions": conditions}

    await cluster.endpoint_slice("nginx-abc", "nginx", [endpoint("10.1.0.1"), endpoint("10.1.0.2", ready=False)], ports)
    # The IPv6 slice of a dual-stack Service: not for an IPv4 VIP.
    await cluster.endpoint_slice("nginx-v6", "nginx", [{"addresses": ["fd00::1"], "conditions": {"ready": True}}], ports, address_type="IPv6")
    # Another Service's endpoints stay out.
    await cluster.endpoint_slice("other-xyz", "other", [endpoint("10.9.9.9")], ports)

    async with run_agent(cluster) as (agent, fake, _):
        await until(lambda: real_servers(fake) == {"10.1.0.1:8080": 1}, "only the ready endpoint, on the named port")
        entry = await until(lambda: node_entry(cluster, "web"), "the node status")
        assert entry["backends"] == {"total": 1, "healthy": 1}

        async def endpoints(*items: dict[str, Any]) -> None:
            await cluster.patch(SLICES, "default", "nginx-abc", {"endpoints": list(items)})

        await endpoints(endpoint("10.1.0.1"), endpoint("10.1.0.2"))
        await until(lambda: real_servers(fake) == {"10.1.0.1:8080": 1, "10.1.0.2:8080": 1}, "the endpoint that became ready")

        await endpoints(endpoint("10.1.0.1", ready=False, serving=True, terminating=True), endpoint("10.1.0.2"))
        await until(lambda: real_servers(fake) == {"10.1.0.1:8080": 0, "10.1.0.2:8080": 1}, "the terminating endpoint drained")
        await until(lambda: (node_entry(cluster, "web") or {}).get("backends") == {"total": 2, "healthy": 1}, "drained counted")

        await endpoints(endpoint("10.1.0.1", ready=False, serving=False, terminating=True), endpoint("10.1.0.2", ready=False))
        await until(lambda: real_servers(fake) == {}, "terminating-not-serving and unready endpoints removed")

        await endpoints(endpoint("10.1.0.3"))
        await until(lambda: real_servers(fake) == {"10.1.0.3:8080": 1}, "a new endpoint")

        await cluster.delete(SLICES, "default", "nginx-abc")
        await until(lambda: real_servers(fake) == {} and HTTP in fake.state.services, "no endpoints left; the VIP stays")
        assert fake.state.bound_vips() == {"169.254.11.2"}


async def test_node_selector_excluding_this_node_leaves_nothing(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", {**WEB, "nodeSelector": {"matchLabels": {"vsop.dev/lb": "true"}}})
    async with run_agent(cluster) as (agent, fake, writer):
        await until(lambda: agent.syncs >= 1, "a sync")
        await resync(agent)
        assert fake.writes == 0 and fake.state.services == {} and fake.state.link is None
        assert node_entry(cluster, "web") is None and writer.reports == []

        await cluster.patch(NODES, None, "node-a", {"metadata": {"labels": {"vsop.dev/lb": "true"}}})
        await until(lambda: len(real_servers(fake)) == 2, "programmed once the node is labelled")
        await until(lambda: (node_entry(cluster, "web") or {}).get("programmed"), "reported")

        await cluster.patch(NODES, None, "node-a", {"metadata": {"labels": {"vsop.dev/lb": None}}})
        await until(lambda: fake.state.services == {} and fake.state.link is None, "removed once the label is gone")
        await until(lambda: node_entry(cluster, "web") is None, "this node's key removed")


async def test_deleting_the_virtualservice_removes_its_kernel_objects(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", WEB)
    await cluster.vs("api", {**WEB, "vip": "169.254.11.3"})
    async with run_agent(cluster, state=KernelState(services={FOREIGN.key: FOREIGN})) as (agent, fake, _):
        await until(lambda: fake.state.bound_vips() == {"169.254.11.2", "169.254.11.3"}, "both programmed")
        await cluster.delete(VS, "default", "web")
        await until(lambda: fake.state.bound_vips() == {"169.254.11.3"}, "web's VIP gone")
        assert HTTP not in fake.state.services and "169.254.11.2,tcp:80" not in fake.state.ipsets["VSOP-VIP-PORTS"].members
        await cluster.delete(VS, "default", "api")
        await until(lambda: fake.state.link is None and not fake.state.ipsets and not fake.state.chains, "everything of vsop's gone")
        assert fake.state.services == {FOREIGN.key: FOREIGN}


async def test_nothing_is_deleted_before_the_initial_listing(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", WEB)
    # The node as a previous agent left it: web, and a VirtualService deleted while no agent ran.
    previous, fake_before = fake_kernel()
    sync(previous, [make_vs("web"), make_vs("gone", vip="169.254.11.9")], Node("node-a"))
    gate, asked = asyncio.Event(), asyncio.Event()

    async def hold_listing() -> None:
        asked.set()
        await gate.wait()  # then fall through to the emulator's own answer

    cluster.server[kmock.action.LIST, kmock.resource("vsop.dev", "v1alpha1", "virtualservices")] << hold_listing
    async with run_agent(cluster, state=fake_before.state) as (agent, fake, writer):
        await until(lambda: any(r.action == kmock.action.LIST and r.resource == kmock.resource("v1/nodes") for r in list(cluster.server)), "the other listings")
        # Evidence the agent got as far as a wrong one would act: it asked for the listing it must wait for.
        await asyncio.wait_for(asked.wait(), 30)
        await asyncio.sleep(0)  # one turn of the loop for any task the agent started meanwhile
        assert not agent.listed and agent.syncs == 0 and fake.writes == 0 and writer.reports == []
        gate.set()
        await until(lambda: fake.state.bound_vips() == {"169.254.11.2"}, "the stale VIP removed after the listing")
        assert not any(
            getattr(op, "vip", None) == "169.254.11.2" or "169.254.11.2" in op.describe() for op in fake.applied
            if isinstance(op, (ops.DeleteService, ops.DeleteAddress, ops.DeleteRealServer))
        ), "web's objects were never deleted"
        assert set(real_servers(fake)) == {"192.168.2.111:8080", "192.168.2.222:8080"}


async def test_status_is_not_patched_again_when_nothing_changed(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.node("node-b")
    await cluster.vs("web", WEB)
    async with run_agent(cluster) as (agent, fake, writer):
        await until(lambda: node_entry(cluster, "web"), "the first report")
        reported = len(writer.reports)
        writes = fake.writes
        await resync(agent)
        await resync(agent)
        # The controller's status on the object changes nothing here.
        await cluster.patch(VS, "default", "web", {"status": {"observedGeneration": 1}}, sub="status")
        await resync(agent)
        assert len(writer.reports) == reported == 1 and fake.writes == writes and writer.patches == []

    # A restarted agent reads its report once and writes nothing when nothing changed.
    requests = len(cluster.requests())
    async with run_agent(cluster) as (agent, fake, writer):
        await until(lambda: agent.syncs >= 1, "the first sync")
        await resync(agent)
        assert writer.reports == []
        gets = [r for r in cluster.requests()[requests:] if "nodereports" in str(r.url.path)]
        assert [str(r.method).split(".")[-1] for r in gets] == ["GET"]


async def test_a_start_among_many_objects_is_one_kernel_turn_and_one_node_report_write(node_a: Cluster) -> None:
    """A (re)started agent reconciles once the listing is complete, not per object event: every
    object in one turn and at most one NodeReport write (none after a restart that changes nothing)."""
    cluster = node_a
    count = 40
    for i in range(count):
        await cluster.vs(f"s{i}", {**WEB, "vip": f"169.254.12.{i + 1}"})
    async with run_agent(cluster, debounce_seconds=0.0) as (agent, fake, writer):
        await until(lambda: len(cluster.report("node-a")) == count, "every object reported")
        await until(lambda: not agent.busy and not agent.trigger.event.is_set(), "the agent idle")
        assert len(writer.reports) == 1 and writer.posted == [] and agent.syncs == 1
        assert len(fake.state.services) == count
    state = fake.state
    async with run_agent(cluster, state=state, debounce_seconds=0.0) as (agent, fake, writer):
        await until(lambda: agent.syncs >= 1, "the first sync after the restart")
        await until(lambda: not agent.busy and not agent.trigger.event.is_set(), "the agent idle")
        assert writer.reports == [] and writer.posted == [] and fake.writes == 0 and agent.syncs == 1


async def test_invalid_object_changes_no_kernel_state(node_a: Cluster) -> None:
    cluster = node_a
    # A duplicate backend: the CRD schema admits it, the model refuses it.
    await cluster.vs("bad", {**WEB, "vip": "169.254.11.5", "backends": [{"address": "192.168.2.111"}, {"address": "192.168.2.111"}]})
    async with run_agent(cluster) as (agent, fake, writer):
        await until(lambda: agent.syncs >= 1, "a sync")
        await resync(agent)
        assert fake.writes == 0 and fake.state.services == {}
        assert node_entry(cluster, "bad") is None

        await cluster.vs("web", WEB)
        await until(lambda: len(real_servers(fake)) == 2, "web programmed")
        writes = fake.writes
        # web turns invalid: what it programmed stays as it was.
        await cluster.patch(VS, "default", "web", {"spec": {"scheduler": "no-such-scheduler"}})
        entry = await until(lambda: (node_entry(cluster, "web") or {}).get("message"), "the node's note")
        assert entry.startswith("InvalidSpec: generation 2 is invalid (spec.scheduler: must be one of")
        assert entry.endswith("keeping what the kernel has for it")
        assert node_entry(cluster, "web")["programmed"] is True
        assert fake.writes == writes and len(real_servers(fake)) == 2


async def test_conflicting_object_changes_no_kernel_state(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", WEB)
    async with run_agent(cluster) as (agent, fake, writer):
        await until(lambda: len(real_servers(fake)) == 2, "web programmed")
        writes = fake.writes
        await cluster.create(VS, {"apiVersion": "vsop.dev/v1alpha1", "kind": "VirtualService",
                                  "metadata": {"name": "web2", "namespace": "other"},
                                  "spec": {**WEB, "backends": [{"address": "192.168.9.9"}]}})
        await resync(agent)
        assert fake.writes == writes and set(real_servers(fake)) == {"192.168.2.111:8080", "192.168.2.222:8080"}
        assert node_entry(cluster, "web2", namespace="other") is None

        await cluster.delete(VS, "default", "web")  # the winner goes: the other one takes the VIP
        await until(lambda: real_servers(fake) == {"192.168.9.9:8080": 1}, "web2 programmed")


async def test_service_ref_ambiguous_port_is_a_status_reason_not_a_guess(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", {"vip": "169.254.11.2", "ports": [{"port": 80}], "serviceRef": {"name": "nginx"}})
    ports = [{"name": "web", "port": 8080, "protocol": "TCP"}, {"name": "metrics", "port": 9090, "protocol": "TCP"}]
    await cluster.endpoint_slice("nginx-abc", "nginx", [{"addresses": ["10.1.0.1"], "conditions": {"ready": True}}], ports)
    async with run_agent(cluster) as (agent, fake, _):
        entry = await until(lambda: node_entry(cluster, "web"), "the node status")
        assert entry["programmed"] is False
        assert entry["message"].startswith("AmbiguousPort: serviceRef nginx: port 80/TCP matches none of the Service's TCP ports")
        assert real_servers(fake) == {}  # not the VIP port, not the first port
        await until(lambda: cluster.events("web"), "the Event")
        assert cluster.events("web")[0]["reason"] == "AmbiguousPort"
        # Naming the port resolves it.
        await cluster.patch(VS, "default", "web", {"spec": {"ports": [{"port": 80, "targetPort": "metrics"}]}})
        await until(lambda: real_servers(fake) == {"10.1.0.1:9090": 1}, "the named port")
        await until(lambda: (node_entry(cluster, "web") or {}).get("programmed") is True, "programmed")


async def test_vip_that_is_a_node_address_is_refused_with_status_and_event(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", {**WEB, "vip": "10.0.0.11"})
    async with run_agent(cluster) as (agent, fake, writer):
        entry = await until(lambda: node_entry(cluster, "web"), "the node's report")
        assert entry["programmed"] is False
        assert entry["message"].startswith("VIPRefused: VIP 10.0.0.11 is already an address of node node-a")
        assert fake.state.services == {} and fake.state.link is None
        await until(lambda: cluster.events("web"), "the Event")
        await resync(agent)
        [event] = cluster.events("web")
        assert event["reason"] == "VIPRefused" and event["type"] == "Warning"
        assert event["message"].startswith("node node-a: VIP 10.0.0.11")
        assert event["source"] == {"component": "vsop-agent", "host": "node-a"}
        assert event["involvedObject"]["uid"] == cluster.get(VS, "default", "web")["metadata"]["uid"]


async def test_a_restarted_agent_posts_no_event_again_for_a_failure_its_report_carries(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", {**WEB, "vip": "10.0.0.11"})
    async with run_agent(cluster) as (agent, fake, writer):
        await until(lambda: writer.posted, "the Event")
        await resync(agent)
        assert [reason for _, _, reason, _ in writer.posted] == ["VIPRefused"]
    async with run_agent(cluster) as (agent, fake, writer):
        await until(lambda: agent.syncs >= 1, "the first sync after the restart")
        await resync(agent)
        assert writer.posted == [] and writer.reports == []
    # The report is what tells: without it, the failure is news again.
    await cluster.delete(REPORTS, None, "node-a")
    async with run_agent(cluster) as (agent, fake, writer):
        await until(lambda: writer.posted, "the Event")
        assert [reason for _, _, reason, _ in writer.posted] == ["VIPRefused"] and len(writer.reports) == 1


async def test_kernel_failure_is_reported_then_retried(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", WEB)
    kernel_says_no = "backend 192.168.2.222 is not routable from this node"

    async with run_agent(cluster) as (agent, fake, writer):
        fake.refuse = lambda op: kernel_says_no if isinstance(op, ops.AddRealServer) and op.real_server.key.address == "192.168.2.222" else None
        entry = await until(lambda: node_entry(cluster, "web"), "the failure reported")
        assert entry["programmed"] is False and entry["message"].startswith("KernelError: realserver.add") and kernel_says_no in entry["message"]
        # One VIP refused: the node goes on serving the rest, and stays ready.
        assert agent.probes.readiness() == (True, "ok") and agent.reconciler.kernel_refusals.vips.keys() == {"169.254.11.2"}
        await until(lambda: any(e["reason"] == "KernelError" for e in cluster.events("web")), "the Event")
        fake.refuse = lambda op: None
        # Tried again when its backoff (5 s) ends, without any change or resync.
        await until(lambda: (node_entry(cluster, "web") or {}).get("programmed"), "programmed on the retry", timeout=15)
        assert len(real_servers(fake)) == 2 and agent.probes.readiness() == (True, "ok")


async def test_kernel_errors_stay_with_their_object_and_the_rest_is_programmed(node_a: Cluster) -> None:
    """Two objects refused for two reasons on two VIPs: each entry and Event says its own reason;
    a third object on another VIP is programmed in the same turn."""
    cluster = node_a
    await cluster.vs("lacking", {**WEB, "vip": "169.254.11.3", "scheduler": "twos"})
    await cluster.vs("unroutable", {**WEB, "vip": "169.254.11.4"})
    await cluster.vs("fine", {**WEB, "vip": "169.254.11.5"})
    no_module = "scheduler 'twos' is not available in this kernel (module ip_vs_twos)"
    not_unicast = "backend 192.168.2.222 is not routable from this node"

    def refuse(op: ops.Op) -> str | None:
        if isinstance(op, ops.AddService) and op.service.scheduler == "twos":
            return no_module
        if isinstance(op, ops.AddRealServer) and op.real_server.key.service.vip == "169.254.11.4" and op.real_server.key.address == "192.168.2.222":
            return not_unicast
        return None

    agent, fake, _ = make_agent(cluster)
    fake.refuse = refuse  # from the first sync on
    async with running(agent):
        lacking = await until(lambda: node_entry(cluster, "lacking"), "lacking reported")
        unroutable = await until(lambda: node_entry(cluster, "unroutable"), "unroutable reported")
        fine = await until(lambda: node_entry(cluster, "fine"), "fine reported")
        assert lacking["message"].startswith("KernelError: service.add") and lacking["message"].endswith(no_module)
        assert "169.254.11.3" in lacking["message"] and not_unicast not in lacking["message"]
        assert unroutable["message"].startswith("KernelError: realserver.add") and unroutable["message"].endswith(not_unicast)
        assert "169.254.11.4" in unroutable["message"] and no_module not in unroutable["message"]
        assert fine["programmed"] is True and fine["message"] == ""
        await until(lambda: cluster.events("lacking") and cluster.events("unroutable"), "the Events")
        assert all(no_module in e["message"] and not_unicast not in e["message"] for e in cluster.events("lacking"))
        assert all(not_unicast in e["message"] and no_module not in e["message"] for e in cluster.events("unroutable"))
        assert cluster.events("fine") == [] or all(e["reason"] != "KernelError" for e in cluster.events("fine"))


async def test_agent_limited_to_namespaces(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", WEB, namespace="team-a")
    await cluster.vs("other", {**WEB, "vip": "169.254.11.3"})
    async with run_agent(cluster, namespaces=("team-a",)) as (agent, fake, _):
        await until(lambda: fake.state.bound_vips() == {"169.254.11.2"}, "team-a's VIP")
        await resync(agent)
        assert fake.state.bound_vips() == {"169.254.11.2"} and node_entry(cluster, "other") is None


async def test_health_checks_take_a_failing_static_backend_out(node_a: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = node_a
    server = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # A loopback real server is refused (IPVS cannot forward to the node itself), so the
    # objects name documentation addresses and the checks' connections go to loopback:
    # 127.0.0.2 has nothing listening, so its check is refused at once.
    loopback = {"192.0.2.1": "127.0.0.1", "192.0.2.2": "127.0.0.2"}
    connect = asyncio.open_connection
    monkeypatch.setattr(asyncio, "open_connection", lambda host, *a, **k: connect(loopback.get(host, host), *a, **k))
    try:
        await cluster.vs("checked", {
            "vip": "169.254.11.2", "ports": [{"port": 80}],
            "backends": [{"address": "192.0.2.1", "port": port}, {"address": "192.0.2.2", "port": port}],
            "healthCheck": {"type": "tcp", "intervalSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 1},
        })
        async with run_agent(cluster) as (agent, fake, _):
            await until(lambda: real_servers(fake) == {f"192.0.2.1:{port}": 1, f"192.0.2.2:{port}": 0}, "the failing one at weight 0")
            await until(lambda: (node_entry(cluster, "checked") or {}).get("backends") == {"total": 2, "healthy": 1}, "counted unhealthy")
            assert {str(t.key) for t in agent.health_targets} == {f"192.0.2.1:{port}", f"192.0.2.2:{port}"}
    finally:
        server.close()
        await server.wait_closed()


async def test_removed_udp_real_server_loses_its_conntrack_entries(node_a: Cluster) -> None:
    cluster = node_a
    dns = {"vip": "169.254.11.53", "ports": [{"port": 53, "protocol": "UDP"}],
           "backends": [{"address": "192.168.2.111"}, {"address": "192.168.2.222"}]}
    await cluster.vs("dns", dns)
    async with run_agent(cluster) as (agent, fake, _):
        udp = ServiceKey("udp", "169.254.11.53", 53)
        await until(lambda: len(real_servers(fake, udp)) == 2, "both programmed")
        await cluster.patch(VS, "default", "dns", {"spec": {"backends": [{"address": "192.168.2.111"}]}})
        await until(lambda: real_servers(fake, udp) == {"192.168.2.111:53": 1}, "one removed at once (UDP does not drain)")
        assert agent.conntrack.forgotten == [("169.254.11.53", 53, "192.168.2.222", 53)]


async def test_a_recreated_object_is_programmed_and_reported_again(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", WEB)
    async with run_agent(cluster) as (agent, fake, _):
        await until(lambda: node_entry(cluster, "web"), "reported")
        await cluster.delete(VS, "default", "web")
        await cluster.vs("web", {**WEB, "backends": [{"address": "192.168.2.111"}]})
        await until(lambda: real_servers(fake) == {"192.168.2.111:8080": 1}, "the new object programmed")
        await until(lambda: (node_entry(cluster, "web") or {}).get("backends") == {"total": 1, "healthy": 1}, "the new object reported")


async def test_the_periodic_resync_repairs_drift_made_by_hand(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", WEB)
    async with run_agent(cluster, resync_seconds=0.2) as (agent, fake, writer):
        await until(lambda: len(real_servers(fake)) == 2 and len(writer.reports) > 0, "programmed and reported")
        reports = len(writer.reports)
        # Someone runs `ipvsadm -d -t 169.254.11.2:80 -r 192.168.2.222:8080` by hand.
        gone = next(key for key in fake.state.real_servers if key.address == "192.168.2.222")
        fake.state = replace(fake.state, real_servers={k: v for k, v in fake.state.real_servers.items() if k != gone})
        await until(lambda: len(real_servers(fake)) == 2, "put back by the next resync")
        assert len(writer.reports) == reports  # the status did not change, so it was not written
        # The repair is counted and told on the object, naming what was put back.
        assert agent.metrics.drift_repairs.labels("realserver.add")._value.get() == 1
        event = await until(lambda: next((e for e in cluster.events("web") if e["reason"] == "DriftRepaired"), None), "the Event")
        assert "192.168.2.222:8080" in event["message"] and "found nothing, put back masq weight 1" in event["message"]


async def test_a_resync_that_finds_drift_on_many_vips_plans_them_in_parts_one_turn_after_another(node_a: Cluster) -> None:
    cluster = node_a
    names = ["web", "api", "db"]
    for index, name in enumerate(names):
        await cluster.vs(name, {**WEB, "vip": f"169.254.11.{index + 2}"})
    async with run_agent(cluster, resync_seconds=2.0) as (agent, fake, writer):
        agent.reconciler.resync_chunk = 1
        await until(lambda: len(fake.state.services) == 3, "programmed")
        reads = agent.reconciler.reads
        # Someone runs `ipvsadm -C` by hand.
        fake.state = replace(fake.state, services={}, real_servers={})
        await until(lambda: len(fake.state.services) == 3, "put back by the next resync")
        # One read of the kernel; its parts followed in turns of their own, not a resync period apart.
        assert agent.reconciler.reads == reads + 1 and not agent.reconciler.replanning
        for name in names:
            await until(lambda name=name: next((e for e in cluster.events(name) if e["reason"] == "DriftRepaired"), None), f"the Event on {name}")


async def test_a_change_is_planned_alone_without_reading_the_kernel_again(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", WEB)
    async with run_agent(cluster) as (agent, fake, writer):
        await until(lambda: len(real_servers(fake)) == 2, "programmed")
        reads, writes = agent.reconciler.reads, fake.writes
        await cluster.vs("api", {**WEB, "vip": "169.254.11.3"})
        api = ServiceKey("tcp", "169.254.11.3", 80)
        await until(lambda: len(real_servers(fake, api)) == 2, "the new object programmed")
        await until(lambda: node_entry(cluster, "api"), "the new object reported")
        # Only the new VIP was planned: its address, members, service and two real servers.
        assert agent.reconciler.reads == reads and fake.writes - writes == 6
        assert real_servers(fake) == {"192.168.2.111:8080": 1, "192.168.2.222:8080": 1}


async def test_a_restarted_agent_keeps_what_an_invalid_object_programmed(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", WEB)
    async with run_agent(cluster) as (agent, fake, writer):
        await until(lambda: len(real_servers(fake)) == 2, "web programmed")
        await cluster.patch(VS, "default", "web", {"spec": {"scheduler": "no-such-scheduler"}})
        await until(lambda: (node_entry(cluster, "web") or {}).get("message", "").startswith("InvalidSpec"), "the node's note")
        kernel = fake.state
    # The agent restarts with the object still invalid: no last good version in memory any more.
    async with run_agent(cluster, state=kernel) as (agent, fake, writer):
        await until(lambda: agent.syncs >= 1, "the first sync after the restart")
        await resync(agent)
        assert real_servers(fake) == {"192.168.2.111:8080": 1, "192.168.2.222:8080": 1}
        assert fake.state.bound_vips() == {"169.254.11.2"} and fake.writes == 0
        entry = node_entry(cluster, "web")
        assert entry["programmed"] is True and entry["backends"] == {"total": 2, "healthy": 2}
        assert entry["message"].endswith("keeping what the kernel has for it")


async def test_keep_accept_ra_refuses_ipv6_vips_with_a_status_reason(node_a: Cluster) -> None:
    from vsop.cli.agents import build_parser

    assert build_parser().parse_args(["--keep-accept-ra"]).keep_accept_ra is True
    cluster = node_a
    await cluster.vs("web", WEB)
    await cluster.vs("six", {**WEB, "vip": "fd00:11::2", "backends": [{"address": "fd00:200:1::2"}]})
    host = KernelState(sysctls={"net.ipv6.conf.eth0.accept_ra": "1", "net.ipv6.conf.all.forwarding": "0"})
    async with run_agent(cluster, state=host, keep_accept_ra=True) as (agent, fake, _):
        entry = await until(lambda: node_entry(cluster, "six"), "the node's report")
        assert entry["programmed"] is False and entry["message"].startswith("RouterAdvertisements: IPv6 VIP fd00:11::2")
        await until(lambda: (node_entry(cluster, "web") or {}).get("programmed"), "the IPv4 VIP programmed")
        assert fake.state.bound_vips() == {"169.254.11.2"} and fake.state.sysctls["net.ipv6.conf.eth0.accept_ra"] == "1"


async def test_an_object_on_a_vip_someone_else_serves_is_reported_not_programmed(node_a: Cluster) -> None:
    """VIPInUse: the VIP has IPVS services vsop does not own, so vsop leaves it alone; its objects'
    entries say so and are not programmed, whether a full sync or a change planned them."""
    cluster = node_a
    await cluster.vs("web", WEB)
    await cluster.vs("dns", {**WEB, "vip": "10.96.0.10"})  # where FOREIGN is
    state = KernelState(services={FOREIGN.key: FOREIGN})
    async with run_agent(cluster, state=state, resync_seconds=0.3) as (agent, fake, _):
        in_use = "VIPInUse: VIP 10.96.0.10 has IPVS services vsop does not own"
        entry = await until(lambda: node_entry(cluster, "dns"), "the node's report (the first, full sync)")
        assert entry["programmed"] is False and entry["message"].startswith(in_use)
        assert (await until(lambda: node_entry(cluster, "web")))["programmed"] is True
        # Created while the agent runs: the change path plans it alone.
        reads = agent.reconciler.reads
        await cluster.vs("metrics", {**WEB, "vip": "10.96.0.10", "ports": [{"port": 9100}]})
        entry = await until(lambda: node_entry(cluster, "metrics"), "the new object's entry")
        assert entry["programmed"] is False and entry["message"].startswith(in_use)
        assert agent.reconciler.programmed == {"default/web"}
        assert agent.metrics.virtualservices.labels("failed")._value.get() == 2
        assert agent.metrics.virtualservices.labels("programmed")._value.get() == 1
        # The periodic full resync says the same, and leaves the VIP to its owner.
        await until(lambda: agent.reconciler.reads > reads, "a full resync")
        await resync(agent)
        assert [node_entry(cluster, name)["programmed"] for name in ("web", "dns", "metrics")] == [True, False, False]
        assert agent.reconciler.programmed == {"default/web"}
        assert fake.state.bound_vips() == {"169.254.11.2"} and fake.state.services[FOREIGN.key] == FOREIGN


async def test_a_backend_on_another_objects_vip_is_refused_with_a_status_reason(node_a: Cluster) -> None:
    cluster = node_a
    await cluster.vs("web", {**WEB, "vip": "10.9.0.1"})
    await cluster.vs("loop", {**WEB, "vip": "169.254.11.3", "backends": [{"address": "10.9.0.1"}]})
    async with run_agent(cluster) as (agent, fake, _):
        entry = await until(lambda: node_entry(cluster, "loop"), "the node's report")
        assert entry["programmed"] is False
        assert entry["message"] == ("BackendIsVIP: spec.backends[0].address: 10.9.0.1 is the VIP of VirtualService default/web: "
                                    "a VIP cannot be a real server")
        await until(lambda: (node_entry(cluster, "web") or {}).get("programmed"), "the VIP's owner programmed")
        assert fake.state.bound_vips() == {"10.9.0.1"}


async def test_the_host_writer_lock_is_held_per_sync_and_another_writer_makes_it_read_the_kernel(node_a: Cluster, tmp_path: Any) -> None:
    import fcntl
    import os

    from vsop.cli.agents import build_parser

    assert build_parser().parse_args(["--lock", "/x/lock"]).lock == "/x/lock"
    cluster = node_a
    lock = tmp_path / "run-vsop" / "lock"
    lock.parent.mkdir()
    await cluster.vs("web", WEB)
    async with run_agent(cluster, lock=lock, lock_wait_seconds=0.2) as (agent, fake, _):
        await until(lambda: (node_entry(cluster, "web") or {}).get("programmed"), "programmed")
        # `vsop apply` on the node holds the lock: the agent writes nothing meanwhile.
        fd = os.open(lock, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            os.ftruncate(fd, 0)  # as every holder does: the stamp changes
            turns = agent.turns
            await cluster.vs("api", {**WEB, "vip": "169.254.11.3"})
            await until(lambda: agent.turns > turns, "a sync turn that met the held lock", timeout=30)
            assert fake.state.bound_vips() == {"169.254.11.2"}
            # What it writes meanwhile (by hand here) is only known from a full read.
            fake.state = replace(fake.state, services={k: v for k, v in fake.state.services.items() if k != HTTP},
                                 real_servers={k: v for k, v in fake.state.real_servers.items() if k.service != HTTP})
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        reads = agent.reconciler.reads
        await until(lambda: fake.state.bound_vips() == {"169.254.11.2", "169.254.11.3"}, "the new VIP once the lock is free", timeout=10)
        await until(lambda: HTTP in fake.state.services, "the other writer's change read and put right")
        assert agent.reconciler.reads > reads and lock.exists()


async def test_traffic_policy_local_programs_this_nodes_endpoints_and_answers_kube_proxys_health_check(node_a: Cluster) -> None:
    """externalTrafficPolicy: Local as kube-proxy did it: this node's endpoints only, unmasqueraded; with none,
    the IPVS service stays empty (clients refused), the node says NoLocalEndpoints, /health/NS/NAME says 503."""
    import aiohttp
    from prometheus_client import CollectorRegistry
    from vsop.node.metrics import HttpEndpoints

    cluster = node_a
    await cluster.vs("web", {"vip": "169.254.11.2", "ports": [{"name": "http", "port": 80}], "serviceRef": {"name": "nginx"},
                             "trafficPolicy": "Local"})
    ports = [{"name": "http", "port": 8080, "protocol": "TCP"}]

    def on(node: str, address: str) -> dict[str, Any]:
        return {"addresses": [address], "conditions": {"ready": True}, "nodeName": node}

    await cluster.endpoint_slice("nginx-abc", "nginx", [on("node-a", "10.1.0.1"), on("node-b", "10.1.0.2")], ports)
    async with run_agent(cluster) as (agent, fake, _):
        endpoints = HttpEndpoints(agent.probes, CollectorRegistry(), 0, 0, "127.0.0.1")
        await endpoints.start()
        try:
            async with aiohttp.ClientSession() as session:

                async def health(namespace: str = "default", name: str = "web") -> tuple[int, Any]:
                    async with session.get(f"http://127.0.0.1:{endpoints.health_port}/health/{namespace}/{name}") as response:
                        return response.status, await response.json()

                await until(lambda: real_servers(fake) == {"10.1.0.1:8080": 1}, "only node-a's endpoint")
                assert fake.state.ipsets["VSOP-VIP-PORTS-NOMASQ"].members == {"169.254.11.2,tcp:80": "default/web"}
                assert await health() == (200, {"service": {"namespace": "default", "name": "web"}, "localEndpoints": 1})
                assert (await health("default", "other"))[0] == 404

                await cluster.patch(SLICES, "default", "nginx-abc", {"endpoints": [on("node-b", "10.1.0.2")]})
                await until(lambda: real_servers(fake) == {} and HTTP in fake.state.services, "no local endpoint: the service stays, empty")
                entry = await until(lambda: (node_entry(cluster, "web") or {}).get("message", "").startswith("NoLocalEndpoints") and node_entry(cluster, "web"),
                                    "NoLocalEndpoints in the node's report")
                assert entry["programmed"] is True
                assert await health() == (503, {"service": {"namespace": "default", "name": "web"}, "localEndpoints": 0})
        finally:
            await endpoints.stop()


async def test_topology_hints_choose_the_endpoints_of_this_node_then_its_zone_with_the_fallback(cluster: Cluster) -> None:
    """EndpointSlice hints as kube-proxy reads them, for nodes in two zones: the agent of node-a (zone z1)."""
    await cluster.node("node-a", labels={"topology.kubernetes.io/zone": "z1"}, addresses=("10.0.0.11",))
    await cluster.node("node-b", labels={"topology.kubernetes.io/zone": "z2"}, addresses=("10.0.0.12",))
    await cluster.vs("web", {"vip": "169.254.11.2", "ports": [{"name": "http", "port": 80}], "serviceRef": {"name": "nginx"}})
    ports = [{"name": "http", "port": 8080, "protocol": "TCP"}]

    def hinted(address: str, zone: str, node: str | None = None) -> dict[str, Any]:
        hints: dict[str, Any] = {"forZones": [{"name": zone}]}
        if node is not None:
            hints["forNodes"] = [{"name": node}]
        return {"addresses": [address], "conditions": {"ready": True}, "hints": hints}

    await cluster.endpoint_slice("nginx-abc", "nginx", [hinted("10.1.0.1", "z1"), hinted("10.1.0.2", "z2")], ports)
    async with run_agent(cluster) as (agent, fake, _):
        await until(lambda: real_servers(fake) == {"10.1.0.1:8080": 1}, "zone z1's endpoint only")

        async def endpoints(*items: dict[str, Any]) -> None:
            await cluster.patch(SLICES, "default", "nginx-abc", {"endpoints": list(items)})

        await endpoints(hinted("10.1.0.1", "z2"), hinted("10.1.0.2", "z2"))
        await until(lambda: real_servers(fake) == {"10.1.0.1:8080": 1, "10.1.0.2:8080": 1}, "none for z1: every endpoint")
        await endpoints(hinted("10.1.0.1", "z1", "node-b"), hinted("10.1.0.2", "z2", "node-a"))
        await until(lambda: real_servers(fake) == {"10.1.0.2:8080": 1}, "the endpoint hinted for node-a, before its zone's")
        await endpoints(hinted("10.1.0.1", "z1"), {"addresses": ["10.1.0.2"], "conditions": {"ready": True}})
        await until(lambda: real_servers(fake) == {"10.1.0.1:8080": 1, "10.1.0.2:8080": 1}, "an endpoint without hints: every endpoint")
