"""Netns tier: the BGP lab's control plane on this machine's kernel, with Debian's BIRD 2.

A router namespace runs BIRD with `merge paths` (ECMP into its kernel); two node namespaces
each run vsop's reconciler (fake IPVS, links, sets and chains: this kernel has no IPVS; the
real route adapter on the node's own table 4242) and their own BIRD on a bird.conf rendered
from a BGPSpeaker (eBGP, BFD 100 ms x 3, hold time 9 s), each with its own control socket.

- both nodes serve the VIP: the router holds one route with both nodes as next hops;
- every real server on node 1 fails its checks: node 1's route goes, the router keeps node 2;
  they recover: both again;
- node 1 goes silent (the router drops what node 1 sends): BFD takes node 1's session down
  before the hold time (BIRD names BFD as the cause); the time it took is printed;
- `cleanup` on node 1 removes its table routes and nothing else: a foreign route in the same
  table (another protocol) and one in another table survive.

The data path (client -> router -> either node's IPVS -> a backend) needs IPVS, which only the
vm tier's kernel has: tests/vm/test_bgp.py repeats the silent nodes and cleanup with packets.
These stay for what the VM cannot give: BFD and hold-time figures on an unemulated kernel (BFD
at 100 ms x 3, a 3 s hold time), the route operations the reconciler and cleanup planned, and a
quick signal without qemu. Each test starts its own lab: BIRD's first connect waits its
`connect delay time` (5 s).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.unit.node.test_reconciler import web
from vsop.adapters.kernel import fake_kernel
from vsop.adapters.routes import RouteKernel
from vsop.api.speaker import parse_bgp_speaker
from vsop.bgp.render import render_bird
from vsop.core.desired import Node
from vsop.core.state import RealServerKey, ServiceKey
from vsop.node.reconciler import Reconciler
from vsop.node.whole import cleanup

BIRD = shutil.which("bird") or "/usr/sbin/bird"
BIRDC = shutil.which("birdc") or "/usr/sbin/birdc"
VIP = "169.254.20.1"
HOLD_SECONDS = 9

NO_BFD_HOLD_SECONDS = 3  # without BFD, the lab's only detector: the shortest hold time BGP allows
ROUTER_CONF = """\
router id 10.10.0.1;
protocol device {}
protocol kernel {
	merge paths on;
	ipv4 { import none; export all; };
}
protocol bfd {}
template bgp node {
	local as 65000;
	hold time %(hold)d;
	keepalive time 1;
	%(bfd)s
	ipv4 { import all; export none; };
}
protocol bgp node1 from node { neighbor 10.10.1.2 as 65001; }
protocol bgp node2 from node { neighbor 10.10.2.2 as 65001; }
"""
BFD = "bfd { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };"


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> float:
    """Poll `condition` every 20 ms; the seconds it took. A bound only so a broken lab fails, not a figure."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"waited {seconds} s for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


@dataclass
class Lab:
    router: str
    nodes: list[str]
    sockets: dict[str, Path]
    reconcilers: list[Reconciler]

    def next_hops(self) -> set[str]:
        text = sh("ip", "-n", self.router, "route", "show", VIP)
        return {word_after(line, "via") for line in text.splitlines() if " via " in line}

    def birdc(self, ns: str, *command: str) -> str:
        return sh(BIRDC, "-s", str(self.sockets[ns]), *command)


def word_after(line: str, word: str) -> str:
    words = line.split()
    return words[words.index(word) + 1]


def speaker(index: int, bfd: bool) -> dict:
    peer = {"address": f"10.10.{index}.1", "asn": 65000, "holdTimeSeconds": HOLD_SECONDS if bfd else NO_BFD_HOLD_SECONDS, "keepaliveSeconds": 1}
    if bfd:
        peer["bfd"] = {"minRxMs": 100, "minTxMs": 100, "multiplier": 3}
    return {
        "apiVersion": "vsop.dev/v1alpha1", "kind": "BGPSpeaker", "metadata": {"name": f"node{index}"},
        "spec": {"localASN": 65001, "routerID": f"10.10.{index}.2", "peers": [peer]},
    }


