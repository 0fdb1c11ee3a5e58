"""Metrics of one node's reconciler, and the HTTP endpoints for probes and scraping.

Owns the metric names and labels of a node agent, host or in-cluster (each process has
its own registry, so tests can run several in one process), `NodeMetrics.record`, which
turns one reconcile `Outcome` into them, and a small aiohttp server: `/healthz` (alive:
the loop keeps turning), `/readyz` (the first sync succeeded), `/health/NAMESPACE/NAME`
(kube-proxy's health JSON of a trafficPolicy: Local object, `local_health`) and `/metrics`, on one
port or two. Both agents hang these off the same reconciler.
Must not import: kopf, kubernetes, vsop.kube, vsop.adapters.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from typing import Any, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from vsop.core.plan import owned
from vsop.core.state import KernelState

log = logging.getLogger("vsop.node.metrics")

# kernel_error: on a VIP the kernel refused a write of (vsop.node.refusals); the rest of the node is programmed.
OBJECT_STATES = ("programmed", "failed", "kernel_error", "conflict", "invalid", "not_selected")
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class NodeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.syncs = Counter("vsop_syncs", "Kernel syncs of this node, by result (success, error).", ["result"], registry=r)
        self.sync_duration = Histogram(
            "vsop_sync_duration_seconds", "Time to read, plan and apply one sync.", buckets=DURATION_BUCKETS, registry=r
        )
        self.operations = Counter(
            "vsop_kernel_operations", "Kernel operations applied, by kind (service.add, realserver.edit, ...).", ["kind"], registry=r
        )
        self.errors = Counter(
            "vsop_errors", "Errors, by source (kernel: a sync failed; turn: a turn raised, a read of the kernel or the lock failed, and was retried with backoff; "
            "api: a status patch or Event failed; keepalived: its configuration was not applied).", ["source"], registry=r
        )
        self.kernel_refusals = Counter(
            "vsop_kernel_refusals",
            "Writes the kernel refused that took out only their VIP (or IPv6: its settings), by operation kind; the rest of the node was written.",
            ["kind"], registry=r,
        )
        self.refused_vips = Gauge("vsop_kernel_refused_vips", "VIPs left as the kernel has them after it refused a write of theirs, tried again with backoff.", registry=r)
        self.vips = Gauge("vsop_vips_programmed", "VIPs bound on vsop's link on this node.", registry=r)
        self.virtual_servers = Gauge("vsop_virtual_servers_programmed", "IPVS virtual services vsop programmed on this node.", registry=r)
        self.real_servers = Gauge(
            "vsop_real_servers_programmed", "IPVS real servers vsop programmed on this node, by state (active, drained).", ["state"], registry=r
        )
        self.virtualservices = Gauge(
            "vsop_virtualservices",
            "VirtualServices seen by this node, by state (programmed, failed, kernel_error, conflict, invalid, not_selected).",
            ["state"],
            registry=r,
        )
        self.status_patches = Counter("vsop_status_patches", "Merge patches of status.nodes.<this node>.", registry=r)
        self.relist_deletions = Counter(
            "vsop_relist_deletions", "Objects a relist found gone and deleted (their deletion fell in a watch gap: a dropped watch, "
            "410 Gone), by kind (the in-cluster agent).", ["kind"], registry=r,
        )
        self.events = Counter("vsop_events", "Events posted, by reason.", ["reason"], registry=r)
        self.drift_repairs = Counter(
            "vsop_drift_repairs", "Kernel changes made behind vsop's back that a full resync put back, by operation kind.", ["kind"], registry=r
        )
        self.probe_lag = Gauge(
            "vsop_health_probe_lag_seconds",
            "How late the health probes start against their intervals: the latest among the last probe of each real server "
            "(above 0 for long: more checks than the probes allowed at once can serve on time).",
            registry=r,
        )
        self.last_success = Gauge("vsop_last_successful_sync_timestamp_seconds", "Unix time of the last successful sync.", registry=r)
        self.announced = Gauge(
            "vsop_vip_announced", "1 per VIP announced by VRRP, labelled with this node's VRRP state for it "
            "(master: this node holds it; backup; fault; stop; unknown: keepalived has not said yet).", ["vip", "state"], registry=r,
        )
        self.incremental = Counter(
            "vsop_reconciles", "Reconciles of this node, by kind (incremental: only changed objects; full: the kernel read again; skipped: read, nothing of vsop's changed).",
            ["kind"], registry=r,
        )
        # What the kernel holds of vsop's is counted when scraped, not at every reconcile:
        # counting walks the whole state, and a change must cost what it changes.
        self._observed: tuple[KernelState | None, Any, int] = (None, None, 0)
        self._counted: tuple[Any, int, tuple[int, int, int, int]] | None = None
        self._recorded = 0  # reconciles recorded: what an object count computed at a scrape is valid for
        self._objects: tuple[int, Mapping[str, int]] | None = None
        self._object_source: Callable[[], Mapping[str, int]] | None = None
        self.vips.set_function(lambda: self._counts()[0])
        self.virtual_servers.set_function(lambda: self._counts()[1])
        self.real_servers.labels("active").set_function(lambda: self._counts()[2])
        self.real_servers.labels("drained").set_function(lambda: self._counts()[3])

    def _counts(self) -> tuple[int, int, int, int]:
        """(VIPs bound, virtual services, active and drained real servers) of vsop's in the last state recorded; once per state."""
        observed, names, changes = self._observed
        if self._counted is not None and self._counted[0] is observed and self._counted[1] == changes:
            return self._counted[2]
        for attempt in range(3):
            try:
                state = owned(observed, names) if observed is not None else KernelState()
                break
            except RuntimeError:  # the reconciler changed its cached state in place meanwhile: look again
                if attempt == 2:
                    return self._counted[2] if self._counted is not None else (0, 0, 0, 0)
        active = sum(1 for rs in state.real_servers.values() if rs.weight > 0)
        counts = (len(state.bound_vips()), len(state.services), active, len(state.real_servers) - active)
        self._counted = (observed, changes, counts)
        return counts

    def watch_health(self, checker: Any) -> None:
        """vsop_health_probe_lag_seconds from a vsop.node.probes.HealthChecker, read when scraped."""
        self.probe_lag.set_function(checker.lag)

    def watch_local_probes(self, count: Callable[[], int]) -> None:
        """vsop_health_local_probes from `count()`, read when scraped: registered by the in-cluster agent
        only (the host agent checks every real server it has and watches none through its counters)."""
        gauge = Gauge(
            "vsop_health_local_probes",
            "Static backends this node probes itself though it is not one of their designated checkers: its IPVS counters "
            "showed new connections without a reply packet (probed until the probe passes and the counters are quiet).",
            registry=self.registry,
        )
        gauge.set_function(count)

    def watch_bgp(self, sessions: Callable[[], Any]) -> None:
        """vsop_bgp_session_up{peer,protocol} and vsop_bgp_bird_up from `sessions()` (a
        vsop.bgp.sessions Reading), read when scraped."""
        self.registry.register(_BGPSessions(sessions))

    def count_objects(self, states: Callable[[], Mapping[str, int]]) -> None:
        """`vsop_virtualservices` from `states()` (state -> objects), called when scraped, at most once per
        recorded reconcile: a change costs nothing here (the in-cluster agent counts per change instead)."""
        self._object_source = states
        for state in OBJECT_STATES:
            self.virtualservices.labels(state).set_function(lambda state=state: self._object_counts().get(state, 0))

    def _object_counts(self) -> Mapping[str, int]:
        recorded = self._recorded
        if self._objects is not None and self._objects[0] == recorded:
            return self._objects[1]
        assert self._object_source is not None
        for attempt in range(3):
            try:
                counts = self._object_source()
                break
            except RuntimeError:  # the sync thread changed the reconciler's tables meanwhile: look again
                if attempt == 2:
                    return self._objects[1] if self._objects is not None else {}
        self._objects = (recorded, counts)
        return counts

    def record_announced(self, states: Mapping[str, str]) -> None:
        """This node's VRRP state of each VIP announced by VRRP (vsop.keepalived.writer's `announced`)."""
        self.announced.clear()
        for vip, state in states.items():
            self.announced.labels(vip, state).set(1)

    def record(self, outcome: Any, reconciler: Any) -> None:
        """One reconcile's figures (a vsop.node.reconciler Outcome, and its Reconciler): its result, duration and operations, and what the kernel now holds of vsop's."""
        self._recorded += 1
        self.syncs.labels("error" if outcome.error else "success").inc()
        self.incremental.labels("skipped" if outcome.skipped else "full" if outcome.full else "incremental").inc()
        self.sync_duration.observe(outcome.seconds)
        for op in outcome.applied:
            self.operations.labels(op.kind).inc()
        for repair in getattr(outcome, "repairs", ()):  # drift a full resync put back
            self.drift_repairs.labels(repair.op.kind).inc()
        for refused in getattr(outcome, "refused", {}).values():  # "service.add ...: reason"
            self.kernel_refusals.labels(refused.split(" ", 1)[0]).inc()
        refusals = getattr(reconciler, "kernel_refusals", None)
        if refusals is not None:
            self.refused_vips.set(len(refusals.vips))
        if outcome.error:
            self.errors.labels("kernel").inc()
        else:
            self.last_success.set(time.time())
        # The reconciler changes its cached state in place per change (a new one per full read):
        # `changes` tells a counted state from the same one changed since.
        observed = reconciler.observed if outcome.error is None else outcome.after
        if observed is not None or outcome.error is not None:
            self._observed = (observed, reconciler.names, getattr(reconciler, "changes", 0))


