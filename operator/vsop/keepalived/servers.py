"""The IPVS services and real servers of one VirtualService, whatever its mode.

Owns nothing of its own: `core.desired.desired_state` already knows how ports,
targetPorts, static backends and serviceRef endpoints become real servers, but it
skips IPVS for keepalived-mode objects (keepalived programs IPVS for them). This asks
it about a copy of the object in ipvs mode, on no particular node, so both modes
derive ports and weights the same way.
Pure: must not import jinja2, kopf, pyroute2, subprocess, socket or vsop.adapters.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping

from vsop.core.desired import Endpoint, Node, desired_state
from vsop.core.state import RealServer, ServiceKey
from vsop.api.model import NodeSelector, VirtualService

# A node name nothing selects on: the copy below has no nodeSelector anyway.
_ANY_NODE = Node("keepalived-render")


@dataclass(frozen=True)
class Service:
    """One `virtual_server VIP PORT`: its key and real servers, sorted."""

    key: ServiceKey
    scheduler: str
    persistence_timeout: int
    real_servers: tuple[RealServer, ...]


def _as_ipvs(vs: VirtualService) -> VirtualService:
    spec = vs.spec.model_copy(update={"mode": "ipvs", "announce": "none", "vrrp": None, "node_selector": NodeSelector()})
    return vs.model_copy(update={"spec": spec})


def services_of(
    vs: VirtualService, endpoints: Mapping[tuple[str, str], Iterable[Endpoint]] | None = None
) -> tuple[Service, ...]:
    """Every port of `vs` as an IPVS service with its real servers, sorted by port, then protocol.

    `endpoints` maps (namespace, service name) to the endpoints of a serviceRef, as for
    `desired_state`. Iterables are read once per call; pass sequences when reusing them.
    """
    state = desired_state([_as_ipvs(vs)], _ANY_NODE, endpoints=endpoints).state
    by_service: dict[ServiceKey, list[RealServer]] = {key: [] for key in state.services}
    for rs in state.real_servers.values():
        by_service[rs.key.service].append(rs)
    # Ports with no real server at all (a serviceRef without endpoints) are still services.
    for port in vs.spec.ports:
        by_service.setdefault(ServiceKey(port.protocol.lower(), vs.spec.vip, port.port), [])  # type: ignore[arg-type]
    return tuple(
        Service(
            key=key,
            scheduler=vs.spec.scheduler,
            persistence_timeout=vs.spec.persistence.timeout_seconds,
            real_servers=tuple(sorted(servers, key=lambda rs: (_address_order(rs.key.address), rs.key.port))),
        )
        for key, servers in sorted(by_service.items(), key=lambda item: (item[0].port, item[0].protocol))
    )


def _address_order(address: str) -> tuple[int, int]:
    parsed = ipaddress.ip_address(address)
    return (parsed.version, int(parsed))