def failing(node: int) -> frozenset[RealServerKey]:
    tcp, udp = ServiceKey("tcp", VIP, 80), ServiceKey("udp", VIP, 53)
    return frozenset(RealServerKey(s, a, 8080 if s is tcp else 53) for s in (tcp, udp) for a in ("10.1.0.1", "10.1.0.2"))


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    bfd = getattr(request, "param", True)
    suffix = secrets.token_hex(3)
    router, nodes = f"vsoprtr-{suffix}", [f"vsopn1-{suffix}", f"vsopn2-{suffix}"]
    processes: list[subprocess.Popen[str]] = []
    routes: list[RouteKernel] = []
    try:
        for ns in (router, *nodes):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for index, node in enumerate(nodes, start=1):
            sh("ip", "link", "add", f"r{index}-{suffix}", "netns", router, "type", "veth", "peer", "name", "up0", "netns", node)
            sh("ip", "-n", router, "addr", "add", f"10.10.{index}.1/24", "dev", f"r{index}-{suffix}")
            sh("ip", "-n", router, "link", "set", f"r{index}-{suffix}", "up")
            sh("ip", "-n", node, "addr", "add", f"10.10.{index}.2/24", "dev", "up0")
            sh("ip", "-n", node, "link", "set", "up0", "up")
        sockets = {}
        configs = {router: ROUTER_CONF % {"hold": HOLD_SECONDS if bfd else NO_BFD_HOLD_SECONDS, "bfd": BFD if bfd else ""}}
        for index, node in enumerate(nodes, start=1):
            configs[node] = render_bird(parse_bgp_speaker(speaker(index, bfd)), ())
        for ns, text in configs.items():
            conf, sock = tmp_path / f"{ns}.conf", tmp_path / f"{ns}.ctl"
            conf.write_text(text)
            sockets[ns] = sock
            processes.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, BIRD, "-f", "-c", str(conf), "-s", str(sock), "-P", str(tmp_path / f"{ns}.pid")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            ))
        reconcilers = []
        for node in nodes:
            kernel, _ = fake_kernel()
            kernel.routes = RouteKernel(netns=node)  # the real table; IPVS and the rest in memory
            routes.append(kernel.routes)
            reconciler = Reconciler(kernel, Node(node))
            reconciler.set_objects([web("web", VIP, announce="bgp", healthCheck={"type": "tcp"})])
            assert reconciler.reconcile().ok
            reconcilers.append(reconciler)
        lab = Lab(router, nodes, sockets, reconcilers)
        until(lambda: all(s.exists() for s in sockets.values()), "the BIRDs' control sockets")
        seconds = until(lambda: len(lab.next_hops()) == 2, "the router's ECMP route to the VIP")
        print(f"\nbgp lab: both sessions up and the ECMP route in the router's kernel {seconds:.1f} s after start")
        yield lab
    finally:
        for adapter in routes:
            adapter.close()
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
        for ns in (router, *nodes):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_ecmp_across_both_nodes_and_withdrawal_when_every_backend_of_a_node_fails(lab: Lab) -> None:
    assert lab.next_hops() == {"10.10.1.2", "10.10.2.2"}
    node1 = lab.reconcilers[0]
    node1.set_out_of_service(failing(1))
    outcome = node1.reconcile()
    assert outcome.ok and [op.kind for op in outcome.applied] == ["route.delete"]
    gone = until(lambda: lab.next_hops() == {"10.10.2.2"}, "node 1's withdrawal at the router")
    node1.set_out_of_service(frozenset())
    assert [op.kind for op in node1.reconcile().applied] == ["route.add"]
    back = until(lambda: lab.next_hops() == {"10.10.1.2", "10.10.2.2"}, "node 1 announced again")
    print(f"\nbgp lab: node 1's route written -> the router's kernel: withdrawn {gone * 1000:.0f} ms, announced again {back * 1000:.0f} ms")


def silence_node_1(lab: Lab) -> float:
    """The router drops everything node 1 sends; the seconds until node 1 is withdrawn from its kernel."""
    interface = sh("ip", "-n", lab.router, "-o", "addr", "show", "to", "10.10.1.1").split()[1]
    sh("ip", "netns", "exec", lab.router, "iptables", "-I", "INPUT", "-i", interface, "-j", "DROP")
    return until(lambda: lab.next_hops() == {"10.10.2.2"}, "node 1 withdrawn after it went silent", seconds=3 * HOLD_SECONDS)


def test_a_silent_node_is_withdrawn_by_bfd_before_its_hold_time(lab: Lab) -> None:
    seconds = silence_node_1(lab)
    print(f"\nbgp lab: node 1 silent -> withdrawn from the router's kernel in {seconds:.2f} s (BFD 100 ms x 3, hold time {HOLD_SECONDS} s)")
    # BIRD says why the session went down: BFD, not the hold timer.
    assert "BFD session down" in lab.birdc(lab.router, "show", "protocols", "all", "node1")


@pytest.mark.parametrize("lab", [False], indirect=True, ids=["no-bfd"])
def test_without_bfd_a_silent_node_is_withdrawn_when_its_hold_time_expires(lab: Lab) -> None:
    seconds = silence_node_1(lab)
    print(f"\nbgp lab: node 1 silent -> withdrawn from the router's kernel in {seconds:.2f} s (no BFD, hold time {NO_BFD_HOLD_SECONDS} s)")
    assert "Hold timer expired" in lab.birdc(lab.router, "show", "protocols", "all", "node1")


def test_cleanup_on_node_1_removes_its_routes_and_nothing_else(lab: Lab) -> None:
    node1 = lab.nodes[0]
    sh("ip", "-n", node1, "route", "add", "blackhole", "192.0.2.99/32", "table", "4242", "proto", "static")
    sh("ip", "-n", node1, "route", "add", "blackhole", "192.0.2.98/32", "table", "100", "proto", "118")
    result = cleanup(lab.reconcilers[0].kernel)
    assert [op.kind for op in result.applied if op.kind.startswith("route")] == ["route.delete"]
    assert sh("ip", "-n", node1, "route", "show", "table", "4242").split() == ["blackhole", "192.0.2.99", "proto", "static"]
    assert "192.0.2.98" in sh("ip", "-n", node1, "route", "show", "table", "100")
    until(lambda: lab.next_hops() == {"10.10.2.2"}, "node 1's withdrawal after cleanup")
    assert "Established" in lab.birdc(node1, "show", "protocols", "vsop_peer_1")  # BIRD itself is left alone
