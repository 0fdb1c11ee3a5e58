"""Who may claim an address: the pool rule, the metadata rule, sharing across namespaces, seniority.

Owns the decisions of DESIGN.md "Who may claim an address", as pure functions over the
objects (the controller and the agents run the same ones, in the same order, and reach
the same verdict):
- `vip_not_allowed`: in a cluster a VIP must lie in a VipPool granting the object's
  namespace (`--vip-policy=pools`, the default; `any` keeps the old behaviour); a cloud
  metadata address is refused under both policies unless a granting pool names it as a
  single address;
- `host_vip_refused`: on a plain host pools are optional, the metadata addresses are
  refused unless `--allow-vip` names them (with `--vip-policy=pools` every VIP must lie in
  an `--allow-vip` entry);
- `ClaimRule` (one of the two above, as configured where it runs, cached per VIP and
  namespace) and `admit`: every object refused its claim, the rule first, then sharing and
  ports among the admitted ones;
- `resolve_claims`: one VIP:port/protocol has one owner, the older object; a VIP used by
  one namespace is claimed from another only when both objects carry the same
  `vsop.dev/allow-shared-ip` key (and their ports differ, MetalLB's rule);
- `Tombstones`: an object deleted and re-created (same namespace and name) within the grace
  period keeps the seniority it had, so delete + create is not a takeover.
Must not import: kopf, kubernetes, pyroute2, asyncio, subprocess, socket, vsop.adapters, vsop.cli.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, Sequence

from vsop.api.model import VirtualService
from vsop.api.pools import METADATA_ADDRESSES, Block, VipPool, parse_block, pool_summary
from vsop.core.desired import Problem
from vsop.core.state import hostport

SHARED_IP_ANNOTATION = "vsop.dev/allow-shared-ip"
NOT_ALLOWED = "VIPNotAllowed"
CONFLICT = "Conflict"
DEFAULT_GRACE_SECONDS = 300.0

Policy = Literal["pools", "any"]
POLICIES: tuple[str, ...] = ("pools", "any")


def is_metadata_address(vip: str) -> bool:
    return str(ipaddress.ip_address(vip)) in METADATA_ADDRESSES


def _names(pools: Sequence[VipPool]) -> str:
    if not pools:
        return "no VipPool exists"
    shown = [pool_summary(p) for p in sorted(pools, key=lambda p: p.name)[:8]]
    more = f", and {len(pools) - 8} more" if len(pools) > 8 else ""
    return "VipPools: " + ", ".join(shown) + more


def vip_not_allowed(vip: str, namespace: str, pools: Sequence[VipPool], namespace_labels: Mapping[str, str] | None,
                    policy: Policy = "pools", blocks: Mapping[str, tuple[Block, ...]] | None = None,
                    granting: Sequence[VipPool] | None = None) -> str | None:
    """Why `namespace` may not use `vip` (a message for the VIPNotAllowed reason), or None.

    `namespace_labels` is None when the Namespace is unknown: only pools naming the
    namespace (or granting every namespace) grant it then. `blocks`: each pool's entries
    parsed (by name), when the caller keeps them; `granting`: the pools granting `namespace`, likewise.
    """
    address = ipaddress.ip_address(vip)
    parsed = blocks if blocks is not None else {p.name: p.blocks for p in pools}

    def holds(pool: VipPool) -> bool:
        return any(address in block for block in parsed[pool.name])

    def names(pool: VipPool) -> bool:
        return any(block.first == block.last and address in block for block in parsed[pool.name])

    if granting is None:
        granting = [p for p in pools if p.grants_namespace(namespace, namespace_labels)]
    if is_metadata_address(vip):
        if any(names(p) for p in granting):
            return None
        return (f"{vip} is a cloud metadata address (the nodes' instance credentials): refused unless a VipPool granting "
                f"namespace {namespace} names it as a single address ({_names(pools)})")
    if policy == "any":
        return None
    if any(holds(p) for p in granting):
        return None
    holding = [p.name for p in pools if holds(p)]
    if holding:
        return (f"{vip} lies in VipPool {', '.join(sorted(holding))}, which does not grant namespace {namespace} "
                f"({_names(pools)})")
    return f"{vip} lies in no VipPool granting namespace {namespace} ({_names(pools)})"


def host_vip_refused(vip: str, allowed: Iterable[str] = (), policy: Policy = "any") -> str | None:
    """On a plain host (no cluster): the store's writer is root, so pools are optional there.

    `allowed` are the `--allow-vip` entries (addresses, CIDRs, `first-last` ranges). A metadata
    address is refused unless an entry is that single address; with `policy` "pools" every VIP
    must lie in an entry (the host's own pool).
    """
    blocks = [parse_block(entry) for entry in allowed]
    address = ipaddress.ip_address(vip)
    if is_metadata_address(vip):
        if any(b.first == b.last and address in b for b in blocks):
            return None
        return f"{vip} is a cloud metadata address (the host's instance credentials): refused unless --allow-vip={vip} is given"
    if policy == "pools" and not any(address in b for b in blocks):
        given = ", ".join(allowed) if allowed else "none given"
        return f"{vip} lies in no --allow-vip entry (--vip-policy=pools; entries: {given})"
    return None


@dataclass(frozen=True)
class ClaimRule:
    """Who may claim which VIP where this runs: a cluster's VipPools under `policy`, or a plain
    host's `--allow-vip` entries (`host`). Decisions are cached per (VIP, namespace)."""

    policy: Policy = "any"
    pools: tuple[VipPool, ...] = ()
    namespace_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # the Namespaces that exist
    host: bool = False
    allow: tuple[str, ...] = ()  # --allow-vip entries (plain hosts)
    _decided: dict[tuple[str, str], str | None] = field(default_factory=dict, compare=False, repr=False)
    _blocks: dict[str, tuple[Block, ...]] = field(default_factory=dict, compare=False, repr=False)
    _granting: dict[str, list[VipPool]] = field(default_factory=dict, compare=False, repr=False)

    def why_not(self, vip: str, namespace: str) -> str | None:
        """Why `namespace` may not claim `vip` here, or None."""
        key = (vip, namespace)
        if key not in self._decided:
            if self.host:
                self._decided[key] = host_vip_refused(vip, self.allow, self.policy)
            else:
                if len(self._blocks) != len(self.pools):
                    self._blocks.update((p.name, p.blocks) for p in self.pools)
                labels = self.namespace_labels.get(namespace)
                if namespace not in self._granting:
                    self._granting[namespace] = [p for p in self.pools if p.grants_namespace(namespace, labels)]
                self._decided[key] = vip_not_allowed(vip, namespace, self.pools, labels, self.policy, self._blocks, self._granting[namespace])
        return self._decided[key]

    def refusal(self, vs: VirtualService) -> Problem | None:
        why = self.why_not(vs.spec.vip, vs.metadata.namespace)
        return Problem(vs.ref, NOT_ALLOWED, why) if why is not None else None


HOST_RULE = ClaimRule(host=True)  # a plain host without --allow-vip: only the metadata addresses are refused


def admit(services: Iterable[VirtualService], rule: ClaimRule | None, *, sharing: bool = True,
          seniority: Mapping[str, str] | None = None) -> dict[str, Problem]:
    """Every object refused its claim, ref -> why: VIPNotAllowed by `rule`, then (with `sharing`,
    in a cluster) the Conflicts of `resolve_claims` among the others. `services` in conflict order.

    An object refused by the rule claims nothing: it neither wins a port nor blocks another
    namespace from the VIP, so an older object outside its pool cannot squat what a pool
    grants to another namespace.
    """
    refused: dict[str, Problem] = {}
    allowed: list[VirtualService] = []
    for vs in services:
        problem = rule.refusal(vs) if rule is not None else None
        if problem is not None:
            refused[vs.ref] = problem
        else:
            allowed.append(vs)
    if sharing:
        for problem in resolve_claims(allowed, seniority)[1]:
            refused.setdefault(problem.obj, problem)
    return refused


class Admission:
    """`admit`, kept per change (the agents' turns): each changed object is judged by the rule,
    and conflicts are judged again on the VIPs a change touches only (a port conflict and a
    shared VIP never cross VIPs, so per VIP, oldest first, is `admit` over all). A new rule
    (a pool or a Namespace changed) judges every object again. Order: creationTimestamp,
    then namespace/name, as the sources and the controller order them."""

    def __init__(self) -> None:
        self.rule: ClaimRule | None = None
        self.objects: dict[str, VirtualService] = {}
        self._by_vip: dict[str, set[str]] = {}
        self._by_rule: dict[str, Problem] = {}
        self._lost: dict[str, Problem] = {}
        self.refusals: dict[str, Problem] = {}

    def update(self, rule: ClaimRule, changed: Mapping[str, VirtualService | None]) -> dict[str, Problem]:
        """Every object refused now (ref -> why), after `changed` (ref -> the object now, None: gone)."""
        vips: set[str] = set()
        for ref, vs in changed.items():
            old = self.objects.pop(ref, None)
            if old is not None:
                vips.add(old.spec.vip)
                self._by_vip[old.spec.vip].discard(ref)
                if not self._by_vip[old.spec.vip]:
                    del self._by_vip[old.spec.vip]
            self._by_rule.pop(ref, None)
            self._lost.pop(ref, None)
            if vs is not None:
                self.objects[ref] = vs
                self._by_vip.setdefault(vs.spec.vip, set()).add(ref)
                vips.add(vs.spec.vip)
                problem = rule.refusal(vs) if rule is self.rule else None
                if problem is not None:
                    self._by_rule[ref] = problem
        if rule is not self.rule:
            self.rule = rule
            self._by_rule = {ref: p for ref, vs in self.objects.items() if (p := rule.refusal(vs)) is not None}
            vips = set(self._by_vip)
            self._lost = {}
        for vip in vips:
            claimants = self._by_vip.get(vip, set())
            for ref in claimants:
                self._lost.pop(ref, None)
            group = sorted((self.objects[ref] for ref in claimants if ref not in self._by_rule),
                           key=lambda vs: (vs.metadata.creation_timestamp or "", vs.ref))
            if len(group) > 1:
                self._lost.update((p.obj, p) for p in resolve_claims(group)[1])
        self.refusals = {**self._lost, **self._by_rule}
        return self.refusals


def shared_key(vs: VirtualService) -> str | None:
    annotations = (vs.metadata.model_extra or {}).get("annotations") or {}
    key = annotations.get(SHARED_IP_ANNOTATION) if isinstance(annotations, Mapping) else None
    return key if isinstance(key, str) and key else None


@dataclass(frozen=True)
class Tombstone:
    """A deleted object's claim, kept for its re-creation until `until` (the caller's clock)."""

    created: str  # the deleted object's creationTimestamp: the seniority a re-created one inherits
    until: float


class Tombstones:
    """Deleted objects' seniority, by namespace/name, for the grace period. The caller passes the clock."""

    def __init__(self, grace_seconds: float = DEFAULT_GRACE_SECONDS):
        self.grace_seconds = grace_seconds
        self._seen: dict[str, tuple[str | None, str]] = {}  # ref -> (uid, effective creationTimestamp)
        self._dead: dict[str, Tombstone] = {}

    def observe(self, services: Iterable[VirtualService], now: float, uids: Mapping[str, str | None] | None = None) -> dict[str, str]:
        """Record this listing; return the seniority (a creationTimestamp) of every object that inherits one."""
        uids = uids or {}
        current: dict[str, tuple[str | None, str]] = {}
        for vs in services:
            created = vs.metadata.creation_timestamp or ""
            uid = uids.get(vs.ref)
            seen = self._seen.get(vs.ref)
            if seen is not None:
                # The same object keeps the seniority settled when it appeared; another uid under the
                # same name was deleted and re-created between two listings, well within the grace.
                current[vs.ref] = seen if seen[0] == uid else (uid, min(seen[1], created) if created else seen[1])
                continue
            tomb = self._dead.pop(vs.ref, None)
            if tomb is not None and now <= tomb.until and tomb.created < created:
                current[vs.ref] = (uid, tomb.created)
            else:
                current[vs.ref] = (uid, created)
        for ref, (_, created) in self._seen.items():
            if ref not in current and created:
                self._dead[ref] = Tombstone(created, now + self.grace_seconds)
        self._dead = {ref: t for ref, t in self._dead.items() if now <= t.until}
        self._seen = current
        return {ref: created for ref, (_, created) in current.items() if created}


def resolve_claims(services: Iterable[VirtualService], seniority: Mapping[str, str] | None = None) -> tuple[list[VirtualService], list[Problem]]:
    """The objects that keep their claims, and a Conflict for each other one (refused whole).

    Older first (`seniority` overrides an object's creationTimestamp: Tombstones), ties to
    the order given, then the name. A VIP:port/protocol has one owner. A VIP another
    namespace already uses is shared only when both objects carry the same
    `vsop.dev/allow-shared-ip` key.
    """
    seniority = seniority or {}

    def age(vs: VirtualService) -> str:
        return seniority.get(vs.ref) or vs.metadata.creation_timestamp or ""

    ordered = sorted(enumerate(services), key=lambda item: (age(item[1]), item[0], item[1].ref))
    owners: dict[tuple[str, int, str], VirtualService] = {}
    users: dict[str, list[VirtualService]] = {}  # vip -> the winners using it
    winners: list[VirtualService] = []
    problems: list[Problem] = []
    for _, vs in ordered:
        keys = [(vs.spec.vip, port.port, port.protocol) for port in vs.spec.ports]
        clash = next(((key, owners[key]) for key in keys if key in owners), None)
        if clash is not None:
            (vip, port, protocol), owner = clash
            problems.append(Problem(vs.ref, CONFLICT, f"{hostport(vip, port)}/{protocol} is already claimed by VirtualService {owner.ref}, {_why(owner, vs, age)}", owner.ref))
            continue
        key = shared_key(vs)
        other = next((u for u in users.get(vs.spec.vip, ()) if u.metadata.namespace != vs.metadata.namespace and (key is None or shared_key(u) != key)), None)
        if other is not None:
            theirs = shared_key(other)
            problems.append(Problem(vs.ref, CONFLICT, (
                f"{vs.spec.vip} is used by namespace {other.metadata.namespace} (VirtualService {other.ref}, {_why(other, vs, age)}); "
                f"another namespace shares it only when both carry the same {SHARED_IP_ANNOTATION} annotation "
                f"(this one: {key or 'none'}, theirs: {theirs or 'none'})"), other.ref))
            continue
        for k in keys:
            owners[k] = vs
        users.setdefault(vs.spec.vip, []).append(vs)
        winners.append(vs)
    return winners, problems


def _why(owner: VirtualService, other: VirtualService, age: object) -> str:
    first, second = age(owner), age(other)  # type: ignore[operator]
    if first and (not second or first < second):
        inherited = first != owner.metadata.creation_timestamp
        return f"which keeps it: it was created first ({first}{', before it was re-created' if inherited else ''})"
    return "which keeps it: it comes first (same age or no creationTimestamp: the order given, then the name)"


POOL_ENTRIES_MAX = 64  # VipPoolSpec.addresses' bound


def covering_pools(services: Iterable[VirtualService], prefix: str = "upgrade") -> list[dict[str, object]]:
    """VipPool manifests granting each namespace exactly the VIPs its objects use today (the upgrade path).

    One pool per namespace (more past 64 addresses), each VIP a single-address entry (so a
    metadata address in use stays named, and nothing more is granted), `autoAssign: false`
    (no LoadBalancer Service is handed these addresses unasked).
    """
    by_namespace: dict[str, set[str]] = {}
    for vs in services:
        by_namespace.setdefault(vs.metadata.namespace, set()).add(str(ipaddress.ip_address(vs.spec.vip)))
    pools: list[dict[str, object]] = []
    for namespace in sorted(by_namespace):
        addresses = sorted(by_namespace[namespace], key=lambda a: (ipaddress.ip_address(a).version, int(ipaddress.ip_address(a))))
        for part, start in enumerate(range(0, len(addresses), POOL_ENTRIES_MAX)):
            name = f"{prefix}-{namespace}" + (f"-{part + 1}" if part else "")
            pools.append({
                "apiVersion": "vsop.dev/v1alpha1",
                "kind": "VipPool",
                "metadata": {"name": name},
                "spec": {"addresses": addresses[start:start + POOL_ENTRIES_MAX], "autoAssign": False,
                         "serviceAllocation": {"namespaces": [namespace]}},
            })
    return pools
