"""The operations a plan is made of: one kernel change each, in vsop's words.

Executors (the real kernel adapters, the in-memory kernel, the shell renderer) are
given these in order. Each has a `kind` (for counts: "service.add") and a short
description for logs and the `apply` report.
Pure data: must not import anything beyond the standard library and vsop.core.state.
"""

from __future__ import annotations

from dataclasses import dataclass

from vsop.core.state import ChainKey, IPSet, Jump, RealServer, RealServerKey, ServiceKey, VirtualServer


@dataclass(frozen=True)
class Op:
    kind = "op"

    def describe(self) -> str:  # pragma: no cover - every op overrides it
        raise NotImplementedError


@dataclass(frozen=True)
class SetSysctl(Op):
    name: str
    value: str
    previous: str | None = None
    kind = "sysctl.set"

    def describe(self) -> str:
        return f"sysctl {self.name}={self.value}" + (f" (was {self.previous})" if self.previous is not None else "")


@dataclass(frozen=True)
class CreateSet(Op):
    ipset: IPSet  # members are added by AddSetMember
    kind = "ipset.create"

    def describe(self) -> str:
        return f"ipset {self.ipset.name} ({self.ipset.kind}, IPv{self.ipset.family})"


@dataclass(frozen=True)
class DestroySet(Op):
    name: str
    kind = "ipset.destroy"

    def describe(self) -> str:
        return f"ipset {self.name}"


@dataclass(frozen=True)
class AddSetMember(Op):
    set_name: str
    member: str
    comment: str = ""
    replace: bool = False  # the member exists with another comment
    kind = "ipset.add"

    def describe(self) -> str:
        return f"{self.set_name} {self.member}" + (f" ({self.comment})" if self.comment else "")


@dataclass(frozen=True)
class DeleteSetMember(Op):
    set_name: str
    member: str
    kind = "ipset.del"

    def describe(self) -> str:
        return f"{self.set_name} {self.member}"


@dataclass(frozen=True)
class AddAcceptMember(AddSetMember):
    """A VIP:port joins the accept set (VSOP-FILTER lets it through): planned only once its
    IPVS service exists, so a VIP:port without one is rejected, never passed to whatever
    listens on the node's `*:port`. An AddSetMember in every other respect."""


@dataclass(frozen=True)
class DeleteAcceptMember(DeleteSetMember):
    """A VIP:port leaves the accept set: planned before its IPVS service is deleted."""


@dataclass(frozen=True)
class WriteChain(Op):
    """Create the chain, or replace its rules; applied atomically by iptables-restore."""

    key: ChainKey
    rules: tuple[str, ...]
    exists: bool = False
    kind = "chain.write"

    def describe(self) -> str:
        return f"{_family(self.key.family)} {self.key.table} {self.key.chain} ({len(self.rules)} rules)"


@dataclass(frozen=True)
class DeleteChain(Op):
    key: ChainKey
    kind = "chain.delete"

    def describe(self) -> str:
        return f"{_family(self.key.family)} {self.key.table} {self.key.chain}"


@dataclass(frozen=True)
class AddJump(Op):
    jump: Jump
    kind = "jump.add"

    def describe(self) -> str:
        return f"{_family(self.jump.family)} {self.jump.table} {self.jump.chain} {self.jump.rule}"


@dataclass(frozen=True)
class DeleteJump(Op):
    jump: Jump
    kind = "jump.delete"

    def describe(self) -> str:
        return f"{_family(self.jump.family)} {self.jump.table} {self.jump.chain} {self.jump.rule}"


@dataclass(frozen=True)
class CreateLink(Op):
    name: str
    kind = "link.create"

    def describe(self) -> str:
        return f"dummy link {self.name}"


@dataclass(frozen=True)
class SetLinkUp(Op):
    name: str
    kind = "link.up"

    def describe(self) -> str:
        return f"link {self.name} up"


@dataclass(frozen=True)
class DeleteLink(Op):
    name: str
    kind = "link.delete"

    def describe(self) -> str:
        return f"dummy link {self.name}"


@dataclass(frozen=True)
class AddAddress(Op):
    link: str
    address: str  # "ip/prefixlen"
    kind = "address.add"

    def describe(self) -> str:
        return f"{self.address} on {self.link}"


@dataclass(frozen=True)
class DeleteAddress(Op):
    link: str
    address: str
    kind = "address.delete"

    def describe(self) -> str:
        return f"{self.address} on {self.link}"


@dataclass(frozen=True)
class AddService(Op):
    service: VirtualServer
    kind = "service.add"

    def describe(self) -> str:
        return f"{self.service.key} {_service_config(self.service)}"


@dataclass(frozen=True)
class EditService(Op):
    service: VirtualServer
    previous: VirtualServer | None = None
    kind = "service.edit"

    def describe(self) -> str:
        before = f" (was {_service_config(self.previous)})" if self.previous else ""
        return f"{self.service.key} {_service_config(self.service)}{before}"


@dataclass(frozen=True)
class DeleteService(Op):
    key: ServiceKey
    kind = "service.delete"

    def describe(self) -> str:
        return str(self.key)


@dataclass(frozen=True)
class AddRealServer(Op):
    real_server: RealServer
    kind = "realserver.add"

    def describe(self) -> str:
        rs = self.real_server
        return f"{rs.key.service} -> {rs.key} {rs.forwarding} weight {rs.weight}"


@dataclass(frozen=True)
class EditRealServer(Op):
    real_server: RealServer
    previous: RealServer | None = None
    kind = "realserver.edit"

    def describe(self) -> str:
        rs = self.real_server
        before = f" (was {self.previous.forwarding} weight {self.previous.weight})" if self.previous else ""
        return f"{rs.key.service} -> {rs.key} {rs.forwarding} weight {rs.weight}{before}"


@dataclass(frozen=True)
class DeleteRealServer(Op):
    key: RealServerKey
    kind = "realserver.delete"

    def describe(self) -> str:
        return f"{self.key.service} -> {self.key}"


@dataclass(frozen=True)
class AddRoute(Op):
    """A blackhole route for a VIP in vsop's table: BIRD announces it (announce: bgp)."""

    prefix: str  # "ip/32" or "ip/128"
    table: int
    protocol: int
    kind = "route.add"

    def describe(self) -> str:
        return f"blackhole {self.prefix} table {self.table}"


@dataclass(frozen=True)
class DeleteRoute(Op):
    prefix: str
    table: int
    protocol: int
    kind = "route.delete"

    def describe(self) -> str:
        return f"blackhole {self.prefix} table {self.table}"


def _family(family: int) -> str:
    return "iptables" if family == 4 else "ip6tables"


def _service_config(service: VirtualServer) -> str:
    text = f"scheduler {service.scheduler}"
    if service.persistence_timeout:
        text += f" persistent {service.persistence_timeout}s"
    return text
