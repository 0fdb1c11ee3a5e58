"""VipPool: the model refuses what it must (naming pool, field and reason) and does the address arithmetic right."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from vsop.api.errors import InvalidInput
from vsop.api.pools import parse_block, parse_vip_pool

POOL: dict[str, Any] = {"apiVersion": "vsop.dev/v1alpha1", "kind": "VipPool", "metadata": {"name": "lan"},
                        "spec": {"addresses": ["192.0.2.0/28"]}}


def pool(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(POOL)
    doc["spec"].update(spec)
    return doc


GOOD: dict[str, dict[str, Any]] = {
    "one prefix": POOL,
    "both families, ranges and single addresses": pool(addresses=["192.0.2.0/28", "198.51.100.10-198.51.100.20", "2001:db8::/120",
                                                                  "fd00::10-fd00::1f", "169.254.169.254", "fd00:ec2::254"]),
    "a whole-family prefix": pool(addresses=["0.0.0.0/0", "::/0"]),
    "allocation by name and labels": pool(serviceAllocation={"priority": 10, "namespaces": ["team-a", "team-b"],
                                                             "namespaceSelectors": [{"matchLabels": {"tier": "web"}}],
                                                             "serviceSelectors": [{"matchExpressions": [{"key": "lb", "operator": "Exists"}]}]}),
    "template": pool(template={"scheduler": "wlc", "forwarding": "route", "announce": "none", "drain": {"timeoutSeconds": 5},
                               "nodeSelector": {"matchLabels": {"vsop.dev/lb": "true"}}, "healthCheck": {"type": "tcp"}}),
    "flags": pool(autoAssign=False, avoidBuggyIPs=True),
}

# name -> (document, the field the model names, words of the reason)
BAD: dict[str, tuple[dict[str, Any], str, str]] = {
    "no addresses": (pool(addresses=[]), "spec.addresses", "at least 1"),
    "missing addresses": ({**POOL, "spec": {}}, "spec.addresses", "required"),
    "host bits": (pool(addresses=["192.0.2.1/28"]), "spec.addresses[0]", "host bits set: write 192.0.2.0/28"),
    "v6 host bits": (pool(addresses=["fd00::1/120"]), "spec.addresses[0]", "host bits set"),
    "prefix too long": (pool(addresses=["192.0.2.0/33"]), "spec.addresses[0]", "not a CIDR prefix"),
    "v6 prefix too long": (pool(addresses=["fd00::/129"]), "spec.addresses[0]", "not a CIDR prefix"),
    "backwards range": (pool(addresses=["192.0.2.9-192.0.2.1"]), "spec.addresses[0]", "runs backwards"),
    "mixed range": (pool(addresses=["192.0.2.1-fd00::1"]), "spec.addresses[0]", "mixes IPv4 and IPv6"),
    "mixed range, v6 first": (pool(addresses=["fd00::1-192.0.2.1"]), "spec.addresses[0]", "mixes IPv4 and IPv6"),
    "leading zero": (pool(addresses=["192.0.2.010"]), "spec.addresses[0]", "not an IPv4 or IPv6 address"),
    "octet too big": (pool(addresses=["192.0.2.256/32"]), "spec.addresses[0]", "not a CIDR prefix"),
    "a hostname": (pool(addresses=["lan.example"]), "spec.addresses[0]", "CIDR prefix (192.0.2.0/28), a range"),
    "duplicate entry": (pool(addresses=["192.0.2.0/28", "192.0.2.0/28"]), "spec.addresses[1]", "duplicate entry"),
    "text boolean": (pool(autoAssign="true"), "spec.autoAssign", "true or false"),
    "unknown field": (pool(adresses=["192.0.2.0/28"]), "spec.adresses", "unknown field"),
    "bad namespace": (pool(serviceAllocation={"namespaces": ["Team-A"]}), "spec.serviceAllocation.namespaces[0]", "DNS label"),
    "duplicate namespace": (pool(serviceAllocation={"namespaces": ["a", "a"]}), "spec.serviceAllocation.namespaces[1]", "duplicate namespace"),
    "priority out of range": (pool(serviceAllocation={"priority": 1001}), "spec.serviceAllocation.priority", "at most 1000"),
    "bad scheduler": (pool(template={"scheduler": "fast"}), "spec.template.scheduler", "must be one of"),
    "In without values": (pool(serviceAllocation={"serviceSelectors": [{"matchExpressions": [{"key": "a", "operator": "In"}]}]}),
                          "spec.serviceAllocation.serviceSelectors[0].matchExpressions[0].values", "In needs at least one value"),
    "Exists with values": (pool(template={"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}),
                           "spec.template.nodeSelector.matchExpressions[0].values", "takes no values"),
    "timeout over interval": (pool(template={"healthCheck": {"type": "tcp", "intervalSeconds": 1, "timeoutSeconds": 2}}),
                              "spec.template.healthCheck.timeoutSeconds", "at most intervalSeconds"),
    "bad name": ({**POOL, "metadata": {"name": "Lan"}}, "metadata.name", "DNS subdomain"),
}


@pytest.mark.parametrize("doc", GOOD.values(), ids=GOOD.keys())
def test_good_pools_are_accepted(doc: dict[str, Any]) -> None:
    parse_vip_pool(doc)


@pytest.mark.parametrize(("doc", "path", "words"), BAD.values(), ids=BAD.keys())
def test_bad_pools_are_refused_naming_pool_field_and_reason(doc: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_vip_pool(doc)
    [error] = [e for e in caught.value.errors if e.path == path]
    assert words in error.reason, error.reason
    name = doc["metadata"]["name"]
    assert str(error).startswith(f"VipPool {name}: {path}: "), str(error)


def test_address_arithmetic() -> None:
    lan = parse_vip_pool(pool(addresses=["192.0.2.0/30", "198.51.100.255-198.51.101.0", "fd00::1-fd00::2", "169.254.169.254"]))
    assert lan.holds("192.0.2.3") and not lan.holds("192.0.2.4") and lan.holds("fd00::2") and not lan.holds("fd00::3")
    assert lan.names("169.254.169.254") and not lan.names("192.0.2.1"), "only a single-address entry names an address"
    assert list(lan.candidates(4)) == ["192.0.2.0", "192.0.2.1", "192.0.2.2", "192.0.2.3", "198.51.100.255", "198.51.101.0", "169.254.169.254"]
    buggy = parse_vip_pool(pool(addresses=["198.51.100.254-198.51.101.1"], avoidBuggyIPs=True))
    assert list(buggy.candidates(4)) == ["198.51.100.254", "198.51.101.1"]
    assert list(lan.candidates(6)) == ["fd00::1", "fd00::2"]
    assert parse_block("fd00::/126").size == 4 and parse_block("10.0.0.7").size == 1


def test_namespace_and_service_grants() -> None:
    everyone = parse_vip_pool(POOL)
    assert everyone.grants_namespace("any", None) and everyone.grants_service({})
    named = parse_vip_pool(pool(serviceAllocation={"namespaces": ["team-a"], "namespaceSelectors": [{"matchLabels": {"tier": "web"}}],
                                                   "serviceSelectors": [{"matchLabels": {"lb": "yes"}}]}))
    assert named.grants_namespace("team-a", None)
    assert named.grants_namespace("team-b", {"tier": "web"}) and not named.grants_namespace("team-b", {"tier": "db"})
    assert not named.grants_namespace("team-b", None), "an unknown namespace's labels grant nothing"
    assert named.grants_service({"lb": "yes"}) and not named.grants_service({})
