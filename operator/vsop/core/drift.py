"""Drift: which operations of a full sync put back what someone changed behind vsop's back.

A full sync plans from a fresh read of the kernel. Most of its operations carry out a
change of the desired state (a new object, a health result, draining); the rest repair
drift: the kernel no longer holds what vsop left there, and vsop wants the same thing
as before. Given what vsop expected the kernel to hold (the target of its last
successful sync, or the reconciler's cache of its own writes), an operation is a repair
when its subject is the same in the expected and the new target state.
Pure: must not import kopf, pyroute2, jinja2, subprocess, socket or vsop.adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from vsop.core import ops
from vsop.core.state import KernelState


@dataclass(frozen=True)
class Repair:
    op: ops.Op
    obj: str  # "namespace/name" of the owning VirtualService; "" for what all of them share
    found: str  # what the kernel held, in words
    wanted: str  # what vsop put back

    def describe(self) -> str:
        return f"{self.op.kind} {self.op.describe()}: found {self.found}, put back {self.wanted}"


def _subject(op: ops.Op) -> tuple[Any, ...] | None:
    match op:
        case ops.SetSysctl(name=name):
            return ("sysctl", name)
        case ops.CreateSet(ipset=ipset):
            return ("set", ipset.name)
        case ops.DestroySet(name=name):
            return ("set", name)
        case ops.AddSetMember(set_name=name, member=member) | ops.DeleteSetMember(set_name=name, member=member):
            return ("member", name, member)
        case ops.WriteChain(key=key) | ops.DeleteChain(key=key):
            return ("chain", key)
        case ops.AddJump(jump=jump) | ops.DeleteJump(jump=jump):
            return ("jump", jump)
        case ops.CreateLink() | ops.SetLinkUp() | ops.DeleteLink():
            return ("link",)
        case ops.AddAddress(address=address) | ops.DeleteAddress(address=address):
            return ("address", address)
        case ops.AddService(service=service) | ops.EditService(service=service):
            return ("service", service.key)
        case ops.DeleteService(key=key):
            return ("service", key)
        case ops.AddRealServer(real_server=rs) | ops.EditRealServer(real_server=rs):
            return ("realserver", rs.key)
        case ops.DeleteRealServer(key=key):
            return ("realserver", key)
        case ops.AddRoute(prefix=prefix) | ops.DeleteRoute(prefix=prefix):
            return ("route", prefix)
    return None


def _value(state: KernelState, subject: tuple[Any, ...]) -> Any:
    kind = subject[0]
    if kind == "sysctl":
        return state.sysctls.get(subject[1])
    if kind == "set":
        ipset = state.ipsets.get(subject[1])
        return None if ipset is None else f"{ipset.kind} IPv{ipset.family}"
    if kind == "member":
        ipset = state.ipsets.get(subject[1])
        return None if ipset is None or subject[2] not in ipset.members else "present"
    if kind == "chain":
        rules = state.chains.get(subject[1])
        return None if rules is None else f"{len(rules)} rule(s): " + "; ".join(rules)
    if kind == "jump":
        return "present" if subject[1] in state.jumps else None
    if kind == "link":
        return None if state.link is None else ("up" if state.link.up else "down")
    if kind == "address":
        return "bound" if subject[1] in state.addresses else None
    if kind == "service":
        service = state.services.get(subject[1])
        return None if service is None else f"scheduler {service.scheduler} persistence {service.persistence_timeout}s"
    if kind == "realserver":
        rs = state.real_servers.get(subject[1])
        return None if rs is None else f"{rs.forwarding} weight {rs.weight}"
    if kind == "route":
        return "announced" if subject[1] in state.routes else None
    return None


def _owner(state: KernelState, subject: tuple[Any, ...]) -> str:
    if subject[0] == "service":
        service = state.services.get(subject[1])
        return service.owner if service is not None else ""
    if subject[0] == "realserver":
        service = state.services.get(subject[1].service)
        return service.owner if service is not None else ""
    if subject[0] == "member":
        ipset = state.ipsets.get(subject[1])
        return ipset.members.get(subject[2], "") if ipset is not None else ""
    if subject[0] == "route":  # the VIP's member in the VIPs set names its object
        vip = subject[1].split("/")[0]
        return next((ipset.members[vip] for ipset in state.ipsets.values() if vip in ipset.members), "")
    return ""


def repairs(applied: Iterable[ops.Op], expected: KernelState, observed: KernelState, target: KernelState) -> list[Repair]:
    """The applied operations that put back what changed behind vsop's back.

    `expected`: what vsop believed the kernel held before this sync; `observed`: what the
    sync read; `target`: what it planned towards. A subject vsop did not plan itself
    (accept_ra, derived by the plan) counts only when the target names it.
    """
    found: list[Repair] = []
    for op in applied:
        subject = _subject(op)
        if subject is None:
            continue
        if subject[0] == "sysctl" and subject[1] not in target.sysctls:
            continue
        wanted = _value(target, subject)
        if _value(expected, subject) != wanted:
            continue  # vsop wants something else than before: a change, not a repair
        have = _value(observed, subject)
        if have == wanted:
            continue
        owner = _owner(target, subject) or _owner(expected, subject)
        found.append(Repair(op, owner, "nothing" if have is None else str(have), "nothing" if wanted is None else str(wanted)))
    return found
