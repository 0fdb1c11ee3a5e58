"""`vsop explain` and `vsop doctor` on a real kernel, proven by packets.

explain: the counters of each hook grow with requests from a client namespace (PREROUTING)
and from the node (OUTPUT). doctor: a healthy proxy passes; then one fault at a time on a
fresh proxy, doctor names it with its fix and exits 1; running the named fix makes doctor
pass and the VIP answer again.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from tests.vm.conftest import run, veth  # noqa: E402
from tests.vm.lab import BACKENDS, CLIENT, VIP, answers, apply, clean_node, lab, manifest, vsop  # noqa: E402,F401
from vsop.diagnose.explain import deltas  # noqa: E402

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("clean_node")]


def explain(capsys: pytest.CaptureFixture[str], target: str = f"{VIP}:80") -> dict[str, Any]:
    capsys.readouterr()
    assert vsop(["explain", target, "-o", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def doctor(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = vsop(["doctor", "-o", "json"])
    return code, json.loads(capsys.readouterr().out)


def explain_after_estimator(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """explain once IPVS's totals include the packets just sent.

    IPVS counts per CPU and its estimator timer folds those counts into the totals netlink
    reports every 2 s (ip_vs_est.c), so an explain right after the requests can see the
    totals of up to 2 s ago. 2.5 s covers one estimator period.
    """
    time.sleep(2.5)
    return explain(capsys)


def failed(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["status"] == "fail"]


def test_explain_counters_grow_with_requests_from_a_client_and_from_the_node(lab, tmp_path, capsys) -> None:
    apply(capsys, manifest(tmp_path))
    before = explain(capsys)
    assert before["problems"] == [] and before["owner"] == "default/web"
    answers(5, netns=lab["client"])
    remote = explain_after_estimator(capsys)
    grown = deltas(before, remote)
    # nat rules see the first packet of each connection: 5 requests, at least 5 packets.
    assert grown[("prerouting", "", "packets")] >= 5, grown
    assert grown[("match", "", "VSOP-MARK-MASQ packets")] >= 5, grown
    assert grown[("ipvs", "", "inPackets")] >= 5 and grown[("ipvs", "", "connections")] == 5, grown
    assert grown[("postrouting", "", "MASQUERADE packets")] >= 5, grown
    assert grown[("input", "", "accept packets")] >= 5, grown
    assert grown[("output", "", "packets")] == 0, grown
    servers = {s["id"]: s for s in remote["steps"]}["realservers"]["items"]
    assert {item["label"] for item in servers} == {f"{address}:8080" for address in BACKENDS.values()}
    assert sum(item["counters"]["connections"] for item in servers) >= 5
    assert all(item["counters"]["inactive"] + item["counters"]["active"] >= 2 for item in servers), servers
    answers(3)
    local = explain(capsys)
    assert deltas(remote, local)[("output", "", "packets")] >= 3
    conntrack = {s["id"]: s for s in local["steps"]}["conntrack"]
    assert conntrack["counters"]["entries"] >= 8
    capsys.readouterr()
    assert vsop(["explain", f"{VIP}:80", "--from", CLIENT]) == 0
    text = capsys.readouterr().out
    assert "nat PREROUTING" in text and "nat OUTPUT" not in text and "Every step is in place." in text


def _interface_of(address: str) -> str:
    """The node's interface holding an address of the backend's subnet."""
    prefix = address.rsplit(".", 1)[0] + "."
    for entry in json.loads(run("ip", "-j", "addr", "show").stdout):
        if any(a.get("local", "").startswith(prefix) for a in entry.get("addr_info", [])):
            return entry["ifname"]
    raise AssertionError(f"no interface for {address}")


def _udp_query(netns, text: str, port: int = 53, source_port: int = 5000) -> str:
    with netns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", source_port))
        sock.settimeout(5)
        sock.sendto(text.encode(), (VIP, port))
        return sock.recvfrom(4096)[0].decode()


DNS = [{"port": 53, "protocol": "UDP", "targetPort": 5353}]


def _asymmetric_return(lab, cleanups: list[Callable[[], None]]) -> None:
    """A second link to the client, the node's route back to it over that link, and strict rp_filter."""
    root_end, _ = veth(None, "10.200.8.1/24", lab["client"], "10.200.8.2/24")
    run("ip", "route", "add", f"{CLIENT}/32", "via", "10.200.8.2")
    cleanups.append(lambda: run("ip", "link", "del", root_end, check=False))
    cleanups.append(lambda: run("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"))
    run("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
    with pytest.raises(OSError):  # the client's packets arrive where the route back does not lead: dropped
        answers(1, netns=lab["client"])
    # doctor judges the drop counter by its growth while it watches: a client keeps trying meanwhile.
    trying = lab["client"].popen("sh", "-c", f"while :; do curl -s -o /dev/null --max-time 0.3 http://{VIP}/; done")
    cleanups.append(lambda: (trying.kill(), trying.wait()))


def _stale_udp(lab, tmp_path, capsys) -> None:
    """A UDP client's conntrack entry that still points at a real server removed since.

    On 6.1, deleting an IPVS real server drops its IPVS connections and, with
    vs.conntrack=1, their conntrack entries too; entries that outlive it come from
    elsewhere (one written while the traffic bypassed IPVS, a restored conntrack table).
    `conntrack -I` writes such an entry: client port 5000 -> VIP:53, answered by be1.
    """
    apply(capsys, manifest(tmp_path, "dns", ports=DNS, backends=[{"address": BACKENDS["be2"]}]))
    be1 = BACKENDS["be1"]
    run("conntrack", "-I", "-p", "udp", "-s", CLIENT, "-d", VIP, "--sport", "5000", "--dport", "53",
        "-r", be1, "-q", be1.rsplit(".", 1)[0] + ".1", "--reply-port-src", "5353", "--reply-port-dst", "5000", "--timeout", "120")


FAULTS: dict[str, tuple[str, Callable[..., None]]] = {
    "vs-conntrack": ("sysctl.net.ipv4.vs.conntrack", lambda lab, c: run("sysctl", "-qw", "net.ipv4.vs.conntrack=0")),
    "ip-forward": ("sysctl.net.ipv4.ip_forward", lambda lab, c: run("sysctl", "-qw", "net.ipv4.ip_forward=0")),
    "prerouting-jump": (
        "rules.jump iptables nat PREROUTING",
        lambda lab, c: run("iptables", "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "vsop: VIP services", "-j", "VSOP-SERVICES"),
    ),
    "foreign-drop": (
        "rules.ahead iptables filter INPUT",
        lambda lab, c: run("iptables", "-I", "INPUT", "-d", f"{VIP}/32", "-p", "tcp", "--dport", "80", "-j", "DROP"),
    ),
    "vip-removed": (f"vip.bound {VIP}", lambda lab, c: run("ip", "addr", "del", f"{VIP}/32", "dev", "vsop0")),
    "link-down": ("link.up", lambda lab, c: run("ip", "link", "set", "vsop0", "down")),
    "unroutable-backend": (
        f"route {BACKENDS['be1']}", lambda lab, c: run("ip", "link", "set", _interface_of(BACKENDS["be1"]), "down")
    ),
    "strict-rp-filter": ("sysctl.rp_filter", _asymmetric_return),
    "forward-drop": (
        "rules.jump iptables filter FORWARD",
        lambda lab, c: (run("iptables", "-P", "FORWARD", "DROP"), c.append(lambda: run("iptables", "-P", "FORWARD", "ACCEPT")),
                        run("iptables", "-D", "FORWARD", "-m", "comment", "--comment", "vsop: forward VIP traffic", "-j", "VSOP-FORWARD")),
    ),
    "other-backend": (
        "rules.backends",
        lambda lab, c: (run("iptables-legacy", "-I", "INPUT", "-d", f"{VIP}/32", "-j", "DROP"),
                        c.append(lambda: run("iptables-legacy", "-F", "INPUT", check=False))),
    ),
}


@pytest.mark.parametrize("fault", [*FAULTS, "stale-udp-conntrack"])
def test_doctor_names_each_fault_and_its_fix_makes_the_vip_answer(fault, lab, tmp_path, capsys) -> None:
    udp = fault == "stale-udp-conntrack"
    apply(capsys, manifest(tmp_path, "dns", ports=DNS) if udp else manifest(tmp_path))
    code, report = doctor(capsys)
    assert code == 0 and report["ok"], failed(report)
    cleanups: list[Callable[[], None]] = []
    try:
        if udp:
            check = "conntrack.udp"
            _stale_udp(lab, tmp_path, capsys)
        else:
            check, inject = FAULTS[fault]
            inject(lab, cleanups)
        code, report = doctor(capsys)
        assert code == 1
        named = [f for f in failed(report) if f["check"] == check]
        assert named and named[0]["fix"], failed(report)
        for command in named[0]["fix"]:
            done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{command}: {done.stderr}"
        code, report = doctor(capsys)
        assert code == 0 and report["ok"], failed(report)
        if udp:
            assert _udp_query(lab["client"], "again") == "be2:again"
        else:
            assert answers(2, netns=lab["client"])[0] in BACKENDS
            assert answers(1)[0] in BACKENDS
    finally:
        for cleanup in reversed(cleanups):
            cleanup()
