"""announce: vrrp in mode: ipvs on a real kernel: one node answers ARP for the VIP, VRRP moves it, packets prove it.

The LAN of the keepalived tests (tests/vm/test_keepalived.py): a bridge in a "lan" namespace with
two nodes, two backends and a client. Each node is a namespace running what a host runs: the vsop
host agent (`vsop agent --from DIR`, the same folder of objects for both, as one file deployed to
every host) programs IPVS, binds the VIP on vsop0 with ARP suppressed, renders keepalived's
vrrp_instance for this node (unicast to the other peer, priority by rendezvous hash) and writes
the object's track file from its health checks; keepalived runs on that configuration.

One test, in phases, because the lab is dear to start under emulation: which node answers ARP and
serves; every backend failing its checks on the master (the VIP moves, then comes back after
preempt_delay); the master's keepalived killed and its link gone (the client's neighbour entry
flips with the backup's gratuitous ARP), then what each node says: the killed one `stop` in its
status file, `vsop show` and metrics, explain and doctor there a problem with the VIP keepalived
left on eth0 (which answers ARP beside the new master once the link is up, until doctor's fix
removes it), the new master that it owns the VIP. The same LAN in IPv6 (a lab of its own): one node answers
neighbour solicitations and serves, and the backup's unsolicited neighbour advertisement moves the
client at failover. Timings are printed and appended to .cache/measurements.txt.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from tests.vm.conftest import BUSYBOX, Namespaces, Netns, http_get, run, start_http_server  # noqa: E402
from tests.vm.lab import VSOP, AgentProcess, manifest, wait_for  # noqa: E402
from tests.vm.test_agent import record  # noqa: E402
from tests.vm.test_keepalived import KEEPALIVED, AddressWatch, _on_lan, start_keepalived, stop_process  # noqa: E402
from vsop.keepalived.vrrp import spread  # noqa: E402

pytestmark = [pytest.mark.vm]

VIP = "10.202.0.100"
NODES = {"node1": "10.202.0.11", "node2": "10.202.0.12"}
BACKENDS = {"vbe1": "10.202.0.21", "vbe2": "10.202.0.22"}
CLIENT = "10.202.0.50"
ADVERT = 1
PREEMPT_DELAY = 3
CHECK = {"type": "tcp", "intervalSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2, "successThreshold": 1}
RESYNC = 5  # the agents' resync period: a killed keepalived is found gone at the next turn at the latest
METRICS_PORT = 9101  # each node's agent serves /metrics on its own loopback


@dataclass(frozen=True)
class Plan:
    """One LAN lab's addresses: the VIP, the nodes (its VRRP peers), the backends, the client."""

    vip: str
    nodes: dict[str, str]
    backends: dict[str, str]
    client: str
    router_id: int

    @property
    def family(self) -> int:
        return 6 if ":" in self.vip else 4

    def expected_master(self) -> str:
        key = ("eth0", self.router_id, self.family)
        order = spread({key: (self.vip, tuple(self.nodes.values()))})[key]
        return next(name for name, address in self.nodes.items() if address == order[0])


PLAN4 = Plan(VIP, NODES, BACKENDS, CLIENT, 52)
PLAN6 = Plan("fd02:202::100", {"node1": "fd02:202::11", "node2": "fd02:202::12"},
             {"vbe1": "fd02:202::21", "vbe2": "fd02:202::22"}, "fd02:202::50", 53)


class Neighbours:
    """The client's neighbour table over a netlink socket opened inside its namespace."""

    def __init__(self, ns: Netns):
        from pyroute2 import IPRoute

        with ns.entered():
            self.ipr = IPRoute()

    def mac_of(self, address: str) -> str | None:
        for msg in self.ipr.get_neighbours(family=socket.AF_INET6 if ":" in address else socket.AF_INET):
            if msg.get_attr("NDA_DST") == address and msg["state"] not in (0x20, 0x01):  # not FAILED, not INCOMPLETE
                return msg.get_attr("NDA_LLADDR")
        return None

    def close(self) -> None:
        self.ipr.close()


def mac(ns: Netns, ifname: str = "eth0") -> str:
    return re.search(r"link/ether ([0-9a-f:]{17})", ns.run("ip", "-o", "link", "show", ifname).stdout).group(1)


