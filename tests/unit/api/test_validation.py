"""Validation: every bad object is refused with a message naming the field and the reason."""

from __future__ import annotations

import copy
from typing import Any

import pydantic
import pytest

from tests.conftest import SEED
from vsop.api.errors import InvalidInput
from vsop.api.manifests import load_text
from vsop.api.model import parse_virtual_service


def with_spec(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SEED)
    doc["spec"].update(changes)
    return doc


def set_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


GOOD = {
    "seed": SEED,
    "ipv6": with_spec(vip="fd00::11", backends=[{"address": "fd00::1:2", "port": 8080}]),
    "udp and sctp": with_spec(ports=[{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}, {"port": 9, "protocol": "SCTP"}]),
    "serviceRef with named targetPort": with_spec(backends=[], serviceRef={"name": "nginx"}, ports=[{"port": 80, "targetPort": "http"}]),
    "route without port change": with_spec(forwarding="route", ports=[{"port": 80}]),
    "tunnel across families": with_spec(forwarding="tunnel", ports=[{"port": 80}], backends=[{"address": "fd00::2"}]),
    "every scheduler": with_spec(scheduler="mh"),
    "persistence": with_spec(persistence={"timeoutSeconds": 300}),
    "http health": with_spec(healthCheck={"type": "http", "path": "/healthz", "expectStatus": 204, "intervalSeconds": 5, "timeoutSeconds": 1}),
    "vrrp keepalived": with_spec(mode="keepalived", announce="vrrp", vrrp={"interface": "eth0", "virtualRouterID": 51}),
    "vrrp ipvs": with_spec(announce="vrrp", vrrp={"interface": "eth0", "virtualRouterID": 52, "peers": ["192.168.5.2", "192.168.5.1"]}),
    "weight zero": with_spec(backends=[{"address": "10.1.1.1", "weight": 0}]),
    "node selector": with_spec(nodeSelector={"matchLabels": {"lb": "yes"}, "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}),
    "traffic policy local": with_spec(backends=[], serviceRef={"name": "nginx"}, ports=[{"port": 80}], trafficPolicy="Local"),
    "source ranges": with_spec(sourceRanges=["10.0.0.0/8", "192.168.7.9/24", "0.0.0.0/0", "203.0.113.5/32"]),
}

# (document, field path named in the message, words the reason must contain)
BAD = {
    "hostname vip": (with_spec(vip="example.com"), "spec.vip", "not a hostname"),
    "cidr vip": (with_spec(vip="10.0.0.1/32"), "spec.vip", "CIDR"),
    "vip with spaces": (with_spec(vip=" 10.0.0.1"), "spec.vip", "spaces"),
    "vip with shell": (with_spec(vip="10.0.0.1;reboot"), "spec.vip", "literal"),
    "loopback vip": (with_spec(vip="127.0.0.5"), "spec.vip", "loopback"),
    "unspecified vip": (with_spec(vip="0.0.0.0"), "spec.vip", "unicast"),
    "multicast vip": (with_spec(vip="224.0.0.1"), "spec.vip", "unicast"),
    "v6 link-local vip": (with_spec(vip="fe80::1"), "spec.vip", "link-local"),
    "vip as number": (with_spec(vip=167772161), "spec.vip", "written as text"),
    "backend hostname": (with_spec(backends=[{"address": "web1"}]), "spec.backends[0].address", "not a hostname"),
    "backend family": (with_spec(backends=[{"address": "fd00::1"}]), "spec.backends[0].address", "tunnel"),
    "port zero": (with_spec(ports=[{"port": 0}]), "spec.ports[0].port", "at least 1"),
    "port too big": (with_spec(ports=[{"port": 65536}]), "spec.ports[0].port", "at most 65535"),
    "port as string": (with_spec(ports=[{"port": "80"}]), "spec.ports[0].port", "not text: write 80 without quotes"),
    "protocol": (with_spec(ports=[{"port": 80, "protocol": "ICMP"}]), "spec.ports[0].protocol", "'TCP', 'UDP' or 'SCTP'"),
    "no ports": (with_spec(ports=[]), "spec.ports", "at least 1 port"),
    "65 ports": (with_spec(ports=[{"port": p} for p in range(1, 66)]), "spec.ports", "at most 64 ports (got 65)"),
    "duplicate ports": (with_spec(ports=[{"port": 80}, {"port": 80, "protocol": "TCP"}]), "spec.ports[1]", "duplicate port 80/TCP"),
    "duplicate port names": (with_spec(ports=[{"name": "a", "port": 80}, {"name": "a", "port": 81}]), "spec.ports[1].name", "duplicate"),
    "bad port name": (with_spec(ports=[{"name": "HTTP_1", "port": 80}]), "spec.ports[0].name", "must be a port name (IANA_SVC_NAME)"),
    "targetPort too big": (with_spec(ports=[{"port": 80, "targetPort": 70000}]), "spec.ports[0].targetPort", ""),
    "targetPort name without serviceRef": (with_spec(ports=[{"port": 80, "targetPort": "http"}]), "spec.ports[0].targetPort", "serviceRef"),
    "route changes port": (with_spec(forwarding="route"), "spec.ports[0].targetPort", "only masq"),
    "scheduler": (with_spec(scheduler="roundrobin"), "spec.scheduler", "'rr'"),
    "forwarding": (with_spec(forwarding="nat"), "spec.forwarding", "'masq', 'route' or 'tunnel'"),
    "weight negative": (with_spec(backends=[{"address": "10.0.0.9", "weight": -1}]), "spec.backends[0].weight", "at least 0"),
    "weight too big": (with_spec(backends=[{"address": "10.0.0.9", "weight": 65536}]), "spec.backends[0].weight", "at most 65535"),
    "persistence too long": (with_spec(persistence={"timeoutSeconds": 31536001}), "spec.persistence.timeoutSeconds", "at most 31536000"),
    "no backends": (with_spec(backends=[]), "spec.backends", "backends or serviceRef"),
    "health type": (with_spec(healthCheck={"type": "icmp"}), "spec.healthCheck.type", "'none', 'tcp' or 'http'"),
    "health interval": (with_spec(healthCheck={"type": "tcp", "intervalSeconds": 0}), "spec.healthCheck.intervalSeconds", "at least 1"),
    "health timeout": (with_spec(healthCheck={"type": "tcp", "intervalSeconds": 2, "timeoutSeconds": 3}), "spec.healthCheck.timeoutSeconds", "at most intervalSeconds"),
    "health threshold": (with_spec(healthCheck={"type": "tcp", "failureThreshold": 0}), "spec.healthCheck.failureThreshold", "at least 1"),
    "health path": (with_spec(healthCheck={"type": "http", "path": "healthz"}), "spec.healthCheck.path", "HTTP path starting with '/'"),
    "health status": (with_spec(healthCheck={"type": "http", "expectStatus": 600}), "spec.healthCheck.expectStatus", "at most 599"),
    "vrid": (with_spec(mode="keepalived", announce="vrrp", vrrp={"interface": "eth0", "virtualRouterID": 256}), "spec.vrrp.virtualRouterID", "255"),
    "priority": (with_spec(mode="keepalived", announce="vrrp", vrrp={"interface": "eth0", "virtualRouterID": 5, "priority": 255}), "spec.vrrp.priority", "254"),
    "advert": (with_spec(mode="keepalived", announce="vrrp", vrrp={"interface": "eth0", "virtualRouterID": 5, "advertIntervalSeconds": 0}), "spec.vrrp.advertIntervalSeconds", "1"),
    "interface": (with_spec(mode="keepalived", announce="vrrp", vrrp={"interface": "eth0 ; rm", "virtualRouterID": 5}), "spec.vrrp.interface", "interface name"),
    "interface too long": (with_spec(mode="keepalived", announce="vrrp", vrrp={"interface": "a" * 16, "virtualRouterID": 5}), "spec.vrrp.interface", "15"),
    "vrrp without block": (with_spec(mode="keepalived", announce="vrrp"), "spec.vrrp", "vrrp block"),
    "vrrp peer of another family": (with_spec(announce="vrrp", vrrp={"interface": "eth0", "virtualRouterID": 5, "peers": ["fd00::1"]}), "spec.vrrp.peers", "IPv4"),
    "vrrp peer twice": (with_spec(announce="vrrp", vrrp={"interface": "eth0", "virtualRouterID": 5, "peers": ["10.0.0.1", "10.0.0.1"]}), "spec.vrrp.peers", "unique"),
    "mode": (with_spec(mode="nftables"), "spec.mode", "'ipvs' or 'keepalived'"),
    "unknown spec field": (with_spec(schedular="rr"), "spec.schedular", "unknown field"),
    "unknown nested field": (with_spec(backends=[{"address": "10.0.0.1", "wieght": 2}]), "spec.backends[0].wieght", "unknown field"),
    "backend port with several ports": (with_spec(ports=[{"port": 80}, {"port": 443}], backends=[{"address": "10.0.0.1", "port": 8080}]), "spec.backends[0].port", "ambiguous"),
    "duplicate backend": (with_spec(backends=[{"address": "10.0.0.1"}, {"address": "10.0.0.1"}]), "spec.backends[1]", "duplicate backend"),
    "missing vip": ({**SEED, "spec": {k: v for k, v in SEED["spec"].items() if k != "vip"}}, "spec.vip", "required"),
    "wrong apiVersion": ({**SEED, "apiVersion": "vsop.dev/v2"}, "apiVersion", "vsop.dev/v1alpha1"),
    "bad name": ({**SEED, "metadata": {"name": "Web_1"}}, "metadata.name", "DNS subdomain"),
    "local without serviceRef": (with_spec(trafficPolicy="Local"), "spec.trafficPolicy", "needs serviceRef"),
    "local with backends": (with_spec(serviceRef={"name": "nginx"}, trafficPolicy="Local"), "spec.trafficPolicy", "no static backends"),
    "local in keepalived mode": (with_spec(backends=[], serviceRef={"name": "nginx"}, mode="keepalived", trafficPolicy="Local"),
                                 "spec.trafficPolicy", "needs mode: ipvs"),
    "unknown traffic policy": (with_spec(trafficPolicy="Nearby"), "spec.trafficPolicy", "Cluster"),
    "source range without length": (with_spec(sourceRanges=["10.0.0.0"]), "spec.sourceRanges[0]", "not a CIDR prefix"),
    "source range too long": (with_spec(sourceRanges=["10.0.0.0/33"]), "spec.sourceRanges[0]", "prefix length"),
    "source range v6 too long": (with_spec(sourceRanges=["fd00::/129"]), "spec.sourceRanges[0]", "prefix length"),
    "source range hostname": (with_spec(sourceRanges=["example.com/8"]), "spec.sourceRanges[0]", "not an IPv4 or IPv6 address"),
    "source range of the other family": (with_spec(sourceRanges=["10.0.0.0/8", "fd00::/8"]), "spec.sourceRanges[1]", "never matches a client"),
    "too many source ranges": (with_spec(sourceRanges=[f"10.{i}.0.0/16" for i in range(65)]), "spec.sourceRanges", "at most 64"),
}


# The seed as the model holds it, every default spelled out (written here, not computed).
SEED_PARSED: dict[str, Any] = {
    "apiVersion": "vsop.dev/v1alpha1", "kind": "VirtualService",
    "metadata": {"name": "web", "namespace": "default", "creationTimestamp": None, "generation": None, "labels": {}},
    "spec": {
        "vip": "169.254.11.2", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        "scheduler": "rr", "forwarding": "masq", "masquerade": True, "persistence": {"timeoutSeconds": 0},
        "backends": [{"address": "192.168.2.111", "port": None, "weight": 1}, {"address": "192.168.2.222", "port": None, "weight": 1}],
        "serviceRef": None,
        "healthCheck": {"type": "none", "path": "/", "expectStatus": 200, "intervalSeconds": 3, "timeoutSeconds": 2, "failureThreshold": 2, "successThreshold": 1},
        "drain": {"timeoutSeconds": 30}, "suppressARP": False, "nodeSelector": {"matchLabels": {}, "matchExpressions": []},
        "mode": "ipvs", "announce": "none", "vrrp": None, "bgp": None, "trafficPolicy": "Cluster", "sourceRanges": [],
    },
    "status": None,
}


def _port(port: int, protocol: str = "TCP", target: int | str | None = None) -> dict[str, Any]:
    return {"name": None, "port": port, "protocol": protocol, "targetPort": target}


# Per GOOD case: how its parsed spec differs from SEED_PARSED's (defaults of each block filled in).
GOOD_PARSED: dict[str, dict[str, Any]] = {
    "seed": {},
    "ipv6": {"vip": "fd00::11", "backends": [{"address": "fd00::1:2", "port": 8080, "weight": 1}]},
    "udp and sctp": {"ports": [_port(53, "UDP"), _port(53, "TCP"), _port(9, "SCTP")]},
    "serviceRef with named targetPort": {"ports": [_port(80, target="http")], "backends": [], "serviceRef": {"name": "nginx"}},
    "route without port change": {"ports": [_port(80)], "forwarding": "route"},
    "tunnel across families": {"ports": [_port(80)], "forwarding": "tunnel", "backends": [{"address": "fd00::2", "port": None, "weight": 1}]},
    "every scheduler": {"scheduler": "mh"},
    "persistence": {"persistence": {"timeoutSeconds": 300}},
    "http health": {"healthCheck": {"type": "http", "path": "/healthz", "expectStatus": 204, "intervalSeconds": 5, "timeoutSeconds": 1,
                                    "failureThreshold": 2, "successThreshold": 1}},
    "vrrp keepalived": {"mode": "keepalived", "announce": "vrrp",
                        "vrrp": {"interface": "eth0", "virtualRouterID": 51, "priority": 100, "advertIntervalSeconds": 1, "peers": [], "preemptDelaySeconds": 10}},
    "vrrp ipvs": {"announce": "vrrp", "vrrp": {"interface": "eth0", "virtualRouterID": 52, "priority": 100, "advertIntervalSeconds": 1,
                                               "peers": ["192.168.5.2", "192.168.5.1"], "preemptDelaySeconds": 10}},
    "weight zero": {"backends": [{"address": "10.1.1.1", "port": None, "weight": 0}]},
    "node selector": {"nodeSelector": {"matchLabels": {"lb": "yes"}, "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
    "traffic policy local": {"ports": [_port(80)], "backends": [], "serviceRef": {"name": "nginx"}, "trafficPolicy": "Local"},
    # Host bits go (as Kubernetes reads loadBalancerSourceRanges): the network is what is kept.
    "source ranges": {"sourceRanges": ["10.0.0.0/8", "192.168.7.0/24", "0.0.0.0/0", "203.0.113.5/32"]},
}


@pytest.mark.parametrize("name", GOOD)
def test_good_objects_parse_into_exactly_what_they_say(name: str) -> None:
    """The whole parsed object, not only that parsing did not raise: a field dropped, renamed or
    defaulted differently fails here."""
    vs = parse_virtual_service(GOOD[name])
    assert vs.model_dump(mode="json", by_alias=True) == {**SEED_PARSED, "spec": {**SEED_PARSED["spec"], **GOOD_PARSED[name]}}
    assert vs.ref == "default/web"


@pytest.mark.parametrize(("doc", "path", "words"), BAD.values(), ids=BAD.keys())
def test_bad_objects_name_field_and_reason(doc: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_virtual_service(doc)
    matching = [e for e in caught.value.errors if e.path == path]
    assert matching, f"no error names {path}: {[str(e) for e in caught.value.errors]}"
    assert words in matching[0].reason, matching[0].reason
    ref = f"{doc['metadata'].get('namespace', 'default')}/{doc['metadata']['name']}"
    assert str(matching[0]) == f"VirtualService {ref}: {path}: {matching[0].reason}"  # the object, the field, the reason


def test_defaults_are_filled() -> None:
    vs = parse_virtual_service({**SEED, "spec": {"vip": "10.9.0.1", "ports": [{"port": 80}], "backends": [{"address": "10.0.0.1"}]}})
    spec = vs.spec
    assert (spec.scheduler, spec.forwarding, spec.masquerade, spec.mode, spec.announce) == ("rr", "masq", True, "ipvs", "none")
    assert spec.ports[0].protocol == "TCP" and spec.backends[0].weight == 1
    assert spec.health_check.type == "none" and spec.persistence.timeout_seconds == 0
    assert vs.metadata.namespace == "default"


def test_addresses_are_canonical() -> None:
    vs = parse_virtual_service(with_spec(vip="FD00:0:0::11", backends=[{"address": "fd00:0::2"}]))
    assert vs.spec.vip == "fd00::11" and vs.spec.backends[0].address == "fd00::2"


@pytest.mark.parametrize("address", ["10.0.0.1", "0.0.0.1", "192.168.255.254", "1.2.3.4"])
def test_ipv4_addresses_keep_their_text_which_is_canonical(address: str) -> None:
    import ipaddress

    vs = parse_virtual_service(with_spec(vip="10.9.0.1", backends=[{"address": address}]))
    assert vs.spec.backends[0].address == str(ipaddress.ip_address(address)) == address


@pytest.mark.parametrize("address", ["010.0.0.1", "10.0.0.01", "10.0.0", "10.0.0.256", "\uff11.0.0.1"])
def test_ipv4_text_that_is_not_canonical_is_refused_every_time(address: str) -> None:
    for _ in range(2):  # the second from the addresses already checked, if it were kept
        with pytest.raises(InvalidInput, match="address literal"):
            parse_virtual_service(with_spec(backends=[{"address": address}]))


def test_objects_are_immutable() -> None:
    vs = parse_virtual_service(SEED)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        vs.spec.vip = "10.0.0.1"  # type: ignore[misc]
    assert vs.spec.vip == "169.254.11.2"


YAML_BAD = """\
apiVersion: vsop.dev/v1alpha1
kind: VirtualService
metadata: {name: ok}
spec:
  vip: 10.9.0.1
  ports: [{port: 80}]
  backends: [{address: 10.0.0.1}]
---
apiVersion: vsop.dev/v1alpha1
kind: VirtualService
metadata:
  name: typo
  namespace: shop
spec:
  vip: 10.9.0.2
  ports:
    - port: 80
      protcol: UDP
  backends: [{address: 10.0.0.1}]
"""


def test_yaml_errors_name_file_line_object_and_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        load_text(YAML_BAD, "services.yaml")
    (error,) = caught.value.errors
    assert str(error) == (
        "services.yaml:18: VirtualService shop/typo: spec.ports[0].protcol: "
        "unknown field (check the spelling; unknown fields are refused, not ignored)"
    )


def test_yaml_duplicate_keys_are_refused() -> None:
    text = "apiVersion: vsop.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  vip: 10.0.0.1\n  vip: 10.0.0.2\n"
    with pytest.raises(InvalidInput) as caught:
        load_text(text, "dup.yaml")
    assert "dup.yaml:6: VirtualService default/a: spec.vip: duplicate key 'vip'" in str(caught.value)


def test_yaml_syntax_error_names_line() -> None:
    with pytest.raises(InvalidInput) as caught:
        load_text("spec:\n  vip: [1\n", "broken.yaml")
    assert str(caught.value).startswith("broken.yaml:")
    assert "not valid YAML" in str(caught.value)


def test_other_kinds_are_reported_not_silently_dropped() -> None:
    loaded = load_text("apiVersion: v1\nkind: Service\nmetadata: {name: nginx}\n---\n" + YAML_BAD.split("---")[0], "mixed.yaml")
    assert [vs.ref for vs in loaded.services] == ["default/ok"]
    assert loaded.skipped == ["mixed.yaml:1: skipped Service nginx"]


def test_same_object_twice_is_refused() -> None:
    first = YAML_BAD.split("---")[0]
    with pytest.raises(InvalidInput) as caught:
        load_text(first + "---\n" + first, "twice.yaml")
    assert "defined twice" in str(caught.value)
