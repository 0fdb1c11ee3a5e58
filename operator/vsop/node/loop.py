"""The one turn both agents run around the node reconciler, and the loop that schedules it.

Owns, for the host agent (vsop.host.agent) and the in-cluster agent (vsop.kube.agent) alike:
wake-ups (`Trigger`: a change after a quiet spell at once, bursts coalesced), the host's
writer lock (`WriterLock`: held per turn; after another writer held it the turn reads the
kernel first), feeding the reconciler what a source took (`Feed`), the health targets
(every configured real server of an object with a health check, except those draining
away) and the probes that follow them, the keepalived writer after a good sync only,
the node metrics of each reconcile, and the schedule (`NodeLoop.run`): a periodic full
resync whatever changes happen meanwhile, the next part at once while a resync's drift
is left to plan, a turn every second while real servers drain, retries after a failure, and
the guard around each turn: a turn that raises (a netlink, ipset or iptables read that failed,
a tool that timed out, the lock file) is logged, counted (`vsop_errors{source="turn"}`) and
retried with backoff; the loop itself never dies of it, and liveness (`Probes`) is told of
turns that completed only; and the order an `announce: bgp` object leaves in
(vsop.node.withdraw: its route first, its IPVS services after its drain).
An agent keeps only its source (what changed, handed over as a `Feed`) and its sink (what
a turn did, reported): it plugs them in as a `Driver`.
Must not import: vsop.host, vsop.kube, vsop.cli, kopf, kubernetes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Protocol, TypeVar

from vsop.api.model import VirtualService
from vsop.core.desired import Endpoint, Node, Problem
from vsop.core.fragments import serves
from vsop.core.health import HealthTracker
from vsop.core.held import Held
from vsop.core.state import Names, RealServerKey
from vsop.node.lock import LockTimeout, stamp, writer_lock
from vsop.node.logs import kv
from vsop.node.remember import RememberFile
from vsop.node.probes import HealthChecker, Target
from vsop.node.wake import Trigger
from vsop.node.withdraw import Withdrawals
from vsop.node.reconciler import Outcome, Reconciler

if TYPE_CHECKING:  # the metrics' module imports prometheus_client: only when an agent serves them
    from vsop.node.metrics import NodeMetrics, Probes

log = logging.getLogger("vsop.node.loop")

T = TypeVar("T")
DRAIN_SECONDS = 1.0  # while real servers drain, a turn at least this often: a drained one goes promptly


def turn_backoff(first: float, raised: int, most: float) -> float:
    """Seconds before the next try after `raised` turns in a row raised: `first`, doubling, at most `most`
    (the resync period: a loop whose turns keep raising still tries once a period)."""
    return min(max(most, first), first * 2 ** min(raised - 1, 16))


# --- the writer lock -----------------------------------------------------------------------------


class WriterLock:
    """The host's writer lock (vsop.node.lock), held during each turn when there is one.

    After another writer (`vsop apply`, `delete`) held it since our last release (its stamp
    changed), or when waiting for it took a while (its holder's sleep between tries is 50 ms),
    the turn must read the whole kernel first: `hold` says so."""

    def __init__(self, path: Path | None, wait_seconds: float = 60.0, on_wait: Callable[[str], None] | None = None):
        self.path = path
        self.wait_seconds = wait_seconds
        self.on_wait = on_wait
        self._stamp = stamp(path)  # after our last release: a later change is another writer's

    @contextlib.contextmanager
    def hold(self) -> Iterator[bool]:
        """Held until the block ends; yields whether another writer held it meanwhile. LockTimeout: not taken."""
        if self.path is None:
            yield False
            return
        others = stamp(self.path) != self._stamp
        with writer_lock(self.path, self.wait_seconds, on_wait=self.on_wait) as waited:
            yield others or waited >= 0.05
        self._stamp = stamp(self.path)


# --- one turn ------------------------------------------------------------------------------------


def vrrp_serving(reconciler: Reconciler, services: Iterable[VirtualService]) -> dict[str, bool]:
    """ref -> whether this node should hold its VIP, for each ipvs-mode object announced by VRRP:
    programmed as declared, a real server taking new connections, the node not being drained."""
    return {
        vs.ref: reconciler.announcing and vs.ref in reconciler.programmed
        and serves(reconciler.fragments.get(vs.ref), reconciler.out_of_service)
        for vs in services
        if vs.spec.mode == "ipvs" and vs.spec.announce == "vrrp"
    }


class KeepalivedWriter(Protocol):
    """What the loop asks of the keepalived writer (vsop.keepalived.writer, injected by the agents)."""

    last_error: dict[str, Any]

    def wanted(self, services: Iterable[VirtualService]) -> bool: ...

    def can_keep(self) -> bool: ...

    def announced(self) -> Mapping[str, str]: ...

    def update(self, services: Iterable[VirtualService], node: Node | None = None, endpoints: Mapping[tuple[str, str], Iterable[Endpoint]] | None = None,
               names: Names = ..., keep: Iterable[str] = (), node_addresses: Iterable[str] | None = None,
               serving: Mapping[str, bool] | None = None) -> Any: ...


@dataclass
class KeepalivedInput:
    """What keepalived is rendered from after a good sync: the source's usable objects, and for
    held ones their last good definitions (`stand_ins`; `complete`: every held object has one)."""

    services: list[VirtualService]
    stand_ins: list[VirtualService] = field(default_factory=list)
    complete: bool = True
    endpoints: Mapping[tuple[str, str], Any] | None = None
    node: Node | None = None
    prepare: Callable[[], None] | None = None  # right before a render (the in-cluster agent's optional password file)


@dataclass
class Feed:
    """What a source hands the reconciler for one turn: only what changed (ref -> object, None: gone)."""

    changed: Mapping[str, VirtualService | None] = field(default_factory=dict)
    order: Mapping[str, Any] | None = None
    held: Held = field(default_factory=Held)
    out_of_service: frozenset[RealServerKey] = frozenset()  # besides what this node's checks took out
    endpoints: Mapping[tuple[str, str], tuple[Endpoint, ...] | None] | None = None
    node: Node | None = None
    extra_addresses: tuple[str, ...] | None = None
    reserved: Mapping[str, str] | None = None
    refusals: Mapping[str, Problem] | None = None  # every object refused its claim (vsop.core.claims.admit); None: as before
    keepalived: KeepalivedInput | None = None
    announcing: bool | None = None  # False while the node is drained: no VIP announced (BGP route, VRRP track file); None: as before


@dataclass
class KeepalivedResult:
    outcome: Any = None  # the writer's Outcome (changed, reloaded, error)
    error: str | None = None  # not written at all (the writer reports its own failures in `outcome`)


@dataclass
class Turn:
    """What one turn did: `outcome` None when the writer lock was not taken (`skipped` says why)."""

    full: bool
    started: float
    outcome: Outcome | None = None
    feed: Feed | None = None
    keepalived: KeepalivedResult | None = None
    skipped: str | None = None
    report: Any = None  # what the driver's `after` hook made of it

    @property
    def ok(self) -> bool:
        return self.outcome is not None and self.outcome.error is None


def health_targets(checked: Mapping[str, VirtualService], reconciler: Reconciler) -> set[Target]:
    """Every configured real server of an object with a health check (`checked`), in service or
    not (so a failed one can come back), except those draining away. Costs the checked objects."""
    targets: set[Target] = set()
    for ref, vs in checked.items():
        targets.update(targets_of(ref, vs, reconciler))
    return targets


def targets_of(ref: str, vs: VirtualService | None, reconciler: Reconciler) -> tuple[Target, ...]:
    """`health_targets` of one object (`vs` None: not checked, none), each once, in the order of its
    configured real servers. A tuple, not a frozenset: the node loop keeps one per checked object, and
    a frozenset of two is 216 bytes against a tuple's 56 (1.5 MB at 10,000 objects, bench/agent_memory.py)."""
    if vs is None:
        return ()
    piece = reconciler.fragments.get(ref)
    configured, draining = reconciler.configured, reconciler.draining.since
    return tuple(Target(key, vs.spec.health_check) for key in (piece.configured_keys if piece is not None else ())
                 if configured.get(key) == ref and key not in draining)


def same(new: tuple[Target, ...], old: tuple[Target, ...] | None) -> tuple[Target, ...]:
    """`old` when it holds the same targets as `new`: the followers (the checker, the status file) hold
    the objects they were given, and a resync that re-derived every target would otherwise leave two
    equal objects of each behind (0.9 MB at 10,000 checked objects, bench/agent_memory.py)."""
    return old if old is not None and old == new else new


class Driver(Protocol):
    """An agent as the loop drives it: its source and sink around `NodeLoop.turn`."""

    async def turn(self, full: bool, reasons: set[str]) -> bool:
        """One turn (taking the source's changes, `NodeLoop.turn`, reporting); True: a good sync."""

    def probe_targets(self) -> set[Target]:
        """The health targets this node's checker probes (after each turn)."""

    def probe_changes(self) -> tuple[set[Target], set[Target]] | None:
        """The probe targets added and removed since the checker last followed them (after each
        turn); None: the checker follows `probe_targets()` whole."""

    def flush_due(self) -> float | None:
        """When the sink's batched report is due (monotonic), if one is."""

    async def flush(self) -> None:
        """Write the batched report."""


class NodeLoop:
    """One node's turn (`turn`, blocking) and its schedule (`run`). One turn at a time."""

    def __init__(
        self,
        reconciler: Reconciler,
        tracker: HealthTracker,
        *,
        lock: WriterLock | None = None,
        keepalived: KeepalivedWriter | None = None,
        metrics: NodeMetrics | None = None,
        resync_seconds: float = 30.0,
        debounce_seconds: float = 0.1,
        retry: Callable[[int], float] = lambda failures: 5.0,
        settle: bool = False,
        keep_probing_held: bool = False,
        clock: Callable[[], float] = time.monotonic,
        remember: RememberFile | None = None,
    ):
        self.reconciler = reconciler
        self.tracker = tracker
        self.lock = lock or WriterLock(None)
        self.keepalived = keepalived
        self.metrics = metrics
        self.probes: Probes | None = None  # liveness, when an agent serves it
        self.resync_seconds = resync_seconds
        self.debounce_seconds = debounce_seconds
        self.retry = retry  # seconds until the next try after this many failed turns in a row
        # settle: every woken turn first waits debounce_seconds, gathering what the source sees
        # over a few polls (the host's folder); else the trigger's least time between turns.
        self.settle = settle
        # While something is held (a file being rewritten, unreadable), keep probing what was
        # probed: its health state must survive the blip, or a dead real server would return.
        self.keep_probing_held = keep_probing_held
        self.clock = clock
        # Health verdicts and drains kept across restarts (/run/vsop/state.json): a real server
        # checks took out starts out, and a drain keeps its age.
        self.remember = remember
        self.trigger = Trigger()
        self.withdrawals = Withdrawals()  # announce: bgp objects gone from the source, removed after their drain
        self.checked: dict[str, VirtualService] = {}  # objects with a health check, as the reconciler has them
        # The health targets, kept per object and changed per turn by what the turn touched: a
        # health flip at 10k checked objects must not cost the 20,000 targets (it cost 16 s of the
        # 20 s from a dead backend to weight 0 in the VM). `target_changes`: per follower (the
        # checker, the host's status file), what changed since it last took them; None: whole.
        self.targets: set[Target] = set()
        self.targets_by_ref: dict[str, tuple[Target, ...]] = {}
        self.target_changes: dict[str, tuple[set[Target], set[Target]] | None] = {}
        # Per follower, the objects whose targets changed since it last took them (None: all), for
        # what is derived per object from `targets_by_ref` (the in-cluster agent's checker roles): a
        # real server passing between two objects in one turn changes no target, yet its owner.
        self.ref_changes: dict[str, set[str] | None] = {}
        self.draining_keys: frozenset[RealServerKey] = frozenset()
        # Targets no object has any more, kept probing while something is held (keep_probing_held):
        # `targets` is the union of `targets_by_ref` and these, which go once nothing is held.
        self.held_targets: set[Target] = set()
        self.fed: set[str] = set()  # the objects the last feed changed (withdrawals' stand-ins included)
        self.checker: HealthChecker | None = None
        self.busy = False  # a turn is running
        self.full = False  # the running (or last) turn is a full resync
        self.turns = 0  # turns finished
        self.failed_turns = 0  # turns that raised (logged, counted, retried with backoff)
        self.last_failure: str | None = None  # what the last turn that raised said; None once one completes
        self._executor: ThreadPoolExecutor | None = None
        # A resync's kernel read running aside (vsop.node.aside): its result when it ends.
        self._reading: asyncio.Future[Any] | None = None

    # -- one turn (blocking: adapters talk to the kernel) --

    def turn(self, full: bool, take: Callable[[bool], Feed], after: Callable[[Turn], Any] | None = None) -> Turn:
        """Under the writer lock: `take(others)` the source's changes (`others`: another writer held the
        lock meanwhile), feed them to the reconciler, reconcile (`full`: a resync, or forced by another
        writer), then keepalived after a good sync, the health targets, and `after(turn)` (the sink's
        part that must see the reconciler as this turn left it)."""
        turn = Turn(full=full, started=time.monotonic())
        try:
            with self.lock.hold() as others:
                if others:  # what another writer wrote may be missing from a read made aside
                    self.reconciler.spoil_aside("another writer held the lock")
                turn.full = full or others
                turn.feed = feed = take(others)
                self.feed(feed)
                turn.outcome = outcome = self.reconciler.reconcile(full=turn.full)
                if self.remember is not None:
                    self.remember.save(self.tracker.noted(), self.reconciler.draining.since, time.time(), time.monotonic())
                if self.metrics is not None:
                    self.metrics.record(outcome, self.reconciler)
                if outcome.error is None and feed.keepalived is not None:
                    turn.keepalived = self._keepalived(feed.keepalived)
                    if self.metrics is not None and self.keepalived is not None:
                        self.metrics.record_announced(self.keepalived.announced())
                self._follow_targets(turn, feed, outcome)
                if after is not None:
                    turn.report = after(turn)
        except LockTimeout as exc:
            turn.skipped = str(exc)
        return turn

    def _follow_targets(self, turn: Turn, feed: Feed, outcome: Outcome) -> None:
        """The health targets after this turn: those of the objects it changed or touched, and of
        real servers that started or ended draining; all of them after a whole or failed reconcile.
        A periodic resync is followed like a change: it re-derives no object, and the VIPs it
        plans (drift, its audit) are in `touched` (rebuilding all 20,000 targets of 10k checked
        objects at each resync cost 0.11 s natively, in the turn's thread).
        While something is held (keep_probing_held), a target no object has any more is kept
        probing (`held_targets`): a file being rewritten is gone from the source meanwhile, and its
        real servers' health must survive the blip; once nothing is held, those go. A held file
        changes the targets of the objects its turn fed or touched only: rebuilt whole around one,
        the 20,000 targets of 10k checked objects were 0.1-0.35 s of the 0.2-0.46 s from a file
        taken to the end of its turn (natively; twice per changed file). Followers are handed what
        changed even after a whole rebuild: handed 20,000 targets whole, the checker compared them
        on the event loop at every resync (0.1-0.15 s natively)."""
        draining = self.reconciler.draining.since
        keep = self.keep_probing_held and bool(feed.held)
        if outcome.touched is None or outcome.error is not None:
            before, kept = self.targets, self.targets_by_ref
            self.targets_by_ref = {ref: same(targets_of(ref, vs, self.reconciler), kept.get(ref)) for ref, vs in self.checked.items()}
            targets = set().union(*self.targets_by_ref.values())
            self.held_targets = before - targets if keep else set()
            self.targets = targets | self.held_targets
            self._hand_over(self.targets - before, before - self.targets)
            self.ref_changes = {follower: None for follower in self.ref_changes}
            self.draining_keys = frozenset(draining)
            return
        refs = set(outcome.touched) | self.fed
        if draining.keys() != self.draining_keys:
            moved = self.draining_keys.symmetric_difference(draining)
            refs.update(ref for key in moved if (ref := self.reconciler.configured.get(key)) is not None)
            self.draining_keys = frozenset(draining)
        # Differenced over all the refs at once: a real server moving between two objects in one turn
        # (the same VIP:port, one gone and the other programmed in its place) is one Target on both
        # sides, which a per-ref difference would add for one and then remove for the other.
        before: set[Target] = set()
        after: set[Target] = set()
        changed: set[str] = set()
        for ref in refs:
            old = self.targets_by_ref.pop(ref, ())
            new = same(targets_of(ref, self.checked.get(ref), self.reconciler), old)
            before.update(old)
            if new:
                self.targets_by_ref[ref] = new
                after.update(new)
            if new != old and set(new) != set(old):  # the same targets in another order are no change
                changed.add(ref)
        for refs_changed in self.ref_changes.values():
            if refs_changed is not None:
                refs_changed |= changed
        added, removed = after - before, before - after
        held = self.held_targets
        if held:
            added -= held  # probed all along: an object has it again
            held -= after
        if keep:
            held |= removed  # no object has it now: probed on while something is held
            removed = set()
        elif held:
            removed |= held
            held.clear()
        if not added and not removed:
            return
        self.targets -= removed
        self.targets |= added
        self._hand_over(added, removed)

    def _hand_over(self, added: set[Target], removed: set[Target]) -> None:
        """What the followers (take_target_changes) are handed: these added and removed since they last took them."""
        for changes in self.target_changes.values():
            if changes is not None:
                changes[0].difference_update(removed)
                changes[0].update(added)
                changes[1].difference_update(added)
                changes[1].update(removed)

    def take_target_changes(self, follower: str) -> tuple[set[Target], set[Target]] | None:
        """The targets added and removed since `follower` last took them; None: follow `targets` whole
        (its first look, or the targets were rebuilt)."""
        changes = self.target_changes.get(follower)
        self.target_changes[follower] = (set(), set())
        return changes

    def take_ref_changes(self, follower: str) -> set[str] | None:
        """The objects whose targets (`targets_by_ref`) changed since `follower` last took them; None:
        all of them (its first look, or the targets were rebuilt)."""
        changes = self.ref_changes.get(follower)
        self.ref_changes[follower] = set()
        return changes

    def feed(self, feed: Feed) -> None:
        reconciler = self.reconciler
        now = self.clock()
        # An announce: bgp object that is gone is withdrawn first and removed after its drain.
        changed = self.withdrawals.intercept(feed.changed, reconciler.objects, now) | self.withdrawals.expired(now)
        reconciler.update_objects(changed, order=feed.order)
        self.fed = set(changed)
        for ref, vs in changed.items():
            if vs is not None and vs.spec.health_check.type != "none":
                self.checked[ref] = vs
            else:
                self.checked.pop(ref, None)
        if feed.endpoints:
            reconciler.update_endpoints(feed.endpoints)
        if feed.node is not None:
            reconciler.set_node(feed.node, feed.extra_addresses)
        if feed.reserved is not None:
            reconciler.set_reserved(feed.reserved)
        if feed.refusals is not None:
            reconciler.set_refusals(feed.refusals)
        if feed.announcing is not None:
            reconciler.set_announcing(feed.announcing)
        reconciler.set_out_of_service(self.tracker.out_of_service() | feed.out_of_service)
        reconciler.set_held(feed.held)

    def _keepalived(self, given: KeepalivedInput) -> KeepalivedResult | None:
        """After a good sync: keepalived's configuration for this node, when it is in use.

        keepalived is configured from definitions: held objects render from their last good ones
        (stand-ins); those with none keep their live sections (confd layout), as the kernel keeps
        their state (core.held), while the rest is updated. Objects refused for a held owner's
        ports, and those refused their claim (vsop.core.claims), are left out, as in the kernel."""
        writer, reconciler = self.keepalived, self.reconciler
        if writer is None or not writer.wanted([*given.services, *given.stand_ins]):
            return None
        kept = reconciler.kept_owners()
        keep = sorted(kept - {vs.ref for vs in given.stand_ins}) if writer.can_keep() else []
        if not given.complete and not writer.can_keep():
            log.info("keepalived configuration (layout single) left as it is while objects are held objects=%s", sorted(reconciler.held.owners) or "unknown")
            return None
        usable = {vs.ref for vs in given.services}
        services = [vs for vs in given.services + [s for s in given.stand_ins if s.ref not in usable] if vs.ref not in reconciler.held_problems and vs.ref not in reconciler.refusals]
        if not writer.wanted(services):
            return None
        if given.prepare is not None:
            given.prepare()
        observed = reconciler.observed
        addresses = (observed.node_addresses if observed is not None else frozenset()) | reconciler.extra_node_addresses
        try:
            return KeepalivedResult(writer.update(services, node=given.node or reconciler.node, endpoints=given.endpoints,
                                                  names=reconciler.names, keep=keep, node_addresses=addresses,
                                                  serving=vrrp_serving(reconciler, services)))
        except OSError as exc:  # the writer reports its own failures; this is a last resort
            log.error("keepalived configuration not written error=%r", str(exc))
            writer.last_error = {"at": time.time(), "stage": "write", "message": str(exc)}
            return KeepalivedResult(error=str(exc))

    # -- the schedule --

    async def blocking(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in the turns' thread (one at a time, in order)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vsop-sync")
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    @property
    def change_turn(self) -> bool:
        """A turn for a change is wanted or running (a periodic full resync is not counted)."""
        return self.trigger.pending or (self.busy and not self.full)

    async def run(self, driver: Driver, stop: asyncio.Event | None = None) -> None:
        """Turns until `stop` (or cancelled): woken by the trigger, at least every resync period."""
        if self.remember is not None:
            self.recall(self.remember)
        self.checker = HealthChecker(self.tracker, lambda: self.trigger.wake("health check result changed"))
        if self.metrics is not None:
            self.metrics.watch_health(self.checker)
        watcher = asyncio.create_task(self._wake_on(stop)) if stop is not None else None
        try:
            await self._turns(driver, stop)
        finally:
            log.debug("stopping: no turn running")
            if watcher is not None:
                watcher.cancel()
            await self.checker.stop()
            log.debug("stopping: health checks stopped")
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def recall(self, remember: RememberFile) -> None:
        """What the previous agent knew: its verdicts (and counters) and its drains' start times."""
        remembered = remember.load(time.time(), time.monotonic())
        for key, state in remembered.health.items():
            self.tracker.restore(key, state)
        for key, since in remembered.draining_since.items():
            self.reconciler.draining.since.setdefault(key, since)
        down = sum(1 for state in remembered.health.values() if not state.healthy)
        if remembered.health or remembered.draining_since:
            log.info("recalled the previous agent's health verdicts and drains file=%s real_servers=%d out_of_service=%d draining=%d",
                     remember.path, len(remembered.health), down, len(remembered.draining_since))

    def _failed(self, exc: Exception, raised: int) -> None:
        """A turn raised: say so (the traceback with the first of a run), count it; the schedule retries."""
        self.failed_turns += 1
        self.last_failure = f"{type(exc).__name__}: {exc}"
        retry = turn_backoff(self.retry(1), raised, self.resync_seconds)
        log.error(kv("Turn failed, will retry", error=str(exc), errorType=type(exc).__name__, failedInARow=raised,
                     failedTurns=self.failed_turns, retryInSeconds=retry), exc_info=raised == 1)
        if self.metrics is not None:
            self.metrics.errors.labels("turn").inc()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.trigger.event.set()

    async def _turns(self, driver: Driver, stop: asyncio.Event | None) -> None:
        next_full = -math.inf  # the periodic full resync, whatever changes happen meanwhile
        next_turn = -math.inf
        failures = 0
        raised = 0  # turns in a row that raised
        while stop is None or not stop.is_set():
            now = self.clock()
            timeout = max(0.0, next_turn - now)
            draining = bool(self.reconciler.draining.since)
            if draining:
                timeout = min(timeout, DRAIN_SECONDS)
            removal = self.withdrawals.next_due()
            if removal is not None:
                timeout = min(timeout, max(0.0, removal - now))
            due = driver.flush_due()
            if due is not None:
                timeout = min(timeout, max(0.0, due - now))
            await self.trigger.wait(timeout, 0.0 if self.settle else self.debounce_seconds)
            if stop is not None and stop.is_set():
                break
            now = self.clock()
            replanning = self.reconciler.replanning  # a resync's drift left to plan: its next part goes first
            if due is not None and now >= due and not self.trigger.pending and not replanning:  # a change goes first
                await driver.flush()
                removing = removal is not None and now >= removal
                if not self.trigger.pending and now < next_turn and not draining and not replanning and not removing:
                    continue  # woken for the sink only
            if self.settle and self.trigger.pending:
                await asyncio.sleep(self.debounce_seconds)  # gather a burst of changes into one turn
            self.full = self._resync_due(self.clock() >= next_full)
            if self._reading is not None and not self.trigger.pending and not self.reconciler.replanning:
                # The resync's read runs aside and no change waits: no turn until one comes or the read ends.
                next_turn = self.clock() + self.resync_seconds
                continue
            reasons = self.trigger.take()
            self.busy = True
            cold = self.reconciler.cold  # the first sync has parts left (this turn plans one)
            try:
                ok = await driver.turn(self.full, reasons)
            except Exception as exc:  # noqa: BLE001 - whatever a turn raises, the node keeps its loop
                ok, raised = False, raised + 1
                self._failed(exc, raised)
            else:
                raised, self.last_failure = 0, None
                if self.probes is not None:
                    self.probes.turned()  # liveness: a turn ran to its end (a refused write included)
            finally:
                self.busy = False
                self.turns += 1
            failures = 0 if ok else failures + 1
            now = self.clock()
            if ok and (self.full or cold):
                # The period counts from the first sync's last part, as from a whole first sync: it
                # read the kernel and planned every VIP, so no resync runs beside its parts (a read
                # aside there shared the CPU with the parts' writes and re-derived an audit slice).
                next_full = now + self.resync_seconds
            # A failed turn is retried after `retry`, as a full one (its resync is not done): not at
            # once, or a kernel that keeps refusing a write would be read and written in a tight loop.
            # A turn that raised backs off further, doubling up to the resync period.
            if ok:
                # While a resync's read runs aside, its end (not the period) wakes the resync.
                next_turn = min(next_full if self._reading is None else math.inf, now + self.resync_seconds)
            else:
                next_turn = now + (turn_backoff(self.retry(1), raised, self.resync_seconds) if raised else self.retry(failures))
            retry = self.reconciler.retry_in() if ok else None
            if retry is not None:  # a VIP the kernel refused is tried again with backoff (vsop.node.refusals)
                next_turn = min(next_turn, now + retry)
            if ok and self.reconciler.replanning:
                # The resync found drift on more VIPs than one turn plans: the next part at once,
                # with whatever changed meanwhile (a change never waits for all of it).
                next_turn = now
            self._follow_probes(driver)

    def _resync_due(self, due: bool) -> bool:
        """Whether this turn is the resync. When one falls due and the reconciler can read aside, its read
        starts in a thread of its own and this turn serves changes only; the turn after the read ended is
        the resync, planned from that read (vsop.node.aside). A read that failed: the resync reads itself."""
        reading = self._reading
        if reading is not None:
            if not reading.done():
                return False
            self._reading = None
            try:
                self.reconciler.hand_aside(reading.result())
            except Exception as exc:  # noqa: BLE001 - the resync reads under the lock instead, and says why if that fails too
                log.warning(kv("Resync read aside failed; reading under the lock", error=str(exc), errorType=type(exc).__name__))
                self.reconciler.hand_aside(None)
            return True
        if not due:
            return False
        aside = self.reconciler.begin_aside()
        if aside is None:
            return True
        self._reading = _in_thread(self.reconciler.read_aside, aside)
        self._reading.add_done_callback(lambda _: self.trigger.wake("resync read"))
        return False

    def _follow_probes(self, driver: Driver) -> None:
        """The checker follows the driver's targets: by what changed (the host agent: the turns' own
        changes; the in-cluster agent: its roles', vsop.kube.checkers), whole when the driver says none."""
        assert self.checker is not None
        changes = driver.probe_changes()
        if changes is not None:
            self.checker.change(*changes)
        else:
            self.checker.update(driver.probe_targets())


def _in_thread(function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """`function(*args)` in a daemon thread of its own, as a future of the running loop. A daemon, so
    that a stop never waits for a read still running (its result is dropped with the loop)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result, error = function(*args), None
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which decides
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="vsop-resync-read", daemon=True).start()
    return future
