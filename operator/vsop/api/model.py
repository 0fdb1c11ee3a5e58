"""The v1alpha1 VirtualService resource: typed, immutable, validated.

Owns the spec and status shapes, their defaults and every validation rule, and the
error type that names the object, field and reason. Structural rules live on the
pydantic fields (so they also reach the generated CRD schema); rules that relate
fields to each other live in `semantic_errors`, mirrored as CEL in the CRD.

Must not import: anything that touches the kernel, the cluster, files or processes
(kopf, pyroute2, kubernetes, subprocess, socket) or other vsop modules but `errors`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import sys
from typing import Annotated, Any, Iterable, Literal, Mapping

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic.alias_generators import to_camel

from vsop.api.errors import FieldError, InvalidInput, printable

API_GROUP = "vsop.dev"
API_VERSION = "v1alpha1"
KIND = "VirtualService"

# Every scheduler the kernel ships as ip_vs_<name>; the names ipvsadm -s accepts.
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos")
PROTOCOLS = ("TCP", "UDP", "SCTP")
MAX_PERSISTENCE_SECONDS = 31_536_000  # one year, the kernel's own cap for -p
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Linux allows almost any byte in an interface name; we accept the portable subset so
# the name is also safe in keepalived configuration and shell commands.
INTERFACE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,14}$"
# Kubernetes' DNS-1123 subdomain: dot-separated DNS labels (`web..v1` and `web-.v1` are refused).
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Kubernetes' IANA_SVC_NAME for port names: at most 15 characters, hyphens only between
# letters or digits; at least one letter is checked apart (RE2 has no look-ahead).
PORT_NAME = r"^[a-z0-9]+(-[a-z0-9]+)*$"
# Kubernetes' label values (and the name part of a label key): at most 63 characters, letters,
# digits, '-', '_' and '.', starting and ending with a letter or digit; a value may be empty.
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A label key: an optional DNS-subdomain prefix and '/', then a name as above (not empty).
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
HTTP_PATH = r"^/[\x21-\x7e]*$"
IP_LITERAL_PATTERN = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*)$"


@functools.lru_cache(maxsize=65536)
def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """ipaddress parsing is the costliest step of validating a big file; each literal is parsed once."""
    return ipaddress.ip_address(value)


def show(value: Any) -> str:
    """A value as the user wrote it in YAML, for a message: never a Python type or repr."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return "'" + printable(value, 60) + "'"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return "a value of another kind"


def _ip_literal(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be an IP address written as text (quote it), got {show(value)}")
    return _ip_text(value)


# The same real servers stand behind many VirtualServices: their addresses are checked once.
# Small: a VIP is seen once per look (10,000 distinct in a big store), so only repeats pay off.
# A refused address raises, and what raises is not kept.
@functools.lru_cache(maxsize=4096)
def _ip_text(value: str) -> str:
    if value != value.strip() or not value:
        raise ValueError(f"must be an IPv4 or IPv6 address literal without spaces, got {show(value)}")
    if "/" in value:
        raise ValueError(f"must be a single address, not a CIDR prefix, got {show(value)}")
    if "%" in value:
        raise ValueError(f"must not carry an IPv6 zone, got {show(value)}")
    try:
        address = _address(value)
    except ValueError:
        raise ValueError(f"must be an IPv4 or IPv6 address literal (not a hostname), got {show(value)}") from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"must be a unicast address, got {show(value)}")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise ValueError(f"must not be an IPv4-mapped IPv6 address, use the IPv4 form, got {show(value)}")
    if address.version == 4 and type(value) is str:
        return value  # IPv4 text that parses is already canonical (four decimal octets, no leading zeros)
    return str(address)  # canonical text: one spelling per address in the kernel tables


def _vip(value: str) -> str:
    address = _address(value)
    if address.is_loopback:
        raise ValueError(f"{value} is a loopback address; binding it to the dummy link would break the node")
    if isinstance(address, ipaddress.IPv6Address) and address.is_link_local:
        raise ValueError(f"{value} is an IPv6 link-local address, which needs a zone and cannot be a VIP")
    if value == "255.255.255.255":
        raise ValueError("255.255.255.255 is the broadcast address")
    if isinstance(address, ipaddress.IPv4Address) and address in CLASS_E:
        raise ValueError(f"{value} is in 240.0.0.0/4 (class E, reserved): Linux neither routes nor answers it")
    return value


def _backend(value: str) -> str:
    address = _address(value)
    if address.is_loopback:
        raise ValueError(f"{value} is a loopback address: the node itself, which IPVS cannot forward to")
    if value == "255.255.255.255":
        raise ValueError("255.255.255.255 is the broadcast address, not a real server")
    return value