def arp_replies(client: Netns, address: str) -> list[str]:
    """The MAC of every ARP reply the client gets for `address` (busybox arping, three requests)."""
    out = client.run(BUSYBOX, "arping", "-c", "3", "-w", "5", "-I", "eth0", address, check=False).stdout
    return [m.lower() for m in re.findall(r"reply from \S+ \[([0-9A-Fa-f:]{17})\]", out)]


def nd_replies(client: Netns, address: str, wait: float = 3) -> list[str]:
    """The MAC of every neighbour advertisement the client gets for `address` after one multicast
    solicitation (what arping does for IPv4; busybox has no ND tool): the target link-layer address
    option of each NA, read from a raw ICMPv6 socket (the kernel fills in the checksum)."""
    target = ipaddress.IPv6Address(address)
    group = ipaddress.IPv6Address(int(ipaddress.IPv6Address("ff02::1:ff00:0")) | (int(target) & 0xFFFFFF))
    own = bytes.fromhex(mac(client).replace(":", ""))
    with client.entered():
        index = socket.if_nametoindex("eth0")
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    replies = []
    with sock:
        # A receiver drops neighbour discovery that arrives with a hop limit under 255 (RFC 4861 7.1.1).
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        solicitation = struct.pack("!BBHI", 135, 0, 0, 0) + target.packed + bytes([1, 1]) + own  # option 1: our MAC
        sock.sendto(solicitation, (str(group), 0, 0, index))
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(1500)
            except TimeoutError:
                break
            if len(data) < 24 or data[0] != 136 or data[8:24] != target.packed:
                continue
            options = data[24:]
            while len(options) >= 8 and options[1]:
                if options[0] == 2:  # target link-layer address
                    replies.append(":".join(f"{b:02x}" for b in options[2:8]))
                options = options[8 * options[1]:]
    return replies


def connections(ns: Netns, vip: str = VIP) -> int:
    """Connections IPVS scheduled for VIP:80 in this namespace (ipvsadm --stats)."""
    out = ns.run("ipvsadm", "-Ln", "--stats", "-t", f"[{vip}]:80" if ":" in vip else f"{vip}:80").stdout
    line = next(line for line in out.splitlines() if line.startswith("TCP"))
    return int(line.split()[2])


class Node:
    def __init__(self, name: str, ns: Netns, root: Path, objects: Path, vip: str):
        self.name, self.ns, self.work, self.vip = name, ns, root / name, vip
        self.work.mkdir()
        self.keepalived_dir, self.tracks = self.work / "keepalived", self.work / "vrrp"
        self.agent = AgentProcess(
            self.work, "--from", str(objects), "--lock", str(self.work / "lock"), "--keepalived-dir", str(self.keepalived_dir),
            "--keepalived-pidfile", str(self.work / "keepalived.pid"), "--keepalived-binary", KEEPALIVED,
            "--vrrp-track-dir", str(self.tracks), "--metrics-port", str(METRICS_PORT), prefix=ns.cmd(), resync_seconds=RESYNC,
        )
        self.keepalived = None
        self.watch: AddressWatch | None = None
        self.eth0 = 0

    def start_keepalived(self) -> None:
        self.keepalived = start_keepalived(self.work, self.keepalived_dir / "keepalived.conf", "keepalived", self.ns)

    def watch_addresses(self) -> None:
        self.watch = AddressWatch(self.ns)
        self.eth0 = self.watch.ipr.link_lookup(ifname="eth0")[0]

    def holds(self) -> bool:
        """The VIP on eth0, where keepalived puts it on the master (every node has it on vsop0)."""
        assert self.watch is not None
        family = socket.AF_INET6 if ":" in self.vip else socket.AF_INET
        return any(msg.get_attr("IFA_ADDRESS") == self.vip and msg["index"] == self.eth0
                   for msg in self.watch.ipr.get_addr(family=family))

    def logs(self) -> str:
        out = []
        for path in (self.agent.log, self.work / "keepalived.log"):
            if path.exists():
                out.append(f"--- {self.name} {path.name}\n{path.read_text()[-2500:]}")
        return "\n".join(out)


