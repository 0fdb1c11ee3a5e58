"""The CustomResourceDefinition, generated from the model.

Owns the translation of pydantic's JSON schema into a structural
apiextensions.k8s.io/v1 schema (refs inlined, optionals flattened, int-or-string
marked) and the CEL rules that mirror `model.semantic_errors`, so the API server
refuses what a file would be refused for. `crds/virtualservices.vsop.dev.yaml` is
this module's output, committed; a test keeps the two equal.
Must not import: kopf, pyroute2, kubernetes, subprocess.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from vsop.api.model import API_GROUP, API_VERSION, DNS_LABEL, KIND, PORT_NAME, VirtualServiceSpec, VirtualServiceStatus

PLURAL = "virtualservices"

# Each mirrors a rule of model.semantic_errors; the message matches its reason.
SPEC_RULES: list[dict[str, str]] = [
    {
        "rule": "(has(self.backends) && size(self.backends) > 0) || has(self.serviceRef)",
        "message": "at least one of backends or serviceRef is required",
        "fieldPath": ".backends",
        "reason": "FieldValueRequired",
    },
    {
        "rule": "has(self.serviceRef) || self.ports.all(p, !has(p.targetPort) || type(p.targetPort) == int)",
        "message": "a port name in targetPort needs serviceRef to resolve it",
        "fieldPath": ".ports",
    },
    {
        "rule": "self.forwarding == 'masq' || self.ports.all(p, !has(p.targetPort) || (type(p.targetPort) == int && p.targetPort == p.port))",
        "message": "only forwarding masq can change the port: with route or tunnel, targetPort must equal port",
        "fieldPath": ".ports",
    },
    {
        "rule": "self.ports.all(p, !has(p.name) || self.ports.filter(q, has(q.name) && q.name == p.name).size() == 1)",
        "message": "port names must be unique",
        "fieldPath": ".ports",
    },
    {
        "rule": "self.forwarding == 'tunnel' || !has(self.backends) || self.backends.all(b, b.address.contains(':') == self.vip.contains(':'))",
        "message": "a backend of another IP family than the VIP needs forwarding: tunnel",
        "fieldPath": ".backends",
    },
    {
        "rule": "size(self.ports) == 1 || !has(self.backends) || self.backends.all(b, !has(b.port))",
        "message": "a backend port is ambiguous with several ports; use ports[].targetPort",
        "fieldPath": ".backends",
    },
    {
        "rule": "self.forwarding == 'masq' || !has(self.backends) || self.backends.all(b, !has(b.port) || b.port == self.ports[0].port)",
        "message": "only forwarding masq can change the port: with route or tunnel, a backend port must equal the VIP port",
        "fieldPath": ".backends",
    },
    {
        "rule": "!has(self.announce) || self.announce != 'vrrp' || has(self.vrrp)",
        "message": "announce: vrrp needs the vrrp block (interface, virtualRouterID)",
        "fieldPath": ".vrrp",
    },
    {
        "rule": "!has(self.vrrp) || !has(self.vrrp.peers) || self.vrrp.peers.all(p, p.contains(':') == self.vip.contains(':'))",
        "message": "VRRP talks the VIP's family: every vrrp peer must be of the VIP's family",
        "fieldPath": ".vrrp.peers",
    },
    {
        "rule": "!has(self.vrrp) || !has(self.vrrp.peers) || self.vrrp.peers.all(p, self.vrrp.peers.filter(q, q == p).size() == 1)",
        "message": "vrrp peers must be unique",
        "fieldPath": ".vrrp.peers",
    },
    {
        "rule": "!has(self.announce) || self.announce != 'bgp' || self.mode == 'ipvs'",
        "message": "announce: bgp announces what vsop programs into IPVS and needs mode: ipvs",
        "fieldPath": ".announce",
    },
]

SPEC_RULES += [
    {
        # Letter case only: other spellings of one IPv6 address (zeros written out) are the model's to catch.
        "rule": "!has(self.backends) || self.backends.all(b, b.address.lowerAscii() != self.vip.lowerAscii())",
        "message": "a backend cannot be this VirtualService's own VIP: traffic would loop",
        "fieldPath": ".backends",
    },
    {
        "rule": "self.forwarding == 'tunnel' || !has(self.backends) || self.backends.all(b, !b.address.matches('^(169[.]254[.]|[fF][eE][89aAbB][0-9a-fA-F]:)'))",
        "message": "a link-local backend is not routed beyond its link: only forwarding tunnel can reach it",
        "fieldPath": ".backends",
    },
]

SPEC_RULES.append(
    {
        "rule": "!has(self.trafficPolicy) || self.trafficPolicy != 'Local' || (has(self.serviceRef) && (!has(self.backends) || size(self.backends) == 0))",
        "message": "trafficPolicy Local keeps the endpoints of serviceRef on each node; it needs serviceRef and no static backends",
        "fieldPath": ".trafficPolicy",
    }
)
SPEC_RULES.append(
    {
        "rule": "!has(self.trafficPolicy) || self.trafficPolicy != 'Local' || !has(self.mode) || self.mode == 'ipvs'",
        "message": "trafficPolicy Local is what vsop programs into IPVS per node; it needs mode: ipvs",
        "fieldPath": ".trafficPolicy",
    }
)
SPEC_RULES.append(
    {
        "rule": "!has(self.sourceRanges) || self.sourceRanges.all(r, r.contains(':') == self.vip.contains(':'))",
        "message": "a source range of another IP family than the VIP never matches a client",
        "fieldPath": ".sourceRanges",
    }
)

VIP_RULES = [
    {
        "rule": "!self.matches('^(24[0-9]|25[0-5])[.]')",
        "message": "a VIP in 240.0.0.0/4 (class E, reserved) is neither routed nor answered by Linux",
    },
    {
        "rule": "!self.matches('^127[.]') && !self.matches('^[0:]*:0{0,3}1$')",
        "message": "is a loopback address; binding it to the dummy link would break the node",
    },
    {
        "rule": "!self.matches('^[fF][eE][89aAbB][0-9a-fA-F]:')",
        "message": "is an IPv6 link-local address, which needs a zone and cannot be a VIP",
    },
    {"rule": "self != '255.255.255.255'", "message": "255.255.255.255 is the broadcast address"},
]

BACKEND_RULES = [
    {
        "rule": "!self.address.startsWith('127.') && !self.address.matches('^[0:]*:0{0,3}1$') && self.address != '255.255.255.255'",
        "message": "a backend cannot be a loopback address (the node itself) or the broadcast address",
        "fieldPath": ".address",
    }
]

MATCH_EXPRESSION_RULES = [
    {
        "rule": "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)",
        "message": "operators In and NotIn need at least one value; Exists and DoesNotExist take no values",
        "fieldPath": ".values",
    }
]

HEALTH_CHECK_RULES = [
    {
        "rule": "self.type == 'none' || self.timeoutSeconds <= self.intervalSeconds",
        "message": "timeoutSeconds must be at most intervalSeconds",
        "fieldPath": ".timeoutSeconds",
    }
]

TARGET_PORT_RULES = [
    {
        "rule": f"type(self) == int ? (self >= 1 && self <= 65535) : (size(self) <= 15 && self.matches('{PORT_NAME}') && self.matches('[a-z]'))",
        "message": "must be a port number 1..65535 or a port name (IANA_SVC_NAME: at most 15 characters, at least one letter)",
    }
]
PORT_NAME_RULES = [{"rule": "self.matches('[a-z]')", "message": "a port name holds at least one letter"}]

# RE2, as CEL's matches() uses. The schema's pattern only says "looks like an address";
# these mirror model._ip_literal and model._vip. IPv4 text is exact here (dotted decimal,
# no leading zeros); IPv6 checks are exact for every valid spelling (a nonzero first
# hextet is always written out; the all-zero and IPv4-mapped forms are spelled out).
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_H16 = "[0-9a-fA-F]{1,4}"
IP_LITERAL_RULES = [
    {
        "rule": f"self.contains(':') || self.matches('^({_OCTET}[.]){{3}}{_OCTET}$')",
        "message": "must be an IPv4 address in dotted decimal (0-255, no leading zeros) or an IPv6 address",
    },
    {
        "rule": "self != '0.0.0.0' && !self.matches('^[0:]+$') && !self.matches('^(22[4-9]|23[0-9])[.]') && !self.matches('^[fF][fF][0-9a-fA-F]{2}:')",
        "message": "must be a unicast address (not unspecified, not multicast)",
    },
    {
        "rule": f"!self.matches('^(::|(0{{1,4}}:){{1,4}}:|(0{{1,4}}:){{5}})[fF]{{4}}:(({_OCTET}[.]){{3}}{_OCTET}|{_H16}:{_H16})$')",
        "message": "must not be an IPv4-mapped IPv6 address, use the IPv4 form",
    },
]
PRINTER_COLUMNS = [
    {"name": "VIP", "type": "string", "jsonPath": ".spec.vip"},
    {"name": "Ports", "type": "string", "jsonPath": ".spec.ports[*].port"},
    {"name": "Mode", "type": "string", "jsonPath": ".spec.mode", "priority": 1},
    {"name": "Scheduler", "type": "string", "jsonPath": ".spec.scheduler", "priority": 1},
    {"name": "Healthy", "type": "integer", "jsonPath": ".status.backends.healthy"},
    {"name": "Backends", "type": "integer", "jsonPath": ".status.backends.total"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Announced-By", "type": "string", "jsonPath": ".status.announcedBy"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _structural(schema: Any, defs: dict[str, Any]) -> Any:
    """pydantic JSON schema -> Kubernetes structural schema."""
    if isinstance(schema, list):
        return [_structural(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target = copy.deepcopy(defs[schema["$ref"].split("/")[-1]])
        extra = {k: v for k, v in schema.items() if k != "$ref"}
        return _structural({**target, **extra}, defs)
    schema = dict(schema)
    branches = schema.pop("anyOf", None)
    if branches is not None:
        non_null = [b for b in branches if b.get("type") != "null"]
        types = sorted(b.get("type", "") for b in non_null)
        if types == ["integer", "string"]:
            # int-or-string (targetPort): structural schemas allow no typed branches; CEL checks values.
            schema.update({"x-kubernetes-int-or-string": True})
        elif len(non_null) == 1:
            schema = {**_structural(non_null[0], defs), **schema}
        else:
            raise ValueError(f"cannot express union {branches} structurally")
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("title", "additionalProperties") and not (key == "additionalProperties" and isinstance(value, dict)):
            continue  # unknown fields are pruned by the API server; properties and additionalProperties exclude each other
        if key == "default" and value in (None, [], {}):
            continue
        if key == "const":
            result["enum"] = [value]
            continue
        if key == "properties":
            result[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key in ("items", "additionalProperties"):
            result[key] = _structural(value, defs)
        else:
            result[key] = value
    return result


def _schema_of(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")  # type: ignore[attr-defined]
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


def spec_schema() -> dict[str, Any]:
    spec = _schema_of(VirtualServiceSpec)
    spec["x-kubernetes-validations"] = SPEC_RULES
    props = spec["properties"]
    ports = props["ports"]
    # Like a Service's ports: a list-map keyed by (port, protocol), so duplicates are refused.
    ports["x-kubernetes-list-type"] = "map"
    ports["x-kubernetes-list-map-keys"] = ["port", "protocol"]
    target_port = ports["items"]["properties"]["targetPort"]
    target_port["x-kubernetes-validations"] = TARGET_PORT_RULES
    target_port["maxLength"] = 15  # a port name; bounds the rule's matches() for the API server's cost estimate (ints ignore it)
    ports["items"]["properties"]["name"]["x-kubernetes-validations"] = PORT_NAME_RULES
    props["backends"]["items"]["properties"]["address"]["x-kubernetes-validations"] = IP_LITERAL_RULES
    props["healthCheck"]["x-kubernetes-validations"] = HEALTH_CHECK_RULES
    props["vip"]["x-kubernetes-validations"] = IP_LITERAL_RULES + VIP_RULES
    props["backends"]["items"]["x-kubernetes-validations"] = BACKEND_RULES
    props["nodeSelector"]["properties"]["matchExpressions"]["items"]["x-kubernetes-validations"] = MATCH_EXPRESSION_RULES
    props["sourceRanges"]["items"]["x-kubernetes-validations"] = SOURCE_RANGE_RULES
    props["vip"]["description"] = "The virtual IP: an IPv4 or IPv6 address literal, bound as /32 or /128 on vsop0."
    return spec


def status_schema() -> dict[str, Any]:
    status = _schema_of(VirtualServiceStatus)
    status["properties"]["conditions"]["x-kubernetes-list-type"] = "map"
    status["properties"]["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    return status


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["vsop"],
                "categories": ["vsop"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A virtual IP load-balanced by IPVS (or keepalived) across backends.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `vsop crd` from vsop.api.model; do not edit (tests compare it).\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120, allow_unicode=False)


# --- NodeReport: one object per node, what that node did with each VirtualService ---------

REPORT_KIND, REPORT_PLURAL = "NodeReport", "nodereports"  # as vsop.kube.report names them
REPORT_PROBES_LISTED = 8  # status.localProbes.backends: at most this many (vsop.kube.report.local_probes)


def node_report_crd() -> dict[str, Any]:
    """The CRD of the nodes' reports (vsop.kube.report): written by each node's agent, read by the controller."""
    entry = {
        "type": "object",
        "properties": {
            "programmed": {"type": "boolean"},
            "backends": {"type": "object", "properties": {"total": {"type": "integer"}, "healthy": {"type": "integer"}}},
            "message": {"type": "string", "maxLength": 512},
            "observedGeneration": {"type": "integer"},
            "announced": {
                "type": "string",
                "maxLength": 16,
                "description": "announce: vrrp: this node's VRRP state for the VIP (master holds it); bgp: announced, withdrawn or nosession.",
            },
            "checks": {
                "type": "object",
                "description": "address:port -> healthy, for the static backends this node is a designated checker of.",
                "additionalProperties": {"type": "boolean"},
            },
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{REPORT_PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Cluster",
            "names": {
                "kind": REPORT_KIND,
                "listKind": f"{REPORT_KIND}List",
                "plural": REPORT_PLURAL,
                "singular": REPORT_KIND.lower(),
                "shortNames": ["vsopnr"],
                "categories": ["vsop"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "What one node's agent did with each VirtualService it handles; named after the node. "
                                "Written by that node's agent only, read by the controller, which sums the reports up "
                                "into each VirtualService's status."
                            ),
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "status": {
                                    "type": "object",
                                    "properties": {
                                        "virtualServices": {
                                            "type": "object",
                                            "description": "namespace/name of a VirtualService -> this node's entry for it.",
                                            "additionalProperties": entry,
                                        },
                                        "bgpSessions": {
                                            "type": "array",
                                            "maxItems": 32,
                                            "description": "This node's BGP sessions as BIRD reports them (announce: bgp).",
                                            "items": {
                                                "type": "object",
                                                "properties": {
                                                    "peer": {"type": "string", "maxLength": 64},
                                                    "asn": {"type": "integer"},
                                                    "up": {"type": "boolean"},
                                                    "bgpState": {"type": "string", "maxLength": 32},
                                                    "lastError": {"type": "string", "maxLength": 256},
                                                },
                                            },
                                        },
                                        "localProbes": {
                                            "type": "object",
                                            "description": (
                                                "Static backends this node probes itself though it is not one of their "
                                                "designated checkers: its IPVS counters showed new connections without a "
                                                "reply packet. Absent when there are none."
                                            ),
                                            "properties": {
                                                "count": {"type": "integer", "minimum": 0,
                                                          "description": "Real servers probed (a backend per VIP port)."},
                                                "backends": {
                                                    "type": "array",
                                                    "maxItems": REPORT_PROBES_LISTED,
                                                    "description": "The first of them, in order.",
                                                    "items": {
                                                        "type": "object",
                                                        "properties": {
                                                            "virtualService": {"type": "string", "maxLength": 317},
                                                            "backend": {"type": "string", "maxLength": 64},
                                                        },
                                                    },
                                                },
                                            },
                                        },
                                    },
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def node_report_crd_yaml() -> str:
    header = "# Generated from vsop.api.crd.node_report_crd by `make crd`; do not edit (tests compare it).\n"
    return header + yaml.safe_dump(node_report_crd(), sort_keys=False, width=120, allow_unicode=False)


# --- VipPool: cluster-scoped, written by an administrator (vsop.api.pools) -------------------

_IPV4 = f"({_OCTET}[.]){{3}}{_OCTET}"
# sourceRanges entries: host bits are allowed (as in a Service's loadBalancerSourceRanges); the model keeps the network.
SOURCE_RANGE_RULES = [
    {
        "rule": f"self.contains(':') || self.matches('^{_IPV4}/(3[0-2]|[12]?[0-9])$')",
        "message": "must be an IPv4 CIDR prefix (length 0-32) in dotted decimal (0-255, no leading zeros), or an IPv6 one",
    },
    {
        "rule": "!self.contains(':') || self.matches('/(12[0-8]|1[01][0-9]|[1-9]?[0-9])$')",
        "message": "an IPv6 prefix length is 0-128",
    },
]

POOL_ADDRESS_RULES = [
    {
        "rule": f"self.contains(':') || self.matches('^{_IPV4}(/(3[0-2]|[12]?[0-9])|-{_IPV4})?$')",
        "message": "must be an IPv4 address, CIDR prefix (length 0-32) or first-last range in dotted decimal (0-255, no leading zeros)",
    },
    {
        "rule": "!self.contains(':') || !self.contains('/') || self.matches('/(12[0-8]|1[01][0-9]|[1-9]?[0-9])$')",
        "message": "an IPv6 prefix length is 0-128",
    },
    {
        "rule": "!self.contains('-') || !self.contains(':') || self.matches('^[^-]*:[^-]*-[^-]*:[^-]*$')",
        "message": "a range is of one family: both ends IPv4 or both IPv6",
    },
]
POOL_PRINTER_COLUMNS = [
    {"name": "Addresses", "type": "string", "jsonPath": ".spec.addresses"},
    {"name": "AutoAssign", "type": "boolean", "jsonPath": ".spec.autoAssign"},
    {"name": "Priority", "type": "integer", "jsonPath": ".spec.serviceAllocation.priority", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def vip_pool_spec_schema() -> dict[str, Any]:
    from vsop.api.pools import VipPoolSpec

    spec = _schema_of(VipPoolSpec)
    props = spec["properties"]
    props["addresses"]["items"]["x-kubernetes-validations"] = POOL_ADDRESS_RULES
    props["addresses"]["x-kubernetes-list-type"] = "set"
    allocation = props["serviceAllocation"]["properties"]
    allocation["namespaces"]["x-kubernetes-list-type"] = "set"
    for selectors in ("namespaceSelectors", "serviceSelectors"):
        allocation[selectors]["items"]["properties"]["matchExpressions"]["items"]["x-kubernetes-validations"] = copy.deepcopy(MATCH_EXPRESSION_RULES)
    template = props["template"]["properties"]
    template["healthCheck"]["x-kubernetes-validations"] = copy.deepcopy(HEALTH_CHECK_RULES)
    template["nodeSelector"]["properties"]["matchExpressions"]["items"]["x-kubernetes-validations"] = copy.deepcopy(MATCH_EXPRESSION_RULES)
    return spec


RELEASED_MAX = 100  # vsop.kube.claims keeps at most this many entries in one pool's status.released


def vip_pool_status_schema() -> dict[str, Any]:
    """What the controller writes in a pool's status: the held claims of deleted objects (vsop.core.claims.Tombstone)."""
    port = {"type": "object", "required": ["port", "protocol"], "properties": {
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "protocol": {"type": "string", "enum": ["TCP", "UDP", "SCTP"]}}}
    entry = {
        "type": "object",
        "required": ["namespace", "name", "vip", "ports", "since", "until"],
        "properties": {
            "namespace": {"type": "string", "maxLength": 63},
            "name": {"type": "string", "maxLength": 253},
            "vip": {"type": "string", "maxLength": 45},
            "ports": {"type": "array", "maxItems": 100, "items": port},
            "since": {"type": "string", "maxLength": 64, "description": "the seniority the object had: what its re-creation keeps"},
            "until": {"type": "string", "format": "date-time", "description": "when the claim is released if the object is not re-created"},
            "sharedKey": {"type": "string", "maxLength": 253},
        },
    }
    return {"type": "object", "properties": {"released": {
        "type": "array", "maxItems": RELEASED_MAX, "items": entry,
        "description": ("Claims of deleted VirtualServices on this pool's addresses, held for their re-creation under the same "
                        "namespace and name until `until` (the controller's --claim-grace-seconds): any other object is refused "
                        "them meanwhile. Written by the controller when another object contests one."),
    }}}