CLASS_E = ipaddress.ip_network("240.0.0.0/4")


IPLiteral = Annotated[
    str,
    BeforeValidator(_ip_literal),
    WithJsonSchema({"type": "string", "maxLength": 45, "pattern": IP_LITERAL_PATTERN}),
]
VIP = Annotated[IPLiteral, AfterValidator(_vip)]


SOURCE_RANGE_PATTERN = r"^[0-9A-Fa-f:.]+/[0-9]{1,3}$"
MAX_SOURCE_RANGES = 64


def _source_range(value: Any) -> str:
    """A client range (kube-proxy's loadBalancerSourceRanges entry): ADDRESS/LENGTH, host bits allowed
    (Kubernetes accepts them; the network is what counts). Returned as the network, canonical."""
    if not isinstance(value, str):
        raise ValueError(f"must be a CIDR prefix written as text (10.0.0.0/8), got {show(value)}")
    address, slash, length = value.partition("/")
    if not slash or not length.isdigit() or (length.startswith("0") and length != "0"):
        raise ValueError(f"{show(value)} is not a CIDR prefix (address/length, the length in plain decimal)")
    literal = _ip_literal_any(address)
    try:
        network = ipaddress.ip_network(f"{literal}/{length}", strict=False)
    except ValueError:
        raise ValueError(f"{show(value)}: the prefix length is 0-32 for IPv4, 0-128 for IPv6") from None
    return str(network)


def _ip_literal_any(value: str) -> str:
    try:
        address = _address(value)
    except ValueError:
        raise ValueError(f"{show(value)} is not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise ValueError(f"{show(value)} is an IPv4-mapped IPv6 address: use the IPv4 form")
    return str(address)


SourceRange = Annotated[
    str,
    BeforeValidator(_source_range),
    WithJsonSchema({"type": "string", "maxLength": 49, "pattern": SOURCE_RANGE_PATTERN}),
]
BackendAddress = Annotated[IPLiteral, AfterValidator(_backend)]
PortNumber = Annotated[int, Field(ge=1, le=65535, strict=True)]
DNSLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]


def _port_name(value: str) -> str:
    if not any("a" <= ch <= "z" for ch in value):
        raise ValueError(
            f"{show(value)} is a number, not a port name (a port name holds at least one letter): write it without quotes"
        )
    return value


PortName = Annotated[str, Field(min_length=1, max_length=15, pattern=PORT_NAME), AfterValidator(_port_name)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]


