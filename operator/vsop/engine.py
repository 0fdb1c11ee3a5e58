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
from vsop.core import ops
from vsop.core.desired import ARP_SYSCTLS, Desired, Endpoint, Node, desired_state, family_sysctls, kernel_sysctls
from vsop.core.plan import Plan, plan
from vsop.core.state import KernelState, Names, RealServerKey
from vsop.model import VirtualService

log = logging.getLogger("vsop.engine")

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

    def adapter_for(self, op: ops.Op) -> Adapter:
        for adapter in (self.ipvs, self.links, self.ipsets, self.iptables, self.sysctls):
            if isinstance(op, adapter.handles):
                return adapter
        raise TypeError(f"no adapter handles {op.kind}")


class ExecutionFailed(Exception):
    """The kernel refused an operation; the ones before it were applied."""

    def __init__(self, failure: OperationFailed, applied: int, writes: int):
        self.op = failure.op
        self.reason = failure.reason
        self.applied = applied
        self.writes = writes
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
        sysctls=kernel.sysctls.read(ALL_SYSCTLS),
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


def execute(kernel: Kernel, the_plan: Plan, names: Names) -> tuple[int, list[ops.Op]]:
    probe(kernel, the_plan, names)
    writes = 0
    applied: list[ops.Op] = []
    for adapter, run in runs(the_plan.ops, kernel):
        try:
            writes += adapter.apply(run)
        except OperationFailed as failure:
            index = run.index(failure.op) if failure.op in run else 0
            applied.extend(run[:index])
            raise ExecutionFailed(failure, len(applied), writes + index) from None
        applied.extend(run)
    return writes, applied


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
) -> SyncResult:
    """One level-based sync. `adjust(desired, observed)` may amend the desired state (draining)."""
    started = time.monotonic()
    observed = read_observed(kernel, names)
    read_done = time.monotonic()
    desired = desired_state(
        services,
        node,
        names=names,
        endpoints=endpoints,
        node_addresses=observed.node_addresses,
        out_of_service=out_of_service,
        kernel_version=kernel_version,
    )
    if adjust is not None:
        desired = replace(desired, state=adjust(desired.state, observed))
    the_plan = plan(desired.state, observed, names)
    planned = time.monotonic()
    result = SyncResult(desired, the_plan, read_seconds=read_done - started, plan_seconds=planned - read_done)
    if not dry_run and the_plan.ops:
        result.writes, result.applied = execute(kernel, the_plan, names)
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
        result.writes, result.applied = execute(kernel, the_plan, names)
    result.seconds = time.monotonic() - started
    return result


def fake_kernel(state: KernelState | None = None, names: Names = Names()) -> tuple[Kernel, "FakeKernel"]:
    """A Kernel of in-memory fakes sharing one state, and that state's holder."""
    from vsop.adapters.fake import FakeIPSets, FakeIPTables, FakeIPVS, FakeKernel, FakeLinks, FakeSysctls

    state = state or KernelState()
    # Like a kernel with IPVS loaded: every setting vsop reads exists, off by default.
    state = replace(state, sysctls={**{name: "0" for name in ALL_SYSCTLS}, **state.sysctls})
    fake = FakeKernel(state, names)
    return Kernel(FakeIPVS(fake), FakeLinks(fake), FakeIPSets(fake), FakeIPTables(fake), FakeSysctls(fake)), fake
