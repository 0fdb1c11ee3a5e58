"""keepalived rendering: golden files per forwarding method, health check, VRRP and layout;
what keepalived cannot carry; and proof that no value outside a constrained field reaches a file.

VSOP_UPDATE_GOLDEN=1 writes a changed tree beside its golden (tests/golden.py); the test still fails.
The netns tier runs `keepalived -t` on every golden tree (tests/netns/test_keepalived_config.py).
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
import stat
from pathlib import Path
from typing import Any, Callable

import jinja2
import pytest

from tests import golden
from tests.conftest import make_vs
from vsop.core.desired import Endpoint, EndpointPort, Node
from vsop.api.errors import InvalidInput
from vsop.keepalived import render as kr
from vsop.cli.render import main
from vsop.keepalived.render import Rendered, Token, check_auth_password, render_keepalived, write_files
from vsop.keepalived.servers import services_of
from vsop.api.manifests import load_paths
from vsop.api.model import parse_virtual_service

GOLDEN = Path(__file__).parent.parent.parent / "golden" / "keepalived"
ROOT = Path(__file__).parent.parent.parent.parent
EXAMPLES = ROOT / "examples" / "keepalived"
PASSWORD = "vsop-pw1"  # a test value; real ones come from --auth-file or a Secret

KA: dict[str, Any] = {"mode": "keepalived"}
VRRP = {"interface": "eth0", "virtualRouterID": 51, "priority": 100, "advertIntervalSeconds": 1}


def ka(name: str = "web", namespace: str = "default", **spec: Any):  # type: ignore[no-untyped-def]
    return make_vs(name, namespace, **{**KA, **spec})


def _examples() -> list[Any]:
    return load_paths([EXAMPLES]).services


ENDPOINTS = {
    ("shop", "nginx"): (
        Endpoint("10.1.0.2", (EndpointPort("web", 8080), EndpointPort("metrics", 9100))),
        Endpoint("10.1.0.1", (EndpointPort("web", 8080), EndpointPort("metrics", 9100))),
        Endpoint("10.1.0.3", (EndpointPort("web", 8080),), ready=False, serving=True, terminating=True),
        Endpoint("10.1.0.4", (EndpointPort("web", 8080),), ready=False, serving=False),
    ),
}

PEERS = ["192.168.50.1", "192.168.50.2"]
VRRP_IPVS = {"interface": "eth0", "virtualRouterID": 61, "peers": PEERS, "preemptDelaySeconds": 15}


def _vrrp_ipvs() -> list[Any]:
    """mode: ipvs objects announced by VRRP, as two nodes render them: unicast to the other peer,
    two VIPs sharing one virtual router, IPv6 over multicast and over unicast, and one plain keepalived object beside them."""
    return [
        make_vs("web", vip="192.168.50.100", healthCheck={"type": "tcp"}, announce="vrrp", vrrp=VRRP_IPVS),
        make_vs("web-tls", vip="192.168.50.100", ports=[{"port": 443}], announce="vrrp", vrrp=VRRP_IPVS),
        make_vs("api", vip="192.168.50.101", announce="vrrp", vrrp={**VRRP_IPVS, "virtualRouterID": 62}),
        make_vs("dns", vip="192.168.50.102", announce="vrrp", vrrp={**VRRP_IPVS, "virtualRouterID": 63}),
        make_vs("web6", vip="fd00:50::100", backends=[{"address": "fd00:50::10"}], announce="vrrp",
                vrrp={"interface": "eth0", "virtualRouterID": 61}),
        make_vs("api6", vip="fd00:50::101", backends=[{"address": "fd00:50::10"}], announce="vrrp",
                vrrp={**VRRP_IPVS, "virtualRouterID": 62, "peers": ["fd00:50::1", "fd00:50::2"]}),
        ka("legacy", vip="192.168.50.200", announce="vrrp", vrrp={**VRRP, "virtualRouterID": 70}),
    ]


# name -> (services, render keyword arguments)
CASES: dict[str, Callable[[], tuple[list[Any], dict[str, Any]]]] = {
    "nat-http": lambda: (
        [ka(healthCheck={"type": "http", "path": "/healthz", "expectStatus": 200})],
        {},
    ),
    "dr-tcp": lambda: (
        [
            ka(
                "web-dr",
                vip="169.254.11.3",
                ports=[{"port": 80}],
                forwarding="route",
                scheduler="wrr",
                backends=[{"address": "192.168.2.111", "weight": 3}, {"address": "192.168.2.222", "weight": 0}],
                healthCheck={"type": "tcp", "intervalSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 3},
            )
        ],
        {},
    ),
    "tunnel": lambda: (
        [
            ka(
                "web-tun",
                vip="169.254.11.4",
                ports=[{"port": 80}],
                forwarding="tunnel",
                scheduler="lc",
                backends=[{"address": "192.168.3.10"}, {"address": "fd00::3:11"}],
            )
        ],
        {},
    ),
    "persistence-single": lambda: (
        [
            ka(
                "sticky",
                vip="169.254.11.5",
                ports=[{"port": 443}],
                scheduler="sh",
                forwarding="masq",
                persistence={"timeoutSeconds": 600},
                backends=[{"address": "192.168.2.111"}, {"address": "192.168.2.222"}],
                healthCheck={"type": "tcp", "intervalSeconds": 5, "timeoutSeconds": 4, "failureThreshold": 1},
            )
        ],
        {"layout": "single"},
    ),
    "ipv6": lambda: (
        [
            ka(
                "web6",
                vip="fd00::80",
                ports=[{"name": "http", "port": 80, "targetPort": 8080}, {"name": "sctp", "port": 9000, "protocol": "SCTP", "targetPort": 9000}],
                backends=[{"address": "fd00::1:2"}, {"address": "fd00::1:1"}],
                healthCheck={"type": "http", "path": "/healthz?full=1", "expectStatus": 204},
            )
        ],
        {},
    ),
    "udp": lambda: (
        [
            ka(
                "dns",
                namespace="kube-system",
                vip="169.254.11.53",
                ports=[{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
                scheduler="wlc",
                backends=[{"address": "192.168.2.53"}, {"address": "192.168.2.54"}],
                healthCheck={"type": "tcp"},
            )
        ],
        {},
    ),
    "vrrp-noauth": lambda: (
        [ka("web-vrrp", vip="192.168.2.100", healthCheck={"type": "tcp"}, announce="vrrp", vrrp=VRRP)],
        {},
    ),
    "vrrp-ipvs-node1": lambda: (_vrrp_ipvs(), {"node": Node("node1"), "node_addresses": ["192.168.50.1/24", "fd00:50::1/64"]}),
    "vrrp-ipvs-node2": lambda: (_vrrp_ipvs(), {"node": Node("node2"), "node_addresses": ["192.168.50.2/24", "fd00:50::2/64"]}),
    "vrrp-auth": lambda: (
        [
            ka("web-vrrp", vip="192.168.2.100", healthCheck={"type": "tcp"}, announce="vrrp", vrrp=VRRP),
            ka("api-vrrp", vip="192.168.2.101", ports=[{"port": 443}], announce="vrrp", vrrp=VRRP),
            ka("web6-vrrp", vip="fd00::100", backends=[{"address": "fd00::1:1"}], announce="vrrp", vrrp={**VRRP, "priority": 150}),
        ],
        {"auth_password": PASSWORD},
    ),
    "vrrp-auth-single": lambda: (
        [
            ka("web-vrrp", vip="192.168.2.100", healthCheck={"type": "tcp"}, announce="vrrp", vrrp=VRRP),
            ka("api-vrrp", vip="192.168.2.101", ports=[{"port": 443}], announce="vrrp", vrrp=VRRP),
        ],
        {"auth_password": PASSWORD, "layout": "single"},
    ),
    "service-ref": lambda: (
        [
            ka(
                "shop",
                namespace="shop",
                vip="169.254.11.6",
                ports=[{"name": "http", "port": 80, "targetPort": "web"}, {"name": "metrics", "port": 9100, "targetPort": "metrics"}],
                backends=[],
                serviceRef={"name": "nginx"},
            ),
            ka("cart", namespace="shop", vip="169.254.11.7", ports=[{"port": 80}], backends=[], serviceRef={"name": "cart"}),
        ],
        {"endpoints": ENDPOINTS},
    ),
    "empty-confd": lambda: ([make_vs()], {}),
    "examples-confd": lambda: (_examples(), {"auth_password": PASSWORD}),
    "examples-single": lambda: (_examples(), {"layout": "single"}),
}


def render_case(name: str) -> Rendered:
    services, kwargs = CASES[name]()
    return render_keepalived(services, **kwargs)


def check_golden_tree(name: str, files: dict[str, str]) -> None:
    golden.check_golden_tree(GOLDEN / name, files)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    result = render_case(name)
    assert not result.problems
    check_golden_tree(name, dict(result.files))


def test_every_golden_tree_is_a_case() -> None:
    assert sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()) == sorted(CASES)


# --- what each field becomes -----------------------------------------------------------


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_forwarding_methods_become_lb_kinds() -> None:
    for forwarding, kind in (("masq", "NAT"), ("route", "DR"), ("tunnel", "TUN")):
        text = render_keepalived([ka(forwarding=forwarding, ports=[{"port": 80}])], layout="single").files["keepalived.conf"]
        assert f"lb_kind {kind}" in _lines(text)


def test_health_check_fields_map_to_keepalived_semantics() -> None:
    vs = ka(healthCheck={"type": "tcp", "intervalSeconds": 7, "timeoutSeconds": 4, "failureThreshold": 3})
    lines = _lines(render_keepalived([vs], layout="single").files["keepalived.conf"])
    # keepalived takes a real server out after retry + 1 failures in a row, as vsop's own checker
    # does after failureThreshold; retries are spaced like checks.
    for line in ("delay_loop 7", "connect_timeout 4", "retry 2", "delay_before_retry 7", "connect_port 8080", "TCP_CHECK {"):
        assert line in lines, line


def test_no_health_check_means_no_checker_and_delay_loop_3() -> None:
    text = render_keepalived([ka(healthCheck={"type": "none", "intervalSeconds": 9})], layout="single").files["keepalived.conf"]
    assert "delay_loop 3" in _lines(text)
    for word in ("TCP_CHECK", "HTTP_GET", "inhibit_on_failure", "retry"):
        assert word not in text


def test_failed_udp_real_servers_are_removed_tcp_ones_quiesced() -> None:
    text = (GOLDEN / "udp" / "conf.d" / "kube-system_dns.conf").read_text()
    tcp, udp = text.split("virtual_server 169.254.11.53 53 {")[1:]
    assert "protocol TCP" in tcp and tcp.count("inhibit_on_failure") == 2
    assert "protocol UDP" in udp and "inhibit_on_failure" not in udp


def test_persistence_only_when_positive() -> None:
    assert "persistence_timeout" not in render_keepalived([ka()], layout="single").files["keepalived.conf"]
    assert "persistence_timeout 600" in (GOLDEN / "persistence-single" / "keepalived.conf").read_text()


def test_service_ref_endpoints_weights_and_named_ports() -> None:
    text = (GOLDEN / "service-ref" / "conf.d" / "shop_shop.conf").read_text()
    lines = _lines(text)
    assert "real_server 10.1.0.1 8080 {" in lines and "real_server 10.1.0.1 9100 {" in lines
    assert "real_server 10.1.0.3 8080 {" in lines  # terminating but serving: drained, weight 0
    assert "10.1.0.4" not in text and "real_server 10.1.0.3 9100 {" not in lines
    assert text.index("10.1.0.1 8080") < text.index("10.1.0.2 8080")  # sorted


def test_service_ref_without_endpoints_warns_and_renders_static_backends() -> None:
    vs = ka(serviceRef={"name": "nginx"})
    result = render_keepalived([vs], layout="single")
    assert any("serviceRef nginx" in w and "static backends" in w for w in result.warnings)
    assert "real_server 192.168.2.111 8080 {" in _lines(result.files["keepalived.conf"])
    assert not render_keepalived([vs], endpoints={}).warnings


def test_port_without_real_servers_is_a_comment_not_an_empty_virtual_server() -> None:
    result = render_case("service-ref")
    text = result.files["conf.d/shop_cart.conf"]
    assert "virtual_server" not in text.replace("empty virtual_server", "")
    assert "serviceRef cart has no endpoints here" in text
    assert any("169.254.11.7 80/TCP has no real servers" in w for w in result.warnings)


def test_all_real_servers_drained_is_rendered_and_warned() -> None:
    vs = ka(backends=[{"address": "192.168.2.111", "weight": 0}])
    result = render_keepalived([vs], layout="single")
    assert "weight 0" in _lines(result.files["keepalived.conf"])
    assert any("keepalived -t" in w and "weight 0" in w for w in result.warnings)


def test_success_threshold_has_no_keepalived_equivalent() -> None:
    result = render_keepalived([ka(healthCheck={"type": "tcp", "successThreshold": 3})])
    assert any("successThreshold" in w for w in result.warnings)


def test_ipvs_mode_is_not_rendered_and_said_so() -> None:
    result = render_keepalived([make_vs("plain"), ka("kept", vip="169.254.11.9")])
    assert result.rendered == ("default/kept",)
    assert list(result.files) == ["keepalived.conf", "conf.d/default_kept.conf"]
    assert any("default/plain" in note and "mode: ipvs" in note for note in result.skipped)


def test_node_selector_limits_what_a_node_renders() -> None:
    vs = ka(nodeSelector={"matchLabels": {"lb": "yes"}})
    assert render_keepalived([vs], node=Node("a", {"lb": "yes"})).rendered == ("default/web",)
    other = render_keepalived([vs], node=Node("b", {}))
    assert other.rendered == () and "nodeSelector" in other.skipped[0]
    assert render_keepalived([vs]).rendered == ("default/web",)  # no node: everything


def test_rendering_is_deterministic_whatever_the_input_order() -> None:
    services, kwargs = CASES["examples-confd"]()
    first = render_keepalived(services, **kwargs)
    for seed in range(5):
        shuffled = list(services)
        random.Random(seed).shuffle(shuffled)
        assert render_keepalived(shuffled, **kwargs).files == first.files


def test_confd_layout_includes_one_file_per_virtual_service() -> None:
    result = render_case("examples-confd")
    assert list(result.files) == [
        "keepalived.conf",
        "conf.d/default_web-dr.conf",
        "conf.d/default_web-nat.conf",
        "conf.d/default_web-tunnel.conf",
        "conf.d/default_web-vrrp.conf",
    ]
    main_lines = _lines(result.files["keepalived.conf"])
    assert "include conf.d/*.conf" in main_lines and "enable_script_security" in main_lines
    assert all("global_defs" not in text for path, text in result.files.items() if path != "keepalived.conf")
    assert all(text.startswith(kr.MARKER) for text in result.files.values())


def test_single_layout_is_one_file_with_everything() -> None:
    result = render_case("examples-single")
    assert list(result.files) == ["keepalived.conf"]
    text = result.files["keepalived.conf"]
    assert "include" not in text and text.count("virtual_server 169.254.12.") == 3 and "vrrp_instance vsop_eth0_51 {" in text


# --- VRRP ------------------------------------------------------------------------------


def test_vrrp_instance_is_backup_nopreempt_and_owns_the_vip_on_its_interface() -> None:
    text = (GOLDEN / "vrrp-noauth" / "conf.d" / "default_web-vrrp.conf").read_text()
    lines = _lines(text)
    for line in (
        "vrrp_instance vsop_eth0_51 {", "state BACKUP", "nopreempt", "interface eth0", "virtual_router_id 51",
        "priority 100", "advert_int 1", "192.168.2.100/32 dev eth0",
    ):
        assert line in lines, line
    assert "authentication {" not in lines and "No authentication: no password file was given" in text
    assert "state MASTER" not in text and "vsop0" not in text.split("vrrp_instance")[1]


def test_vrrp_auth_and_shared_instance() -> None:
    result = render_case("vrrp-auth")
    api, web, web6 = (result.files[f"conf.d/default_{n}.conf"] for n in ("api-vrrp", "web-vrrp", "web6-vrrp"))
    # Two VirtualServices on one virtual router share one instance, carried by the first by name.
    assert "vrrp_instance vsop_eth0_51 {" in api and "vrrp_instance" not in web.replace("with vrrp_instance", "")
    assert "192.168.2.100/32 dev eth0" in _lines(api) and "192.168.2.101/32 dev eth0" in _lines(api)
    assert "auth_type PASS" in _lines(api) and f"auth_pass {PASSWORD}" in _lines(api)
    # IPv6: VRRPv3, no authentication, a separate instance with the same virtual router id.
    assert "vrrp_instance vsop_eth0_51_v6 {" in web6 and "auth_pass" not in web6 and "fd00::100/128 dev eth0" in _lines(web6)
    assert any("VRRPv3" in w for w in result.warnings)


def test_vrrp_in_ipvs_mode_renders_the_instance_only_with_complementary_priorities() -> None:
    one, two = (render_case(f"vrrp-ipvs-node{n}") for n in (1, 2))
    assert one.rendered == two.rendered and "default/web" in one.rendered and not one.problems
    for result, me, other in ((one, "192.168.50.1", "192.168.50.2"), (two, "192.168.50.2", "192.168.50.1")):
        web = _lines(result.files["conf.d/default_web.conf"])
        assert "virtual_server" not in result.files["conf.d/default_web.conf"] and "virtual_server" not in result.files["conf.d/default_web6.conf"]
        for line in ("state BACKUP", "preempt_delay 15", f"unicast_src_ip {me}", other, "vsop_default_web", "vsop_default_web-tls",
                     "file /run/vsop/vrrp/default_web-tls", "weight 0", "192.168.50.100/32 dev eth0"):
            assert line in web, line
        assert "nopreempt" not in web and me not in web[web.index("unicast_peer {"):]
        # keepalived adds IPv6 VIPs without DAD by itself; its `-nodad` keyword would turn DAD on.
        assert "fd00:50::100/128 dev eth0" in _lines(result.files["conf.d/default_web6.conf"])
        api6 = _lines(result.files["conf.d/default_api6.conf"])
        assert "fd00:50::101/128 dev eth0" in api6 and f"unicast_src_ip fd00:50::{me[-1]}" in api6 and f"fd00:50::{other[-1]}" in api6
        assert "virtual_server 192.168.50.200 80 {" in _lines(result.files["conf.d/default_legacy.conf"])  # keepalived mode as before
    priorities = {
        name: (_priority(one.files[f"conf.d/default_{name}.conf"]), _priority(two.files[f"conf.d/default_{name}.conf"]))
        for name in ("web", "api", "dns")
    }
    assert all(a != b and {a, b} == {250, 245} for a, b in priorities.values()), priorities
    firsts = [1 if a > b else 2 for a, b in priorities.values()]
    assert max(firsts.count(1), firsts.count(2)) == 2  # three routers on two peers: at most ceil(3/2) each


def _priority(text: str) -> int:
    return next(int(line.split()[1]) for line in _lines(text) if line.startswith("priority "))


def test_vrrp_peers_must_name_this_node_once() -> None:
    services = [make_vs("web", vip="192.168.50.100", announce="vrrp", vrrp=VRRP_IPVS)]
    elsewhere = render_keepalived(services, node=Node("n9"), node_addresses=["192.168.50.9/24"])
    unknown = render_keepalived(services)
    assert [(p.obj, p.reason) for p in elsewhere.problems] == [("default/web", "VRRPPeers")] and not elsewhere.rendered
    assert "none of them is an address of node n9" in elsewhere.problems[0].message
    assert "--node-address" in unknown.problems[0].message


def test_one_virtual_router_is_of_one_mode() -> None:
    first = ka("first", created="2024-01-01T00:00:00Z", vip="192.168.50.100", announce="vrrp", vrrp={**VRRP, "virtualRouterID": 61})
    second = make_vs("second", created="2024-02-01T00:00:00Z", vip="192.168.50.101", announce="vrrp", vrrp=VRRP_IPVS)
    result = render_keepalived([second, first], node_addresses=["192.168.50.1"])
    assert result.rendered == ("default/first",)
    assert [(p.obj, p.reason) for p in result.problems] == [("default/second", "Conflict")] and "mode keepalived" in result.problems[0].message


def test_vrrp_conflicts_are_refused_oldest_wins() -> None:
    old = ka("old", created="2024-01-01T00:00:00Z", vip="192.168.2.100", announce="vrrp", vrrp=VRRP)
    other_priority = ka("new", created="2024-02-01T00:00:00Z", vip="192.168.2.101", announce="vrrp", vrrp={**VRRP, "priority": 50})
    other_router = ka("again", created="2024-03-01T00:00:00Z", vip="192.168.2.100", ports=[{"port": 443}], announce="vrrp", vrrp={**VRRP, "virtualRouterID": 52})
    unannounced = ka("plain", created="2024-04-01T00:00:00Z", vip="192.168.2.100", ports=[{"port": 8443}])
    result = render_keepalived([unannounced, other_router, other_priority, old])
    assert result.rendered == ("default/old",)
    assert sorted(p.obj for p in result.problems) == ["default/again", "default/new", "default/plain"]
    assert all(p.reason == "Conflict" for p in result.problems)


def test_vip_port_conflicts_follow_the_core() -> None:
    result = render_keepalived([ka("a", created="2024-01-01T00:00:00Z"), ka("b", created="2024-02-01T00:00:00Z")])
    assert result.rendered == ("default/a",) and [(p.obj, p.reason) for p in result.problems] == [("default/b", "Conflict")]


# --- what keepalived cannot carry --------------------------------------------------------


def test_persistence_beyond_keepalived_limit_is_refused() -> None:
    result = render_keepalived([ka(persistence={"timeoutSeconds": 2_678_401})])
    assert result.rendered == () and "2678400" in result.problems[0].message


@pytest.mark.parametrize("path", ["/a{b", "/a}b", "/x#y", "/x!y", "/$HOME", "/it's", '/q"q', "/back\\slash"])
def test_health_path_with_parser_characters_is_refused(path: str) -> None:
    vs = ka(healthCheck={"type": "http", "path": path})  # the model accepts it: printable ASCII
    result = render_keepalived([vs])
    assert result.rendered == () and "spec.healthCheck.path" in result.problems[0].message
    assert "percent-encode" in result.problems[0].message


# --- injection -------------------------------------------------------------------------

HOSTILE = {
    "metadata.name": ("web\n}\nvirtual_server 1.1.1.1 1 {", "metadata", "name"),
    "metadata.namespace": ("x }", "metadata", "namespace"),
    "vrrp.interface": ("eth0 }", "spec", "vrrp"),
    "healthCheck.path": ("/ok\nnotify /bin/sh", "spec", "healthCheck"),
    "backend address": ("192.168.2.1 }", "spec", "backends"),
    "serviceRef.name": ("n }", "spec", "serviceRef"),
    "scheduler": ("rr }", "spec", "scheduler"),
}


@pytest.mark.parametrize("field", sorted(HOSTILE))
def test_the_model_refuses_values_that_could_break_out(field: str, seed_doc: dict[str, Any]) -> None:
    value, section, key = HOSTILE[field]
    seed_doc["spec"].update(mode="keepalived", announce="vrrp", vrrp=dict(VRRP))
    target = seed_doc[section]
    if key == "vrrp":
        target["vrrp"]["interface"] = value
    elif key == "healthCheck":
        target["healthCheck"] = {"type": "http", "path": value}
    elif key == "backends":
        target["backends"] = [{"address": value}]
    elif key == "serviceRef":
        target["serviceRef"] = {"name": value}
    else:
        target[key] = value
    with pytest.raises(InvalidInput):
        parse_virtual_service(seed_doc)


# Every word keepalived may read in a rendered file.
KEYWORDS = {
    "global_defs", "router_id", "enable_script_security", "script_user", "include", "virtual_server", "delay_loop",
    "lb_algo", "lb_kind", "protocol", "persistence_timeout", "real_server", "weight", "inhibit_on_failure",
    "TCP_CHECK", "HTTP_GET", "url", "path", "status_code", "connect_port", "connect_timeout", "retry",
    "delay_before_retry", "vrrp_instance", "state", "nopreempt", "interface", "virtual_router_id", "priority",
    "advert_int", "authentication", "auth_type", "auth_pass", "virtual_ipaddress", "}",
}
ADDRESS_LINE = re.compile(r"[0-9a-f.:]+/(32|128) dev [A-Za-z0-9_.\-]+")


def assert_only_known_statements(text: str) -> None:
    """Every line is a comment, a known keyword with plain words, or an address; braces balance."""
    depth = 0
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        words = stripped.split()
        assert words[0] in KEYWORDS or ADDRESS_LINE.fullmatch(stripped), line
        for word in words[1:]:
            assert word == "{" or not (kr.FORBIDDEN_CHARS & set(word)), line
        depth += stripped.count("{") - stripped.count("}")
        assert depth >= 0, line
    assert depth == 0


def test_hostile_looking_but_valid_objects_stay_in_their_fields() -> None:
    services = [
        ka(
            "a.b-c--d.0",
            namespace="ns-1",
            vip="192.168.2.100",
            ports=[{"name": "x-1", "port": 65535, "targetPort": 1}, {"port": 1, "protocol": "SCTP"}],
            backends=[{"address": "192.168.2.1", "weight": 65535}, {"address": "192.168.2.2", "weight": 0}],
            healthCheck={"type": "http", "path": "/a;b&c=(d)*?e%7B:@~+,", "expectStatus": 599, "intervalSeconds": 3600, "timeoutSeconds": 3599, "failureThreshold": 100},
            announce="vrrp",
            vrrp={"interface": "e.t-h_0", "virtualRouterID": 255, "priority": 254, "advertIntervalSeconds": 255},
            persistence={"timeoutSeconds": 2_678_400},
        )
    ]
    for layout in kr.LAYOUTS:
        result = render_keepalived(services, layout=layout, auth_password="a-Z_9.~%")
        assert not result.problems
        for text in result.files.values():
            assert_only_known_statements(text)
        text = "".join(result.files.values())
        assert "path /a;b&c=(d)*?e%7B:@~+," in text and "auth_pass a-Z_9.~%" in text
        assert "# VirtualService ns-1/a.b-c--d.0: VIP 192.168.2.100" in text  # the name: in a comment only


def test_every_value_templates_receive_is_an_int_bool_or_token() -> None:
    """The view is the only data templates see; walk it for a rich render."""
    seen: list[Any] = []
    original = kr._environment

    def spying_environment() -> jinja2.Environment:
        env = original()
        for name in ("keepalived.conf.j2", "virtualservice.conf.j2"):
            template = env.get_template(name)
            real = template.render

            def render(*args: Any, _real: Any = real, **kwargs: Any) -> str:
                seen.append(kwargs)
                return _real(*args, **kwargs)

            template.render = render  # type: ignore[method-assign]
        return env

    def walk(value: Any, where: str) -> None:
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                if f.name != "filename":  # not given to templates' output: see SectionView
                    walk(getattr(value, f.name), f"{where}.{f.name}")
        elif isinstance(value, (tuple, list)):
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]")
        else:
            assert value is None or isinstance(value, (bool, int, Token)), f"{where}: {type(value).__name__} {value!r}"

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kr, "_environment", spying_environment)
        for layout in kr.LAYOUTS:
            for name in ("examples-confd", "vrrp-auth", "service-ref", "udp"):
                services, kwargs = CASES[name]()
                render_keepalived(services, **{**kwargs, "layout": layout})
    assert seen
    for kwargs in seen:
        for key, value in kwargs.items():
            if key == "layout":
                assert value in kr.LAYOUTS  # only compared in the template, never printed
            else:
                walk(value, key)


def test_templates_refuse_to_print_an_unchecked_string() -> None:
    env = kr._environment()
    with pytest.raises(TypeError, match="only ints and checked Tokens"):
        env.from_string("router_id {{ value }}").render(value="vsop\n}")
    with pytest.raises(TypeError):
        env.from_string("weight {{ value }}").render(value=True)
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("weight {{ missing }}").render()
    assert env.from_string("{{ a }} {{ b }}").render(a=Token("rr", re.compile("[a-z]+")), b=3) == "rr 3"


@pytest.mark.parametrize("value", ["a b", "x}", "{", "#c", "!c", "$V", "'q'", '"q"', "a\\b", "a\nb", ""])
def test_tokens_refuse_keepalived_syntax(value: str) -> None:
    with pytest.raises(ValueError):
        Token(value, re.compile(r".*", re.S))


def test_comment_tokens_are_sanitised() -> None:
    assert kr.comment_token("Default/Web Server\n}") == "default/web-server--"


# --- VRRP password ---------------------------------------------------------------------


def test_auth_password_rules_never_echo_the_secret() -> None:
    assert check_auth_password("s3cr3t\n") == "s3cr3t"
    for bad in ("", "\n", "123456789", "has space", "br{ce", "hash#", "bang!", "q'uote"):
        with pytest.raises(InvalidInput) as caught:
            check_auth_password(bad)
        if bad.strip():
            assert bad.strip() not in str(caught.value)


# --- servers.py ------------------------------------------------------------------------


def test_services_of_ignores_mode_and_node_selector() -> None:
    vs = ka(nodeSelector={"matchLabels": {"never": "here"}}, announce="vrrp", vrrp=VRRP,
            ports=[{"port": 443, "targetPort": 8443}, {"port": 80, "targetPort": 8080}])
    found = services_of(vs)
    assert [s.key.port for s in found] == [80, 443]
    assert [(rs.key.address, rs.key.port) for rs in found[1].real_servers] == [("192.168.2.111", 8443), ("192.168.2.222", 8443)]


# --- the command line ------------------------------------------------------------------


def test_cli_prints_single_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-f", str(EXAMPLES), "--layout", "single"]) == 0
    out = capsys.readouterr()
    assert out.out == (GOLDEN / "examples-single" / "keepalived.conf").read_text()


def test_cli_confd_to_stdout_names_each_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-f", str(EXAMPLES / "web-nat-http.yaml")]) == 0
    out = capsys.readouterr().out
    assert "# ==> keepalived.conf <==" in out and "# ==> conf.d/default_web-nat.conf <==" in out


def test_cli_writes_confd_tree_atomically_and_removes_only_its_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "vrrp-pass"
    secret.write_text(PASSWORD + "\n")
    out = tmp_path / "etc"
    (out / "conf.d").mkdir(parents=True)
    (out / "conf.d" / "default_gone.conf").write_text(kr.MARKER + " earlier\n")
    (out / "conf.d" / "by-hand.conf").write_text("# mine\n")
    assert main(["-f", str(EXAMPLES), "--out", str(out), "--auth-file", str(secret)]) == 0
    expected = GOLDEN / "examples-confd"
    for path in expected.rglob("*.conf"):
        assert (out / path.relative_to(expected)).read_text() == path.read_text()
    assert not (out / "conf.d" / "default_gone.conf").exists() and (out / "conf.d" / "by-hand.conf").exists()
    assert stat.S_IMODE((out / "conf.d" / "default_web-vrrp.conf").stat().st_mode) == 0o600  # holds the password
    assert stat.S_IMODE((out / "conf.d" / "default_web-nat.conf").stat().st_mode) == 0o644
    assert not [p for p in (out / "conf.d").iterdir() if p.name.startswith(".")]  # no temporary files left
    assert "removed" in capsys.readouterr().out


def test_write_files_is_idempotent_and_a_second_write_touches_nothing(tmp_path: Path) -> None:
    files = dict(render_case("examples-confd").files)
    written, _ = write_files(tmp_path, files)
    assert len(written) == len(files)
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in tmp_path.rglob("*")}
    written, removed = write_files(tmp_path, files)
    assert written == [] and removed == []
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in tmp_path.rglob("*")} == before  # not even a staging folder
    main_file = tmp_path / "keepalived.conf"
    main_file.chmod(0o600)  # the mode differs: written again, with the mode it must have
    written, _ = write_files(tmp_path, files)
    assert written == [main_file] and main_file.stat().st_mode & 0o777 == 0o644


def test_cli_mode_ipvs_and_service_ref_are_reported_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "vs.yaml"
    spec.write_text(
        (ROOT / "examples" / "seed.yaml").read_text()
        + "---\n"
        + (EXAMPLES / "web-nat-http.yaml").read_text().replace("  backends:", "  serviceRef: {name: nginx}\n  backends:")
    )
    assert main(["-f", str(spec)]) == 0
    err = capsys.readouterr().err
    assert "default/web has mode: ipvs; not rendered" in err
    assert "serviceRef nginx" in err and "only its static backends" in err


def test_cli_invalid_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLES / "web-nat-http.yaml").read_text().replace("path: /healthz", "path: /health{z}"))
    assert main(["-f", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "VirtualService default/web-nat" in err and "spec.healthCheck.path" in err
    assert main(["-f", str(tmp_path / "missing.yaml")]) == 2
    assert main(["-f", str(EXAMPLES), "--layout", "weird"]) == 2


def test_cli_bad_auth_file_exits_2_without_printing_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "pass"
    secret.write_text("much-too-long-secret\n")
    assert main(["-f", str(EXAMPLES), "--auth-file", str(secret)]) == 2
    err = capsys.readouterr().err
    assert "--auth-file" in err and "much-too-long-secret" not in err
    assert main(["-f", str(EXAMPLES), "--auth-file", str(tmp_path / "none")]) == 2


def test_cli_conflicts_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "vs.yaml"
    text = (EXAMPLES / "web-nat-http.yaml").read_text()
    spec.write_text(text + "---\n" + text.replace("name: web-nat", "name: web-nat-2"))
    assert main(["-f", str(spec)]) == 2
    assert "Conflict" in capsys.readouterr().err


def test_cli_cannot_write_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["-f", str(EXAMPLES), "--out", str(blocker)]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_confd_output_always_has_its_conf_d_folder(tmp_path: Path) -> None:
    spec = tmp_path / "seed.yaml"
    shutil.copy(ROOT / "examples" / "seed.yaml", spec)  # mode ipvs: no file for conf.d
    assert main(["-f", str(spec), "--out", str(tmp_path / "etc")]) == 0
    assert (tmp_path / "etc" / "conf.d").is_dir() and not list((tmp_path / "etc" / "conf.d").iterdir())


def test_out_refuses_a_hand_written_file_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = str(Path(__file__).parent.parent.parent.parent / "examples" / "keepalived" / "web-nat-http.yaml")
    hand = tmp_path / "keepalived.conf"
    hand.write_text("global_defs { router_id mine }\n")
    assert main(["-f", source, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{hand}: not written by vsop" in err and "--force" in err
    assert hand.read_text() == "global_defs { router_id mine }\n" and not (tmp_path / "conf.d").exists()
    assert main(["-f", source, "--out", str(tmp_path), "--force"]) == 0
    assert hand.read_text().startswith("# Generated by vsop")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_out_changes_nothing_when_a_write_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = render_keepalived([ka("a"), ka("b", vip="169.254.12.9")])
    write_files(tmp_path, first.files, first.directories)
    before = {p: p.read_text() for p in tmp_path.rglob("*.conf")}
    second = render_keepalived([ka("a", scheduler="wrr"), ka("b", vip="169.254.12.9", scheduler="sh")])
    calls = []

    def failing_fsync(fd: int) -> None:  # the second of the two files that change (keepalived.conf does not)
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        write_files(tmp_path, second.files, second.directories)
    assert {p: p.read_text() for p in tmp_path.rglob("*.conf")} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_long_names_get_a_short_stable_file_name(tmp_path: Path) -> None:
    name = "a" * 240 + "-web"
    other = "a" * 240 + "-db"
    result = render_keepalived([ka(name), ka(other, vip="169.254.12.9")])
    confd = sorted(f for f in result.files if f.startswith("conf.d/"))
    assert len(confd) == 2 and all(len(Path(f).name) <= 200 for f in confd)
    assert confd == sorted(f for f in render_keepalived([ka(name), ka(other, vip="169.254.12.9")]).files if f.startswith("conf.d/"))
    written, _ = write_files(tmp_path, result.files, result.directories)
    assert all(path.exists() for path in written)


def test_a_backend_on_another_objects_vip_is_left_out_as_the_agents_refuse_it() -> None:
    target = ka("target", vip="10.9.0.1")
    pointing = ka("pointing", vip="169.254.11.3", backends=[{"address": "10.9.0.1"}])
    rendered = render_keepalived([target, pointing])
    assert rendered.rendered == ("default/target",)
    [problem] = rendered.problems
    assert (problem.obj, problem.reason) == ("default/pointing", "BackendIsVIP")
    assert problem.message == "spec.backends[0].address: 10.9.0.1 is the VIP of VirtualService default/target: a VIP cannot be a real server"
