"""What a VirtualService's status says: one node's entry, and the conditions summed up over nodes.

Owns the shape of one node's entry for an object (each agent writes its entries in its
own NodeReport, vsop.kube.report), the
`Ready` / `Programmed` / `Degraded` / `Conflict` conditions and `status.backends`
(written by the controller), keeping `lastTransitionTime` when a condition's status
does not change, and which condition changes deserve an Event.
Node messages start with a reason (`VIPRefused: ...`, `KernelError: ...`,
`InvalidSpec: ...`) so the controller can tell failures apart. With `announce`, an entry says this
node's state for the VIP and the status who announces it (vsop.kube.announce).
Pure: must not import kopf, kubernetes, asyncio, vsop.node.execute or vsop.adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from vsop.core.state import KernelState
from vsop.kube.announce import announced_by

CONDITION_TYPES = ("Ready", "Programmed", "Degraded", "Conflict")
NODE_FAILURE_REASONS = ("VIPRefused", "KernelError")
MAX_NAMES_IN_MESSAGE = 5


# --- one node's entry (agent) -------------------------------------------------------------


@dataclass(frozen=True)
class NodeEntry:
    """One node's entry in its NodeReport: what this node did with one VirtualService."""

    programmed: bool
    total: int = 0
    healthy: int = 0
    message: str = ""
    observed_generation: int | None = None
    announced: str | None = None  # announce: vrrp or bgp: this node's state for the VIP (vsop.kube.announce)

    def as_status(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "programmed": self.programmed,
            "backends": {"total": self.total, "healthy": self.healthy},
            "message": self.message,
        }
        if self.observed_generation is not None:
            entry["observedGeneration"] = self.observed_generation
        if self.announced is not None:
            entry["announced"] = self.announced
        return entry


def normalize_node_status(raw: Any) -> dict[str, Any] | None:
    """A node entry as found on an object, with the CRD defaults filled in, for comparing."""
    if not isinstance(raw, Mapping):
        return None
    backends = raw.get("backends") if isinstance(raw.get("backends"), Mapping) else {}
    entry: dict[str, Any] = {
        "programmed": bool(raw.get("programmed", False)),
        "backends": {"total": int(backends.get("total", 0) or 0), "healthy": int(backends.get("healthy", 0) or 0)},
        "message": str(raw.get("message", "") or ""),
    }
    if raw.get("observedGeneration") is not None:
        entry["observedGeneration"] = raw.get("observedGeneration")
    if isinstance(raw.get("announced"), str):
        entry["announced"] = raw["announced"]
    return entry


def backend_counts(state: KernelState, ref: str) -> tuple[int, int]:
    """(total, healthy) backends of one VirtualService: distinct real server addresses, healthy with weight > 0."""
    keys = {key for key, service in state.services.items() if service.owner == ref}
    total: set[str] = set()
    healthy: set[str] = set()
    for rs in state.real_servers.values():
        if rs.key.service in keys:
            total.add(rs.key.address)
            if rs.weight > 0:
                healthy.add(rs.key.address)
    return len(total), len(healthy)


def node_reason(message: str) -> str:
    """The reason a node message starts with (`VIPRefused: ...` -> `VIPRefused`), or ''."""
    head, sep, _ = message.partition(":")
    return head if sep and head.isalnum() and head[:1].isupper() else ""


# --- conditions over all nodes (controller) -----------------------------------------------


@dataclass(frozen=True)
class Facts:
    """Everything the controller knows about one VirtualService when it sums up its status."""

    generation: int | None
    invalid: str | None = None  # why the current spec is refused, or None
    conflict: str | None = None  # the conflict, naming the winner, or None
    not_allowed: str | None = None  # why its namespace may not claim its VIP (vsop.core.claims), or None
    expected: tuple[str, ...] = ()  # Ready nodes the nodeSelector matches whose agent has a NodeReport
    nodes: Mapping[str, Any] | None = None  # node -> its entry for this object, from the NodeReports
    known_nodes: frozenset[str] | None = None  # every Node of the cluster; None while not listed yet
    unreported: tuple[str, ...] = ()  # Ready nodes the nodeSelector matches whose agent has not reported yet
    announce: str = "none"  # spec.announce of the current generation (vsop.kube.announce sums up who does)


