"""The in-cluster agent's sink: this node's NodeReport entries, Events, and the objects' states in the metrics.

Owns what the node tells the cluster after each turn: its entries in its NodeReport
(vsop.kube.report, one object per node, watched by the controller only), read once at start
and then patched with changes only; an Event per new failure (not again after a restart, when
the report already carries it) and per drift repair; what keepalived made of each
keepalived-mode object (backends rendered, refusals); with `announce`, this node's state for each
VIP and its BGP sessions (vsop.kube.announce); the static backends it probes itself because its
data path showed trouble (vsop.kube.checkers.LocalProbes, `status.localProbes`, bounded); the
objects by state in the metrics.
Must not import: vsop.node.execute, vsop.adapters, vsop.kube.source's kopf wiring.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from vsop.api.model import VirtualService
from vsop.core.claims import NOT_ALLOWED
from vsop.core.desired import Problem
from vsop.core.fragments import Fragment
from vsop.core.held import parse_member
from vsop.core.plan import Plan
from vsop.core.state import KernelState, Names, ServiceKey
from vsop.keepalived.servers import services_of
from vsop.keepalived.writer import KeepalivedWriter
from vsop.kube import report as reports
from vsop.kube.client import ApiError, Writer
from vsop.kube.metrics import AgentMetrics
from vsop.kube.runtime import kv
from vsop.kube.status import NodeEntry
from vsop.node.metrics import OBJECT_STATES
from vsop.node.reconciler import Outcome, Reconciler

if TYPE_CHECKING:
    from vsop.kube.source import VSRecord
    from vsop.node.loop import KeepalivedResult

log = logging.getLogger("vsop.kube.agent")

Key = tuple[str, str]


# --- what one turn did -----------------------------------------------------------------------


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
    announced: Mapping[str, str] = field(default_factory=dict)  # ref -> this node's announce state (vsop.kube.announce)
    sessions: list[dict[str, Any]] | None = None  # this node's BGP sessions for its report (None: no BGP here)
    local_probes: dict[str, Any] | None = None  # its status.localProbes (vsop.kube.report.local_probes; None: none)
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


class VrrpPassword:
    """In the cluster the password is an optional Secret: no file means no VRRP authentication."""

    def __init__(self, writer: KeepalivedWriter):
        self.writer = writer
        self.file: Path | None = writer.config.auth_file
        self.present: bool | None = None

    def check(self) -> None:
        """Before each render: authenticate only while the file is there (said once per change)."""
        if self.file is None:
            return
        present = self.file.exists()
        if present != self.present:
            self.present = present
            log.log(logging.INFO if present else logging.WARNING,
                    kv("VRRP password file " + ("found; vrrp_instances authenticate" if present else "absent; vrrp_instances have no authentication"),
                       file=str(self.file)))
        self.writer.config.auth_file = self.file if present else None


def keepalived_report(
    writer: KeepalivedWriter,
    result: KeepalivedResult,
    services: Sequence[VirtualService],
    endpoints: Mapping[Key, Iterable[Any]],
    programmed: set[str],
) -> KeepalivedReport:
    """What the keepalived writer made of one sync, per keepalived-mode object (`services`: those rendered)."""
    report = KeepalivedReport()
    for vs in services:
        if vs.spec.mode == "keepalived" and vs.ref in programmed:
            addresses: dict[str, bool] = {}
            for service in services_of(vs, endpoints):
                for rs in service.real_servers:
                    addresses[rs.key.address] = addresses.get(rs.key.address, False) or rs.weight > 0
            report.backends[vs.ref] = (len(addresses), sum(addresses.values()))
    if result.outcome is None:  # not written at all
        report.error = f"KeepalivedError: write: {result.error}"
        return report
    report.changed, report.reloaded = result.outcome.changed, result.outcome.reloaded
    if result.outcome.error:
        report.error = f"KeepalivedError: {writer.last_error.get('stage', 'render')}: {result.outcome.error}"
    for problem in writer.problems:  # "namespace/name: Reason: message"
        ref, _, reason_message = problem.partition(": ")
        report.problems[ref] = reason_message
    return report


def kernel_outcome(reconciler: Reconciler, result: Outcome, cover_all: bool) -> KernelOutcome:
    """One reconcile as the report needs it. Every object's verdict after a full reconcile, a
    failure, or when asked (`cover_all`); else the sink judges the objects it reports on."""
    touched = result.touched if result.error is None and not cover_all else None
    problems, programmed = judge(reconciler, reconciler.fragments if touched is None else ())
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


def judge(reconciler: Reconciler, refs: Iterable[str]) -> tuple[dict[str, Problem], set[str]]:
    """Why each of `refs` is not (wholly) programmed, and which are programmed, as the reconciler now has them."""
    problems: dict[str, Problem] = {}
    programmed: set[str] = set()
    for ref in refs:
        piece = reconciler.fragments.get(ref)
        if piece is None:
            continue
        found = reconciler.problems(ref) if piece.problems or reconciler.plan_problems or reconciler.held_problems or reconciler.kernel_refusals else ()
        if found:
            problems[ref] = found[-1]
        if ref in reconciler.programmed:
            programmed.add(ref)
    return problems, programmed


# --- the report ------------------------------------------------------------------------------


class NodeReportSink:
    """This node's NodeReport, Events and object states; `records` is the source's (read only here)."""

    def __init__(self, node_name: str, writer: Writer, metrics: AgentMetrics, reconciler: Reconciler, records: Mapping[Key, VSRecord], names: Names):
        self.node_name = node_name
        self.writer = writer
        self.metrics = metrics
        self.reconciler = reconciler
        self.records = records
        self.names = names
        self.report_all = True  # the next turn reports every object (first turn, after a failure)
        self._reported: dict[str, dict[str, Any]] | None = None  # this node's report as last read or written
        self._fields: dict[str, Any] = {}  # its node-wide fields (bgpSessions, localProbes), as last read or written
        self._evented: dict[tuple[str, str, str | None], str] = {}
        self._report_read = False  # the report was read once since the start
        self._restarted_with: dict[str, dict[str, Any]] | None = None  # its entries then, until the turn that reads them
        self._states: dict[Key, str] = {}  # the metrics' state of each object (programmed, failed...)
        self.state_counts: Counter[str] = Counter()

    def forget(self, identities: Iterable[tuple[str, str, str | None]]) -> None:
        """Objects gone, or another object under the same name: their Events may come again."""
        for identity in identities:
            self._evented.pop(identity, None)

    async def report_drift(self, outcome: KernelOutcome, report: SyncReport) -> None:
        """Each repair a full resync made (counted by the node metrics): an Event on the object that owns what was put back."""
        changes: dict[str, list[str]] = {}
        for repair in outcome.repairs:
            changes.setdefault(repair.obj, []).append(repair.describe())
        for ref, described in changes.items():
            namespace, _, name = ref.partition("/")
            record = self.records.get((namespace, name))
            if record is not None:  # shared rules and sysctls have no single owner: logged and counted only
                await self._event(record, "Warning", "DriftRepaired", "the kernel was changed behind vsop's back; put back: " + "; ".join(described), report)

    def entries(
        self, records: Sequence[VSRecord], outcome: KernelOutcome, keepalived: KeepalivedReport | None = None,
        announced: Mapping[str, str] | None = None,
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
            elif problem is not None and problem.reason in ("Conflict", NOT_ALLOWED):
                entry = None  # a conflict loser, or refused its VIP (vsop.core.claims): the controller reports it, once
            elif problem is not None:
                entry = NodeEntry(False, 0, 0, f"{problem.reason}: {problem.message}", record.generation)
            elif ref in programmed:
                total, healthy = _backend_counts(fragments[ref])
                ok = outcome.error is None or _programmed_in(outcome.after or KernelState(), fragments[ref], shared)
                message = "" if ok else f"KernelError: {outcome.error}"
                if ok:  # programmed, but this node refuses its clients (trafficPolicy: Local): said per node
                    message = next((f"{w.reason}: {w.message}" for w in fragments[ref].warnings if w.reason == "NoLocalEndpoints"), "")
                if ok and keepalived is not None and ref in keepalived.backends:
                    # keepalived programs IPVS for it: count what was rendered (keepalived's checks decide the rest).
                    total, healthy = keepalived.backends[ref]
                    failure = keepalived.failure(ref)
                    if failure:
                        ok, message = False, failure
                entry = NodeEntry(ok, total, healthy, message, record.generation, (announced or {}).get(ref))
            entries[record.key] = entry.as_status() if entry is not None else None
        return entries

    def _held_counts(self, refs: set[str]) -> dict[str, tuple[int, int]]:
        """(total, healthy) backends the kernel serves for each invalid owner it still has."""
        observed = self.reconciler.observed
        if not refs or observed is None:
            return {}
        names = self.names
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

    async def publish(self, report: SyncReport, complete: bool) -> None:
        """Write this node's report where it changed (one write at most); post an Event for each new failure."""
        if complete:
            present = {r.identity for r in self.records.values()}
            for identity in [i for i in self._evented if i not in present]:
                del self._evented[identity]
        if self._reported is None:
            await self._read_report(complete)
        # A restarted agent: a failure its report already carries, with the same message and
        # generation, had its Event posted by the agent before; a restart posts no Event per object.
        before, self._restarted_with = self._restarted_with, None
        jobs = [self._write_report(report, complete)]
        for key, entry in report.entries.items():
            record = self.records.get(key)
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
            body = await self.writer.read_node_report(self.node_name)
            self._reported, self._fields = reports.entries_of(body), reports.node_fields_of(body)
        except (ApiError, OSError) as exc:
            self.metrics.errors.labels("api").inc()
            self.report_all = True
            log.warning(kv("Reading the node report failed; retried on the next sync", node=self.node_name, error=str(exc)))
            return False
        if not complete:
            self.report_all = True  # what it holds of objects not named here is checked next turn
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
        fields = {"bgpSessions": report.sessions, "localProbes": report.local_probes}
        patch = reports.with_node_fields(reports.report_patch(self._reported, after, complete=complete), self._fields, fields)
        if patch is None:
            return
        try:
            await self.writer.patch_node_report(self.node_name, patch)
        except (ApiError, OSError) as exc:
            self.metrics.errors.labels("api").inc()
            self._reported = None
            self.report_all = True
            log.warning(kv("Node report write failed; retried on the next sync", node=self.node_name, error=str(exc)))
            return
        changed = patch["status"]["virtualServices"]
        reports.merge_into(self._reported, patch)
        self._fields = {name: value for name, value in fields.items() if value is not None}
        if "bgpSessions" in patch["status"]:
            log.info(kv("Updated node report", node=self.node_name, bgpSessionsUp=sum(1 for s in report.sessions or () if s.get("up")),
                        bgpSessions=len(report.sessions or ())))
        if "localProbes" in patch["status"]:
            log.info(kv("Updated node report", node=self.node_name, localProbes=(report.local_probes or {}).get("count", 0)))
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

    def record_metrics(
        self, outcome: KernelOutcome, entries: Mapping[tuple[str, str], Any], complete: bool, keepalived: KeepalivedReport | None = None
    ) -> None:
        """The sync's figures, and the objects by state, counted again only for the objects in `entries`."""
        m = self.metrics
        if keepalived is not None and keepalived.error:
            m.errors.labels("keepalived").inc()
        if complete:
            self._states.clear()
            self.state_counts.clear()
        problems = {ref: p.reason for ref, p in outcome.problems.items()}
        for key in entries:
            record = self.records.get(key)
            old = self._states.pop(key, None)
            if old is not None:
                self.state_counts[old] -= 1
            if record is None:
                continue
            ref = f"{record.namespace}/{record.name}"
            if record.vs is None:
                state = "invalid"
            elif problems.get(ref) == "Conflict":
                state = "conflict"
            elif problems.get(ref) == "KernelError":
                state = "kernel_error"
            elif ref in problems:
                state = "failed"
            elif ref in outcome.programmed:
                failed = outcome.error is not None or (keepalived is not None and bool(keepalived.failure(ref)))
                state = "failed" if failed else "programmed"
            else:
                state = "not_selected"
            self._states[key] = state
            self.state_counts[state] += 1
        for state_name in OBJECT_STATES:
            m.virtualservices.labels(state_name).set(self.state_counts[state_name])

    def log_outcome(self, outcome: KernelOutcome, reasons: Iterable[str]) -> None:
        why = ", ".join(sorted(reasons)) or "periodic resync"
        counts = ",".join(f"{kind}={n}" for kind, n in sorted(outcome.plan.counts().items()))
        if outcome.error:
            log.error(kv("Kernel sync failed; retrying", node=self.node_name, error=outcome.error, applied=len(outcome.applied), planned=len(outcome.plan.ops), trigger=why))
        elif outcome.plan.ops:
            log.info(kv("Programmed kernel", node=self.node_name, operations=len(outcome.plan.ops), writes=outcome.writes, changes=counts,
                        virtualServices=self.state_counts["programmed"], duration=f"{outcome.seconds * 1000:.1f}ms", trigger=why,
                        full=outcome.full))
            # Built only when shown: a cold start applies a few operations per object (35,000 lines at 5,000).
            for op in outcome.applied if log.isEnabledFor(logging.DEBUG) else ():
                log.debug(kv("Applied", node=self.node_name, kind=op.kind, operation=op.describe()))
        else:
            log.debug(kv("Kernel already matches", node=self.node_name, virtualServices=self.state_counts["programmed"], trigger=why))
        for problem in outcome.problems.values() if log.isEnabledFor(logging.DEBUG) else ():
            log.debug(kv("Not programmed", virtualService=problem.obj, reason=problem.reason, message=problem.message))
