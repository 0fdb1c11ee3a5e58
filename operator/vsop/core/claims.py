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
- `Tombstone` / `Tombstones`: a deleted object's claim (its VIP, ports, namespace, sharing key
  and seniority) is held for the grace period: any other object is refused it, and the object
  re-created under the same namespace and name takes it back with the seniority it had (its
  `claimedSince`), so delete + create is not a takeover. `Admission` and `admit` judge the
  held claims with the objects.
Must not import: kopf, kubernetes, pyroute2, asyncio, subprocess, socket, vsop.adapters, vsop.cli.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
from dataclasses import dataclass, field
from typing import Any, Container, Iterable, Literal, Mapping, Sequence

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
          since: Mapping[str, str] | None = None, held: Mapping[str, "Tombstone"] | None = None) -> dict[str, Problem]:
    """Every object refused its claim, ref -> why: VIPNotAllowed by `rule`, then (with `sharing`,
    in a cluster) the Conflicts of `resolve_claims` among the others and the held claims of deleted
    objects (`held`, ref -> Tombstone; one whose object exists again is taken back by it).
    `since`: ref -> status.claimedSince, the seniority a re-created object kept. `services` in conflict order.

    An object refused by the rule claims nothing: it neither wins a port nor blocks another
    namespace from the VIP, so an older object outside its pool cannot squat what a pool
    grants to another namespace. A held claim the rule refuses holds nothing either.
    """
    services = list(services)
    held = held or {}
    refused: dict[str, Problem] = {}
    allowed: list[VirtualService] = []
    for vs in services:
        problem = rule.refusal(vs) if rule is not None else None
        if problem is not None:
            refused[vs.ref] = problem
        else:
            allowed.append(vs)
    if sharing:
        present = {vs.ref for vs in services}
        phantoms = [t for ref, t in sorted(held.items()) if ref not in present and (rule is None or rule.why_not(t.vip, t.namespace) is None)]
        ages = {vs.ref: claim_age(vs, since, held) for vs in allowed}
        for problem in resolve_claims(allowed, ages, phantoms)[1]:
            refused.setdefault(problem.obj, problem)
    return refused


def claim_age(vs: VirtualService, since: Mapping[str, str] | None = None, held: Mapping[str, "Tombstone"] | None = None) -> str:
    """The seniority of an object's claim: the earliest of its creationTimestamp, its status.claimedSince
    (kept from the object it replaced) and the held claim of a deleted object of its name."""
    tomb = (held or {}).get(vs.ref)
    ages = [a for a in (vs.metadata.creation_timestamp, (since or {}).get(vs.ref), tomb.created if tomb is not None else None) if a]
    return min(ages) if ages else ""


