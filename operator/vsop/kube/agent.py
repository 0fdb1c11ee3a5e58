"""The in-cluster node agent (`vsop agent`, a DaemonSet): programs this node's kernel.

Owns the wiring of the in-cluster agent: its source (vsop.kube.source: the kopf indexes of
VirtualServices, EndpointSlices and this node's Node, handlers that only wake the loop) and
its sink (vsop.kube.sink: this node's NodeReport entries, Events, object states) around the
node's turn (vsop.node.loop, the same one the host agent drives: writer lock, reconciler,
health checks, draining, keepalived after a good sync, metrics, the schedule). Each turn
hands the reconciler what changed in the indexes (every object on a periodic full resync),
the objects refused their claim (vsop.kube.claims: the VipPools and Namespaces under
`--vip-policy`, decided by vsop.core.claims.admit as the controller decides it),
the serviceRef endpoints, the node and the published health of static backends
(vsop.kube.checkers); nothing at all happens before the first complete listing of every
watched kind. The kernel and the conntrack cleaner are injected; only the command line
(vsop.cli.agents) builds the real ones.
In keepalived mode (`--keepalived-dir`, off by default) each successful kernel sync is
followed by the keepalived writer (vsop.keepalived.writer: render with the serviceRef
endpoints, `keepalived -t`, swap in, SIGHUP only on change); its failures go into the
status entries of the keepalived-mode objects and Events. With --bgp-speaker, each successful
sync that may have changed it renders bird.conf (vsop.bgp.writer, as the host agent does) for
BIRD's container (with --bgp-speakers, from the BGPSpeaker object selecting this node and the
Secrets its peers name: vsop.kube.speakers), and BIRD's sessions are served as vsop_bgp_session_up{peer}. Who announces
(vsop.kube.announce): this node's state for each `announce: vrrp` / `bgp` object (keepalived's VRRP
state from its notify FIFO, whose transitions wake a turn; the route and whether a BGP session is
up, BIRD asked every few seconds) and its BGP sessions go into its NodeReport. A drained Node
(cordoned, or excluded from external load balancers) announces nothing: routes withdrawn, VRRP
track files at 1, IPVS kept.
Must not import: vsop.adapters.real, vsop.host, vsop.cli.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from vsop.api.model import VirtualService
from vsop.core.claims import DEFAULT_GRACE_SECONDS, NOT_ALLOWED, Admission, Policy
from vsop.core.desired import Node, Problem
from vsop.core.health import HealthTracker
from vsop.core.held import Held
from vsop.core.state import Names, RealServerKey, ServiceKey, Traffic
from vsop.bgp.writer import BirdAnnouncer
from vsop.keepalived.vrrp import with_node_peers
from vsop.keepalived.writer import KeepalivedWriter
from vsop.kube import announce, checkers, reflector
from vsop.kube import endpoints as eps
from vsop.kube import report as reports
from vsop.kube.apiserver import ApiServerAddresses
from vsop.kube.apiserver import watched as apiserver_watched
from vsop.kube.claims import ClaimWatch, HeldClaims
from vsop.kube.client import SecretReader, Writer
from vsop.kube.metrics import AgentMetrics, Probes
from vsop.kube.runtime import ListingGate, kopf_settings, kv, run_with_kopf
from vsop.kube.sink import KernelOutcome, KeepalivedReport, NodeReportSink, SyncReport, VrrpPassword, judge, kernel_outcome, keepalived_report
from vsop.kube.source import Changes, ClusterSource, VSRecord
from vsop.kube.speakers import DEFAULT_NAMESPACE, SpeakerPasswords, SpeakerWatch
from vsop.adapters.kernel import Kernel, conntrack_tcp_liberal, running_kernel_version
from vsop.node.lock import LockTimeout
from vsop.node.remember import RememberFile
from vsop.node.loop import Feed, KeepalivedInput, NodeLoop, Turn, WriterLock
from vsop.node.probes import HealthChecker, Target
from vsop.node.metrics import local_health
from vsop.node.reconciler import Reconciler

if TYPE_CHECKING:  # a Protocol; the real cleaner is built by the command line
    from vsop.adapters.conntrack import ConntrackCleaner

__all__ = ["COMPONENT", "Agent", "AgentOptions", "KernelOutcome", "KeepalivedReport", "SyncReport", "VSRecord"]

log = logging.getLogger("vsop.kube.agent")

COMPONENT = "vsop-agent"


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
    state_file: Path | None = None  # health verdicts and drains kept across restarts (vsop.node.remember)
    vip_policy: Policy = "pools"  # a VIP must lie in a VipPool granting its namespace (vsop.core.claims)
    # Watch every Node: an announce: vrrp object naming no vrrp.peers gets the InternalIPs of the Nodes
    # it selects (unicast VRRP). Off: such objects use multicast VRRP, and only this node's Node is watched.
    node_peers: bool = False
    # With a BIRD announcer: its speaker is the BGPSpeaker object selecting this node (vsop.kube.speakers), not a file.
    watch_speakers: bool = False
    secrets_namespace: str = DEFAULT_NAMESPACE  # where its peers' passwordSecretRef Secrets are: the agent's own
    secrets_seconds: float | None = None  # a Secret is read again once this old (default: resync_seconds)
    claim_grace_seconds: float = DEFAULT_GRACE_SECONDS  # a deleted object's claim is held this long (as the controller's)


class Agent:
    """One node's agent. `registry` holds its kopf handlers; `run()` runs kopf and the node's loop."""

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
        bird: BirdAnnouncer | None = None,
        secrets: SecretReader | None = None,
    ):
        self.options = options
        self.bird = bird  # announce: bgp: bird.conf from --bgp-speaker, BIRD's sessions as metrics (vsop.bgp.writer)
        self.apiserver = apiserver  # the API server's addresses: refused as VIPs
        self.keepalived = keepalived
        self.password = VrrpPassword(keepalived) if keepalived is not None else None  # read at each render
        self.node_name = options.node_name
        self.kernel = kernel
        self.writer = writer
        self.conntrack = conntrack
        if conntrack is not None:
            kernel.conntrack = conntrack  # the engine forgets removed UDP real servers' entries
        self.kernel_version = running_kernel_version()
        self.liberal = conntrack_tcp_liberal(kernel.sysctls)  # read once, as kube-proxy does: no INVALID rule when 1
        self.tracker = HealthTracker()
        # Which health targets this node checks for the cluster, kept per object (vsop.kube.checkers).
        self.role_keeper = checkers.RoleKeeper(self.node_name, self._forwarding)
        # Of the real servers it does not check, those this node probes because its counters show trouble.
        self.local_probes = checkers.LocalProbes()
        self._looking: asyncio.Task[None] | None = None  # the look at their counters under way, beside the turns
        self._traffic_reader: Any = None  # the IPVS adapter of that look (its own socket, when the kernel makes readers)
        self._followed: HealthChecker | None = None  # the checker that follows the roles' changes
        self.metrics = metrics or AgentMetrics()
        self.metrics.watch_local_probes(lambda: len(self.local_probes.running))
        self._probed_here: tuple[frozenset[RealServerKey], dict[str, Any] | None] = (frozenset(), None)  # status.localProbes, of what
        if bird is not None:
            self.metrics.watch_bgp(bird.sessions)
        self.syncs = 0  # syncs that reached the kernel
        # The kernel work: sync, draining, health weights, conntrack (through the engine), incremental.
        self.reconciler = Reconciler(kernel, Node(self.node_name), names=options.names, kernel_version=self.kernel_version,
                                     liberal=self.liberal, keep_accept_ra=options.keep_accept_ra)
        on_wait = lambda who: log.info(kv("Waiting for the host's writer lock", node=self.node_name, holder=who))  # noqa: E731
        self.loop = NodeLoop(self.reconciler, self.tracker, lock=WriterLock(options.lock, options.lock_wait_seconds, on_wait),
                             keepalived=keepalived, metrics=self.metrics, resync_seconds=options.resync_seconds,
                             debounce_seconds=options.debounce_seconds, retry=self._retry,
                             remember=RememberFile(options.state_file) if options.state_file else None)
        self.probes = self.loop.probes = Probes(stall_seconds=max(120.0, 4 * options.resync_seconds))
        self.probes.service_health = self.local_health
        self.trigger = self.loop.trigger
        self.gate = ListingGate(self.trigger, f"{COMPONENT} {self.node_name}")
        self.source = ClusterSource(self.node_name, self.trigger, self.gate, node_peers=options.node_peers)
        self._peers: tuple[int, list[VirtualService], list[VirtualService]] | None = None  # (nodes version, objects, with peers)
        # Who may claim which VIP: the VipPools and Namespaces, judged as the controller judges (vsop.kube.claims).
        self.claims = ClaimWatch(options.vip_policy, self.trigger, self.gate)
        self.claims.register(self.source.registry)
        self.admission = Admission()  # every object refused its claim, kept per change
        refresh = options.secrets_seconds if options.secrets_seconds is not None else options.resync_seconds
        self.speakers = (SpeakerWatch(self.trigger, self.gate, SpeakerPasswords(secrets, options.secrets_namespace, refresh))
                         if bird is not None and options.watch_speakers else None)
        if self.speakers is not None:
            self.speakers.register(self.source.registry)
        # Deleted objects' claims held for their re-creation: the ones this agent saw go, and the controller's (vsop.kube.claims).
        self.held = HeldClaims(self.claims, self.trigger, options.claim_grace_seconds)
        self.sink = NodeReportSink(self.node_name, writer, self.metrics, self.reconciler, self.source.records, options.names)
        self._checks_sent: dict[str, dict[str, bool]] = {}  # owner -> what this node last reported as a checker
        # announce: vrrp / bgp: this node's state for each such object (vsop.kube.announce), what it was
        # derived from (keepalived's VRRP states, whether a BGP session is up), the sessions last seen.
        self._announced: dict[str, str] = {}
        self._announce_changed: set[str] = set()  # objects whose state changed since the last report
        self._announce_inputs: Any = None
        self._sessions_seen: Any = None
        self.registry = self.source.registry
        # The API server's addresses come with the EndpointSlice watch when it covers `default`
        # (no request of their own); otherwise they are listed every resync period.
        self.watches_apiserver = apiserver_watched(options.namespaces)
        self.settings = kopf_settings()
        reflector.on_relisted(self.settings, lambda kind, deleted: self.metrics.relist_deletions.labels(kind).inc(deleted))
        # Server-side filtering where the API (and kopf >= 1.45) offers it; the handlers filter again.
        watching = self.settings.watching
        if hasattr(watching, "field_selectors") and hasattr(watching, "label_selectors"):
            if not options.node_peers:
                watching.field_selectors["", "v1", "nodes"] = f"metadata.name={self.node_name}"
            watching.label_selectors["discovery.k8s.io", "v1", "endpointslices"] = eps.SERVICE_NAME_LABEL

    def local_health(self, namespace: str, name: str) -> tuple[int, dict[str, Any]] | None:
        """kube-proxy's health JSON for a trafficPolicy: Local object: its ready real servers on this node
        (they are its local endpoints); None for any other object."""
        record = self.source.records.get((namespace, name))
        if record is None or record.vs is None:
            return None
        return local_health(self.reconciler, namespace, name)

    def _retry(self, failures: int) -> float:
        """Retry a failed sync sooner than the resync period, backing off: 1s, 2s, 4s..."""
        return min(self.options.resync_seconds, float(2 ** min(failures - 1, 6)))

    @property
    def listed(self) -> bool:
        return self.gate.listed

    @property
    def busy(self) -> bool:
        """A turn is running (its snapshot is taken)."""
        return self.loop.busy

    @property
    def turns(self) -> int:
        """Turns of the reconcile loop, finished."""
        return self.loop.turns

    @property
    def checker(self) -> HealthChecker | None:
        return self.loop.checker

    @property
    def health_targets(self) -> set[Target]:
        return self.loop.targets

    @property
    def roles(self) -> checkers.Roles:
        return self.role_keeper.roles

    # -- the loop (vsop.node.loop drives it: these are its Driver methods) --

    async def reconcile_forever(self) -> None:
        await self.gate.wait(self.options.resync_seconds, self.probes.turned)
        follower = None
        if self.apiserver is not None and not self.watches_apiserver:
            await self.apiserver.refresh()  # before the first sync: never bind the API server's address, not even once
            follower = asyncio.create_task(self.apiserver.follow(self.options.resync_seconds, self.trigger.wake))
        if self.keepalived is not None:  # a VRRP transition: a turn, so that the NodeReport says it
            running = asyncio.get_running_loop()
            self.keepalived.on_announce = lambda: running.call_soon_threadsafe(self.trigger.wake, "VRRP state changed")
        sessions = asyncio.create_task(self._follow_sessions()) if self.bird is not None else None
        try:
            await self.loop.run(self)
        finally:
            for task in (follower, sessions, self._looking):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

    async def _follow_sessions(self) -> None:
        """BIRD's BGP sessions, asked every few seconds (vsop.bgp.writer): a change is a turn, which reports it."""
        assert self.bird is not None
        while True:
            reading = await asyncio.to_thread(self.bird.sessions)
            seen = (announce.session_entries(reading.sessions), reading.error)
            if seen != self._sessions_seen:
                self._sessions_seen = seen
                self.trigger.wake("BGP sessions changed")
            await asyncio.sleep(self.bird.sessions_seconds)

    async def turn(self, full: bool, reasons: set[str]) -> bool:
        try:
            report = await self.sync_once(periodic=full, reasons=reasons)
        except LockTimeout as exc:  # `vsop apply` (or another writer) on the node: retried soon
            log.error(kv("Sync skipped, will retry", node=self.node_name, error=str(exc)))
            return False
        # Anything else a turn raises is the loop's guard's (vsop.node.loop): logged, counted as
        # vsop_errors{source="turn"}, retried with backoff, and liveness waits for a completed turn.
        return report.outcome is not None and report.outcome.error is None

    def probe_targets(self) -> set[Target]:
        return self.roles.targets | set(self.local_probes.running.values())

    def probe_changes(self) -> tuple[set[Target], set[Target]] | None:
        self._follow_checker()  # each turn has it follow the roles: nothing left, unless it is new
        return set(), set()

    def flush_due(self) -> float | None:
        return None  # the report is written by each turn

    async def flush(self) -> None:
        return None

    # -- one turn --

    async def sync_once(self, *, periodic: bool = False, reasons: Iterable[str] = ()) -> SyncReport:
        """Hand the reconciler what changed in the indexes, reconcile, report what changed. Does nothing before the initial listing."""
        if not self.listed:
            return SyncReport(outcome=None)
        node_info = self.source.node_info()
        if node_info is None:
            self.probes.ready_reason = f"Node {self.node_name} not found"
            log.warning(kv("Node object not found; not syncing (nodeSelector cannot be evaluated)", node=self.node_name))
            return SyncReport(outcome=None)
        everything = periodic or self.sink.report_all
        self.sink.report_all = True  # until this turn is through: whatever it took is not lost
        changes = self.source.take_changes(everything, self.reconciler.endpoints)
        self.sink.forget(changes.replaced)
        if self.apiserver is not None and self.watches_apiserver:
            self.apiserver.take(self.source.apiserver_addresses())  # the index is complete: the first sync has them too
        node = Node(self.node_name, dict(node_info.labels))
        if self.speakers is not None and self.bird is not None:
            await self.speakers.give(self.bird, self.node_name, node.labels, node_info.addresses)
        extra = tuple(node_info.addresses) + tuple(self.options.extra_node_addresses)
        # The published health of the objects just taken (the turn's out-of-service set), with the targets as they are.
        down = self._follow_roles(everything, (reports.ref_of(*key) for key in changes.objects)).published_down
        feed = self._feed(changes, node, extra, down)
        # Keepalived's writer renders every object: then every object's outcome is looked at.
        cover_all = everything or self.keepalived is not None
        turn = await self.loop.blocking(self.loop.turn, periodic, lambda others: feed, lambda t: self._judge(t, cover_all))
        if turn.skipped is not None:
            raise LockTimeout(turn.skipped)
        self.syncs += 1
        if self._follow_roles(False, ()).published_down != down:
            self.trigger.wake("published backend health changed")
        if periodic:
            self._start_look()
        self._follow_checker()
        outcome, keepalived = turn.report
        if outcome.error is None and self.reconciler.cold:  # ready once the first sync's last part is written
            self.probes.ready_reason = f"first sync in parts: {len(self.reconciler.resyncing.cold)} VIPs left to program"
        elif outcome.error is None:
            self.probes.ready = True
            self.probes.ready_reason = "ok"
        report = SyncReport(outcome=outcome, keepalived=keepalived)
        await self._report(report, changes, reasons)
        if self.speakers is not None and self.bird is not None:
            await self.speakers.tell(self.bird, self.writer, self.node_name)
        return report

    def _follow_roles(self, everything: bool, published: Iterable[str]) -> checkers.Roles:
        """The roles (vsop.kube.checkers) of the objects whose targets changed since the last look
        (vsop.node.loop.NodeLoop.take_ref_changes) and of those whose published health may have
        (`published`: the objects just taken); all of them when the loop rebuilt its targets or the
        source handed every object over. Equal to `checkers.roles` over every target."""
        refs = self.loop.take_ref_changes("roles")
        if refs is not None:
            refs.update(published)
        return self.role_keeper.follow(None if everything else refs, self.loop.targets_by_ref, self.source.published)

    def _forwarding(self, ref: str) -> str | None:
        """An object's spec.forwarding as the source has it now (vsop.kube.checkers.watchable)."""
        namespace, _, name = ref.partition("/")
        record = self.source.records.get((namespace, name))
        return record.vs.spec.forwarding if record is not None and record.vs is not None else None

    def _start_look(self) -> None:
        """The look at the watched real servers' counters (`look_at_traffic`), beside the turns: a change
        never waits for it. One at a time; a resync period whose look is still under way skips its own."""
        if self._looking is None or self._looking.done():
            self._looking = asyncio.create_task(self.look_at_traffic(), name=f"{COMPONENT} look at the data path")

    async def look_at_traffic(self) -> None:
        """Once per resync period: the IPVS counters of the real servers this node watches instead of
        probing (vsop.kube.checkers.LocalProbes), one dump per service, read through an adapter of its
        own in a thread of its own when the kernel makes readers (else in the turns' thread). A real
        server newly in trouble wakes a turn, which starts its probe."""
        watched = dict(self.roles.watched)  # as of now: the turns go on meanwhile
        if not watched and not self.local_probes.last:
            return
        try:
            traffic = await self._read_traffic(self.local_probes.services(watched)) if watched else {}
        except Exception as exc:  # a failed look is no trouble seen; the next period looks again
            log.warning(kv("Reading the IPVS counters of the real servers this node does not check failed", node=self.node_name,
                           error=f"{type(exc).__name__}: {exc}"))
            return
        troubled = sorted(self.local_probes.look(traffic, watched))
        for key in troubled:
            log.info(kv("New connections without a reply packet: probing the real server here", node=self.node_name,
                        service=str(key.service), real_server=str(key)))
        if troubled:
            self.trigger.wake("a real server's data path shows trouble")

    async def _read_traffic(self, services: list[ServiceKey]) -> dict[RealServerKey, Traffic]:
        if self.kernel.reader is None:
            return await self.loop.blocking(self.kernel.ipvs.traffic, services)
        if self._traffic_reader is None:
            self._traffic_reader = self.kernel.reader().ipvs
        return await asyncio.to_thread(self._traffic_reader.traffic, services)

    def _follow_checker(self) -> None:
        """The checker probes the roles' targets and the watched ones in trouble (vsop.kube.checkers):
        by what changed since it last followed them, whole when the roles were rebuilt or it is a new checker."""
        checker = self.loop.checker
        if checker is None:
            return
        changes = self.role_keeper.take_changes()
        whole = changes is None or checker is not self._followed
        # Followed whole (a full turn, a new checker), its own verdicts are looked at too: one recalled
        # from before a restart keeps its probe, or the checker's update would forget it.
        local = self.local_probes.follow(self.roles.watched, self.tracker.is_healthy, self.tracker.out_of_service() if whole else ())
        if whole:
            self._followed = checker
            checker.update(self.probe_targets())
        else:
            # Roles and local probes hold different real servers at any time; one moving from one to the
            # other in this turn with the same check stays probed (its verdict kept).
            added, removed = changes[0] | local[0], changes[1] | local[1]
            checker.change(added - removed, removed - added)

    def _feed(self, changes: Changes, node: Node, extra: tuple[str, ...], down: frozenset[Any]) -> Feed:
        delta = {reports.ref_of(*key): record.vs if record is not None else None for key, record in changes.objects.items()}
        keepalived = None
        since = {reports.ref_of(*key): record.claimed_since for key, record in changes.objects.items() if record is not None}
        invalid = {reports.ref_of(*key) for key, record in changes.objects.items() if record is not None and record.vs is None}
        refusals = self._refused(delta, since, invalid)
        if self.keepalived is not None:
            # An object declared but invalid keeps its conf.d section as it keeps its kernel state
            # (core.held); it has no last good definition here (`complete`: nothing to wait for).
            keepalived = KeepalivedInput(self._with_peers(self.source.services()), endpoints=self.reconciler.endpoints, node=node,
                                         prepare=self.password.check)
        return Feed(
            # Invalid objects are not the reconciler's to derive: what the kernel has for them is
            # held (core.held; the owners live in the set comments, so this holds after a restart
            # too, and every node keeps serving the same owner of a VIP:port whatever restarted).
            # Ties in age go by name, as the controller orders them.
            changed=delta,
            order={ref: ref for ref, vs in delta.items() if vs is not None},
            endpoints=changes.endpoints,
            node=node,
            extra_addresses=extra,
            reserved=self.apiserver.reserved() if self.apiserver is not None else {},
            out_of_service=down,
            held=Held(owners=frozenset(reports.ref_of(*key) for key in self.source.invalid)),
            refusals=refusals,
            keepalived=keepalived,
            announcing=self._announcing(),
        )

    def _announcing(self) -> bool:
        """False while this node is drained (cordoned, or excluded from external load balancers): its BGP
        routes are withdrawn and its VRRP track files say it serves nothing, so the VIPs move first;
        IPVS keeps serving what still arrives (established connections, routers converging)."""
        info = self.source.node_info()
        announcing = info is None or not info.draining
        if announcing != self.reconciler.announcing:
            log.warning(kv("Node drained: withdrawing its BGP routes and giving its VRRP VIPs away" if not announcing
                           else "Node no longer drained: announcing its VIPs again", node=self.node_name))
        return announcing

    def _with_peers(self, services: list[VirtualService]) -> list[VirtualService]:
        """With node_peers, objects announced by VRRP naming no peers get the selected Nodes' InternalIPs
        (vsop.keepalived.vrrp.with_node_peers); looked up again only when the objects or the Nodes changed."""
        if not self.options.node_peers:
            return services
        version = self.source.nodes_version
        same = self._peers is not None and len(self._peers[1]) == len(services) and all(a is b for a, b in zip(self._peers[1], services))
        if self._peers is None or self._peers[0] != version or not same:
            self._peers = (version, services, with_node_peers(services, self.source.cluster_nodes()))
        return self._peers[2]

    def _refused(self, delta: Mapping[str, VirtualService | None], since: Mapping[str, str | None], invalid: set[str]) -> dict[str, Problem]:
        """Every object refused its claim (vsop.core.claims, as the controller decides it, with the claims held
        for deleted objects), judged again for what changed: these objects (and the VIPs whose held claims
        came, went or expired), or all when a VipPool or a Namespace's labels did."""
        before = self.admission.refusals
        refusals = self.held.judge(self.admission, delta, since, invalid)
        for ref in sorted(refusals.keys() - before.keys()):
            if refusals[ref].reason == NOT_ALLOWED:
                log.warning(kv("VirtualService refused its VIP: not programmed", node=self.node_name, virtualService=ref,
                               field="spec.vip", reason=NOT_ALLOWED, message=refusals[ref].message))
        return refusals

    def _judge(self, turn: Turn, cover_all: bool) -> tuple[KernelOutcome, KeepalivedReport | None]:
        """Still in the turn's thread: the verdicts the report needs, and what keepalived made of each object."""
        assert turn.outcome is not None
        if self.bird is not None and turn.outcome.error is None and turn.feed is not None:
            if self.bird.due(turn.outcome.full, turn.feed.changed, self.reconciler.objects):
                self.bird.update(self.reconciler.objects.values())
        outcome = kernel_outcome(self.reconciler, turn.outcome, cover_all)
        self._announce(outcome.touched)
        if turn.keepalived is None or self.keepalived is None or turn.feed is None or turn.feed.keepalived is None:
            return outcome, None
        rendered: list[VirtualService] = [vs for vs in turn.feed.keepalived.services
                                        if vs.ref not in self.reconciler.held_problems and vs.ref not in self.reconciler.refusals]
        report = keepalived_report(self.keepalived, turn.keepalived, rendered, self.reconciler.endpoints, set(self.reconciler.programmed))
        return outcome, report

    def _announce(self, touched: frozenset[str] | None) -> None:
        """This node's state for each object with announce: vrrp or bgp (vsop.kube.announce): derived again
        for the objects the turn touched, or for all when keepalived's VRRP states or the BGP sessions changed."""
        reconciler = self.reconciler
        vrrp = self.keepalived.announced() if self.keepalived is not None and self.keepalived.notify is not None else None
        if vrrp is not None and "unknown" in vrrp.values():
            # keepalived tells transitions only: after the agent restarted it says nothing until the next one.
            # The VIP on one of this node's interfaces (keepalived adds it there on MASTER) says it meanwhile.
            held = reconciler.observed.node_addresses if reconciler.observed is not None else frozenset()
            vrrp = {vip: "master" if state == "unknown" and vip in held else state for vip, state in vrrp.items()}
        reading = self.bird.known() if self.bird is not None else None
        up = None if reading is None else (False if reading.error else announce.sessions_up(reading.sessions))
        inputs = (vrrp, up)
        everything = touched is None or inputs != self._announce_inputs
        self._announce_inputs = inputs
        refs: Iterable[str] = set(reconciler.objects) | set(self._announced) if everything else touched or ()
        for ref in refs:
            vs = reconciler.objects.get(ref)
            piece = reconciler.fragments.get(ref)
            routed = piece is not None and bool(piece.routes) and ref in reconciler.programmed
            state = announce.object_state(vs.spec.announce, vs.spec.vip, routed, vrrp, up) if vs is not None else None
            if state != self._announced.get(ref):
                self._announce_changed.add(ref)
            if state is None:
                self._announced.pop(ref, None)
            else:
                self._announced[ref] = state

    def _local_probes_status(self) -> dict[str, Any] | None:
        """This node's `status.localProbes`: the static backends it probes because its data path showed
        trouble (vsop.kube.checkers.LocalProbes), derived again only when they changed."""
        running = frozenset(self.local_probes.running)
        if running != self._probed_here[0]:
            self._probed_here = (running, reports.local_probes(len(running), self.local_probes.probed_here(self.loop.targets_by_ref)))
        return self._probed_here[1]

    def _sessions(self) -> list[dict[str, Any]] | None:
        """This node's BGP sessions for its NodeReport (None: no BGP speaker here, or BIRD not asked yet)."""
        reading = self.bird.known() if self.bird is not None else None
        return announce.session_entries(reading.sessions) if reading is not None else None

    async def _report(self, report: SyncReport, changes: Changes, reasons: Iterable[str]) -> None:
        """This node's entries for the objects this turn may have changed: every object's after a full
        sync, a failure (and the turn after it) or in keepalived mode; metrics, logs, Events."""
        outcome, records = report.outcome, self.source.records
        assert outcome is not None
        complete = outcome.touched is None
        self.sink.report_all = outcome.error is not None
        if complete:
            keys: set[tuple[str, str]] = set(records)
        else:
            keys = {key for key in changes.objects if key in records}
            for ref in outcome.touched or ():
                namespace, _, name = ref.partition("/")
                if (namespace, name) in records:
                    keys.add((namespace, name))
        # What this node publishes as a designated checker (vsop.kube.checkers) changes with results too.
        healthy = {key: self.tracker.is_healthy(key) for key in self.roles.checking if key in self.tracker.states}
        checks = self.roles.entry_checks(healthy)
        for owner in checks.keys() | self._checks_sent.keys():
            if checks.get(owner) != self._checks_sent.get(owner):
                namespace, _, name = owner.partition("/")
                if (namespace, name) in records:
                    keys.add((namespace, name))
        self._checks_sent = checks
        # This node's announce state changes with keepalived's VRRP states and BGP sessions too.
        for ref in self._announce_changed:
            namespace, _, name = ref.partition("/")
            if (namespace, name) in records:
                keys.add((namespace, name))
        self._announce_changed = set()
        report.announced, report.sessions = self._announced, self._sessions()
        report.local_probes = self._local_probes_status()
        if not complete:
            problems, programmed = judge(self.reconciler, (reports.ref_of(*key) for key in keys))
            outcome.problems, outcome.programmed = problems, frozenset(programmed)
        report.entries = self.sink.entries([records[key] for key in sorted(keys)], outcome, report.keepalived, report.announced)
        checkers.add_checks(report.entries, self.roles, self.tracker)
        for key, record in changes.objects.items():
            if record is None:
                report.entries[key] = None  # gone: its entry goes
        self.sink.record_metrics(outcome, report.entries, complete, report.keepalived)
        self.sink.log_outcome(outcome, reasons)
        await self.sink.publish(report, complete)
        await self.sink.report_drift(outcome, report)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        await run_with_kopf(
            registry=self.registry,
            settings=self.settings,
            namespaces=self.options.namespaces,
            loop=self.reconcile_forever,
            stop=stop,
            name=COMPONENT,
        )
