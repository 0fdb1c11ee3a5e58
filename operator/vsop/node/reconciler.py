"""The node reconciler: every VirtualService of one node, kept true on its kernel at the cost of each change.

Owns the orchestration of one node's reconcile: which path a reconcile takes, and the
order of its steps. A change re-derives only the objects it touches (and those sharing a
VIP:port with them: vsop.node.objects), plans only their VIPs against the cached kernel
state (vsop.node.cache) through the same keep held -> draining -> plan step `vsop apply`
takes (vsop.node.whole.program), and writes the difference; a health result is therefore
one weight edit. A resync (`reconcile(full=True)`, the agents run one every 30 s) reads
the kernel again, compares it with the cache and plans the VIPs where they differ (drift
made by hand) like a change, `resync_chunk` VIPs per reconcile, so changes are served
between its parts (`replanning` says more are due); it plans nothing else when nothing
differs. Each resync also audits a rotating slice of VIPs (`audit_chunk`): their objects
re-derived from scratch and planned against the fresh read (vsop.node.resync). The first
reconcile reads the kernel and plans the VIPs in parts the same way, `cold_chunk` per
reconcile, each part deriving the objects on its VIPs, what every VIP shares and what vsop
left on VIPs nobody declares with the first part, nothing shared taken away before the last
(`_cold_start`). A reconcile after any failed or partial write (which
drops the cache), and a resync that finds vsop's link or a set's header changed plan the
whole node through vsop.node.whole.sync, the same path `vsop apply` takes. A write the kernel refuses takes out
only the VIP it was about (or IPv6, for an IPv6 setting): the kernel is read again and the
rest of the node planned and written without it in the same reconcile; that VIP is kept as
the kernel has it, its objects `KernelError` with the kernel's words, and tried again with
backoff (vsop.node.refusals). Only a failure that is no one VIP's fails the reconcile.
Sources (host folder, kopf indexes) and sinks (status file, Kubernetes status) are
the agents' business: this module neither reads files nor talks to an API server.
Must not import: kopf, kubernetes, pyroute2, asyncio (adapters are injected; it blocks).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import AbstractSet, Any, Callable, Iterable

from vsop.adapters.base import OperationFailed
from vsop.adapters.kernel import Kernel, read_observed
from vsop.core import ops
from vsop.core.desired import Desired, Node
from vsop.core.draining import Draining, starting_to_drain, with_draining
from vsop.core.drift import Repair
from vsop.core.fragments import assemble, grace_of, member_vip, vip_index, with_shared_as_found
from vsop.core.held import Held, held_owners
from vsop.core.plan import Plan, PlanError
from vsop.core.refused import keep_as_found, vip_family
from vsop.core.state import KernelState, Names, ServiceKey
from vsop.node.aside import Aside, AsideRead, splice
from vsop.node.cache import Cache
from vsop.node.execute import ExecutionFailed, execute
from vsop.node.objects import Objects, Verdicts
from vsop.node.refusals import Refusals, write_leaving_out
from vsop.node.resync import Resync, drift, op_vip
from vsop.node.whole import program, sync
from vsop.api.errors import KernelUnsupported

log = logging.getLogger("vsop.node")


@dataclass
class Outcome:
    """What one reconcile did."""

    full: bool  # a full read of the kernel (resync, first run, after a failure)
    plan: Plan = field(default_factory=lambda: Plan(()))
    writes: int = 0
    applied: list[ops.Op] = field(default_factory=list)
    error: str | None = None
    after: KernelState | None = None  # re-read after a failure: what actually got programmed
    skipped: bool = False  # full read found nothing of vsop's changed, the audit nothing wrong: nothing written
    audited: int = 0  # VIPs a resync's audit re-derived from scratch and planned (see vsop.node.resync)
    objects: int = 0  # objects re-derived
    vips: int = 0  # VIPs planned (incremental)
    seconds: float = 0.0
    read_seconds: float = 0.0
    aside_seconds: float = 0.0  # a resync's read made aside (off the lock, vsop.node.aside): its seconds, not on this path
    plan_seconds: float = 0.0
    execute_seconds: float = 0.0
    conntrack_failures: list[str] = field(default_factory=list)  # removed UDP real servers whose entries stay
    # VIPs (or "IPv6": that family's settings) the kernel refused a write of in this reconcile ->
    # the refused operation and the kernel's words; the rest of the node was written (vsop.node.refusals).
    refused: dict[str, str] = field(default_factory=dict)
    repairs: list[Repair] = field(default_factory=list)  # drift a full sync put back (vsop.core.drift)
    # Objects whose fragment, problems or kernel state this reconcile may have changed (those
    # on the VIPs it planned); None after a full sync: any of them. A source's status sink
    # re-reports only these (an object gone from the source is the source's to report).
    touched: frozenset[str] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def vips_of_held(observed: KernelState, held: Held, names: Names, programmed: Iterable[str],
                 present: AbstractSet[str] | None = None) -> frozenset[str]:
    """The VIPs where held owners have members in `observed` (vsop.core.held); `present`: the owners
    its comments name, as the cache keeps them counted for its state (KernelCache.present_owners)."""
    owners = held_owners(observed, held, names, programmed, present)
    if not owners:  # the usual case: no walk of every member (20,000 at 10k services)
        return frozenset()
    owned_sets = names.owned_set_names()
    return frozenset(
        member_vip(member)
        for name, ipset in observed.ipsets.items() if name in owned_sets
        for member, owner in ipset.members.items() if owner in owners
    )


def _part(part: str, name: str, doc: str = "", settable: bool = False) -> Any:
    """A Reconciler attribute (or method) kept by one of its parts, read (and set) through it."""

    def get(self: _Parts) -> Any:
        return getattr(getattr(self, part), name)

    def put(self: _Parts, value: Any) -> None:
        setattr(getattr(self, part), name, value)

    return property(get, put if settable else None, doc=doc or f"{part}.{name}")


@dataclass
class _Turn:
    """What one incremental reconcile plans, gathered before planning."""

    changed: set[str]  # VIPs whose objects changed
    vips: set[str]  # every VIP to plan: changed, audited, drifted, draining
    audit: set[str] = field(default_factory=set)  # VIPs the audit re-derived from scratch
    repairing: set[str] = field(default_factory=set)  # drifted VIPs planned now
    cold: set[str] = field(default_factory=set)  # VIPs the first sync planned now (nothing expected of them: no drift, no audit finding)
    stale: set[str] = field(default_factory=set)  # audited objects whose fragment differed from a derivation from scratch
    verdicts: dict[str, Any] = field(default_factory=dict)  # audited objects' verdicts before: reported only if they change


class _Parts:
    """The Reconciler's inputs and readings that belong to one of its parts, set and read through
    that part (a property each): `declared`, `verdicts`, `cache`, `resyncing` and `kernel_refusals`."""

    declared: Objects
    verdicts: Verdicts
    cache: Cache
    resyncing: Resync
    kernel_refusals: Refusals

    # -- inputs: the source's objects, endpoints, node, reserved addresses and health results go to
    # vsop.node.objects (see there what each costs); what is held is decided by Reconciler.set_held, over the cache.

    set_objects = _part("declared", "set_objects", "Everything the source declares, in its order (ties in age go to the first). Returns objects changed.")
    update_objects = _part("declared", "update_objects", """Only what changed in the source: ref -> its object now, or None when it is gone. Returns objects changed.

        Costs what the change is, whatever the node holds (set_objects compares the whole
        list). Ties in age go to the first in the source's order: `order` gives the changed
        objects' positions in it (ref -> any value comparable with the others'; give it
        always or never); without it a new object comes after every object seen so far and
        an updated one keeps its place.""")
    set_endpoints = _part("declared", "set_endpoints", "The endpoints of every serviceRef (missing key: none).")
    update_endpoints = _part("declared", "update_endpoints", "Only the serviceRefs whose endpoints changed (None or empty: none now); the others stay.")
    set_node = _part("declared", "set_node", "The node (its labels select objects), and the extra node addresses when given.")
    set_announcing = _part("declared", "set_announcing", "Whether this node asks BGP to attract its VIPs (False: the node is being drained).")
    set_reserved = _part("declared", "set_reserved", "Addresses something the node depends on uses (the API server's), refused as VIPs: address -> whose.")
    set_refusals = _part("declared", "set_refusals", "Objects refused their claim (vsop.core.claims.admit): ref -> why; never programmed, claiming nothing.")
    set_out_of_service = _part("declared", "set_out_of_service", "The real servers health checks took out; each flip re-derives its one object.")

    # -- what the agents read ------------------------------------------------------------------------

    node = _part("declared", "node", "The node, as last set.")
    kernel_version = _part("declared", "kernel_version")
    extra_node_addresses = _part("declared", "extra_node_addresses", "Node addresses the kernel does not show (the source's).")
    objects = _part("declared", "objects", "The declared objects: ref -> VirtualService.")
    endpoints = _part("declared", "endpoints", "serviceRef (namespace, name) -> its endpoints.")
    out_of_service = _part("declared", "out_of_service", "The real servers health checks took out.")
    reserved = _part("declared", "reserved", "Addresses refused as VIPs: address -> whose.")
    refusals = _part("declared", "refusals", "Objects refused their claim: ref -> why.")
    announcing = _part("declared", "announcing", "False while the node is drained: no VIP announced over BGP.")
    fragments = _part("declared", "fragments", "ref -> its desired Fragment.")
    configured = _part("declared", "configured", "Every configured real server -> its object.")
    observed = _part("cache", "state", "The kernel as last read plus what was written since; None: read it before planning.")
    changes = _part("cache", "changes", "Changes applied in place to `observed` (with its identity: which state it is).")
    programmed = _part("verdicts", "programmed", "The objects whose state is in the kernel as declared (read-only; kept true per change, not computed per call).")
    plan_problems = _part("verdicts", "plan_problems", "VIP -> problems the plan found (VIPInUse, RouterAdvertisements).")
    held_problems = _part("verdicts", "held_problems", "ref -> refused: it claims what a held owner serves.")
    left_alone = _part("verdicts", "left_alone", "VIPs the last plans left alone (someone else's IPVS services on them).")
    problems = _part("verdicts", "problems", "Why an object is not (or not wholly) programmed: from its derivation and the last plan of its VIP.")
    shared = _part("declared", "shared", "What every VIP shares (link, set headers, constant chains and jumps, sysctls) for the objects now programmed.")
    desired = _part("declared", "desired", "The node's whole desired state (before draining), as desired_state would compute it.")
    resync_chunk = _part("resyncing", "resync_chunk", "Drifted VIPs a resync plans per reconcile.", settable=True)
    audit_chunk = _part("resyncing", "audit_chunk", "VIPs each resync audits from scratch (0: none).", settable=True)
    audit_repairs = _part("resyncing", "audit_repairs", "Writes audits made: the incremental path had left a VIP wrong.")
    retry_in = _part("kernel_refusals", "retry_in", "Seconds until a VIP the kernel refused is due to be tried again (0: now); None: none refused.")


class Reconciler(_Parts):
    """One node's kernel, reconciled from whatever its source declares. Not thread-safe: one caller at a time.

    Its parts: `declared` (the objects, their indexes and fragments), `verdicts` (which are
    programmed, and why not), `cache` (the kernel as last read plus the writes since) and
    `resyncing` (drift still to plan, the audit's round)."""

    def __init__(
        self,
        kernel: Kernel,
        node: Node,
        *,
        names: Names = Names(),
        kernel_version: tuple[int, int] | None = None,
        liberal: bool = False,
        extra_node_addresses: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        keep_accept_ra: bool = False,
        resync_chunk: int = 256,
        audit_chunk: int | None = None,
        cold_chunk: int = 256,
    ):
        self.kernel = kernel
        self.names = names
        # Never change accept_ra: IPv6 VIPs whose forwarding would stop router advertisements
        # are refused (RouterAdvertisements), as `vsop apply --keep-accept-ra` refuses them.
        self.keep_accept_ra = keep_accept_ra
        self.clock = clock
        self.declared = Objects(node, names, kernel_version, extra_node_addresses, liberal)
        self.verdicts = Verdicts(self.declared)
        self.cache = Cache(names)
        self.resyncing = Resync(resync_chunk, audit_chunk, cold_chunk)
        self.verdicts.waiting = self.resyncing.cold  # an object on a VIP the first sync has yet to plan is not programmed
        self.draining = Draining()
        # VIPs (and address families) whose writes the kernel refused: kept as the kernel has them,
        # their objects KernelError, tried again with backoff, while the rest of the node converges.
        self.kernel_refusals = Refusals(clock)
        self.verdicts.kernel_refused = self.kernel_refusals.reason
        # Objects declared but unusable (invalid, unreadable): the kernel keeps what it has for
        # them, decided from the owners in the set comments, so it survives restarts (core.held).
        self.held = Held()
        self._held_vips: frozenset[str] = frozenset()  # where held owners have members (read at the last full sync)
        self._held_changed: set[str] = set()  # VIPs where what held owners keep changed: planned at the next reconcile
        self._shared_dirty = True
        self._force_full = False  # the next reconcile reads and plans the whole node (bench/kube_bench.py's baseline)
        self._cold = True  # no sync yet: the first one is planned in parts (`cold_chunk` VIPs each)
        self._unwanted: set[str] = set()  # the first part's: VIPs the kernel holds that no object wants here
        self._cold_deferred = False  # the last reconcile planned a change without a part of the first sync
        self._cold_parts_written = 0  # the first sync's parts written so far, and when it began (its last log line)
        self._cold_started = 0.0
        self.reads = 0  # full reads of the kernel
        self.aside_reads = 0  # those made aside (vsop.node.aside) and taken by a resync
        # A resync's read made off the lock while changes go on (vsop.node.aside): the one running,
        # the reader's own adapters (made in its thread at its first read), the read handed over.
        self._aside: Aside | None = None
        self._reader: Kernel | None = None
        self._aside_read: AsideRead | None = None
        self.last: Outcome | None = None

    def set_held(self, held: Held) -> None:
        """Owners declared but unusable now. When that changes and, before or after, some owner in
        the kernel is (or was) kept, the next reconcile plans the VIPs where the owners kept before
        or after have members, against the cache, like a change (a file being rewritten on a
        host of 10,000 services cost two whole-node plans, 60 s in the VM, before); when nothing
        in the kernel is kept either way (a host's new file not yet stable makes everything
        "unknown" for one poll, though every owner in the kernel is accounted for), nothing more."""
        # `known` (what the source accounts for) matters only while something is unreadable.
        def key(h: Held) -> tuple[Any, ...]:
            return (h.owners, h.unknown, h.known if h.unknown else frozenset())

        if key(held) != key(self.held) and self.observed is not None and (self.cache.kept_by(held) or self.cache.kept_by(self.held)):
            # The owners the cache keeps counted: counted again from every set member, they were most
            # of a rewritten file's two turns at 10k services (0.06 s each natively).
            state, programmed, present = self.cache.state, self.programmed, self.cache.present_owners()
            before = vips_of_held(state, self.held, self.names, programmed, present) if self.held else frozenset()
            self._held_vips = vips_of_held(state, held, self.names, programmed, present) if held else frozenset()
            self._held_changed |= before | self._held_vips
        self.held = held

    @property
    def pending(self) -> bool:
        return bool(self.declared.dirty) or self.observed is None or self.replanning

    @property
    def replanning(self) -> bool:
        """A resync found drift on more VIPs than one reconcile plans, or the first sync has parts
        left: call reconcile() again soon."""
        return bool(self.resyncing.replan) or bool(self.resyncing.cold)

    @property
    def cold(self) -> bool:
        """The first sync has VIPs left to plan (their objects are not programmed yet)."""
        return bool(self.resyncing.cold)

    def kept_owners(self) -> frozenset[str]:
        """The kernel owners kept as the kernel has them now (core.held.held_owners over the cached state)."""
        if not self.held or self.observed is None:
            return frozenset()
        return frozenset(ref for ref in self.cache.kept_by(self.held) if ref not in self.verdicts.programmed)

    def status(self) -> dict[str, Any]:
        last = self.last
        return {
            "objects": len(self.objects),
            "programmed": len(self.programmed),
            "reads": self.reads,
            "draining": len(self.draining.since),
            "last": None if last is None else {"full": last.full, "writes": last.writes, "seconds": round(last.seconds, 4), "error": last.error},
            "kernelRefused": self.kernel_refusals.reasons(),
        }

    # -- the resync's read made aside (vsop.node.aside) ---------------------------------------------------

    def begin_aside(self) -> Aside | None:
        """Between turns: a resync's read may now be made aside (`read_aside` in another thread);
        None when it cannot be (no reader, nothing read yet, or the next reconcile reads whole anyway)."""
        if self.kernel.reader is None or self.observed is None or self._force_full:
            return None
        self._aside = Aside()
        return self._aside

    def read_aside(self, aside: Aside) -> AsideRead:
        """In a thread of its own, beside the turns: the kernel through the reader's own adapters
        (their own netlink sockets: the turns' are not shared across threads), and its VIP index."""
        started = time.monotonic()
        if self._reader is None:
            assert self.kernel.reader is not None
            self._reader = self.kernel.reader()
        generation = self._reader.ipvs.generation()
        state = read_observed(self._reader, self.names)
        return AsideRead(aside, state, vip_index(state, self.names), time.monotonic() - started, generation)

    def hand_aside(self, read: AsideRead | None) -> None:
        """The read the next resync takes instead of reading under the lock (when still usable)."""
        self._aside_read = read

    def spoil_aside(self, why: str) -> None:
        if self._aside is not None:
            self._aside.spoil(why)

    def _take_aside(self) -> AsideRead | None:
        read, self._aside_read = self._aside_read, None
        aside, self._aside = self._aside, None
        if read is None or read.aside is not aside or aside.unusable:
            if read is not None:
                log.info("resync: the read made aside is not used, reading again why=%r", aside.unusable if aside is read.aside else "superseded")
            return None
        if self.kernel.ipvs.generation() != read.generation:
            log.info("resync: the read made aside is not used, reading again why=%r", "the IPVS tables were replaced during it (ip_vs reloaded)")
            return None
        return read

    # -- reconcile -----------------------------------------------------------------------------------

    def reconcile(self, *, full: bool = False) -> Outcome:
        """Incremental when possible; a whole plan first, after any failure or when what is held
        changed. `full`: a resync: read the kernel again and plan the VIPs where it differs from
        the cache (drift), at most `resync_chunk` of them now (see `replanning`)."""
        if self.observed is None or self._force_full:
            self._aside_read = self._aside = None
            # Before the first read, what is held decides nothing yet (both paths plan every VIP from it).
            outcome = self._cold_start() if self._cold and self.resyncing.cold_chunk else self._full()
        elif full:
            outcome = self._resync()
        else:
            outcome = self._incremental(Outcome(full=False), time.monotonic())
        self.last = outcome
        return outcome

    def _derive(self, addresses: frozenset[str]) -> set[str]:
        """Pending object changes derived (vsop.node.objects) and their verdicts judged again. Returns the VIPs to plan."""
        vips, judged = self.declared.derive(addresses)
        self.verdicts.judge(judged)
        return vips

    def _read(self, outcome: Outcome, started: float) -> KernelState | None:
        try:
            observed = read_observed(self.kernel, self.names)
        except (OperationFailed, KernelUnsupported, OSError) as exc:
            self.cache.drop()
            outcome.error = f"reading the kernel: {exc}"
            outcome.seconds = time.monotonic() - started
            return None
        self.reads += 1
        outcome.read_seconds = time.monotonic() - started
        return observed

    def _full(self) -> Outcome:
        started = time.monotonic()
        outcome = Outcome(full=True)
        observed = self._read(outcome, started)
        return outcome if observed is None else self._whole(outcome, observed, started)

    def _cold_start(self) -> Outcome:
        """The first sync, in parts: the kernel read whole, then the VIPs (declared, and vsop's found
        in the kernel: stale ones are removed) planned against the read like a resync's drift,
        `cold_chunk` per reconcile (`replanning` says more are due), each part deriving the objects
        on its VIPs first (all of them now when held owners keep something: what they keep is
        decided over every object), so changes and health verdicts are served between the parts.
        The first part plans the chains, jumps, set headers, link and sysctls with its VIPs (they
        are planned with any VIPs: core.fragments.around), before any VIP needs them, and adds
        only, as does every part until the objects are all derived (what the rest need is not
        known yet); within a VIP the plan orders the IPVS service before its accept-set member. A failure drops the cache: the next reconcile plans
        the whole node through vsop.node.whole.sync (the recovery path), as does a change of
        what is held that keeps something in the kernel."""
        started = time.monotonic()
        outcome = Outcome(full=True)
        observed = self._read(outcome, started)
        if observed is None:
            return outcome
        self._cold = self._force_full = False
        self._cold_parts_written, self._cold_started = 0, started
        addresses = frozenset(observed.node_addresses) | self.extra_node_addresses
        self.resyncing.reset()
        if self.held:
            # What held owners keep is decided over every object that would be programmed: all derived now.
            self.declared.dirty.update(self.objects.keys() | self.fragments.keys())
        else:
            # Each object is derived with its VIP's part (deriving them all took the first part 13.6 s
            # of its 13.7 s at 10k in the VM); until the last part, nothing shared is taken away
            # (core.fragments.with_shared_as_found).
            self.declared.defer_all()
        self._derive(addresses)
        outcome.objects = self.declared.derived
        self.cache.adopt(observed, True)
        # The VIPs where the kernel holds something of vsop's (set members, an address on its link, a
        # route) that no object wants here go with the first part. (VIPs with only someone else's
        # IPVS services, kube-proxy's, are planned in their turn: left alone.) A VIP an object not yet
        # derived declares goes in its own part.
        objects = self.objects
        wanted = {piece.vip for piece in self.fragments.values() if piece.programmed} | {objects[ref].spec.vip for ref in self.declared.deferred}
        self._unwanted = {vip for vip, entry in self.cache.index().items() if vip not in wanted and (entry[2] or entry[3] or entry[4])}
        self.resyncing.cold.update(self.declared.by_vip)
        self.resyncing.cold.update(self.cache.index())
        self.verdicts.programmed.clear()  # nothing is, before its VIP's part (each part judges its objects)
        self._shared_dirty = True
        if self.held:
            would = [ref for ref, piece in self.fragments.items() if piece.programmed]
            self._held_vips = vips_of_held(self.cache.state, self.held, self.names, would, self.cache.present_owners())
        else:
            self._held_vips = frozenset()
        outcome = self._incremental(outcome, started)
        if outcome.ok:
            outcome.touched = None  # every object is new to the sinks
        return outcome

    def _resync(self) -> Outcome:
        """The periodic level-based resync, in parts. Reads the whole kernel (the only part that
        costs what the node holds) and compares it with the cache: the VIPs where they differ
        (drift made by hand, or a cache gone wrong) are planned from the fresh read like a
        change, `resync_chunk` at a time, each part its own reconcile, so changes that arrive
        meanwhile are served between the parts (controller-runtime's resync queues every object
        behind the changes; kube-proxy's nftables proxier repairs what a partial sync missed).
        Drift in the chains, jumps or sysctls is planned with the first part (they are planned
        whole with any VIPs); when vsop's link or a set's header differs, the node is planned
        whole through vsop.node.whole.sync, as after a failure."""
        started = time.monotonic()
        outcome = Outcome(full=True)
        aside = self._take_aside()
        if aside is not None:
            # Read off the lock while changes went on: the VIPs they wrote meanwhile keep the cache's
            # entries (which hold those writes); they are compared at the next resync.
            fresh = splice(aside.state, aside.index, self.cache.state, self.cache.index(), aside.aside.written, self.names)
            self.aside_reads += 1
            self.kernel.ipvs.forget_reads()  # the cache now holds the reader's objects: the turns' copies go
            outcome.aside_seconds = aside.seconds
        else:
            fresh = self._read(outcome, started)
        if fresh is None:
            return outcome
        old = self.observed
        assert old is not None
        found = drift(fresh, old, self.names)
        if found is None:
            log.info("resync: vsop's link or sets differ from what vsop left, planning everything")
            return self._whole(outcome, fresh, started)
        vips, shared = found
        if vips or shared:
            log.info("resync: the kernel differs from what vsop left, planning the difference again vips=%d shared=%s", len(vips), shared)
            # What vsop believed those VIPs (and the chains, jumps and sysctls) held.
            self.resyncing.found(vips, shared, self.cache.before(vips))
            # Chains, jumps and sysctls are planned whole with any VIPs (core.fragments.around):
            # the next part plans them even when no VIP is due.
            self._shared_dirty = self._shared_dirty or shared
        self.cache.adopt(fresh, bool(vips))
        if vips and self.held:
            self._held_vips = vips_of_held(self.cache.state, self.held, self.names, self.programmed, self.cache.present_owners())
        self.resyncing.next_slice(self._audit_vips, self.declared.gone)
        return self._incremental(outcome, started)

    def _audit_vips(self) -> set[str]:
        """Every VIP an object declares or the cache holds (an entry nobody declares any more too)."""
        vips = set(self.declared.by_vip)
        if self.observed is not None:
            vips.update(self.cache.index())
        return vips

    def _whole(self, outcome: Outcome, observed: KernelState, started: float) -> Outcome:
        """Plan every object against a full read through vsop.node.whole.sync (`vsop apply`'s path)."""
        read_done = time.monotonic()
        self.spoil_aside("the whole node was planned")
        addresses = frozenset(observed.node_addresses) | self.extra_node_addresses
        # This is also the recovery path (after a failed write, a lost link or set): it trusts no
        # per-object state that a missed change may have left stale, and derives every object
        # again, dropping fragments whose object is gone (O(N), as the plan is anyway).
        self.declared.dirty.update(self.objects.keys() | self.fragments.keys())
        self._derive(addresses)
        outcome.objects = self.declared.derived
        desired = self.desired()
        expected = self.observed  # what vsop believes it left: a difference now is drift
        self.cache.drop()  # until the writes are known to have worked
        finishing_cold = self.cold  # the first sync had parts left: this plan finishes it
        self.resyncing.reset()
        written = self._write_whole(outcome, started, observed, desired, expected)
        if isinstance(written, Outcome):
            return written
        result, observed = written
        self.cache.whole(observed, result.applied)  # the reconciler's own copy: changed in place by each change
        if self.kernel_refusals:
            self.kernel_refusals.written(list(self.kernel_refusals.vips), families=True)
        self._shared_dirty = False
        verdicts = self.verdicts
        verdicts.plan_problems = verdicts.by_vip(result.plan.problems)
        verdicts.left_alone = set(result.plan.left_alone)
        verdicts.held_problems = {}
        verdicts.held_for((), desired.programmed, result.desired)
        verdicts.judge_all()  # the full path's cost is N anyway
        self._held_vips = vips_of_held(observed, self.held, self.names, self.programmed) if self.held else frozenset()
        self._force_full = False
        if finishing_cold:
            log.info("first sync complete: the parts left planned whole after a failed or refused write parts=%d seconds=%.3f",
                     self._cold_parts_written + 1, time.monotonic() - self._cold_started)
        outcome.plan, outcome.writes, outcome.applied = result.plan, outcome.writes + result.writes, [*outcome.applied, *result.applied]
        outcome.conntrack_failures = result.conntrack_failures
        outcome.repairs = result.repairs
        outcome.read_seconds, outcome.plan_seconds, outcome.execute_seconds = read_done - started, result.plan_seconds, result.execute_seconds
        outcome.seconds = time.monotonic() - started
        return outcome

    def _write_whole(
        self, outcome: Outcome, started: float, observed: KernelState, desired: Desired, expected: KernelState | None
    ) -> tuple[Any, KernelState] | Outcome:
        """The whole plan written through vsop.node.whole.sync, refused VIPs kept as found, each new
        refusal taking one more VIP (or IPv6) out (vsop.node.refusals.write_leaving_out). Returns the
        sync's result and the state it was planned from, or the outcome of a failure."""
        grace = grace_of(self.fragments.values())

        def write(state: KernelState, kept: frozenset[str], families: frozenset[int]) -> Any:
            def adjust(want: KernelState, have: KernelState) -> KernelState:
                drained = with_draining(want, have, self.draining, self.clock(), grace, self.names)
                return keep_as_found(drained, have, kept, families, self.names)

            return sync(self.kernel, (), self.node, names=self.names, observed=state, desired=desired, adjust=adjust, expected=expected,
                        held=self.held if self.held else None, keep_accept_ra=self.keep_accept_ra)

        try:
            done = write_leaving_out(self.kernel_refusals, self.declared.by_vip, observed, write, lambda: self._read(outcome, started), outcome)
        except (PlanError, KernelUnsupported, OperationFailed, OSError, ExecutionFailed, RuntimeError) as exc:
            return self._failed(outcome, started, str(exc), outcome.writes, outcome.applied)
        return outcome if done is None else done

    def _incremental(self, outcome: Outcome, started: float) -> Outcome:
        """Plan the VIPs that changed (and the next part of a resync's drift) against the cache."""
        turn = self._gather(outcome)
        if turn is None:  # the draining read failed: the next reconcile reads everything
            outcome.seconds = time.monotonic() - started
            return outcome
        # A resync that found no drift and no change: written nothing below, it skipped.
        quiet = outcome.full and not turn.changed and not turn.repairing and not self._shared_dirty
        if not turn.vips and not self._shared_dirty:
            outcome.touched = frozenset()
            outcome.skipped = outcome.full  # a resync that found nothing to do
            outcome.seconds = time.monotonic() - started
            return outcome
        # Held owners' VIPs are always planned with the change: keeping them (and the
        # chains of a family only they still use) is decided over what they hold.
        cut = frozenset(turn.vips) | (self._held_vips if self.held else frozenset())
        outcome.touched = frozenset(self.declared.on(cut))
        observed = self.cache.around(cut)
        try:
            want, the_plan = self._plan(cut, observed)
        except PlanError as exc:
            return self._failed(outcome, started, str(exc), 0, [])
        planned = time.monotonic()
        outcome.plan, outcome.vips = the_plan, len(cut)
        outcome.plan_seconds = planned - started
        self._judge_plan(outcome, turn, cut, the_plan)
        if the_plan.ops:
            failed = self._write(outcome, turn, cut, observed, want)
            if isinstance(failed, ExecutionFailed):
                return self._recover(outcome, started, failed)
            if failed is not None:
                return self._failed(outcome, started, *failed)
        if self.kernel_refusals and self.kernel_refusals.written(cut, families=True):
            self.verdicts.judge(outcome.touched or ())  # the objects of VIPs no longer refused
        self._shared_dirty = False
        self.resyncing.planned()
        if turn.cold and not self.resyncing.cold:
            log.info("first sync complete: every VIP planned in parts parts=%d seconds=%.3f", self._cold_parts_written + 1,
                     time.monotonic() - self._cold_started)
        elif turn.cold:
            self._cold_parts_written += 1
        if turn.stale:
            log.info("audit: re-derived from scratch, objects differed from what the incremental path kept objects=%s", ",".join(sorted(turn.stale)))
        outcome.skipped = quiet and not outcome.writes and not turn.stale
        outcome.execute_seconds = time.monotonic() - planned
        outcome.seconds = time.monotonic() - started
        return outcome

    def _gather(self, outcome: Outcome) -> _Turn | None:
        """The VIPs this reconcile plans: changed objects', this resync's audit slice, draining
        real servers', and the next part of a resync's drift. None: the draining read failed."""
        assert self.observed is not None
        # Node addresses as last read, plus the extra ones the source may have changed since.
        addresses = frozenset(self.observed.node_addresses) | self.extra_node_addresses
        vips = self._derive(addresses)
        outcome.objects = self.declared.derived
        turn = _Turn(changed=set(vips), vips=vips)
        resyncing = self.resyncing
        if resyncing.auditing or resyncing.orphans:
            turn.audit = resyncing.audit(self.declared, lambda: self._derive(addresses), self.verdicts.verdict, turn.stale, turn.verdicts)
            vips |= turn.audit
            outcome.objects += self.declared.derived
            outcome.audited = len(turn.audit)
        if self.draining.since:
            vips |= self.cache.refresh_draining(self.kernel, self.draining)
            if self.observed is None:
                return None
        if self.kernel_refusals:
            vips |= self.kernel_refusals.due_now(turn.changed, self.declared.by_vip)
        if self._held_changed:
            vips |= self._held_changed
            self._held_changed = set()
        turn.repairing = resyncing.take() if resyncing.replan else set()
        if turn.audit and resyncing.replan:  # drifted VIPs the audit plans now: repaired (and reported) as drift
            overlap = turn.audit & resyncing.replan
            resyncing.replan -= overlap
            turn.repairing |= overlap
        vips |= turn.repairing
        if resyncing.cold:
            vips |= self._unwanted  # the first part's (see _cold_start)
            self._unwanted = set()
            # A reconcile for a change plans the change alone (and whatever of the first sync it
            # covers), so it answers as in quiet time; the next reconcile takes the next part. Only
            # every other one: changes that never stop do not hold the first sync back.
            alone = bool(turn.changed) and not self._cold_deferred
            self._cold_deferred = alone
            turn.cold = resyncing.take_cold(vips, part=not alone)
            vips |= turn.cold
        if self.declared.deferred and self.declared.undefer(vips | (self._held_vips if self.held else frozenset())):
            # The first sync's objects on the VIPs planned now, derived before any of those VIPs is planned.
            vips |= self._derive(addresses)
            outcome.objects += self.declared.derived
        return turn

    def _plan(self, cut: frozenset[str], observed: KernelState) -> tuple[KernelState, Plan]:
        """The target of the VIPs in `cut` (their fragments and what every VIP shares) and its
        plan against `observed` (the cache cut around them): keep held -> draining -> plan."""
        pieces = self.declared.pieces(cut)
        want = assemble(self.shared(), pieces, cut)
        # The link stays while any VIP outside the cut is bound (one left alone as VIPInUse is not).
        # While the first sync has objects left to derive, their VIPs may be bound: a link there stays too.
        elsewhere = (bool(self.declared.deferred) and observed.link is not None) or any(
            vip not in cut and vip not in self.left_alone for vip in self.declared.bound_vips())
        want = replace(want, link=want.link if want.addresses or elsewhere else None)
        if self.declared.deferred:  # the first sync has objects left to derive: what they share is kept
            want = with_shared_as_found(want, observed, self.names)
        wanted = tuple(p.ref for p in pieces if p.programmed)
        kept, families = (self.kernel_refusals.kept() & cut, self.kernel_refusals.kept_families()) if self.kernel_refusals else (frozenset(), frozenset())

        def check(kept: Desired) -> None:
            if self.held:
                self.verdicts.held_for((piece.ref for piece in pieces), wanted, kept)

        def drain(state: KernelState, have: KernelState) -> KernelState:
            sub = Draining({k: v for k, v in self.draining.since.items() if k.service.vip in cut})
            counted, uncounted = self._counted(state, have, sub)
            state = with_draining(state, counted, sub, self.clock(), grace_of(pieces), self.names, uncounted)
            self.draining.since = {**{k: v for k, v in self.draining.since.items() if k.service.vip not in cut}, **sub.since}
            return keep_as_found(state, have, kept, families, self.names)

        target, the_plan = program(
            Desired(want, wanted), observed, self.names, held=self.held, drain=drain, check=check,
            link_elsewhere=elsewhere, keep_accept_ra=self.keep_accept_ra,
        )
        return target.state, the_plan

    def _counted(self, want: KernelState, have: KernelState, draining: Draining) -> tuple[KernelState, frozenset[ServiceKey]]:
        """`have` with the kernel's connection counters now for the services where a real server
        starts to drain: the cache's are those of the last read (up to a resync period old, none
        at all for a connection opened since), and a real server with established connections
        must drain, not go. Only those services' real servers are dumped. When the dump fails,
        those services come back as uncounted: their leaving real servers are taken as busy and
        go to weight 0, and the draining read of the next reconcile (every second while
        draining) deletes the idle ones."""
        services = starting_to_drain(want, have, draining, self.names)
        if not services:
            return have, frozenset()
        try:
            fresh = self.kernel.ipvs.read_real_servers(services)
        except (OperationFailed, OSError) as exc:
            log.warning("reading the connection counters of leaving real servers failed, draining them error=%r", str(exc))
            return have, services
        counted = {key: fresh.get(key, rs) for key, rs in have.real_servers.items()}
        return replace(have, real_servers=counted), frozenset()

    def _judge_plan(self, outcome: Outcome, turn: _Turn, cut: frozenset[str], the_plan: Plan) -> None:
        """The plan's verdicts for every object on the planned VIPs; `outcome.touched` cut down to
        the audited objects the audit changed something of."""
        assert outcome.touched is not None
        self.verdicts.planned(cut, the_plan.problems, the_plan.left_alone)
        self.verdicts.judge(outcome.touched)  # every object on the planned VIPs
        if turn.verdicts:
            # Audited objects are reported (status, events) only when the audit changed something
            # of theirs: a no-op audit re-judges nothing downstream.
            written = {vip for op in the_plan.ops if (vip := op_vip(op)) is not None}
            fragments = self.fragments
            outcome.touched = frozenset(
                ref for ref in outcome.touched
                if ref not in turn.verdicts or ref in turn.stale or self.verdicts.verdict(ref) != turn.verdicts[ref]
                or (ref in fragments and fragments[ref].vip in written)
            )

    def _write(
        self, outcome: Outcome, turn: _Turn, cut: frozenset[str], observed: KernelState, want: KernelState
    ) -> ExecutionFailed | tuple[str, int, list[ops.Op]] | None:
        """Execute the plan, report what it repaired, and apply its writes to the cache. Returns
        the refusal when the kernel refused an operation, (error, writes, applied) when the plan
        could not be executed at all."""
        try:
            outcome.writes, outcome.applied = execute(
                self.kernel, outcome.plan, self.names, observed=observed, conntrack_failures=outcome.conntrack_failures
            )
        except ExecutionFailed as exc:
            return exc
        except (KernelUnsupported, OperationFailed, OSError) as exc:
            return str(exc), 0, []
        resyncing = self.resyncing
        if (turn.repairing or resyncing.shared_drift) and resyncing.expected is not None:
            outcome.repairs = resyncing.report_repairs(outcome.applied, turn.repairing - turn.changed - turn.cold, observed, want)
        if turn.audit:
            found = resyncing.report_audit(outcome.applied, turn.audit - turn.changed - turn.repairing - turn.cold, observed, want)
            if found:
                outcome.repairs = [*outcome.repairs, *found]
        self.cache.written(cut, observed, outcome.applied)
        if self._aside is not None:
            self._aside.wrote(outcome.applied)
        return None

    def _recover(self, outcome: Outcome, started: float, exc: ExecutionFailed) -> Outcome:
        """A change's write the kernel refused: the kernel is read again and the whole node planned
        from it (the cache may have been stale), the refused VIP left out when the whole plan is
        refused too. A refused VIP tried again and refused again is left out at once."""
        outcome.writes, outcome.applied = exc.writes, list(exc.applied_ops)
        self.spoil_aside("a write was refused")
        vip = op_vip(exc.op)
        if vip in self.kernel_refusals.vips or (vip is None and self.kernel_refusals.families):  # a try again, refused again
            if self.kernel_refusals.refuse(exc.op, str(exc), self.kernel_refusals.kept(), self.kernel_refusals.kept_families(), self.declared.by_vip):
                outcome.refused[vip or "IPv6"] = str(exc)
        self.cache.drop()
        self._shared_dirty = True
        outcome.full, outcome.touched = True, None
        observed = self._read(outcome, started)
        return outcome if observed is None else self._whole(outcome, observed, started)

    def _failed(self, outcome: Outcome, started: float, error: str, writes: int, applied: list[ops.Op]) -> Outcome:
        """A refused, partial or impossible write: forget what we think the kernel holds."""
        self.spoil_aside("a write failed")
        self.cache.drop()
        self._shared_dirty = True
        outcome.error, outcome.writes, outcome.applied = error, writes, applied
        try:
            outcome.after = read_observed(self.kernel, self.names)
        except Exception as exc:  # noqa: BLE001 - a second failure must not hide the first
            log.warning("re-reading the kernel after a failure failed error=%r", str(exc))
        outcome.seconds = time.monotonic() - started
        log.error("kernel write failed; the next reconcile reads the kernel again error=%r writes=%d", error, writes)
        return outcome
