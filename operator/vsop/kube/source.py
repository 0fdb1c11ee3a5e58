"""The in-cluster agent's source: what this node's watches hold, handed to the node's turn as changes.

Owns the kopf indexes of VirtualServices, of EndpointSlices (by Service; the `kubernetes`
Service's in `default` also as the API server's addresses) and of this node's Node object (with
`node_peers`, of every Node: labels and InternalIPs, the VRRP peers of objects naming none), the raw event handlers that only note what changed and wake the loop (status-only
changes, other nodes' keys, Node heartbeats wake nothing), and `take_changes`: the objects and
serviceRef endpoints changed since the last turn, read from the indexes (every object on a
full turn), with the bookkeeping that needs (which Services are referenced, which objects are
invalid and held). Handlers store nothing on the objects: no finalizers, no annotations.
Must not import: vsop.node, vsop.adapters, vsop.kube.sink (what the turn did is the sink's).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import kopf

from vsop.api.model import API_GROUP, API_VERSION, VirtualService
from vsop.core.desired import Endpoint
from vsop.keepalived.vrrp import ClusterNode
from vsop.kube import apiserver, checkers, objects
from vsop.kube import endpoints as eps
from vsop.kube.client import PLURAL, ObjectRef
from vsop.kube.report import ref_of
from vsop.kube.runtime import ListingGate, Trigger, kv

log = logging.getLogger("vsop.kube.agent")

VS_INDEX, SLICE_INDEX, NODE_INDEX = "vsop_virtualservices", "vsop_endpointslices", "vsop_node"
NODES_INDEX = "vsop_nodes"  # with node_peers: every Node's labels and InternalIPs (VRRP peers)
APISERVER_INDEX = "vsop_apiserver"  # slice name -> the addresses of one EndpointSlice of default/kubernetes
APISERVER_SERVICE = (apiserver.SERVICE_NAMESPACE, apiserver.SERVICE_NAME)
Key = tuple[str, str]


@dataclass(frozen=True)
class VSRecord:
    """One VirtualService as this node needs it: parsed (or why not), and this node's status entry."""

    namespace: str
    name: str
    uid: str | None
    generation: int | None
    vs: VirtualService | None
    error: str | None
    fingerprint: str  # what the kernel depends on: uid, creation time and spec
    # status.backendHealth: the checkers of each static backend and their verdict (vsop.kube.checkers)
    published: tuple[tuple[str, checkers.Published], ...] = ()
    claimed_since: str | None = None  # status.claimedSince: the seniority a re-created object kept (vsop.core.claims)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def identity(self) -> tuple[str, str, str | None]:
        """Like `key`, but a deleted and re-created object is another one."""
        return (self.namespace, self.name, self.uid)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.namespace, self.name, self.uid)


def vs_record(body: Mapping[str, Any], node_name: str) -> VSRecord:
    vs, error, fingerprint = objects.parse_and_fingerprint(body)
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    return VSRecord(
        namespace=meta.get("namespace") or "default",
        name=meta.get("name") or "",
        uid=meta.get("uid"),
        generation=meta.get("generation"),
        vs=vs,
        error=error,
        fingerprint=fingerprint,
        published=tuple(sorted(checkers.parse_published(status).items())),
        claimed_since=objects.claimed_since(body),
    )


def _seen(record: VSRecord) -> tuple[str, tuple[tuple[str, checkers.Published], ...], str | None]:
    """What a VirtualService event must change for the agent to look at the object again."""
    return (record.fingerprint, record.published, record.claimed_since)


def _service_of(record: VSRecord | None) -> tuple[str, str] | None:
    """The Service whose endpoints a (valid) VirtualService takes, if any."""
    if record is None or record.vs is None or record.vs.spec.service_ref is None:
        return None
    return (record.namespace, record.vs.spec.service_ref.name)


