"""What kube-proxy's IPVS mode did for its users, proven by packets on a real kernel.

- No endpoints (kube-proxy e2e "should be rejected when no endpoints exist"): an IPVS
  service with no real server stays, IPVS's ip_vs_leave() answers ICMP port unreachable and
  neither VSOP-FILTER nor VSOP-FORWARD drops it, so a TCP connect and a UDP exchange fail
  with ECONNREFUSED instead of waiting for a timeout; `vsop doctor` says so.
- The VIP port in VSOP-VIP-PORTS-NOMASQ (what trafficPolicy: Local and masquerade: false put
  there): the real server sees the client's own address.
- Session affinity: persistence keeps one client on one real server.
- sourceRanges (a Service's loadBalancerSourceRanges): a client inside a range is served,
  one outside is dropped by the one rule at the head of VSOP-FILTER, and a second VIP
  without ranges serves both.

The lab (tests/vm/lab.py): a client namespace (10.200.9.2) and two backends; this file adds
a second client (10.200.8.2) for the address outside the range.
"""

from __future__ import annotations

import errno
import json
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from tests.vm.conftest import Namespaces, Netns, http_get, run, veth  # noqa: E402
from tests.vm.lab import VIP, apply, clean_node, connect, lab, manifest, vsop  # noqa: E402,F401

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("clean_node")]

OPEN_VIP = "169.254.11.3"
OUTSIDE = "10.200.8.2"
# Long enough that a dropped SYN or datagram is retried at least once (TCP retries after 1 s):
# a refusal arrives at once, a drop only ends when this runs out.
WAIT_SECONDS = 3.0


@pytest.fixture(scope="module")
def outside(lab) -> Iterator[Netns]:
    pool = Namespaces()
    ns = pool.add("outside", name="outside")
    veth(None, "10.200.8.1/24", ns, f"{OUTSIDE}/24")
    ns.run("ip", "route", "add", "default", "via", "10.200.8.1")
    yield ns
    pool.close()


def udp_exchange(netns: Netns, host: str, port: int) -> bytes:
    """One datagram to host:port from `netns` on a connected socket, and its answer (or the error the kernel reports)."""
    with netns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(WAIT_SECONDS)
        sock.connect((host, port))
        sock.send(b"ping")
        return sock.recv(4096)


