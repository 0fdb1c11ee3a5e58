"""A node's report: what one node did with each VirtualService, in one object per node.

Owns the `NodeReport` object (cluster-scoped, group vsop.dev, named after the node):
`status.virtualServices["<namespace>/<name>"]` holds the node's entry for each
VirtualService it handles (the shape of vsop.kube.status.NodeEntry), and what the
agent changes in it from one turn to the next (`report_patch`: only changed entries,
removed ones as null, so one turn is at most one write), and the fields of the node as a whole
(`NODE_FIELDS`), each written only when it changes: `status.bgpSessions`, the node's BGP sessions
(vsop.kube.announce), and `status.localProbes`, the static backends this node probes itself although
it is not their designated checker (vsop.kube.checkers.LocalProbes: its data path showed trouble),
as a count and the first few (`REPORT_PROBES_LISTED`, the CRD's maxItems), so the report stays bounded whatever fails.
Why a separate object and not `status.nodes.<node>` on each VirtualService: every agent
watches every VirtualService, so a key per node on the objects made one change N status
writes each delivered to N agents (N^2 watch events) and grew each object with N. A
report is written by one agent and watched by the controller alone; the controller sums
the reports up into each VirtualService's conditions (MetalLB moved per-node state into
ServiceL2Status objects for the same reasons).
Pure: must not import kopf, kubernetes, asyncio, vsop.node.execute or vsop.adapters.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from vsop.api.crd import REPORT_PROBES_LISTED
from vsop.api.model import API_GROUP, API_VERSION

KIND = "NodeReport"
PLURAL = "nodereports"
RESOURCE = f"{API_GROUP}/{API_VERSION}/{PLURAL}"
MAX_ENTRY_MESSAGE = 512  # a node's message in its report; the controller shows the first few nodes' anyway
# status fields of the node as a whole, each replaced whole where it changed (None: absent)
NODE_FIELDS = ("bgpSessions", "localProbes")


def ref_of(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def entries_of(body: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """`status.virtualServices` of a report body ({} when absent or malformed)."""
    status = (body or {}).get("status") if isinstance(body, Mapping) else None
    found = status.get("virtualServices") if isinstance(status, Mapping) else None
    if not isinstance(found, Mapping):
        return {}
    return {str(ref): dict(entry) for ref, entry in found.items() if isinstance(entry, Mapping)}


def sessions_of(body: Mapping[str, Any] | None) -> list[dict[str, Any]] | None:
    """`status.bgpSessions` of a report body (None when absent or malformed)."""
    status = (body or {}).get("status") if isinstance(body, Mapping) else None
    found = status.get("bgpSessions") if isinstance(status, Mapping) else None
    return [dict(s) for s in found if isinstance(s, Mapping)] if isinstance(found, list) else None


def node_fields_of(body: Mapping[str, Any] | None) -> dict[str, Any]:
    """The node-wide fields (`NODE_FIELDS`) of a report body, those present and well formed."""
    status = (body or {}).get("status") if isinstance(body, Mapping) else None
    found: dict[str, Any] = {}
    sessions = sessions_of(body)
    if sessions is not None:
        found["bgpSessions"] = sessions
    probes = status.get("localProbes") if isinstance(status, Mapping) else None
    if isinstance(probes, Mapping):
        found["localProbes"] = dict(probes)
    return found


def with_node_fields(patch: dict[str, Any] | None, before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any] | None:
    """`patch` (from report_patch, or None) also writing each node-wide field (`NODE_FIELDS`) whose value
    changed from `before` to `after` (field -> value; absent or None: not in the report). A merge patch
    replaces a list whole and None removes the field; `localProbes` always carries both its keys."""
    changed = {name: after.get(name) for name in NODE_FIELDS if before.get(name) != after.get(name)}
    if not changed:
        return patch
    out = patch if patch is not None else {"status": {"virtualServices": {}}}
    out["status"].update(changed)
    return out


def local_probes(count: int, probed: Iterable[tuple[str, str]]) -> dict[str, Any] | None:
    """`status.localProbes`: how many real servers this node probes itself for trouble seen in its data
    path (`count`: one per backend and VIP port, as vsop_health_local_probes counts them), and the first
    `REPORT_PROBES_LISTED` of their (VirtualService, backend) pairs in order; None when there are
    none (the field is left out)."""
    if count <= 0:
        return None
    pairs = sorted(set(probed))[:REPORT_PROBES_LISTED]
    return {"count": count, "backends": [{"virtualService": ref, "backend": backend} for ref, backend in pairs]}


def bounded(entry: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(entry)
    if len(str(out.get("message", ""))) > MAX_ENTRY_MESSAGE:
        out["message"] = str(out["message"])[: MAX_ENTRY_MESSAGE - 3] + "..."
    return out


def report_patch(
    before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any] | None], *, complete: bool = True
) -> dict[str, Any] | None:
    """The merge patch turning the report's entries `before` into `after` (None: nothing to write).

    `after` maps each VirtualService to this node's entry, None where the node has no
    business with it. When `complete`, entries of objects in `before` but not in `after`
    are removed too; otherwise `after` holds only the objects whose entries may have
    changed, and the others stay as they are.
    """
    changes: dict[str, Any] = {}
    for ref, entry in after.items():
        if entry is None:
            if ref in before:
                changes[ref] = None
        elif before.get(ref) != bounded(entry):
            # A merge patch merges nested maps: what the entry no longer has must be nulled.
            changes[ref] = _with_removals(before.get(ref) or {}, bounded(entry))
    if complete:
        for ref in before:
            if ref not in after:
                changes[ref] = None
    return {"status": {"virtualServices": changes}} if changes else None


def _with_removals(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """`new`, plus null for each key `old` has and `new` lacks, at any depth (RFC 7386 merge patch)."""
    out = dict(new)
    for key, value in old.items():
        if key not in new:
            out[key] = None
        elif isinstance(value, Mapping) and isinstance(new[key], Mapping):
            out[key] = _with_removals(value, new[key])
    return out


def _without_nulls(entry: Mapping[str, Any]) -> dict[str, Any]:
    """What an entry is once a merge patch of it was written (its nulls remove keys)."""
    return {key: _without_nulls(value) if isinstance(value, Mapping) else value for key, value in entry.items() if value is not None}


def apply_patch(before: Mapping[str, Mapping[str, Any]], patch: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What the entries are once `patch` (from report_patch) was written."""
    entries = {ref: dict(entry) for ref, entry in before.items()}
    merge_into(entries, patch)
    return entries


def merge_into(entries: dict[str, dict[str, Any]], patch: Mapping[str, Any]) -> None:
    """`apply_patch` in place: costs what the patch holds, not what the report holds."""
    for ref, entry in patch["status"]["virtualServices"].items():
        if entry is None:
            entries.pop(ref, None)
        else:
            entries[ref] = _without_nulls(entry)


def new_report(node: str, patch: Mapping[str, Any]) -> dict[str, Any]:
    """The body creating a node's first report from a report patch (nulls dropped)."""
    status = patch.get("status") or {}
    changes = status.get("virtualServices") or {}
    fields = {name: status[name] for name in NODE_FIELDS if status.get(name) is not None}
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": node, "labels": {"vsop.dev/node": node}},
        "status": {"virtualServices": {ref: _without_nulls(entry) for ref, entry in changes.items() if entry is not None}, **fields},
    }