@dataclass(frozen=True)
class NodeInfo:
    labels: Mapping[str, str]
    addresses: tuple[str, ...]
    draining: bool = False  # cordoned, or excluded from external load balancers: announce nothing (eps.node_draining)


@dataclass
class Changes:
    """What one turn takes from the indexes."""

    objects: dict[Key, VSRecord | None]  # key -> record now (None: gone)
    endpoints: dict[Key, tuple[Endpoint, ...] | None]  # serviceRef -> its endpoints (None: none)
    replaced: list[tuple[str, str, str | None]]  # identities gone, or another object under the same name


class ClusterSource:
    """The watches (`registry`, run by kopf) and what changed since the last turn (`take_changes`)."""

    def __init__(self, node_name: str, trigger: Trigger, gate: ListingGate, *, node_peers: bool = False):
        self.node_name = node_name
        # Every Node watched (not this node's only): the VRRP peers of objects naming none (vsop.keepalived.vrrp).
        self.node_peers = node_peers
        self._peer_fingerprints: dict[str, Any] = {}
        self.nodes_version = 0  # bumped when a Node joins, leaves, or changes its labels or InternalIPs
        self.trigger = trigger
        self.gate = gate
        self._indexes: dict[str, kopf.Index] = {}
        self._fingerprints: dict[Key, Any] = {}
        self._node_fingerprint: Any = None
        self._apiserver_seen: tuple[str, ...] = ()
        # A turn costs what changed: the handlers note which objects and Services changed,
        # the turn reads only those from the indexes and hands the reconciler the difference.
        self._changed: set[Key] = set()  # VirtualServices changed since a turn last took them
        self._changed_services: set[Key] = set()  # referenced Services whose EndpointSlices changed
        self.records: dict[Key, VSRecord] = {}  # every VirtualService as the reconciler was last given it
        self.referenced: dict[Key, set[Key]] = {}  # Service -> the VirtualServices naming it
        self.invalid: set[Key] = set()
        self.published: dict[str, dict[str, checkers.Published]] = {}  # ref -> status.backendHealth, where published
        self._invalid_logged: dict[Key, str] = {}
        self._last_node: NodeInfo | None = None
        self.registry = self._build_registry()

    # -- kopf wiring: indexes feed state, event handlers only wake the loop --
    # All handlers are coroutines: kopf runs plain functions in a thread pool, and the
    # trigger (an asyncio.Event) must be set from the event loop's thread.

    def _build_registry(self) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        node_name = self.node_name

        @kopf.index(API_GROUP, API_VERSION, PLURAL, id=VS_INDEX, registry=registry)
        async def index_virtualservices(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Any, Any]:
            return {(namespace, name): vs_record(body, node_name)}

        @kopf.index("discovery.k8s.io", "v1", "endpointslices", id=SLICE_INDEX, registry=registry, labels={eps.SERVICE_NAME_LABEL: kopf.PRESENT})
        async def index_endpointslices(body: kopf.Body, **_: Any) -> dict[Any, Any] | None:
            service = eps.slice_service(body)
            return {service: eps.slice_endpoints(body)} if service is not None else None

        @kopf.index("discovery.k8s.io", "v1", "endpointslices", id=APISERVER_INDEX, registry=registry,
                    labels={eps.SERVICE_NAME_LABEL: apiserver.SERVICE_NAME}, when=lambda namespace, **_: namespace == apiserver.SERVICE_NAMESPACE)
        async def index_apiserver_slices(body: kopf.Body, name: str, **_: Any) -> dict[Any, Any]:
            return {name: apiserver.slice_addresses([body])}

        @kopf.index("", "v1", "nodes", id=NODE_INDEX, registry=registry, when=lambda name, **_: name == node_name)
        async def index_node(body: kopf.Body, **_: Any) -> dict[Any, Any]:
            return {None: NodeInfo(eps.node_labels(body), eps.node_addresses(body), eps.node_draining(body))}

        if self.node_peers:
            @kopf.index("", "v1", "nodes", id=NODES_INDEX, registry=registry)
            async def index_nodes(body: kopf.Body, name: str, **_: Any) -> dict[Any, Any]:
                return {name: ClusterNode(eps.node_labels(body), eps.node_internal_ips(body))}

            @kopf.on.event("", "v1", "nodes", registry=registry)
            async def peer_event(event: Mapping[str, Any], body: kopf.Body, name: str, **_: Any) -> None:
                self.gate.done()
                current = None if event.get("type") == "DELETED" else (eps.node_labels(body), eps.node_internal_ips(body))
                if self._peer_fingerprints.get(name) != current:  # not every heartbeat: labels and InternalIPs only
                    if current is None:
                        self._peer_fingerprints.pop(name, None)
                    else:
                        self._peer_fingerprints[name] = current
                    self.nodes_version += 1
                    self.trigger.wake(f"node {name} {'left' if current is None else 'joined or changed'} (VRRP peers)")

        @kopf.on.startup(registry=registry)
        async def capture_indexes(**kwargs: Any) -> None:
            # Documented by kopf: indexes may be handed to tasks; they are complete once
            # any resource handler runs.
            names = (VS_INDEX, SLICE_INDEX, NODE_INDEX, APISERVER_INDEX) + ((NODES_INDEX,) if self.node_peers else ())
            self._indexes = {name: kwargs[name] for name in names}

        @kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=registry)
        async def virtualservice_event(event: Mapping[str, Any], body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
            self._virtualservice_event(event, body, namespace, name)

        @kopf.on.event("discovery.k8s.io", "v1", "endpointslices", registry=registry, labels={eps.SERVICE_NAME_LABEL: kopf.PRESENT})
        async def endpointslice_event(body: kopf.Body, **_: Any) -> None:
            self.gate.done()
            service = eps.slice_service(body)
            if service in self.referenced:
                self._changed_services.add(service)  # type: ignore[arg-type]
                self.trigger.wake(f"endpoints of service {service[0]}/{service[1]} changed")  # type: ignore[index]
            if service == APISERVER_SERVICE and self.apiserver_addresses() != self._apiserver_seen:
                self._apiserver_seen = self.apiserver_addresses()
                self.trigger.wake(f"endpoints of service {service[0]}/{service[1]} changed")

        @kopf.on.event("", "v1", "nodes", registry=registry, when=lambda name, **_: name == node_name)
        async def node_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
            self.gate.done()
            current = (eps.node_labels(body), eps.node_addresses(body), eps.node_draining(body), event.get("type") == "DELETED")
            if current != self._node_fingerprint:  # not every heartbeat: labels, addresses and cordon only
                self._node_fingerprint = current
                self.trigger.wake(f"node {node_name} changed")

        return registry

    def _virtualservice_event(self, event: Mapping[str, Any], body: kopf.Body, namespace: str, name: str) -> None:
        self.gate.done()
        key = (namespace, name)
        if event.get("type") == "DELETED":
            self._fingerprints.pop(key, None)
            self._changed.add(key)
            self.trigger.wake(f"virtualservice {namespace}/{name} deleted")
            return
        # kopf ran the index handlers on this body just before: the record holds what the kernel and
        # the published health of static backends (vsop.kube.checkers) depend on; other status does not.
        record = next(iter(self._indexes.get(VS_INDEX, {}).get(key, ())), None)
        current = _seen(record if record is not None else vs_record(body, self.node_name))
        if self._fingerprints.get(key) != current:  # status-only changes (other nodes' keys) change nothing here
            self._fingerprints[key] = current
            self._changed.add(key)
            self.trigger.wake(f"virtualservice {namespace}/{name} changed")

    # -- what a turn takes --

    def apiserver_addresses(self) -> tuple[str, ...]:
        """The addresses of the `kubernetes` Service's endpoints, as the EndpointSlice watch holds them."""
        index = self._indexes.get(APISERVER_INDEX, {})
        return tuple(dict.fromkeys(a for name in sorted(index.keys()) for addresses in index.get(name, ()) for a in addresses))

    def cluster_nodes(self) -> dict[str, ClusterNode]:
        """Every Node (with node_peers): name -> labels and InternalIPs."""
        index = self._indexes.get(NODES_INDEX, {})
        return {name: node for name in index.keys() for node in index.get(name, ())}

    def node_info(self) -> NodeInfo | None:
        node: NodeInfo | None = None
        for info in self._indexes.get(NODE_INDEX, {}).get(None, ()):
            node = info
        if node is not None:
            self._last_node = node
        return node or self._last_node

    def take_changes(self, everything: bool, known_services: Iterable[Key] = ()) -> Changes:
        """The VirtualServices (key -> record, None: gone) and serviceRef endpoints (None: none) changed since the last turn.

        Reads only what the handlers noted, unless `everything` (the first turn, a periodic
        resync, after a failure): then every object, compared with what the reconciler has
        (`known_services`: the serviceRefs it has endpoints for).
        Keeps the records, the serviceRef and invalid-object bookkeeping up to date.
        """
        index = self._indexes.get(VS_INDEX, {})
        keys, services = self._changed, self._changed_services
        self._changed, self._changed_services = set(), set()
        if everything:
            keys = set(index.keys()) | set(self.records)
            # What this turn takes from the indexes is seen: the listing's events that reach the
            # handlers after it (kopf calls them once per object after the indexes are complete)
            # wake no other turn for the same objects.
            self._fingerprints = {key: _seen(record) for key in index.keys() for record in index.get(key, ())}
        changes = Changes({}, {}, [])
        for key in keys:
            record = next(iter(index.get(key, ())), None)
            old = self.records.get(key)
            if record is None and old is None:
                continue
            changes.objects[key] = record
            services |= self._reference(key, old, record)
            if old is not None and (record is None or record.identity != old.identity):
                changes.replaced.append(old.identity)
            self._keep(key, record)
        if everything:
            services |= set(self.referenced) | set(known_services)
        slices = self._indexes.get(SLICE_INDEX, {})
        changes.endpoints = {
            service: eps.merge_endpoints(slices[service]) if service in self.referenced and service in slices else None
            for service in services
        }
        return changes

    def _reference(self, key: Key, old: VSRecord | None, record: VSRecord | None) -> set[Key]:
        """The serviceRefs whose endpoints the turn must hand over again: the one `key` named and the one it names now."""
        before, after = _service_of(old), _service_of(record)
        if before == after:
            return set()
        if before is not None:
            named = self.referenced.get(before, set())
            named.discard(key)
            if not named:
                self.referenced.pop(before, None)
        if after is not None:
            self.referenced.setdefault(after, set()).add(key)
        return {service for service in (before, after) if service is not None}

    def _keep(self, key: Key, record: VSRecord | None) -> None:
        ref = ref_of(*key)
        if record is not None and record.published:
            self.published[ref] = dict(record.published)
        else:
            self.published.pop(ref, None)
        if record is None:
            del self.records[key]
            self.invalid.discard(key)
            self._invalid_logged.pop(key, None)
            return
        self.records[key] = record
        if record.vs is None:
            self.invalid.add(key)
            if self._invalid_logged.get(key) != record.fingerprint:
                self._invalid_logged[key] = record.fingerprint
                log.warning(kv("Invalid VirtualService; what the kernel has for it is kept", virtualService=ref,
                               generation=record.generation, error=record.error))
        else:
            self.invalid.discard(key)
            self._invalid_logged.pop(key, None)

    def services(self) -> list[VirtualService]:
        """Every valid object, oldest first (ties by name): the order every node and the controller judge conflicts in."""
        services = [record.vs for record in self.records.values() if record.vs is not None]
        services.sort(key=lambda vs: (vs.metadata.creation_timestamp or "", vs.ref))
        return services
