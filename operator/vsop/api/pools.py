"""The v1alpha1 VipPool resource (cluster-scoped): which addresses may be VIPs, and for whom.

Owns the pool's spec shape and every rule on it (errors name the pool, the field and the
reason, like the VirtualService's), and the address arithmetic the claim rules
(vsop.core.claims) and the allocator need: whether a pool holds an address, names it
explicitly, grants a namespace or a Service, and the addresses it hands out, in order.
An administrator writes pools; a VirtualService's VIP must lie in one that grants its
namespace (DESIGN.md "Who may claim an address").

Must not import: anything that touches the kernel, the cluster, files or processes
(kopf, pyroute2, kubernetes, subprocess, socket) or other vsop modules but `errors`
and `model`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated, Any, Iterator, Literal, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from vsop.api.errors import FieldError, InvalidInput
from vsop.api.model import (
    PATTERN_WORDS,
    API_GROUP,
    API_VERSION,
    DNSLabel,
    NAME_PATTERN,
    SCHEDULERS,
    Drain,
    HealthCheck,
    NodeSelector,
    SpecBase,
    field_errors,
    guess_ref,
    share_fields_set,
    show,
)

POOL_KIND = "VipPool"
POOL_PLURAL = "vippools"

# The cloud metadata services (AWS, GCP, Azure, OpenStack: 169.254.169.254; AWS's IPv6 one):
# a VIP there answers every selected node's own requests for instance credentials.
METADATA_ADDRESSES = frozenset({"169.254.169.254", "fd00:ec2::254"})

# What the schema's pattern admits for one entry; the model (and CEL, for IPv4) say the rest.
ADDRESS_ENTRY_PATTERN = r"^[0-9A-Fa-f:.]+(/[0-9]{1,3}|-[0-9A-Fa-f:.]+)?$"
MAX_ENTRY_LENGTH = 91  # two full IPv6 literals and a dash
PATTERN_WORDS.setdefault(ADDRESS_ENTRY_PATTERN, "must be a CIDR prefix (192.0.2.0/28), a range (192.0.2.10-192.0.2.20) or one address")


@dataclass(frozen=True)
class Block:
    """One entry of `addresses`: the inclusive range [first, last] of one family."""

    text: str
    family: int
    first: int
    last: int

    def __contains__(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return address.version == self.family and self.first <= int(address) <= self.last

    @property
    def size(self) -> int:
        return self.last - self.first + 1


def _one(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{show(text)} is not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise ValueError(f"{show(text)} is an IPv4-mapped IPv6 address: use the IPv4 form")
    return address


def parse_block(text: str) -> Block:
    """`192.0.2.0/28`, `192.0.2.10-192.0.2.20` or one address; ValueError says what is wrong."""
    if "/" in text:
        length = text.partition("/")[2]
        if not length.isdigit() or (length.startswith("0") and length != "0"):
            raise ValueError(f"{show(text)} is not a CIDR prefix (address/length, the length in plain decimal)")
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            if "host bits set" in str(exc):
                fixed = ipaddress.ip_network(text, strict=False)
                raise ValueError(f"{show(text)} has host bits set: write {fixed}") from None
            raise ValueError(f"{show(text)} is not a CIDR prefix (address/length)") from None
        return Block(text, network.version, int(network.network_address), int(network.broadcast_address))
    if "-" in text:
        low, _, high = text.partition("-")
        first, last = _one(low), _one(high)
        if first.version != last.version:
            raise ValueError(f"{show(text)} mixes IPv4 and IPv6: a range is of one family")
        if int(first) > int(last):
            raise ValueError(f"{show(text)} runs backwards: write the lower address first")
        return Block(text, first.version, int(first), int(last))
    address = _one(text)
    return Block(text, address.version, int(address), int(address))


def _entry(value: str) -> str:
    parse_block(value)
    return value


AddressEntry = Annotated[
    str, Field(min_length=1, max_length=MAX_ENTRY_LENGTH, pattern=ADDRESS_ENTRY_PATTERN), AfterValidator(_entry)
]


class ServiceAllocation(SpecBase):
    """Who a pool serves: namespaces (by name or labels) and Services (by labels). Empty: everyone."""

    priority: int = Field(default=0, ge=0, le=1000, strict=True, description="Lower is tried first when several pools match a Service.")
    namespaces: tuple[DNSLabel, ...] = Field(default=(), max_length=256)
    namespace_selectors: tuple[NodeSelector, ...] = Field(default=(), max_length=16)
    service_selectors: tuple[NodeSelector, ...] = Field(default=(), max_length=16)


class PoolTemplate(SpecBase):
    """Defaults of the VirtualServices derived from LoadBalancer Services allocated from this pool."""

    scheduler: Literal[SCHEDULERS] | None = None  # type: ignore[valid-type]
    forwarding: Literal["masq", "route", "tunnel"] | None = None
    announce: Literal["none", "vrrp", "bgp"] | None = None
    node_selector: NodeSelector | None = None
    drain: Drain | None = None
    health_check: HealthCheck | None = None


class VipPoolSpec(SpecBase):
    addresses: tuple[AddressEntry, ...] = Field(
        min_length=1, max_length=64, description="CIDR prefixes, `first-last` ranges and single addresses; both families."
    )
    auto_assign: bool = Field(default=True, strict=True, description="LoadBalancer Services get addresses from it unasked.")
    avoid_buggy_ips: bool = Field(
        default=False, strict=True, alias="avoidBuggyIPs",
        description="Never hand out IPv4 addresses ending in .0 or .255 (some clients drop them).",
    )
    service_allocation: ServiceAllocation | None = None
    template: PoolTemplate = Field(default_factory=PoolTemplate)


class PoolMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)
    model_post_init = share_fields_set

    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN)
    creation_timestamp: str | None = Field(default=None, alias="creationTimestamp")
    labels: dict[str, str] = Field(default_factory=dict)


class VipPool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    api_version: Literal["vsop.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["VipPool"]
    metadata: PoolMeta
    spec: VipPoolSpec
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def blocks(self) -> tuple[Block, ...]:
        return tuple(parse_block(text) for text in self.spec.addresses)

    def holds(self, vip: str) -> bool:
        address = ipaddress.ip_address(vip)
        return any(address in block for block in self.blocks)

    def names(self, vip: str) -> bool:
        """Whether an entry is exactly this one address (how a pool admits a metadata address)."""
        address = ipaddress.ip_address(vip)
        return any(block.first == block.last and address in block for block in self.blocks)

    def grants_namespace(self, namespace: str, labels: Mapping[str, str] | None) -> bool:
        """No serviceAllocation, or one without namespace rules: every namespace."""
        allocation = self.spec.service_allocation
        if allocation is None or (not allocation.namespaces and not allocation.namespace_selectors):
            return True
        if namespace in allocation.namespaces:
            return True
        return labels is not None and any(selector.matches(labels) for selector in allocation.namespace_selectors)

    def grants_service(self, labels: Mapping[str, str]) -> bool:
        allocation = self.spec.service_allocation
        if allocation is None or not allocation.service_selectors:
            return True
        return any(selector.matches(labels) for selector in allocation.service_selectors)

    @property
    def priority(self) -> int:
        return self.spec.service_allocation.priority if self.spec.service_allocation else 0

    def candidates(self, family: int) -> Iterator[str]:
        """The addresses it hands out, lowest first, per entry in the order written."""
        for block in self.blocks:
            if block.family != family:
                continue
            for value in range(block.first, block.last + 1):
                address = ipaddress.ip_address(value) if family == 4 else ipaddress.IPv6Address(value)
                if self.spec.avoid_buggy_ips and family == 4 and value & 0xFF in (0, 255):
                    continue
                if address.is_multicast or address.is_unspecified or address.is_loopback:
                    continue
                yield str(address)


def parse_vip_pool(data: Any) -> VipPool:
    """Validate one VipPool document; raises InvalidInput naming the pool, each field and the reason."""
    name = data.get("metadata", {}).get("name") if isinstance(data, dict) and isinstance(data.get("metadata"), dict) else None
    ref = name if isinstance(name, str) else guess_ref(data)
    try:
        pool = VipPool.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(field_errors(data, exc, ref, POOL_KIND)) from None
    problems = pool_semantic_errors(pool.spec)
    if problems:
        raise InvalidInput([FieldError(obj=pool.name, path=path, reason=reason, kind=POOL_KIND) for path, reason in problems])
    return pool


def pool_semantic_errors(spec: VipPoolSpec) -> list[tuple[str, str]]:
    """Rules across entries; each is (field path, reason). The CRD's list-type set says the same."""
    errors: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for index, text in enumerate(spec.addresses):
        if text in seen:
            errors.append((f"spec.addresses[{index}]", f"duplicate entry {show(text)}, already in addresses[{seen[text]}]"))
        seen.setdefault(text, index)
    selectors: list[tuple[str, NodeSelector]] = []
    if spec.template.node_selector is not None:
        selectors.append(("spec.template.nodeSelector", spec.template.node_selector))
    hc = spec.template.health_check
    if hc is not None and hc.type != "none" and hc.timeout_seconds > hc.interval_seconds:
        errors.append(("spec.template.healthCheck.timeoutSeconds", f"must be at most intervalSeconds ({hc.timeout_seconds} > {hc.interval_seconds})"))
    if spec.service_allocation is not None:
        for field in ("namespaceSelectors", "serviceSelectors"):
            chosen = spec.service_allocation.namespace_selectors if field == "namespaceSelectors" else spec.service_allocation.service_selectors
            selectors += [(f"spec.serviceAllocation.{field}[{i}]", selector) for i, selector in enumerate(chosen)]
    for where, selector in selectors:
        for index, req in enumerate(selector.match_expressions):
            path = f"{where}.matchExpressions[{index}].values"
            if req.operator in ("In", "NotIn") and not req.values:
                errors.append((path, f"operator {req.operator} needs at least one value"))
            if req.operator in ("Exists", "DoesNotExist") and req.values:
                errors.append((path, f"operator {req.operator} takes no values"))
    if spec.service_allocation is not None:
        names: dict[str, int] = {}
        for index, name in enumerate(spec.service_allocation.namespaces):
            if name in names:
                errors.append((f"spec.serviceAllocation.namespaces[{index}]", f"duplicate namespace {show(name)}"))
            names.setdefault(name, index)
    return errors


def pool_summary(pool: VipPool) -> str:
    """How a message names a pool: `lan (192.0.2.0/28, 192.0.2.100-192.0.2.120)`."""
    shown = ", ".join(pool.spec.addresses[:4]) + (f", ... {len(pool.spec.addresses) - 4} more" if len(pool.spec.addresses) > 4 else "")
    return f"{pool.name} ({shown})"


__all__ = [
    "API_GROUP", "API_VERSION", "Block", "METADATA_ADDRESSES", "POOL_KIND", "POOL_PLURAL", "PoolTemplate",
    "ServiceAllocation", "VipPool", "VipPoolSpec", "parse_block", "parse_vip_pool", "pool_summary",
]
