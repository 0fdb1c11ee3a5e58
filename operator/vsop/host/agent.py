"""`vsop agent`: keep the host store (or `--from DIR`, any folder) true on this host's kernel.

Owns the agent's loop around the node reconciler (vsop.node.reconciler, the same one
the in-cluster agent runs): poll the folder, run health checks, and reconcile whenever
something changed (only the changed objects are planned; a health result is one weight
edit), on a periodic full resync every --resync-seconds (which re-reads the kernel and
repairs drift made by hand, in parts when it is large, a change served between them)
and while real servers drain; a reconcile after another writer held the lock reads the
kernel first. `--metrics-port` serves the reconciler's metrics. Each sync holds the host's writer lock
(vsop.node.lock) and re-reads the folder under it, so `vsop apply` / `delete` and the agent
take turns and the agent never undoes what a command just did. What the folder
declares but cannot be used now (invalid, unreadable, being rewritten) is passed to
the sync as `held`: the kernel keeps what it has for it (core.held), also right after
a restart. It removes nothing on SIGTERM, so the dataplane keeps serving while the
agent restarts, and a restart with unchanged files writes nothing. Its state for
`vsop show` goes to a JSON status file.

In keepalived mode (any loaded VirtualService with `mode: keepalived`) each successful
sync is followed by the keepalived writer (vsop.keepalived.writer): render, validate
with `keepalived -t`, swap in, SIGHUP only on change. The IPVS services keepalived
creates for those objects are delegated in the desired state, so the sync leaves them alone.
Must not import: kopf, kubernetes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from contextlib import nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vsop.adapters.conntrack import ConntrackCleaner
from vsop.host.status_file import StatusDocument
from vsop.node.probes import HealthChecker, Target, health_targets
from vsop.core.desired import Node
from vsop.core.draining import Draining
from vsop.core.health import HealthTracker
from vsop.core.state import Names
from vsop.adapters.kernel import Kernel, running_kernel_version
from vsop.host.folder import FolderSource
from vsop.keepalived.writer import KeepalivedWriter
from vsop.bgp.writer import BirdAnnouncer
from vsop.node.lock import LockTimeout, stamp, writer_lock
from vsop.api.model import VirtualService
from vsop.node import heap
from vsop.node.reconciler import Outcome, Reconciler

if TYPE_CHECKING:  # imported when --metrics-port asks for it: aiohttp and prometheus_client are 12 MB of RSS
    from vsop.node.metrics import NodeMetrics, Probes

log = logging.getLogger("vsop.agent")

DEFAULT_STATUS_FILE = Path("/run/vsop/agent.json")


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
    lock: Path | None = None  # the writer lock held during each sync; None: no lock (tests on fakes)
    lock_wait_seconds: float = 60.0  # a sync gives up after this and is retried
    keep_accept_ra: bool = False  # refuse IPv6 VIPs that would need accept_ra changed (as apply --keep-accept-ra)
    sweep_seconds: float = 0.0  # every file stat-ed this often (0: every poll); see FolderSource (vsop agent: 5)
    status_seconds: float = 1.0  # the running agent rewrites the status file at most this often


class HostAgent:
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
        self.tracker = HealthTracker(track_changes=True)  # the status file re-renders the changed real servers
        self.draining = Draining()
        self.kernel_version = running_kernel_version()
        self.last: dict[str, Any] = {}
        self.targets: set[Target] = set()
        self.syncs = 0
        self.keepalived = keepalived
        self.bird = bird  # announce: bgp: bird.conf from --bgp-speaker (vsop.bgp.writer)
        # The kernel work (incremental changes, full resyncs, draining, health weights, conntrack).
        self.reconciler = Reconciler(kernel, config.node, names=config.names, kernel_version=self.kernel_version, clock=clock,
                                     keep_accept_ra=config.keep_accept_ra)
        self.draining = self.reconciler.draining
        self.metrics = metrics
        if metrics is not None:  # vsop_virtualservices, counted when scraped
            from vsop.node.metrics import object_states

            metrics.count_objects(lambda: object_states(self.reconciler))
        self._last_stamp: int | None = self._lock_stamp()
        self.probes: Probes | None = None  # liveness, when the metrics port serves it
        self.drift_repairs = 0  # operations that put back what changed behind vsop's back
        self.last_repairs: list[str] = []
        self.polled_at = float("-inf")  # when the folder was last polled (monotonic)
        self.kept: list[str] = []  # owners kept as the kernel has them at the last sync
        self.status_doc = StatusDocument()  # the status file's text, kept per entry (vsop.host.status_file)
        self._change_syncing = False  # a sync for a change is wanted or running: a poll of everything waits

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
        started = time.monotonic()
        lock = (
            writer_lock(self.config.lock, self.config.lock_wait_seconds, on_wait=lambda who: log.info("waiting for the writer lock holder=%r", who))
            if self.config.lock is not None
            else nullcontext(0.0)
        )
        others = self._lock_stamp() != self._last_stamp
        try:
            with lock as waited:
                # Waiting means another writer held it just now (its sleep between tries is 50 ms).
                full = full or others or waited >= 0.05
                # The folder is polled again under the lock when another writer may have changed it,
                # or when the poll task's last look is not fresh (a stat per file: skipped when it is).
                # The periodic resync is the kernel's: the poll task and its sweeps follow the folder.
                repoll = others or waited >= 0.05 or time.monotonic() - self.polled_at >= self.config.poll_seconds / 2
                result = self._sync_locked(started, full, repoll)
        except LockTimeout as exc:
            self.last = {"error": str(exc), "seconds": round(time.monotonic() - started, 4), "at": time.time()}
            log.error("sync skipped, will retry error=%r", str(exc))
            if status:
                self.write_status()
            return None
        self._last_stamp = self._lock_stamp()  # our own release: a later change is another writer's
        if status:
            self.write_status()
        return result

    def _lock_stamp(self) -> int | None:
        return stamp(self.config.lock)

    def _sync_locked(self, started: float, full: bool, repoll: bool = True) -> Outcome | None:
        # Under the lock: see what the last writer (`vsop apply`, `delete`) left in the folder.
        with self.source_guard:
            if repoll:
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
        reconciler = self.reconciler
        reconciler.update_objects(changed, order=order)
        reconciler.set_held(held)
        reconciler.set_out_of_service(self.tracker.out_of_service())
        result = reconciler.reconcile(full=full)
        # The objects whose verdict (programmed, problems) the status file must look at again:
        # any after a failure or a whole plan, else the changed ones and those on the VIPs the
        # reconcile planned (a resync plans only where the kernel differs from the cache).
        if result.error is not None or result.touched is None:
            self.status_doc.judged(None)
        else:
            self.status_doc.judged(set(changed) | result.touched)
        if self.probes is not None:
            self.probes.turned()
        if self.metrics is not None:
            self.metrics.record(result, reconciler)
        if result.error is not None:
            self.last = {"error": result.error, "seconds": round(time.monotonic() - started, 4), "at": time.time()}
            log.error("sync failed, will retry error=%r", result.error)
            return None
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
        objects = reconciler.objects.values()
        if result.touched is None or changed or self.targets or held:
            targets = health_targets(objects, reconciler.configured, reconciler.draining)
            # While something is held (a file being rewritten, unreadable), keep probing what was
            # probed: its health state must survive the blip, or a dead real server would return.
            self.targets = targets | self.targets if held else targets
        # The lists (programmed, problems) are built when the status file is written, not per sync.
        self.last = {
            "writes": result.writes,
            "operations": result.plan.counts(),
            "seconds": round(result.seconds, 4),
            "at": time.time(),
            "full": result.full,
        }
        if result.writes:
            log.info("synced objects=%d writes=%d seconds=%.3f read=%.3f full=%s operations=%s", len(reconciler.objects), result.writes, result.seconds,
                     result.read_seconds, result.full, result.plan.counts())
        else:
            log.debug("synced, nothing to change objects=%d seconds=%.3f read=%.3f full=%s", len(reconciler.objects), result.seconds, result.read_seconds, result.full)
        if self.keepalived is not None and self.keepalived.wanted([*objects, *stand_ins]):
            # keepalived is configured from definitions: held objects render from their last good
            # ones; those with none (a dangling symlink, a file invalid since the agent started) keep
            # their live sections, as the kernel keeps their state (core.held), while the rest is
            # updated. Objects refused for a held owner's ports are left out, as in the kernel.
            keep = sorted(set(self.kept) - {vs.ref for vs in stand_ins})
            if complete or self.keepalived.can_keep():
                usable = {vs.ref for vs in declared}
                stand_ins = [vs for vs in stand_ins if vs.ref not in usable]
                self._update_keepalived([vs for vs in declared + stand_ins if vs.ref not in reconciler.held_problems], keep)
            else:
                log.info("keepalived configuration (layout single) left as it is while objects are held objects=%s", sorted(held.owners) or "unknown")
        if self.bird is not None and self.bird.due(result.full, changed, reconciler.objects):
            self.bird.update(objects)
        return result

    def _update_keepalived(self, services: list[VirtualService], keep: list[str]) -> None:
        """After a successful sync: keepalived's configuration for this node, when it is in use."""
        if self.keepalived is None or not self.keepalived.wanted(services):
            return
        try:
            self.keepalived.update(services, node=self.config.node, names=self.config.names, keep=keep)
        except OSError as exc:  # the writer reports its own failures; this is a last resort
            log.error("keepalived configuration not written error=%r", str(exc))
            self.keepalived.last_error = {"at": time.time(), "stage": "write", "message": str(exc)}

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
        with self.source_guard:
            paths, refs = self.source.take_status_changes()
            doc.update_files(self.source, paths, refs)
            errors, pending = self.source.errors(), self.source.pending()
        doc.update_health(self.targets, self.tracker, self.tracker.take_changed() if health_changed is None else health_changed)
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
        )

    def write_status(self, health_changed: set[Any] | None = None) -> None:
        path = self.config.status_file
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(self.status_text(health_changed))
            temporary.replace(path)
        except OSError as exc:
            log.warning("cannot write status file path=%s error=%r", path, str(exc))

    # -- the loop ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        wake = asyncio.Event()
        checker = HealthChecker(self.tracker, wake.set)
        if self.metrics is not None:
            self.metrics.watch_health(checker)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vsop-sync")
        loop = asyncio.get_running_loop()
        log.info("agent started directory=%s node=%s resync_seconds=%g", self.config.directory, self.config.node.name, self.config.resync_seconds)
        # A file is taken once stable over two polls: look twice before the first sync, so
        # the first sync already serves what the folder holds.
        self.poll()
        await asyncio.sleep(self.config.poll_seconds)
        self.poll()
        poller = loop.create_task(self._poll(wake, stop), name="poll folder")
        next_resync = 0.0
        next_full = 0.0  # the periodic full resync, whatever changes happen meanwhile
        # The status file is written after a sync, once its writes are done, and at most every
        # status_seconds: it costs what changed (vsop.host.status_file), yet a burst of changes does
        # not pay for it per change, and `vsop show` lags the kernel by that much at most.
        status_written = float("-inf")
        status_due: float | None = None
        try:
            while not stop.is_set():
                now = time.monotonic()
                timeout = max(0.0, next_resync - now)
                if self.draining.since:
                    timeout = min(timeout, 1.0)  # drained real servers are deleted promptly
                if status_due is not None:
                    timeout = min(timeout, max(0.0, status_due - now))
                await _wait_any(wake, stop, timeout)
                if stop.is_set():
                    break
                now = time.monotonic()
                replanning = self.reconciler.replanning  # a resync's drift left to plan: its next part goes first
                if status_due is not None and now >= status_due and not wake.is_set() and not replanning:  # a change goes first
                    # The tracker's changes are taken here, on the loop that records them.
                    await loop.run_in_executor(executor, self.write_status, self.tracker.take_changed())
                    status_written, status_due = time.monotonic(), None
                    if not wake.is_set() and now < next_resync and not self.draining.since and not replanning:
                        continue  # woken for the status file only
                if wake.is_set():
                    await asyncio.sleep(self.config.debounce_seconds)  # gather a burst of changes into one sync
                full = time.monotonic() >= next_full
                self._change_syncing = not full  # the poll task's next look at everything waits for it
                wake.clear()
                try:
                    result = await loop.run_in_executor(executor, self.sync_once, full, False)
                finally:
                    self._change_syncing = False
                if result is not None and full:
                    next_full = time.monotonic() + self.config.resync_seconds
                    # A full sync's read, desired state and plan were dropped: give their pages back.
                    await loop.run_in_executor(executor, heap.trim)
                next_resync = min(next_full, time.monotonic() + (self.config.resync_seconds if result is not None else self.config.retry_seconds))
                if result is not None and self.reconciler.replanning:
                    # The resync found drift on more VIPs than one turn plans: the next part at
                    # once, with whatever changed meanwhile (a change never waits for all of it).
                    next_resync = time.monotonic()
                checker.update(self.targets)
                if status_due is None:
                    status_due = max(status_written + self.config.status_seconds, time.monotonic())
        finally:
            poller.cancel()
            await checker.stop()
            executor.shutdown(wait=True)
            if status_due is not None:
                self.write_status()
            log.info("agent stopped; the kernel keeps serving what was programmed syncs=%d", self.syncs)

    async def _after_change(self, wake: asyncio.Event, stop: asyncio.Event) -> None:
        """Until no sync for a change is wanted or running (a periodic full resync is not waited for:
        a file seen meanwhile is taken as soon as it is over)."""
        while (wake.is_set() or self._change_syncing) and not stop.is_set():
            await asyncio.sleep(0.01)

    async def _poll(self, wake: asyncio.Event, stop: asyncio.Event) -> None:
        # Every poll_seconds the whole folder (a stat per file); in between, a file that changed
        # is looked at again as soon as it has been stable for the settle time, so a new file
        # costs one poll of everything, not two.
        next_poll = time.monotonic() + self.config.poll_seconds
        while not stop.is_set():
            with self.source_guard:
                due = self.source.settle_due()
            at = next_poll if due is None else min(next_poll, due)
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            if time.monotonic() >= next_poll:
                # A change goes first: a look at everything (a stat per file at a sweep) runs on
                # this loop and would hold up the sync a change just woke, or slow it down.
                await self._after_change(wake, stop)
                changed = self.poll()
                next_poll = time.monotonic() + self.config.poll_seconds
            else:
                with self.source_guard:
                    changed = self.source.recheck()
                    # A look just now: the sync it wakes needs no poll of everything (no other
                    # writer held the lock, or the sync polls anyway).
                    self.polled_at = time.monotonic()
            if changed:
                wake.set()  # the sync that follows writes the status file (pending files, errors)


async def _wait_any(first: asyncio.Event, second: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


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

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
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
    return 0