def label_key_problem(key: str) -> str | None:
    """Why Kubernetes refuses this label key ([prefix/]name), or None."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or re.fullmatch(NAME_PATTERN, prefix) is None):
        return f"label key {show(key)}: its prefix must be a DNS subdomain (at most 253 characters)"
    if not name or len(name) > 63 or re.fullmatch(LABEL_VALUE, name) is None:
        return (f"label key {show(key)}: its name must be 1-63 letters, digits, '-', '_' and '.', "
                "starting and ending with a letter or digit")
    return None


def _label_keys(labels: dict[str, str]) -> dict[str, str]:
    for key in labels:
        problem = label_key_problem(key)
        if problem is not None:
            raise ValueError(problem)
    return labels


def _label_key(key: str) -> str:
    problem = label_key_problem(key)
    if problem is not None:
        raise ValueError(problem)
    return key


Labels = Annotated[dict[str, LabelValue], AfterValidator(_label_keys)]


# Every model here is frozen, so which fields a model was given never changes after it is
# built: models given the same fields share one set (pydantic keeps one per instance, 216 bytes;
# six per parsed object, 13 MB of a host agent holding 10,000). pydantic copies it before
# changing it (model_copy), and only a model that allows assignment would change it in place.
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}
_FIELDS_SETS_MAX = 4096  # distinct combinations shared; past that (never in practice) each keeps its own


def _share_fields_set(model: BaseModel, context: Any) -> None:
    fields = model.__pydantic_fields_set__
    key = frozenset(fields)
    shared = _FIELDS_SETS.get(key)
    if shared is None:
        if len(_FIELDS_SETS) >= _FIELDS_SETS_MAX:
            return
        shared = _FIELDS_SETS.setdefault(key, fields)
    object.__setattr__(model, "__pydantic_fields_set__", shared)


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True, strict=False
    )

    model_post_init = _share_fields_set


class PortSpec(_Spec):
    """One VIP port: the IPVS virtual service `VIP:port/protocol`."""

    name: PortName | None = None
    port: PortNumber
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    target_port: PortNumber | PortName | None = Field(
        default=None,
        description="Backend port: a number, or a port name resolved through serviceRef. Default: port.",
    )

    @property
    def key(self) -> tuple[int, str]:
        return (self.port, self.protocol)


class Backend(_Spec):
    """A static real server."""

    address: BackendAddress
    port: PortNumber | None = Field(default=None, description="Default: the port's targetPort, else port.")
    weight: int = Field(default=1, ge=0, le=65535, strict=True, description="0 drains the real server.")


class ServiceRef(_Spec):
    name: DNSLabel


class Persistence(_Spec):
    timeout_seconds: int = Field(default=0, ge=0, le=MAX_PERSISTENCE_SECONDS, strict=True)


class Drain(_Spec):
    timeout_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        strict=True,
        description="How long a removed TCP/SCTP real server keeps its established connections (weight 0) before it is deleted.",
    )


class HealthCheck(_Spec):
    type: Literal["none", "tcp", "http"] = "none"
    path: str = Field(default="/", max_length=1024, pattern=HTTP_PATH)
    expect_status: int = Field(default=200, ge=100, le=599, strict=True)
    interval_seconds: int = Field(default=3, ge=1, le=3600, strict=True)
    timeout_seconds: int = Field(default=2, ge=1, le=3600, strict=True)
    failure_threshold: int = Field(default=2, ge=1, le=100, strict=True)
    success_threshold: int = Field(default=1, ge=1, le=100, strict=True)


class LabelSelectorRequirement(_Spec):
    key: Annotated[str, Field(min_length=1, max_length=317, pattern=LABEL_KEY), AfterValidator(_label_key)]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    # Bounded so the CRD's CEL rule on each requirement fits the API server's cost estimate.
    values: tuple[LabelValue, ...] = Field(default=(), max_length=64)


class NodeSelector(_Spec):
    match_labels: Labels = Field(default_factory=dict)
    match_expressions: tuple[LabelSelectorRequirement, ...] = Field(default=(), max_length=32)

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
        return True


MAX_VRRP_PEERS = 32


class VRRP(_Spec):
    interface: str = Field(min_length=1, max_length=15, pattern=INTERFACE_NAME)
    virtual_router_id: int = Field(
        alias="virtualRouterID", ge=1, le=255, strict=True,
        description="One virtual router per interface and family: objects with the same ID share it (and move together).",
    )
    priority: int = Field(default=100, ge=1, le=254, strict=True, description="mode: keepalived only; with mode: ipvs each node's priority comes from a rendezvous hash of (VIP, node).")
    advert_interval_seconds: int = Field(default=1, ge=1, le=255, strict=True)
    peers: tuple[BackendAddress, ...] = Field(
        default=(), max_length=MAX_VRRP_PEERS,
        description="mode: ipvs: the addresses of every node that may hold the VIP (this one included), for unicast VRRP "
        "and the spread of VIPs over nodes; empty: in a cluster the InternalIPs of the Nodes it selects (agents running keepalived), "
        "on hosts multicast.",
    )
    preempt_delay_seconds: int = Field(
        default=10, ge=0, le=1000, strict=True,
        description="mode: ipvs: how long a node of higher priority waits before taking the VIP back (keepalived's preempt_delay).",
    )

    @field_validator("peers", mode="after")
    @classmethod
    def _unique_peers(cls, peers: tuple[str, ...]) -> tuple[str, ...]:
        seen = [p for i, p in enumerate(peers) if p in peers[:i]]
        if seen:
            raise ValueError(f"peers must be unique; {seen[0]} is given twice")
        families = {":" in p for p in peers}
        if len(families) > 1:
            raise ValueError("peers must all be of one family (IPv4 or IPv6)")
        return peers


# A standard BGP community (RFC 1997), "AS:value", each half 0-65535.
COMMUNITY = r"^([0-9]{1,5}):([0-9]{1,5})$"


def _community(value: str) -> str:
    high, low = value.split(":")
    if int(high) > 65535 or int(low) > 65535:
        raise ValueError(f"{value}: each half of a community is 0-65535")
    return f"{int(high)}:{int(low)}"


Community = Annotated[str, Field(min_length=3, max_length=11, pattern=COMMUNITY), AfterValidator(_community)]


class BGPAnnouncement(_Spec):
    """How this VIP is announced with announce: bgp (BIRD's export filter for it)."""

    communities: tuple[Community, ...] = Field(default=(), max_length=16, description="Standard communities added to the route, AS:value.")
    local_preference: int | None = Field(default=None, ge=0, le=4294967295, strict=True, description="LOCAL_PREF sent to iBGP peers.")


# Ports, backends and health checks equal in every field (and in which fields were given) are
# one frozen instance for all the objects that declare them, as are equal lists of them: a
# node's VIPs often share their real servers, ports and checks (a store of 10,000 objects
# sending to the same two backends held 30,000 equal copies, 10 MB; their 10,000 equal tcp
# checks 3.3 MB, bench/agent_memory.py). Bounded: past the limit, new values keep their own
# instances.
_SHARED_PARTS: dict[Any, Any] = {}
_SHARED_PARTS_MAX = 8192


def _shared(key: Any, value: Any) -> Any:
    """The instance the table holds for `key` (this `value` when it is the first), or `value` once the table is full."""
    found = _SHARED_PARTS.get(key)
    if found is None:
        if len(_SHARED_PARTS) >= _SHARED_PARTS_MAX:
            return value
        found = _SHARED_PARTS.setdefault(key, value)
    return found


def _shared_parts(parts: tuple[_Spec, ...]) -> tuple[_Spec, ...]:
    shared = tuple(_shared((part, frozenset(part.__pydantic_fields_set__)), part) for part in parts)
    # Keyed by its members' identities: they are the shared instances, kept alive by the table.
    return _shared(tuple(map(id, shared)), shared)  # type: ignore[no-any-return]


_DEFAULT_PERSISTENCE = Persistence()
_DEFAULT_HEALTH_CHECK = HealthCheck()
_DEFAULT_DRAIN = Drain()
_DEFAULT_NODE_SELECTOR = NodeSelector()


class VirtualServiceSpec(_Spec):
    vip: VIP
    ports: tuple[PortSpec, ...] = Field(min_length=1, max_length=64)
    scheduler: Literal[SCHEDULERS] = "rr"  # type: ignore[valid-type]
    forwarding: Literal["masq", "route", "tunnel"] = "masq"
    # Strict: only true/false (YAML 1.2 core, and what the API server accepts); pydantic's lax
    # mode would read `y`, "false" and 0 as booleans, silently.
    masquerade: bool = Field(default=True, strict=True)
    # Frozen defaults are shared, not built per object: a big file holds many thousands.
    persistence: Persistence = Field(default_factory=lambda: _DEFAULT_PERSISTENCE)
    backends: tuple[Backend, ...] = Field(default=(), max_length=1024)
    service_ref: ServiceRef | None = None
    health_check: HealthCheck = Field(default_factory=lambda: _DEFAULT_HEALTH_CHECK)
    drain: Drain = Field(default_factory=lambda: _DEFAULT_DRAIN)
    suppress_arp: bool = Field(
        default=False,
        strict=True,
        alias="suppressARP",
        description="Do not answer ARP for the VIP on every interface (arp_ignore=1, arp_announce=2): for VIPs announced another way.",
    )
    node_selector: NodeSelector = Field(default_factory=lambda: _DEFAULT_NODE_SELECTOR)
    mode: Literal["ipvs", "keepalived"] = "ipvs"
    announce: Literal["none", "vrrp", "bgp"] = Field(
        default="none",
        description="How the network learns where the VIP lives: vrrp (keepalived elects one node), bgp (every serving node announces it through BIRD).",
    )
    vrrp: VRRP | None = None
    bgp: BGPAnnouncement | None = None
    traffic_policy: Literal["Cluster", "Local"] = Field(
        default="Cluster",
        description="Local (serviceRef only): real servers are the endpoints on the node itself, and the client's address "
        "reaches them (no masquerade), as kube-proxy's externalTrafficPolicy: Local.",
    )
    source_ranges: tuple[SourceRange, ...] = Field(
        default=(),
        max_length=MAX_SOURCE_RANGES,
        description="Only clients in these CIDR prefixes reach the VIP's ports; others are dropped (kube-proxy's loadBalancerSourceRanges). Empty: every client.",
    )

    @field_validator("ports", "backends", mode="after")
    @classmethod
    def _shared(cls, parts: tuple[_Spec, ...]) -> tuple[_Spec, ...]:
        return _shared_parts(parts)

    @field_validator("health_check", mode="after")
    @classmethod
    def _shared_check(cls, check: HealthCheck) -> HealthCheck:
        return _shared((check, frozenset(check.__pydantic_fields_set__)), check)  # type: ignore[no-any-return]

    @property
    def family(self) -> int:
        return 6 if ":" in self.vip else 4  # vip is a validated literal: only IPv6 has colons

    @property
    def arp_suppressed(self) -> bool:
        """The ARP sysctls are wanted: asked for, or VRRP in ipvs mode (only the master answers, on
        vrrp.interface, where keepalived adds the VIP; never on every node through vsop0). IPv4 only:
        Linux answers neighbour solicitations only for addresses of the interface they arrive on."""
        return self.family == 4 and (self.suppress_arp or (self.announce == "vrrp" and self.mode == "ipvs"))


class ObjectMeta(BaseModel):
    """The part of Kubernetes metadata vsop reads; the rest is kept as given."""

    model_config = ConfigDict(extra="allow", frozen=True)
    model_post_init = _share_fields_set

    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN)
    namespace: DNSLabel = "default"
    creation_timestamp: str | None = Field(default=None, alias="creationTimestamp")
    generation: int | None = None
    labels: Labels = Field(default_factory=dict)


