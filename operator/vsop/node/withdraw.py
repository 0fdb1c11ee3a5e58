"""announce: bgp objects that leave a node: the route goes first, the IPVS services a drain later.

Owns what the node loop hands the reconciler when an `announce: bgp` object is gone from its
source: first the same object with `announce: none` (the reconciler deletes its route in
vsop's table, so BIRD withdraws the VIP from its peers, and keeps its IPVS services, address
and rules), then, `spec.drain.timeoutSeconds` later, its removal. Meanwhile the packets the
network still sends this node while BGP converges, and the connections established through
it, are served instead of reset. Declared again meanwhile, the pending removal is forgotten
and the new definition taken; a drain of 0 seconds removes it at once, as any other object.
Pure: the clock is an argument. Must not import: asyncio, kopf, kubernetes, pyroute2, vsop.adapters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

from vsop.api.model import VirtualService

log = logging.getLogger("vsop.node")


def withdrawn(vs: VirtualService) -> VirtualService:
    """`vs` as it stays while its route is withdrawn and its services drain: announce: none."""
    return vs.model_copy(update={"spec": vs.spec.model_copy(update={"announce": "none"})})


@dataclass
class Withdrawals:
    """The objects withdrawn over BGP whose removal is due later: ref -> when (clock seconds)."""

    due: dict[str, float] = field(default_factory=dict)

    def intercept(self, changed: Mapping[str, VirtualService | None], current: Mapping[str, VirtualService], now: float) -> dict[str, VirtualService | None]:
        """What the reconciler should take for the source's `changed`, given the objects it has
        (`current`): a gone announce: bgp object becomes its withdrawn copy, its removal scheduled."""
        taken: dict[str, VirtualService | None] = {}
        for ref, vs in changed.items():
            if vs is not None:
                self.due.pop(ref, None)
                taken[ref] = vs
                continue
            if ref in self.due:
                continue  # already withdrawn, its removal already scheduled
            old = current.get(ref)
            if old is None or old.spec.announce != "bgp" or old.spec.drain.timeout_seconds == 0:
                taken[ref] = None
                continue
            grace = old.spec.drain.timeout_seconds
            self.due[ref] = now + grace
            taken[ref] = withdrawn(old)
            log.info("VirtualService deleted: its VIP is withdrawn over BGP first, its IPVS services go after the drain object=%s vip=%s drain_seconds=%d",
                     ref, old.spec.vip, grace)
        return taken

    def expired(self, now: float) -> dict[str, None]:
        """The withdrawn objects whose drain is over: their removal, now."""
        gone = {ref: None for ref, when in self.due.items() if when <= now}
        for ref in gone:
            del self.due[ref]
            log.info("VirtualService removed after its BGP withdrawal and drain object=%s", ref)
        return gone

    def next_due(self) -> float | None:
        return min(self.due.values(), default=None)
