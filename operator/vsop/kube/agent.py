"""The in-cluster node agent (`vsop agent`, a DaemonSet): programs this node's kernel.

Owns the agent's kopf wiring: indexes of VirtualServices, of EndpointSlices (by
Service) and of this node's Node object, and raw event handlers that only wake the
reconciler; the node's one reconcile loop (debounced wake-ups, a periodic full
resync that repairs drift, nothing at all before the first complete listing of
every watched kind); this node's entries in its NodeReport (vsop.kube.report, one
object per node, watched by the controller only) written only when they changed; Events
for refused VIPs and kernel failures; probes and metrics.
It is a source and a sink around the node reconciler (vsop.node.reconciler), the same
one the host agent runs: each turn hands it the indexes' objects, endpoints, node and
health results; a turn woken by a change plans only what changed, a periodic turn is
its full resync. The reconciler owns the kernel work (draining for
`drain.timeoutSeconds`, health results as weight edits, UDP conntrack cleanup through
the engine); this module runs the health checks of `healthCheck` and reports.
Handlers store nothing on the objects: no finalizers, no annotations, no progress.
The kernel and the conntrack cleaner are injected; only `main` builds the real ones
(`vsop.adapters.real`, `vsop.adapters.conntrack`).
In keepalived mode (`--keepalived-dir`, off by default) each successful kernel sync is
followed, in the same worker thread, by the keepalived writer (vsop.keepalived.writer:
render with the serviceRef endpoints, `keepalived -t`, swap in, SIGHUP only on change);
its failures go into the status entries of the keepalived-mode objects and Events.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence, TypeVar

import kopf

from vsop.node.probes import HealthChecker, Target
from vsop.core.desired import Endpoint, Node, Problem
from vsop.core.fragments import Fragment
from vsop.core.health import HealthTracker
from vsop.core.held import Held, held_owners, parse_member
from vsop.core.plan import Plan
from vsop.core.state import KernelState, Names, ServiceKey
from vsop.core.sysctls import KEEP_ACCEPT_RA_HELP
from vsop.adapters.kernel import Kernel, running_kernel_version
from vsop.keepalived.servers import services_of
from vsop.keepalived.writer import DEFAULT_PIDFILE, KeepalivedConfig, KeepalivedWriter
from vsop.kube import endpoints as eps
from vsop.kube.apiserver import ApiServerAddresses
from vsop.kube import objects
from vsop.kube import checkers
from vsop.kube import report as reports
from vsop.kube.client import PLURAL, ApiError, ApiWriter, Connection, ObjectRef, Writer
from vsop.kube.metrics import AgentMetrics, HttpEndpoints, Probes
from vsop.kube.runtime import ListingGate, Trigger, configure_logging, kopf_settings, kv, run_with_kopf
from vsop.kube.status import NodeEntry
from vsop.node.lock import LockTimeout, lock_path, stamp, writer_lock
from vsop.api.model import API_GROUP, API_VERSION, VirtualService
from vsop.node.reconciler import Reconciler

if TYPE_CHECKING:  # a Protocol; the real cleaner is built in main()
    from vsop.adapters.conntrack import ConntrackCleaner

log = logging.getLogger("vsop.kube.agent")

COMPONENT = "vsop-agent"
FAKE_KERNEL_ENV = "VSOP_FAKE_KERNEL"  # test-only: "1" runs on in-memory fake adapters
PROC_SYS = "/proc/sys"
T = TypeVar("T")
VS_INDEX, SLICE_INDEX, NODE_INDEX = "vsop_virtualservices", "vsop_endpointslices", "vsop_node"


# --- what the indexes hold -----------------------------------------------------------------


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
    )


def _seen(record: VSRecord) -> tuple[str, tuple[tuple[str, checkers.Published], ...]]:
    """What a VirtualService event must change for the agent to look at the object again."""
    return (record.fingerprint, record.published)


def _service_of(record: VSRecord | None) -> tuple[str, str] | None:
    """The Service whose endpoints a (valid) VirtualService takes, if any."""
    if record is None or record.vs is None or record.vs.spec.service_ref is None:
        return None
    return (record.namespace, record.vs.spec.service_ref.name)


@dataclass(frozen=True)
class NodeInfo:
    labels: Mapping[str, str]
    addresses: tuple[str, ...]


# --- one sync --------------------------------------------------------------------------------


@dataclass
class KernelOutcome:
    """One reconcile of this node's kernel, as the status, Events and metrics need it."""

    plan: Plan
    touched: frozenset[str] | None = None  # the objects it may have changed (None: any)
    # The next two cover every object when `touched` is None, else the objects the turn reports on.
    programmed: frozenset[str] = frozenset()
    problems: Mapping[str, Problem] = field(default_factory=dict)  # ref -> why it is not (wholly) programmed
    writes: int = 0
    applied: tuple[Any, ...] = ()
    error: str | None = None
    after: KernelState | None = None  # re-read after a failure: what actually got programmed
    seconds: float = 0.0
    full: bool = True  # read the whole kernel (resync, first, after a failure) or planned a change only
    repairs: tuple[Any, ...] = ()  # drift the full resync put back (vsop.core.drift.Repair)


@dataclass
class KeepalivedReport:
    """What the keepalived writer made of one sync, per keepalived-mode object on this node."""

    backends: dict[str, tuple[int, int]] = field(default_factory=dict)  # ref -> (total, ready) real server addresses rendered
    problems: dict[str, str] = field(default_factory=dict)  # ref -> "Reason: message": left out of the configuration
    error: str = ""  # "KeepalivedError: stage: message": nothing new was applied (old configuration stays)
    changed: bool = False
    reloaded: bool = False

    def failure(self, ref: str) -> str:
        return self.problems.get(ref) or self.error


