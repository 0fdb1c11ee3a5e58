"""The API server's own addresses are refused as VIPs: the `kubernetes` Service's endpoints, its ClusterIP, the credentials' server.

A VIP there would be bound on vsop0 and VSOP-FILTER would reject the kubelet's
connections to the API server. The endpoints come from the EndpointSlices of
`default/kubernetes` as kube-apiserver publishes them: an agent watching every namespace
takes them from its EndpointSlice watch (no request of its own, however many resync periods
pass); one confined to other namespaces lists them before its first sync and again every
resync period.
"""

from __future__ import annotations

import copy

import pytest
import pytest_asyncio

from tests.kube.conftest import SLICES, Cluster, run_agent, until
from tests.kube.test_agent import WEB, node_entry, real_servers
from vsop.core.state import ServiceKey
from vsop.kube.apiserver import ApiServerAddresses, slice_addresses, static_addresses
from vsop.kube.client import Connection

API_A, API_B = "192.0.2.10", "192.0.2.20"  # documentation addresses: data for the fake kernel only


def api_slice(*addresses: str, ready: bool = True) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a in addresses],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    }


@pytest_asyncio.fixture
async def control_plane(cluster: Cluster) -> Cluster:
    await cluster.node("node-a", addresses=("10.0.0.11",))
    await cluster.create(SLICES, api_slice(API_A))
    # Another Service's slice in default, and one named kubernetes elsewhere: neither is the API server.
    await cluster.endpoint_slice("web-1", "web", [{"addresses": [API_B]}], [{"port": 8080}])
    await cluster.endpoint_slice("kubernetes", "kubernetes", [{"addresses": [API_B]}], [{"port": 6443}], namespace="team-b")
    return cluster


@pytest.mark.asyncio
async def test_a_vip_on_an_api_server_endpoint_is_refused_before_the_first_sync(control_plane: Cluster) -> None:
    cluster = control_plane
    await cluster.vs("api", {**WEB, "vip": API_A})
    await cluster.vs("web", WEB)
    async with run_agent(cluster) as (agent, fake, writer):
        entry = await until(lambda: node_entry(cluster, "api"), "the node's report")
        assert entry["programmed"] is False
        assert entry["message"] == (
            f"VIPRefused: VIP {API_A} is an address of the Kubernetes API server (endpoint of service default/kubernetes); "
            "a VIP there would cut node node-a off from it"
        )
        [event] = await until(lambda: cluster.events("api"), "the Event")
        assert event["reason"] == "VIPRefused" and event["type"] == "Warning" and API_A in event["message"]
        # Never bound, not even by the first sync; the other object is served.
        assert set(real_servers(fake)) == {"192.168.2.111:8080", "192.168.2.222:8080"}
        assert fake.applied and not [op for op in fake.applied if API_A in op.describe()]
        await until(lambda: (node_entry(cluster, "web") or {}).get("programmed") is True, "the other object reported programmed")


@pytest.mark.asyncio
async def test_moved_api_server_endpoints_are_followed(control_plane: Cluster) -> None:
    cluster = control_plane
    await cluster.vs("web", {**WEB, "vip": API_B})
    async with run_agent(cluster, resync_seconds=0.3) as (agent, fake, writer):
        await until(lambda: (node_entry(cluster, "web") or {}).get("programmed") is True, f"{API_B} programmed while it is nobody's")
        # A control-plane node replaced: the API server now answers on API_B (not ready yet still counts).
        changed = copy.deepcopy(api_slice(API_A, API_B, ready=False))
        await cluster.patch(SLICES, "default", "kubernetes", {"endpoints": changed["endpoints"]})
        await until(lambda: API_B not in fake.state.bound_vips() and not fake.state.services, "the VIP withdrawn")
        entry = await until(lambda: (node_entry(cluster, "web") or {}).get("programmed") is False and node_entry(cluster, "web"), "the refusal")
        assert entry["message"].startswith(f"VIPRefused: VIP {API_B} is an address of the Kubernetes API server")
        await until(lambda: any(e["reason"] == "VIPRefused" for e in cluster.events("web")), "the Event")
        # Gone again: served again.
        await cluster.patch(SLICES, "default", "kubernetes", {"endpoints": api_slice(API_A)["endpoints"]})
        await until(lambda: API_B in fake.state.bound_vips() and real_servers(fake, ServiceKey("tcp", API_B, 80)), "the VIP served again")
        turns = agent.turns
        await until(lambda: agent.turns >= turns + 3, "three more resync periods")
    # Followed through the watch alone: not one list of the Service's slices of its own.
    assert not [r for r in cluster.requests("get") if r.url.path == "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"]