@contextlib.contextmanager
def lab(root: Path, plan: Plan) -> Iterator[tuple[dict[str, Node], Netns]]:
    """The LAN of `plan` with both nodes' agents and keepalived running."""
    pool = Namespaces()
    nodes: dict[str, Node] = {}
    try:
        bridge = pool.add("lan")
        run("ip", "-n", bridge.name, "-batch", "-", input="link add br0 type bridge\nlink set br0 up\n")
        objects = root / "objects"
        objects.mkdir()
        for name, address in plan.backends.items():
            backend = pool.add(name)
            _on_lan(bridge, backend, address)
            start_http_server(backend, root / f"www-{name}", port=8080, body=name)
        client = pool.add("client")
        _on_lan(bridge, client, plan.client)
        manifest(
            objects, "lanweb", vip=plan.vip, announce="vrrp", healthCheck=CHECK, backends=[{"address": a} for a in plan.backends.values()],
            vrrp={"interface": "eth0", "virtualRouterID": plan.router_id, "advertIntervalSeconds": ADVERT,
                  "peers": list(plan.nodes.values()), "preemptDelaySeconds": PREEMPT_DELAY},
        )
        for name, address in plan.nodes.items():
            ns = pool.add(name)
            if plan.family == 6:
                # The lab's addresses are nodad; the link-local one keepalived sends its unsolicited
                # NAs from would be tentative for a second after the link comes up: no DAD at all.
                ns.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
            _on_lan(bridge, ns, address)
            nodes[name] = Node(name, ns, root, objects, plan.vip)
        for node in nodes.values():
            node.agent.start()
            wait_for(f"{node.name}'s keepalived configuration", lambda: (node.tracks / "default_lanweb").exists(), 60, 0.3)
            node.watch_addresses()
        for node in nodes.values():
            node.start_keepalived()
        yield nodes, client
    except BaseException:
        for node in nodes.values():
            sys.stderr.write(node.logs())
        raise
    finally:
        for node in nodes.values():
            stop_process(node.keepalived)
            node.agent.stop()
            if node.watch is not None:
                node.watch.close()
        pool.close()


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[tuple[dict[str, Node], Netns]]:
    with lab(tmp_path, PLAN4) as made:
        yield made


@pytest.fixture
def lan6(tmp_path: Path) -> Iterator[tuple[dict[str, Node], Netns]]:
    with lab(tmp_path, PLAN6) as made:
        yield made


def served(client: Netns, count: int = 4, vip: str = VIP) -> set[str]:
    return {http_get(vip, 80, netns=client, timeout=3).strip() for _ in range(count)}


def test_one_node_answers_serves_through_ipvs_and_vrrp_moves_the_vip(lan, capsys) -> None:
    nodes, client = lan
    neighbours = Neighbours(client)
    try:
        master, backup = _elected(nodes, PLAN4)
        master_mac, backup_mac = mac(master.ns), mac(backup.ns)
        # Every node binds the VIP on vsop0 and programs IPVS; only the master has it on eth0 and answers ARP.
        for node in nodes.values():
            assert f"inet {VIP}/32" in node.ns.run("ip", "-o", "addr", "show", "dev", "vsop0").stdout
            assert node.ns.run("sysctl", "-n", "net.ipv4.conf.all.arp_ignore").stdout.strip() == "1"
        replies = arp_replies(client, VIP)
        assert replies and set(replies) == {master_mac}, (replies, master_mac, backup_mac)
        _served_through_the_master(PLAN4, master, backup, client, neighbours, master_mac)

        _health_moves_the_vip(master, backup, client, neighbours, backup_mac, master_mac, capsys)
        _failover(PLAN4, master, backup, client, neighbours, backup_mac, capsys)
        _the_nodes_say_who_announces_after_the_kill(master, backup, client, master_mac, backup_mac)
    except BaseException:
        for node in nodes.values():
            sys.stderr.write(node.logs())
        raise
    finally:
        neighbours.close()


def _elected(nodes: dict[str, Node], plan: Plan) -> tuple[Node, Node]:
    """The master and the backup, once the node first in the rendezvous order holds the VIP (it alone)."""
    master = nodes[plan.expected_master()]
    backup = next(node for node in nodes.values() if node is not master)
    wait_for("the rendezvous master to hold the VIP", lambda: master.holds() and not backup.holds(), 60, 0.1)
    return master, backup


def _served_through_the_master(plan: Plan, master: Node, backup: Node, client: Netns, neighbours: Neighbours,
                               master_mac: str) -> int:
    """Requests reach every backend through the master's IPVS, the backup's counts no connection;
    returns the backup's count."""
    before = {node.name: connections(node.ns, plan.vip) for node in (master, backup)}
    assert served(client, 6, plan.vip) == set(plan.backends)
    assert neighbours.mac_of(plan.vip) == master_mac
    # IPVS sums its per-CPU counters into what ipvsadm shows in its estimator, every 2 s.
    wait_for("the master's IPVS counters to grow", lambda: connections(master.ns, plan.vip) >= before[master.name] + 6, 15, 0.5)
    assert connections(backup.ns, plan.vip) == before[backup.name]
    return before[backup.name]