class Admission:
    """`admit`, kept per change (the agents' turns): each changed object is judged by the rule,
    and conflicts are judged again on the VIPs a change touches only (a port conflict and a
    shared VIP never cross VIPs, so per VIP, oldest first, is `admit` over all). A new rule
    (a pool or a Namespace changed) judges every object again; a held claim that comes, goes
    or changes judges its VIP (and its re-created object's) again. Order: creationTimestamp,
    then namespace/name, as the sources and the controller order them."""

    def __init__(self) -> None:
        self.rule: ClaimRule | None = None
        self.objects: dict[str, VirtualService] = {}
        self.since: dict[str, str] = {}  # ref -> status.claimedSince
        self.held: dict[str, Tombstone] = {}  # ref -> the held claim of a deleted object
        self._by_vip: dict[str, set[str]] = {}
        self._held_by_vip: dict[str, set[str]] = {}
        self._by_rule: dict[str, Problem] = {}
        self._lost: dict[str, Problem] = {}
        self.refusals: dict[str, Problem] = {}

    def age(self, ref: str) -> str:
        """The seniority of an object judged here (claim_age)."""
        return claim_age(self.objects[ref], self.since, self.held)

    def phantoms(self) -> set[str]:
        """The held claims no object of their name takes back (yet)."""
        return {ref for ref in self.held if ref not in self.objects}

    def update(self, rule: ClaimRule, changed: Mapping[str, VirtualService | None], since: Mapping[str, str | None] | None = None,
               held: Mapping[str, "Tombstone"] | None = None) -> dict[str, Problem]:
        """Every object refused now (ref -> why), after `changed` (ref -> the object now, None: gone).
        `since`: the status.claimedSince of changed objects; `held`: every held claim now (None: as before)."""
        vips: set[str] = set()
        if held is not None and held != self.held:
            vips |= self._hold(held)
        for ref, vs in changed.items():
            old = self.objects.pop(ref, None)
            self.since.pop(ref, None)
            if old is not None:
                vips.add(old.spec.vip)
                self._by_vip[old.spec.vip].discard(ref)
                if not self._by_vip[old.spec.vip]:
                    del self._by_vip[old.spec.vip]
            if ref in self.held:
                vips.add(self.held[ref].vip)  # taken back, or held again
            self._by_rule.pop(ref, None)
            self._lost.pop(ref, None)
            if vs is not None:
                self.objects[ref] = vs
                claimed = (since or {}).get(ref)
                if claimed:
                    self.since[ref] = claimed
                self._by_vip.setdefault(vs.spec.vip, set()).add(ref)
                vips.add(vs.spec.vip)
                problem = rule.refusal(vs) if rule is self.rule else None
                if problem is not None:
                    self._by_rule[ref] = problem
        if rule is not self.rule:
            self.rule = rule
            self._by_rule = {ref: p for ref, vs in self.objects.items() if (p := rule.refusal(vs)) is not None}
            vips = set(self._by_vip)  # a VIP with held claims only has nobody to refuse
            self._lost = {}
        for vip in vips:
            self._judge(rule, vip)
        self.refusals = {**self._lost, **self._by_rule}
        return self.refusals

    def _hold(self, held: Mapping[str, "Tombstone"]) -> set[str]:
        """Take the held claims now; the VIPs whose claims changed."""
        vips: set[str] = set()
        for ref in held.keys() | self.held.keys():
            old, new = self.held.get(ref), held.get(ref)
            if old == new:
                continue
            if old is not None:
                vips.add(old.vip)
                self._held_by_vip[old.vip].discard(ref)
                if not self._held_by_vip[old.vip]:
                    del self._held_by_vip[old.vip]
            if new is not None:
                vips.add(new.vip)
                self._held_by_vip.setdefault(new.vip, set()).add(ref)
            if ref in self.objects:
                vips.add(self.objects[ref].spec.vip)  # its seniority changed
        self.held = dict(held)
        return vips

    def _judge(self, rule: ClaimRule, vip: str) -> None:
        claimants = self._by_vip.get(vip, set())
        for ref in claimants:
            self._lost.pop(ref, None)
        group = sorted((self.objects[ref] for ref in claimants if ref not in self._by_rule),
                       key=lambda vs: (vs.metadata.creation_timestamp or "", vs.ref))
        phantoms = [self.held[ref] for ref in sorted(self._held_by_vip.get(vip, ())) if ref not in self.objects
                    and rule.why_not(vip, self.held[ref].namespace) is None]
        if group and len(group) + len(phantoms) > 1:
            ages = {vs.ref: self.age(vs.ref) for vs in group}
            self._lost.update((p.obj, p) for p in resolve_claims(group, ages, phantoms)[1])


def shared_key(vs: VirtualService) -> str | None:
    annotations = (vs.metadata.model_extra or {}).get("annotations") or {}
    key = annotations.get(SHARED_IP_ANNOTATION) if isinstance(annotations, Mapping) else None
    return key if isinstance(key, str) and key else None