class _BGPSessions:
    """A collector: BIRD's sessions as they are when scraped (the peers come and go with the BGPSpeaker)."""

    def __init__(self, sessions: Callable[[], Any]):
        self.sessions = sessions

    def describe(self) -> list[Any]:
        return []  # no samples at registration: BIRD is asked when scraped only

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        reading = self.sessions()
        bird = GaugeMetricFamily("vsop_bgp_bird_up", "1 when BIRD answered on its control socket (announce: bgp).")
        bird.add_metric([], 0.0 if reading.error else 1.0)
        up = GaugeMetricFamily("vsop_bgp_session_up", "1 when BIRD's BGP session to the peer is Established.", labels=["peer", "protocol"])
        for session in reading.sessions:
            up.add_metric([session.peer, session.protocol], 1.0 if session.up else 0.0)
        yield bird
        yield up


def local_health(reconciler: Any, namespace: str, name: str) -> tuple[int, dict[str, Any]] | None:
    """kube-proxy's health JSON (/health/NAMESPACE/NAME) for a trafficPolicy: Local object of a node
    reconciler: 200 with the count of its ready real servers here (they are its local endpoints), 503
    with 0; None for an object that is not declared or not Local (404)."""
    vs = reconciler.objects.get(f"{namespace}/{name}")
    if vs is None or vs.spec.traffic_policy != "Local":
        return None
    piece = reconciler.fragments.get(vs.ref)
    local = {rs.key.address for rs in piece.real_server_list if rs.weight > 0} if piece is not None and piece.programmed else set()
    return (200 if local else 503), {"service": {"namespace": namespace, "name": name}, "localEndpoints": len(local)}


