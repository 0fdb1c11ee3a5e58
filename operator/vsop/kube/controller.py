"""The controller (`vsop controller`, a Deployment of two replicas, one writing): sums up what the nodes report.

Owns the cluster-wide verdicts: who may claim which VIP and conflicts (the same
vsop.core.claims.admit every agent runs, over the same objects, VipPools and Namespaces
(vsop.kube.claims) in the same order, so both agree: `VIPNotAllowed` or the winner), invalid
specs, the claims of deleted objects held for their re-creation (vsop.kube.claims: shared in the
VipPools' status.released when contested, the kept seniority in status.claimedSince), the
`Ready` / `Programmed` / `Degraded` / `Conflict` conditions with
`status.backends`, `status.observedGeneration` and `status.announcedBy` (vsop.kube.announce), summed up from the nodes' NodeReports
(vsop.kube.report: one object per node, which only the controller watches), deleting
the reports of Nodes that no longer exist, removing the `status.nodes` map older agents
wrote on the objects (upgrade), and Events on the transitions a user must notice.
Like the agent: kopf indexes plus raw event handlers that only wake one loop;
nothing stored on the objects but status. Only the holder of the Lease writes
(vsop.kube.leader: a standby keeps its watches warm and serves its probes and metrics; a
new leader relists, vsop.kube.relist, before its first write). Never touches a kernel: must not import
vsop.node.execute, vsop.adapters or vsop.adapters.real.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine, Mapping, Sequence

import kopf

from vsop.core.claims import DEFAULT_GRACE_SECONDS, NOT_ALLOWED, Admission, Policy
from vsop.core.desired import Node, Problem, applies_to_node
from vsop.kube import checkers, objects, reflector
from vsop.kube import report as reports
from vsop.kube.claims import ClaimWatch, HeldClaims, released, released_of
from vsop.kube.client import PLURAL, ApiError, ObjectRef, Writer
from vsop.kube.leader import Elector, LeaderWriter
from vsop.kube.loadbalancers import LoadBalancerApi, LoadBalancers, Options as LoadBalancerOptions
from vsop.kube.metrics import ControllerMetrics, Probes
from vsop.kube.relist import Listing
from vsop.kube.runtime import ListingGate, Trigger, kopf_settings, kv, now_rfc3339, run_with_kopf
from vsop.kube.status import CONDITION_TYPES, EventSpec, Facts, summarize, transition_events, with_transition_times
from vsop.api.model import API_GROUP, API_VERSION, VirtualService

log = logging.getLogger("vsop.kube.controller")

COMPONENT = "vsop-controller"
VS_INDEX, NODE_INDEX, REPORT_INDEX = "vsop_virtualservices", "vsop_nodes", "vsop_nodereports"
PATCH_CONCURRENCY = 8
_KEPT = Problem("", "", "")  # what refusals.get answers for an object not refused


@dataclass(frozen=True)
class Observed:
    namespace: str
    name: str
    uid: str | None
    generation: int | None
    vs: VirtualService | None
    error: str | None
    status: Mapping[str, Any]

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


def observe(body: Mapping[str, Any]) -> Observed:
    vs, error = objects.parse(body)
    meta = body.get("metadata") or {}
    status = objects.plain(body.get("status")) or {}
    return Observed(
        namespace=meta.get("namespace") or "default",
        name=meta.get("name") or "",
        uid=meta.get("uid"),
        generation=meta.get("generation"),
        vs=vs,
        error=error,
        status=status if isinstance(status, dict) else {},
    )


@dataclass(frozen=True)
class NodeFacts:
    labels: Mapping[str, str]
    ready: bool


def node_facts(body: Mapping[str, Any]) -> NodeFacts:
    conditions = (body.get("status") or {}).get("conditions") or ()
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return NodeFacts(dict((body.get("metadata") or {}).get("labels") or {}), ready)


def owned_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a status the controller writes."""
    return {
        "observedGeneration": status.get("observedGeneration"),
        "conditions": {c.get("type"): dict(c) for c in status.get("conditions") or () if isinstance(c, Mapping) and c.get("type") in CONDITION_TYPES},
        "backends": dict(status.get("backends") or {}),
        checkers.STATUS_FIELD: list(status.get(checkers.STATUS_FIELD) or ()),
        "announcedBy": status.get("announcedBy"),
        "claimedSince": status.get("claimedSince"),
    }


