"""Who may claim an address, in the cluster (--vip-policy=pools, the default as deployed): the agents and the
controller against the API emulator, with VipPools and Namespaces. A tenant's claim on the cloud metadata
address, on another tenant's pool or on an address no pool holds reaches no kernel and is told (status,
one Event, naming spec.vip and why); a granted claim is programmed; a Namespace's labels and a pool
created later are judged again; an older object outside the pool cannot squat the owner's port."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kube.conftest import NAMESPACES, POOLS, WAIT_SECONDS, Cluster, make_agent, make_controller, resync, running, until
from tests.kube.test_controller import condition, conditions

pytestmark = pytest.mark.asyncio

# An upper bound only: a controller and two agents start their watches at once on a shared machine.
STARTUP = 3 * WAIT_SECONDS
PORTS = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
BACKENDS = [{"address": "192.168.2.111"}]


def spec(vip: str) -> dict[str, Any]:
    return {"vip": vip, "ports": PORTS, "backends": BACKENDS}


async def pool(cluster: Cluster, name: str, addresses: list[str], **allocation: Any) -> None:
    body: dict[str, Any] = {"addresses": addresses}
    if allocation:
        body["serviceAllocation"] = allocation
    await cluster.create(POOLS, {"apiVersion": "vsop.dev/v1alpha1", "kind": "VipPool", "metadata": {"name": name}, "spec": body})


async def namespace(cluster: Cluster, name: str, labels: dict[str, str] | None = None) -> None:
    await cluster.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}})


def vips(fake: Any) -> set[str]:
    return set(fake.state.bound_vips())


def event_reasons(cluster: Cluster, name: str, namespace: str) -> list[str]:
    return [e["reason"] for e in cluster.events(name) if e["involvedObject"]["namespace"] == namespace]


def components(cluster: Cluster) -> tuple[Any, ...]:
    controller, writer = make_controller(cluster, vip_policy="pools")
    agent_a, fake_a, _ = make_agent(cluster, "node-a", vip_policy="pools")
    agent_b, fake_b, _ = make_agent(cluster, "node-b", vip_policy="pools")
    return controller, writer, agent_a, fake_a, agent_b, fake_b


async def test_a_tenant_is_refused_the_metadata_address_and_another_tenants_pool_on_every_node(cluster: Cluster) -> None:
    await cluster.node("node-a", addresses=("10.0.0.11",))
    await cluster.node("node-b", addresses=("10.0.0.12",))
    await namespace(cluster, "team-a")
    await namespace(cluster, "team-b")
    await pool(cluster, "team-a", ["198.51.100.0/28"], namespaces=["team-a"])
    await cluster.vs("metadata", spec("169.254.169.254"), namespace="team-b")
    await cluster.vs("theirs", spec("198.51.100.3"), namespace="team-b")
    await cluster.vs("mine", spec("198.51.100.4"), namespace="team-a")
    controller, writer, agent_a, fake_a, agent_b, fake_b = components(cluster)
    async with running(controller, agent_a, agent_b):
        await until(lambda: condition(cluster, "mine", "Programmed", "team-a") == ("True", "Programmed"), "the granted claim programmed",
                    timeout=STARTUP)
        await until(lambda: condition(cluster, "metadata", "Ready", "team-b") == ("False", "VIPNotAllowed")
                    and condition(cluster, "theirs", "Ready", "team-b") == ("False", "VIPNotAllowed"), "both refusals told")
        assert vips(fake_a) == vips(fake_b) == {"198.51.100.4"}, "nothing of the refused claims reaches a kernel"
        assert not any(k.vip != "198.51.100.4" for fake in (fake_a, fake_b) for k in fake.state.services)
        metadata = conditions(cluster, "metadata", "team-b")
        assert metadata["Programmed"]["reason"] == "VIPNotAllowed"
        assert metadata["Ready"]["message"].startswith("spec.vip: 169.254.169.254 is a cloud metadata address")
        assert conditions(cluster, "theirs", "team-b")["Ready"]["message"].startswith(
            "spec.vip: 198.51.100.3 lies in VipPool team-a, which does not grant namespace team-b")
        await until(lambda: event_reasons(cluster, "metadata", "team-b") and event_reasons(cluster, "theirs", "team-b"), "the Events")
        await resync(controller)
        await resync(agent_a)
        # One Event per refusal (the controller's), none from the nodes; no node reports the refused objects.
        assert event_reasons(cluster, "metadata", "team-b") == ["VIPNotAllowed"]
        assert event_reasons(cluster, "theirs", "team-b") == ["VIPNotAllowed"]
        [theirs] = [e for e in cluster.events("theirs")]
        assert theirs["involvedObject"]["kind"] == "VirtualService" and theirs["type"] == "Warning"
        assert "spec.vip: 198.51.100.3" in theirs["message"]
        assert all(ref not in cluster.report(node) for ref in ("team-b/metadata", "team-b/theirs") for node in ("node-a", "node-b"))
        assert "team-a/mine" in cluster.report("node-a")


async def test_an_older_object_outside_the_pool_cannot_squat_the_owners_port(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await cluster.node("node-b")
    await namespace(cluster, "team-a")
    await namespace(cluster, "team-b")
    await pool(cluster, "team-a", ["198.51.100.0/28"], namespaces=["team-a"])
    await cluster.vs("squat", spec("198.51.100.3"), namespace="team-b", created="2024-01-01T00:00:00Z")
    await cluster.vs("owner", spec("198.51.100.3"), namespace="team-a", created="2025-01-01T00:00:00Z")
    controller, writer, agent_a, fake_a, agent_b, fake_b = components(cluster)
    async with running(controller, agent_a, agent_b):
        await until(lambda: condition(cluster, "owner", "Programmed", "team-a") == ("True", "Programmed"), "the owner programmed",
                    timeout=STARTUP)
        assert condition(cluster, "owner", "Conflict", "team-a") == ("False", "NoConflict")
        assert condition(cluster, "squat", "Ready", "team-b") == ("False", "VIPNotAllowed")
        for fake in (fake_a, fake_b):
            assert owners(fake) == {"team-a/owner"}


async def test_a_namespace_selector_is_judged_again_when_the_namespaces_labels_change(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await namespace(cluster, "shop", {"tier": "db"})
    await pool(cluster, "web", ["203.0.113.0/28"], namespaceSelectors=[{"matchLabels": {"tier": "web"}}])
    await cluster.vs("front", spec("203.0.113.5"), namespace="shop")
    controller, _ = make_controller(cluster, vip_policy="pools")
    agent, fake, _ = make_agent(cluster, "node-a", vip_policy="pools")
    async with running(controller, agent):
        await until(lambda: condition(cluster, "front", "Ready", "shop") == ("False", "VIPNotAllowed"), "refused: tier=db")
        assert vips(fake) == set()
        await cluster.patch(NAMESPACES, None, "shop", {"metadata": {"labels": {"tier": "web"}}})
        await until(lambda: vips(fake) == {"203.0.113.5"}, "programmed once the Namespace is labelled tier=web")
        await until(lambda: condition(cluster, "front", "Programmed", "shop") == ("True", "Programmed"), "the status follows")
        await cluster.patch(NAMESPACES, None, "shop", {"metadata": {"labels": {"tier": "db"}}})
        await until(lambda: vips(fake) == set(), "removed when the label goes")
        await until(lambda: condition(cluster, "front", "Ready", "shop") == ("False", "VIPNotAllowed"), "refused again")


async def test_a_pool_created_later_grants_the_waiting_claim(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await cluster.vs("web", spec("192.0.2.7"))
    controller, _ = make_controller(cluster, vip_policy="pools")
    agent, fake, _ = make_agent(cluster, "node-a", vip_policy="pools")
    async with running(controller, agent):
        await until(lambda: condition(cluster, "web", "Ready") == ("False", "VIPNotAllowed"), "refused: no pool")
        assert conditions(cluster, "web")["Ready"]["message"] == "spec.vip: 192.0.2.7 lies in no VipPool granting namespace default (no VipPool exists)"
        await resync(agent)
        assert vips(fake) == set() and fake.state.services == {}
        await pool(cluster, "lan", ["192.0.2.0/28"])
        await until(lambda: vips(fake) == {"192.0.2.7"}, "programmed once a pool grants it")
        await until(lambda: condition(cluster, "web", "Ready") == ("True", "Ready"), "Ready")
        await cluster.delete(POOLS, None, "lan")
        await until(lambda: vips(fake) == set(), "removed when the pool goes")


async def test_policy_any_keeps_every_vip_but_the_metadata_address(cluster: Cluster) -> None:
    await cluster.node("node-a")
    await cluster.vs("web", spec("192.0.2.7"))
    await cluster.vs("metadata", spec("169.254.169.254"))
    controller, _ = make_controller(cluster, vip_policy="any")
    agent, fake, _ = make_agent(cluster, "node-a", vip_policy="any")
    async with running(controller, agent):
        await until(lambda: condition(cluster, "web", "Programmed") == ("True", "Programmed"), "programmed without a pool")
        await until(lambda: condition(cluster, "metadata", "Ready") == ("False", "VIPNotAllowed"), "the metadata address refused")
        assert vips(fake) == {"192.0.2.7"}
        await pool(cluster, "metadata", ["169.254.169.254"], namespaces=["default"])
        await until(lambda: vips(fake) == {"192.0.2.7", "169.254.169.254"}, "a pool naming it grants it")


def released(cluster: Cluster, pool_name: str) -> list[str]:
    """namespace/name of the claims a VipPool's status holds for deleted objects."""
    return [f"{e['namespace']}/{e['name']}" for e in (cluster.get(POOLS, None, pool_name).get("status") or {}).get("released") or ()]