def _health_moves_the_vip(master: Node, backup: Node, client: Netns, neighbours: Neighbours,
                          backup_mac: str, master_mac: str, capsys) -> None:
    """Every backend fails its checks from the master: its track file says 1, it goes FAULT, the VIP moves."""
    cut = "".join(f"route add blackhole {address}/32\n" for address in BACKENDS.values())
    started = time.monotonic()
    master.ns.run("ip", "-batch", "-", input=cut)
    wait_for("the master's track file to say it serves nothing", lambda: (master.tracks / "default_lanweb").read_text() == "1\n", 30, 0.05)
    tracked = time.monotonic() - started
    wait_for("the VIP to move to the backup", lambda: backup.holds() and not master.holds(), 30, 0.05)
    moved = time.monotonic() - started
    bound = CHECK["intervalSeconds"] * CHECK["failureThreshold"] + 3 * ADVERT + 1
    record(capsys, f"VRRP (ipvs mode): every backend failing on the master to the VIP on the backup in {moved:.2f}s "
                   f"(track file written after {tracked:.2f}s; bound interval x threshold + 3 x advert + 1 s = {bound}s)")
    wait_for("the client's neighbour entry on the backup", lambda: neighbours.mac_of(VIP) == backup_mac, 15, 0.05)
    assert served(client) == set(BACKENDS)
    # The backends come back: the master serves again and takes the VIP back after preempt_delay.
    healed = time.monotonic()
    master.ns.run("ip", "-batch", "-", input=cut.replace("route add", "route del"))
    wait_for("the master's track file to say it serves", lambda: (master.tracks / "default_lanweb").read_text() == "0\n", 30, 0.05)
    wait_for("the master to take the VIP back", lambda: master.holds() and not backup.holds(), 30 + PREEMPT_DELAY, 0.05)
    record(capsys, f"VRRP (ipvs mode): backends back on the master to the VIP back there in {time.monotonic() - healed:.2f}s "
                   f"(preempt_delay {PREEMPT_DELAY}s)")
    wait_for("the client's neighbour entry back on the master", lambda: neighbours.mac_of(VIP) == master_mac, 15, 0.05)


def _failover(plan: Plan, master: Node, backup: Node, client: Netns, neighbours: Neighbours, backup_mac: str, capsys) -> None:
    """The master's keepalived SIGKILLed (no goodbye advert) and its link gone: the backup's GARP
    (IPv6: unsolicited NA with the override flag) moves the client."""
    from pyroute2 import IPRoute

    with master.ns.entered():
        ipr = IPRoute()
    eth0 = ipr.link_lookup(ifname="eth0")[0]
    killed = time.monotonic()
    assert master.keepalived is not None
    os.killpg(master.keepalived.pid, signal.SIGKILL)
    ipr.link("set", index=eth0, state="down")
    ipr.close()
    wait_for("the client's neighbour entry to flip to the backup", lambda: neighbours.mac_of(plan.vip) == backup_mac, 30, 0.05)
    flipped = time.monotonic() - killed
    wait_for("the client served through the backup", lambda: _answers(client, plan.vip, plan.backends), 10, 0.05)
    resumed = time.monotonic() - killed
    what = "ARP entry" if plan.family == 4 else "neighbour entry (unsolicited NA)"
    record(capsys, f"VRRP (ipvs mode{', IPv6' if plan.family == 6 else ''}): master killed and link down to the client's {what} "
                   f"on the backup in {flipped:.2f}s, requests answered again after {resumed:.2f}s (bound 3 x advert + 1 s = {3 * ADVERT + 1}s)")
    assert backup.holds() and served(client, vip=plan.vip) == set(plan.backends)