class Condition(_Spec):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str | None = None
    observed_generation: int | None = None


class BackendCounts(_Spec):
    total: int = Field(default=0, ge=0)
    healthy: int = Field(default=0, ge=0)


class NodeStatus(_Spec):
    programmed: bool = False
    backends: BackendCounts = Field(default_factory=BackendCounts)
    message: str = ""
    observed_generation: int | None = None


class BackendHealth(_Spec):
    """One static backend's health as its designated checker nodes see it (vsop.kube.checkers)."""

    backend: str = Field(description="address:port probed")
    checkers: tuple[str, ...] = Field(default=(), description="the nodes that check it; every other node applies their verdict")
    healthy: bool = True
    failing_on: tuple[str, ...] = Field(default=(), description="the checkers whose probes fail")


class VirtualServiceStatus(_Spec):
    observed_generation: int | None = None
    conditions: tuple[Condition, ...] = ()
    backends: BackendCounts = Field(default_factory=BackendCounts)
    backend_health: tuple[BackendHealth, ...] = Field(default=(), description="static backends with a health check: who checks each, and the verdict")
    announced_by: str | None = Field(
        default=None, max_length=1024,
        description="announce: vrrp or bgp: the nodes announcing the VIP (VRRP: the master), 'every selected node', or 'none'")
    claimed_since: str | None = Field(default=None, max_length=64, description=(
        "the seniority of this object's claim on its VIP:ports when it is older than its creationTimestamp: the object it "
        "replaced (deleted and re-created under this name within the controller's --claim-grace-seconds) had it; written by the controller"))
    nodes: dict[str, NodeStatus] = Field(default_factory=dict)