def object_states(reconciler: Any) -> Tally[str]:
    """A node reconciler's VirtualServices by state, as the in-cluster agent tells them apart: one pass
    over the objects. `invalid`: owners declared whose definition cannot be used and that have no
    usable version (a file invalid since the agent started, unreadable, being written)."""
    counts: Tally[str] = Tally()
    programmed = reconciler.programmed
    objects = reconciler.objects
    for ref in list(objects):
        found = reconciler.problems(ref)
        if found:
            reason = found[-1].reason
            counts["conflict" if reason == "Conflict" else "kernel_error" if reason == "KernelError" else "failed"] += 1
        elif ref in programmed:
            counts["programmed"] += 1
        else:
            counts["not_selected"] += 1
    counts["invalid"] = sum(1 for ref in reconciler.held.owners if ref not in objects)
    return counts


class Probes:
    """Liveness and readiness as the reconcile loop reports them.

    Live while a turn completed (ran to its end, a refused write included) within `stall_seconds`;
    the agents pass four resync periods, at least 120 s: a healthy loop completes a turn at least
    once a period (the periodic full resync), and a loop whose turns raise retries at least once a
    period too, so four periods without one completed turn is several failed tries in a row, not
    one slow sync or one bad read."""

    def __init__(self, stall_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.stall_seconds = stall_seconds
        self.clock = clock
        self.last_turn = clock()
        self.ready = False
        self.ready_reason = "waiting for the initial listing and the first sync"
        # /health/NAMESPACE/NAME: (HTTP status, JSON body) of one object, None: no such object here (404).
        self.service_health: Callable[[str, str], tuple[int, dict[str, Any]] | None] | None = None

    def turned(self) -> None:
        self.last_turn = self.clock()

    def live(self) -> tuple[bool, str]:
        idle = self.clock() - self.last_turn
        if idle > self.stall_seconds:
            return False, f"no turn of the reconcile loop completed for {idle:.0f}s (limit {self.stall_seconds:.0f}s)"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        return (True, "ok") if self.ready else (False, self.ready_reason)


class HttpEndpoints:
    """/healthz, /readyz and /metrics on `health_port` and `metrics_port` (the same port serves all three).

    The probes listen on `host`, /metrics on `metrics_host` (default: `host`), as kube-proxy splits
    them: the kubelet reaches the probes on the pod IP while the metrics stay on loopback unless
    opened. One port for all three listens on `metrics_host`: the metrics never go wider than asked."""

    def __init__(self, probes: Probes, registry: CollectorRegistry, health_port: int, metrics_port: int, host: str = "127.0.0.1",
                 metrics_host: str | None = None):
        self.probes = probes
        self.registry = registry
        self.health_port = health_port
        self.metrics_port = metrics_port
        self.host = host
        self.metrics_host = metrics_host or host
        self.runners: list[web.AppRunner] = []

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, why = self.probes.live()
        return web.Response(status=200 if ok else 503, text=why + "\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, why = self.probes.readiness()
        return web.Response(status=200 if ok else 503, text=why + "\n")

    async def _service_health(self, request: web.Request) -> web.Response:
        """kube-proxy's health check of an externalTrafficPolicy: Local Service, per VirtualService with
        trafficPolicy: Local: 200 while this node has a local endpoint, 503 otherwise, so an external
        load balancer or an announcer skips the nodes that would refuse."""
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        found = self.probes.service_health(namespace, name) if self.probes.service_health is not None else None
        if found is None:
            return web.json_response({"error": f"no VirtualService {namespace}/{name} with trafficPolicy Local on this node"}, status=404)
        return web.json_response(found[1], status=found[0])

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _serve(self, host: str, port: int, routes: list[web.RouteDef]) -> int:
        """Serve the routes; returns the port bound (port 0 picks a free one)."""
        app = web.Application()
        app.add_routes(routes)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self.runners.append(runner)
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or ()
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def start(self) -> None:
        health = [web.get("/healthz", self._healthz), web.get("/livez", self._healthz), web.get("/readyz", self._readyz),
                  web.get("/health/{namespace}/{name}", self._service_health)]
        metrics = [web.get("/metrics", self._metrics)]
        if self.health_port == self.metrics_port:
            self.host = self.metrics_host
            self.health_port = self.metrics_port = await self._serve(self.metrics_host, self.health_port, health + metrics)
        else:
            self.health_port = await self._serve(self.host, self.health_port, health)
            self.metrics_port = await self._serve(self.metrics_host, self.metrics_port, metrics)
        # The klog-style line both agents print (vsop.node.logs.kv's shape).
        log.info('"Serving probes and metrics" healthAddress="%s" metricsAddress="%s" healthPort=%d metricsPort=%d',
                 self.host, self.metrics_host, self.health_port, self.metrics_port)

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()
