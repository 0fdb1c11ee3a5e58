"""An in-memory kernel: applies plan operations to a KernelState, refusing what a kernel refuses.

`apply_op` is the fakes' engine and the property tests' oracle. It enforces the kernel's own
preconditions (no duplicate service, no scheduler it has no module for, no ipset comment
over 255 bytes, no real server without its service, no address
without its link, no rule naming a missing set or chain, no chain deleted while a
jump names it, no set destroyed while a rule names it, no route added twice) and vsop's
ownership rules (an IPVS service is created only on a VIP already bound to vsop's link,
a VIP is unbound only once its services are gone, and announced only while bound; a
VIP:port joins the accept set only once its IPVS service exists, unless keepalived
programs it, and a service is deleted only once its VIP:port has left that set), so a
plan in the wrong order fails here.
`apply_in_place` (and `apply_accepted`, the same on a copy) applies what a kernel already
accepted without checks, at the cost of the operations: the node reconciler's cache.
Pure: must not import kopf, pyroute2, jinja2, subprocess, socket or vsop.adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence

from vsop.api.model import SCHEDULERS
from vsop.core import ops
from vsop.core.plan import jump_target
from vsop.core.state import ChainKey, KernelState, LinkState, Names, RealServerKey, ServiceKey, ipset_member, member_service


class KernelRefused(Exception):
    """What the real kernel would answer with an errno."""


def apply_op(
    state: KernelState,
    op: ops.Op,
    names: Names = Names(),
    *,
    ownership: bool = True,
    delegated: frozenset[ServiceKey] = frozenset(),
) -> KernelState:
    """Apply one operation. `ownership=False` checks only what a kernel checks (for adapter fakes).

    `delegated`: services keepalived programs (mode: keepalived), accepted without one of vsop's.
    """
    return _HANDLERS[type(op)](state, op, _Rules(names, ownership, delegated))


def apply_ops(
    state: KernelState,
    operations: Iterable[ops.Op],
    names: Names = Names(),
    *,
    ownership: bool = True,
    delegated: frozenset[ServiceKey] = frozenset(),
) -> KernelState:
    rules = _Rules(names, ownership, delegated)
    for op in operations:
        state = _HANDLERS[type(op)](state, op, rules)
    return state


@dataclass(frozen=True)
class _Rules:
    names: Names
    ownership: bool  # False: only what a kernel checks, none of vsop's ownership rules
    delegated: frozenset[ServiceKey] = frozenset()

    def accept_set(self, vip: str) -> str:
        return self.names.set_name(self.names.vip_ports_set, 6 if ":" in vip else 4)


def _refuse(message: str) -> KernelRefused:
    return KernelRefused(message)


def _sysctl(state: KernelState, op: ops.SetSysctl, rules: _Rules) -> KernelState:
    return replace(state, sysctls={**state.sysctls, op.name: op.value})


def _create_set(state: KernelState, op: ops.CreateSet, rules: _Rules) -> KernelState:
    if op.ipset.name in state.ipsets:
        raise _refuse(f"ipset {op.ipset.name}: set with the same name already exists")
    return replace(state, ipsets={**state.ipsets, op.ipset.name: replace(op.ipset, members={})})


def _destroy_set(state: KernelState, op: ops.DestroySet, rules: _Rules) -> KernelState:
    if op.name not in state.ipsets:
        raise _refuse(f"ipset {op.name}: the set does not exist")
    if any(f"--match-set {op.name} " in rule for rules in state.chains.values() for rule in rules):
        raise _refuse(f"ipset {op.name}: set is in use by a kernel component")
    return replace(state, ipsets={k: v for k, v in state.ipsets.items() if k != op.name})


# IPSET_MAX_COMMENT_SIZE: the kernel's netlink policy refuses a longer comment (ERANGE), `ipset` too.
MAX_COMMENT_BYTES = 255


def _add_member(state: KernelState, op: ops.AddSetMember, rules: _Rules) -> KernelState:
    ipset = state.ipsets.get(op.set_name)
    if ipset is None:
        raise _refuse(f"ipset {op.set_name}: the set does not exist")
    if len(op.comment.encode()) > MAX_COMMENT_BYTES:
        raise _refuse(f"an ipset comment is at most {MAX_COMMENT_BYTES} characters")
    if op.member in ipset.members and not op.replace:
        raise _refuse(f"ipset {op.set_name}: element {op.member} is already added")
    key = member_service(op.member) if rules.ownership else None
    if key is not None and op.set_name == rules.accept_set(key.vip):
        if key not in state.services and key not in rules.delegated:
            raise _refuse(f"ownership: {key} accepted by the filter before its IPVS service exists (a local listener would answer)")
    members = {**ipset.members, op.member: op.comment}
    return replace(state, ipsets={**state.ipsets, op.set_name: replace(ipset, members=members)})


def _del_member(state: KernelState, op: ops.DeleteSetMember, rules: _Rules) -> KernelState:
    ipset = state.ipsets.get(op.set_name)
    if ipset is None or op.member not in ipset.members:
        raise _refuse(f"ipset {op.set_name}: element {op.member} is not added")
    members = {k: v for k, v in ipset.members.items() if k != op.member}
    return replace(state, ipsets={**state.ipsets, op.set_name: replace(ipset, members=members)})


def _write_chain(state: KernelState, op: ops.WriteChain, rules: _Rules) -> KernelState:
    for rule in op.rules:
        words = rule.split()
        if "--match-set" in words:
            set_name = words[words.index("--match-set") + 1]
            if set_name not in state.ipsets:
                raise _refuse(f"iptables-restore: Set {set_name} doesn't exist")
        target = jump_target(rule)
        if target in rules.names.owned_chains() and target != op.key.chain:
            if ChainKey(op.key.family, op.key.table, target) not in state.chains:
                raise _refuse(f"iptables-restore: Couldn't load target `{target}'")
    return replace(state, chains={**state.chains, op.key: op.rules})


def _delete_chain(state: KernelState, op: ops.DeleteChain, rules: _Rules) -> KernelState:
    if op.key not in state.chains:
        raise _refuse(f"iptables: chain {op.key.chain} does not exist")
    referenced = [j for j in state.jumps if (j.family, j.table) == (op.key.family, op.key.table) and jump_target(j.rule) == op.key.chain]
    referenced_by_chain = [
        k for k, rules in state.chains.items()
        if k != op.key and (k.family, k.table) == (op.key.family, op.key.table) and any(jump_target(r) == op.key.chain for r in rules)
    ]
    if referenced or referenced_by_chain:
        raise _refuse(f"iptables: chain {op.key.chain} is still referenced")
    return replace(state, chains={k: v for k, v in state.chains.items() if k != op.key})


def _add_jump(state: KernelState, op: ops.AddJump, rules: _Rules) -> KernelState:
    target = jump_target(op.jump.rule)
    key_exists = any((k.family, k.table, k.chain) == (op.jump.family, op.jump.table, target) for k in state.chains)
    if not key_exists:
        raise _refuse(f"iptables: chain {target} does not exist")
    return replace(state, jumps=state.jumps | {op.jump})


def _delete_jump(state: KernelState, op: ops.DeleteJump, rules: _Rules) -> KernelState:
    if op.jump not in state.jumps:
        raise _refuse("iptables: Bad rule (does a matching rule exist in that chain?)")
    return replace(state, jumps=state.jumps - {op.jump})


def _create_link(state: KernelState, op: ops.CreateLink, rules: _Rules) -> KernelState:
    if state.link is not None:
        raise _refuse(f"a link named {op.name} already exists")
    return replace(state, link=LinkState(op.name, up=True), addresses=frozenset())


def _link_up(state: KernelState, op: ops.SetLinkUp, rules: _Rules) -> KernelState:
    if state.link is None:
        raise _refuse(f"link {op.name} does not exist")
    return replace(state, link=LinkState(op.name, up=True))


def _delete_link(state: KernelState, op: ops.DeleteLink, rules: _Rules) -> KernelState:
    if state.link is None:
        raise _refuse(f"link {op.name} does not exist")
    bound = state.bound_vips()
    if rules.ownership and any(key.vip in bound for key in state.services):
        raise _refuse(f"ownership: deleting {op.name} would leave its VIPs' IPVS services behind")
    if rules.ownership and state.routes & state.addresses:
        raise _refuse(f"ownership: deleting {op.name} while routes still attract its VIPs' traffic")
    return replace(state, link=None, addresses=frozenset())


def _add_address(state: KernelState, op: ops.AddAddress, rules: _Rules) -> KernelState:
    if state.link is None:
        raise _refuse(f"link {op.link} does not exist")
    if op.address in state.addresses:
        raise _refuse(f"address {op.address}: File exists")
    return replace(state, addresses=state.addresses | {op.address})


def _delete_address(state: KernelState, op: ops.DeleteAddress, rules: _Rules) -> KernelState:
    if state.link is None:
        raise _refuse(f"link {op.link} does not exist")
    if op.address not in state.addresses:
        raise _refuse(f"address {op.address}: Cannot assign requested address")
    vip = op.address.split("/")[0]
    if rules.ownership and any(key.vip == vip for key in state.services):
        raise _refuse(f"ownership: unbinding {vip} first would turn its IPVS services foreign")
    if rules.ownership and op.address in state.routes:
        raise _refuse(f"ownership: unbinding {vip} while its route still attracts its traffic")
    return replace(state, addresses=state.addresses - {op.address})


def _add_route(state: KernelState, op: ops.AddRoute, rules: _Rules) -> KernelState:
    if op.prefix in state.routes:
        raise _refuse(f"route {op.prefix} table {op.table}: File exists")
    if rules.ownership and op.prefix not in state.addresses:
        raise _refuse(f"ownership: route {op.prefix} announced before its VIP is bound to {rules.names.link}")
    return replace(state, routes=state.routes | {op.prefix})


def _delete_route(state: KernelState, op: ops.DeleteRoute, rules: _Rules) -> KernelState:
    if op.prefix not in state.routes:
        raise _refuse(f"route {op.prefix} table {op.table}: No such process")
    return replace(state, routes=state.routes - {op.prefix})


def _scheduler(op: ops.AddService | ops.EditService) -> None:
    if op.service.scheduler not in SCHEDULERS:  # no module ip_vs_<name>: ENOENT
        raise _refuse(f"scheduler {op.service.scheduler!r} is not available in this kernel (module ip_vs_{op.service.scheduler})")


def _add_service(state: KernelState, op: ops.AddService, rules: _Rules) -> KernelState:
    key = op.service.key
    if key in state.services:
        raise _refuse(f"IPVS service {key}: File exists")
    _scheduler(op)
    if rules.ownership and key.vip not in state.bound_vips():
        raise _refuse(f"ownership: IPVS service {key} created before its VIP is bound to {rules.names.link}")
    return replace(state, services={**state.services, key: op.service})


def _edit_service(state: KernelState, op: ops.EditService, rules: _Rules) -> KernelState:
    key = op.service.key
    if key not in state.services:
        raise _refuse(f"IPVS service {key}: No such process")
    _scheduler(op)
    return replace(state, services={**state.services, key: op.service})


def _delete_service(state: KernelState, op: ops.DeleteService, rules: _Rules) -> KernelState:
    if op.key not in state.services:
        raise _refuse(f"IPVS service {op.key}: No such process")
    if rules.ownership:
        accept = state.ipsets.get(rules.accept_set(op.key.vip))
        if accept is not None and ipset_member(op.key) in accept.members:
            raise _refuse(f"ownership: IPVS service {op.key} deleted while the filter still accepts it (a local listener would answer)")
    return replace(
        state,
        services={k: v for k, v in state.services.items() if k != op.key},
        real_servers={k: v for k, v in state.real_servers.items() if k.service != op.key},
    )


def _add_real_server(state: KernelState, op: ops.AddRealServer, rules: _Rules) -> KernelState:
    key = op.real_server.key
    if key.service not in state.services:
        raise _refuse(f"real server {key}: IPVS service {key.service} does not exist")
    if key in state.real_servers:
        raise _refuse(f"real server {key}: File exists")
    return replace(state, real_servers={**state.real_servers, key: op.real_server})


def _edit_real_server(state: KernelState, op: ops.EditRealServer, rules: _Rules) -> KernelState:
    key = op.real_server.key
    if key not in state.real_servers:
        raise _refuse(f"real server {key}: No such file or directory")
    return replace(state, real_servers={**state.real_servers, key: op.real_server})


def _delete_real_server(state: KernelState, op: ops.DeleteRealServer, rules: _Rules) -> KernelState:
    if op.key not in state.real_servers:
        raise _refuse(f"real server {op.key}: No such file or directory")
    return replace(state, real_servers={k: v for k, v in state.real_servers.items() if k != op.key})


_HANDLERS = {
    ops.SetSysctl: _sysctl,
    ops.CreateSet: _create_set,
    ops.DestroySet: _destroy_set,
    ops.AddSetMember: _add_member,
    ops.DeleteSetMember: _del_member,
    ops.AddAcceptMember: _add_member,
    ops.DeleteAcceptMember: _del_member,
    ops.WriteChain: _write_chain,
    ops.DeleteChain: _delete_chain,
    ops.AddJump: _add_jump,
    ops.DeleteJump: _delete_jump,
    ops.CreateLink: _create_link,
    ops.SetLinkUp: _link_up,
    ops.DeleteLink: _delete_link,
    ops.AddAddress: _add_address,
    ops.DeleteAddress: _delete_address,
    ops.AddService: _add_service,
    ops.EditService: _edit_service,
    ops.DeleteService: _delete_service,
    ops.AddRealServer: _add_real_server,
    ops.EditRealServer: _edit_real_server,
    ops.DeleteRealServer: _delete_real_server,
    ops.AddRoute: _add_route,
    ops.DeleteRoute: _delete_route,
}


def apply_accepted(state: KernelState, operations: Sequence[ops.Op]) -> KernelState:
    """The state after operations a kernel already accepted, in one pass (no checks).

    `apply_ops` copies the state per operation to check each one, which is quadratic for a
    cold sync of thousands of services. This is `apply_in_place` on an `owned_copy`: `state`
    stays as it was, and the result's containers are its own, so it can be changed in
    place in turn (the node reconciler's cache after a full sync).
    """
    return apply_in_place(owned_copy(state), operations, taken_along(state.real_servers, operations))


def taken_along(real_servers: Iterable[RealServerKey], operations: Sequence[ops.Op]) -> Callable[[ServiceKey], Iterable[RealServerKey]]:
    """`apply_in_place`'s `real_servers_of`: a service's real servers among `real_servers` (all
    those of the services the operations delete, at least) and those the operations add.
    Indexed once, at the first service deleted; most batches delete none."""
    index: dict[ServiceKey, list[RealServerKey]] | None = None

    def real_servers_of(service: ServiceKey) -> Iterable[RealServerKey]:
        nonlocal index
        if index is None:
            index = {}
            for key in real_servers:
                index.setdefault(key.service, []).append(key)
            for op in operations:
                if isinstance(op, ops.AddRealServer):
                    index.setdefault(op.real_server.key.service, []).append(op.real_server.key)
        return index.get(service, ())

    return real_servers_of


def owned_copy(state: KernelState) -> KernelState:
    """A copy whose containers are its holder's own and mutable (sets for addresses and jumps),
    for `apply_in_place`: shallow, so one per full read of the kernel, not per change."""
    return replace(
        state,
        addresses=set(state.addresses),  # type: ignore[arg-type]
        services=dict(state.services),
        real_servers=dict(state.real_servers),
        ipsets={name: replace(ipset, members=dict(ipset.members)) for name, ipset in state.ipsets.items()},
        chains=dict(state.chains),
        jumps=set(state.jumps),  # type: ignore[arg-type]
        sysctls=dict(state.sysctls),
        routes=set(state.routes),  # type: ignore[arg-type]
    )


def apply_in_place(
    state: KernelState,
    operations: Iterable[ops.Op],
    real_servers_of: Callable[[ServiceKey], Iterable[RealServerKey]],
) -> KernelState:
    """The state after operations a kernel already accepted (no checks), changing the
    containers of a state made by `owned_copy` in place: the one interpreter of accepted
    operations (`apply_accepted` is this on a copy).

    Costs what the operations are, not what the state holds (the node reconciler's cached
    view of a kernel with 10,000 services, after each change). `real_servers_of(service)`
    names the real servers a deleted service takes with it (`taken_along`: the caller knows
    them without scanning everything). Returns the state, or a new one sharing its
    containers when the link changed (the dataclass is frozen). The operations are applied
    in order, so a service deleted and added again keeps the real servers added after it.
    """
    link = state.link
    addresses: Any = state.addresses
    services: Any = state.services
    real_servers: Any = state.real_servers
    ipsets: Any = state.ipsets
    chains: Any = state.chains
    jumps: Any = state.jumps
    sysctls: Any = state.sysctls
    routes: Any = state.routes
    for op in operations:
        if isinstance(op, ops.AddSetMember):
            ipsets[op.set_name].members[op.member] = op.comment
        elif isinstance(op, ops.DeleteSetMember):
            ipsets[op.set_name].members.pop(op.member, None)
        elif isinstance(op, (ops.AddService, ops.EditService)):
            services[op.service.key] = op.service
        elif isinstance(op, (ops.AddRealServer, ops.EditRealServer)):
            real_servers[op.real_server.key] = op.real_server
        elif isinstance(op, ops.DeleteRealServer):
            real_servers.pop(op.key, None)
        elif isinstance(op, ops.DeleteService):
            services.pop(op.key, None)
            for key in list(real_servers_of(op.key)):  # the kernel deletes them with it
                real_servers.pop(key, None)
        elif isinstance(op, ops.AddAddress):
            addresses.add(op.address)
        elif isinstance(op, ops.DeleteAddress):
            addresses.discard(op.address)
        elif isinstance(op, ops.SetSysctl):
            sysctls[op.name] = op.value
        elif isinstance(op, ops.CreateSet):
            ipsets[op.ipset.name] = replace(op.ipset, members={})
        elif isinstance(op, ops.DestroySet):
            ipsets.pop(op.name, None)
        elif isinstance(op, ops.WriteChain):
            chains[op.key] = op.rules
        elif isinstance(op, ops.DeleteChain):
            chains.pop(op.key, None)
        elif isinstance(op, ops.AddJump):
            jumps.add(op.jump)
        elif isinstance(op, ops.DeleteJump):
            jumps.discard(op.jump)
        elif isinstance(op, ops.CreateLink):
            link = LinkState(op.name, up=True)
            addresses.clear()
        elif isinstance(op, ops.SetLinkUp):
            link = LinkState(op.name, up=True)
        elif isinstance(op, ops.DeleteLink):
            link = None
            addresses.clear()
        elif isinstance(op, ops.AddRoute):
            routes.add(op.prefix)
        elif isinstance(op, ops.DeleteRoute):
            routes.discard(op.prefix)
        else:
            raise TypeError(f"apply_in_place: unknown operation {op!r}")
    return state if link == state.link else replace(state, link=link)