def doctor(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    vsop(["doctor", "-o", "json"])
    return json.loads(capsys.readouterr().out)


def filter_rule_packets(position: int) -> int:
    """The packet counter of VSOP-FILTER's rule at `position` (1-based)."""
    lines = run("iptables", "-t", "filter", "-L", "VSOP-FILTER", "-v", "-n", "-x").stdout.splitlines()[2:]
    return int(lines[position - 1].split()[0])


# --- no endpoints: refused at once -----------------------------------------------------------


def test_a_service_without_real_servers_refuses_tcp_and_udp_clients(lab, tmp_path, capsys) -> None:
    ports = [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]
    apply(capsys, manifest(tmp_path, "empty", ports=ports, backends=[], serviceRef={"name": "nothing"}))
    services = run("ipvsadm", "-Ln").stdout
    assert f"TCP  {VIP}:80" in services and f"UDP  {VIP}:53" in services  # kept, with no real server
    assert "->" not in services.split(f"TCP  {VIP}:80", 1)[1].split("UDP", 1)[0]

    with pytest.raises(ConnectionRefusedError):
        connect(lab["client"], VIP, 80, timeout=WAIT_SECONDS).close()
    with pytest.raises(OSError) as udp:
        udp_exchange(lab["client"], VIP, 53)
    assert udp.value.errno == errno.ECONNREFUSED, udp.value  # not a timeout: the ICMP error arrived

    findings = {f["check"]: f for f in doctor(capsys)["findings"]}
    for key in (f"TCP {VIP}:80", f"UDP {VIP}:53"):
        assert "no real server: clients are refused" in findings[f"ipvs.service {key}"]["message"]


# --- sourceRanges: one rule, inside served, outside dropped ------------------------------------


def test_source_ranges_serve_clients_inside_and_drop_the_rest(lab, outside, tmp_path, capsys) -> None:
    ranged = manifest(tmp_path, "ranged", sourceRanges=["10.200.9.0/24", "192.0.2.0/24"])
    open_ = manifest(tmp_path, "open", vip=OPEN_VIP)
    apply(capsys, ranged, open_)
    rules_before = run("iptables-save", "-t", "filter").stdout.count("-A VSOP-FILTER")

    assert http_get(VIP, 80, netns=lab["client"], timeout=10).strip() in ("be1", "be2")  # inside the range
    dropped_before = filter_rule_packets(1)
    with pytest.raises(socket.timeout):
        connect(outside, VIP, 80, timeout=WAIT_SECONDS).close()  # outside: dropped, not refused
    assert filter_rule_packets(1) > dropped_before  # by the sourceRanges rule at the head of VSOP-FILTER
    for client in (lab["client"], outside):  # the VIP without ranges serves everyone
        assert http_get(OPEN_VIP, 80, netns=client, timeout=10).strip() in ("be1", "be2")

    # Admitting the outside client is a set member, not a rule.
    apply(capsys, manifest(tmp_path, "ranged", sourceRanges=["10.200.9.0/24", "192.0.2.0/24", f"{OUTSIDE}/32"]))
    assert http_get(VIP, 80, netns=outside, timeout=10).strip() in ("be1", "be2")
    assert run("iptables-save", "-t", "filter").stdout.count("-A VSOP-FILTER") == rules_before
    assert f"{VIP},tcp:80,{OUTSIDE}" in run("ipset", "list", "VSOP-SRC-CIDR").stdout


# --- no masquerade: the real server sees the client ------------------------------------------


def test_an_unmasqueraded_vip_port_hands_the_client_its_own_address(lab, tmp_path, capsys) -> None:
    """trafficPolicy: Local puts its ports in VSOP-VIP-PORTS-NOMASQ (as masquerade: false does, the
    path taken here: a host has no EndpointSlices): the real server, whose default route is this
    node, sees the client's address and answers through the node."""
    pool = Namespaces()
    stop = threading.Event()
    try:
        peer = pool.add("peer", name="peer")
        veth(None, "10.200.7.1/24", peer, "10.200.7.2/24")
        peer.run("ip", "route", "add", "default", "via", "10.200.7.1")
        with peer.entered():
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", 9000))
        server.listen(4)
        server.settimeout(0.2)

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, (address, _) = server.accept()
                except socket.timeout:
                    continue
                with conn:
                    conn.sendall(address.encode())
            server.close()

        threading.Thread(target=serve, daemon=True).start()
        apply(capsys, manifest(tmp_path, "kept", vip=OPEN_VIP, ports=[{"port": 81, "targetPort": 9000}],
                               backends=[{"address": "10.200.7.2"}], masquerade=False))
        assert f"{OPEN_VIP},tcp:81" in run("ipset", "list", "VSOP-VIP-PORTS-NOMASQ").stdout
        with connect(lab["client"], OPEN_VIP, 81, timeout=10) as conn:
            assert conn.recv(64).decode() == "10.200.9.2"  # the client's own address, not the node's
    finally:
        stop.set()
        pool.close()


# --- session affinity: IPVS persistence --------------------------------------------------------


def test_persistence_keeps_one_client_on_one_real_server(lab, tmp_path, capsys) -> None:
    """A Service's sessionAffinity: ClientIP is persistence.timeoutSeconds (kube-proxy: ipvsadm -p).
    Without it, rr alternates between the two backends; with it, 20 requests land on one."""
    apply(capsys, manifest(tmp_path, "sticky", persistence={"timeoutSeconds": 60}))
    assert "persistent 60" in run("ipvsadm", "-Ln").stdout
    served = {http_get(VIP, 80, netns=lab["client"], timeout=10).strip() for _ in range(20)}
    assert len(served) == 1 and served <= {"be1", "be2"}, served
    apply(capsys, manifest(tmp_path, "sticky"))  # persistence off: rr again
    assert len({http_get(VIP, 80, netns=lab["client"], timeout=10).strip() for _ in range(4)}) == 2
