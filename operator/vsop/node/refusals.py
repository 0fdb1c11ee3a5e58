"""Per-VIP fault isolation: the VIPs (and address families) whose writes the kernel refused.

Owns, between reconciles: which VIPs a refused operation takes out (the VIP the operation is
about; for a setting of IPv6, the family and so every IPv6 VIP: a node booted with
ipv6.disable=1 has no net.ipv6 sysctls), the kernel's
reason each VIP keeps (the text of that VIP's own operation, never another's), when each is
tried again (backoff doubling from `base` to `most` seconds; a change to one of its objects
tries it at once), and the `KernelError` problem of each object on a refused VIP. What a
refused VIP holds is kept as the kernel has it (vsop.core.refused.keep_as_found) while the
reconciler (vsop.node.reconciler) plans and writes the rest of the node in the same turn,
as kube-proxy's IPVS proxier carries on service by service.
`write_leaving_out` is the loop of a whole-node write that leaves out each VIP refused on the way.
Must not import: kopf, kubernetes, pyroute2, asyncio (the kernel is behind the caller's `write` and `read`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import AbstractSet, Any, Callable, Collection, Iterable, TypeVar

from vsop.core import ops
from vsop.core.refused import op_family, vip_family
from vsop.core.state import KernelState
from vsop.node.execute import ExecutionFailed
from vsop.node.resync import op_vip

log = logging.getLogger("vsop.node")

BASE_SECONDS = 5.0  # the first retry of a refused VIP, as the agents retry a failed turn
MOST_SECONDS = 300.0
# VIPs one reconcile takes out at most (each costs a read of the kernel): a kernel refusing
# every VIP (IPVS gone from under the agent) fails the reconcile as a whole instead.
MOST_ROUNDS = 16


@dataclass
class Refusal:
    reason: str  # "service.add tcp 10.0.0.1:80 (twos): ...": the refused operation and the kernel's words
    failures: int  # refused this many times in a row
    due: float  # the clock's time of the next try


class Refusals:
    """Refused VIPs and families, their reasons and next tries. `clock` is the reconciler's."""

    def __init__(self, clock: Callable[[], float], base: float = BASE_SECONDS, most: float = MOST_SECONDS):
        self.clock = clock
        self.base = base
        self.most = most
        self.vips: dict[str, Refusal] = {}
        self.families: dict[int, Refusal] = {}

    def __bool__(self) -> bool:
        return bool(self.vips or self.families)

    def _refused(self, was: Refusal | None, reason: str) -> Refusal:
        failures = 1 if was is None else was.failures + 1
        return Refusal(reason, failures, self.clock() + min(self.most, self.base * 2 ** (failures - 1)))

    def refuse(self, op: ops.Op, reason: str, kept: AbstractSet[str], kept_families: AbstractSet[int], vips: Iterable[str]) -> bool:
        """The kernel refused `op` (`reason`: the operation and the kernel's words) in a plan that
        kept `kept` and `kept_families` as found: take out its VIP (or family). False: it is nobody's
        to take out (a setting of IPv4 or IPVS, a set, chain or jump, the link), or keeping it failed too;
        then the whole turn failed. `vips`: the VIPs, for the count a family's refusal takes out."""
        vip = op_vip(op)
        if vip is not None:
            if vip in kept or vip_family(vip) in kept_families:
                return False
            self.vips[vip] = self._refused(self.vips.get(vip), reason)
            log.error("the kernel refused a write; the VIP is left as the kernel has it and tried again later, the rest of the node goes on "
                      "vip=%s retry_seconds=%g error=%r", vip, self.vips[vip].due - self.clock(), reason)
            return True
        family = op_family(op)
        if family != 6 or family in kept_families:
            return False
        self.families[family] = refusal = self._refused(self.families.get(family), reason)
        taken = sum(1 for v in vips if vip_family(v) == family)
        log.error("the kernel refused a setting of IPv6; every IPv6 VIP is left as the kernel has it and tried again later, IPv4 goes on "
                  "vips=%d retry_seconds=%g error=%r", taken, refusal.due - self.clock(), reason)
        return True

    def kept(self) -> frozenset[str]:
        """The refused VIPs not due for a try now: planned as the kernel has them."""
        now = self.clock()
        return frozenset(vip for vip, refusal in self.vips.items() if refusal.due > now)

    def kept_families(self) -> frozenset[int]:
        now = self.clock()
        return frozenset(family for family, refusal in self.families.items() if refusal.due > now)

    def due(self) -> set[str]:
        """Refused VIPs whose next try is due: planned again now."""
        now = self.clock()
        return {vip for vip, refusal in self.vips.items() if refusal.due <= now}

    def family_due(self) -> bool:
        now = self.clock()
        return any(refusal.due <= now for refusal in self.families.values())

    def due_now(self, changed: Iterable[str], declared: Iterable[str]) -> set[str]:
        """Refused VIPs to try again now: those due, and those whose objects changed (`changed`);
        every declared IPv6 VIP when IPv6 is due."""
        self.retry_now(changed)
        due = self.due()
        if self.family_due():
            due |= {vip for vip in declared if vip_family(vip) == 6}
        return due

    def retry_now(self, vips: Iterable[str]) -> None:
        """Objects on these VIPs changed: try them at the next plan, whatever their backoff."""
        now = self.clock()
        for vip in vips:
            refusal = self.vips.get(vip)
            if refusal is not None and refusal.due > now:
                refusal.due = now

    def written(self, vips: Iterable[str], families: bool) -> set[str]:
        """A plan of `vips` (and of every family's shared part when `families`) was written whole:
        they are refused no more. Returns the VIPs whose refusal this lifted."""
        kept = self.kept()
        lifted = {vip for vip in vips if vip in self.vips and vip not in kept}
        for vip in lifted:
            log.info("a VIP the kernel refused before is programmed vip=%s", vip)
            del self.vips[vip]
        if families:
            for family in self.families.keys() - self.kept_families():
                log.info("IPv%d settings the kernel refused before are programmed", family)
                del self.families[family]
        return lifted

    def forget(self, vips: Iterable[str]) -> None:
        for vip in vips:
            self.vips.pop(vip, None)

    def reason(self, vip: str) -> str | None:
        """Why the kernel refused what this VIP's objects need; None: it did not."""
        refusal = self.vips.get(vip)
        if refusal is not None:
            return refusal.reason
        family = self.families.get(vip_family(vip))
        if family is not None:
            return f"this node's kernel refused IPv{vip_family(vip)}: {family.reason}"
        return None

    def retry_in(self) -> float | None:
        """Seconds until the next refused VIP or family is due (0: now); None: nothing refused."""
        dues = [r.due for r in self.vips.values()] + [r.due for r in self.families.values()]
        return max(0.0, min(dues) - self.clock()) if dues else None

    def reasons(self) -> dict[str, str]:
        """Each refused VIP (and family, as "IPv6") with its reason, for status and logs."""
        found = {vip: refusal.reason for vip, refusal in self.vips.items()}
        found.update({f"IPv{family}": refusal.reason for family, refusal in self.families.items()})
        return found