def _the_nodes_say_who_announces_after_the_kill(killed: Node, master: Node, client: Netns, killed_mac: str, master_mac: str) -> None:
    """The killed keepalived wrote no STOP: its agent finds it gone by its pidfile at its next turn and says
    `stop` in its status file, `vsop show` and metrics; explain and doctor there call the VIP keepalived left on
    the downed eth0 a problem with its fix, and on the new master say it owns the VIP. The killed node's link back
    up with keepalived still dead, its leftover answers ARP beside the master's, as doctor warned; its fix ends it."""
    wait_for("the killed node's agent to say its keepalived no longer announces", lambda: announced(killed) == {VIP: "stop"}, 3 * RESYNC + 15, 0.1)
    assert killed.agent.status()["keepalived"]["running"] is False
    assert f"announced: {VIP} stop (VRRP: keepalived is not running)" in vsop(killed, "show").stdout
    assert vip_announced(killed) == {"stop"}
    wait_for("the new master's agent to say master", lambda: announced(master) == {VIP: "master"}, 15, 0.1)
    assert vip_announced(master) == {"master"}

    fix = [f"ip addr del {VIP}/32 dev eth0"]
    arrival = explained(killed)
    assert arrival["ok"] is False and "which is DOWN" in arrival["found"] and "keepalived is not running" in arrival["found"], arrival
    finding = owner_check(killed)  # one doctor run: each `vsop` costs ~9 s of imports under emulation
    assert finding["status"] == "fail" and finding["fix"] == fix, finding
    arrival = explained(master)
    assert arrival["ok"] is True and f"this node owns {VIP} on eth0 (VRRP master)" in arrival["found"], arrival
    assert owner_check(master)["status"] == "pass"

    killed.ns.run("ip", "link", "set", "eth0", "up")
    wait_for("both nodes to answer ARP for the VIP", lambda: set(arp_replies(client, VIP)) == {killed_mac, master_mac}, 30, 0.1)
    finding = owner_check(killed)
    assert finding["status"] == "fail" and "two nodes may answer" in finding["message"] and finding["fix"] == fix, finding
    killed.ns.run(*shlex.split(fix[0]))
    assert set(arp_replies(client, VIP)) == {master_mac}
    assert owner_check(killed)["status"] == "pass" and explained(killed)["ok"] is None


