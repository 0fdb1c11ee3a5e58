"""The cluster's side of who may claim an address: the VipPools and Namespaces watched, as one ClaimRule.

Owns the kopf indexes of VipPools (parsed; an invalid pool grants nothing, logged once per
version) and of Namespaces (their labels, for `serviceAllocation.namespaceSelectors`), the
handlers that wake the loop when a pool or a Namespace's labels change (every claim is then
judged again), and `rule()`: the vsop.core.claims.ClaimRule of what the watches hold now,
under `--vip-policy`. The agent and the controller both register it, so both judge by the
same pools, and decide with the same vsop.core.claims.admit.
Must not import: vsop.node, vsop.adapters.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping

import kopf

from vsop.api.errors import InvalidInput
from vsop.api.model import API_GROUP, API_VERSION
from vsop.api.pools import POOL_PLURAL, VipPool, parse_vip_pool
from vsop.core.claims import ClaimRule, Policy
from vsop.kube.runtime import ListingGate, Trigger, kv

log = logging.getLogger("vsop.kube.claims")

POOL_INDEX, NAMESPACE_INDEX = "vsop_claim_pools", "vsop_claim_namespaces"


def _pool(body: Mapping[str, Any], name: str) -> VipPool | None:
    try:
        return parse_vip_pool(json.loads(json.dumps(dict(body), default=dict)))
    except InvalidInput as exc:
        log.warning(kv("VipPool invalid: it grants nothing until fixed", pool=name, error=str(exc)))
        return None


def _labels(body: Mapping[str, Any]) -> dict[str, str]:
    labels = (body.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}


class ClaimWatch:
    """The pools and Namespaces of the cluster; `rule()` is cached until one of them changes."""

    def __init__(self, policy: Policy, trigger: Trigger, gate: ListingGate):
        self.policy = policy
        self.trigger = trigger
        self.gate = gate
        self._indexes: dict[str, Any] = {}
        self._seen: dict[tuple[str, str], Any] = {}  # (kind, name) -> what a change must alter to matter
        self._rule: ClaimRule | None = None

    def register(self, registry: kopf.OperatorRegistry) -> None:
        @kopf.index(API_GROUP, API_VERSION, POOL_PLURAL, id=POOL_INDEX, registry=registry)
        async def index_claim_pools(body: kopf.Body, name: str, **_: Any) -> dict[Any, Any]:
            pool = _pool(body, name)
            return {name: pool} if pool is not None else {}

        @kopf.index("", "v1", "namespaces", id=NAMESPACE_INDEX, registry=registry)
        async def index_claim_namespaces(body: kopf.Body, name: str, **_: Any) -> dict[Any, Any]:
            return {name: _labels(body)}

        @kopf.on.startup(registry=registry)
        async def capture_claim_indexes(**kwargs: Any) -> None:
            self._indexes = {name: kwargs[name] for name in (POOL_INDEX, NAMESPACE_INDEX)}

        @kopf.on.event(API_GROUP, API_VERSION, POOL_PLURAL, registry=registry)
        async def claim_pool_event(event: Mapping[str, Any], body: kopf.Body, name: str, **_: Any) -> None:
            self._changed(event, "vippool", name, (body.get("spec") or {}))

        @kopf.on.event("", "v1", "namespaces", registry=registry)
        async def claim_namespace_event(event: Mapping[str, Any], body: kopf.Body, name: str, **_: Any) -> None:
            self._changed(event, "namespace", name, _labels(body))

    def _changed(self, event: Mapping[str, Any], kind: str, name: str, what: Any) -> None:
        self.gate.done()
        current = None if event.get("type") == "DELETED" else json.dumps(what, sort_keys=True, default=str)
        if self._seen.get((kind, name), "unseen") == current:
            return  # a Namespace's status, a pool's metadata: no claim changes
        self._seen[(kind, name)] = current
        self._rule = None
        self.trigger.wake(f"{kind} {name} {str(event.get('type') or 'listed').lower()}: claims judged again")

    def rule(self) -> ClaimRule:
        """Who may claim which VIP, by what the watches hold now."""
        if self._rule is None:
            pools = [next(iter(store)) for store in self._indexes.get(POOL_INDEX, {}).values() if len(store)]
            namespaces = {name: next(iter(store)) for name, store in self._indexes.get(NAMESPACE_INDEX, {}).items() if len(store)}
            self._rule = ClaimRule(policy=self.policy, pools=tuple(sorted(pools, key=lambda p: p.name)), namespace_labels=namespaces)
        return self._rule
