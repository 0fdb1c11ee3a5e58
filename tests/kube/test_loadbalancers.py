"""type: LoadBalancer Services against the API emulator: allocation from VipPools, the derived VirtualService,
`status.loadBalancer.ingress` with ipMode Proxy, Events, restarts, and Services that are not vsop's."""

from __future__ import annotations

from typing import Any

import kmock
import pytest

from tests.kube.conftest import POOLS, SERVICES, VS, Cluster, resync, run_controller, until
from tests.kube.test_controller import report
from vsop.kube.loadbalancers import Options as LoadBalancerOptions

pytestmark = pytest.mark.asyncio

HTTP = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]


async def pool(cluster: Cluster, name: str, addresses: list[str], **spec: Any) -> None:
    await cluster.create(POOLS, {"apiVersion": "vsop.dev/v1alpha1", "kind": "VipPool", "metadata": {"name": name},
                                 "spec": {"addresses": addresses, **spec}})


async def service(cluster: Cluster, name: str, lb_class: str | None = "vsop.dev/ipvs", annotations: dict[str, str] | None = None,
                  namespace: str = "default", created: str | None = None, **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
            "spec": {"type": "LoadBalancer", "ports": HTTP, **({"loadBalancerClass": lb_class} if lb_class else {}), **spec}}
    return await cluster.create(SERVICES, body, created=created)


def derived(cluster: Cluster, name: str, namespace: str = "default") -> dict[str, Any] | None:
    key = (kmock.resource(VS), namespace, name)
    if key not in cluster.server.objects or cluster.server.objects[key].deleted:
        return None
    return cluster.get(VS, namespace, name)


def ingress(cluster: Cluster, name: str, namespace: str = "default") -> list[dict[str, Any]]:
    return ((cluster.get(SERVICES, namespace, name).get("status") or {}).get("loadBalancer") or {}).get("ingress") or []


def reasons(cluster: Cluster, name: str) -> list[str]:
    return [e["reason"] for e in cluster.events(name) if e["involvedObject"]["kind"] == "Service"]


def touched(cluster: Cluster, name: str) -> list[str]:
    """Every write vsop made about Service `name`: on it, its status, an Event about it, a VirtualService for it."""
    found = []
    for r in cluster.requests():
        if r.method not in ("POST", "PATCH", "PUT", "DELETE") or r.headers.get("User-Agent", "").startswith("kmock"):
            continue
        body = r.data if isinstance(r.data, dict) else {}
        if (r.resource is not None and r.resource.plural == "services" and r.name == name) \
                or (body.get("involvedObject") or {}).get("name") == name \
                or ((body.get("metadata") or {}).get("labels") or {}).get("vsop.dev/service") == name:
            found.append(f"{r.method} {r.url.path}")
    return found


