"""EndpointSlices and Nodes as the core needs them.

Owns reading discovery.k8s.io/v1 EndpointSlices and core/v1 Nodes (plain dicts, as
the API serves them) into core types: `Endpoint`s with the API's defaults for
ready / serving / terminating, named ports with protocols, the first address of each
endpoint, its node and topology hints, the same endpoint listed by two slices merged; a node's labels and addresses.
Pure: must not import kopf, kubernetes, asyncio, vsop.node.execute or vsop.adapters.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Mapping

from vsop.core.desired import Endpoint, EndpointPort

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")


def slice_service(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, service name) an EndpointSlice belongs to; None if it names no Service."""
    meta = body.get("metadata") or {}
    service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not service:
        return None
    return (meta.get("namespace") or "default", service)


def _ports(body: Mapping[str, Any]) -> tuple[EndpointPort, ...]:
    ports: list[EndpointPort] = []
    for port in body.get("ports") or ():
        number = port.get("port")
        if not isinstance(number, int):
            continue  # nil port: "all ports", which IPVS cannot express per real server
        ports.append(EndpointPort(port.get("name") or None, number, port.get("protocol") or "TCP"))
    return tuple(ports)


def slice_endpoints(body: Mapping[str, Any]) -> tuple[Endpoint, ...]:
    """The endpoints of one EndpointSlice; FQDN slices and malformed addresses are skipped."""
    if body.get("addressType") not in ("IPv4", "IPv6"):
        return ()
    ports = _ports(body)
    found: list[Endpoint] = []
    for item in body.get("endpoints") or ():
        addresses = item.get("addresses") or ()
        if not addresses:
            continue
        try:
            # The addresses of one endpoint are fungible; consumers use the first (as kube-proxy does).
            address = str(ipaddress.ip_address(addresses[0]))
        except ValueError:
            continue
        conditions = item.get("conditions") or {}
        # API defaults: ready nil means ready; serving nil means "same as ready"; terminating nil means not.
        ready = conditions.get("ready") is not False
        serving_value = conditions.get("serving")
        serving = ready if serving_value is None else bool(serving_value)
        terminating = conditions.get("terminating") is True
        node_name = item.get("nodeName")
        hints = item.get("hints") or {}
        found.append(Endpoint(address, ports, ready=ready, serving=serving, terminating=terminating,
                              node_name=node_name if isinstance(node_name, str) and node_name else None,
                              for_zones=_hinted(hints.get("forZones")), for_nodes=_hinted(hints.get("forNodes"))))
    return tuple(found)


def _hinted(entries: Any) -> tuple[str, ...]:
    """The names of `hints.forZones` / `hints.forNodes` ([{name: ...}, ...])."""
    if not isinstance(entries, list):
        return ()
    return tuple(str(e["name"]) for e in entries if isinstance(e, Mapping) and isinstance(e.get("name"), str) and e["name"])


def _rank(endpoint: Endpoint) -> int:
    if endpoint.ready:
        return 2
    if endpoint.terminating and endpoint.serving:
        return 1
    return 0


def merge_endpoints(groups: Iterable[Iterable[Endpoint]]) -> tuple[Endpoint, ...]:
    """One Service's endpoints from all its slices: an endpoint in two slices counts once, at its best."""
    best: dict[tuple[str, tuple[EndpointPort, ...]], Endpoint] = {}
    for group in groups:
        for endpoint in group:
            key = (endpoint.address, endpoint.ports)
            current = best.get(key)
            if current is None or _rank(endpoint) > _rank(current):
                best[key] = endpoint
    return tuple(best[key] for key in sorted(best, key=lambda k: (k[0], repr(k[1]))))


def node_labels(body: Mapping[str, Any]) -> dict[str, str]:
    return dict((body.get("metadata") or {}).get("labels") or {})


EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"


def node_draining(body: Mapping[str, Any]) -> bool:
    """The node is being drained: cordoned (spec.unschedulable, what `kubectl drain` does first) or
    labelled node.kubernetes.io/exclude-from-external-load-balancers (any value, as Kubernetes reads it)."""
    return bool((body.get("spec") or {}).get("unschedulable")) or EXCLUDE_LABEL in node_labels(body)


def node_internal_ips(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The node's InternalIP addresses, in the API's order."""
    found: list[str] = []
    for item in (body.get("status") or {}).get("addresses") or ():
        if item.get("type") == "InternalIP":
            try:
                found.append(str(ipaddress.ip_address(str(item.get("address", "")))))
            except ValueError:
                continue
    return tuple(dict.fromkeys(found))


def node_addresses(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The node's IP addresses as the API reports them (InternalIP, ExternalIP)."""
    found: list[str] = []
    for item in (body.get("status") or {}).get("addresses") or ():
        if item.get("type") not in NODE_ADDRESS_TYPES:
            continue
        try:
            found.append(str(ipaddress.ip_address(str(item.get("address", "")))))
        except ValueError:
            continue
    return tuple(dict.fromkeys(found))
