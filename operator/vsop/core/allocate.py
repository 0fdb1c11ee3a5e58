"""Addresses for LoadBalancer Services, from VipPools: who keeps what, who gets what, who is refused.

Owns the allocation decision, pure and deterministic (the same inputs give the same
answer on every controller, and after a restart): older requests first; an address a
Service already holds (rebuilt from its status and its derived VirtualServices) is kept
while a pool still grants it and nobody older holds it; an address asked for
(`vsop.dev/load-balancer-ips`, or the deprecated `spec.loadBalancerIP`) must lie in a
pool granting the Service and be free, or shared by MetalLB's rule (the same
`vsop.dev/allow-shared-ip` key on both, no port in common); otherwise the first free
address of the matching pools (lowest priority number first, then by name), one per IP
family. Cloud metadata addresses are never handed out unasked.
Must not import: kopf, kubernetes, pyroute2, asyncio, subprocess, socket, vsop.adapters, vsop.cli.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from vsop.api.pools import METADATA_ADDRESSES, VipPool

ALLOCATED, FAILED, IN_USE = "Allocated", "AllocationFailed", "IPInUse"


@dataclass(frozen=True)
class Request:
    """One LoadBalancer Service asking for addresses."""

    key: str  # namespace/name
    namespace: str
    created: str
    families: tuple[int, ...] = (4,)
    labels: Mapping[str, str] = field(default_factory=dict)
    asked: tuple[str, ...] = ()
    pool: str | None = None
    shared_key: str | None = None
    ports: frozenset[tuple[int, str]] = frozenset()
    held: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    key: str
    addresses: tuple[str, ...]  # one per family; () when refused
    pools: tuple[str, ...] = ()  # the pool each address came from
    reason: str = ALLOCATED
    message: str = ""


@dataclass
class _User:
    key: str
    shared_key: str | None
    ports: frozenset[tuple[int, str]]


def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


def _canonical(address: str) -> str:
    return str(ipaddress.ip_address(address))


class Allocator:
    def __init__(self, pools: Sequence[VipPool], namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
                 taken: Mapping[str, str] | None = None):
        """`taken`: addresses other VirtualServices use (address -> who), never shared with a Service."""
        self.pools = sorted(pools, key=lambda p: (p.priority, p.name))
        self.namespace_labels = namespace_labels or {}
        self.users: dict[str, list[_User]] = {}
        self.taken = {_canonical(a): who for a, who in (taken or {}).items()}

    def _granting(self, request: Request) -> list[VipPool]:
        labels = self.namespace_labels.get(request.namespace)
        return [p for p in self.pools if p.grants_namespace(request.namespace, labels) and p.grants_service(request.labels)
                and (request.pool is None or p.name == request.pool)]

    def _conflict(self, address: str, request: Request) -> str | None:
        """Who holds `address` in a way that excludes `request`, or None."""
        if address in self.taken:
            return self.taken[address]
        for user in self.users.get(address, ()):
            if user.key == request.key:
                continue
            if request.shared_key is None or user.shared_key != request.shared_key:
                return f"Service {user.key}"
            common = request.ports & user.ports
            if common:
                port, protocol = sorted(common)[0]
                return f"Service {user.key} (port {port}/{protocol} on both)"
        return None

    def _take(self, address: str, request: Request) -> None:
        self.users.setdefault(address, []).append(_User(request.key, request.shared_key, request.ports))

    def _pool_of(self, address: str, pools: Sequence[VipPool]) -> VipPool | None:
        return next((p for p in pools if p.holds(address)), None)

    def _keep(self, request: Request) -> dict[int, tuple[str, str]]:
        """What a Service holds and keeps: still granted, and nobody older holds it."""
        pools = self._granting(request)
        kept: dict[int, tuple[str, str]] = {}
        for text in request.held:
            try:
                address = _canonical(text)
            except ValueError:
                continue
            pool = self._pool_of(address, pools)
            family = _family(address)
            if family not in (request.families or (4,)) or family in kept or pool is None or self._conflict(address, request) is not None:
                continue
            if address in METADATA_ADDRESSES and not pool.names(address):
                continue
            kept[family] = (address, pool.name)
            self._take(address, request)
        return kept

    def _one(self, request: Request, kept: dict[int, tuple[str, str]]) -> Outcome:
        pools = self._granting(request)
        names = ", ".join(p.name for p in pools) or "none"
        families = tuple(dict.fromkeys(request.families)) or (4,)
        chosen: dict[int, tuple[str, str]] = dict(kept)
        # Asked for: exactly these, or nothing.
        if request.asked:
            for text in request.asked:
                try:
                    address = _canonical(text)
                except ValueError:
                    return Outcome(request.key, (), reason=FAILED, message=f"{text!r} is not an IP address")
                pool = self._pool_of(address, pools)
                if pool is None or (address in METADATA_ADDRESSES and not pool.names(address)):
                    return Outcome(request.key, (), reason=FAILED,
                                   message=f"{address} lies in no VipPool granting this Service (pools granting it: {names})")
                who = self._conflict(address, request)
                if who is not None:
                    return Outcome(request.key, (), reason=IN_USE, message=f"{address} is in use by {who}")
                chosen[_family(address)] = (address, pool.name)
        else:
            for family in families:
                if family in chosen:
                    continue
                found = self._first_free(request, pools, family)
                if found is None:
                    where = f"VipPools granting it ({names})" if pools else "no VipPool grants it"
                    return Outcome(request.key, (), reason=FAILED,
                                   message=f"no free IPv{family} address: {where}" + (f" (asked for pool {request.pool})" if request.pool else ""))
                chosen[family] = found
        for family, (address, _) in chosen.items():
            if family not in kept:
                self._take(address, request)
        ordered = [chosen[f] for f in sorted(chosen)]
        return Outcome(request.key, tuple(a for a, _ in ordered), tuple(p for _, p in ordered))

    def _first_free(self, request: Request, pools: Sequence[VipPool], family: int) -> tuple[str, str] | None:
        for pool in pools:
            if not pool.spec.auto_assign and request.pool != pool.name:
                continue
            for address in pool.candidates(family):
                if address in METADATA_ADDRESSES:
                    continue
                if address not in self.users and address not in self.taken:
                    return address, pool.name
        return None

    def allocate(self, requests: Iterable[Request]) -> dict[str, Outcome]:
        """Older first (then by namespace/name): the older keeps an address two claim."""
        ordered = sorted(requests, key=lambda r: (r.created, r.key))
        # What is held is settled first (older first): a new Service never takes a younger one's address.
        kept = {r.key: self._keep(r) for r in ordered if not r.asked}
        return {r.key: self._one(r, kept.get(r.key, {})) for r in ordered}
