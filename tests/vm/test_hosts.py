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
from tests.vm.lab import VIP, answers, apply, clean_node, lab, manifest, vsop  # noqa: E402,F401

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
        client = pool.add("fc6")
        veth(None, "fd00:201:9::1/64", client, "fd00:201:9::2/64")
        client.run("ip", "-6", "route", "add", "default", "via", "fd00:201:9::1")
        backends = []
        for index in (1, 2):
            backend = pool.add(f"fb6{index}")
            veth(None, f"fd00:201:{index}::1/64", backend, f"fd00:201:{index}::2/64")  # no default route
            start_http_server(backend, tmp_path / f"www6-{index}", port=8080, body=f"v6-{index}")
            backends.append({"address": f"fd00:201:{index}::2"})
        apply(capsys, manifest(tmp_path, "web6", vip="fd00:12::2", backends=backends))
        for netns in (client, None):
            seen = [http_get("fd00:12::2", 80, netns=netns, timeout=5).strip() for _ in range(4)]
            assert Counter(seen) == {"v6-1": 2, "v6-2": 2}, seen
        assert vsop(["cleanup"]) == 0
        assert policy("ip6tables") == "DROP"
        assert "VSOP" not in run("ip6tables-save").stdout
    finally:
        pool.close()
