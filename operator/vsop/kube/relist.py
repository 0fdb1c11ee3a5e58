"""A fresh listing from the API server, for a controller that has just become the leader.

Owns reading, with plain LIST requests (not the watches' caches), what the controller
decides from: VirtualServices (all namespaces, or the watched ones), Nodes and NodeReports.
A standby's watches may lag; the first write of a new term is made from this listing.
Must not import vsop.node.execute, vsop.adapters or vsop.adapters.real.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Sequence

import kubernetes.client

from vsop.api.model import API_GROUP, API_VERSION
from vsop.kube.client import PLURAL, ApiError, Connection
from vsop.kube.report import PLURAL as REPORTS


@dataclass(frozen=True)
class Listing:
    virtualservices: list[dict[str, Any]]
    nodes: list[dict[str, Any]]
    reports: list[dict[str, Any]]


class Relister:
    def __init__(self, connection: Connection, namespaces: Sequence[str] = ()):
        self.connection = connection
        self.namespaces = tuple(namespaces)

    def _items(self, call: Any, *args: Any) -> list[dict[str, Any]]:
        try:
            response = call(*args, _preload_content=False)
        except kubernetes.client.exceptions.ApiException as exc:
            raise ApiError(int(exc.status or 0), str(exc.body or exc.reason)[:500]) from None
        items = (json.loads(response.data or b"{}") or {}).get("items") or []
        return [item for item in items if isinstance(item, dict)]

    def _list(self) -> Listing:
        custom = kubernetes.client.CustomObjectsApi(self.connection.api)
        core = kubernetes.client.CoreV1Api(self.connection.api)
        if self.namespaces:
            vs = [i for ns in self.namespaces for i in self._items(custom.list_namespaced_custom_object, API_GROUP, API_VERSION, ns, PLURAL)]
        else:
            vs = self._items(custom.list_cluster_custom_object, API_GROUP, API_VERSION, PLURAL)
        return Listing(vs, self._items(core.list_node), self._items(custom.list_cluster_custom_object, API_GROUP, API_VERSION, REPORTS))

    async def __call__(self) -> Listing:
        return await asyncio.to_thread(self._list)
