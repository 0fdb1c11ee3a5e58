"""`type: LoadBalancer` Services in vsop's terms: which ones are vsop's, what they ask for, what derives from them.

Owns the translation, pure: a Service's facts (class, annotations, ports, affinity, IP
families, the addresses its status shows), whether it is vsop's (`spec.loadBalancerClass`
equal to the controller's class; a classless one only with `--default-load-balancer`; any
other class is never touched), its allocation request (vsop.core.allocate), and the
VirtualService derived from it per address: owned by the Service (ownerReference, label
`vsop.dev/service`), its ports, `serviceRef` to itself, persistence from
`sessionAffinity: ClientIP`, `trafficPolicy: Local` from `externalTrafficPolicy: Local`,
`sourceRanges` from `loadBalancerSourceRanges`, the pool's template as defaults.
Must not import: kopf, kubernetes, asyncio, subprocess, socket, pyroute2, vsop.adapters, vsop.cli.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from vsop.api.model import PORT_NAME
from vsop.api.pools import VipPool
from vsop.core.allocate import Request
from vsop.core.claims import SHARED_IP_ANNOTATION

DEFAULT_CLASS = "vsop.dev/ipvs"
SERVICE_LABEL = "vsop.dev/service"
IPS_ANNOTATION = "vsop.dev/load-balancer-ips"
POOL_ANNOTATION = "vsop.dev/pool"
DEFAULT_AFFINITY_SECONDS = 10800  # Kubernetes' default sessionAffinityConfig.clientIP.timeoutSeconds


@dataclass(frozen=True)
class ServiceFacts:
    namespace: str
    name: str
    uid: str
    created: str
    resource_version: str | None
    type: str
    lb_class: str | None
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[Mapping[str, Any], ...] = ()
    affinity_seconds: int | None = None  # sessionAffinity ClientIP
    families: tuple[int, ...] = (4,)
    ingress: tuple[str, ...] = ()
    legacy_ip: str | None = None  # spec.loadBalancerIP, deprecated: read, never written
    local: bool = False  # externalTrafficPolicy: Local
    source_ranges: tuple[str, ...] = ()  # loadBalancerSourceRanges, as networks (unparsable entries dropped)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def service_facts(body: Mapping[str, Any]) -> ServiceFacts:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    affinity = None
    if spec.get("sessionAffinity") == "ClientIP":
        config = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
        affinity = int(config) if isinstance(config, int) and config > 0 else DEFAULT_AFFINITY_SECONDS
    families = tuple(6 if f == "IPv6" else 4 for f in spec.get("ipFamilies") or ()) or (4,)
    ingress = tuple(i.get("ip") for i in ((body.get("status") or {}).get("loadBalancer") or {}).get("ingress") or () if isinstance(i, Mapping) and i.get("ip"))
    return ServiceFacts(
        namespace=meta.get("namespace") or "default", name=meta.get("name") or "", uid=meta.get("uid") or "",
        created=meta.get("creationTimestamp") or "", resource_version=meta.get("resourceVersion"),
        type=spec.get("type") or "ClusterIP", lb_class=spec.get("loadBalancerClass"),
        annotations=dict(meta.get("annotations") or {}), labels=dict(meta.get("labels") or {}),
        ports=tuple(p for p in spec.get("ports") or () if isinstance(p, Mapping)), affinity_seconds=affinity,
        families=families, ingress=ingress, legacy_ip=spec.get("loadBalancerIP") or None,
        local=spec.get("externalTrafficPolicy") == "Local", source_ranges=_networks(spec.get("loadBalancerSourceRanges") or ()),
    )


def _networks(ranges: Any) -> tuple[str, ...]:
    found: list[str] = []
    for text in ranges if isinstance(ranges, (list, tuple)) else ():
        try:
            found.append(str(ipaddress.ip_network(str(text).strip(), strict=False)))
        except ValueError:
            continue  # the API server validates them; a stray one is not a reason to serve nothing
    return tuple(dict.fromkeys(found))[:64]


# A Service whose ranges are all of the other family admits no client of this one (as kube-proxy's
# FW set entry without a matching CIDR): a range no packet comes from says so.
_ADMITS_NONE = {4: "255.255.255.255/32", 6: "ff00::/128"}


def _ranges_for(facts: ServiceFacts, family: int) -> list[str]:
    mine = [r for r in facts.source_ranges if (6 if ":" in r else 4) == family]
    return mine or ([_ADMITS_NONE[family]] if facts.source_ranges else [])


def ours(facts: ServiceFacts, lb_class: str = DEFAULT_CLASS, default: bool = False) -> bool:
    if facts.type != "LoadBalancer":
        return False
    return facts.lb_class == lb_class if facts.lb_class else default


def request_of(facts: ServiceFacts, held: tuple[str, ...]) -> Request:
    asked_text = facts.annotations.get(IPS_ANNOTATION) or facts.legacy_ip or ""
    asked = tuple(a.strip() for a in asked_text.split(",") if a.strip())
    ports = frozenset((int(p.get("port") or 0), str(p.get("protocol") or "TCP")) for p in facts.ports)
    families = tuple(sorted({(6 if ":" in a else 4) for a in asked})) if asked else facts.families
    return Request(key=facts.key, namespace=facts.namespace, created=facts.created, families=families, labels=facts.labels,
                   asked=asked, pool=facts.annotations.get(POOL_ANNOTATION) or None, shared_key=facts.annotations.get(SHARED_IP_ANNOTATION) or None,
                   ports=ports, held=held)


def derived_name(service: str, family: int) -> str:
    return f"{service}-lb-v{family}"


def _port(port: Mapping[str, Any], forwarding: str) -> dict[str, Any]:
    out: dict[str, Any] = {"port": int(port.get("port") or 0), "protocol": str(port.get("protocol") or "TCP")}
    name = port.get("name")
    if isinstance(name, str) and len(name) <= 15 and re.fullmatch(PORT_NAME, name) and re.search("[a-z]", name):
        out["name"] = name  # resolved through the EndpointSlices, which name ports after the Service's
    return out


def derived_spec(facts: ServiceFacts, address: str, pool: VipPool | None) -> dict[str, Any]:
    template = pool.spec.template if pool is not None else None
    forwarding = (template.forwarding if template is not None and template.forwarding else "masq")
    spec: dict[str, Any] = {"vip": address, "ports": [_port(p, forwarding) for p in facts.ports], "serviceRef": {"name": facts.name}}
    if facts.affinity_seconds:
        spec["persistence"] = {"timeoutSeconds": facts.affinity_seconds}
    if facts.local:
        spec["trafficPolicy"] = "Local"
    ranges = _ranges_for(facts, 6 if ":" in address else 4)
    if ranges:
        spec["sourceRanges"] = ranges
    if template is not None:
        for key, value in template.model_dump(by_alias=True, exclude_none=True, mode="json").items():
            spec[key] = value
    return spec


def derived_body(facts: ServiceFacts, address: str, pool: VipPool | None, family: int) -> dict[str, Any]:
    annotations = {SHARED_IP_ANNOTATION: facts.annotations[SHARED_IP_ANNOTATION]} if facts.annotations.get(SHARED_IP_ANNOTATION) else {}
    return {
        "apiVersion": "vsop.dev/v1alpha1",
        "kind": "VirtualService",
        "metadata": {
            "name": derived_name(facts.name, family),
            "namespace": facts.namespace,
            "labels": {SERVICE_LABEL: facts.name},
            **({"annotations": annotations} if annotations else {}),
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": facts.name, "uid": facts.uid, "controller": True,
                                 "blockOwnerDeletion": False}],
        },
        "spec": derived_spec(facts, address, pool),
    }


def owner_uid(body_meta: Mapping[str, Any]) -> str | None:
    """The uid of the Service a derived VirtualService belongs to, from its ownerReferences."""
    for ref in body_meta.get("ownerReferences") or ():
        if isinstance(ref, Mapping) and ref.get("kind") == "Service" and ref.get("controller"):
            return str(ref.get("uid") or "") or None
    return None


def ingress(addresses: tuple[str, ...]) -> list[dict[str, str]]:
    """`status.loadBalancer.ingress`: Proxy, so kube-proxy leaves the traffic to the load balancer (KEP-1860)."""
    return [{"ip": a, "ipMode": "Proxy"} for a in addresses]
