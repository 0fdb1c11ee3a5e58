"""announce: bgp on a real kernel, proven by packets: two nodes, their BIRDs, a router, a client.

Topology (namespaces inside the VM; BIRD is Debian's bird2):

    client 10.31.9.2 --- router (BIRD, merge paths: ECMP into its kernel) --- node1 10.31.1.2
                                                                          \\-- node2 10.31.2.2
    node1 10.31.10.11, node2 10.31.10.12 --- bridge "lan" --- backends 10.31.10.21, 10.31.10.22

Each node is a host: `vsop agent --from DIR --bgp-speaker FILE` (the real console script, in
the node's namespace, with its own folder, lock, status file, bird.conf and control socket)
and its own BIRD started on the bird.conf the agent rendered. The agent programs IPVS and puts
`blackhole VIP/32` in table 4242 when the node should attract the VIP; BIRD learns the table
and announces the route to the router (eBGP). The backends have no default route: their
answers reach the client only through the node that masqueraded the request.

The router watches node 1 with BFD (200 ms x 3) and node 2 by its hold time (9 s) alone. Its leg
on the LAN (10.31.10.1) carries only the direct-routing test's replies.

The tests share one lab (agent and BIRD starts are dear under emulation) and run in order:
the VIP announced by both nodes (the router's route has two next hops; the client's requests
pass through both nodes' IPVS and reach both backends); every backend failing node 1's checks
withdraws node 1 only, and their recovery announces it again; deleting the object on node 1
withdraws node 1 at once and its IPVS service goes after the object's drain.timeoutSeconds;
node 1 gone silent (the router drops all it sends) is withdrawn by BFD, node 2 gone silent when
its hold time expires, and the client is served through the other node meanwhile; a TCP
connection to an `mh` direct-routing VIP moved mid-flow from one node to the other keeps its
real server when the receiving node has net.ipv4.vs.sloppy_tcp=1 and is reset when it has 0;
`vsop cleanup` on node 1 (its agent stopped) withdraws node 1 and leaves BIRD, its file and
session, and foreign routes alone. The seconds each took are printed and appended to
.cache/measurements.txt: from the file written (or the backends blocked, the node silenced) to
the router's kernel.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from tests.vm.conftest import Namespaces, Netns, http_get, run, start_http_server, veth  # noqa: E402
from tests.vm.lab import STARTUP_TIMEOUT, VSOP, AgentProcess, connect, echo, serve_tcp_echo, wait_for  # noqa: E402
from tests.vm.test_agent import hex_endpoint, record  # noqa: E402
from tests.vm.test_keepalived import _on_lan, stop_process  # noqa: E402

pytestmark = [pytest.mark.vm]

BIRD = "/usr/sbin/bird"
BIRDC = "/usr/sbin/birdc"
VIP = "198.51.100.24"
CLIENT = "10.31.9.2"
NODES = {"node1": "10.31.10.11", "node2": "10.31.10.12"}  # on the backends' LAN
UPLINKS = {"node1": "10.31.1.2", "node2": "10.31.2.2"}  # towards the router, the BGP next hops
BACKENDS = {"bgpbe1": "10.31.10.21", "bgpbe2": "10.31.10.22"}
ROUTER_LAN = "10.31.10.1"  # the router's leg on the LAN: the way back for direct-routing replies
MH_VIP, ECHO = "198.51.100.25", 7007  # scheduler mh, forwarding route: a TCP echo on the backends
HOLD = 9  # seconds, both sessions
BFD = {"minRxMs": 200, "minTxMs": 200, "multiplier": 3}  # node 1's session only
DRAIN = 4  # seconds a deleted object's IPVS services stay after its route is withdrawn
CHECK = {"type": "tcp", "intervalSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2, "successThreshold": 1}
ROUTER_CONF = """\
router id 10.31.9.1;
protocol device {}
protocol kernel {
	merge paths on;
	ipv4 { import none; export all; };
}
protocol bfd {}
template bgp node {
	local as 65000;
	hold time 9;
	keepalive time 3;
	ipv4 { import all; export none; };
}
protocol bgp node1 from node { neighbor 10.31.1.2 as 65001; bfd { min rx interval 200 ms; min tx interval 200 ms; multiplier 3; }; }
protocol bgp node2 from node { neighbor 10.31.2.2 as 65001; }
"""


def speaker(name: str) -> dict:
    router_side = UPLINKS[name].rsplit(".", 1)[0] + ".1"
    peer = {"address": router_side, "asn": 65000, "holdTimeSeconds": HOLD, "keepaliveSeconds": 3}
    return {
        "apiVersion": "vsop.dev/v1alpha1", "kind": "BGPSpeaker", "metadata": {"name": name},
        "spec": {"localASN": 65001, "routerID": UPLINKS[name], "peers": [peer | {"bfd": BFD} if name == "node1" else peer]},
    }


def service() -> dict:
    return {
        "apiVersion": "vsop.dev/v1alpha1", "kind": "VirtualService", "metadata": {"name": "bgpweb", "namespace": "default"},
        "spec": {"vip": VIP, "announce": "bgp", "scheduler": "rr", "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                 "backends": [{"address": a} for a in BACKENDS.values()], "healthCheck": CHECK, "drain": {"timeoutSeconds": DRAIN}},
    }


def mh_service() -> dict:
    """Maglev hashing, direct routing (never masqueraded): the backends answer the client themselves."""
    doc = service()
    doc["metadata"]["name"] = "bgpmh"
    doc["spec"] |= {"vip": MH_VIP, "scheduler": "mh", "forwarding": "route", "ports": [{"name": "echo", "port": ECHO}]}
    return doc


@dataclass
class Node:
    name: str
    ns: Netns
    root: Path
    agent: AgentProcess
    bird: subprocess.Popen | None = None

    @property
    def folder(self) -> Path:
        return self.root / "services"

    @property
    def socket(self) -> Path:
        return self.root / "bird.ctl"

    def table(self) -> str:
        return self.ns.run("ip", "route", "show", "table", "4242").stdout

    def ipvs_clients(self) -> set[str]:
        """The client's source ports in this node's IPVS connection table (/proc/net/ip_vs_conn: entries
        stay minutes after a close; ip_vs_stats' totals lag, the estimator updates them every 2 s)."""
        client = "".join(f"{int(octet):02X}" for octet in CLIENT.split("."))
        with self.ns.entered():
            lines = Path("/proc/thread-self/net/ip_vs_conn").read_text().splitlines()[1:]
        return {fields[2] for fields in (line.split() for line in lines) if len(fields) > 2 and fields[1] == client}

    def services(self) -> str:
        with self.ns.entered():
            return Path("/proc/thread-self/net/ip_vs").read_text()

    def weight(self, address: str, port: int) -> int | None:
        """The weight of real server address:port in this node's IPVS (the first service holding it)."""
        for fields in (line.split() for line in self.services().splitlines()):
            if len(fields) >= 4 and fields[0] == "->" and fields[1] == hex_endpoint(address, port):
                return int(fields[3])
        return None


class RouteWatch:
    """The router's kernel routes over a netlink socket opened inside it: no process per sample."""

    def __init__(self, ns: Netns):
        from pyroute2 import IPRoute

        with ns.entered():
            self.ipr = IPRoute()

    def next_hops(self, address: str) -> set[str]:
        hops: set[str] = set()
        for route in self.ipr.get_routes(family=socket.AF_INET, table=254):
            if route.get_attr("RTA_DST") != address or route["dst_len"] != 32:
                continue
            if route.get_attr("RTA_GATEWAY"):
                hops.add(route.get_attr("RTA_GATEWAY"))
            for hop in route.get_attr("RTA_MULTIPATH") or ():
                hops.add(hop.get_attr("RTA_GATEWAY"))
        return hops

    def close(self) -> None:
        self.ipr.close()


@dataclass
class Lab:
    router: Netns
    client: Netns
    backends: dict[str, Netns]
    nodes: dict[str, Node]
    root: Path
    uplinks: dict[str, str]  # node -> the router's interface towards it

    watch: RouteWatch

    def next_hops(self, vip: str = VIP) -> set[str]:
        return self.watch.next_hops(vip)

    def wait_hops(self, what: str, hops: set[str], timeout: float = 60, vip: str = VIP) -> float:
        try:
            return wait_for(what, lambda: self.next_hops(vip) == hops, timeout, 0.02)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the router has {self.next_hops(vip)}\n{self.logs()}") from None

    def birdc(self, *command: str) -> str:
        """The router's BIRD."""
        return self.router.run(BIRDC, "-s", str(self.root / "router.ctl"), *command, check=False).stdout

    def logs(self) -> str:
        out = [f"router: {self.birdc('show', 'protocols')}"]
        for node in self.nodes.values():
            out.append(f"--- {node.name} table 4242: {node.table()!r}; agent log:\n{node.agent.log.read_text()[-2000:] if node.agent.log.exists() else ''}")
        return "\n".join(out)


def _network(pool: Namespaces, root: Path) -> tuple[Netns, Netns, dict[str, Netns], dict[str, Netns], dict[str, str]]:
    router, client = pool.add("bgprtr"), pool.add("bgpcl")
    # Two paths to the VIP: hash on ports too, so one client's connections take both. A direct-routing
    # reply from the VIP arrives on the LAN leg, not on a path to the VIP: no reverse-path filter.
    router.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1",
               "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
    veth(router, "10.31.9.1/24", client, f"{CLIENT}/24")
    client.run("ip", "route", "add", "default", "via", "10.31.9.1")
    lan = pool.add("bgplan")
    lan.run("ip", "-batch", "-", input="link add br0 type bridge\nlink set br0 up\n")
    _on_lan(lan, router, ROUTER_LAN)
    nodes, uplinks = {}, {}
    for name, address in NODES.items():
        ns = nodes[name] = pool.add(name)
        _on_lan(lan, ns, address)
        router_side = UPLINKS[name].rsplit(".", 1)[0] + ".1"
        uplinks[name], _ = veth(router, f"{router_side}/24", ns, f"{UPLINKS[name]}/24")
        ns.run("ip", "route", "add", "default", "via", router_side)
    backends = {}
    for name, address in BACKENDS.items():
        ns = backends[name] = pool.add(name)
        _on_lan(lan, ns, address)  # no default route: answers come back through the node that masqueraded
        start_http_server(ns, root / f"www-{name}", port=8080, body=name)
    return router, client, backends, nodes, uplinks


@pytest.fixture(scope="module")
def bgp_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("bgp")
    pool = Namespaces()
    processes: list[subprocess.Popen] = []
    nodes: dict[str, Node] = {}
    watches: list[RouteWatch] = []
    try:
        router, client, backends, spaces, uplinks = _network(pool, root)
        (root / "router.conf").write_text(ROUTER_CONF)
        processes.append(router.popen(BIRD, "-f", "-c", str(root / "router.conf"), "-s", str(root / "router.ctl"), "-P", str(root / "router.pid")))
        for name, ns in spaces.items():
            home = root / name
            (home / "services").mkdir(parents=True)
            (home / "speaker.yaml").write_text(yaml.safe_dump(speaker(name)))
            agent = AgentProcess(home, "--from", str(home / "services"), "--lock", str(home / "lock"),
                                 "--bgp-speaker", str(home / "speaker.yaml"), "--bird-conf", str(home / "bird.conf"),
                                 "--bird-socket", str(home / "bird.ctl"), prefix=ns.cmd(), resync_seconds=30)
            nodes[name] = Node(name, ns, home, agent)
        start_together([node.agent for node in nodes.values()])  # their first syncs render bird.conf
        for name, node in nodes.items():
            assert (node.root / "bird.conf").read_text().startswith("# Generated by vsop")
            node.bird = node.ns.popen(BIRD, "-f", "-c", str(node.root / "bird.conf"), "-s", str(node.socket), "-P", str(node.root / "bird.pid"))
            processes.append(node.bird)
        lab = Lab(router, client, backends, nodes, root, uplinks, RouteWatch(router))
        watches.append(lab.watch)
        for name, node in nodes.items():
            wait_for(f"{name}'s BGP session", lambda node=node: "Established" in node.ns.run(BIRDC, "-s", str(node.socket), "show", "protocols").stdout, 60, 0.2)
        yield lab
    finally:
        # Every agent, BIRD and namespace goes even when an agent would not stop (its stop fails the
        # test after): one left running would hold IPVS services in its namespace for the tests after.
        with contextlib.ExitStack() as teardown:
            teardown.callback(pool.close)
            for process in processes:
                teardown.callback(stop_process, process)
            for node in nodes.values():
                teardown.callback(node.agent.stop)
            for watch in watches:
                teardown.callback(watch.close)


def start_together(agents: list[AgentProcess], timeout: float = 3 * STARTUP_TIMEOUT) -> None:
    """Start the agents at once (their imports overlap under emulation); return after each one's first sync."""
    for agent in agents:
        agent.status_file.unlink(missing_ok=True)
        agent.process = subprocess.Popen(
            [*agent.prefix, VSOP, "agent", *agent.args, "--poll-seconds", "0.2", "--resync-seconds", str(agent.resync_seconds),
             "--status-file", str(agent.status_file), "--state-file", str(agent.state_file), "-v"],
            stdout=subprocess.DEVNULL, stderr=open(agent.log, "a"), start_new_session=True,
        )
    for agent in agents:
        try:
            wait_for("the agent's first sync", lambda agent=agent: agent.status().get("lastSync", {}).get("at"), timeout, 0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; exit code {agent.process.poll() if agent.process else None}; log:\n{agent.log.read_text()[-3000:]}") from None


def write_service(node: Node, doc: dict | None = None) -> None:
    doc = doc or service()
    name = doc["metadata"]["name"]
    temporary = node.folder / f".{name}.yaml.tmp"
    temporary.write_text(yaml.safe_dump(doc))
    temporary.rename(node.folder / f"{name}.yaml")


def served_through_both(lab: Lab, count: int = 24) -> tuple[dict[str, int], set[str]]:
    """`count` requests from the client (a new source port each); the connections each node's
    IPVS scheduled meanwhile and the backends that answered."""
    before = {name: node.ipvs_clients() for name, node in lab.nodes.items()}
    answered = {http_get(VIP, 80, netns=lab.client, timeout=5).strip() for _ in range(count)}
    return {name: len(node.ipvs_clients() - before[name]) for name, node in lab.nodes.items()}, answered


def test_both_nodes_announce_the_vip_and_the_client_is_served_through_both(bgp_lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    lab = bgp_lab
    assert lab.next_hops() == set()  # nothing declared: nothing announced
    for name in ("node1", "node2"):
        write_service(lab.nodes[name])
        seconds = lab.wait_hops(f"{name} announcing {VIP}", {UPLINKS[n] for n in ("node1", "node2") if n <= name})
        record(capsys, f"BGP (vm): VirtualService file written on {name} -> {VIP}/32 via {name} in the router's kernel in {seconds:.2f} s")
    for node in lab.nodes.values():
        assert node.table().split()[:2] == ["blackhole", VIP], node.table()
    per_node, answered = served_through_both(lab)
    assert all(count > 0 for count in per_node.values()), per_node
    assert answered == set(BACKENDS), answered
    record(capsys, f"BGP (vm): 24 client connections over the router's ECMP route: {per_node} by node, answered by {sorted(answered)}")


def block(lab: Lab, node: str, on: bool) -> None:
    """Every backend drops what `node` sends (its health checks and its clients' requests) or takes it again."""
    for ns in lab.backends.values():
        ns.run("iptables", "-I" if on else "-D", "INPUT", "-s", NODES[node], "-j", "DROP")


def test_every_backend_failing_node_1s_checks_withdraws_node_1_only(bgp_lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    lab = bgp_lab
    both = {UPLINKS["node1"], UPLINKS["node2"]}
    lab.wait_hops("both nodes announcing", both)
    block(lab, "node1", True)
    try:
        gone = lab.wait_hops("node1 withdrawn after its checks failed", {UPLINKS["node2"]})
        assert lab.nodes["node1"].table().strip() == ""
        assert VIP in lab.nodes["node2"].table()
        # Everything the client sends now goes through node 2, which still reaches the backends.
        per_node, answered = served_through_both(lab, 8)
        assert per_node == {"node1": 0, "node2": 8} and answered == set(BACKENDS), (per_node, answered)
    finally:
        block(lab, "node1", False)
    back = lab.wait_hops("node1 announced again after its checks passed", both)
    limit = CHECK["intervalSeconds"] * CHECK["failureThreshold"] + CHECK["timeoutSeconds"]
    record(capsys, f"BGP (vm): node1's backends blocked -> withdrawn from the router's kernel in {gone:.2f} s "
                   f"(checks every {CHECK['intervalSeconds']} s, {CHECK['failureThreshold']} failures, timeout {CHECK['timeoutSeconds']} s: {limit} s); "
                   f"unblocked -> announced again in {back:.2f} s")


def test_deleting_the_object_on_node_1_withdraws_its_route_first_and_removes_its_service_after_the_drain(
    bgp_lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = bgp_lab
    node1 = lab.nodes["node1"]
    lab.wait_hops("both nodes announcing", {UPLINKS["node1"], UPLINKS["node2"]})
    deleted = time.monotonic()
    (node1.folder / "bgpweb.yaml").unlink()
    gone = lab.wait_hops("node1 withdrawn after its object was deleted", {UPLINKS["node2"]})
    # The route went first: node 1's IPVS service is still there, serving what the network still sends.
    assert hex_endpoint(VIP, 80) in node1.services() and node1.table().strip() == ""
    wait_for("node1's IPVS service removed after the drain", lambda: hex_endpoint(VIP, 80) not in node1.services(), 60, 0.1)
    removed = time.monotonic() - deleted
    assert removed >= DRAIN  # never before the drain
    per_node, answered = served_through_both(lab, 6)
    assert per_node["node2"] == 6 and answered == set(BACKENDS), (per_node, answered)
    record(capsys, f"BGP (vm): the object's file deleted on node1 -> withdrawn from the router's kernel in {gone:.2f} s, "
                   f"its IPVS service removed {removed:.2f} s after the deletion (drain.timeoutSeconds {DRAIN})")
    # The session itself stays up: BIRD and its configuration are untouched by a VIP going.
    assert "Established" in node1.ns.run(BIRDC, "-s", str(node1.socket), "show", "protocols", "vsop_peer_1").stdout


def silence(lab: Lab, name: str, on: bool) -> None:
    """The router drops everything `name` sends it (BGP, BFD, forwarded replies), as if the node had died, or takes it again."""
    for chain in ("INPUT", "FORWARD"):
        lab.router.run("iptables", "-I" if on else "-D", chain, "-i", lab.uplinks[name], "-j", "DROP")


def restart_session(lab: Lab, name: str) -> None:
    """After a session failure both BIRDs sit out their `error wait time` (60 s) before trying again; an
    administrative restart on both ends clears that wait."""
    lab.birdc("restart", name)
    node = lab.nodes[name]
    node.ns.run(BIRDC, "-s", str(node.socket), "restart", "vsop_peer_1")


def withdrawn_when_silent(lab: Lab, name: str) -> tuple[float, float, str]:
    """Silence `name`: the seconds until the router's kernel holds the other node alone, the router's account of
    the session, the seconds until `name` is announced again once heard. Meanwhile every request of the client
    goes through the other node (one through the silent node would get no answer: its replies are dropped)."""
    other = next(n for n in lab.nodes if n != name)
    both = {UPLINKS[n] for n in lab.nodes}
    lab.wait_hops("both nodes announcing", both)
    silence(lab, name, True)
    try:
        gone = lab.wait_hops(f"{name} withdrawn after it went silent", {UPLINKS[other]}, timeout=6 * HOLD)
        account = lab.birdc("show", "protocols", "all", name)
        per_node, answered = served_through_both(lab, 8)
        assert per_node == {name: 0, other: 8} and answered == set(BACKENDS), (per_node, answered)
    finally:
        silence(lab, name, False)
    restart_session(lab, name)
    return gone, lab.wait_hops(f"{name} announced again once heard", both), account


def test_node_1_gone_silent_is_withdrawn_by_bfd_and_the_client_is_served_through_node_2(bgp_lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    write_service(bgp_lab.nodes["node1"])  # the previous test deleted it
    gone, back, account = withdrawn_when_silent(bgp_lab, "node1")
    assert "BFD session down" in account, account  # BFD took the session down, not the hold timer
    record(capsys, f"BGP (vm): node1 silent -> withdrawn from the router's kernel in {gone:.2f} s (BFD {BFD['minRxMs']} ms x "
                   f"{BFD['multiplier']}, hold time {HOLD} s), 8 of 8 requests through node2 meanwhile; heard again and its "
                   f"session restarted -> announced again in {back:.2f} s")


def test_node_2_gone_silent_without_bfd_is_withdrawn_when_its_hold_time_expires(bgp_lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    gone, back, account = withdrawn_when_silent(bgp_lab, "node2")
    assert "Hold timer expired" in account, account
    record(capsys, f"BGP (vm): node2 silent -> withdrawn from the router's kernel in {gone:.2f} s (no BFD, hold time {HOLD} s), "
                   f"8 of 8 requests through node1 meanwhile; heard again and its session restarted -> announced again in {back:.2f} s")


@contextlib.contextmanager
def direct_routing_backends(lab: Lab) -> Iterator[None]:
    """The backends hold MH_VIP on lo (answering no ARP for it), run the TCP echo and send the client's
    replies to the router's LAN leg: a node would drop a packet from its own VIP as a martian."""
    stop = threading.Event()
    listening = []
    for ns in lab.backends.values():
        ns.run("ip", "-batch", "-", input=f"addr add {MH_VIP}/32 dev lo\nroute add {CLIENT}/32 via {ROUTER_LAN}\n")
        ns.run("sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2")
        listening.append(threading.Event())
        threading.Thread(target=serve_tcp_echo, args=(ns, ECHO, stop, listening[-1]), daemon=True).start()
    try:
        assert all(event.wait(30) for event in listening), "an echo server did not listen"
        yield
    finally:
        stop.set()
        for ns in lab.backends.values():
            ns.run("ip", "-batch", "-", input=f"route del {CLIENT}/32\naddr del {MH_VIP}/32 dev lo\n", check=False)


def move_mh_vip(lab: Lab, source: str, target: str) -> float:
    """The router's route to MH_VIP goes from `source` alone to `target` alone: the object written on `target`,
    then deleted on `source` (its route goes at once). The seconds from the deletion to `target` alone."""
    write_service(lab.nodes[target], mh_service())
    lab.wait_hops(f"{target} announcing {MH_VIP} too", {UPLINKS[source], UPLINKS[target]}, vip=MH_VIP)
    (lab.nodes[source].folder / "bgpmh.yaml").unlink()
    return lab.wait_hops(f"{MH_VIP} through {target} alone", {UPLINKS[target]}, vip=MH_VIP)


def established_from_client(ns: Netns) -> list[int]:
    """The client's source ports of the established TCP connections to the echo port in `ns`."""
    client = "".join(f"{int(octet):02X}" for octet in reversed(CLIENT.split(".")))  # /proc/net/tcp: host byte order
    with ns.entered():
        lines = Path("/proc/thread-self/net/tcp").read_text().splitlines()[1:]
    ports = []
    for fields in (line.split() for line in lines):
        local, remote, state = fields[1], fields[2], fields[3]
        if state == "01" and local.endswith(f":{ECHO:04X}") and remote.startswith(f"{client}:"):
            ports.append(int(remote.split(":")[1], 16))
    return ports


def test_an_mh_direct_routing_connection_moved_to_another_node_keeps_its_real_server_with_sloppy_tcp(
    bgp_lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """Maglev hashing picks the same real server on both nodes (same kernel, same real servers added in the same
    order, same weights); the node that gets a connection mid-flow schedules its next segment only with
    net.ipv4.vs.sloppy_tcp=1 (otherwise IPVS schedules SYNs alone and the node's own stack resets the connection).
    A real server a node's checks took out (weight 0) keeps its Maglev slots: without the mh-fallback flag, which
    vsop does not set, the clients hashed to it are refused on that node."""
    lab = bgp_lab
    node1, node2 = lab.nodes["node1"], lab.nodes["node2"]
    with direct_routing_backends(lab):
        for node in (node1, node2):
            node.ns.run("sysctl", "-qw", "net.ipv4.vs.sloppy_tcp=1")
        write_service(node1, mh_service())
        lab.wait_hops(f"node1 announcing {MH_VIP}", {UPLINKS["node1"]}, vip=MH_VIP)
        with connect(lab.client, MH_VIP, ECHO) as conn:
            port = conn.getsockname()[1]
            answered_by, _ = echo(conn, "before").split(":")  # the echo names its namespace
            backend = next(name for name, ns in lab.backends.items() if ns.name == answered_by)
            assert f"{port:04X}" in node1.ipvs_clients() and f"{port:04X}" not in node2.ipvs_clients()
            moved = move_mh_vip(lab, "node1", "node2")
            assert echo(conn, "after") == f"{answered_by}:after"  # the same real server, on the same connection
            assert f"{port:04X}" in node2.ipvs_clients()  # node 2's IPVS made an entry from a segment without SYN
            assert {name: established_from_client(ns) for name, ns in lab.backends.items()} == {
                name: [port] if name == backend else [] for name in BACKENDS}
        # Node 2's checks take the client's real server out; the other one still serves, so the VIP stays announced.
        lab.backends[backend].run("iptables", "-I", "INPUT", "-s", NODES["node2"], "-j", "DROP")
        try:
            wait_for(f"node2 taking {backend} out", lambda: node2.weight(BACKENDS[backend], ECHO) == 0, 30, 0.1)
            with pytest.raises(ConnectionRefusedError):  # IPVS found no real server for this client: ICMP port unreachable
                connect(lab.client, MH_VIP, ECHO).close()
        finally:
            lab.backends[backend].run("iptables", "-D", "INPUT", "-s", NODES["node2"], "-j", "DROP")
        wait_for(f"node2 taking {backend} back", lambda: node2.weight(BACKENDS[backend], ECHO) == 1, 30, 0.1)
        # The control: the node the next connection moves to schedules SYNs only.
        node1.ns.run("sysctl", "-qw", "net.ipv4.vs.sloppy_tcp=0")
        with connect(lab.client, MH_VIP, ECHO) as conn:
            assert echo(conn, "before").endswith(":before")  # through node 2, the only one announcing
            back = move_mh_vip(lab, "node2", "node1")
            with pytest.raises(ConnectionResetError):  # node 1's own TCP stack: nothing listens on MH_VIP
                echo(conn, "after")
    record(capsys, f"BGP (vm): a TCP connection to an mh/route VIP through node1, the router's route moved to node2 alone "
                   f"({moved:.2f} s from node1's deletion): with sloppy_tcp=1 on node2 the next segment reached the same "
                   f"real server ({backend}) on the same connection; {backend} out of service on node2 (weight 0): the client's "
                   f"new connection refused there (no mh-fallback); moved back to node1 with sloppy_tcp=0 ({back:.2f} s): "
                   f"the connection was reset")


def test_vsop_cleanup_on_node_1_withdraws_it_and_leaves_bird_and_foreign_routes_alone(bgp_lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    lab = bgp_lab
    node1 = lab.nodes["node1"]
    lab.wait_hops("both nodes announcing", {UPLINKS["node1"], UPLINKS["node2"]})
    node1.agent.stop()  # SIGTERM leaves the routes and IPVS as they are: node 1 still attracts and serves the VIP
    assert VIP in node1.table() and hex_endpoint(VIP, 80) in node1.services()
    node1.ns.run("ip", "-batch", "-", input="route add blackhole 192.0.2.99/32 table 4242 proto static\n"
                                           "route add blackhole 192.0.2.98/32 table 100 proto 118\n")
    conf = (node1.root / "bird.conf").read_bytes()
    started = time.monotonic()
    node1.ns.run(VSOP, "cleanup", "--lock", str(node1.root / "lock"))
    gone = lab.wait_hops("node1 withdrawn after vsop cleanup", {UPLINKS["node2"]}) + (time.monotonic() - started)
    assert node1.table().split() == ["blackhole", "192.0.2.99", "proto", "static"]  # another protocol's route in vsop's table
    assert "192.0.2.98" in node1.ns.run("ip", "route", "show", "table", "100").stdout  # vsop's protocol in another table
    assert hex_endpoint(VIP, 80) not in node1.services()
    # BIRD is left as it was: running, its file untouched, its session up (it only lost the routes it learned).
    assert node1.bird is not None and node1.bird.poll() is None
    assert (node1.root / "bird.conf").read_bytes() == conf and node1.socket.exists()
    assert "Established" in node1.ns.run(BIRDC, "-s", str(node1.socket), "show", "protocols", "vsop_peer_1").stdout
    per_node, answered = served_through_both(lab, 6)
    assert per_node == {"node1": 0, "node2": 6} and answered == set(BACKENDS), (per_node, answered)
    record(capsys, f"BGP (vm): vsop cleanup on node1 (its agent stopped) -> withdrawn from the router's kernel {gone:.2f} s "
                   f"after the command started; BIRD's session, file and a foreign route left alone; 6 of 6 requests through node2")