def served_for(fake: Any, address: str) -> bool:
    """Whether this node's kernel ever got a real server `address` (the squatter's backend)."""
    return any(getattr(getattr(op, "real_server", None), "key", None) is not None and op.real_server.key.address == address
               for op in fake.applied)


def owners(fake: Any) -> set[str]:
    """Whom this node serves its VIP:ports for (the owners in the accept set's comments)."""
    accepted = fake.state.ipsets.get("VSOP-VIP-PORTS")
    return set(accepted.members.values()) if accepted is not None else set()


SQUAT_BACKENDS = [{"address": "192.168.2.222"}]


async def squatted(cluster: Cluster) -> None:
    """team-a's owner (older) and team-b's squatter on the same VIP:port, in a pool granting both namespaces."""
    await cluster.node("node-a")
    await cluster.node("node-b")
    await namespace(cluster, "team-a")
    await namespace(cluster, "team-b")
    await pool(cluster, "shared", ["198.51.100.0/28"], namespaces=["team-a", "team-b"])
    await cluster.vs("owner", spec("198.51.100.3"), namespace="team-a")
    await cluster.vs("squat", {**spec("198.51.100.3"), "backends": SQUAT_BACKENDS}, namespace="team-b")


async def test_delete_and_recreate_the_owner_it_keeps_its_port_on_every_node_even_on_a_restarted_agent(cluster: Cluster) -> None:
    await squatted(cluster)
    controller, _ = make_controller(cluster, vip_policy="pools", claim_grace_seconds=300)
    agent_a, fake_a, _ = make_agent(cluster, "node-a", vip_policy="pools", claim_grace_seconds=300)
    agent_b, fake_b, _ = make_agent(cluster, "node-b", vip_policy="pools", claim_grace_seconds=300)
    async with running(controller, agent_a):
        async with running(agent_b):
            await until(lambda: condition(cluster, "owner", "Programmed", "team-a") == ("True", "Programmed"), "the owner programmed",
                        timeout=STARTUP)
            await until(lambda: condition(cluster, "squat", "Conflict", "team-b") == ("True", "Conflict"), "the squatter refused")
            created = cluster.get("vsop.dev/v1alpha1/virtualservices", "team-a", "owner")["metadata"]["creationTimestamp"]
            await cluster.delete("vsop.dev/v1alpha1/virtualservices", "team-a", "owner")
            # The controller shares the contested claim in the pool's status; the nodes drop the owner, program no squatter.
            await until(lambda: released(cluster, "shared") == ["team-a/owner"], "the held claim shared in the pool's status")
            await until(lambda: not vips(fake_a) and not vips(fake_b), "the owner's VIP gone from both nodes")
            await until(lambda: "is held for VirtualService team-a/owner" in conditions(cluster, "squat", "team-b")["Conflict"]["message"],
                        "the squatter told whom the claim is held for")
            message = conditions(cluster, "squat", "team-b")["Conflict"]["message"]
            assert message.startswith("spec.ports[0]: 198.51.100.3:80/TCP is held for VirtualService team-a/owner, deleted: its claim is kept for it until ")
            [entry] = cluster.get(POOLS, None, "shared")["status"]["released"]
            assert (entry["vip"], entry["ports"], entry["since"]) == ("198.51.100.3", [{"port": 80, "protocol": "TCP"}], created)
        # node-b's agent restarts within the grace period: it never saw the deletion, it reads the shared claim.
        agent_b2, fake_b2, _ = make_agent(cluster, "node-b", state=fake_b.state, vip_policy="pools", claim_grace_seconds=300)
        async with running(agent_b2):
            await until(lambda: agent_b2.syncs >= 1, "the restarted agent's first sync", timeout=STARTUP)
            await resync(agent_b2)
            assert agent_b2.admission.refusals["team-b/squat"].other == "team-a/owner"
            # Re-created, younger than the squatter: the owner takes its port back on every node, the restarted one too.
            await cluster.vs("owner", spec("198.51.100.3"), namespace="team-a")
            for fake in (fake_a, fake_b2):
                await until(lambda: owners(fake) == {"team-a/owner"}, "the owner programmed again")
            await until(lambda: cluster.status("team-a", "owner").get("claimedSince") == created, "its seniority recorded on the object")
            await until(lambda: released(cluster, "shared") == [], "the held claim taken back: gone from the pool's status")
            await until(lambda: condition(cluster, "owner", "Programmed", "team-a") == ("True", "Programmed"), "the owner Programmed")
            assert condition(cluster, "squat", "Conflict", "team-b") == ("True", "Conflict")
            assert "before it was re-created" in conditions(cluster, "squat", "team-b")["Conflict"]["message"]
            await resync(controller)
            await resync(agent_a)
            await resync(agent_b2)
            assert owners(fake_b2) == {"team-a/owner"}
    for fake in (fake_a, fake_b, fake_b2):
        assert not served_for(fake, "192.168.2.222"), "the squatter was never programmed on any node"


async def test_past_the_grace_period_the_other_object_takes_the_port(cluster: Cluster) -> None:
    await squatted(cluster)
    controller, _ = make_controller(cluster, vip_policy="pools", claim_grace_seconds=2)
    agent_a, fake_a, _ = make_agent(cluster, "node-a", vip_policy="pools", claim_grace_seconds=2)
    agent_b, fake_b, _ = make_agent(cluster, "node-b", vip_policy="pools", claim_grace_seconds=2)
    async with running(controller, agent_a, agent_b):
        await until(lambda: condition(cluster, "owner", "Programmed", "team-a") == ("True", "Programmed"), "the owner programmed",
                    timeout=STARTUP)
        await cluster.delete("vsop.dev/v1alpha1/virtualservices", "team-a", "owner")
        # Nobody re-creates it: once the grace period ends (the loops wake for it) the squatter is the owner.
        for fake in (fake_a, fake_b):
            await until(lambda: owners(fake) == {"team-b/squat"}, "the squatter programmed")
        await until(lambda: condition(cluster, "squat", "Programmed", "team-b") == ("True", "Programmed"), "the squatter Programmed")
        await until(lambda: released(cluster, "shared") == [], "the expired claim gone from the pool's status")