def vip_pool_crd() -> dict[str, Any]:
    from vsop.api.pools import POOL_KIND, POOL_PLURAL

    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{POOL_PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Cluster",
            "names": {
                "kind": POOL_KIND,
                "listKind": f"{POOL_KIND}List",
                "plural": POOL_PLURAL,
                "singular": POOL_KIND.lower(),
                "shortNames": ["vsoppool"],
                "categories": ["vsop"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": POOL_PRINTER_COLUMNS,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "Addresses an administrator grants: a VirtualService's VIP must lie in a VipPool that grants "
                                "its namespace, and LoadBalancer Services of vsop's class are allocated from them."
                            ),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": vip_pool_spec_schema(),
                                "status": vip_pool_status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def vip_pool_crd_yaml() -> str:
    header = "# Generated from vsop.api.crd.vip_pool_crd by `make crd`; do not edit (tests compare it).\n"
    return header + yaml.safe_dump(vip_pool_crd(), sort_keys=False, width=120, allow_unicode=False)


# --- BGPSpeaker: cluster-scoped, whom the selected nodes' BIRD talks BGP to (vsop.api.speaker) --

PEER_RULES = [
    {
        "rule": "!has(self.keepaliveSeconds) || self.keepaliveSeconds < (has(self.holdTimeSeconds) ? self.holdTimeSeconds : 90)",
        "message": "keepaliveSeconds must be less than holdTimeSeconds",
        "fieldPath": ".keepaliveSeconds",
    },
    {
        "rule": "!has(self.passwordFile) || !has(self.passwordSecretRef)",
        "message": "give passwordFile (host) or passwordSecretRef (cluster), not both",
        "fieldPath": ".passwordFile",
    },
]
SPEAKER_PRINTER_COLUMNS = [
    {"name": "ASN", "type": "integer", "jsonPath": ".spec.localASN"},
    {"name": "RouterID", "type": "string", "jsonPath": ".spec.routerID"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def bgp_speaker_spec_schema() -> dict[str, Any]:
    from vsop.api.speaker import BGPSpeakerSpec

    spec = _schema_of(BGPSpeakerSpec)
    props = spec["properties"]
    props["peers"]["items"]["x-kubernetes-validations"] = copy.deepcopy(PEER_RULES)
    props["nodeSelector"]["properties"]["matchExpressions"]["items"]["x-kubernetes-validations"] = copy.deepcopy(MATCH_EXPRESSION_RULES)
    return spec


def bgp_speaker_crd() -> dict[str, Any]:
    from vsop.api.speaker import SPEAKER_KIND, SPEAKER_PLURAL

    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{SPEAKER_PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Cluster",
            "names": {
                "kind": SPEAKER_KIND,
                "listKind": f"{SPEAKER_KIND}List",
                "plural": SPEAKER_PLURAL,
                "singular": SPEAKER_KIND.lower(),
                "shortNames": ["vsopbgp"],
                "categories": ["vsop"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": SPEAKER_PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "The BGP peers the selected nodes' BIRD announces their announce: bgp VIPs to, "
                                "with timers, BFD and passwords."
                            ),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": bgp_speaker_spec_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def bgp_speaker_crd_yaml() -> str:
    header = "# Generated from vsop.api.crd.bgp_speaker_crd by `make crd`; do not edit (tests compare it).\n"
    return header + yaml.safe_dump(bgp_speaker_crd(), sort_keys=False, width=120, allow_unicode=False)
