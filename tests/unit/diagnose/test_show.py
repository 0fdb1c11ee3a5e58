"""`vsop show` formatting of an observed state."""

from __future__ import annotations

from dataclasses import replace

from tests.conftest import make_vs
from vsop.core.desired import Node
from vsop.core.state import KernelState, ServiceKey, VirtualServer
from vsop.adapters.kernel import fake_kernel, read_observed
from vsop.node.whole import sync
from vsop.core.state import Names
from vsop.diagnose.show import show_json, show_text


def test_show_names_owner_weights_and_connections() -> None:
    foreign = VirtualServer(ServiceKey("tcp", "10.96.0.1", 443), "rr")
    kernel, fake = fake_kernel(KernelState(services={foreign.key: foreign}))
    sync(kernel, [make_vs(), make_vs("ka", vip="169.254.11.9", mode="keepalived")], Node("n"))
    rs_key = next(iter(fake.state.real_servers))
    fake.state = replace(
        fake.state, real_servers={**fake.state.real_servers, rs_key: replace(fake.state.real_servers[rs_key], active_connections=3)}
    )
    observed = read_observed(kernel, Names())
    text = show_text(observed, Names())
    assert "TCP  169.254.11.2:80" in text and "default/web" in text
    assert "  -> 192.168.2.111:8080" in text and "Masq" in text
    assert "10.96.0.1" not in text  # foreign
    assert "keepalived mode" in text and "default/ka" in text
    data = show_json(observed, Names())
    assert data["services"][0]["realServers"][0]["activeConnections"] == 3
    assert data["vips"] == ["169.254.11.2", "169.254.11.9"]


def test_show_on_a_clean_host() -> None:
    assert show_text(KernelState(), Names()) == "Nothing of vsop's on this host.\n"


def test_show_includes_the_agents_health_errors_and_draining() -> None:
    kernel, fake = fake_kernel()
    sync(kernel, [make_vs()], Node("n"))
    observed = read_observed(kernel, Names())
    agent = {
        "pid": 1,
        "directory": "/etc/vsop/services",
        "errors": {"/etc/vsop/services/api.yaml": "spec.vip: must be ..."},
        "health": [
            {"service": "TCP 169.254.11.2:80", "realServer": "192.168.2.111:8080", "healthy": False, "lastError": "TCP connect failed: Connection refused"},
            {"service": "TCP 169.254.11.2:80", "realServer": "192.168.2.222:8080", "healthy": True, "lastError": ""},
        ],
        "draining": ["TCP 169.254.11.2:80 -> 10.0.0.9:8080"],
        "lastSync": {"writes": 0, "problems": [
            {"obj": "default/fast", "reason": "KernelError", "message": "service.add TCP 169.254.11.3:80 scheduler twos: No such file or directory"},
            {"obj": "default/copy", "reason": "Conflict", "message": "default/web claims 169.254.11.2:80/TCP"},
        ]},
    }
    text = show_text(observed, Names(), agent)
    assert "FAILING (TCP connect failed: Connection refused)" in text and "  ok" in text
    assert ("  KernelError default/fast: service.add TCP 169.254.11.3:80 scheduler twos: No such file or directory"
            " (its VIP is tried again with backoff)\n") in text and "default/copy" not in text
    assert "ignored file /etc/vsop/services/api.yaml" in text and "draining TCP 169.254.11.2:80 -> 10.0.0.9:8080" in text
    data = show_json(observed, Names(), agent)
    assert [rs["healthy"] for rs in data["services"][0]["realServers"]] == [False, True]
