"""The v1alpha1 BGPSpeaker resource: who this node's BIRD talks BGP to, for `announce: bgp`.

Owns the speaker's spec shape (local AS, router ID, peers with timers, BFD, password and
multihop) and every rule on it; errors name the speaker, the field and the reason, like
the VirtualService's. On a host it is a store file; in a cluster a cluster-scoped object
whose nodeSelector picks the nodes it applies to. vsop.bgp renders it into bird.conf.

Must not import: anything that touches the kernel, the cluster, files or processes
(kopf, pyroute2, kubernetes, subprocess, socket) or other vsop modules but `errors`
and `model`.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from vsop.api.errors import FieldError, InvalidInput
from vsop.api.model import (
    NAME_PATTERN,
    IPLiteral,
    NodeSelector,
    PortNumber,
    SpecBase,
    field_errors,
    guess_ref,
    share_fields_set,
    show,
)

SPEAKER_KIND = "BGPSpeaker"
SPEAKER_PLURAL = "bgpspeakers"
MAX_PEERS = 32
# A host path BIRD's password is read from: absolute, no whitespace, quotes or parent steps.
PASSWORD_FILE = r"^/[A-Za-z0-9._/\-]{1,255}$"
SECRET_KEY = r"^[-._a-zA-Z0-9]{1,253}$"

# 0 and 4294967295 are reserved (RFC 7607, RFC 7300); 23456 is AS_TRANS (RFC 6793).
ASN = Annotated[int, Field(ge=1, le=4294967294, strict=True)]


def _peer_address(value: str) -> str:
    address = ipaddress.ip_address(value)
    if address.is_loopback or address.is_multicast or address.is_unspecified:
        raise ValueError(f"{value} is not a unicast address another router can have")
    if address.is_link_local:
        raise ValueError(f"{value} is link-local: BIRD would need the interface too; use the peer's routable address")
    return value


def _router_id(value: str) -> str:
    address = ipaddress.ip_address(value)
    if address.version != 4:
        raise ValueError(f"{value} is not IPv4: a BGP router ID is 32 bits written as an IPv4 address")
    if address.is_unspecified:
        raise ValueError("0.0.0.0 is not a valid BGP router ID")
    return value


PeerAddress = Annotated[IPLiteral, AfterValidator(_peer_address)]
RouterID = Annotated[IPLiteral, AfterValidator(_router_id)]


class BFD(SpecBase):
    """Bidirectional Forwarding Detection for one session: a silent peer is down after minRx x multiplier."""

    min_rx_ms: int = Field(default=300, ge=10, le=60000, strict=True, alias="minRxMs")
    min_tx_ms: int = Field(default=300, ge=10, le=60000, strict=True, alias="minTxMs")
    multiplier: int = Field(default=3, ge=1, le=255, strict=True)


class SecretKeyRef(SpecBase):
    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN)
    key: str = Field(min_length=1, max_length=253, pattern=SECRET_KEY)


class Peer(SpecBase):
    address: PeerAddress
    asn: ASN
    port: PortNumber = 179
    hold_time_seconds: int = Field(default=90, ge=3, le=65535, strict=True, description="Down when no message arrives for this long.")
    keepalive_seconds: int | None = Field(default=None, ge=1, le=21845, strict=True, description="Default: a third of holdTimeSeconds.")
    bfd: BFD | None = None
    password_file: str | None = Field(
        default=None, max_length=256, pattern=PASSWORD_FILE, description="Host: a file holding the TCP MD5 password (read at each render)."
    )
    password_secret_ref: SecretKeyRef | None = Field(default=None, description="Cluster: the Secret key holding the TCP MD5 password.")
    ebgp_multihop: int | None = Field(default=None, ge=1, le=255, strict=True, alias="ebgpMultihop")
    source_address: IPLiteral | None = None

    @property
    def keepalive(self) -> int:
        return self.keepalive_seconds if self.keepalive_seconds is not None else max(1, self.hold_time_seconds // 3)


class BGPSpeakerSpec(SpecBase):
    local_asn: ASN = Field(alias="localASN")
    router_id: RouterID | None = Field(
        default=None, alias="routerID",
        description="The BGP router ID (IPv4). Host: required. Cluster: default, each node's first IPv4 InternalIP (unique per node).")
    node_selector: NodeSelector = Field(default_factory=NodeSelector, description="Cluster: the nodes whose BIRD uses this speaker.")
    peers: tuple[Peer, ...] = Field(min_length=1, max_length=MAX_PEERS)


class SpeakerMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)
    model_post_init = share_fields_set

    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN)
    creation_timestamp: str | None = Field(default=None, alias="creationTimestamp")
    labels: dict[str, str] = Field(default_factory=dict)


class BGPSpeaker(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    api_version: Literal["vsop.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["BGPSpeaker"]
    metadata: SpeakerMeta
    spec: BGPSpeakerSpec
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.metadata.name


def parse_bgp_speaker(data: Any) -> BGPSpeaker:
    """Validate one BGPSpeaker document; raises InvalidInput naming the speaker, each field and the reason."""
    name = data.get("metadata", {}).get("name") if isinstance(data, dict) and isinstance(data.get("metadata"), dict) else None
    ref = name if isinstance(name, str) else guess_ref(data)
    try:
        speaker = BGPSpeaker.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(field_errors(data, exc, ref, SPEAKER_KIND)) from None
    problems = speaker_semantic_errors(speaker.spec)
    if problems:
        raise InvalidInput([FieldError(obj=speaker.name, path=path, reason=reason, kind=SPEAKER_KIND) for path, reason in problems])
    return speaker


def speaker_semantic_errors(spec: BGPSpeakerSpec) -> list[tuple[str, str]]:
    """Rules between fields; each is (field path, reason). Mirrored as CEL in the CRD where CEL can say it."""
    errors: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for index, peer in enumerate(spec.peers):
        where = f"spec.peers[{index}]"
        address = str(ipaddress.ip_address(peer.address))
        if address in seen:
            errors.append((f"{where}.address", f"duplicate peer {show(peer.address)}, already peers[{seen[address]}]"))
        seen.setdefault(address, index)
        if peer.keepalive_seconds is not None and peer.keepalive_seconds >= peer.hold_time_seconds:
            errors.append((f"{where}.keepaliveSeconds", f"must be less than holdTimeSeconds ({peer.keepalive_seconds} >= {peer.hold_time_seconds})"))
        if peer.password_file is not None and peer.password_secret_ref is not None:
            errors.append((f"{where}.passwordFile", "give passwordFile (host) or passwordSecretRef (cluster), not both"))
        if peer.password_file is not None and "/../" in peer.password_file + "/":
            errors.append((f"{where}.passwordFile", "must not step into a parent folder (..)"))
        if peer.ebgp_multihop is not None and peer.asn == spec.local_asn:
            errors.append((f"{where}.ebgpMultihop", f"peer AS {peer.asn} is this speaker's own (iBGP, always multihop): ebgpMultihop is for eBGP peers"))
        if peer.source_address is not None and ipaddress.ip_address(peer.source_address).version != ipaddress.ip_address(peer.address).version:
            errors.append((f"{where}.sourceAddress", f"IPv{ipaddress.ip_address(peer.source_address).version} source for an IPv{ipaddress.ip_address(peer.address).version} peer"))
    for index, req in enumerate(spec.node_selector.match_expressions):
        path = f"spec.nodeSelector.matchExpressions[{index}].values"
        if req.operator in ("In", "NotIn") and not req.values:
            errors.append((path, f"operator {req.operator} needs at least one value"))
        if req.operator in ("Exists", "DoesNotExist") and req.values:
            errors.append((path, f"operator {req.operator} takes no values"))
    return errors
