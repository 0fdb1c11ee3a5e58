"""Executing a plan on the node's kernel.

Owns the capability probe before any write, executing a plan as runs of consecutive
operations per adapter (so adapters can batch), recording the sysctls vsop changes
(and restoring them), and forgetting removed UDP real servers' conntrack entries. The
plan comes from vsop.node.whole (the whole node) or the node reconciler (some VIPs);
the adapters from the Kernel port (vsop.adapters.kernel), on real or fake adapters.
One failpoint for tests, off unless the environment names it: `VSOP_FAILPOINT=after-address:kill`
SIGKILLs the process right after a run of writes that bound a VIP and before its IPVS
service is added (the crash window the plan's order must keep safe).
Must not import: kopf, kubernetes, jinja2, pyroute2 (adapters are injected).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Sequence

from vsop.adapters.base import Adapter, OperationFailed
from vsop.adapters.kernel import Kernel
from vsop.core import ops
from vsop.core.plan import Plan
from vsop.core.stale import removed_udp_real_servers
from vsop.core.sysctls import recorded, restore_order
from vsop.core.state import KernelState, Names

log = logging.getLogger("vsop.node.execute")


class ExecutionFailed(Exception):
    """The kernel refused an operation; the ones before it were applied."""

    def __init__(self, failure: OperationFailed, applied: int, writes: int, applied_ops: Sequence[ops.Op] = ()):
        self.op = failure.op
        self.reason = failure.reason
        self.applied = applied
        self.writes = writes
        self.applied_ops = tuple(applied_ops)  # the operations applied before the refusal
        super().__init__(f"{failure.op.kind} {failure.op.describe()}: {failure.reason}")


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


FAILPOINT_ENV = "VSOP_FAILPOINT"
FAILPOINTS: dict[str, type[ops.Op]] = {"after-address": ops.AddAddress}  # point -> the run it follows


def failpoint(run: Sequence[ops.Op]) -> None:
    """Tests only: `VSOP_FAILPOINT=POINT:kill` SIGKILLs this process after a run holding POINT's operation."""
    spec = os.environ.get(FAILPOINT_ENV)
    if not spec:
        return
    point, _, action = spec.partition(":")
    kind = FAILPOINTS.get(point)
    if action == "kill" and kind is not None and any(isinstance(op, kind) for op in run):
        log.critical("failpoint reached: killing this process failpoint=%s pid=%d", spec, os.getpid())
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


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
    if the_plan.ops:  # a long sync's derive and plan end here (-v): what follows changes the kernel
        log.debug("writing to the kernel operations=%d", len(the_plan.ops))
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
            failpoint(run)
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