@pytest.mark.asyncio
async def test_without_endpoints_the_clusterip_and_the_credentials_server_are_refused(cluster: Cluster) -> None:
    """No slice of default/kubernetes (or none readable): the addresses known from the pod are still refused."""
    await cluster.node("node-a", addresses=("10.0.0.11",))
    await cluster.vs("service-ip", {**WEB, "vip": "10.96.0.1"})
    await cluster.vs("server", {**WEB, "vip": "192.0.2.5", "ports": [{"port": 443}]})
    known = static_addresses("https://192.0.2.5:6443", {"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    apiserver = ApiServerAddresses(Connection.for_url(cluster.url).api, known)
    async with run_agent(cluster, apiserver=apiserver) as (agent, fake, writer):
        await until(lambda: node_entry(cluster, "service-ip") and node_entry(cluster, "server"), "the node's reports")
        assert node_entry(cluster, "service-ip")["message"] == (
            "VIPRefused: VIP 10.96.0.1 is an address of the Kubernetes API server (ClusterIP of service default/kubernetes); "
            "a VIP there would cut node node-a off from it")
        assert "(server of the credentials (https://192.0.2.5:6443))" in node_entry(cluster, "server")["message"]
        assert apiserver.read_once and apiserver.endpoints == () and fake.state.services == {}


def test_addresses_from_slices_any_condition_no_fqdn() -> None:
    slices = [api_slice(API_A, ready=False), {**api_slice("api.example"), "addressType": "FQDN"},
              {"addressType": "IPv6", "endpoints": [{"addresses": ["2001:db8::0:1"]}]}]
    assert slice_addresses(slices) == (API_A, "2001:db8::1")


def test_static_addresses_from_the_credentials_and_the_environment() -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    assert static_addresses("https://192.0.2.5:6443", env) == {
        "192.0.2.5": "server of the credentials (https://192.0.2.5:6443)", "10.96.0.1": "ClusterIP of service default/kubernetes"}
    named = static_addresses("https://lb.example:6443", {}, resolve=lambda host: ["192.0.2.7", "2001:db8::7"])
    assert named == {"192.0.2.7": "lb.example, server of the credentials", "2001:db8::7": "lb.example, server of the credentials"}
    assert static_addresses("https://[2001:db8::5]:6443", {}) == {"2001:db8::5": "server of the credentials (https://[2001:db8::5]:6443)"}


@pytest.mark.asyncio
async def test_an_agent_confined_to_other_namespaces_lists_default_kubernetes_only_and_a_refused_read_is_retried(
        control_plane: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    """Its watches do not see `default`: the read the RBAC allows (list endpointslices in default, by label); a 403 keeps the known addresses and is retried."""
    cluster = control_plane
    path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    cluster.server["get", path][:1] << 403  # the first read is refused, as without the RBAC rule
    await cluster.vs("api", {**WEB, "vip": API_A}, namespace="team-a")
    async with run_agent(cluster, resync_seconds=0.3, namespaces=("team-a",)) as (agent, fake, writer):
        await until(lambda: any("Cannot read the API server's endpoints" in r.getMessage() for r in caplog.records), "the warning")
        entry = await until(lambda: (node_entry(cluster, "api", namespace="team-a") or {}).get("programmed") is False
                            and node_entry(cluster, "api", namespace="team-a"),
                            "the refusal once a later read succeeds")
        assert "endpoint of service default/kubernetes" in entry["message"]
        await until(lambda: API_A not in fake.state.bound_vips() and not fake.state.services, "the VIP withdrawn")
    reads = [r for r in cluster.requests("get") if r.url.path == path]
    assert len(reads) >= 2 and all(r.params.get("labelSelector") == "kubernetes.io/service-name=kubernetes" for r in reads)