def vsop(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    """`vsop ARGS` in the node's namespace, reading its agent's status file; exit 1 (problems found) is an answer."""
    done = node.ns.run(VSOP, *args, "--status-file", str(node.agent.status_file), check=False, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return done


def announced(node: Node) -> dict[str, str]:
    return node.agent.status().get("keepalived", {}).get("announced", {})


def vip_announced(node: Node) -> set[str]:
    """The states vsop_vip_announced says 1 for, for the VIP, on the node's /metrics."""
    text = http_get("127.0.0.1", METRICS_PORT, "/metrics", netns=node.ns, timeout=10)
    samples = (re.match(r"vsop_vip_announced\{(.*)\} 1\.0$", line) for line in text.splitlines())
    labels = [dict(re.findall(r'(\w+)="([^"]*)"', sample.group(1))) for sample in samples if sample is not None]
    return {label["state"] for label in labels if label.get("vip") == VIP}


def explained(node: Node) -> dict:
    """`vsop explain VIP:80`'s step "how the packet reaches this node"."""
    report = json.loads(vsop(node, "explain", f"{VIP}:80", "-o", "json").stdout)
    return next(step for step in report["steps"] if step["id"] == "arrival")


def owner_check(node: Node) -> dict:
    """`vsop doctor VIP:80`'s vrrp.owner finding."""
    report = json.loads(vsop(node, "doctor", f"{VIP}:80", "-o", "json").stdout)
    return next(f for f in report["findings"] if f["check"] == f"vrrp.owner {VIP}")


def _answers(client: Netns, vip: str = VIP, backends: dict[str, str] = BACKENDS) -> bool:
    try:
        return http_get(vip, 80, netns=client, timeout=1).strip() in backends
    except Exception:
        return False


def test_ipv6_one_node_answers_nd_serves_and_the_backups_na_moves_the_client(lan6, capsys) -> None:
    """The IPv6 VIP: the master adds VIP/128 to eth0 without DAD, so it is usable at takeover, and alone
    answers neighbour solicitations; its keepalived killed and its link gone, the backup's unsolicited
    NA moves the client's neighbour entry and requests go through the backup's IPVS."""
    nodes, client = lan6
    vip = PLAN6.vip
    neighbours = Neighbours(client)
    try:
        master, backup = _elected(nodes, PLAN6)
        master_mac, backup_mac = mac(master.ns), mac(backup.ns)
        for node in nodes.values():
            assert f"inet6 {vip}/128" in node.ns.run("ip", "-o", "addr", "show", "dev", "vsop0").stdout
        assert "nodad" in _vip_on_eth0_flags(master)
        replies = nd_replies(client, vip)
        assert replies and set(replies) == {master_mac}, (replies, master_mac, backup_mac)
        before = _served_through_the_master(PLAN6, master, backup, client, neighbours, master_mac)

        _failover(PLAN6, master, backup, client, neighbours, backup_mac, capsys)
        flags = _vip_on_eth0_flags(backup)
        assert "nodad" in flags and "tentative" not in flags and "dadfailed" not in flags, flags
        wait_for("the backup's IPVS counters to grow", lambda: connections(backup.ns, vip) > before, 15, 0.5)
    except BaseException:
        for node in nodes.values():
            sys.stderr.write(node.logs())
        raise
    finally:
        neighbours.close()


def _vip_on_eth0_flags(node: Node) -> set[str]:
    """The words `ip` prints for the node's IPv6 VIP on eth0, its flags among them (nodad, tentative...)."""
    out = node.ns.run("ip", "-o", "-6", "addr", "show", "dev", "eth0").stdout
    line = next(line for line in out.splitlines() if f"inet6 {node.vip}/128 " in line)
    return set(line.split("\\")[0].split())


SPREAD_NODES = {"s1": "10.203.0.11", "s2": "10.203.0.12", "s3": "10.203.0.13"}
SPREAD_VIPS = ["10.203.0.101", "10.203.0.102", "10.203.0.103", "10.203.0.104"]


def test_four_vips_on_three_nodes_no_node_holds_more_than_two(tmp_path) -> None:
    """Each node renders its own priorities (`vsop render keepalived --node-address`); keepalived elects: the VIPs spread."""
    from vsop.cli.main import main as vsop

    pool = Namespaces()
    procs, watches = [], {}
    try:
        bridge = pool.add("lan")
        run("ip", "-n", bridge.name, "-batch", "-", input="link add br0 type bridge\nlink set br0 up\n")
        objects = tmp_path / "objects"
        objects.mkdir()
        for index, vip in enumerate(SPREAD_VIPS):
            manifest(objects, f"web{index}", vip=vip, announce="vrrp", backends=[{"address": "10.203.0.21"}],
                     vrrp={"interface": "eth0", "virtualRouterID": 71 + index, "peers": list(SPREAD_NODES.values()), "preemptDelaySeconds": 0})
        tracks = tmp_path / "vrrp"  # what the agents would write: every node serves every VIP
        tracks.mkdir()
        for index in range(len(SPREAD_VIPS)):
            (tracks / f"default_web{index}").write_text("0\n")
        for name, address in SPREAD_NODES.items():
            ns = pool.add(name)
            _on_lan(bridge, ns, address)
            out = tmp_path / name
            with contextlib.redirect_stdout(open(os.devnull, "w")):
                assert vsop(["render", "keepalived", "-f", str(objects), "--node-address", address,
                             "--vrrp-track-dir", str(tracks), "--out", str(out)]) == 0
            procs.append(start_keepalived(out, out / "keepalived.conf", "keepalived", ns))
            watches[name] = AddressWatch(ns)

        def holders() -> dict[str, list[str]]:
            return {vip: [name for name, w in watches.items() if w.holds(vip)] for vip in SPREAD_VIPS}

        # Until every keepalived has been up for 3 adverts a node started early may hold more: wait for
        # the election the priorities ask for (the first of each router's rendezvous order), then count.
        peers = tuple(SPREAD_NODES.values())
        orders = spread({("eth0", 71 + index, 4): (vip, peers) for index, vip in enumerate(SPREAD_VIPS)})
        by_address = {address: name for name, address in SPREAD_NODES.items()}
        expected = {vip: [by_address[orders[("eth0", 71 + index, 4)][0]]] for index, vip in enumerate(SPREAD_VIPS)}
        try:
            wait_for("each VIP held by its first node only", lambda: holders() == expected, 90, 0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: held {holders()}, expected {expected}") from None
        per_node = {name: sum(1 for h in expected.values() if h == [name]) for name in SPREAD_NODES}
        assert max(per_node.values()) <= 2 and sum(per_node.values()) == len(SPREAD_VIPS), expected
    except BaseException:
        for log in sorted(tmp_path.glob("*/keepalived.log")):
            sys.stderr.write(f"--- {log}\n{log.read_text()[-1500:]}\n")
        raise
    finally:
        for proc in procs:
            stop_process(proc)
        for w in watches.values():
            w.close()
        pool.close()