@dataclass
class ReconcileReport:
    patched: list[tuple[str, str]] = field(default_factory=list)
    events: list[tuple[str, str, str, str]] = field(default_factory=list)  # (object, type, reason, message)
    failed: int = 0  # status patches that failed
    deleted_reports: list[str] = field(default_factory=list)  # NodeReports of deleted Nodes


@dataclass
class ControllerOptions:
    namespaces: tuple[str, ...] = ()
    resync_seconds: float = 30.0
    debounce_seconds: float = 0.1
    vip_policy: Policy = "pools"  # a VIP must lie in a VipPool granting its namespace (vsop.core.claims)
    claim_grace_seconds: float = DEFAULT_GRACE_SECONDS  # a deleted object's claim is held this long for its re-creation


class LeaseLost(Exception):
    """The renew deadline passed (or another candidate holds the Lease): this controller must stop."""


Snapshot = tuple[list[Observed], dict[str, NodeFacts], dict[str, dict[str, Any]]]


class Controller:
    """Decides and writes; with an `elector`, only while it holds the Lease (a standby keeps its watches warm)."""

    def __init__(self, options: ControllerOptions, writer: Writer, *, metrics: ControllerMetrics | None = None,
                 elector: Elector | None = None, relist: Callable[[], Awaitable[Listing]] | None = None,
                 load_balancers: Callable[[Writer, Callable[[], bool]], LoadBalancers] | None = None):
        self.options = options
        self.elector = elector
        self.relist = relist
        self.writer: Writer = LeaderWriter(writer, elector) if elector is not None else writer
        self.metrics = metrics or ControllerMetrics()
        self._term = 0  # the elector's term this controller last relisted for
        self.probes = Probes(stall_seconds=max(120.0, 4 * options.resync_seconds))
        self.trigger = Trigger()
        self.gate = ListingGate(self.trigger, COMPONENT)
        self.turns = 0  # turns of the reconcile loop, finished
        self.busy = False  # a turn is running (its snapshot is taken)
        self._indexes: dict[str, kopf.Index] = {}
        self._node_fingerprints: dict[str, Any] = {}
        self._written: dict[tuple[str, str, str | None], dict[str, Any]] = {}
        # The record (one per watch event) whose legacy status.nodes a patch removed: until the watch
        # brings the object back, a turn sees the map still there and must not remove it again.
        self._legacy_removed: dict[tuple[str, str, str | None], Observed] = {}
        self.registry = self._build_registry()
        # Who may claim which VIP: the VipPools and Namespaces, judged as every agent judges (vsop.kube.claims).
        self.claims = ClaimWatch(options.vip_policy, self.trigger, self.gate)
        self.claims.register(self.registry)
        self.admission = Admission()
        # Deleted objects' claims, held for their re-creation; shared through the VipPools' status (vsop.kube.claims).
        self.held = HeldClaims(self.claims, self.trigger, options.claim_grace_seconds)
        self._admitted: dict[str, VirtualService] = {}  # the objects the admission last judged
        self.settings = kopf_settings()
        reflector.on_relisted(self.settings, lambda kind, deleted: self.metrics.relist_deletions.labels(kind).inc(deleted))
        # LoadBalancer Services (vsop.kube.loadbalancers): built on this controller's writer and leadership.
        self.load_balancers = load_balancers(self.writer, lambda: self.leading) if load_balancers is not None else None
        if self.load_balancers is not None:
            self.load_balancers.register(self.registry, self.trigger)
        if elector is not None:
            elector.on_change = self._leadership_changed
        self.metrics.leader.set(0 if elector is not None else 1)

    @property
    def leading(self) -> bool:
        return self.elector is None or self.elector.leading

    def _leadership_changed(self, leading: bool) -> None:
        self.metrics.leader.set(1 if leading else 0)
        self.trigger.wake("became the leader" if leading else "lost the lease")

    def _build_registry(self) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()

        @kopf.index(API_GROUP, API_VERSION, PLURAL, id=VS_INDEX, registry=registry)
        async def index_virtualservices(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Any, Any]:
            return {(namespace, name): observe(body)}

        @kopf.index("", "v1", "nodes", id=NODE_INDEX, registry=registry)
        async def index_nodes(body: kopf.Body, name: str, **_: Any) -> dict[Any, Any]:
            return {name: node_facts(body)}

        @kopf.index(API_GROUP, API_VERSION, reports.PLURAL, id=REPORT_INDEX, registry=registry)
        async def index_reports(body: kopf.Body, name: str, **_: Any) -> dict[Any, Any]:
            return {name: reports.entries_of(body)}

        @kopf.on.startup(registry=registry)
        async def capture_indexes(**kwargs: Any) -> None:
            self._indexes = {name: kwargs[name] for name in (VS_INDEX, NODE_INDEX, REPORT_INDEX)}

        @kopf.on.event(API_GROUP, API_VERSION, reports.PLURAL, registry=registry)
        async def report_event(event: Mapping[str, Any], name: str, **_: Any) -> None:
            self.gate.done()
            self.trigger.wake(f"node report {name} {str(event.get('type') or 'listed').lower()}")

        @kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=registry)
        async def virtualservice_event(event: Mapping[str, Any], namespace: str, name: str, **_: Any) -> None:
            self.gate.done()
            # Spec and status both matter here (the controller's own status writes, older agents' status.nodes).
            self.trigger.wake(f"virtualservice {namespace}/{name} {str(event.get('type') or 'listed').lower()}")

        @kopf.on.event("", "v1", "nodes", registry=registry)
        async def node_event(event: Mapping[str, Any], body: kopf.Body, name: str, **_: Any) -> None:
            self.gate.done()
            current = None if event.get("type") == "DELETED" else node_facts(body)
            if self._node_fingerprints.get(name, "unseen") != current:  # not every heartbeat
                self._node_fingerprints[name] = current
                self.trigger.wake(f"node {name} changed")

        return registry

    @property
    def listed(self) -> bool:
        return self.gate.listed

    async def reconcile_forever(self) -> None:
        await self.gate.wait(self.options.resync_seconds, self.probes.turned)
        failures = 0
        timeout = 0.0
        while True:
            self.probes.turned()
            woken = await self.trigger.wait(timeout, self.options.debounce_seconds)
            self.trigger.take()
            if not self.leading:
                # Standby: the watches stay warm (kopf keeps the indexes), nothing is written; claims are
                # judged as the leader judges them, so the deletions seen meanwhile are held when it leads.
                if self.listed:
                    records = self._snapshot()[0]
                    self._refused(records, [r.vs for r in records if r.vs is not None])
                self.probes.ready = True
                self.probes.ready_reason = "standby"
                self.turns += 1
                timeout = self.options.resync_seconds
                continue
            started = time.monotonic()
            self.busy = True
            try:
                if self.elector is not None and self._term != self.elector.terms:
                    await self._begin_term()
                else:
                    await self.reconcile_once(periodic=not woken)
                failures = 0
                self.metrics.reconciles.labels("success").inc()
                self.probes.ready = True
                self.probes.ready_reason = "ok"
            except Exception as exc:
                failures += 1
                self.metrics.reconciles.labels("error").inc()
                log.exception(kv("Reconcile failed", error=str(exc)))
            finally:
                self.busy = False
                self.turns += 1
            self.metrics.reconcile_duration.observe(time.monotonic() - started)
            timeout = self.options.resync_seconds if not failures else min(self.options.resync_seconds, float(2 ** min(failures - 1, 6)))

    async def _begin_term(self) -> None:
        """The first turn as the leader: forget what an earlier term wrote, relist, decide from the listing."""
        assert self.elector is not None
        term = self.elector.terms
        self._written.clear()
        self._legacy_removed.clear()
        snapshot = None
        if self.relist is not None:
            listing = await self.relist()
            records = sorted((observe(body) for body in listing.virtualservices), key=lambda r: r.key)
            nodes = {(n.get("metadata") or {}).get("name") or "": node_facts(n) for n in listing.nodes}
            found = {(r.get("metadata") or {}).get("name") or "": reports.entries_of(r) for r in listing.reports}
            snapshot = (records, nodes, found)
            log.info(kv("Relisted before the first write of this term", virtualServices=len(records), nodes=len(nodes)))
        await self.reconcile_once(periodic=True, snapshot=snapshot)
        self._term = term

    def _snapshot(self) -> tuple[list[Observed], dict[str, NodeFacts], dict[str, dict[str, Any]]]:
        records = [next(iter(store)) for store in self._indexes.get(VS_INDEX, {}).values() if len(store)]
        records.sort(key=lambda r: r.key)
        nodes = {name: next(iter(store)) for name, store in self._indexes.get(NODE_INDEX, {}).items() if len(store)}
        found = {name: next(iter(store)) for name, store in self._indexes.get(REPORT_INDEX, {}).items() if len(store)}
        return records, nodes, found

    async def reconcile_once(self, *, periodic: bool = False, snapshot: Snapshot | None = None) -> ReconcileReport:
        report = ReconcileReport()
        if not self.listed or not self.leading:
            return report
        records, nodes, node_reports = snapshot or self._snapshot()
        valid = sorted((r.vs for r in records if r.vs is not None), key=lambda vs: (vs.metadata.creation_timestamp or "", vs.ref))
        # The agents refuse the same objects (vsop.core.claims.admit over the same objects, in the same order).
        refusals = self._refused(records, valid)
        conflicts = {ref: p.message for ref, p in refusals.items() if p.reason == "Conflict"}
        not_allowed = {ref: f"spec.vip: {p.message}" for ref, p in refusals.items() if p.reason == NOT_ALLOWED}
        # A re-created object keeps the seniority of the claim held for it: recorded in its status.claimedSince.
        claimed = {ref: age for ref in self.held.held.keys() & self.admission.objects.keys()
                   if (age := self.admission.age(ref)) < (self.admission.objects[ref].metadata.creation_timestamp or "")}
        ready_nodes = {name: facts for name, facts in nodes.items() if facts.ready}
        self._forget_gone(records)

        now = now_rfc3339()
        jobs = []
        counts: dict[tuple[str, str], int] = {}
        for record in records:
            job = self._status_job(record, (conflicts, not_allowed, claimed), ready_nodes, node_reports, periodic, now, counts, report)
            if job is not None:
                jobs.append(job)
        if jobs:
            await _run_limited(jobs)
        if self.load_balancers is not None:
            # An object refused its VIP holds no address: the allocator may hand it out.
            report.failed += await self.load_balancers.reconcile([vs for vs in valid if refusals.get(vs.ref, _KEPT).reason != NOT_ALLOWED])
        await self._delete_gone_reports(node_reports, nodes, report)
        await self._share_held_claims(report)
        if report.failed:
            raise ApiError(0, f"{report.failed} write(s) failed")
        self.metrics.conditions.clear()
        for (kind, status), count in counts.items():
            self.metrics.conditions.labels(kind, status).set(count)
        return report

    def _refused(self, records: Sequence[Observed], valid: Sequence[VirtualService]) -> dict[str, Problem]:
        """Every object refused its claim (vsop.core.claims.Admission, as each agent keeps it, with the claims
        held for deleted objects), judged again for the objects whose parsed version changed, or all when a
        VipPool or a Namespace did."""
        current = {vs.ref: vs for vs in valid}
        changed: dict[str, VirtualService | None] = {ref: vs for ref, vs in current.items() if self._admitted.get(ref) is not vs}
        changed.update((ref, None) for ref in self._admitted.keys() - current.keys())
        self._admitted = current
        since = {ref: objects.claimed_since({"status": r.status}) for r in records if (ref := f"{r.namespace}/{r.name}") in changed}
        invalid = {ref for r in records if r.vs is None and (ref := f"{r.namespace}/{r.name}") in changed}
        return self.held.judge(self.admission, changed, since, invalid)

    async def _share_held_claims(self, report: ReconcileReport) -> None:
        """The held claims another object contests go in the VipPools' status.released (vsop.kube.claims.released),
        so that an agent restarted within the grace period judges as the others; written only when they change."""
        pools = self.claims.pools()
        for name, tombs in sorted(released(self.admission, self.held.held, pools).items()):
            pool = next(p for p in pools if p.name == name)
            if released_of(pool) == tombs:
                continue
            try:
                await self.writer.patch_pool_status(name, {"released": [t.as_status() for t in tombs] or None})
                log.info(kv("Held claims of deleted VirtualServices written", pool=name, held=",".join(t.ref for t in tombs) or None))
            except (ApiError, OSError) as exc:
                self.metrics.errors.labels("api").inc()
                log.warning(kv("Writing held claims failed; retried on the next reconcile", pool=name, error=str(exc)))
                report.failed += 1

    def _forget_gone(self, records: Sequence[Observed]) -> None:
        """What was written for objects no longer listed is forgotten."""
        present = {r.identity for r in records}
        for identity in [i for i in self._written if i not in present]:
            del self._written[identity]
        for identity in [i for i in self._legacy_removed if i not in present]:
            del self._legacy_removed[identity]

    def _status_job(self, record: Observed, refused: tuple[Mapping[str, str], Mapping[str, str], Mapping[str, str]], ready_nodes: Mapping[str, NodeFacts],
                    node_reports: Mapping[str, dict[str, Any]], periodic: bool, now: str,
                    counts: dict[tuple[str, str], int], report: ReconcileReport) -> Coroutine[Any, Any, None] | None:
        """One object's status as the nodes' reports make it: the patch to write (None: it is
        already so); its conditions are added to counts. `refused`: (conflicts, VIPs not allowed), ref -> why,
        and the seniority of re-created objects that keep a held claim, ref -> claimedSince."""
        conflicts, not_allowed, claimed = refused
        ref = f"{record.namespace}/{record.name}"
        if record.vs is not None:
            selected = tuple(sorted(n for n, f in ready_nodes.items() if applies_to_node(record.vs, Node(n, f.labels))))
        else:
            selected = tuple(sorted(ready_nodes))  # the selector cannot be read: count whoever reports
        # A node counts once its agent runs (has a report): a joining node's Node object alone
        # changes no object; its first report (every entry at once) leaves "programmed on every
        # selected node" as it was, so a join writes nothing on the objects it programs.
        expected = tuple(n for n in selected if n in node_reports)
        # Each node's entry for this object, from the node's own report (vsop.kube.report).
        node_entries = {node: entries[ref] for node, entries in node_reports.items() if ref in entries}
        facts = Facts(
            generation=record.generation,
            invalid=f"spec is invalid: {record.error}" if record.error else None,
            conflict=conflicts.get(ref) or _node_conflict(node_entries),
            not_allowed=not_allowed.get(ref),
            expected=expected,
            nodes=node_entries,
            known_nodes=None,
            unreported=tuple(n for n in selected if n not in node_reports),
            announce=record.vs.spec.announce if record.vs is not None else "none",
        )
        summary = summarize(facts)
        found = owned_status(record.status)
        baseline = found if periodic or record.identity not in self._written else self._written[record.identity]
        old_conditions = list(baseline["conditions"].values())
        conditions = with_transition_times(summary.conditions, old_conditions, now)
        if record.vs is not None:
            # Who checks each static backend, and their verdict (vsop.kube.checkers); sized by backends, not nodes.
            health = checkers.published_health(record.vs, ref, expected, node_reports)
        else:
            health = list(record.status.get(checkers.STATUS_FIELD) or ())  # invalid: nodes keep the last valid generation
        since = [s for s in (record.status.get("claimedSince"), claimed.get(ref)) if isinstance(s, str) and s]
        wanted = {
            "observedGeneration": record.generation,
            "conditions": {c["type"]: c for c in conditions},
            "backends": summary.backends,
            checkers.STATUS_FIELD: health,
            "announcedBy": summary.announced_by,
            "claimedSince": min(since) if since else None,
        }
        for condition in conditions:
            counts[(condition["type"], condition["status"])] = counts.get((condition["type"], condition["status"]), 0) + 1
        # Upgrade: agents before NodeReports wrote status.nodes.<node> here; it goes, once.
        legacy = "nodes" in record.status and self._legacy_removed.get(record.identity) is not record
        if "nodes" not in record.status:
            self._legacy_removed.pop(record.identity, None)
        if wanted == baseline and not legacy:
            return None
        patch: dict[str, Any] = {
            "observedGeneration": record.generation,
            # Merge patch replaces lists whole: keep conditions other writers may have set.
            "conditions": conditions + [c for c in record.status.get("conditions") or () if isinstance(c, Mapping) and c.get("type") not in CONDITION_TYPES],
            "backends": summary.backends,
            checkers.STATUS_FIELD: health or None,
            "announcedBy": summary.announced_by,  # None removes it
        }
        if wanted["claimedSince"] is not None:
            patch["claimedSince"] = wanted["claimedSince"]
        if legacy:
            patch["nodes"] = None
        return self._apply(record, patch, wanted, transition_events(old_conditions, conditions), report)

    async def _delete_gone_reports(self, node_reports: Mapping[str, Any], nodes: Mapping[str, NodeFacts], report: ReconcileReport) -> None:
        """The report of a Node that no longer exists goes (its agent is gone with it)."""
        for name in sorted(set(node_reports) - set(nodes)):
            try:
                await self.writer.delete_node_report(name)
                report.deleted_reports.append(name)
                log.info(kv("Deleted the report of a deleted Node", node=name))
            except (ApiError, OSError) as exc:
                self.metrics.errors.labels("api").inc()
                log.warning(kv("Deleting a node report failed; retried on the next reconcile", node=name, error=str(exc)))
                report.failed += 1

    async def _apply(self, record: Observed, patch: dict[str, Any], wanted: dict[str, Any], events: Sequence[EventSpec], report: ReconcileReport) -> None:
        """Patch the status; only once that worked, post the Events of its transitions (never twice)."""
        try:
            found = await self.writer.patch_status(record.ref, patch)
        except (ApiError, OSError) as exc:
            self.metrics.errors.labels("api").inc()
            log.warning(kv("Status patch failed; retried on the next reconcile", virtualService=str(record.ref), error=str(exc)))
            report.failed += 1
            return
        if not found:
            return
        self._written[record.identity] = wanted
        if "nodes" in patch:
            self._legacy_removed[record.identity] = record
        self.metrics.status_patches.inc()
        report.patched.append(record.key)
        ready = wanted["conditions"]["Ready"]
        log.info(kv("Updated status", virtualService=str(record.ref), generation=record.generation, ready=ready["status"],
                    reason=ready["reason"], backends=f"{wanted['backends']['healthy']}/{wanted['backends']['total']}",
                    removedLegacyNodes=("nodes" in patch) or None))
        for event in events:
            await self._event(record, event.type, event.reason, event.message, report)

    async def _event(self, record: Observed, type: str, reason: str, message: str, report: ReconcileReport) -> None:
        report.events.append((str(record.ref), type, reason, message))
        log.info(kv("Posting event", virtualService=str(record.ref), type=type, reason=reason, message=message))
        try:
            await self.writer.post_event(record.ref, type, reason, message)
            self.metrics.events.labels(reason).inc()
        except (ApiError, OSError) as exc:
            self.metrics.errors.labels("api").inc()
            log.warning(kv("Posting event failed", virtualService=str(record.ref), reason=reason, error=str(exc)))

    async def run(self, stop: asyncio.Event | None = None) -> None:
        await run_with_kopf(
            registry=self.registry,
            settings=self.settings,
            namespaces=self.options.namespaces,
            loop=self.reconcile_forever if self.elector is None else self._elect_and_reconcile,
            stop=stop,
            name=COMPONENT,
        )

    async def _elect_and_reconcile(self) -> None:
        """The election beside the reconcile loop; a lost lease ends both (the process exits and restarts).
        Stopped (SIGTERM), the leader releases the Lease first thing."""
        assert self.elector is not None
        stop = asyncio.Event()
        tasks = {asyncio.create_task(self.elector.run(stop), name="vsop leader election"),
                 asyncio.create_task(self.reconcile_forever(), name="vsop reconcile"),
                 asyncio.create_task(self.elector.lost.wait(), name="vsop lease watch")}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            if self.elector.lost.is_set():
                raise LeaseLost(f"lost the lease {self.elector.namespace}/{self.elector.name}")
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not self.elector.lost.is_set():
                await self.elector.release()