@dataclass
class SyncReport:
    """What one sync did, for tests and logs."""

    outcome: KernelOutcome | None
    keepalived: KeepalivedReport | None = None
    entries: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)
    patched: list[tuple[str, str]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (object, reason, message)


def _programmed_in(state: KernelState, piece: Fragment, shared: KernelState) -> bool:
    """Whether everything one VirtualService's fragment (and the shared rules) asks for is in `state`."""
    bound = state.bound_vips()
    for key, service in piece.services.items():
        have = state.services.get(key)
        if have is None or not service.same_kernel_config(have) or key.vip not in bound:
            return False
    for key, rs in piece.real_servers.items():
        have_rs = state.real_servers.get(key)
        if have_rs is None or not rs.same_kernel_config(have_rs):
            return False
    for name, members in piece.members.items():
        present = state.ipsets[name].members if name in state.ipsets else {}
        if any(member not in present for member in members):
            return False
    # The constant rules are shared: without them no VIP works.
    return all(state.chains.get(key) == rules for key, rules in shared.chains.items()) and shared.jumps <= state.jumps


def _backend_counts(piece: Fragment) -> tuple[int, int]:
    """(total, healthy) backends of one VirtualService: distinct real server addresses, healthy with weight > 0."""
    total = {key.address for key in piece.real_servers}
    healthy = {key.address for key, rs in piece.real_servers.items() if rs.weight > 0}
    return len(total), len(healthy)


@dataclass
class AgentOptions:
    node_name: str
    namespaces: tuple[str, ...] = ()
    resync_seconds: float = 30.0
    debounce_seconds: float = 0.1
    names: Names = field(default_factory=Names)
    # Addresses a VIP must never take besides the node's own: the API server's.
    extra_node_addresses: tuple[str, ...] = ()
    keep_accept_ra: bool = False  # refuse IPv6 VIPs that would need accept_ra changed (as apply --keep-accept-ra)
    # The host's writer lock (the node's /run/vsop mounted): held per sync, as the host agent
    # holds it, so a `vsop apply` on the node never interleaves with the agent's writes.
    lock: Path | None = None
    lock_wait_seconds: float = 60.0  # a sync gives up after this and is retried


class Agent:
    """One node's agent. `registry` holds its kopf handlers; `run()` runs kopf and the reconcile loop."""

    def __init__(
        self,
        options: AgentOptions,
        kernel: Kernel,
        writer: Writer,
        *,
        conntrack: ConntrackCleaner | None = None,
        metrics: AgentMetrics | None = None,
        keepalived: KeepalivedWriter | None = None,
        apiserver: ApiServerAddresses | None = None,
    ):
        self.options = options
        self.apiserver = apiserver  # the API server's addresses: refused as VIPs
        self.keepalived = keepalived
        # In the cluster the password is an optional Secret: no file means no VRRP authentication.
        self._auth_file = keepalived.config.auth_file if keepalived is not None else None
        self._auth_present: bool | None = None
        self.node_name = options.node_name
        self.kernel = kernel
        self.writer = writer
        self.conntrack = conntrack
        if conntrack is not None:
            kernel.conntrack = conntrack  # the engine forgets removed UDP real servers' entries
        self.kernel_version = running_kernel_version()
        self.tracker = HealthTracker()
        self.checker: HealthChecker | None = None
        self.health_targets: set[Target] = set()
        self.roles = checkers.Roles(set(), {}, frozenset())  # which health targets this node checks for the cluster
        self.metrics = metrics or AgentMetrics()
        self.probes = Probes(stall_seconds=max(120.0, 4 * options.resync_seconds))
        self.trigger = Trigger()
        self.gate = ListingGate(self.trigger, f"{COMPONENT} {self.node_name}")
        self.syncs = 0  # syncs that reached the kernel
        self.turns = 0  # turns of the reconcile loop, finished
        self.busy = False  # a turn is running (its snapshot is taken)
        self._indexes: dict[str, kopf.Index] = {}
        self._fingerprints: dict[tuple[str, str], str] = {}
        self._node_fingerprint: Any = None
        # A turn costs what changed: the handlers note which objects and Services changed,
        # the turn reads only those from the indexes and hands the reconciler the difference.
        self._changed: set[tuple[str, str]] = set()  # VirtualServices changed since a turn last took them
        self._changed_services: set[tuple[str, str]] = set()  # referenced Services whose EndpointSlices changed
        self._everything = True  # the next turn reads every index and reports every object (first turn, after a failure)
        self._records: dict[tuple[str, str], VSRecord] = {}  # every VirtualService as the reconciler was last given it
        self._referenced: dict[tuple[str, str], set[tuple[str, str]]] = {}  # Service -> the VirtualServices naming it
        self._invalid: set[tuple[str, str]] = set()
        self._checked: dict[str, VirtualService] = {}  # ref -> valid objects with a health check
        self._published: dict[str, dict[str, checkers.Published]] = {}  # ref -> status.backendHealth, where published
        self._checks_sent: dict[str, dict[str, bool]] = {}  # owner -> what this node last reported as a checker
        self._states: dict[tuple[str, str], str] = {}  # the metrics' state of each object (programmed, failed...)
        self._state_counts: Counter[str] = Counter()
        self._last_node: NodeInfo | None = None
        self._reported: dict[str, dict[str, Any]] | None = None  # this node's report as last read or written
        self._evented: dict[tuple[str, str, str | None], str] = {}
        self._report_read = False  # the report was read once since the start
        self._restarted_with: dict[str, dict[str, Any]] | None = None  # its entries then, until the turn that reads them
        self._invalid_logged: dict[tuple[str, str], str] = {}
        # The kernel work: sync, draining, health weights, conntrack (through the engine), incremental.
        self.reconciler = Reconciler(kernel, Node(self.node_name), names=options.names, kernel_version=self.kernel_version,
                                     keep_accept_ra=options.keep_accept_ra)
        self._lock_stamp = stamp(options.lock)  # the host writer lock's, after our last release
        self.registry = self._build_registry()
        self.settings = kopf_settings()
        # Server-side filtering where the API (and kopf >= 1.45) offers it; the handlers filter again.
        watching = self.settings.watching
        if hasattr(watching, "field_selectors") and hasattr(watching, "label_selectors"):
            watching.field_selectors["", "v1", "nodes"] = f"metadata.name={self.node_name}"
            watching.label_selectors["discovery.k8s.io", "v1", "endpointslices"] = eps.SERVICE_NAME_LABEL

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

        @kopf.index("", "v1", "nodes", id=NODE_INDEX, registry=registry, when=lambda name, **_: name == node_name)
        async def index_node(body: kopf.Body, **_: Any) -> dict[Any, Any]:
            return {None: NodeInfo(eps.node_labels(body), eps.node_addresses(body))}

        @kopf.on.startup(registry=registry)
        async def capture_indexes(**kwargs: Any) -> None:
            # Documented by kopf: indexes may be handed to tasks; they are complete once
            # any resource handler runs.
            self._indexes = {name: kwargs[name] for name in (VS_INDEX, SLICE_INDEX, NODE_INDEX)}

        @kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=registry)
        async def virtualservice_event(event: Mapping[str, Any], body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
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
            current = _seen(record if record is not None else vs_record(body, node_name))
            if self._fingerprints.get(key) != current:  # status-only changes (other nodes' keys) change nothing here
                self._fingerprints[key] = current
                self._changed.add(key)
                self.trigger.wake(f"virtualservice {namespace}/{name} changed")

        @kopf.on.event("discovery.k8s.io", "v1", "endpointslices", registry=registry, labels={eps.SERVICE_NAME_LABEL: kopf.PRESENT})
        async def endpointslice_event(body: kopf.Body, **_: Any) -> None:
            self.gate.done()
            service = eps.slice_service(body)
            if service in self._referenced:
                self._changed_services.add(service)  # type: ignore[arg-type]
                self.trigger.wake(f"endpoints of service {service[0]}/{service[1]} changed")  # type: ignore[index]

        @kopf.on.event("", "v1", "nodes", registry=registry, when=lambda name, **_: name == node_name)
        async def node_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
            self.gate.done()
            current = (eps.node_labels(body), eps.node_addresses(body), event.get("type") == "DELETED")
            if current != self._node_fingerprint:  # not every heartbeat: labels and addresses only
                self._node_fingerprint = current
                self.trigger.wake(f"node {node_name} changed")

        return registry

    @property
    def listed(self) -> bool:
        return self.gate.listed

    # -- the reconcile loop --

    async def reconcile_forever(self) -> None:
        await self.gate.wait(self.options.resync_seconds, self.probes.turned)
        self.checker = HealthChecker(self.tracker, lambda: self.trigger.wake("health check result changed"))
        self.metrics.watch_health(self.checker)
        follower = None
        if self.apiserver is not None:
            await self.apiserver.refresh()  # before the first sync: never bind the API server's address, not even once
            follower = asyncio.create_task(self.apiserver.follow(self.options.resync_seconds, self.trigger.wake))
        try:
            await self._turn_forever()
        finally:
            if follower is not None:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
            await self.checker.stop()

    async def _turn_forever(self) -> None:
        failures = 0
        timeout = 0.0
        while True:
            self.probes.turned()
            if self.reconciler.draining.since:
                timeout = min(timeout, 1.0)  # drained real servers are deleted promptly
            woken = await self.trigger.wait(timeout, self.options.debounce_seconds)
            reasons = self.trigger.take()
            periodic = not woken
            self.busy = True
            try:
                report = await self.sync_once(periodic=periodic, reasons=reasons)
            except LockTimeout as exc:  # `vsop apply` (or another writer) on the node: retried soon
                log.error(kv("Sync skipped, will retry", node=self.node_name, error=str(exc)))
                report = None
            except Exception as exc:  # the loop must survive anything; the next turn retries
                log.exception(kv("Sync failed", node=self.node_name, error=str(exc)))
                self.metrics.errors.labels("kernel").inc()
                report = None
            finally:
                self.busy = False
                self.turns += 1
            ok = report is not None and report.outcome is not None and report.outcome.error is None
            failures = 0 if ok else failures + 1
            if ok and self.reconciler.replanning:
                # The resync found drift on more VIPs than one turn plans: the next part at once,
                # with whatever changed meanwhile (a change never waits for all of it).
                self.trigger.wake("resync: drift left to plan")
            # Retry a failed sync sooner than the resync period, backing off: 1s, 2s, 4s...
            timeout = self.options.resync_seconds if ok else min(self.options.resync_seconds, float(2 ** min(failures - 1, 6)))

    def _node_info(self) -> NodeInfo | None:
        node: NodeInfo | None = None
        for info in self._indexes.get(NODE_INDEX, {}).get(None, ()):
            node = info
        if node is not None:
            self._last_node = node
        return node or self._last_node

    def _take_changes(self, everything: bool) -> tuple[dict[tuple[str, str], VSRecord | None], dict[tuple[str, str], tuple[Endpoint, ...] | None]]:
        """The VirtualServices (key -> record, None: gone) and serviceRef endpoints (None: none) changed since the last turn.

        Reads only what the handlers noted, unless `everything` (the first turn, a periodic
        resync, after a failure): then every object, compared with what the reconciler has.
        Keeps the records, the serviceRef and invalid-object bookkeeping up to date.
        """
        index = self._indexes.get(VS_INDEX, {})
        keys, services = self._changed, self._changed_services
        self._changed, self._changed_services = set(), set()
        if everything:
            keys = set(index.keys()) | set(self._records)
            # What this turn takes from the indexes is seen: the listing's events that reach the
            # handlers after it (kopf calls them once per object after the indexes are complete)
            # wake no other turn for the same objects.
            self._fingerprints = {key: _seen(record) for key in index.keys() for record in index.get(key, ())}
        changes: dict[tuple[str, str], VSRecord | None] = {}
        for key in keys:
            record = next(iter(index.get(key, ())), None)
            old = self._records.get(key)
            if record is None and old is None:
                continue
            changes[key] = record
            before, after = _service_of(old), _service_of(record)
            if before != after:
                if before is not None:
                    named = self._referenced.get(before, set())
                    named.discard(key)
                    if not named:
                        self._referenced.pop(before, None)
                    services.add(before)
                if after is not None:
                    self._referenced.setdefault(after, set()).add(key)
                    services.add(after)
            ref = reports.ref_of(*key)
            if old is not None and (record is None or record.identity != old.identity):
                self._evented.pop(old.identity, None)  # gone, or another object under the same name
            if record is not None and record.published:
                self._published[ref] = dict(record.published)
            else:
                self._published.pop(ref, None)
            if record is None:
                del self._records[key]
                self._invalid.discard(key)
                self._checked.pop(ref, None)
                self._invalid_logged.pop(key, None)
                continue
            self._records[key] = record
            if record.vs is None:
                self._invalid.add(key)
                self._checked.pop(ref, None)
                if self._invalid_logged.get(key) != record.fingerprint:
                    self._invalid_logged[key] = record.fingerprint
                    log.warning(kv("Invalid VirtualService; what the kernel has for it is kept", virtualService=ref,
                                   generation=record.generation, error=record.error))
            else:
                self._invalid.discard(key)
                self._invalid_logged.pop(key, None)
                if record.vs.spec.health_check.type != "none":
                    self._checked[ref] = record.vs
                else:
                    self._checked.pop(ref, None)
        if everything:
            services |= set(self._referenced) | set(self.reconciler.endpoints)
        slices = self._indexes.get(SLICE_INDEX, {})
        endpoints = {
            service: eps.merge_endpoints(slices[service]) if service in self._referenced and service in slices else None
            for service in services
        }
        return changes, endpoints

    def _services(self) -> list[VirtualService]:
        """Every valid object, oldest first (ties by name): the order every node and the controller judge conflicts in."""
        services = [record.vs for record in self._records.values() if record.vs is not None]
        services.sort(key=lambda vs: (vs.metadata.creation_timestamp or "", vs.ref))
        return services

    def _health_targets(self) -> set[Target]:
        """What `checks.health_targets` gives over every object, from the objects with a health check only."""
        configured, fragments, draining = self.reconciler.configured, self.reconciler.fragments, self.reconciler.draining.since
        targets: set[Target] = set()
        for ref, vs in self._checked.items():
            piece = fragments.get(ref)
            for key in piece.configured if piece is not None else ():
                if configured.get(key) == ref and key not in draining:
                    targets.add(Target(key, vs.spec.health_check))
        return targets

    async def sync_once(self, *, periodic: bool = False, reasons: Iterable[str] = ()) -> SyncReport:
        """Hand the reconciler what changed in the indexes, reconcile, report what changed. Does nothing before the initial listing."""
        if not self.listed:
            return SyncReport(outcome=None)
        node_info = self._node_info()
        if node_info is None:
            self.probes.ready_reason = f"Node {self.node_name} not found"
            log.warning(kv("Node object not found; not syncing (nodeSelector cannot be evaluated)", node=self.node_name))
            return SyncReport(outcome=None)
        everything = periodic or self._everything
        self._everything = True  # until this turn is through: whatever it took is not lost
        changes, endpoints = self._take_changes(everything)

        node = Node(self.node_name, dict(node_info.labels))
        extra = tuple(node_info.addresses) + tuple(self.options.extra_node_addresses)
        reconciler = self.reconciler
        delta = {reports.ref_of(*key): record.vs if record is not None else None for key, record in changes.items()}
        # Invalid objects are not the reconciler's to derive: what the kernel has for them is
        # held (core.held; the owners live in the set comments, so this holds after a restart
        # too, and every node keeps serving the same owner of a VIP:port whatever restarted).
        # Ties in age go by name, as the controller orders them.
        reconciler.update_objects(delta, order={ref: ref for ref, vs in delta.items() if vs is not None})
        if endpoints:
            reconciler.update_endpoints(endpoints)
        reconciler.set_node(node, extra)
        reconciler.set_reserved(self.apiserver.reserved() if self.apiserver is not None else {})
        down = checkers.roles(self.node_name, self.health_targets, reconciler.configured, self._published).published_down
        reconciler.set_out_of_service(self.tracker.out_of_service() | down)
        reconciler.set_held(Held(owners=frozenset(reports.ref_of(*key) for key in self._invalid)))
        services = self._services() if self.keepalived is not None else []
        # Keepalived's writer renders every object: then every object's outcome is looked at.
        cover_all = everything or self.keepalived is not None
        sync = functools.partial(self._blocking_sync, services, node, reconciler.endpoints, cover_all=cover_all)
        outcome, keepalived = await asyncio.to_thread(self._locked, sync, periodic)
        self.syncs += 1
        self.health_targets = self._health_targets()
        self.roles = checkers.roles(self.node_name, self.health_targets, reconciler.configured, self._published)
        if self.roles.published_down != down:
            self.trigger.wake("published backend health changed")
        if self.checker is not None:
            self.checker.update(self.roles.targets)

        if outcome.error is None:
            self.probes.ready = True
            self.probes.ready_reason = "ok"
        # Entries of the objects this turn may have changed; every object's after a full
        # sync, a failure (and the turn after it) or in keepalived mode.
        complete = outcome.touched is None
        self._everything = outcome.error is not None
        if complete:
            keys: set[tuple[str, str]] = set(self._records)
        else:
            keys = {key for key in changes if key in self._records}
            for ref in outcome.touched or ():
                namespace, _, name = ref.partition("/")
                if (namespace, name) in self._records:
                    keys.add((namespace, name))
        report = SyncReport(outcome=outcome, keepalived=keepalived)
        # What this node publishes as a designated checker (vsop.kube.checkers) changes with results too.
        healthy = {key: self.tracker.is_healthy(key) for key in self.roles.checking if key in self.tracker.states}
        checks = self.roles.entry_checks(healthy)
        for owner in checks.keys() | self._checks_sent.keys():
            if checks.get(owner) != self._checks_sent.get(owner):
                namespace, _, name = owner.partition("/")
                if (namespace, name) in self._records:
                    keys.add((namespace, name))
        self._checks_sent = checks
        if not complete:
            problems, programmed = self._judge(reports.ref_of(*key) for key in keys)
            outcome.problems, outcome.programmed = problems, frozenset(programmed)
        report.entries = self._entries([self._records[key] for key in sorted(keys)], outcome, keepalived)
        checkers.add_checks(report.entries, self.roles, self.tracker)
        for key, record in changes.items():
            if record is None:
                report.entries[key] = None  # gone: its entry goes
        self._record_metrics(outcome, report.entries, complete, keepalived)
        self._log_outcome(outcome, reasons)
        await self._publish(report, complete)
        await self._report_drift(outcome, report)
        return report

    async def _report_drift(self, outcome: KernelOutcome, report: SyncReport) -> None:
        """Each repair a full resync made (counted by the node metrics): an Event on the object that owns what was put back."""
        changes: dict[str, list[str]] = {}
        for repair in outcome.repairs:
            changes.setdefault(repair.obj, []).append(repair.describe())
        for ref, described in changes.items():
            namespace, _, name = ref.partition("/")
            record = self._records.get((namespace, name))
            if record is not None:  # shared rules and sysctls have no single owner: logged and counted only
                await self._event(record, "Warning", "DriftRepaired", "the kernel was changed behind vsop's back; put back: " + "; ".join(described), report)

    def _locked(self, sync: Callable[[bool], T], full: bool) -> T:
        """Runs in a worker thread: `sync(full)` under the host's writer lock when there is one.

        After another writer held the lock (its stamp changed since our last release), or
        when waiting for it took a while, `full` is True: the reconcile reads the whole
        kernel first."""
        lock = self.options.lock
        if lock is None:
            return sync(full)
        others = stamp(lock) != self._lock_stamp
        on_wait = lambda who: log.info(kv("Waiting for the host's writer lock", node=self.node_name, holder=who))  # noqa: E731
        with writer_lock(lock, self.options.lock_wait_seconds, on_wait=on_wait) as waited:
            result = sync(full or others or waited >= 0.05)
        self._lock_stamp = stamp(lock)  # our own release: a later change is another writer's
        return result

    def _blocking_sync(
        self,
        services: list[VirtualService],
        node: Node,
        endpoints: Mapping[tuple[str, str], Iterable[Endpoint]],
        full: bool,
        cover_all: bool = True,
    ) -> tuple[KernelOutcome, KeepalivedReport | None]:
        """Blocking (netlink, iptables-restore, keepalived -t): the kernel reconcile, then (only after a successful one) keepalived's files."""
        outcome = self._kernel_sync(full, cover_all)
        if outcome.error is not None or self.keepalived is None or not self.keepalived.wanted(services):
            return outcome, None
        reconciler = self.reconciler
        # An object declared but invalid keeps its conf.d section as it keeps its kernel state
        # (core.held); an object refused for a held owner's ports is left out, as in the kernel.
        keep = (
            sorted(held_owners(reconciler.observed, reconciler.held, self.options.names, reconciler.programmed))
            if reconciler.held and reconciler.observed is not None and self.keepalived.can_keep() else []
        )
        rendered = [vs for vs in services if vs.ref not in reconciler.held_problems]
        return outcome, self._keepalived_sync(rendered, node, endpoints, set(reconciler.programmed), keep)

    def _keepalived_sync(
        self,
        services: list[VirtualService],
        node: Node,
        endpoints: Mapping[tuple[str, str], Iterable[Endpoint]],
        programmed: set[str],
        keep: Sequence[str] = (),
    ) -> KeepalivedReport:
        """Blocking (`keepalived -t`, file writes, a signal): the keepalived writer, and what it means per object."""
        assert self.keepalived is not None
        writer = self.keepalived
        report = KeepalivedReport()
        if self._auth_file is not None:
            present = self._auth_file.exists()
            if present != self._auth_present:
                self._auth_present = present
                log.log(logging.INFO if present else logging.WARNING,
                        kv("VRRP password file " + ("found; vrrp_instances authenticate" if present else "absent; vrrp_instances have no authentication"),
                           file=str(self._auth_file)))
            writer.config.auth_file = self._auth_file if present else None
        for vs in services:
            if vs.spec.mode == "keepalived" and vs.ref in programmed:
                addresses: dict[str, bool] = {}
                for service in services_of(vs, endpoints):
                    for rs in service.real_servers:
                        addresses[rs.key.address] = addresses.get(rs.key.address, False) or rs.weight > 0
                report.backends[vs.ref] = (len(addresses), sum(addresses.values()))
        try:
            result = writer.update(services, node=node, endpoints=endpoints, names=self.options.names, keep=keep)
        except OSError as exc:  # the writer reports its own failures; this is a last resort
            writer.last_error = {"at": time.time(), "stage": "write", "message": str(exc)}
            report.error = f"KeepalivedError: write: {exc}"
            return report
        report.changed, report.reloaded = result.changed, result.reloaded
        if result.error:
            report.error = f"KeepalivedError: {writer.last_error.get('stage', 'render')}: {result.error}"
        for problem in writer.problems:  # "namespace/name: Reason: message"
            ref, _, reason_message = problem.partition(": ")
            report.problems[ref] = reason_message
        return report

    def _kernel_sync(self, full: bool, cover_all: bool = True) -> KernelOutcome:
        """Runs in a worker thread: the adapters block (netlink, iptables-restore, conntrack).

        A periodic turn is the reconciler's full resync (reads the kernel, repairs drift);
        a turn woken by a change plans only the objects that changed.
        """
        reconciler = self.reconciler
        result = reconciler.reconcile(full=full)
        # Every object after a full reconcile, a failure, or when asked; else the agent
        # judges the objects it reports on (those this reconcile touched, and what changed).
        touched = result.touched if result.error is None and not cover_all else None
        problems, programmed = self._judge(reconciler.fragments if touched is None else ())
        return KernelOutcome(
            plan=result.plan,
            touched=touched,
            programmed=frozenset(programmed),
            problems=problems,
            writes=result.writes,
            applied=tuple(result.applied),
            error=result.error,
            after=result.after,
            seconds=result.seconds,
            full=result.full,
            repairs=tuple(result.repairs),
        )

    def _judge(self, refs: Iterable[str]) -> tuple[dict[str, Problem], set[str]]:
        """Why each of `refs` is not (wholly) programmed, and which are programmed, as the reconciler now has them."""
        reconciler = self.reconciler
        problems: dict[str, Problem] = {}
        programmed: set[str] = set()
        for ref in refs:
            piece = reconciler.fragments.get(ref)
            if piece is None:
                continue
            found = reconciler.problems(ref) if piece.problems or reconciler.plan_problems or reconciler.held_problems else ()
            if found:
                problems[ref] = found[-1]
            if ref in reconciler.programmed:
                programmed.add(ref)
        return problems, programmed

    def _entries(
        self, records: Sequence[VSRecord], outcome: KernelOutcome, keepalived: KeepalivedReport | None = None
    ) -> dict[tuple[str, str], dict[str, Any] | None]:
        """This node's report entry for each of `records` (objects the outcome covers); None: this node has no business with it."""
        problems = outcome.problems
        programmed = outcome.programmed
        fragments = self.reconciler.fragments
        shared = self.reconciler.shared() if outcome.error is not None else KernelState()
        held = self._held_counts({f"{r.namespace}/{r.name}" for r in records if r.vs is None})
        entries: dict[tuple[str, str], dict[str, Any] | None] = {}
        for record in records:
            ref = f"{record.namespace}/{record.name}"
            problem = problems.get(ref)
            entry: NodeEntry | None = None
            if record.vs is None:
                kept = held.get(ref)
                if kept is not None:  # invalid, and the kernel keeps what it had for it
                    note = f"InvalidSpec: generation {record.generation} is invalid ({record.error}); keeping what the kernel has for it"
                    entry = NodeEntry(True, kept[0], kept[1], note, record.generation)
            elif problem is not None and problem.reason == "Conflict" and ref in self.reconciler.held_problems:
                # Refused for what an invalid owner still serves: only the nodes know; the controller reads it here.
                entry = NodeEntry(False, 0, 0, f"{problem.reason}: {problem.message}", record.generation)
            elif problem is not None and problem.reason == "Conflict":
                entry = None  # a conflict loser: the controller reports it
            elif problem is not None:
                entry = NodeEntry(False, 0, 0, f"{problem.reason}: {problem.message}", record.generation)
            elif ref in programmed:
                total, healthy = _backend_counts(fragments[ref])
                ok = outcome.error is None or _programmed_in(outcome.after or KernelState(), fragments[ref], shared)
                message = "" if ok else f"KernelError: {outcome.error}"
                if ok and keepalived is not None and ref in keepalived.backends:
                    # keepalived programs IPVS for it: count what was rendered (keepalived's checks decide the rest).
                    total, healthy = keepalived.backends[ref]
                    failure = keepalived.failure(ref)
                    if failure:
                        ok, message = False, failure
                entry = NodeEntry(ok, total, healthy, message, record.generation)
            entries[record.key] = entry.as_status() if entry is not None else None
        return entries

    def _held_counts(self, refs: set[str]) -> dict[str, tuple[int, int]]:
        """(total, healthy) backends the kernel serves for each invalid owner it still has."""
        observed = self.reconciler.observed
        if not refs or observed is None:
            return {}
        names = self.options.names
        services: dict[str, set[ServiceKey]] = {}
        for set_name in (names.set_name(names.vip_ports_set, 4), names.set_name(names.vip_ports_set, 6)):
            ipset = observed.ipsets.get(set_name)
            for member, owner in (ipset.members.items() if ipset is not None else ()):
                key = parse_member(member)
                if owner in refs and key is not None:
                    services.setdefault(owner, set()).add(key)
        counts: dict[str, tuple[int, int]] = {}
        for owner, keys in services.items():
            servers = [rs for k, rs in observed.real_servers.items() if k.service in keys]
            counts[owner] = (len({rs.key.address for rs in servers}), len({rs.key.address for rs in servers if rs.weight > 0}))
        return counts

    async def _publish(self, report: SyncReport, complete: bool) -> None:
        """Write this node's report where it changed (one write at most); post an Event for each new failure."""
        if complete:
            present = {r.identity for r in self._records.values()}
            for identity in [i for i in self._evented if i not in present]:
                del self._evented[identity]
        if self._reported is None:
            await self._read_report(complete)
        # A restarted agent: a failure its report already carries, with the same message and
        # generation, had its Event posted by the agent before; a restart posts no Event per object.
        before, self._restarted_with = self._restarted_with, None
        jobs = [self._write_report(report, complete)]
        for key, entry in report.entries.items():
            record = self._records.get(key)
            if record is None:
                continue
            message = (entry or {}).get("message", "") if entry is not None and not entry["programmed"] else ""
            if message and self._evented.get(record.identity) != message:
                if before is not None and before.get(reports.ref_of(*key)) == reports.bounded(entry):  # type: ignore[arg-type]
                    self._evented[record.identity] = message
                    continue
                reason, _, text = message.partition(": ")
                jobs.append(self._event(record, "Warning", reason, text or message, report))
                self._evented[record.identity] = message
            elif not message:
                self._evented.pop(record.identity, None)
        await asyncio.gather(*jobs)

    async def _read_report(self, complete: bool) -> bool:
        """This node's NodeReport as stored (at start, and after a failed write); False: not read, retried next turn."""
        try:
            self._reported = reports.entries_of(await self.writer.read_node_report(self.node_name))
        except (ApiError, OSError) as exc:
            self.metrics.errors.labels("api").inc()
            self._everything = True
            log.warning(kv("Reading the node report failed; retried on the next sync", node=self.node_name, error=str(exc)))
            return False
        if not complete:
            self._everything = True  # what it holds of objects not named here is checked next turn
        if not self._report_read:
            self._report_read = True
            self._restarted_with = dict(self._reported)
        return True

    async def _write_report(self, report: SyncReport, complete: bool) -> None:
        """This node's NodeReport (vsop.kube.report): read once at start (and after a failed write), then patched with changes only.

        `complete`: the report's entries name every object (others in the report go); else
        only those that may have changed. After a failure the next turn reports everything.
        """
        if self._reported is None:  # _publish could not read it this turn
            return
        after = {reports.ref_of(*key): entry for key, entry in report.entries.items()}
        patch = reports.report_patch(self._reported, after, complete=complete)
        if patch is None:
            return
        try:
            await self.writer.patch_node_report(self.node_name, patch)
        except (ApiError, OSError) as exc:
            self.metrics.errors.labels("api").inc()
            self._reported = None
            self._everything = True
            log.warning(kv("Node report write failed; retried on the next sync", node=self.node_name, error=str(exc)))
            return
        changed = patch["status"]["virtualServices"]
        reports.merge_into(self._reported, patch)
        self.metrics.status_patches.inc()
        report.patched.extend(tuple(ref.split("/", 1)) for ref in sorted(changed))  # type: ignore[misc]
        for ref, entry in sorted(changed.items()):
            log.info(kv("Updated node report", virtualService=ref, node=self.node_name,
                        programmed=entry["programmed"] if entry else None, message=(entry or {}).get("message") or None,
                        removed=entry is None or None))

    async def _event(self, record: VSRecord, type: str, reason: str, message: str, report: SyncReport) -> None:
        text = f"node {self.node_name}: {message}"
        report.events.append((str(record.ref), reason, text))
        log.warning(kv("Posting event", virtualService=str(record.ref), reason=reason, node=self.node_name, message=message))
        try:
            await self.writer.post_event(record.ref, type, reason, text)
            self.metrics.events.labels(reason).inc()
        except (ApiError, OSError) as exc:
            self.metrics.errors.labels("api").inc()
            log.warning(kv("Posting event failed", virtualService=str(record.ref), reason=reason, error=str(exc)))

    def _record_metrics(
        self, outcome: KernelOutcome, entries: Mapping[tuple[str, str], Any], complete: bool, keepalived: KeepalivedReport | None = None
    ) -> None:
        """The sync's figures, and the objects by state, counted again only for the objects in `entries`."""
        m = self.metrics
        if keepalived is not None and keepalived.error:
            m.errors.labels("keepalived").inc()
        if self.reconciler.last is not None:
            m.record(self.reconciler.last, self.reconciler)
        if complete:
            self._states.clear()
            self._state_counts.clear()
        problems = {ref: p.reason for ref, p in outcome.problems.items()}
        for key in entries:
            record = self._records.get(key)
            old = self._states.pop(key, None)
            if old is not None:
                self._state_counts[old] -= 1
            if record is None:
                continue
            ref = f"{record.namespace}/{record.name}"
            if record.vs is None:
                state = "invalid"
            elif problems.get(ref) == "Conflict":
                state = "conflict"
            elif ref in problems:
                state = "failed"
            elif ref in outcome.programmed:
                failed = outcome.error is not None or (keepalived is not None and bool(keepalived.failure(ref)))
                state = "failed" if failed else "programmed"
            else:
                state = "not_selected"
            self._states[key] = state
            self._state_counts[state] += 1
        for state_name in ("programmed", "failed", "conflict", "invalid", "not_selected"):
            m.virtualservices.labels(state_name).set(self._state_counts[state_name])

    def _log_outcome(self, outcome: KernelOutcome, reasons: Iterable[str]) -> None:
        why = ", ".join(sorted(reasons)) or "periodic resync"
        counts = ",".join(f"{kind}={n}" for kind, n in sorted(outcome.plan.counts().items()))
        if outcome.error:
            log.error(kv("Kernel sync failed; retrying", node=self.node_name, error=outcome.error, applied=len(outcome.applied), planned=len(outcome.plan.ops), trigger=why))
        elif outcome.plan.ops:
            log.info(kv("Programmed kernel", node=self.node_name, operations=len(outcome.plan.ops), writes=outcome.writes, changes=counts,
                        virtualServices=self._state_counts["programmed"], duration=f"{outcome.seconds * 1000:.1f}ms", trigger=why,
                        full=outcome.full))
            # Built only when shown: a cold start applies a few operations per object (35,000 lines at 5,000).
            for op in outcome.applied if log.isEnabledFor(logging.DEBUG) else ():
                log.debug(kv("Applied", node=self.node_name, kind=op.kind, operation=op.describe()))
        else:
            log.debug(kv("Kernel already matches", node=self.node_name, virtualServices=self._state_counts["programmed"], trigger=why))
        for problem in outcome.problems.values() if log.isEnabledFor(logging.DEBUG) else ():
            log.debug(kv("Not programmed", virtualService=problem.obj, reason=problem.reason, message=problem.message))

    async def run(self, stop: asyncio.Event | None = None) -> None:
        await run_with_kopf(
            registry=self.registry,
            settings=self.settings,
            namespaces=self.options.namespaces,
            loop=self.reconcile_forever,
            stop=stop,
            name=COMPONENT,
        )


# --- the command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vsop agent",
        description=(
            "The in-cluster node agent (DaemonSet): watches VirtualServices, the EndpointSlices of\n"
            "their serviceRef Services and this node's Node, and programs this node's kernel.\n"
            "Writes only its own NodeReport (one object per node, read by the controller), and Events."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME", ""), help="this node's name (default: $NODE_NAME)")
    parser.add_argument("--namespace", "-n", dest="namespaces", action="append", default=[], metavar="NS",
                        help="watch VirtualServices in this namespace; repeatable (default: all namespaces)")
    parser.add_argument("--resync-seconds", type=float, default=30.0, help="full resync period, repairs drift (default: 30)")
    parser.add_argument("--debounce-seconds", type=float, default=0.1, help="least time between two turns woken by changes; a change after a quiet spell is handled at once (default: 0.1)")
    parser.add_argument("--health-port", type=int, default=9710, help="port of /healthz and /readyz (default: 9710)")
    parser.add_argument("--metrics-port", type=int, default=9711, help="port of /metrics (default: 9711; may equal --health-port)")
    parser.add_argument("--bind-address", default="0.0.0.0", help="address the probe and metrics ports listen on")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster service account, else $KUBECONFIG)")
    parser.add_argument("--context", default=None, help="kubeconfig context")
    parser.add_argument("--proc-sys", default=PROC_SYS, metavar="DIR",
                        help="where the host's /proc/sys is writable (default: /proc/sys; in a pod, the hostPath mount of /proc/sys/net)")
    k = parser.add_argument_group(
        "keepalived mode (objects with mode: keepalived; off unless --keepalived-dir is given)",
        "After each successful sync keepalived's configuration for this node (serviceRef endpoints included) is\n"
        "rendered; when it changed it is checked with `keepalived -t`, swapped in file by file and keepalived\n"
        "gets SIGHUP. An invalid candidate changes nothing and is reported in this node's NodeReport and an Event.",
    )
    k.add_argument("--keepalived-dir", default=None, metavar="DIR", help="where keepalived.conf (and conf.d/) go; enables keepalived mode")
    k.add_argument("--keepalived-pidfile", default=None, metavar="FILE", help=f"the running keepalived's pidfile, for SIGHUP (default {DEFAULT_PIDFILE})")
    k.add_argument("--keepalived-auth-file", default=None, metavar="FILE",
                   help="VRRP PASS password (1-8 characters), a key of a mounted Secret; read at each render; absent: no authentication")
    k.add_argument("--keepalived-layout", choices=("confd", "single"), default=None, help="keepalived.conf + conf.d/*.conf (default), or one file")
    k.add_argument("--keepalived-binary", default=None, metavar="PATH", help="the keepalived used for `keepalived -t` (default: keepalived on PATH)")
    parser.add_argument("--keep-accept-ra", action="store_true", help=KEEP_ACCEPT_RA_HELP)
    parser.add_argument("--lock", metavar="FILE", default=None,
                        help="the host's writer lock, held during each sync (default: $VSOP_LOCK or /run/vsop/lock, "
                        "when its folder exists: the node's /run/vsop mounted)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every kernel operation and kopf's own messages")
    return parser


def keepalived_writer(args: argparse.Namespace) -> KeepalivedWriter | None:
    """The writer the --keepalived-* flags ask for; None without --keepalived-dir. ValueError: flags without it."""
    given = [flag for flag, value in (("--keepalived-pidfile", args.keepalived_pidfile), ("--keepalived-auth-file", args.keepalived_auth_file),
                                      ("--keepalived-layout", args.keepalived_layout), ("--keepalived-binary", args.keepalived_binary)) if value]
    if not args.keepalived_dir:
        if given:
            raise ValueError(f"{', '.join(given)} need --keepalived-dir")
        return None
    return KeepalivedWriter(
        KeepalivedConfig(
            directory=Path(args.keepalived_dir),
            pidfile=Path(args.keepalived_pidfile) if args.keepalived_pidfile else DEFAULT_PIDFILE,
            layout=args.keepalived_layout or "confd",
            auth_file=Path(args.keepalived_auth_file) if args.keepalived_auth_file else None,
            binary=args.keepalived_binary or "keepalived",
        )
    )


def _host_from_environment(proc_sys: str = PROC_SYS) -> tuple[Kernel, ConntrackCleaner]:
    """This node's kernel and conntrack table; in-memory fakes when VSOP_FAKE_KERNEL=1 (tests only)."""
    if os.environ.get(FAKE_KERNEL_ENV) == "1":
        from vsop.adapters.conntrack import FakeConntrack
        from vsop.adapters.kernel import fake_kernel

        log.warning(kv("Using in-memory fake kernel adapters; nothing is programmed (test only)", env=FAKE_KERNEL_ENV))
        return fake_kernel()[0], FakeConntrack()
    from vsop.adapters.conntrack import ConntrackTool
    from vsop.adapters.real import real_kernel

    # /proc/sys is read-only in an unprivileged container: the sysctl adapter is then
    # rooted at the host's /proc/sys/net mounted elsewhere.
    if proc_sys.rstrip("/") != PROC_SYS and not os.path.isdir(os.path.join(proc_sys, "net")):
        raise FileNotFoundError(f"--proc-sys {proc_sys}: no net/ in it (mount the host's /proc/sys/net there)")
    kernel = real_kernel(proc_sys)
    kernel.ipvs.probe()  # say it now, not at the first sync: this kernel cannot run the agent
    return kernel, ConntrackTool()


def main(
    argv: Sequence[str] | None = None,
    *,
    kernel: Kernel | None = None,
    conntrack: ConntrackCleaner | None = None,
    connection: Connection | None = None,
) -> int:
    """`vsop agent` in the cluster. Exit codes: 0 stopped by a signal, 1 runtime failure, 2 invalid flags."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return 0 if not exc.code else 2
    if not args.node_name:
        print("vsop agent: --node-name (or $NODE_NAME) is required in the cluster", flush=True)
        return 2
    if args.resync_seconds <= 0 or args.debounce_seconds < 0:
        print("vsop agent: --resync-seconds must be > 0 and --debounce-seconds >= 0", flush=True)
        return 2
    try:
        keepalived = keepalived_writer(args)
    except ValueError as exc:
        print(f"vsop agent: {exc}", flush=True)
        return 2
    configure_logging(args.verbose)
    try:
        connection = connection or Connection.load(args.kubeconfig, args.context)
    except Exception as exc:  # no kubeconfig, no service account
        log.error(kv("Cannot load credentials for the API server", kubeconfig=args.kubeconfig, error=str(exc)))
        return 1
    try:
        if kernel is None:
            kernel, conntrack = _host_from_environment(args.proc_sys)
    except Exception as exc:  # no IPVS, no permission, no writable /proc/sys
        log.error(kv("Cannot use this node's kernel", node=args.node_name, error=str(exc)))
        return 1
    options = AgentOptions(
        node_name=args.node_name,
        namespaces=tuple(args.namespaces),
        resync_seconds=args.resync_seconds,
        debounce_seconds=args.debounce_seconds,
        keep_accept_ra=args.keep_accept_ra,
        lock=lock_path(args.lock) if args.lock or lock_path().parent.is_dir() else None,
    )
    agent = Agent(options, kernel, ApiWriter(connection, COMPONENT, host=args.node_name), conntrack=conntrack, keepalived=keepalived,
                  apiserver=ApiServerAddresses.for_connection(connection))
    connection.register_login(agent.registry)
    log.info(kv("Starting", component=COMPONENT, node=args.node_name, namespaces=",".join(args.namespaces) or "all",
                resync=f"{args.resync_seconds:g}s", credentials=connection.source, host=socket.gethostname(),
                keepalived=str(keepalived.config.directory) if keepalived is not None else "off"))

    async def serve() -> None:
        endpoints = HttpEndpoints(agent.probes, agent.metrics.registry, args.health_port, args.metrics_port, args.bind_address)
        await endpoints.start()
        try:
            await agent.run()
        finally:
            await endpoints.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        log.error(kv("Agent stopped on an error", node=args.node_name, error=str(exc)))
        return 1
    log.info(kv("Stopped", component=COMPONENT, node=args.node_name))
    return 0
