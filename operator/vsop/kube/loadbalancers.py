"""The controller's LoadBalancer Services: allocate from VipPools, derive VirtualServices, write the status.

Owns the Services side of the controller (run in its turn, by the leader only): the
watches of Services and VipPools, the allocation (vsop.core.allocate) rebuilt on every
turn from the Services' `status.loadBalancer.ingress` and the VirtualServices derived
from them (so it survives restarts, and two holders of one address are settled on
read: the older keeps it), the derived objects (created, hand edits put back, deleted
with their Service or when no longer wanted), `status.loadBalancer.ingress` with
`ipMode: Proxy` once the derived object is Ready, written with the Service's
resourceVersion as precondition, and the Events `Allocated`, `AllocationFailed`,
`IPInUse`. A Service of another class is never written. Translation is vsop.kube.lbservices.
Must not import vsop.node.execute, vsop.adapters or vsop.adapters.real.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import kopf
import kubernetes.client

from vsop.api.errors import InvalidInput
from vsop.api.model import API_GROUP, API_VERSION, VirtualService, parse_virtual_service
from vsop.api.pools import POOL_PLURAL, VipPool, parse_vip_pool
from vsop.core.allocate import ALLOCATED, Allocator
from vsop.kube.client import PLURAL, ApiError, Connection, ObjectRef, Writer
from vsop.kube.lbservices import (
    DEFAULT_CLASS,
    SERVICE_LABEL,
    ServiceFacts,
    derived_body,
    derived_name,
    ingress,
    ours,
    owner_uid,
    request_of,
    service_facts,
)
from vsop.kube.runtime import Trigger, kv

log = logging.getLogger("vsop.kube.loadbalancers")

SERVICE_INDEX, POOL_INDEX, DERIVED_INDEX = "vsop_lb_services", "vsop_vippools", "vsop_lb_derived"


@dataclass(frozen=True)
class Options:
    load_balancer_class: str = DEFAULT_CLASS
    default_load_balancer: bool = False


@dataclass(frozen=True)
class Derived:
    """A VirtualService carrying the label vsop.dev/service."""

    namespace: str
    name: str
    service: str
    owner: str | None
    vs: VirtualService | None
    ready: bool


def derived_of(body: Mapping[str, Any]) -> Derived:
    meta = body.get("metadata") or {}
    try:
        vs: VirtualService | None = parse_virtual_service(json.loads(json.dumps(body, default=dict)))
    except (InvalidInput, ValueError, TypeError):
        vs = None
    conditions = (body.get("status") or {}).get("conditions") or ()
    ready = any(isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return Derived(meta.get("namespace") or "default", meta.get("name") or "", (meta.get("labels") or {}).get(SERVICE_LABEL) or "",
                   owner_uid(meta), vs, ready)


class LoadBalancerApi:
    """The writes on Services and derived VirtualServices, over the official client in a worker thread."""

    def __init__(self, connection: Connection):
        self.connection = connection

    def _call(self, verb: str, namespace: str, name: str, body: Any = None) -> tuple[int, str]:
        custom = kubernetes.client.CustomObjectsApi(self.connection.api)
        core = kubernetes.client.CoreV1Api(self.connection.api)
        try:
            if verb == "create":
                response = custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, body, _preload_content=False)
            elif verb == "patch":
                response = custom.patch_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name, body,
                                                                 _content_type="application/merge-patch+json", _preload_content=False)
            elif verb == "delete":
                response = custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name, _preload_content=False)
            else:
                response = core.patch_namespaced_service_status(name, namespace, body, _content_type="application/merge-patch+json",
                                                                _preload_content=False)
            return int(response.status), ""
        except kubernetes.client.exceptions.ApiException as exc:
            return int(exc.status or 0), str(exc.body or exc.reason)[:500]

    async def _do(self, verb: str, namespace: str, name: str, body: Any = None, gone_ok: bool = False) -> None:
        code, text = await asyncio.to_thread(self._call, verb, namespace, name, body)
        if gone_ok and code == 404:
            return
        if not 200 <= code < 300:
            raise ApiError(code, text)

    async def create_virtualservice(self, body: Mapping[str, Any]) -> None:
        await self._do("create", body["metadata"]["namespace"], body["metadata"]["name"], dict(body))

    async def patch_virtualservice(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        await self._do("patch", namespace, name, dict(patch))

    async def delete_virtualservice(self, namespace: str, name: str) -> None:
        await self._do("delete", namespace, name, gone_ok=True)

    async def patch_service_status(self, namespace: str, name: str, resource_version: str | None, status: Mapping[str, Any]) -> None:
        """With the resourceVersion read as precondition: a Service changed since is refused (409), decided again next turn."""
        await self._do("status", namespace, name, {"metadata": {"resourceVersion": resource_version}, "status": dict(status)})


class LoadBalancers:
    def __init__(self, options: Options, api: LoadBalancerApi, writer: Writer, may_write: Callable[[], bool]):
        self.options = options
        self.api = api
        self.writer = writer  # Events
        self.may_write = may_write
        self._indexes: dict[str, Any] = {}
        self._told: dict[str, tuple[str, str]] = {}  # Service key -> (reason, message) last posted
        self.failed = 0

    def register(self, registry: kopf.OperatorRegistry, trigger: Trigger) -> None:
        @kopf.index("", "v1", "services", id=SERVICE_INDEX, registry=registry)
        async def index_services(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Any, Any]:
            facts = service_facts(body)
            return {(namespace, name): facts} if facts.type == "LoadBalancer" else {}

        @kopf.index(API_GROUP, API_VERSION, POOL_PLURAL, id=POOL_INDEX, registry=registry)
        async def index_pools(body: kopf.Body, name: str, **_: Any) -> dict[Any, Any]:
            try:
                return {name: parse_vip_pool(json.loads(json.dumps(dict(body), default=dict)))}
            except InvalidInput as exc:
                log.warning(kv("VipPool ignored: invalid", pool=name, error=str(exc)))
                return {}

        @kopf.index(API_GROUP, API_VERSION, PLURAL, id=DERIVED_INDEX, registry=registry, labels={SERVICE_LABEL: kopf.PRESENT})
        async def index_derived(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Any, Any]:
            return {(namespace, name): derived_of(body)}

        @kopf.on.startup(registry=registry)
        async def capture(**kwargs: Any) -> None:
            self._indexes = {name: kwargs[name] for name in (SERVICE_INDEX, POOL_INDEX, DERIVED_INDEX)}

        @kopf.on.event("", "v1", "services", registry=registry)
        async def service_event(event: Mapping[str, Any], namespace: str, name: str, body: kopf.Body, **_: Any) -> None:
            if service_facts(body).type == "LoadBalancer" or event.get("type") == "DELETED":
                trigger.wake(f"service {namespace}/{name} {str(event.get('type') or 'listed').lower()}")

        @kopf.on.event(API_GROUP, API_VERSION, POOL_PLURAL, registry=registry)
        async def pool_event(event: Mapping[str, Any], name: str, **_: Any) -> None:
            trigger.wake(f"vippool {name} {str(event.get('type') or 'listed').lower()}")

    def _values(self, index: str) -> list[Any]:
        return [next(iter(store)) for store in self._indexes.get(index, {}).values() if len(store)]

    def snapshot(self) -> tuple[list[ServiceFacts], list[VipPool], list[Derived]]:
        return self._values(SERVICE_INDEX), self._values(POOL_INDEX), self._values(DERIVED_INDEX)

    async def reconcile(self, virtualservices: Sequence[VirtualService]) -> int:
        """One turn; returns the number of failed writes. `virtualservices`: every valid one (hand-written VIPs are taken)."""
        self.failed = 0
        if not self.may_write():
            return 0
        services, pools, derived = self.snapshot()
        mine = {s.key: s for s in services if ours(s, self.options.load_balancer_class, self.options.default_load_balancer)}
        by_service: dict[str, list[Derived]] = {}
        for d in derived:
            by_service.setdefault(f"{d.namespace}/{d.service}", []).append(d)
        derived_refs = {f"{d.namespace}/{d.name}" for d in derived}
        taken = {vs.spec.vip: f"VirtualService {vs.ref}" for vs in virtualservices if vs.ref not in derived_refs}
        requests = []
        for key, facts in mine.items():
            held = facts.ingress + tuple(d.vs.spec.vip for d in by_service.get(key, ()) if d.vs is not None and d.owner == facts.uid)
            requests.append(request_of(facts, tuple(dict.fromkeys(held))))
        outcomes = Allocator(pools, taken=taken).allocate(requests)
        pools_by_name = {p.name: p for p in pools}
        for key, facts in sorted(mine.items()):
            await self._serve(facts, outcomes[key], pools_by_name, by_service.get(key, []))
        # Derived objects whose Service is gone, no longer vsop's, or replaced (another uid): released.
        for key, objects in sorted(by_service.items()):
            facts = mine.get(key)
            for d in objects:
                if facts is None or d.owner != facts.uid:
                    await self._write(self.api.delete_virtualservice(d.namespace, d.name), "Deleted a derived VirtualService", key, d.name)
        for key in [k for k in self._told if k not in mine]:
            del self._told[key]
        return self.failed

    async def _serve(self, facts: ServiceFacts, outcome: Any, pools: Mapping[str, VipPool], derived: list[Derived]) -> None:
        ref = ObjectRef(facts.namespace, facts.name, facts.uid, kind="Service", api_version="v1")
        if outcome.reason != ALLOCATED:
            await self._tell(facts.key, ref, "Warning", outcome.reason, outcome.message)
            for d in derived:
                if d.owner == facts.uid:
                    await self._write(self.api.delete_virtualservice(d.namespace, d.name), "Deleted a derived VirtualService", facts.key, d.name)
            if facts.ingress:
                await self._write(self.api.patch_service_status(facts.namespace, facts.name, facts.resource_version, {"loadBalancer": {"ingress": None}}),
                                  "Cleared the load balancer status", facts.key)
            return
        wanted_names = set()
        ready: list[str] = []
        for address, pool_name in zip(outcome.addresses, outcome.pools):
            family = 6 if ":" in address else 4
            body = derived_body(facts, address, pools.get(pool_name), family)
            name = derived_name(facts.name, family)
            wanted_names.add(name)
            try:
                wanted = parse_virtual_service(body)
            except InvalidInput as exc:
                await self._tell(facts.key, ref, "Warning", "AllocationFailed", f"the derived VirtualService is invalid: {exc}")
                return
            found = next((d for d in derived if d.name == name), None)
            if found is None:
                await self._write(self.api.create_virtualservice(body), "Created a derived VirtualService", facts.key, name)
            elif found.owner != facts.uid:
                continue  # another Service's (being replaced): deleted above, created next turn
            elif found.vs is None or found.vs.spec != wanted.spec or found.vs.metadata.labels.get(SERVICE_LABEL) != facts.name:
                # Hand edits are put back: the whole spec, fields the derived object does not set removed.
                patch = {"metadata": {"labels": {SERVICE_LABEL: facts.name}}, "spec": {**{k: None for k in self._spec_keys(found)}, **body["spec"]}}
                await self._write(self.api.patch_virtualservice(facts.namespace, name, patch), "Put a derived VirtualService back", facts.key, name)
            elif found.ready:
                ready.append(address)
        for d in derived:
            if d.owner == facts.uid and d.name not in wanted_names:
                await self._write(self.api.delete_virtualservice(d.namespace, d.name), "Deleted a derived VirtualService", facts.key, d.name)
        if tuple(sorted(outcome.addresses)) != tuple(sorted(facts.ingress)):
            await self._tell(facts.key, ref, "Normal", "Allocated", f"assigned {', '.join(outcome.addresses)} from VipPool {', '.join(dict.fromkeys(outcome.pools))}")
        wanted_ingress = tuple(a for a in outcome.addresses if a in ready)
        if wanted_ingress != facts.ingress and (wanted_ingress or facts.ingress):
            await self._write(self.api.patch_service_status(facts.namespace, facts.name, facts.resource_version,
                                                            {"loadBalancer": {"ingress": ingress(wanted_ingress) or None}}),
                              "Wrote the load balancer status", facts.key, ",".join(wanted_ingress))

    @staticmethod
    def _spec_keys(found: Derived) -> list[str]:
        if found.vs is None:
            return []
        return [key for key in found.vs.spec.model_dump(by_alias=True, exclude_unset=True)]

    async def _tell(self, key: str, ref: ObjectRef, type: str, reason: str, message: str) -> None:
        """An Event when what there is to say changes (not every turn)."""
        if self._told.get(key) == (reason, message):
            return
        try:
            await self.writer.post_event(ref, type, reason, message)
            self._told[key] = (reason, message)
            log.info(kv("Posted event", service=key, reason=reason, message=message))
        except (ApiError, OSError) as exc:
            self.failed += 1
            log.warning(kv("Posting event failed", service=key, reason=reason, error=str(exc)))

    async def _write(self, write: Any, what: str, service: str, detail: str | None = None) -> None:
        if not self.may_write():
            write.close()
            return
        try:
            await write
            log.info(kv(what, service=service, detail=detail))
        except (ApiError, OSError) as exc:
            self.failed += 1
            log.warning(kv(f"{what}: failed; retried on the next turn", service=service, detail=detail, error=str(exc)))