def rfc3339(seconds: float) -> str:
    """Seconds since the epoch as Kubernetes writes a time (UTC, whole seconds)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    """The seconds since the epoch of a Kubernetes time (ValueError when it is none)."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Tombstone:
    """A deleted object's claim, held for its re-creation (same namespace and name) until `until`."""

    namespace: str
    name: str
    vip: str
    ports: tuple[tuple[int, str], ...]  # (port, protocol)
    created: str  # the seniority it had: what the re-created object keeps (its status.claimedSince)
    until: float  # seconds since the epoch (a wall clock: judges on other machines read it)
    shared: str | None = None  # its vsop.dev/allow-shared-ip key

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def of(cls, vs: VirtualService, created: str, until: float) -> "Tombstone":
        return cls(vs.metadata.namespace, vs.metadata.name, vs.spec.vip, tuple((p.port, p.protocol) for p in vs.spec.ports),
                   created, until, shared_key(vs))

    def as_status(self) -> dict[str, Any]:
        """Its entry in a VipPool's status.released."""
        entry: dict[str, Any] = {"namespace": self.namespace, "name": self.name, "vip": self.vip,
                                 "ports": [{"port": port, "protocol": protocol} for port, protocol in self.ports],
                                 "since": self.created, "until": rfc3339(self.until)}
        if self.shared is not None:
            entry["sharedKey"] = self.shared
        return entry

    @classmethod
    def from_status(cls, entry: Any) -> "Tombstone | None":
        """An entry of a VipPool's status.released (None when it is not one)."""
        try:
            ports = tuple((int(p["port"]), str(p["protocol"])) for p in entry["ports"])
            shared = entry.get("sharedKey")
            return cls(str(entry["namespace"]), str(entry["name"]), str(ipaddress.ip_address(entry["vip"])), ports,
                       str(entry["since"]), parse_rfc3339(str(entry["until"])), str(shared) if shared else None)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


class Tombstones:
    """The claims of deleted objects one judge saw go (its own), kept for the grace period, merged with
    the shared ones (what the controller wrote in the VipPools' status). The caller passes the clock."""

    def __init__(self, grace_seconds: float = DEFAULT_GRACE_SECONDS):
        self.grace_seconds = grace_seconds
        self.local: dict[str, Tombstone] = {}

    def note(self, admission: Admission, changed: Mapping[str, VirtualService | None], now: float, unheld: Container[str] = ()) -> None:
        """Before `admission.update(changed)`: an object gone, or replaced by another one under its name
        (a delete and create between two turns: another creationTimestamp), leaves its claim held.
        `unheld`: objects whose going holds nothing (still declared but invalid: their kernel state is
        held, vsop.core.held; or derived from a LoadBalancer Service: its allocation owns the address)."""
        if self.grace_seconds <= 0:
            return
        for ref, vs in changed.items():
            old = admission.objects.get(ref)
            if old is None or ref in unheld or (vs is not None and vs.metadata.creation_timestamp == old.metadata.creation_timestamp):
                continue
            self.local[ref] = Tombstone.of(old, admission.age(ref), float(math.ceil(now + self.grace_seconds)))

    def held(self, shared: Mapping[str, Tombstone], now: float) -> dict[str, Tombstone]:
        """Every claim held now: this judge's own and the shared ones (a shared one wins: every judge reads it)."""
        self.local = {ref: t for ref, t in self.local.items() if now < t.until}
        return {**self.local, **{ref: t for ref, t in shared.items() if now < t.until}}


def _namespace(claim: Any) -> str:
    return claim.namespace if isinstance(claim, Tombstone) else claim.metadata.namespace


def _key(claim: Any) -> str | None:
    return claim.shared if isinstance(claim, Tombstone) else shared_key(claim)


