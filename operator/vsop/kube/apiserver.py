"""The Kubernetes API server's own addresses: no VIP may take them.

Owns finding them, and why each one is known:
- the host of the credentials in use (an IP, or a name resolved here: often the
  control plane's load balancer);
- `KUBERNETES_SERVICE_HOST`, the ClusterIP of the `kubernetes` Service;
- the endpoints of the `kubernetes` Service in `default`, from its EndpointSlices: the API
  servers' real addresses, which kube-apiserver maintains itself, followed so that a
  replaced control-plane node is refused too. An agent whose watches cover `default` (every
  namespace, the default) takes them from its EndpointSlice watch (`take`: no request of its
  own, as an informer); one confined to other namespaces lists them before its first sync
  and again every resync period (`refresh`, `follow`).
A VIP equal to one of them would be bound on vsop0 and VSOP-FILTER would then reject
every connection to it except the VirtualService's ports: the kubelet, this agent and
everything else on the node would lose the API server.
The agent hands `reserved()` to the desired-state computation; nothing else here
touches the kernel. Listing needs `list` on endpointslices in `default` (deploy/rbac.yaml).
Must not import vsop.node.execute, vsop.adapters or vsop.adapters.real.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
import urllib.parse
from typing import Any, Callable, Iterable, Mapping

import kubernetes.client

from vsop.kube.endpoints import SERVICE_NAME_LABEL, slice_service
from vsop.kube.runtime import kv

log = logging.getLogger("vsop.kube.apiserver")

SERVICE_NAMESPACE, SERVICE_NAME = "default", "kubernetes"
WHOSE = "the Kubernetes API server"


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def watched(namespaces: Iterable[str]) -> bool:
    """Whether watches confined to `namespaces` (none: every namespace) see the `kubernetes` Service's slices."""
    namespaces = tuple(namespaces)
    return not namespaces or SERVICE_NAMESPACE in namespaces


def slice_addresses(bodies: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """Every address of every endpoint of the slices, whatever its conditions: a not-ready API server is still one."""
    found: list[str] = []
    for body in bodies:
        if body.get("addressType") not in ("IPv4", "IPv6"):
            continue
        for endpoint in body.get("endpoints") or ():
            for address in endpoint.get("addresses") or ():
                ip = _ip(str(address))
                if ip is not None:
                    found.append(ip)
    return tuple(dict.fromkeys(found))


def static_addresses(server_url: str, environ: Mapping[str, str] | None = None,
                     resolve: Callable[[str], Iterable[str]] | None = None) -> dict[str, str]:
    """address -> how it is known, from the credentials' server and the pod's environment."""
    environ = os.environ if environ is None else environ
    found: dict[str, str] = {}
    host = urllib.parse.urlsplit(server_url).hostname or ""
    if _ip(host) is not None:
        found[_ip(host) or host] = f"server of the credentials ({server_url})"
    elif host:
        for address in (resolve or _resolve)(host):
            if _ip(address) is not None:
                found.setdefault(_ip(address) or address, f"{host}, server of the credentials")
    service_host = _ip(environ.get("KUBERNETES_SERVICE_HOST", ""))
    if service_host is not None:
        found.setdefault(service_host, f"ClusterIP of service {SERVICE_NAMESPACE}/{SERVICE_NAME}")
    return found


def _resolve(host: str) -> list[str]:
    try:
        return [str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)]
    except OSError as exc:
        log.warning(kv("Cannot resolve the API server's name; its addresses are not refused as VIPs", host=host, error=str(exc)))
        return []


class ApiServerAddresses:
    """The API server's addresses known to this process; `refresh()` re-reads the `kubernetes` Service's endpoints."""

    def __init__(self, api: kubernetes.client.ApiClient, static: Mapping[str, str] | None = None):
        self.api = api
        self.static = dict(static or {})
        self.endpoints: tuple[str, ...] = ()
        self.read_once = False

    @classmethod
    def for_connection(cls, connection: Any) -> "ApiServerAddresses":
        """For a `vsop.kube.client.Connection`: its server (resolved if a name) and the pod's environment."""
        return cls(connection.api, static_addresses(connection.configuration.host))

    def reserved(self) -> dict[str, str]:
        """address -> whose it is, for `desired_state(reserved=...)`."""
        found = {address: f"{WHOSE} ({how})" for address, how in self.static.items()}
        for address in self.endpoints:
            found.setdefault(address, f"{WHOSE} (endpoint of service {SERVICE_NAMESPACE}/{SERVICE_NAME})")
        return found

    def _list_slices(self) -> list[dict[str, Any]]:
        api = kubernetes.client.DiscoveryV1Api(self.api)
        response = api.list_namespaced_endpoint_slice(
            SERVICE_NAMESPACE, label_selector=f"{SERVICE_NAME_LABEL}={SERVICE_NAME}", _preload_content=False, _request_timeout=10
        )
        return list(json.loads(response.data).get("items") or [])

    async def refresh(self) -> bool:
        """Re-read the endpoints; True if they changed. A failed read keeps the last ones and says why."""
        try:
            slices = await asyncio.to_thread(self._list_slices)
        except Exception as exc:  # RBAC, network, a malformed answer: keep what is known
            log.warning(kv("Cannot read the API server's endpoints; refusing only the addresses known so far",
                           service=f"{SERVICE_NAMESPACE}/{SERVICE_NAME}", known=",".join(self.reserved()) or "none", error=str(exc)))
            return False
        # Filtered again here: the selector is the server's to honour, the verdict is ours.
        return self.take(slice_addresses(s for s in slices if slice_service(s) == (SERVICE_NAMESPACE, SERVICE_NAME)))

    def take(self, addresses: Iterable[str]) -> bool:
        """The endpoints as a watch of the Service's EndpointSlices holds them; True if they changed."""
        addresses = tuple(dict.fromkeys(addresses))
        changed = addresses != self.endpoints
        if changed or not self.read_once:
            log.info(kv("API server addresses refused as VIPs", service=f"{SERVICE_NAMESPACE}/{SERVICE_NAME}",
                        endpoints=",".join(addresses) or "none", other=",".join(self.static) or "none"))
        self.endpoints = addresses
        self.read_once = True
        return changed

    async def follow(self, interval: float, changed: Callable[[str], None]) -> None:
        """Re-read every `interval` seconds; call `changed(reason)` when the endpoints moved. Runs until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if await self.refresh():
                changed(f"endpoints of service {SERVICE_NAMESPACE}/{SERVICE_NAME} changed")