def load_balancers(connection: Any, options: LoadBalancerOptions) -> Callable[[Writer, Callable[[], bool]], LoadBalancers]:
    """How `vsop controller` (and the tests) build the LoadBalancer side: its own writes over `connection`."""
    return lambda writer, may_write: LoadBalancers(options, LoadBalancerApi(connection), writer, may_write)


async def _run_limited(jobs: Sequence[Coroutine[Any, Any, None]]) -> None:
    """The status writes of one turn, at most PATCH_CONCURRENCY at a time."""
    semaphore = asyncio.Semaphore(PATCH_CONCURRENCY)

    async def limited(job: Any) -> None:
        async with semaphore:
            await job

    try:
        await asyncio.gather(*(limited(job) for job in jobs))
    finally:
        # Cancelled (the controller stopping) while some waited for the semaphore: those never ran.
        # Closed here, they go quietly instead of "coroutine was never awaited"; the rest are done.
        for job in jobs:
            job.close()


def _node_conflict(nodes: Any) -> str | None:
    """A conflict only the nodes can see: the port is still served for an object declared but
    invalid (its kernel state is kept, core.held), which the controller cannot parse."""
    if not isinstance(nodes, Mapping):
        return None
    for name in sorted(nodes):
        entry = nodes[name]
        message = entry.get("message") if isinstance(entry, Mapping) else None
        if isinstance(message, str) and message.startswith("Conflict: "):
            return message[len("Conflict: "):]
    return None

