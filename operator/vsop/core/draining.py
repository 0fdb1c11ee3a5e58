"""Graceful termination of real servers, like kube-proxy's: drain first, delete later.

Owns the decision for a real server that left the desired state while its service
stays: keep it at weight 0 (no new connections, established ones finish) until it
has no connections left or its grace period ran out, then let the plan delete it.
UDP has no connection to wait for, so a UDP real server goes at once. A whole
service that goes away is deleted at once, as kube-proxy does.
Pure: the clock is an argument; must not import time, asyncio or anything outside the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from vsop.core.plan import owned
from vsop.core.state import KernelState, Names, RealServer, RealServerKey, ServiceKey
from vsop.api.model import VirtualService

DEFAULT_GRACE_SECONDS = 30.0


@dataclass
class Draining:
    """When each draining real server started to drain (monotonic seconds)."""

    since: dict[RealServerKey, float] = field(default_factory=dict)

    def keys(self) -> frozenset[RealServerKey]:
        return frozenset(self.since)


def with_draining(
    desired: KernelState,
    observed: KernelState,
    draining: Draining,
    now: float,
    grace: Mapping[ServiceKey, float] | None = None,
    names: Names = Names(),
    uncounted: frozenset[ServiceKey] = frozenset(),
) -> KernelState:
    """The desired state plus weight-0 entries for real servers still draining.

    Updates `draining` in place: starts the clock for newly removed real servers and
    forgets those that are deleted or came back. `uncounted`: services whose connection
    counters could not be read now; their leaving real servers are taken as busy (they
    drain, and a later reconcile with counters deletes the idle ones).
    """
    grace = grace or {}
    mine = owned(observed, names)
    keep: dict[RealServerKey, RealServer] = {}
    for key, current in mine.real_servers.items():
        if key in desired.real_servers or key.service not in desired.services:
            draining.since.pop(key, None)
            continue
        if key.service.protocol == "udp":
            draining.since.pop(key, None)  # nothing to wait for; conntrack cleanup moves clients
            continue
        started = draining.since.setdefault(key, now)
        limit = grace.get(key.service, DEFAULT_GRACE_SECONDS)
        # Only established connections are waited for: closing ones (InActConn) are
        # expired by the kernel anyway (expire_nodest_conn=1) and would hold a real
        # server for the two minutes of TIME_WAIT.
        if current.active_connections == 0 and key.service not in uncounted:
            draining.since.pop(key, None)  # nothing to drain: the plan deletes it now
            continue
        if now - started >= limit:
            draining.since.pop(key, None)  # grace period over: delete even with connections
            continue
        keep[key] = replace(current, weight=0)
    for key in list(draining.since):
        if key not in keep:
            draining.since.pop(key, None)
    if not keep:
        return desired
    return replace(desired, real_servers={**desired.real_servers, **keep})


def starting_to_drain(desired: KernelState, observed: KernelState, draining: Draining, names: Names = Names()) -> frozenset[ServiceKey]:
    """The TCP services where a real server of vsop's leaves the desired state without draining
    yet: whether it drains or goes at once depends on its connection counters now."""
    return frozenset(
        key.service for key in owned(observed, names).real_servers
        if key not in desired.real_servers and key.service in desired.services
        and key.service.protocol != "udp" and key not in draining.since
    )


def grace_by_service(services: Iterable[VirtualService]) -> dict[ServiceKey, float]:
    """How long the removed real servers of each IPVS service may drain (spec.drain.timeoutSeconds)."""
    grace: dict[ServiceKey, float] = {}
    for vs in services:
        for port in vs.spec.ports:
            key = ServiceKey(port.protocol.lower(), vs.spec.vip, port.port)  # type: ignore[arg-type]
            grace[key] = float(vs.spec.drain.timeout_seconds)
    return grace


def keep_drains(
    desired: KernelState,
    observed: KernelState,
    since: Mapping[RealServerKey, float],
    now: float,
    grace: Mapping[ServiceKey, float] | None = None,
    names: Names = Names(),
) -> KernelState:
    """The desired state plus weight-0 entries for the real servers another writer is draining.

    `since` says when each of the host agent's drains started (on the clock of `now`): those
    still within their grace and holding established connections are kept at weight 0, as the
    agent keeps them (`with_draining`). No drain starts here: a one-shot command cannot wait
    for one (`vsop delete` drains the objects it deletes itself), so any other real server that
    left the desired state goes as the plan says.
    """
    state = with_draining(desired, observed, Draining(dict(since)), now, grace, names)
    fresh = {key for key in state.real_servers if key not in desired.real_servers and key not in since}
    if not fresh:
        return state
    return replace(state, real_servers={key: rs for key, rs in state.real_servers.items() if key not in fresh})
