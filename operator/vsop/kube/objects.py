"""VirtualService objects as the API serves them: plain JSON, parsed the way files are, fingerprinted.

Owns turning a watched object (a kopf body view) into plain values, validating it with
`parse_virtual_service` (status is written by vsop itself and is not validated), the
one-line wording of why an object is invalid, and the fingerprint of what the kernel
depends on (uid, creation time, spec), so status-only changes wake no agent.
Must not import kopf, kubernetes, asyncio, vsop.node.execute or vsop.adapters.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from vsop.api.errors import InvalidInput
from vsop.api.model import VirtualService, parse_virtual_service


def plain(value: Any) -> Any:
    """Nested mappings and sequences (e.g. kopf's body views) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def parse(body: Mapping[str, Any]) -> tuple[VirtualService | None, str | None]:
    """(the parsed object, None) or (None, why it is invalid: every field and reason on one line)."""
    return parse_plain({k: plain(body.get(k)) for k in ("apiVersion", "kind", "metadata", "spec") if k in body})


def parse_and_fingerprint(body: Mapping[str, Any]) -> tuple[VirtualService | None, str | None, str]:
    """`parse` and `fingerprint` of one body, which is made plain once for both."""
    raw = {k: plain(body.get(k)) for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
    meta = raw.get("metadata") or {}
    stamp = json.dumps([meta.get("uid"), meta.get("creationTimestamp"), raw.get("spec")], sort_keys=True, default=str)  # as `fingerprint`
    return (*parse_plain(raw), stamp)


def claimed_since(body: Mapping[str, Any]) -> str | None:
    """status.claimedSince: the seniority the controller recorded for a re-created object (vsop.core.claims)."""
    status = body.get("status") or {}
    value = status.get("claimedSince") if isinstance(status, Mapping) else None
    return value if isinstance(value, str) and value else None


def parse_plain(raw: dict[str, Any]) -> tuple[VirtualService | None, str | None]:
    try:
        return parse_virtual_service(raw), None
    except InvalidInput as exc:
        return None, "; ".join(f"{e.path}: {e.reason}" if e.path else e.reason for e in exc.errors)


def fingerprint(body: Mapping[str, Any]) -> str:
    """What the kernel depends on: uid, creation time and spec (status-only changes leave it)."""
    meta = body.get("metadata") or {}
    return json.dumps([meta.get("uid"), meta.get("creationTimestamp"), plain(body.get("spec"))], sort_keys=True, default=str)
