"""vsop on a real kernel, proven by packets: the seed's proxy and everything around it.

The lab (tests/vm/lab.py): a client namespace and two backends without a default
route, so only vsop's masquerade brings their answers back. vsop runs in-process
through its CLI entry point (`vsop.cli.main.main`), as a user runs it; one test also
starts the `vsop` console script.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from tests.vm.conftest import Namespaces, http_get, run, start_http_server, veth  # noqa: E402
from tests.vm.lab import (  # noqa: E402,F401
    BACKENDS,
    NODE_ON_CLIENT_SIDE,
    VIP,
    answers,
    apply,
    clean_node,
    connect,
    ipv6_client_and_backends,
    echo,
    kinds,
    lab,
    manifest,
    vsop,
    wait_for,
)

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("clean_node")]


# --- 1. the seed's experiment ------------------------------------------------------------


def test_seed_proxy_round_robin_from_a_namespace_and_from_the_node(lab, tmp_path, capsys) -> None:
    report = apply(capsys, manifest(tmp_path))
    assert report["changed"] and report["counts"]["realserver.add"] == 2
    remote = answers(4, netns=lab["client"])
    local = answers(4)
    for seen in (remote, local):
        assert Counter(seen) == {"be1": 2, "be2": 2}, seen
        assert seen[0] != seen[1] and seen[1] != seen[2], f"not round robin: {seen}"


def test_without_masquerade_the_backends_cannot_answer(lab, tmp_path, capsys) -> None:
    apply(capsys, manifest(tmp_path, masquerade=False))
    for netns in (lab["client"], None):
        with pytest.raises(OSError):
            http_get(VIP, 80, netns=netns, timeout=3)
    apply(capsys, manifest(tmp_path, masquerade=True))
    assert answers(1, netns=lab["client"])[0] in BACKENDS


# --- 2. idempotence ----------------------------------------------------------------------


def kernel_snapshot() -> dict[str, str]:
    def strip_counters(text: str) -> str:
        return "\n".join(line.split(" [")[0] for line in text.splitlines() if not line.startswith("#"))

    return {
        "ipvsadm": run("ipvsadm", "-Sn").stdout,
        "ipset": run("ipset", "save").stdout,
        "iptables": strip_counters(run("iptables-save").stdout),
        "addresses": run("ip", "-o", "addr", "show").stdout,
        "sysctl": run("sysctl", "net.ipv4.vs.conntrack", "net.ipv4.ip_forward").stdout,
    }


def test_second_apply_writes_nothing_and_changes_nothing(lab, tmp_path) -> None:
    path = manifest(tmp_path)
    vsop_bin = str(Path(sys.executable).parent / "vsop")
    first = subprocess.run([vsop_bin, "apply", "-f", path], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "applied" in first.stdout
    before = kernel_snapshot()
    second = subprocess.run([vsop_bin, "apply", "-f", path, "-o", "json"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report == {"changed": False, "writes": 0, "stored": [], "pruned": [], "counts": {}, "operations": []}
    assert kernel_snapshot() == before
    text = subprocess.run([vsop_bin, "apply", "-f", path], capture_output=True, text=True, timeout=300).stdout
    assert text.startswith("vsop: nothing changed")


# --- 3. foreign objects ------------------------------------------------------------------


def test_foreign_objects_survive_apply_change_and_cleanup(lab, tmp_path, capsys) -> None:
    run("ip", "link", "add", "foreign0", "type", "dummy")
    run("ip", "addr", "add", "10.99.0.1/32", "dev", "foreign0")
    run("ip", "link", "set", "foreign0", "up")
    run("ipvsadm", "-A", "-t", "10.99.0.1:80", "-s", "wlc")
    run("ipvsadm", "-a", "-t", "10.99.0.1:80", "-r", "10.200.1.2:8080", "-m")
    run("ipset", "create", "FOREIGN", "hash:ip")
    run("ipset", "add", "FOREIGN", "10.99.0.1")
    run("iptables", "-t", "nat", "-N", "FOREIGN")
    run("iptables", "-t", "nat", "-A", "FOREIGN", "-m", "set", "--match-set", "FOREIGN", "dst", "-j", "RETURN")
    run("iptables", "-t", "nat", "-A", "PREROUTING", "-j", "FOREIGN")
    run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT")
    # The foreign service needs its own SNAT to be answered; xt_ipvs matches its traffic.
    run("iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs", "--vaddr", "10.99.0.1/32", "-j", "MASQUERADE")

    def foreign() -> dict[str, Any]:
        return {
            "ipvs": [line for line in run("ipvsadm", "-Sn").stdout.splitlines() if "10.99.0.1" in line],
            "set": run("ipset", "save", "FOREIGN").stdout,
            "rules": [line for line in run("iptables-save").stdout.splitlines() if any(w in line for w in ("FOREIGN", "2222", "10.99.0.1"))],
            "address": "10.99.0.1/32" in run("ip", "-o", "addr", "show", "foreign0").stdout,
        }

    try:
        before = foreign()
        assert len(before["rules"]) == 5 and before["ipvs"] and before["address"]
        apply(capsys, manifest(tmp_path))
        assert foreign() == before
        apply(capsys, manifest(tmp_path, scheduler="wlc", backends=[{"address": "10.200.1.2", "weight": 3}]))
        assert foreign() == before
        assert vsop(["cleanup"]) == 0
        assert foreign() == before
        assert run("ipvsadm", "-Sn").stdout.strip().splitlines() == before["ipvs"]
        assert http_get("10.99.0.1", 80, timeout=5).strip() == "be1"  # the foreign service still carries traffic
    finally:
        run("ipvsadm", "-D", "-t", "10.99.0.1:80", check=False)
        run("iptables", "-t", "nat", "-D", "PREROUTING", "-j", "FOREIGN", check=False)
        run("iptables", "-t", "nat", "-F", "FOREIGN", check=False)
        run("iptables", "-t", "nat", "-X", "FOREIGN", check=False)
        run("iptables", "-D", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT", check=False)
        run("iptables", "-t", "nat", "-D", "POSTROUTING", "-m", "ipvs", "--vaddr", "10.99.0.1/32", "-j", "MASQUERADE", check=False)
        run("ipset", "destroy", "FOREIGN", check=False)
        run("ip", "link", "del", "foreign0", check=False)


# --- 4. only service ports on a VIP ------------------------------------------------------


def test_vip_exposes_only_its_service_ports(lab, tmp_path, capsys) -> None:
    apply(capsys, manifest(tmp_path))
    listener = subprocess.Popen(["/bin/busybox", "httpd", "-f", "-p", "2222", "-h", str(tmp_path)], start_new_session=True)
    (tmp_path / "index.html").write_text("node\n")
    try:
        wait_for("the node's httpd listening", lambda: socket.create_connection(("127.0.0.1", 2222), timeout=1).close() is None, 20, 0.05)
        assert http_get(NODE_ON_CLIENT_SIDE, 2222, netns=lab["client"], timeout=5).strip() == "node"  # the node's own address works
        with pytest.raises(ConnectionRefusedError):
            http_get(VIP, 2222, netns=lab["client"], timeout=5)  # rejected by VSOP-FILTER
        assert answers(1, netns=lab["client"])[0] in BACKENDS  # the service port still works
    finally:
        listener.kill()
        listener.wait()


# --- 5. UDP ------------------------------------------------------------------------------


def test_udp_backends_answer_through_the_vip(lab, tmp_path, capsys) -> None:
    apply(capsys, manifest(tmp_path, "dns", ports=[{"port": 53, "protocol": "UDP", "targetPort": 5353}]))
    seen = []
    for index in range(4):
        with lab["client"].entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.settimeout(5)
            sock.sendto(f"q{index}".encode(), (VIP, 53))
            seen.append(sock.recvfrom(4096)[0].decode())
    assert {answer.split(":")[0] for answer in seen} == set(BACKENDS)
    assert all(answer.endswith(f"q{i}") for i, answer in enumerate(seen))


# --- 6. only the delta, in place -----------------------------------------------------------


def test_changes_apply_only_the_delta_and_keep_open_connections(lab, tmp_path, capsys) -> None:
    ports = [{"name": "echo", "port": 7, "targetPort": 7007}]
    apply(capsys, manifest(tmp_path, "echo", ports=ports))
    with connect(lab["client"], VIP, 7) as conn:
        first = echo(conn, "a")
        backend = first.split(":")[0]
        assert first == f"{backend}:a"

        report = apply(capsys, manifest(tmp_path, "echo", ports=ports, scheduler="wlc"))
        assert kinds(report) == ["service.edit"]
        assert echo(conn, "b") == f"{backend}:b"  # the edit in place kept the connection

        weighted = [{"address": BACKENDS["be1"], "weight": 3}, {"address": BACKENDS["be2"]}]
        report = apply(capsys, manifest(tmp_path, "echo", ports=ports, scheduler="wlc", backends=weighted))
        assert kinds(report) == ["realserver.edit"]
        assert "ipvsadm -e -t 169.254.11.2:7 -r 10.200.1.2:7007 -m -w 3" in report["operations"][0]["commands"]

        only_be1 = [{"address": BACKENDS["be1"], "weight": 3}]
        report = apply(capsys, manifest(tmp_path, "echo", ports=ports, scheduler="wlc", backends=only_be1))
        assert kinds(report) == ["realserver.delete"]
        report = apply(capsys, manifest(tmp_path, "echo", ports=ports, scheduler="wlc", backends=weighted))
        assert kinds(report) == ["realserver.add"]
        if backend == "be1":
            assert echo(conn, "c") == "be1:c"


# --- 7. route and tunnel -------------------------------------------------------------------


def test_route_and_tunnel_forwarding_reach_backends_that_answer_directly(tmp_path, capsys) -> None:
    """Direct routing and IP-in-IP: the backend holds the VIP and answers the client itself.

    The replies must not come back through the node (it would drop a packet from its
    own VIP as a martian), so each backend has its own link to the client's namespace.
    """
    pool = Namespaces()
    try:
        client = pool.add("drc")
        veth(None, "10.201.9.1/24", client, "10.201.9.2/24")
        client.run("ip", "route", "add", "default", "via", "10.201.9.1")
        client.run("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        vips = {"route": "169.254.12.1", "tunnel": "169.254.12.2"}
        www = tmp_path / "www"
        for index, (method, vip) in enumerate(vips.items(), start=1):
            backend = pool.add(method[:3])
            veth(None, f"10.201.{index}.1/24", backend, f"10.201.{index}.2/24")
            veth(backend, f"10.201.{index + 10}.2/24", client, f"10.201.{index + 10}.1/24")
            backend.run("ip", "route", "add", "10.201.9.0/24", "via", f"10.201.{index + 10}.1")
            holder = "lo" if method == "route" else "tunl0"
            backend.run("sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
            if method == "tunnel":
                backend.run("ip", "link", "set", "tunl0", "up")
                backend.run("sysctl", "-qw", "net.ipv4.conf.tunl0.rp_filter=0")
            backend.run("ip", "addr", "add", f"{vip}/32", "dev", holder)
            start_http_server(backend, www / method, port=80, body=method)
            manifest(tmp_path, method, vip=vip, forwarding=method, ports=[{"port": 80}], backends=[{"address": f"10.201.{index}.2"}])
        report = apply(capsys, str(tmp_path / "route.yaml"), str(tmp_path / "tunnel.yaml"))
        listing = run("ipvsadm", "-Ln").stdout
        assert re.search(r"10\.201\.1\.2:80\s+Route", listing) and re.search(r"10\.201\.2\.2:80\s+Tunnel", listing), listing
        assert report["counts"]["realserver.add"] == 2
        members = run("ipset", "list", "VSOP-VIP-PORTS-NOMASQ").stdout
        assert "169.254.12.1,tcp:80" in members and "169.254.12.2,tcp:80" in members  # never masqueraded
        for method, vip in vips.items():
            assert http_get(vip, 80, netns=client, timeout=5).strip() == method
    finally:
        pool.close()


def test_show_names_the_owner_and_counts_connections(lab, tmp_path, capsys) -> None:
    apply(capsys, manifest(tmp_path, "echo", ports=[{"name": "echo", "port": 7, "targetPort": 7007}]))
    with connect(lab["client"], VIP, 7) as conn:
        echo(conn, "x")
        capsys.readouterr()
        assert vsop(["show", "-o", "json"]) == 0
        shown = json.loads(capsys.readouterr().out)
    service = shown["services"][0]
    assert (service["vip"], service["port"], service["owner"]) == (VIP, 7, "default/echo")
    assert sum(rs["activeConnections"] for rs in service["realServers"]) == 1
    assert vsop(["show"]) == 0
    text = capsys.readouterr().out
    assert "TCP  169.254.11.2:7" in text and "default/echo" in text


# --- IPv6 --------------------------------------------------------------------------------


def test_ipv6_vip_round_robin_through_ip6tables_masquerade(tmp_path, capsys) -> None:
    """An IPv6 VIP on vsop0 (/128), -V6 sets, ip6tables chains: backends without a route back answer."""
    pool = Namespaces()
    try:
        client, backends = ipv6_client_and_backends(pool, tmp_path, "fd00:200", "p6")
        apply(capsys, manifest(tmp_path, "web6", vip="fd00:11::2", backends=backends))
        assert "fd00:11::2/128" in run("ip", "-o", "-6", "addr", "show", "dev", "vsop0").stdout
        assert "VSOP-SERVICES" in run("ip6tables-save", "-t", "nat").stdout
        seen = [http_get("fd00:11::2", 80, netns=client, timeout=5).strip() for _ in range(4)]
        assert Counter(seen) == {"v6-1": 2, "v6-2": 2}, seen
        local = [http_get("fd00:11::2", 80, timeout=5).strip() for _ in range(2)]
        assert set(local) == {"v6-1", "v6-2"}
    finally:
        pool.close()


# --- ARP -----------------------------------------------------------------------------------


def test_suppress_arp_keeps_the_node_from_answering_arp_for_the_vip(tmp_path, capsys) -> None:
    """A neighbour on the node's LAN that routes the VIP on-link must ARP for it: the node
    answers (arp_ignore=0, any local address) unless suppressARP sets arp_ignore=1."""
    pool = Namespaces()
    try:
        neighbour = pool.add("arp")
        _, lan = veth(None, "10.203.0.1/24", neighbour, "10.203.0.2/24")
        backend = pool.add("arpb")
        veth(None, "10.203.1.1/24", backend, "10.203.1.2/24")
        start_http_server(backend, tmp_path / "www-arp", port=8080, body="arp-backend")
        vip = "169.254.13.1"
        neighbour.run("ip", "route", "add", f"{vip}/32", "dev", lan)  # on-link: the neighbour ARPs for the VIP itself
        path = manifest(tmp_path, "arp", vip=vip, backends=[{"address": "10.203.1.2"}])
        apply(capsys, path)
        assert http_get(vip, 80, netns=neighbour, timeout=5).strip() == "arp-backend"  # the node answered ARP

        assert vsop(["cleanup"]) == 0
        neighbour.run("ip", "neigh", "flush", "all")
        apply(capsys, manifest(tmp_path, "arp", vip=vip, backends=[{"address": "10.203.1.2"}], suppressARP=True))
        assert run("sysctl", "-n", "net.ipv4.conf.all.arp_ignore").stdout.strip() == "1"
        with pytest.raises(OSError):
            http_get(vip, 80, netns=neighbour, timeout=4)  # nobody answers ARP for the VIP
        assert "lladdr" not in neighbour.run("ip", "neigh", "show", vip).stdout
    finally:
        # vsop never resets sysctls (it cannot know their value before it); the VM's other tests expect the default.
        run("sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=0", "net.ipv4.conf.all.arp_announce=0")
        pool.close()
