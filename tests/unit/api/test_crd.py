"""The CRD is generated from the model, committed, structural, and as strict as the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vsop.api.crd import crd, crd_yaml, node_report_crd_yaml

COMMITTED = Path(__file__).parent.parent.parent.parent / "crds" / "virtualservices.vsop.dev.yaml"


def walk(schema: Any, path: str = ""):
    if isinstance(schema, dict):
        yield path, schema
        for key, value in schema.get("properties", {}).items():
            yield from walk(value, f"{path}.{key}")
        if isinstance(schema.get("items"), dict):
            yield from walk(schema["items"], f"{path}[]")
        if isinstance(schema.get("additionalProperties"), dict):
            yield from walk(schema["additionalProperties"], f"{path}{{}}")


def spec_schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_committed_crd_equals_generated() -> None:
    assert COMMITTED.read_text() == crd_yaml(), "crds/ is stale: run `vsop crd > crds/virtualservices.vsop.dev.yaml`"


def test_committed_node_report_crd_equals_generated() -> None:
    committed = COMMITTED.parent / "nodereports.vsop.dev.yaml"
    assert committed.read_text() == node_report_crd_yaml(), "crds/ is stale: run `make crd`"


def test_schema_is_structural() -> None:
    root = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(root):
        assert "$ref" not in node and "anyOf" not in node and "oneOf" not in node and "allOf" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert "title" not in node, path


def test_constraints_reach_the_schema() -> None:
    spec = spec_schema()
    props = spec["properties"]
    assert spec["required"] == ["vip", "ports"]
    port = props["ports"]["items"]["properties"]
    assert (port["port"]["minimum"], port["port"]["maximum"]) == (1, 65535)
    assert port["protocol"]["enum"] == ["TCP", "UDP", "SCTP"] and port["protocol"]["default"] == "TCP"
    assert port["targetPort"]["x-kubernetes-int-or-string"] is True
    assert (props["ports"]["minItems"], props["ports"]["maxItems"]) == (1, 64)
    assert props["ports"]["x-kubernetes-list-map-keys"] == ["port", "protocol"]
    assert "mh" in props["scheduler"]["enum"] and "twos" in props["scheduler"]["enum"]
    assert props["forwarding"]["enum"] == ["masq", "route", "tunnel"]
    assert props["backends"]["items"]["properties"]["weight"]["maximum"] == 65535
    assert props["persistence"]["properties"]["timeoutSeconds"]["maximum"] == 31536000
    assert props["vrrp"]["properties"]["virtualRouterID"]["maximum"] == 255
    assert props["vrrp"]["properties"]["priority"]["maximum"] == 254
    assert props["healthCheck"]["properties"]["expectStatus"]["minimum"] == 100
    assert props["vip"]["pattern"] and props["backends"]["items"]["properties"]["address"]["pattern"]
    messages = " ".join(rule["message"] for rule in spec["x-kubernetes-validations"])
    for words in ("backends or serviceRef", "needs serviceRef", "forwarding: tunnel", "vrrp peer", "vrrp block"):
        assert words in messages
    assert props["healthCheck"]["x-kubernetes-validations"][0]["rule"].startswith("self.type == 'none'")


def test_crd_names_status_and_columns() -> None:
    doc = yaml.safe_load(COMMITTED.read_text())
    names = doc["spec"]["names"]
    assert doc["metadata"]["name"] == "virtualservices.vsop.dev" and names["shortNames"] == ["vsop"]
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["VIP"] == ".spec.vip" and columns["Ports"] == ".spec.ports[*].port"
    assert columns["Healthy"] == ".status.backends.healthy" and columns["Backends"] == ".status.backends.total"
    assert "Ready" in columns and columns["Age"] == ".metadata.creationTimestamp"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["nodes"]["additionalProperties"]["properties"]["programmed"]["type"] == "boolean"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_committed_vip_pool_crd_equals_generated() -> None:
    from vsop.api.crd import vip_pool_crd_yaml

    committed = COMMITTED.parent / "vippools.vsop.dev.yaml"
    assert committed.read_text() == vip_pool_crd_yaml(), "crds/ is stale: run `make crd`"


def test_committed_bgp_speaker_crd_equals_generated() -> None:
    from vsop.api.crd import bgp_speaker_crd_yaml

    committed = COMMITTED.parent / "bgpspeakers.vsop.dev.yaml"
    assert committed.read_text() == bgp_speaker_crd_yaml(), "crds/ is stale: run `make crd`"
