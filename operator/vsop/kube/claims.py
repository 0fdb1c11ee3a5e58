"""The cluster's side of who may claim an address: the VipPools and Namespaces watched, as one ClaimRule.

Owns the kopf indexes of VipPools (parsed; an invalid pool grants nothing, logged once per
version) and of Namespaces (their labels, for `serviceAllocation.namespaceSelectors`), the
handlers that wake the loop when a pool or a Namespace's labels change (every claim is then
judged again), and `rule()`: the vsop.core.claims.ClaimRule of what the watches hold now,
under `--vip-policy`. The agent and the controller both register it, so both judge by the
same pools, and decide with the same vsop.core.claims.admit.
Also the held claims of deleted objects (vsop.core.claims.Tombstone): `shared()` reads what the
controller wrote in the pools' `status.released`, `HeldClaims` merges them with the judge's own
(the deletions it saw), judges with them and wakes the loop when one expires, and `released`
says what the controller writes: a held claim another object contests (so an agent that
restarts within the grace period judges as the others do), until it expires or its object
is re-created and carries it in `status.claimedSince`.
Must not import: vsop.node, vsop.adapters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable, Container, Mapping

import kopf

from vsop.api.errors import InvalidInput
from vsop.api.crd import RELEASED_MAX
from vsop.api.model import API_GROUP, API_VERSION, VirtualService
from vsop.api.pools import POOL_PLURAL, VipPool, parse_vip_pool
from vsop.core.claims import DEFAULT_GRACE_SECONDS, Admission, ClaimRule, Policy, Tombstone, Tombstones
from vsop.core.desired import Problem
from vsop.kube.lbservices import SERVICE_LABEL
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
        self._shared: dict[str, Tombstone] | None = None

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
            self._released(event, name, (body.get("status") or {}).get("released"))

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

    def _released(self, event: Mapping[str, Any], name: str, released: Any) -> None:
        current = None if event.get("type") == "DELETED" or not released else json.dumps(released, sort_keys=True, default=str)
        if self._seen.get(("released", name)) == current:
            return
        self._seen[("released", name)] = current
        self._shared = None
        self.trigger.wake(f"vippool {name} held claims changed")

    def pools(self) -> list[VipPool]:
        return [next(iter(store)) for store in self._indexes.get(POOL_INDEX, {}).values() if len(store)]

    def shared(self) -> dict[str, Tombstone]:
        """The held claims the controller wrote in the pools' status.released, by namespace/name."""
        if self._shared is None:
            found: dict[str, Tombstone] = {}
            for pool in sorted(self.pools(), key=lambda p: p.name):
                for tomb in released_of(pool):
                    if tomb.ref not in found or tomb.until > found[tomb.ref].until:
                        found[tomb.ref] = tomb
            self._shared = found
        return self._shared

    def rule(self) -> ClaimRule:
        """Who may claim which VIP, by what the watches hold now."""
        if self._rule is None:
            pools = self.pools()
            namespaces = {name: next(iter(store)) for name, store in self._indexes.get(NAMESPACE_INDEX, {}).items() if len(store)}
            self._rule = ClaimRule(policy=self.policy, pools=tuple(sorted(pools, key=lambda p: p.name)), namespace_labels=namespaces)
        return self._rule


def released_of(pool: VipPool) -> list[Tombstone]:
    """The held claims in a pool's status.released (an entry that is not one is skipped)."""
    entries = (pool.status or {}).get("released") or ()
    return [t for t in (Tombstone.from_status(e) for e in entries if isinstance(e, Mapping)) if t is not None]


class HeldClaims:
    """One judge's claims (an agent's or the controller's): `judge` is vsop.core.claims.Admission.update
    with the held claims of deleted objects, its own (the deletions it saw) and the shared ones; when
    the first of them expires the loop is woken, so the other object takes the claim then."""

    def __init__(self, watch: ClaimWatch, trigger: Trigger, grace_seconds: float = DEFAULT_GRACE_SECONDS,
                 clock: Callable[[], float] = time.time):
        self.watch = watch
        self.trigger = trigger
        self.clock = clock
        self.tombstones = Tombstones(grace_seconds)
        self.held: dict[str, Tombstone] = {}
        self._due: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def judge(self, admission: Admission, changed: Mapping[str, VirtualService | None], since: Mapping[str, str | None],
              declared: Container[str] = ()) -> dict[str, Problem]:
        """`admission.update` with the held claims; `declared`: changed objects still there but invalid (not gone).
        An object derived from a LoadBalancer Service holds nothing when it goes: the allocation owns its address
        (vsop.kube.loadbalancers), and a Service handed the address next must not wait for a grace period."""
        now = self.clock()
        derived = {ref for ref in changed if (old := admission.objects.get(ref)) is not None and SERVICE_LABEL in old.metadata.labels}
        self.tombstones.note(admission, changed, now, derived | {ref for ref in changed if ref in declared})
        self.held = self.tombstones.held(self.watch.shared(), now)
        refusals = admission.update(self.watch.rule(), changed, since=since, held=self.held)
        self._wake_at(min((t.until for t in self.held.values()), default=None), now)
        return refusals

    def _wake_at(self, due: float | None, now: float) -> None:
        if due == self._due:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due = due
        if due is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # judged outside a loop (a test): the next turn looks again
            return
        self._timer = loop.call_later(max(0.0, due - now) + 0.05, self._expired)

    def _expired(self) -> None:
        self._due, self._timer = None, None
        self.trigger.wake("a held claim's grace period ended: claims judged again")


def released(admission: Admission, held: Mapping[str, Tombstone], pools: list[VipPool]) -> dict[str, list[Tombstone]]:
    """What each pool's status.released should hold (pool name -> its held claims, at most RELEASED_MAX,
    the latest to expire first): every held claim another object is refused for (contested), and one
    written before until it expires or its re-created object no longer needs it (its own age, or the
    status.claimedSince the controller wrote on it, is as old). A claim goes in the first pool (by name)
    holding its VIP; a VIP no pool holds (--vip-policy=any) has no shared claim."""
    contested = {p.other for p in admission.refusals.values() if p.other in held and p.other not in admission.objects}
    written = {t.ref for pool in pools for t in released_of(pool)}
    wanted: dict[str, list[Tombstone]] = {pool.name: [] for pool in pools}
    ordered = sorted(pools, key=lambda p: p.name)
    for ref, tomb in held.items():
        if ref not in contested and ref not in written:
            continue
        if ref in admission.objects:
            vs = admission.objects[ref]
            own = min((a for a in (vs.metadata.creation_timestamp, admission.since.get(ref)) if a), default="")
            if own and own <= tomb.created:
                continue  # taken back: its own seniority (or its status.claimedSince) says it
        pool = next((p for p in ordered if p.holds(tomb.vip)), None)
        if pool is not None:
            wanted[pool.name].append(tomb)
    for name, tombs in wanted.items():
        tombs.sort(key=lambda t: (-t.until, t.ref))
        if len(tombs) > RELEASED_MAX:
            log.warning(kv("VipPool holds more claims of deleted objects than its status keeps: the first to expire are not shared",
                           pool=name, held=len(tombs), kept=RELEASED_MAX))
            del tombs[RELEASED_MAX:]
    return wanted