class VirtualService(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    model_post_init = _share_fields_set

    api_version: Literal["vsop.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["VirtualService"]
    metadata: ObjectMeta
    spec: VirtualServiceSpec
    status: VirtualServiceStatus | None = None

    @property
    def ref(self) -> str:
        """`namespace/name`, how logs and errors name the object."""
        # Interned: the agents keep it in a dozen places per object (indexes, fragments, set
        # comments), one string for all of them rather than one per call.
        return sys.intern(f"{self.metadata.namespace}/{self.metadata.name}")


def semantic_errors(spec: VirtualServiceSpec) -> list[tuple[str, str]]:
    """Rules that relate fields; each is (field path, reason). Mirrored as CEL in the CRD."""
    errors: list[tuple[str, str]] = []
    if not spec.backends and spec.service_ref is None:
        errors.append(("spec.backends", "at least one of backends or serviceRef is required"))
    errors.extend(_port_errors(spec))
    errors.extend(_backend_errors(spec))
    errors.extend(_health_check_errors(spec))
    errors.extend(_node_selector_errors(spec))
    errors.extend(_announce_errors(spec))
    errors.extend(_source_range_errors(spec))
    if spec.traffic_policy == "Local" and (spec.service_ref is None or spec.backends):
        errors.append(("spec.trafficPolicy", "Local keeps the endpoints of serviceRef on each node; it needs serviceRef and no static backends"))
    elif spec.traffic_policy == "Local" and spec.mode != "ipvs":
        errors.append(("spec.trafficPolicy", "Local is what vsop programs into IPVS per node; it needs mode: ipvs"))
    return errors


def _source_range_errors(spec: VirtualServiceSpec) -> list[tuple[str, str]]:
    """A client range of the other family would never match: refused, not silently ignored."""
    return [
        (f"spec.sourceRanges[{index}]", f"IPv{6 if ':' in cidr else 4} range {cidr} for an IPv{spec.family} VIP never matches a client")
        for index, cidr in enumerate(spec.source_ranges)
        if (6 if ":" in cidr else 4) != spec.family
    ]


def _port_errors(spec: VirtualServiceSpec) -> list[tuple[str, str]]:
    """Duplicate ports and port names; targetPorts that need serviceRef or masq."""
    errors: list[tuple[str, str]] = []
    seen: dict[tuple[int, str], int] = {}
    names: dict[str, int] = {}
    for index, port in enumerate(spec.ports):
        if port.key in seen:
            errors.append(
                (f"spec.ports[{index}]", f"duplicate port {port.port}/{port.protocol}, already in ports[{seen[port.key]}]")
            )
        seen.setdefault(port.key, index)
        if port.name is not None:
            if port.name in names:
                errors.append((f"spec.ports[{index}].name", f"duplicate port name {port.name!r}"))
            names.setdefault(port.name, index)
        if isinstance(port.target_port, str) and spec.service_ref is None:
            errors.append(
                (f"spec.ports[{index}].targetPort", f"a port name ({port.target_port!r}) needs serviceRef to resolve it")
            )
        if spec.forwarding != "masq" and port.target_port is not None and port.target_port != port.port:
            errors.append(
                (
                    f"spec.ports[{index}].targetPort",
                    f"forwarding {spec.forwarding} cannot change the port ({port.port} -> {port.target_port}); only masq can",
                )
            )
    return errors


def _backend_errors(spec: VirtualServiceSpec) -> list[tuple[str, str]]:
    """Per static backend: family, port, loops and link-local addresses, duplicates."""
    errors: list[tuple[str, str]] = []
    vip_family = spec.family
    backend_keys: dict[tuple[str, int | None], int] = {}
    for index, backend in enumerate(spec.backends):
        family = _address(backend.address).version
        if family != vip_family and spec.forwarding != "tunnel":
            errors.append(
                (
                    f"spec.backends[{index}].address",
                    f"IPv{family} backend {backend.address} for an IPv{vip_family} VIP needs forwarding: tunnel",
                )
            )
        if backend.port is not None and len(spec.ports) > 1:
            errors.append(
                (f"spec.backends[{index}].port", "a backend port is ambiguous with several ports; use ports[].targetPort")
            )
        if backend.port is not None and spec.forwarding != "masq" and backend.port != spec.ports[0].port:
            errors.append(
                (
                    f"spec.backends[{index}].port",
                    f"forwarding {spec.forwarding} cannot change the port ({spec.ports[0].port} -> {backend.port}); only masq can",
                )
            )
        address = _address(backend.address)
        if backend.address == spec.vip:
            errors.append((f"spec.backends[{index}].address", f"{backend.address} is this VirtualService's VIP: traffic would loop"))
        elif address.is_link_local and spec.forwarding != "tunnel":
            errors.append(
                (
                    f"spec.backends[{index}].address",
                    f"{backend.address} is link-local: not routed beyond its link, so IPVS cannot reach it with forwarding {spec.forwarding} (only tunnel)",
                )
            )
        # The real server it becomes: with one port, a backend without a port takes targetPort
        # (or the port), so `{address: A, port: 8080}` and `{address: A}` with targetPort 8080
        # are one real server, which would silently keep one weight.
        bkey = (address, backend.port if backend.port is not None else _static_port(spec))
        if bkey in backend_keys:
            errors.append((f"spec.backends[{index}]", f"duplicate backend {backend.address}, already backends[{backend_keys[bkey]}]"))
        backend_keys.setdefault(bkey, index)
    return errors


def _health_check_errors(spec: VirtualServiceSpec) -> list[tuple[str, str]]:
    hc = spec.health_check
    if hc.type != "none" and hc.timeout_seconds > hc.interval_seconds:
        return [("spec.healthCheck.timeoutSeconds", f"must be at most intervalSeconds ({hc.timeout_seconds} > {hc.interval_seconds})")]
    return []


def _node_selector_errors(spec: VirtualServiceSpec) -> list[tuple[str, str]]:
    """matchExpressions whose values do not fit their operator."""
    errors: list[tuple[str, str]] = []
    for index, req in enumerate(spec.node_selector.match_expressions):
        where = f"spec.nodeSelector.matchExpressions[{index}].values"
        if req.operator in ("In", "NotIn") and not req.values:
            errors.append((where, f"operator {req.operator} needs at least one value"))
        if req.operator in ("Exists", "DoesNotExist") and req.values:
            errors.append((where, f"operator {req.operator} takes no values"))
    return errors


def _announce_errors(spec: VirtualServiceSpec) -> list[tuple[str, str]]:
    """Announcements and the mode (and block) each needs."""
    errors: list[tuple[str, str]] = []
    if spec.announce == "vrrp" and spec.vrrp is None:
        errors.append(("spec.vrrp", "announce: vrrp needs the vrrp block (interface, virtualRouterID)"))
    if spec.vrrp is not None and spec.vrrp.peers and (":" in spec.vrrp.peers[0]) != (spec.family == 6):
        errors.append(("spec.vrrp.peers", f"VRRP for an IPv{spec.family} VIP talks IPv{spec.family}: every peer must be an IPv{spec.family} address"))
    if spec.announce == "bgp" and spec.mode != "ipvs":
        errors.append(("spec.announce", "announce: bgp announces what vsop programs into IPVS and needs mode: ipvs"))
    return errors


def semantic_warnings(spec: VirtualServiceSpec) -> list[tuple[str, str]]:
    """Accepted, but probably not what was meant; each is (field path, reason)."""
    warnings: list[tuple[str, str]] = []
    if spec.vrrp is not None and spec.announce != "vrrp":
        warnings.append(("spec.vrrp", f"ignored: announce is {spec.announce}; set announce: vrrp to use this block"))
    if spec.vrrp is not None and spec.announce == "vrrp" and spec.mode == "keepalived" and spec.vrrp.peers:
        warnings.append(("spec.vrrp.peers", "ignored with mode: keepalived (multicast VRRP, one priority); used with mode: ipvs"))
    if spec.bgp is not None and spec.announce != "bgp":
        warnings.append(("spec.bgp", f"ignored: announce is {spec.announce}; set announce: bgp to use this block"))
    return warnings


def cross_object_errors(services: Iterable[VirtualService]) -> list[tuple[str, str, str]]:
    """Rules between objects: a real server that is some VIP. Each is (ref, field path, reason)."""
    services = list(services)
    vips: dict[str, str] = {}
    for vs in services:
        vips.setdefault(vs.spec.vip, vs.ref)
    return [(vs.ref, path, reason) for vs in services for path, reason, _ in backends_on_vips(vs, vips)]


def backends_on_vips(vs: VirtualService, vips: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """Static backends of `vs` that are another object's VIP (`vips`: address -> that object's ref).

    Each is (field path, reason, that object's ref). The loader refuses such input; the agents refuse the object
    (core.desired), with the same words."""
    errors: list[tuple[str, str, str]] = []
    for index, backend in enumerate(vs.spec.backends):
        owner = vips.get(backend.address)
        if owner is not None and owner != vs.ref:
            errors.append((f"spec.backends[{index}].address", f"{backend.address} is the VIP of VirtualService {owner}: a VIP cannot be a real server", owner))
    return errors


def _field_loc(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The part of pydantic's location that names fields in the input (drops union branch labels)."""
    kept: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and not any(c in part for c in "[(-"):
            node = None  # a missing or unknown field: named, but nothing below it
        else:
            continue
        kept.append(part)
    return tuple(kept)


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


# What a pattern means, in the words of the people who write these files.
PATTERN_WORDS = {
    DNS_LABEL: "must be a DNS label: lower-case letters, digits and '-', starting and ending with a letter or digit",
    INTERFACE_NAME: "must be an interface name: letters, digits, '_', '.' and '-', starting with a letter or digit",
    NAME_PATTERN: "must be a DNS subdomain name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit",
    LABEL_KEY: "must be a label key: an optional DNS subdomain and '/', then letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
    LABEL_VALUE: "must be a label value: at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit (or empty)",
    PORT_NAME: "must be a port name (IANA_SVC_NAME): lower-case letters, digits and single '-' between them, at least one letter",
    HTTP_PATH: "must be an HTTP path starting with '/', without spaces or control characters",
    COMMUNITY: "must be a BGP community AS:value (two numbers 0-65535)",
    r"^/[A-Za-z0-9._/\-]{1,255}$": "must be an absolute path of letters, digits, '.', '_', '-' and '/'",
}
# How to name what a list holds, by the field holding it.
ITEMS = {"ports": "ports", "backends": "backends", "peers": "peers", "communities": "communities", "matchExpressions": "expressions", "values": "values", "conditions": "conditions"}


def _reason(error: Mapping[str, Any], loc: tuple[Any, ...] = ()) -> str:
    kind = error["type"]
    given = error.get("input")
    ctx = error.get("ctx") or {}
    got = f", got {show(given)}"
    field = next((part for part in reversed(loc) if isinstance(part, str)), "")
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; unknown fields are refused, not ignored)"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}{got}"
    if kind in ("int_type", "int_parsing", "int_from_float", "int_strict"):
        if isinstance(given, str) and re.fullmatch(r"[-+]?0[0-9_]+", given.strip()):
            return f"{given.strip()} has a leading zero, which YAML readers disagree on (octal or text): write the number in plain decimal"
        if isinstance(given, str) and given.strip().lstrip("+-").isdigit():
            return f"must be a number, not text: write {given.strip()} without quotes"
        return f"must be a whole number{got}"
    if kind in ("bool_type", "bool_parsing"):
        if isinstance(given, str):
            return f"must be true or false, not text{got}: write true or false without quotes (YAML 1.2 reads y, n, yes and no as text)"
        return f"must be true or false{got}"
    if kind in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        return f"must be at least {bound}{got}" if kind == "greater_than_equal" else f"must be more than {bound}{got}"
    if kind in ("less_than_equal", "less_than"):
        bound = ctx.get("le", ctx.get("lt"))
        return f"must be at most {bound}{got}" if kind == "less_than_equal" else f"must be less than {bound}{got}"
    if kind in ("string_type", "string_unicode"):
        return f"must be text{got}"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"must be at least {ctx.get('min_length')} characters{got}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters (got {len(given) if isinstance(given, str) else '?'})"
    if kind == "string_pattern_mismatch":
        words = PATTERN_WORDS.get(str(ctx.get("pattern", "")), "is not in the expected form")
        return f"{words}{got}"
    if kind in ("too_short", "too_long"):
        items = ITEMS.get(field, "entries")
        count = len(given) if isinstance(given, (list, tuple, dict)) else None
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        limit = "at least" if kind == "too_short" else "at most"
        items = items[:-1] if bound == 1 else items
        return f"{limit} {bound} {items}" + (f" (got {count})" if count is not None else "")
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false{got}"
    if kind in ("model_type", "model_attributes_type", "dict_type", "mapping_type"):
        return f"must be a mapping (key: value lines){got}"
    if kind in ("tuple_type", "list_type", "iterable_type", "sequence_type"):
        return f"must be a list{got}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number{got}"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    return f"is not valid{got}"


def _static_port(spec: Any) -> int | None:
    """The port a static backend without its own port gets, when there is exactly one."""
    if len(spec.ports) != 1:
        return None
    port = spec.ports[0]
    return port.target_port if isinstance(port.target_port, int) else (port.port if port.target_port is None else None)


def parse_virtual_service(data: Any) -> VirtualService:
    """Validate one document; raises InvalidInput listing every problem found."""
    ref = _guess_ref(data)
    try:
        vs = VirtualService.model_validate(data)
    except ValidationError as exc:
        found: dict[tuple[Any, ...], Any] = {}
        for error in exc.errors():
            # A union (port number | port name) reports one error per branch: keep the first.
            found.setdefault(_field_loc(data, tuple(error["loc"])), error)
        # A list whose item failed also reports "too short after validation": the item's error says it all.
        shadowed = {loc for loc in found for other in found if len(other) > len(loc) and other[: len(loc)] == loc}
        raise InvalidInput(
            [FieldError(obj=ref, path=_loc_to_path(loc), reason=_union_reason(loc, e), loc=loc) for loc, e in found.items() if loc not in shadowed]
        ) from None
    problems = semantic_errors(vs.spec)
    if problems:
        raise InvalidInput([FieldError(obj=vs.ref, path=path, reason=reason) for path, reason in problems])
    return vs


def _union_reason(loc: tuple[Any, ...], error: Mapping[str, Any]) -> str:
    if loc and loc[-1] == "targetPort" and error["type"] not in ("greater_than_equal", "less_than_equal"):
        given = error.get("input")
        if isinstance(given, str) and given.isdigit():
            return f"{show(given)} is a number, not a port name (a port name holds at least one letter): write it without quotes"
        return f"must be a port number (1-65535) or a port name (IANA_SVC_NAME, with serviceRef), got {show(given)}"
    return _reason(error, loc)


def _guess_ref(data: Any) -> str | None:
    if isinstance(data, dict) and isinstance(data.get("metadata"), dict):
        meta = data["metadata"]
        name = meta.get("name")
        namespace = meta.get("namespace") or "default"
        if isinstance(name, str):
            return f"{namespace}/{name}"
    return None


def is_dns_label(value: str) -> bool:
    return len(value) <= 63 and re.fullmatch(DNS_LABEL, value) is not None


# What the other resources of this API (vsop.api.pools) share with this one: the spec base
# (frozen, camelCase aliases, shared field sets) and how a validation error is worded.
SpecBase = _Spec
share_fields_set = _share_fields_set
guess_ref = _guess_ref


def field_errors(data: Any, exc: ValidationError, ref: str | None, kind: str) -> list[FieldError]:
    """pydantic's errors as FieldErrors naming `kind` `ref`, one per field (the deepest one wins)."""
    found: dict[tuple[Any, ...], Any] = {}
    for error in exc.errors():
        found.setdefault(_field_loc(data, tuple(error["loc"])), error)
    shadowed = {loc for loc in found for other in found if len(other) > len(loc) and other[: len(loc)] == loc}
    return [FieldError(obj=ref, path=_loc_to_path(loc), reason=_reason(e, loc), loc=loc, kind=kind)
            for loc, e in found.items() if loc not in shadowed]
