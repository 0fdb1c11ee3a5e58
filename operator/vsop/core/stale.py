"""Which conntrack entries an executed plan leaves pointing at real servers that are gone.

UDP has no connection to close: a client that keeps sending from one source port keeps
matching its conntrack entry, and with it the NAT towards the old real server, until
the entry times out. Every UDP real server a plan removed (deleted on its own, or with
its whole service) must have its entries forgotten, whichever command or agent ran it.
Pure: must not import kopf, pyroute2, jinja2, subprocess, socket or vsop.adapters.
"""

from __future__ import annotations

from typing import Iterable

from vsop.core import ops
from vsop.core.state import KernelState, RealServerKey


def removed_udp_real_servers(applied: Iterable[ops.Op], before: KernelState) -> list[RealServerKey]:
    """UDP real servers that `applied` removed; `before` is the state the plan was made from.

    Deleting a service takes its real servers with it, so those are found in `before`.
    """
    gone: dict[RealServerKey, None] = {}
    for op in applied:
        if isinstance(op, ops.DeleteRealServer) and op.key.service.protocol == "udp":
            gone[op.key] = None
        elif isinstance(op, ops.DeleteService) and op.key.protocol == "udp":
            for key in sorted(k for k in before.real_servers if k.service == op.key):
                gone[key] = None
    return list(gone)
