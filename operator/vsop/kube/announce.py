"""Which node announces a VIP: this node's state for each object (agent), the announcing nodes (controller).

Owns, for objects with `announce: vrrp` or `announce: bgp`, the `announced` value of a node's
NodeReport entry and the `status.announcedBy` the controller sums up from them:
- VRRP: keepalived's state for the instance carrying the VIP, as its notify FIFO said it
  (`master`: this node holds the VIP and answers ARP/ND for it; `backup`, `fault`, `stop`,
  `unknown`: keepalived said nothing yet);
- BGP: `announced` (the VIP's route is in vsop's table and a BGP session is Established, or the
  sessions are not known here), `withdrawn` (no route: not serving, or the node is drained),
  `nosession` (the route is there but no BGP session is Established: no router hears it);
- the node's BGP sessions as its NodeReport carries them (`status.bgpSessions`), bounded;
- `announced_by`: the announcing nodes' names, at most MAX_NAMES_IN_MESSAGE of them and a count, or
  "every selected node" when every programmed node announces a BGP VIP (a node joining then
  writes nothing on the objects), or "none".
Pure: must not import kopf, kubernetes, asyncio, vsop.node or vsop.adapters.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

ANNOUNCING = frozenset({"master", "announced"})  # the states in which a node attracts the VIP's packets
BGP_ANNOUNCED, BGP_WITHDRAWN, BGP_NO_SESSION = "announced", "withdrawn", "nosession"
EVERY_NODE = "every selected node"
NOBODY = "none"
MAX_SESSIONS = 32  # BGP sessions a NodeReport carries (a speaker has a few peers)
MAX_SESSION_ERROR = 256
MAX_NAMES = 5


def bgp_state(routed: bool, sessions_up: bool | None) -> str:
    """An `announce: bgp` object's state on this node: `routed` its route is in vsop's table;
    `sessions_up` whether a BGP session is Established (None: not known here)."""
    if not routed:
        return BGP_WITHDRAWN
    return BGP_NO_SESSION if sessions_up is False else BGP_ANNOUNCED


def object_state(announce: str, vip: str, routed: bool, vrrp: Mapping[str, str] | None, sessions_up: bool | None) -> str | None:
    """This node's `announced` value for one object (None: not announced, or not known here).
    `vrrp`: VIP -> keepalived's state for it (None: keepalived's transitions are not read here)."""
    if announce == "vrrp":
        return None if vrrp is None else vrrp.get(vip, "unknown")
    if announce == "bgp":
        return bgp_state(routed, sessions_up)
    return None


def session_entries(sessions: Iterable[Any]) -> list[dict[str, Any]]:
    """The BGP sessions (vsop.bgp.sessions.Session) as a NodeReport carries them, bounded."""
    entries = []
    for session in list(sessions)[:MAX_SESSIONS]:
        entry: dict[str, Any] = {"peer": session.peer, "up": session.up, "bgpState": session.bgp_state or session.state}
        if session.asn is not None:
            entry["asn"] = session.asn
        if session.last_error:
            entry["lastError"] = session.last_error[:MAX_SESSION_ERROR]
        entries.append(entry)
    return entries


def sessions_up(sessions: Sequence[Any] | None) -> bool | None:
    """Whether a BGP session is Established (None: BIRD was not asked, or did not answer)."""
    return None if sessions is None else any(session.up for session in sessions)


def announced_by(announce: str, states: Mapping[str, str | None], programmed: Sequence[str], everywhere: bool) -> str | None:
    """`status.announcedBy`: who announces the VIP, from the programmed nodes' `announced` values
    (None: the object is not announced, or no node says). `everywhere`: every selected node has it programmed."""
    if announce not in ("vrrp", "bgp"):
        return None
    said = {node: states.get(node) for node in programmed if states.get(node) is not None}
    if not said:
        return None
    nodes = sorted(node for node, state in said.items() if state in ANNOUNCING)
    if not nodes:
        return NOBODY
    if announce == "bgp" and everywhere and len(nodes) == len(programmed):
        return EVERY_NODE
    more = len(nodes) - MAX_NAMES
    shown = ", ".join(nodes[:MAX_NAMES])
    return f"{shown} and {more} more" if more > 0 else shown
