"""One level-based sync: read the node, compute the desired state, plan, execute.

Owns the `Kernel` bundle of adapters, reading every adapter into one observed
`KernelState`, the capability probe before any write, and executing a plan as runs
of consecutive operations per adapter (so adapters can batch). The same engine runs
under `vsop apply`, the host agent and the in-cluster agent, on real or fake adapters.
Must not import: kopf, kubernetes, jinja2, pyroute2 (adapters are injected).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping, Sequence

from vsop.adapters.base import Adapter, IPSetAdapter, IPTablesAdapter, IPVSAdapter, LinkAdapter, OperationFailed, SysctlAdapter
from vsop.adapters.conntrack import ConntrackCleaner
from vsop.adapters.sysctl import SysctlRecord
from vsop.core import ops
from vsop.core.desired import ARP_SYSCTLS, Desired, Endpoint, Node, desired_state, family_sysctls, kernel_sysctls
from vsop.core.held import Held, keep_held
from vsop.core.plan import Plan, plan
from vsop.core.drift import Repair, repairs
from vsop.core.stale import removed_udp_real_servers
from vsop.core.sysctls import accept_ra_name, recorded, restore_order
from vsop.core.state import KernelState, Names, RealServerKey
from vsop.api.model import VirtualService

log = logging.getLogger("vsop.node.execute")

ALL_SYSCTLS = tuple(sorted({*family_sysctls(4), *family_sysctls(6), *kernel_sysctls((6, 0)), *ARP_SYSCTLS}))


def running_kernel_version() -> tuple[int, int] | None:
    """(major, minor) of the running kernel, from its release string."""
    import platform

    parts = platform.release().split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return None


@dataclass
class Kernel:
    ipvs: IPVSAdapter
    links: LinkAdapter
    ipsets: IPSetAdapter
    iptables: IPTablesAdapter
    sysctls: SysctlAdapter
    # Forgets the conntrack entries of removed UDP real servers; None: nobody does (a dry run).
    conntrack: ConntrackCleaner | None = None
    # The values of the settings vsop changed, before its first change; None: not recorded.
    sysctl_record: SysctlRecord | None = None

    def adapter_for(self, op: ops.Op) -> Adapter:
        for adapter in (self.ipvs, self.links, self.ipsets, self.iptables, self.sysctls):
            if isinstance(op, adapter.handles):
                return adapter
        raise TypeError(f"no adapter handles {op.kind}")


class ExecutionFailed(Exception):
    """The kernel refused an operation; the ones before it were applied."""

    def __init__(self, failure: OperationFailed, applied: int, writes: int, applied_ops: Sequence[ops.Op] = ()):
        self.op = failure.op
        self.reason = failure.reason
        self.applied = applied
        self.writes = writes
        self.applied_ops = tuple(applied_ops)  # the operations applied before the refusal
        super().__init__(f"{failure.op.kind} {failure.op.describe()}: {failure.reason}")


@dataclass
class SyncResult:
    desired: Desired
    plan: Plan
    writes: int = 0
    seconds: float = 0.0
    applied: list[ops.Op] = field(default_factory=list)
    read_seconds: float = 0.0  # reading the kernel
    plan_seconds: float = 0.0  # desired state, diff and plan
    execute_seconds: float = 0.0  # the writes
    # "real server: reason" for each removed UDP real server whose conntrack entries stay.
    conntrack_failures: list[str] = field(default_factory=list)
    # Operations that put back what changed behind vsop's back (only when `expected` was given).
    repairs: list[Repair] = field(default_factory=list)
    observed: KernelState | None = None  # what was read before the writes


def read_observed(kernel: Kernel, names: Names) -> KernelState:
    link, addresses, node_addresses = kernel.links.read(names.link)
    services, real_servers = kernel.ipvs.read()
    chains, jumps = kernel.iptables.read(names.owned_chains())
    return KernelState(
        link=link,
        addresses=addresses,
        services=services,
        real_servers=real_servers,
        ipsets=kernel.ipsets.read(names.owned_set_names()),
        chains=chains,
        jumps=jumps,
        sysctls=kernel.sysctls.read((*ALL_SYSCTLS, *(accept_ra_name(i) for i in kernel.sysctls.ipv6_interfaces()))),
        node_addresses=node_addresses,
    )


def runs(operations: Sequence[ops.Op], kernel: Kernel) -> list[tuple[Adapter, list[ops.Op]]]:
    """Split a plan into maximal runs of consecutive operations for the same adapter."""
    result: list[tuple[Adapter, list[ops.Op]]] = []
    for op in operations:
        adapter = kernel.adapter_for(op)
        if result and result[-1][0] is adapter:
            result[-1][1].append(op)
        else:
            result.append((adapter, [op]))
    return result


def probe(kernel: Kernel, the_plan: Plan, names: Names) -> None:
    """Refuse before any write when the kernel cannot do what the plan needs."""
    if any(isinstance(op, (ops.AddService, ops.EditService, ops.AddRealServer, ops.EditRealServer)) for op in the_plan.ops):
        kernel.ipvs.probe()
    if any(isinstance(op, ops.CreateLink) for op in the_plan.ops):
        kernel.links.probe(names.link)


def execute(
    kernel: Kernel,
    the_plan: Plan,
    names: Names,
    *,
    observed: KernelState | None = None,
    conntrack_failures: list[str] | None = None,
) -> tuple[int, list[ops.Op]]:
    """Apply the plan; then forget the conntrack entries of every UDP real server it removed.

    `observed` is the state the plan was made from (it names the real servers a deleted
    service took with it; read from IPVS when not given). The conntrack step runs after
    a failed run too, for what was applied; its failures are logged and appended to
    `conntrack_failures`, and never fail the sync: the kernel state is right, only UDP
    clients on a fixed source port stay on the old real server until their entry expires.
    """
    probe(kernel, the_plan, names)
    if observed is None and kernel.conntrack is not None and any(
        isinstance(op, ops.DeleteService) and op.key.protocol == "udp" for op in the_plan.ops
    ):
        services, real_servers = kernel.ipvs.read()
        observed = KernelState(services=services, real_servers=real_servers)
    writes = 0
    applied: list[ops.Op] = []
    try:
        for adapter, run in runs(the_plan.ops, kernel):
            try:
                writes += adapter.apply(run)
            except OperationFailed as failure:
                index = run.index(failure.op) if failure.op in run else 0
                applied.extend(run[:index])
                raise ExecutionFailed(failure, len(applied), writes + index, applied) from None
            applied.extend(run)
    finally:
        record_sysctls(kernel, applied)
        failures = forget_removed_udp(kernel, applied, observed or KernelState())
        if conntrack_failures is not None:
            conntrack_failures.extend(failures)
    return writes, applied


def record_sysctls(kernel: Kernel, applied: Sequence[ops.Op]) -> None:
    """Keep the value each setting had before vsop first changed it, for `cleanup --restore-sysctls`."""
    if kernel.sysctl_record is None or not any(isinstance(op, ops.SetSysctl) for op in applied):
        return
    try:
        before = kernel.sysctl_record.load()
        after = recorded(before, applied)
        if after != before:
            kernel.sysctl_record.save(after)
    except OSError as exc:
        log.warning("cannot record the sysctls vsop changed; cleanup --restore-sysctls will not know them error=%r", str(exc))


def changed_sysctls(kernel: Kernel) -> dict[str, tuple[str, str | None]]:
    """Each setting vsop changed: (the value found before vsop's first change, the value now)."""
    if kernel.sysctl_record is None:
        return {}
    before = kernel.sysctl_record.load()
    now = kernel.sysctls.read(before)
    return {name: (before[name], now.get(name)) for name in restore_order(before)}


def restore_sysctls(kernel: Kernel, dry_run: bool = False) -> list[ops.SetSysctl]:
    """Put back the values recorded before vsop's first change; forget the record. Returns the changes (`dry_run`: only that)."""
    if kernel.sysctl_record is None:
        return []
    changes = [
        ops.SetSysctl(name, before, now)
        for name, (before, now) in changed_sysctls(kernel).items()
        if now is not None and now != before  # an interface that is gone has nothing to restore
    ]
    if dry_run:
        return changes
    for change in changes:
        kernel.sysctls.apply([change])
    kernel.sysctl_record.save({})
    return changes


def forget_removed_udp(kernel: Kernel, applied: Sequence[ops.Op], before: KernelState) -> list[str]:
    """UDP clients of a removed real server move at once, not when their conntrack entry expires."""
    if kernel.conntrack is None:
        return []
    failures: list[str] = []
    for key in removed_udp_real_servers(applied, before):
        try:
            kernel.conntrack.forget_udp(key.service.vip, key.service.port, key.address, key.port)
        except (OSError, ValueError) as exc:
            failures.append(f"{key.service} -> {key}: {exc}")
            log.warning(
                "forgetting UDP conntrack entries failed; its clients stay on it until their entries expire service=%r real_server=%s error=%r",
                str(key.service), key, str(exc),
            )
    return failures


def sync(
    kernel: Kernel,
    services: Iterable[VirtualService],
    node: Node,
    *,
    names: Names = Names(),
    endpoints: Mapping[tuple[str, str], Iterable[Endpoint]] | None = None,
    out_of_service: frozenset[RealServerKey] = frozenset(),
    kernel_version: tuple[int, int] | None = None,
    adjust: Callable[[KernelState, KernelState], KernelState] | None = None,
    dry_run: bool = False,
    observed: KernelState | None = None,
    desired: Desired | None = None,
    keep_accept_ra: bool = False,
    expected: KernelState | None = None,
    held: Held | None = None,
) -> SyncResult:
    """One level-based sync. `adjust(desired, observed)` may amend the desired state (draining).

    `expected` is what the caller believes the kernel holds: the target of its last
    successful sync (`result.desired.state`) or a cache of its own writes. With it, every
    operation that puts back something changed behind vsop's back is logged with what it
    found and put back, and listed in `result.repairs` (vsop.core.drift).

    The node reconciler (vsop.node) passes what it already has: the `observed` state it just
    read and the `desired` state assembled from its per-object fragments (then `services`
    is not looked at); everything else is the same path `apply` takes.

    `held` names objects declared but unusable now: what the kernel has for them is kept
    (vsop.core.held), also when `desired` is given.
    """
    started = time.monotonic()
    if observed is None:
        observed = read_observed(kernel, names)
    read_done = time.monotonic()
    if desired is None:
        desired = desired_state(
            services,
            node,
            names=names,
            endpoints=endpoints,
            node_addresses=observed.node_addresses,
            out_of_service=out_of_service,
            kernel_version=kernel_version,
        )
    if held:
        desired = keep_held(desired, observed, held, names)
    if adjust is not None:
        desired = replace(desired, state=adjust(desired.state, observed))
    the_plan = plan(desired.state, observed, names, keep_accept_ra=keep_accept_ra)
    planned = time.monotonic()
    result = SyncResult(desired, the_plan, read_seconds=read_done - started, plan_seconds=planned - read_done, observed=observed)
    if not dry_run and the_plan.ops:
        result.writes, result.applied = execute(
            kernel, the_plan, names, observed=observed, conntrack_failures=result.conntrack_failures
        )
    if expected is not None and result.applied:
        result.repairs = repairs(result.applied, expected, observed, desired.state)
        for repair in result.repairs:
            log.warning(
                "repaired drift: the kernel was changed behind vsop's back object=%s change=%r found=%r put_back=%r",
                repair.obj or "-", f"{repair.op.kind} {repair.op.describe()}", repair.found, repair.wanted,
            )
    result.seconds = time.monotonic() - started
    result.execute_seconds = result.seconds - (planned - started)
    return result


def cleanup(kernel: Kernel, names: Names = Names(), dry_run: bool = False) -> SyncResult:
    """Remove everything vsop owns: the plan from what is there to nothing of vsop's."""
    started = time.monotonic()
    observed = read_observed(kernel, names)
    the_plan = plan(KernelState(), observed, names)
    result = SyncResult(Desired(KernelState(), ()), the_plan)
    if not dry_run and the_plan.ops:
        result.writes, result.applied = execute(
            kernel, the_plan, names, observed=observed, conntrack_failures=result.conntrack_failures
        )
    result.seconds = time.monotonic() - started
    return result


def fake_kernel(state: KernelState | None = None, names: Names = Names()) -> tuple[Kernel, "FakeKernel"]:
    """A Kernel of in-memory fakes sharing one state, and that state's holder."""
    from vsop.adapters.conntrack import FakeConntrack
    from vsop.adapters.fake import FakeIPSets, FakeIPTables, FakeIPVS, FakeKernel, FakeLinks, FakeSysctls
    from vsop.adapters.sysctl import MemoryRecord

    state = state or KernelState()
    # Like a kernel with IPVS loaded: every setting vsop reads exists, off by default.
    state = replace(state, sysctls={**{name: "0" for name in ALL_SYSCTLS}, **state.sysctls})
    fake = FakeKernel(state, names)
    kernel = Kernel(FakeIPVS(fake), FakeLinks(fake), FakeIPSets(fake), FakeIPTables(fake), FakeSysctls(fake), FakeConntrack(), MemoryRecord())
    return kernel, fake
