"""vsop on hosts that are not clean, proven by packets: a FORWARD policy of DROP (Docker, ufw).

The lab (tests/vm/lab.py): a client namespace and two backends without a default
route. A remote client's request is masqueraded towards a backend; the backend's
reply is de-masqueraded to the client's address and routed through FORWARD, where
the filter hook runs before IPVS's reply hook. vsop's VSOP-FORWARD chain lets it pass.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from tests.vm.conftest import Namespaces, http_get, run, start_http_server, veth  # noqa: E402
from tests.vm.lab import VIP, answers, apply, clean_node, ipv6_client_and_backends, lab, manifest, vsop  # noqa: E402,F401

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("clean_node")]

FORWARD_JUMP = ["-m", "comment", "--comment", "vsop: forward VIP traffic", "-j", "VSOP-FORWARD"]


@pytest.fixture
def forward_drop():
    """FORWARD policy DROP in both families, as Docker (since 1.13) and ufw leave it."""
    for tool in ("iptables", "ip6tables"):
        run(tool, "-P", "FORWARD", "DROP")
    yield
    for tool in ("iptables", "ip6tables"):
        run(tool, "-P", "FORWARD", "ACCEPT")


def policy(tool: str) -> str:
    line = next(line for line in run(f"{tool}-save", "-t", "filter").stdout.splitlines() if line.startswith(":FORWARD "))
    return line.split()[1]


def test_forward_policy_drop_ipv4_remote_and_local_clients(lab, forward_drop, tmp_path, capsys) -> None:
    apply(capsys, manifest(tmp_path))
    for netns in (lab["client"], None):
        seen = answers(4, netns=netns)
        assert Counter(seen) == {"be1": 2, "be2": 2}, seen
    # Without vsop's chain the remote client's replies die in FORWARD: the chain is what serves it.
    run("iptables", "-D", "FORWARD", *FORWARD_JUMP)
    with pytest.raises(OSError):
        http_get(VIP, 80, netns=lab["client"], timeout=3)
    report = apply(capsys, manifest(tmp_path))
    assert [op["kind"] for op in report["operations"]] == ["jump.add"]
    assert Counter(answers(2, netns=lab["client"])) == {"be1": 1, "be2": 1}
    assert vsop(["cleanup"]) == 0
    assert policy("iptables") == "DROP"
    assert "VSOP" not in run("iptables-save").stdout


def test_forward_policy_drop_ipv6_remote_and_local_clients(forward_drop, tmp_path, capsys) -> None:
    pool = Namespaces()
    try:
        client, backends = ipv6_client_and_backends(pool, tmp_path, "fd00:201", "f6")
        apply(capsys, manifest(tmp_path, "web6", vip="fd00:12::2", backends=backends))
        for netns in (client, None):
            seen = [http_get("fd00:12::2", 80, netns=netns, timeout=5).strip() for _ in range(4)]
            assert Counter(seen) == {"v6-1": 2, "v6-2": 2}, seen
        assert vsop(["cleanup"]) == 0
        assert policy("ip6tables") == "DROP"
        assert "VSOP" not in run("ip6tables-save").stdout
    finally:
        pool.close()


# --- IPv6 forwarding keeps router advertisements --------------------------------------------


def sysctl(name: str) -> str:
    return run("sysctl", "-n", name).stdout.strip()


def test_ipv6_forwarding_sets_accept_ra_2_and_cleanup_restores(tmp_path, capsys) -> None:
    """An interface with accept_ra=1 (a host that learns its default route from RAs) gets 2
    before IPv6 forwarding goes on; cleanup --restore-sysctls puts back 1 and forwarding's 0."""
    assert vsop(["cleanup", "--restore-sysctls"]) == 0  # a host vsop has not touched yet
    run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=0")
    pool = Namespaces()
    try:
        backend = pool.add("ra")
        uplink, _ = veth(None, "fd00:202:1::1/64", backend, "fd00:202:1::2/64")
        run("sysctl", "-qw", f"net.ipv6.conf.{uplink}.accept_ra=1")
        start_http_server(backend, tmp_path / "www-ra", port=8080, body="ra-backend")
        path = manifest(tmp_path, "ra6", vip="fd00:13::2", backends=[{"address": "fd00:202:1::2"}])

        capsys.readouterr()
        assert vsop(["apply", "--keep-accept-ra", "-f", path]) == 2  # the opt-out refuses, clearly
        err = capsys.readouterr().err
        assert "RouterAdvertisements" in err and uplink in err and "default/ra6" in err
        assert sysctl(f"net.ipv6.conf.{uplink}.accept_ra") == "1"
        assert sysctl("net.ipv6.conf.all.forwarding") == "0"

        assert vsop(["plan", "-f", path]) == 0
        planned = capsys.readouterr().out
        assert f"sysctl -w net.ipv6.conf.{uplink}.accept_ra=2" in planned and "router advertisements" in planned
        assert planned.index(f"net.ipv6.conf.{uplink}.accept_ra=2") < planned.index("net.ipv6.conf.all.forwarding=1")

        apply(capsys, path)
        assert sysctl(f"net.ipv6.conf.{uplink}.accept_ra") == "2"
        assert sysctl("net.ipv6.conf.all.forwarding") == "1"
        assert http_get("fd00:13::2", 80, timeout=5).strip() == "ra-backend"
        assert vsop(["show"]) == 0
        assert f"changed by vsop: net.ipv6.conf.{uplink}.accept_ra 1 -> 2" in capsys.readouterr().out

        assert vsop(["cleanup"]) == 0  # without the flag: listed, left as they are
        out = capsys.readouterr().out
        assert f"net.ipv6.conf.{uplink}.accept_ra: found 1, now 2" in out
        assert sysctl(f"net.ipv6.conf.{uplink}.accept_ra") == "2"
        assert vsop(["cleanup", "--restore-sysctls"]) == 0
        assert f"net.ipv6.conf.{uplink}.accept_ra=1 (was 2)" in capsys.readouterr().out
        assert sysctl(f"net.ipv6.conf.{uplink}.accept_ra") == "1"
        assert sysctl("net.ipv6.conf.all.forwarding") == "0"
    finally:
        pool.close()
