"""The whole-node path: one plan-and-execute for `vsop apply`, `vsop plan`, cleanup and recovery.

Owns the pipeline every whole-node write takes, in order: derive (desired_state from the
objects) -> keep held (vsop.core.held) -> draining (the caller's `drain`) -> plan ->
execute (vsop.node.execute) -> repairs -> log. `program` is the middle of it (held, draining,
plan), shared with the node reconciler's change path, which derives per object and plans
per VIP; `report_repairs` is the one place a drift repair is logged. `sync` is the whole of
it: the reconciler's first plan and its recovery after a failed write, and the tests' and
benches' reference. `cleanup` plans from the kernel to nothing of vsop's.
Must not import: kopf, kubernetes, jinja2, pyroute2 (adapters are injected).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping

from vsop.adapters.kernel import Kernel, read_observed
from vsop.core import ops
from vsop.core.claims import HOST_RULE, ClaimRule, admit
from vsop.core.desired import Desired, Endpoint, Node, desired_state
from vsop.core.drift import Repair, repairs
from vsop.core.held import Held, keep_held
from vsop.core.plan import Plan, plan
from vsop.core.state import KernelState, Names, RealServerKey
from vsop.api.model import VirtualService
from vsop.node.execute import execute

log = logging.getLogger("vsop.node.whole")

# What draining does to a target: (desired, observed) -> desired with weight-0 entries kept.
Drain = Callable[[KernelState, KernelState], KernelState]


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


def derive(
    services: Iterable[VirtualService],
    node: Node,
    observed: KernelState,
    *,
    names: Names = Names(),
    endpoints: Mapping[tuple[str, str], Iterable[Endpoint]] | None = None,
    out_of_service: frozenset[RealServerKey] = frozenset(),
    kernel_version: tuple[int, int] | None = None,
    rule: ClaimRule | None = HOST_RULE,
    liberal: bool = False,
) -> Desired:
    """The node's desired state from its objects, with the node addresses `observed` was read with.
    `rule`: who may claim which VIP (vsop.core.claims; a plain host's by default)."""
    services = list(services)
    return desired_state(
        services,
        node,
        names=names,
        endpoints=endpoints,
        node_addresses=observed.node_addresses,
        out_of_service=out_of_service,
        kernel_version=kernel_version,
        liberal=liberal,
        refused=admit(services, rule, sharing=False) if rule is not None else None,
    )


def program(
    desired: Desired,
    observed: KernelState,
    names: Names = Names(),
    *,
    held: Held | None = None,
    drain: Drain | None = None,
    keep_accept_ra: bool = False,
    link_elsewhere: bool = False,
    check: Callable[[Desired], None] | None = None,
) -> tuple[Desired, Plan]:
    """Keep held -> draining -> plan: the desired state as it will be written, and its plan.

    `held` names objects declared but unusable now: what the kernel has for them is kept
    (vsop.core.held). `check` sees the desired state once held owners are kept, before
    anything is planned (the one-shot commands refuse problems there). `drain(desired,
    observed)` amends the target for real servers still draining. `link_elsewhere`: both
    states are cuts around some VIPs (see vsop.core.plan.plan).
    """
    if held:
        desired = keep_held(desired, observed, held, names)
    if check is not None:
        check(desired)
    if drain is not None:
        desired = replace(desired, state=drain(desired.state, observed))
    return desired, plan(desired.state, observed, names, link_elsewhere=link_elsewhere, keep_accept_ra=keep_accept_ra)


def report_repairs(applied: list[ops.Op], expected: KernelState, observed: KernelState, wanted: KernelState) -> list[Repair]:
    """The writes of `applied` that put back what changed behind vsop's back (vsop.core.drift), each logged."""
    found = repairs(applied, expected, observed, wanted)
    for repair in found:
        log.warning(
            "repaired drift: the kernel was changed behind vsop's back object=%s change=%r found=%r put_back=%r",
            repair.obj or "-", f"{repair.op.kind} {repair.op.describe()}", repair.found, repair.wanted,
        )
    return found


def sync(
    kernel: Kernel,
    services: Iterable[VirtualService],
    node: Node,
    *,
    names: Names = Names(),
    endpoints: Mapping[tuple[str, str], Iterable[Endpoint]] | None = None,
    out_of_service: frozenset[RealServerKey] = frozenset(),
    kernel_version: tuple[int, int] | None = None,
    liberal: bool = False,
    adjust: Drain | None = None,
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
        desired = derive(
            services, node, observed, names=names, endpoints=endpoints, out_of_service=out_of_service, kernel_version=kernel_version,
            liberal=liberal,
        )
    desired, the_plan = program(desired, observed, names, held=held, drain=adjust, keep_accept_ra=keep_accept_ra)
    planned = time.monotonic()
    result = SyncResult(desired, the_plan, read_seconds=read_done - started, plan_seconds=planned - read_done, observed=observed)
    if not dry_run:
        _execute(kernel, result, observed, names)
    if expected is not None and result.applied:
        result.repairs = report_repairs(result.applied, expected, observed, desired.state)
    result.seconds = time.monotonic() - started
    result.execute_seconds = result.seconds - (planned - started)
    return result


def cleanup(kernel: Kernel, names: Names = Names(), dry_run: bool = False) -> SyncResult:
    """Remove everything vsop owns: the plan from what is there to nothing of vsop's."""
    started = time.monotonic()
    observed = read_observed(kernel, names)
    result = SyncResult(Desired(KernelState(), ()), plan(KernelState(), observed, names))
    if not dry_run:
        _execute(kernel, result, observed, names)
    result.seconds = time.monotonic() - started
    return result


def _execute(kernel: Kernel, result: SyncResult, observed: KernelState, names: Names) -> None:
    if result.plan.ops:
        result.writes, result.applied = execute(
            kernel, result.plan, names, observed=observed, conntrack_failures=result.conntrack_failures
        )
