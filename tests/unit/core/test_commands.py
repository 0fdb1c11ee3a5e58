"""Rendering: plans as the commands a person would type (golden files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import golden
from tests.conftest import make_vs
from vsop.cli.main import main
from vsop.core import ops
from vsop.core.commands import command_lines, render
from vsop.core.desired import Node, desired_state
from vsop.core.plan import plan
from vsop.core.state import KernelState, RealServer, RealServerKey, ServiceKey, VirtualServer

GOLDEN = Path(__file__).parent.parent.parent / "golden"
ROOT = Path(__file__).parent.parent.parent.parent


def check_golden(name: str, text: str) -> None:
    golden.check_golden(GOLDEN / name, text)


def test_seed_plan_matches_golden(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--from-empty", "-f", str(ROOT / "examples/seed.yaml"), "--node-name", "golden"]) == 0
    check_golden("seed.plan.txt", capsys.readouterr().out)


def test_seed_plan_teaches_the_whole_proxy() -> None:
    text = (GOLDEN / "seed.plan.txt").read_text()
    for line in (
        "ip link add vsop0 type dummy",
        "ip addr add 169.254.11.2/32 dev vsop0",
        "ipvsadm -A -t 169.254.11.2:80 -s rr",
        "ipvsadm -a -t 169.254.11.2:80 -r 192.168.2.111:8080 -m -w 1",
        "ipvsadm -a -t 169.254.11.2:80 -r 192.168.2.222:8080 -m -w 1",
        "ipset add VSOP-VIP-PORTS 169.254.11.2,tcp:80 comment default/web",
        "iptables -t nat -A VSOP-SERVICES -m set --match-set VSOP-VIP-PORTS dst,dst -j VSOP-MARK-MASQ",
        "iptables -t nat -A VSOP-MARK-MASQ -j MARK --set-xmark 0x2000/0x2000",
        "iptables -t nat -A VSOP-POSTROUTING -m mark --mark 0x2000/0x2000 -j MASQUERADE",
        'iptables -t nat -I PREROUTING -m comment --comment "vsop: VIP services" -j VSOP-SERVICES',
        'iptables -t nat -I OUTPUT -m comment --comment "vsop: VIP services" -j VSOP-SERVICES',
        "iptables -t filter -A VSOP-FILTER -m set --match-set VSOP-VIP-PORTS dst,dst -j ACCEPT",
        "sysctl -w net.ipv4.vs.conntrack=1",
    ):
        assert line in text.splitlines(), line


def test_mixed_plan_matches_golden() -> None:
    services = [
        make_vs("dns", vip="169.254.11.53", ports=[{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}], scheduler="wlc"),
        make_vs("v6", vip="fd00::80", ports=[{"port": 443, "protocol": "SCTP"}], backends=[{"address": "fd00::1:1"}], persistence={"timeoutSeconds": 600}),
        make_vs("dr", vip="169.254.11.7", ports=[{"port": 80}], forwarding="route", backends=[{"address": "10.0.0.7", "weight": 3}]),
        make_vs("tun", vip="169.254.11.8", ports=[{"port": 80}], forwarding="tunnel", backends=[{"address": "fd00::8"}]),
    ]
    text = render(plan(desired_state(services, Node("n")).state, KernelState()).ops)
    check_golden("mixed.plan.txt", text)


def test_changes_render_as_edits_and_deletes() -> None:
    key = ServiceKey("udp", "fd00::1", 53)
    rs = RealServer(RealServerKey(key, "fd00::2", 5353), "tunnel", 0)
    lines = [
        *command_lines(ops.EditService(VirtualServer(key, "sh", 30))),
        *command_lines(ops.EditRealServer(rs)),
        *command_lines(ops.DeleteRealServer(rs.key)),
        *command_lines(ops.DeleteService(key)),
        *command_lines(ops.AddSetMember("VSOP-VIPS-V6", "fd00::1", "a/b c", replace=True)),
    ]
    assert lines == [
        "ipvsadm -E -u [fd00::1]:53 -s sh -p 30",
        "ipvsadm -e -u [fd00::1]:53 -r [fd00::2]:5353 -i -w 0",
        "ipvsadm -d -u [fd00::1]:53 -r [fd00::2]:5353",
        "ipvsadm -D -u [fd00::1]:53",
        "ipset add -exist VSOP-VIPS-V6 fd00::1 comment 'a/b c'",
    ]