def resolve_claims(services: Iterable[VirtualService], seniority: Mapping[str, str] | None = None,
                   held: Iterable[Tombstone] = ()) -> tuple[list[VirtualService], list[Problem]]:
    """The objects that keep their claims, and a Conflict for each other one (refused whole).

    Older first (`seniority` overrides an object's creationTimestamp: claim_age), ties to
    the order given, then the name. A VIP:port/protocol has one owner. A VIP another
    namespace already uses is shared only when both objects carry the same
    `vsop.dev/allow-shared-ip` key. `held`: deleted objects' claims (no object of their name
    exists), judged as the objects were, at their seniority, before an object of the same age.
    """
    seniority = seniority or {}

    def age(vs: VirtualService) -> str:
        return seniority.get(vs.ref) or vs.metadata.creation_timestamp or ""

    ordered: list[tuple[str, int, int, str, Any]] = [(t.created, 0, i, t.ref, t) for i, t in enumerate(held)]
    ordered += [(age(vs), 1, i, vs.ref, vs) for i, vs in enumerate(services)]
    ordered.sort(key=lambda item: item[:4])
    owners: dict[tuple[str, int, str], Any] = {}
    users: dict[str, list[Any]] = {}  # vip -> the winners using it (objects and held claims)
    winners: list[VirtualService] = []
    problems: list[Problem] = []
    for *_, claim in ordered:
        problem = _clash(claim, owners, users, age)
        if isinstance(claim, Tombstone):
            if problem is None:
                for port, protocol in claim.ports:
                    owners[(claim.vip, port, protocol)] = claim
                users.setdefault(claim.vip, []).append(claim)
            continue
        if problem is not None:
            problems.append(problem)
            continue
        for port in claim.spec.ports:
            owners[(claim.spec.vip, port.port, port.protocol)] = claim
        users.setdefault(claim.spec.vip, []).append(claim)
        winners.append(claim)
    return winners, problems


def _clash(claim: Any, owners: Mapping[tuple[str, int, str], Any], users: Mapping[str, list[Any]], age: Any) -> Problem | None:
    """Why `claim` loses to the claims already kept (None: it keeps its own). A held claim's is never shown."""
    if isinstance(claim, Tombstone):
        ref, vip, keys = claim.ref, claim.vip, [(claim.vip, port, protocol) for port, protocol in claim.ports]
    else:
        ref, vip, keys = claim.ref, claim.spec.vip, [(claim.spec.vip, p.port, p.protocol) for p in claim.spec.ports]
    clash = next(((index, key, owners[key]) for index, key in enumerate(keys) if key in owners), None)
    if clash is not None and isinstance(claim, Tombstone):
        return Problem(ref, CONFLICT, "", clash[2].ref)  # a held claim that lost: nothing to tell
    if clash is not None:
        index, (_, port, protocol), owner = clash
        if isinstance(owner, Tombstone):
            return Problem(ref, CONFLICT, f"spec.ports[{index}]: {hostport(vip, port)}/{protocol} is held for VirtualService {owner.ref}, "
                                          f"{_held(owner)}", owner.ref)
        return Problem(ref, CONFLICT, f"{hostport(vip, port)}/{protocol} is already claimed by VirtualService {owner.ref}, {_why(owner, claim, age)}", owner.ref)
    key = _key(claim)
    other = next((u for u in users.get(vip, ()) if _namespace(u) != _namespace(claim) and (key is None or _key(u) != key)), None)
    if other is None or isinstance(claim, Tombstone):
        return None if other is None else Problem(ref, CONFLICT, "", other.ref)
    theirs = _key(other)
    sharing = (f"another namespace shares it only when both carry the same {SHARED_IP_ANNOTATION} annotation "
               f"(this one: {key or 'none'}, theirs: {theirs or 'none'})")
    if isinstance(other, Tombstone):
        return Problem(ref, CONFLICT, f"spec.vip: {vip} is held for namespace {other.namespace} (VirtualService {other.ref}, "
                                      f"{_held(other)}); {sharing}", other.ref)
    return Problem(ref, CONFLICT, f"{vip} is used by namespace {_namespace(other)} (VirtualService {other.ref}, {_why(other, claim, age)}); {sharing}", other.ref)


def _held(tomb: Tombstone) -> str:
    return (f"deleted: its claim is kept for it until {rfc3339(tomb.until)} (re-created under that name by then, "
            f"it keeps its claim; --claim-grace-seconds)")


def _why(owner: VirtualService, other: VirtualService, age: Any) -> str:
    first, second = age(owner), age(other)
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