@dataclass(frozen=True)
class Summary:
    conditions: tuple[dict[str, Any], ...]  # without lastTransitionTime
    backends: dict[str, int]
    programmed: tuple[str, ...]
    expected: tuple[str, ...]
    failed: Mapping[str, str]
    stale: tuple[str, ...]  # node keys of Nodes that no longer exist
    announced_by: str | None = None  # status.announcedBy (vsop.kube.announce)


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_IN_MESSAGE])
    more = len(names) - MAX_NAMES_IN_MESSAGE
    return f"{shown} and {more} more" if more > 0 else shown


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    condition: dict[str, Any] = {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def summarize(facts: Facts) -> Summary:
    nodes = facts.nodes or {}
    gen = facts.generation
    current: dict[str, dict[str, Any]] = {}
    for name in facts.expected:
        entry = normalize_node_status(nodes.get(name))
        if entry is not None and (gen is None or entry.get("observedGeneration") == gen):
            current[name] = entry
    programmed = tuple(n for n in facts.expected if current.get(n, {}).get("programmed"))
    failed = {n: e["message"] for n, e in current.items() if not e["programmed"] and e["message"]}
    waiting = [n for n in facts.expected if n not in programmed and n not in failed]
    # trafficPolicy: Local: a node without a local endpoint is programmed and refuses its clients; the
    # backends are those of the nodes that have some (every node has its own).
    local_less = {n for n in programmed if node_reason(current[n]["message"]) == "NoLocalEndpoints"}
    counts = [current[n]["backends"] for n in programmed if n not in local_less]
    total = max((c["total"] for c in counts), default=0)
    healthy = min((c["healthy"] for c in counts), default=0)
    n, m = len(programmed), len(facts.expected)
    # No node count once every expected node has it: a node joining (and programming it) writes nothing here.
    on_nodes = "programmed on every selected node" if n == m else f"programmed on {n} of {m} node(s)"

    conflict = _condition("Conflict", facts.conflict is not None, "Conflict" if facts.conflict else "NoConflict", facts.conflict or "", gen)

    failures = "; ".join(f"{name}: {failed[name]}" for name in sorted(failed)[:MAX_NAMES_IN_MESSAGE])
    if facts.invalid is not None:
        still = f"; {n} node(s) keep programming the last valid generation" if n else ""
        prog = _condition("Programmed", False, "InvalidSpec", f"{facts.invalid}{still}", gen)
    elif facts.not_allowed is not None:
        prog = _condition("Programmed", False, "VIPNotAllowed", facts.not_allowed, gen)
    elif facts.conflict is not None:
        prog = _condition("Programmed", False, "Conflict", facts.conflict, gen)
    elif m == 0 and facts.unreported:
        prog = _condition("Programmed", False, "Pending", f"no agent has reported yet; waiting for {_names(facts.unreported)}", gen)
    elif m == 0:
        prog = _condition("Programmed", False, "NoMatchingNodes", "nodeSelector matches no Ready node", gen)
    elif n == m:
        prog = _condition("Programmed", True, "Programmed", on_nodes, gen)
    elif failed:
        prog = _condition("Programmed", False, "NotProgrammed", f"{on_nodes}; failed on {failures}", gen)
    else:
        prog = _condition("Programmed", False, "Pending", f"{on_nodes}; waiting for {_names(waiting)}", gen)

    reasons = {node_reason(message) for message in failed.values()}
    if failed:
        reason = reasons.pop() if len(reasons) == 1 and "" not in reasons else "NodeErrors"
        degraded = _condition("Degraded", True, reason, f"failed on {len(failed)} node(s): {failures}", gen)
    elif facts.invalid is not None and n:
        degraded = _condition("Degraded", True, "InvalidSpec", f"{facts.invalid}; {n} node(s) keep programming the last valid generation", gen)
    elif facts.invalid is None and facts.conflict is None and facts.not_allowed is None and local_less and len(local_less) == n:
        degraded = _condition("Degraded", True, "NoLocalEndpoints", f"trafficPolicy Local: no node has a ready local endpoint; {on_nodes}", gen)
    elif facts.invalid is None and facts.conflict is None and facts.not_allowed is None and n and healthy == 0:
        degraded = _condition("Degraded", True, "NoReadyBackends", f"no ready backends ({total} known); {on_nodes}", gen)
    else:
        degraded = _condition("Degraded", False, "AsExpected", "", gen)

    if prog["reason"] in ("InvalidSpec", "VIPNotAllowed", "Conflict", "NoMatchingNodes"):
        ready = _condition("Ready", False, prog["reason"], prog["message"], gen)
    elif n == 0:
        ready = _condition("Ready", False, prog["reason"], prog["message"], gen)
    elif local_less and len(local_less) == n:
        ready = _condition("Ready", False, "NoLocalEndpoints", f"trafficPolicy Local: no node has a ready local endpoint; {on_nodes}", gen)
    elif healthy == 0:
        ready = _condition("Ready", False, "NoReadyBackends", f"no ready backends ({total} known); {on_nodes}", gen)
    else:
        ready = _condition("Ready", True, "Ready", f"{healthy} of {total} backend(s) healthy; {on_nodes}", gen)

    stale: tuple[str, ...] = ()
    if facts.known_nodes is not None:
        stale = tuple(sorted(name for name in nodes if name not in facts.known_nodes))
    return Summary(
        conditions=(ready, prog, degraded, conflict),
        backends={"total": total, "healthy": healthy},
        programmed=programmed,
        expected=facts.expected,
        failed=failed,
        stale=stale,
        announced_by=announced_by(facts.announce, {node: current[node].get("announced") for node in programmed}, programmed, n == m),
    )


def with_transition_times(new: Iterable[Mapping[str, Any]], old: Iterable[Mapping[str, Any]], now: str) -> list[dict[str, Any]]:
    """The new conditions, each keeping its old lastTransitionTime unless its status changed."""
    before = {c.get("type"): c for c in old if isinstance(c, Mapping)}
    result: list[dict[str, Any]] = []
    for condition in new:
        previous = before.get(condition["type"])
        same = previous is not None and previous.get("status") == condition["status"] and previous.get("lastTransitionTime")
        result.append({**condition, "lastTransitionTime": previous["lastTransitionTime"] if same else now})  # type: ignore[index]
    return result


@dataclass(frozen=True)
class EventSpec:
    type: str  # Normal | Warning
    reason: str
    message: str


def transition_events(old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]) -> list[EventSpec]:
    """What a user must notice in a change of conditions: conflict, invalid spec, a VIP not allowed, degraded, programmed."""
    before = {c.get("type"): c for c in old if isinstance(c, Mapping)}
    after = {c["type"]: c for c in new}
    events: list[EventSpec] = []

    def changed(kind: str, *fields: str) -> bool:
        a, b = before.get(kind) or {}, after.get(kind) or {}
        return any(a.get(f) != b.get(f) for f in fields)

    conflict = after.get("Conflict")
    if conflict and conflict["status"] == "True" and changed("Conflict", "status", "message"):
        events.append(EventSpec("Warning", "Conflict", conflict["message"]))
    ready = after.get("Ready")
    if ready and ready["reason"] in ("InvalidSpec", "VIPNotAllowed") and changed("Ready", "reason", "message"):
        events.append(EventSpec("Warning", ready["reason"], ready["message"]))
    degraded = after.get("Degraded")
    if degraded and degraded["status"] == "True" and degraded["reason"] != "InvalidSpec" and changed("Degraded", "status", "reason"):
        events.append(EventSpec("Warning", degraded["reason"], degraded["message"]))
    if degraded and degraded["status"] == "False" and (before.get("Degraded") or {}).get("status") == "True":
        events.append(EventSpec("Normal", "Recovered", "no longer degraded"))
    programmed = after.get("Programmed")
    if programmed and programmed["status"] == "True" and changed("Programmed", "status"):
        events.append(EventSpec("Normal", "Programmed", programmed["message"]))
    return events