R = TypeVar("R")


def write_leaving_out(
    refusals: Refusals,
    vips: Collection[str],
    observed: KernelState,
    write: Callable[[KernelState, frozenset[str], frozenset[int]], R],
    read: Callable[[], KernelState | None],
    outcome: Any,
) -> tuple[R, KernelState] | None:
    """`write(observed, kept VIPs, kept families)` until it goes through: a refusal that takes one
    more VIP (or IPv6) out is followed by `read()` (the kernel as the refused batch left it; None:
    the read failed) and another write of the rest, in the same reconcile. Returns the result and
    the state it was planned from; None when the read failed. Raises the refusal that is nobody's
    to take out. `outcome` (vsop.node.reconciler.Outcome) collects each try's writes, applied
    operations and refusals. `vips`: the VIPs declared (a round per VIP at most, MOST_ROUNDS in all)."""
    for _ in range(min(len(vips) + 2, MOST_ROUNDS)):
        kept, families = refusals.kept(), refusals.kept_families()
        try:
            return write(observed, kept, families), observed
        except ExecutionFailed as exc:
            outcome.writes, outcome.applied = outcome.writes + exc.writes, [*outcome.applied, *exc.applied_ops]
            if not refusals.refuse(exc.op, str(exc), kept, families, vips):
                raise
            outcome.refused[op_vip(exc.op) or "IPv6"] = str(exc)
            fresh = read()
            if fresh is None:
                return None
            observed = fresh
    raise RuntimeError(f"the kernel refused writes of {MOST_ROUNDS} VIPs in one sync: left as they are, and the sync failed")


__all__ = ["BASE_SECONDS", "MOST_ROUNDS", "MOST_SECONDS", "Refusal", "Refusals", "write_leaving_out"]
