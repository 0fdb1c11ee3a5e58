"""`vsop agent`: keep the host store (or `--from DIR`, any folder) true on this host's kernel.

Owns the host agent's source and sink around the node's turn (vsop.node.loop, the same
one the in-cluster agent drives): the folder (vsop.host.folder), polled by a task of its
own and read again under the writer lock at each turn, handed over as what changed, and
what cannot be used now (invalid, unreadable, being rewritten) as `held` (the kernel keeps
what it has for it, core.held, also right after a restart); and the status file for `vsop
show` (vsop.host.status_file), written after a turn at most every --status-seconds.
The poll task's walks of the folder run in daemon threads (`off_loop`), never on the event
loop: a walk that takes long (a huge folder, a hung network mount) holds up neither health
checks nor SIGTERM, which stops the agent without waiting for it.
The loop owns the rest: the writer lock (so `vsop apply` / `delete` and the agent take turns
and the agent never undoes what a command just did), health checks, draining, the periodic
full resync every --resync-seconds that repairs drift, keepalived after a good sync
(objects with `mode: keepalived`; the IPVS services keepalived creates are delegated in
the desired state, so the sync leaves them alone), and the metrics `--metrics-port` serves.
It removes nothing on SIGTERM, so the dataplane keeps serving while the agent restarts,
and a restart with unchanged files writes nothing.
Must not import: vsop.kube, vsop.cli, kopf, kubernetes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, TypeVar

from vsop.adapters.conntrack import ConntrackCleaner
from vsop.bgp.writer import BirdAnnouncer
from vsop.api.model import VirtualService
from vsop.core.claims import HOST_RULE, ClaimRule
from vsop.core.desired import Node, Problem
from vsop.core.health import HealthTracker
from vsop.core.state import Names
from vsop.host.folder import FolderSource
from vsop.host.store import remove_stale_temporaries, store_path
from vsop.host.status_file import StatusDocument
from vsop.keepalived.writer import KeepalivedWriter
from vsop.node import heap
from vsop.adapters.kernel import Kernel, conntrack_tcp_liberal, running_kernel_version
from vsop.node.remember import RememberFile
from vsop.node.lock import LockTimeout
from vsop.node.loop import Feed, KeepalivedInput, NodeLoop, Turn, WriterLock
from vsop.node.probes import Target
from vsop.node.reconciler import Outcome, Reconciler

if TYPE_CHECKING:  # imported when --metrics-port asks for it: aiohttp and prometheus_client are 12 MB of RSS
    from vsop.node.metrics import NodeMetrics, Probes

log = logging.getLogger("vsop.agent")

DEFAULT_STATUS_FILE = Path("/run/vsop/agent.json")
T = TypeVar("T")


class FolderBusy(LockTimeout):
    """The agent is stopping and a walk of the folder still holds it: the turn or status write is skipped."""


@dataclass
class AgentConfig:
    directory: Path
    node: Node
    names: Names = field(default_factory=Names)
    resync_seconds: float = 30.0
    poll_seconds: float = 1.0
    debounce_seconds: float = 0.1
    retry_seconds: float = 5.0
    status_file: Path | None = DEFAULT_STATUS_FILE
    state_file: Path | None = None  # health verdicts and drains kept across restarts (vsop.node.remember); None: none
    lock: Path | None = None  # the writer lock held during each sync; None: no lock (tests on fakes)
    lock_wait_seconds: float = 60.0  # a sync gives up after this and is retried
    keep_accept_ra: bool = False  # refuse IPv6 VIPs that would need accept_ra changed (as apply --keep-accept-ra)
    sweep_seconds: float = 0.0  # every file stat-ed this often (0: every poll); see FolderSource (vsop agent: 5)
    status_seconds: float = 1.0  # the running agent rewrites the status file at most this often
    claims: ClaimRule = HOST_RULE  # who may claim which VIP (--vip-policy, --allow-vip; vsop.core.claims)


class HostAgent:
    """The host's source (the folder) and sink (the status file) around the node's turn (vsop.node.loop)."""

    def __init__(
        self,
        kernel: Kernel,
        config: AgentConfig,
        conntrack: ConntrackCleaner,
        clock: Callable[[], float] = time.monotonic,
        keepalived: KeepalivedWriter | None = None,
        metrics: NodeMetrics | None = None,
        bird: BirdAnnouncer | None = None,
    ):
        self.kernel = kernel
        self.config = config
        self.conntrack = conntrack
        kernel.conntrack = conntrack  # the engine forgets removed UDP real servers' entries
        self.clock = clock
        self.source = FolderSource(config.directory, settle_seconds=config.poll_seconds, sweep_seconds=config.sweep_seconds)
        self.source_guard = threading.Lock()  # the poll task and the sync thread both read the folder
        self.stopping = threading.Event()  # SIGTERM: nothing waits for the guard any more (see guarded)
        self.tracker = HealthTracker(track_changes=True)  # the status file re-renders the changed real servers
        self.kernel_version = running_kernel_version()
        self.liberal = conntrack_tcp_liberal(kernel.sysctls)  # read once, as kube-proxy does: no INVALID rule when 1
        self.last: dict[str, Any] = {}
        self.syncs = 0
        self.keepalived = keepalived
        self.bird = bird  # announce: bgp: bird.conf from --bgp-speaker (vsop.bgp.writer)
        # The kernel work (incremental changes, full resyncs, draining, health weights, conntrack).
        self.reconciler = Reconciler(kernel, config.node, names=config.names, kernel_version=self.kernel_version, clock=clock,
                                     liberal=self.liberal, keep_accept_ra=config.keep_accept_ra)
        self.draining = self.reconciler.draining
        self.metrics = metrics
        if metrics is not None:  # vsop_virtualservices, counted when scraped
            from vsop.node.metrics import object_states

            metrics.count_objects(lambda: object_states(self.reconciler))
        lock = WriterLock(config.lock, config.lock_wait_seconds, on_wait=lambda who: log.info("waiting for the writer lock holder=%r", who))
        self.loop = NodeLoop(self.reconciler, self.tracker, lock=lock, keepalived=keepalived, metrics=metrics,
                             resync_seconds=config.resync_seconds, debounce_seconds=config.debounce_seconds,
                             retry=lambda failures: config.retry_seconds, settle=True, keep_probing_held=True,
                             remember=RememberFile(config.state_file) if config.state_file else None)
        self.refusals: dict[str, Problem] = {}  # ref -> why it may not claim its VIP here
        self.temporaries_swept = False  # the host store's leftover staged files, removed at the first turn
        self.drift_repairs = 0  # operations that put back what changed behind vsop's back
        self.last_repairs: list[str] = []
        self.polled_at = float("-inf")  # when the folder was last polled (monotonic)
        self.kept: list[str] = []  # owners kept as the kernel has them at the last sync
        self.status_doc = StatusDocument()  # the status file's text, kept per entry (vsop.host.status_file)
        self.status_written = float("-inf")
        self.status_due: float | None = None  # the running agent batches the status file (see flush_due)
        self.stop_requested: float | None = None  # when SIGTERM / SIGINT arrived (monotonic)
        # After the first looks, what is held is frozen out of the collector's passes (vsop.node.heap):
        # the process's own agent only (run_agent), not one of many in a process that goes on (tests).
        self.freeze_heap = False
        self.first_synced = False  # the first sync is done, every part of it (keep_first_sync)

    @property
    def targets(self) -> set[Target]:
        return self.loop.targets

    @property
    def probes(self) -> Probes | None:
        return self.loop.probes

    @probes.setter
    def probes(self, probes: Probes | None) -> None:
        self.loop.probes = probes

    # -- one sync (blocking: adapters talk to the kernel) ---------------------------

    def poll(self) -> bool:
        with self.source_guard:
            changed = self.source.poll()
            self.polled_at = time.monotonic()
            return changed

    def sync_once(self, full: bool = True, status: bool = True) -> Outcome | None:
        """One reconcile under the writer lock. `full`: read the whole kernel (the periodic resync);
        otherwise only the objects that changed are planned, unless another writer (`vsop apply`,
        `delete`) held the lock since our last reconcile: then what it wrote is read first.
        `status`: write the status file now (the running agent batches it, see run)."""
        turn = self.loop.turn(full, self._take, self._judge)
        if turn.skipped is not None:
            self.last = {"error": turn.skipped, "seconds": round(time.monotonic() - turn.started, 4), "at": time.time()}
            log.error("sync skipped, will retry error=%r", turn.skipped)
        if status:
            self.write_status()
        return turn.outcome if turn.ok else None

    def _take(self, others: bool) -> Feed:
        """Under the lock: what the last writer (`vsop apply`, `delete`) left in the folder, as changes."""
        if not self.temporaries_swept:
            self.temporaries_swept = True
            self._sweep_temporaries()
        with self.guarded():
            # The folder is polled again under the lock when another writer may have changed it,
            # or when the poll task's last look is not fresh (a stat per file: skipped when it is).
            # The periodic resync is the kernel's: the poll task and its sweeps follow the folder.
            # A turn that goes on with the cold sync's or a resync's next part does not poll either:
            # the poll task wakes a turn for what changes meanwhile, and a part takes longer than
            # half a poll period, so each part polled (10k stats, 0.3 s of each part at 10k in the
            # VM, the cold sync in parts 1.33x whole at b69d5b7).
            stale = time.monotonic() - self.polled_at >= self.config.poll_seconds / 2
            if others or (stale and not self.reconciler.replanning):
                self.source.poll()
                self.polled_at = time.monotonic()
            # Only what changed since the last sync: the folder knows which files did.
            changed, order = self.source.take_changes()
            held = self.source.held()
            stand_ins, complete = self.source.held_services() if held else ([], True)
            # keepalived renders from the same look at the folder as the kernel's sync: read later,
            # a file the poll task took meanwhile would appear both as its new version and as its
            # held stand-in, conflict with itself, and lose its section (keepalived would then drop
            # the virtual server and reset its connections).
            declared = self.source.services() if self.keepalived is not None else []
        rendered = KeepalivedInput(declared, stand_ins, complete) if self.keepalived is not None else None
        return Feed(changed=changed, order=order, held=held, keepalived=rendered, refusals=self._refused(changed))

    def _sweep_temporaries(self) -> None:
        """At start, under the writer lock: the files a store writer that died staged and never renamed
        (`.NAME.PID.tmp`, its PID gone; vsop.host.store). Only in the host store: another folder's dot
        files are not vsop's to remove. The folder source skips dot files anyway; this keeps the store tidy."""
        try:
            if Path(self.config.directory).resolve() != store_path().resolve():
                return
        except OSError:
            return
        for path in remove_stale_temporaries(Path(self.config.directory)):
            log.info("removed a file a store writer staged and never renamed file=%s", path)

    def _refused(self, changed: Mapping[str, VirtualService | None]) -> dict[str, Problem]:
        """The objects refused their VIP (--allow-vip, --vip-policy), kept per change: judged as each object changes."""
        for ref, vs in changed.items():
            problem = self.config.claims.refusal(vs) if vs is not None else None
            if problem is None:
                self.refusals.pop(ref, None)
            elif self.refusals.get(ref) != problem:
                self.refusals[ref] = problem
                log.warning("VirtualService refused its VIP: not programmed virtualService=%s field=spec.vip reason=%s message=%r",
                            ref, problem.reason, problem.message)
        return self.refusals

    def _judge(self, turn: Turn) -> None:
        """Still under the lock: the verdicts the status file must look at again, the log lines."""
        result, feed, reconciler = turn.outcome, turn.feed, self.reconciler
        assert result is not None and feed is not None
        changed = feed.changed
        # The objects whose verdict (programmed, problems) the status file must look at again:
        # any after a failure or a whole plan, else the changed ones and those on the VIPs the
        # reconcile planned (a resync plans only where the kernel differs from the cache).
        if result.error is not None or result.touched is None:
            self.status_doc.judged(None)
        else:
            self.status_doc.judged(set(changed) | result.touched)
        if result.error is not None:
            self.last = {"error": result.error, "seconds": round(time.monotonic() - turn.started, 4), "at": time.time()}
            log.error("sync failed, will retry error=%r", result.error)
            return
        self.syncs += 1
        if result.repairs:
            self.drift_repairs += len(result.repairs)
            self.last_repairs = [f"{r.obj or '-'}: {r.describe()}" for r in result.repairs]
        # What this sync judged: every object after a whole plan, else the changed objects and the
        # objects of the VIPs it planned (a conflict or a VIP in use changes a neighbour's verdict);
        # a resync plans only the VIPs where the kernel differs from what vsop left there.
        judged = reconciler.fragments if result.touched is None else set(changed) | {p.obj for p in result.plan.problems}
        for ref in sorted(judged):
            for problem in reconciler.problems(ref):
                log.warning("VirtualService not programmed object=%s reason=%s message=%r", problem.obj, problem.reason, problem.message)
        self.kept = sorted(reconciler.kept_owners())
        for owner in self.kept:
            log.warning("VirtualService kept as the kernel has it object=%s message=%r", owner, "declared but its definition cannot be used")
        # The lists (programmed, problems) are built when the status file is written, not per sync.
        self.last = {
            "writes": result.writes,
            "operations": result.plan.counts(),
            "seconds": round(result.seconds, 4),
            "at": time.time(),
            "full": result.full,
        }
        times = (result.seconds, result.read_seconds, result.aside_seconds, result.full, self.loop.trigger.waited, time.monotonic() - turn.started)
        if result.writes:
            log.info("synced objects=%d writes=%d seconds=%.3f read=%.3f read_aside=%.3f full=%s waited=%.3f turn=%.3f operations=%s",
                     len(reconciler.objects), result.writes, *times, result.plan.counts())
        else:
            log.debug("synced, nothing to change objects=%d seconds=%.3f read=%.3f read_aside=%.3f full=%s waited=%.3f turn=%.3f",
                      len(reconciler.objects), *times)
        if self.bird is not None and self.bird.due(result.full, changed, reconciler.objects):
            self.bird.update(reconciler.objects.values())

    # -- status for `vsop show` --------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The status document built from scratch (costs what the node holds): what status_text
        keeps up to date per entry, and the reference it is tested against."""
        with self.source_guard:
            files = {str(path): state.error for path, state in sorted(self.source.files.items(), key=lambda item: item[0].parts)}
            errors, pending, objects = self.source.errors(), self.source.pending(), [vs.ref for vs in self.source.services()]
        return {
            "pid": os.getpid(),
            "directory": str(self.config.directory),
            "node": self.config.node.name,
            "files": files,
            "errors": errors,
            "pending": pending,
            "objects": objects,
            "health": [
                {
                    "service": str(target.key.service),
                    "realServer": str(target.key),
                    "check": target.check.type,
                    "healthy": self.tracker.is_healthy(target.key),
                    "consecutiveFailures": self.tracker.states.get(target.key).failures if target.key in self.tracker.states else 0,
                    "lastError": self.tracker.states.get(target.key).last_error if target.key in self.tracker.states else "",
                }
                for target in sorted(self.targets, key=lambda t: t.key)
            ],
            "draining": [str(key.service) + " -> " + str(key) for key in sorted(self.draining.keys())],
            "lastSync": self._last_sync(),
            "driftRepairs": {"total": self.drift_repairs, "last": self.last_repairs},
            **({"keepalived": self.keepalived.status()} if self.keepalived is not None else {}),
            **({"bgp": self.bird.status()} if self.bird is not None else {}),
        }

    def _last_sync(self) -> dict[str, Any]:
        if not self.last or "error" in self.last:
            return self.last
        reconciler = self.reconciler
        problems = [p.__dict__ for ref in sorted(reconciler.fragments) for p in reconciler.problems(ref)]
        return {**self.last, "programmed": sorted(reconciler.programmed), "problems": problems, "kept": self.kept}

    def status_text(self, health_changed: set[Any] | None = None) -> str:
        """The status document as JSON, `json.dumps(self.status(), separators=(",", ":"))`, costing
        what changed since the last call: the folder's changed paths and refs, the objects the
        syncs judged, the health targets and real servers whose health changed
        (`health_changed`: taken by the caller from the tracker; None: taken here). The source
        guard is held only for the folder's changes. Run it where syncs run (one thread)."""
        doc = self.status_doc
        with self.guarded():
            paths, refs = self.source.take_status_changes()
            doc.update_files(self.source, paths, refs)
            errors, pending = self.source.errors(), self.source.pending()
        doc.update_health(self.targets, self.tracker, self.tracker.take_changed() if health_changed is None else health_changed,
                          self.loop.take_target_changes("status"))
        doc.update_verdicts(self.reconciler)
        return doc.render(
            head={"pid": os.getpid(), "directory": str(self.config.directory), "node": self.config.node.name},
            errors=errors,
            pending=pending,
            draining=[str(key.service) + " -> " + str(key) for key in sorted(self.draining.keys())],
            last=self.last,
            kept=self.kept,
            drift={"total": self.drift_repairs, "last": self.last_repairs},
            keepalived=self.keepalived.status if self.keepalived is not None else None,
            bgp=self.bird.status if self.bird is not None else None,
        )

    def write_status(self, health_changed: set[Any] | None = None) -> None:
        path = self.config.status_file
        if path is None:
            return
        started = time.monotonic()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            text = self.status_text(health_changed)
            temporary.write_text(text)
            temporary.replace(path)
            # In the turns' thread: a change that comes meanwhile waits for it (its turn's waited=).
            log.debug("status file written path=%s characters=%d seconds=%.3f", path, len(text), time.monotonic() - started)
        except OSError as exc:
            log.warning("cannot write status file path=%s error=%r", path, str(exc))
        except FolderBusy:
            log.info("status file not written: stopping while the folder is being read path=%s", path)

    @contextlib.contextmanager
    def guarded(self) -> Iterator[None]:
        """The source guard, waited for as long as a walk takes, unless the agent is stopping: then
        FolderBusy (a LockTimeout: the turn is skipped), so SIGTERM never waits on a walk that hangs."""
        while not self.source_guard.acquire(timeout=0.05):
            if self.stopping.is_set():
                raise FolderBusy(f"stopping while the folder {self.config.directory} is being read")
        try:
            yield
        finally:
            self.source_guard.release()

    # -- the loop (vsop.node.loop drives it: these are its Driver methods) ------------

    async def turn(self, full: bool, reasons: set[str]) -> bool:
        try:
            result = await self.loop.blocking(self.sync_once, full, False)
        except Exception as exc:  # the loop's guard logs, counts and retries it; `vsop show` says it
            self.last = {"error": f"{type(exc).__name__}: {exc}", "at": time.time()}
            self.status_due = self.status_due or time.monotonic()
            raise
        self.keep_first_sync(result is not None)
        if result is not None and full:
            # A full sync's read, desired state and plan were dropped: give their pages back.
            await self.loop.blocking(heap.trim)
        if self.status_due is None:
            # The status file is written after a sync, once its writes are done, and at most every
            # status_seconds: it costs what changed (vsop.host.status_file), yet a burst of changes
            # does not pay for it per change, and `vsop show` lags the kernel by that much at most.
            self.status_due = max(self.status_written + self.config.status_seconds, time.monotonic())
        return result is not None

    def keep_first_sync(self, ok: bool) -> None:
        """After each turn of the first sync (run_agent's agent only, see freeze_heap): what the turn
        made (the fragments, cache entries and health targets of its part) is the node's for as long as
        the agent runs, frozen out of the collector's full passes (vsop.node.heap). Those passes walked
        every part made before again: at 10,000 objects a part cost 70 ms natively against 44 ms at
        2,500; frozen per part, 40 ms and 36 ms (bench/agent_start.py --parts). Only the first sync
        (until its last part, or a failed turn: the next plans the node whole): a freeze keeps any
        cycle alive then for good, so it is not repeated for ever."""
        if not self.freeze_heap or self.first_synced:
            return
        heap.freeze()
        self.first_synced = not ok or not self.reconciler.cold

    def probe_targets(self) -> set[Target]:
        return self.loop.targets

    def probe_changes(self) -> tuple[set[Target], set[Target]] | None:
        return self.loop.take_target_changes("checker")  # the checker follows the turns' own target changes

    def flush_due(self) -> float | None:
        return self.status_due

    async def flush(self) -> None:
        # The tracker's changes are taken here, on the loop that records them.
        await self.loop.blocking(self.write_status, self.tracker.take_changed())
        self.status_written, self.status_due = time.monotonic(), None

    async def run(self, stop: asyncio.Event) -> None:
        log.info("agent started directory=%s node=%s resync_seconds=%g", self.config.directory, self.config.node.name, self.config.resync_seconds)
        if self.keepalived is not None:  # a VRRP transition: a turn, so that the status file and metrics say it
            running = asyncio.get_running_loop()
            self.keepalived.on_announce = lambda: running.call_soon_threadsafe(self.loop.trigger.wake, "VRRP state changed")
        poller = asyncio.get_running_loop().create_task(self._first_looks(stop), name="poll folder")
        stopping = asyncio.get_running_loop().create_task(self._stopping(stop), name="stopping")
        try:
            await _until(poller, stop)
            if not stop.is_set():
                if self.freeze_heap:
                    # The folder is read whole: what the agent holds now lasts as long as it does, and
                    # the collector's full passes during the first sync need not walk it (vsop.node.heap).
                    frozen = heap.freeze()
                    log.debug("objects held since the first looks kept out of the collector's passes objects=%d", frozen)
                poller = asyncio.get_running_loop().create_task(self._poll(stop), name="poll folder")
                await self.loop.run(self, stop)
        finally:
            log.debug("stopping: turns and health checks ended")
            poller.cancel()
            stopping.cancel()
            self.stopping.set()
            if self.status_due is not None:
                self.write_status()  # the last status, unless a walk still holds the folder
            took = "" if self.stop_requested is None else f" stop_seconds={time.monotonic() - self.stop_requested:.3f}"
            log.info("agent stopped; the kernel keeps serving what was programmed syncs=%d%s", self.syncs, took)

    async def _stopping(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.stopping.set()  # the sync thread's waits for the folder end (see guarded)

    async def _first_looks(self, stop: asyncio.Event) -> None:
        # A file is taken once stable over two polls: look twice before the first sync, so
        # the first sync already serves what the folder holds.
        await off_loop(self.poll)
        await asyncio.sleep(self.config.poll_seconds)
        await off_loop(self.poll)

    async def _after_change(self, stop: asyncio.Event) -> None:
        """Until no sync for a change is wanted or running (a periodic full resync is not waited for:
        a file seen meanwhile is taken as soon as it is over)."""
        while self.loop.change_turn and not stop.is_set():
            await asyncio.sleep(0.01)

    async def _poll(self, stop: asyncio.Event) -> None:
        # Every poll_seconds the whole folder (a stat per file); in between, a file that changed
        # is looked at again as soon as it has been stable for the settle time, so a new file
        # costs one poll of everything, not two.
        next_poll = time.monotonic() + self.config.poll_seconds
        while not stop.is_set():
            due = await off_loop(self._settle_due)  # off the loop: the guard may be held by a walk
            at = next_poll if due is None else min(next_poll, due)
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            if time.monotonic() >= next_poll:
                # A change goes first: a look at everything (a stat per file at a sweep) would
                # hold up the sync a change just woke (both read the folder), or slow it down.
                await self._after_change(stop)
                changed = await off_loop(self.poll)
                next_poll = time.monotonic() + self.config.poll_seconds
            else:
                changed = await off_loop(self._recheck)
            if changed:
                self.loop.trigger.wake("folder changed")  # the sync that follows writes the status file (pending files, errors)


    def _settle_due(self) -> float | None:
        with self.source_guard:
            return self.source.settle_due()

    def _recheck(self) -> bool:
        with self.source_guard:
            changed = self.source.recheck()
            # A look just now: the sync it wakes needs no poll of everything (no other
            # writer held the lock, or the sync polls anyway).
            self.polled_at = time.monotonic()
            return changed


async def off_loop(function: Callable[[], T]) -> T:
    """`function()` in a daemon thread of its own, awaited. Unlike an executor's worker, a daemon
    thread never holds up the process's exit: a walk still running at SIGTERM is abandoned."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def work() -> None:
        try:
            result, error = function(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed meanwhile (the agent stopped): nobody waits
            pass

    threading.Thread(target=work, name="vsop-poll", daemon=True).start()
    return await future


async def _until(task: asyncio.Task[Any], stop: asyncio.Event) -> None:
    """Until `task` ends or `stop` is set, whichever comes first."""
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        task.result()


def run_agent(
    kernel: Kernel,
    config: AgentConfig,
    conntrack: ConntrackCleaner,
    keepalived: KeepalivedWriter | None = None,
    metrics_port: int | None = None,
    bind_address: str = "127.0.0.1",
    bird: BirdAnnouncer | None = None,
) -> int:
    """Run until SIGTERM or SIGINT; returns the exit code. `metrics_port`: serve /metrics, /healthz, /readyz."""
    heap.tune()  # before the folder is read and the sync thread starts (RSS at 10k services)
    metrics = None
    if metrics_port is not None:
        from vsop.node.metrics import HttpEndpoints, NodeMetrics, Probes  # only with a port: 12 MB of aiohttp and prometheus_client

        metrics = NodeMetrics()
    agent = HostAgent(kernel, config, conntrack, keepalived=keepalived, metrics=metrics, bird=bird)
    agent.freeze_heap = True
    if metrics is not None and bird is not None:
        metrics.watch_bgp(bird.sessions)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        def stopping(sig: signal.Signals) -> None:
            if not stop.is_set():
                agent.stop_requested = time.monotonic()
                log.info("stopping signal=%s", sig.name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping, sig)
        endpoints = None
        if metrics is not None and metrics_port is not None:
            probes = Probes(stall_seconds=max(120.0, 4 * config.resync_seconds))
            probes.ready, probes.ready_reason = True, "ok"
            agent.probes = probes
            endpoints = HttpEndpoints(probes, metrics.registry, metrics_port, metrics_port, bind_address)
            await endpoints.start()
        try:
            await agent.run(stop)
        finally:
            if endpoints is not None:
                await endpoints.stop()

    asyncio.run(main())
    log.debug("stopping: event loop closed")
    return 0