async def test_a_service_of_the_class_is_allocated_derived_and_given_its_status(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await pool(cluster, "lan", ["192.0.2.10-192.0.2.11"])
    await service(cluster, "web", sessionAffinity="ClientIP")
    async with run_controller(cluster) as (controller, writer):
        vs = await until(lambda: derived(cluster, "web-lb-v4"), "the derived VirtualService")
        assert vs["metadata"]["labels"] == {"vsop.dev/service": "web"}
        [owner] = vs["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == \
            ("Service", "web", cluster.get(SERVICES, "default", "web")["metadata"]["uid"], True)
        assert vs["spec"] == {"vip": "192.0.2.10", "ports": [{"port": 80, "protocol": "TCP", "name": "http"}], "serviceRef": {"name": "web"},
                              "persistence": {"timeoutSeconds": 10800}}
        assert ingress(cluster, "web") == [], "no status before the derived object is Ready"
        await report(cluster, "web-lb-v4", "node-a", total=1, healthy=1)  # the node's agent programmed it
        await until(lambda: ingress(cluster, "web"), "the load balancer status")
        assert ingress(cluster, "web") == [{"ip": "192.0.2.10", "ipMode": "Proxy"}]
        assert reasons(cluster, "web") == ["Allocated"]
        assert "assigned 192.0.2.10 from VipPool lan" in cluster.events("web")[0]["message"]

        # A hand edit of the derived object is put back.
        await cluster.patch(VS, "default", "web-lb-v4", {"spec": {"vip": "192.0.2.99", "scheduler": "wlc"}})
        await until(lambda: derived(cluster, "web-lb-v4")["spec"].get("vip") == "192.0.2.10"
                    and "scheduler" not in derived(cluster, "web-lb-v4")["spec"], "the hand edit undone")

        # Deleting the Service releases its address and its derived object.
        await cluster.delete(SERVICES, "default", "web")
        await until(lambda: derived(cluster, "web-lb-v4") is None, "the derived object deleted")
        await service(cluster, "next")
        await until(lambda: (derived(cluster, "next-lb-v4") or {}).get("spec", {}).get("vip") == "192.0.2.10", "the address reused")


async def test_local_policy_and_source_ranges_of_the_service_are_the_derived_objects(cluster: Cluster) -> None:
    """What kube-proxy's IPVS mode did with them: externalTrafficPolicy: Local and loadBalancerSourceRanges."""
    await cluster.node("node-a")
    await pool(cluster, "lan", ["192.0.2.10-192.0.2.11"])
    await service(cluster, "web", externalTrafficPolicy="Local", loadBalancerSourceRanges=["10.0.0.1/8", "fd00::/8"])
    await service(cluster, "v6only", loadBalancerSourceRanges=["fd00::/8"])
    async with run_controller(cluster):
        vs = await until(lambda: derived(cluster, "web-lb-v4"), "the derived VirtualService")
        assert (vs["spec"]["trafficPolicy"], vs["spec"]["sourceRanges"]) == ("Local", ["10.0.0.0/8"])
        other = await until(lambda: derived(cluster, "v6only-lb-v4"), "the other derived VirtualService")
        assert other["spec"]["sourceRanges"] == ["255.255.255.255/32"]  # ranges, none of its family: no client admitted
        assert "trafficPolicy" not in other["spec"]


async def test_foreign_and_classless_services_are_never_touched(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await pool(cluster, "lan", ["192.0.2.10-192.0.2.20"])
    await service(cluster, "metallb", lb_class="metallb.io/metallb")
    await service(cluster, "classless", lb_class=None)
    await service(cluster, "ours")
    async with run_controller(cluster) as (controller, writer):
        await until(lambda: derived(cluster, "ours-lb-v4"), "ours is served")
        await resync(controller)
        assert touched(cluster, "metallb") == [] and touched(cluster, "classless") == []
        assert touched(cluster, "ours")
    async with run_controller(cluster, lb=LoadBalancerOptions(default_load_balancer=True)) as (controller, _):
        await until(lambda: derived(cluster, "classless-lb-v4"), "a classless Service with --default-load-balancer")
        await resync(controller)
        assert touched(cluster, "metallb") == []


async def test_exhaustion_fails_and_two_asking_for_one_address_the_older_wins(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await pool(cluster, "tiny", ["192.0.2.10"])
    await service(cluster, "first", annotations={"vsop.dev/load-balancer-ips": "192.0.2.10"}, created="2024-01-01T00:00:00Z")
    await service(cluster, "second", annotations={"vsop.dev/load-balancer-ips": "192.0.2.10"}, created="2024-01-02T00:00:00Z")
    await service(cluster, "third", created="2024-01-03T00:00:00Z")
    async with run_controller(cluster) as (controller, writer):
        await until(lambda: "IPInUse" in reasons(cluster, "second") and "AllocationFailed" in reasons(cluster, "third"), "the refusals")
        assert derived(cluster, "first-lb-v4")["spec"]["vip"] == "192.0.2.10"
        assert derived(cluster, "second-lb-v4") is None and derived(cluster, "third-lb-v4") is None
        [in_use] = [e for e in cluster.events("second") if e["reason"] == "IPInUse"]
        assert in_use["type"] == "Warning" and in_use["message"] == "192.0.2.10 is in use by Service default/first"
        [failed] = [e for e in cluster.events("third") if e["reason"] == "AllocationFailed"]
        assert failed["message"] == "no free IPv4 address: VipPools granting it (tiny)"
        await resync(controller)
        assert reasons(cluster, "third") == ["AllocationFailed"], "told once, not every turn"


async def test_a_restarted_controller_keeps_every_address(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await pool(cluster, "lan", ["192.0.2.10-192.0.2.20"])
    for i, name in enumerate(("a", "b", "c")):
        await service(cluster, name, created=f"2024-01-0{i + 1}T00:00:00Z")
    async with run_controller(cluster) as (controller, writer):
        await until(lambda: all(derived(cluster, f"{n}-lb-v4") for n in "abc"), "three derived objects")
        for name in "abc":
            await report(cluster, f"{name}-lb-v4", "node-a", total=1, healthy=1)
        await until(lambda: all(ingress(cluster, n) for n in "abc"), "three statuses")
    before = {n: (derived(cluster, f"{n}-lb-v4")["spec"]["vip"], ingress(cluster, n)) for n in "abc"}
    # A new Service arrives while no controller runs; the older ones keep their addresses.
    await service(cluster, "d", created="2023-12-31T00:00:00Z")  # older than all: still no takeover
    async with run_controller(cluster) as (controller, writer):
        await until(lambda: derived(cluster, "d-lb-v4"), "the new one served")
        await resync(controller)
        assert {n: (derived(cluster, f"{n}-lb-v4")["spec"]["vip"], ingress(cluster, n)) for n in "abc"} == before
        assert derived(cluster, "d-lb-v4")["spec"]["vip"] not in {v for v, _ in before.values()}
        assert [e["reason"] for n in "abc" for e in cluster.events(n) if e["involvedObject"]["kind"] == "Service"] == ["Allocated"] * 3, \
            "no Event again for what was already allocated"
